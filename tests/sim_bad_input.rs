//! Bad input gets real Consul's status code and message, and never stops the simulator: after
//! every bad request, GET /v1/status/leader still answers 200.
//!
//! Expected texts come from Consul's Go source (hashicorp/consul), cited at each test.
#![allow(clippy::unwrap_used)]

use crate::common;

use awc::http::Method;
use rand::Rng;

use crate::common::contract::{Api, Reply};
use crate::common::target::Target;

crate::contract_suite!(
    "bad-input": bad_requests_are_answered_as_consul_answers_them,
    info_of_an_unknown_session_is_an_empty_list,
    destroying_an_unknown_session_is_200_true,
    acquiring_with_an_unknown_session_is_500,
);

impl Reply {
    fn assert_error(&self, status: u16, message: &str) {
        assert_eq!(
            (self.status, self.text().as_str()),
            (status, message),
            "{}: status and body",
            self.what
        );
    }

    /// An error a server's RPC returned, as it reaches us through a client agent: Consul's
    /// pool prefixes it once per hop, once when the agent's server leads and twice when a
    /// follower forwards to the leader (real Consul picks a server at random).
    fn assert_rpc_error(&self, status: u16, message: &str) {
        let prefix = rehydrator_sim::http::RPC_PREFIX;
        let once = format!("{prefix}{message}");
        let twice = format!("{prefix}{once}");
        assert!(
            self.status == status && (self.text() == once || self.text() == twice),
            "{}: expected {status} {once:?} (the prefix once or twice), got {} {:?}",
            self.what,
            self.status,
            self.text()
        );
    }

    fn assert_error_prefix(&self, status: u16, prefix: &str) {
        assert_eq!(
            self.status,
            status,
            "{}: status ({})",
            self.what,
            self.text()
        );
        assert!(
            self.text().starts_with(prefix),
            "{}: body {:?} should start with {prefix:?}",
            self.what,
            self.text()
        );
    }

    /// Consul's 405: the method in the body, the allowed ones (with OPTIONS) in `Allow`.
    fn assert_method_not_allowed(&self, method: &str, allowed: &[&str]) {
        self.assert_error(405, &format!("method {method} not allowed"));
        let allow = self.header("allow").unwrap_or_default();
        let mut got: Vec<&str> = allow.split(',').map(str::trim).collect();
        got.sort_unstable();
        let mut want: Vec<&str> = allowed.to_vec();
        want.push("OPTIONS");
        want.sort_unstable();
        assert_eq!(got, want, "{}: Allow header {allow:?}", self.what);
    }
}

impl Api {
    /// The simulator still serves: GET /v1/status/leader answers 200 with a JSON string.
    async fn assert_still_serving(&self, after: &str) {
        let r = self.get("/v1/status/leader").await;
        assert_eq!(
            r.status,
            200,
            "after {after}: GET /v1/status/leader answered {} {}",
            r.status,
            r.text()
        );
        let leader: serde_json::Value = serde_json::from_str(&r.text())
            .unwrap_or_else(|e| panic!("after {after}: leader is not JSON ({e}): {}", r.text()));
        assert!(leader.is_string(), "after {after}: leader {leader}");
    }
}

/// A random session ID no simulator has handed out.
fn random_uuid() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What Consul answers a bad request with.
enum Expect {
    /// This status and exactly this body.
    Error(u16, String),
    /// This status and a body starting so (the rest is Go's decoder's own words).
    Prefix(u16, &'static str),
    /// This status and this RPC error, prefixed as `Reply::assert_rpc_error` allows.
    Rpc(u16, String),
    /// 405 naming the method, with these methods (and OPTIONS) in `Allow`.
    MethodNotAllowed(&'static [&'static str]),
}

/// One bad request and Consul's answer to it, with where Consul's source says so.
struct Case {
    method: Method,
    path: String,
    body: &'static [u8],
    expect: Expect,
}

fn case(method: Method, path: &str, body: &'static [u8], expect: Expect) -> Case {
    Case {
        method,
        path: path.to_owned(),
        body,
        expect,
    }
}

/// Every bad request whose answer is a status and a message, as `t`'s version words it.
fn bad_requests(t: &Target) -> Vec<Case> {
    let unknown = random_uuid();
    vec![
        // agent/session_endpoint.go SessionCreate: decodeBody fails -> 400 "Request decode
        // failed: <decoder error>". The decoder's text is Go's: only the prefix is compared.
        case(
            Method::PUT,
            "/v1/session/create",
            br#"{"Name": "x", "TTL": "#,
            Expect::Prefix(400, "Request decode failed: "),
        ),
        // agent/catalog_endpoint.go CatalogRegister: the same.
        case(
            Method::PUT,
            "/v1/catalog/register",
            b"{not json",
            Expect::Prefix(400, "Request decode failed: "),
        ),
        // agent/operator_endpoint.go OperatorAutopilotConfiguration (PUT): decodeBody fails ->
        // 400 "Error parsing autopilot config: <decoder error>". Before 1.11 a
        // BadRequestError, its text prefixed "Bad request: " (real 1.8.7 says so).
        case(
            Method::PUT,
            "/v1/operator/autopilot/configuration",
            br#"{"CleanupDeadServers": tru"#,
            Expect::Prefix(
                400,
                if t.at_least(1, 11) {
                    "Error parsing autopilot config: "
                } else {
                    "Bad request: Error parsing autopilot config: "
                },
            ),
        ),
        // agent/consul/session_endpoint.go Session.Apply: fmt.Errorf("Session TTL '%s'
        // invalid: %v", TTL, err) with Go's time.ParseDuration error; an RPC error of no
        // special type is a 500 (agent/http.go handleErr default case).
        case(
            Method::PUT,
            "/v1/session/create",
            br#"{"TTL": "abc"}"#,
            Expect::Rpc(
                500,
                r#"Session TTL 'abc' invalid: time: invalid duration "abc""#.into(),
            ),
        ),
        // The same: fmt.Errorf("Invalid Session TTL '%d', must be between [%v=%v]", ttl,
        // SessionTTLMin, SessionTTLMax): the TTL in nanoseconds, the default minimum 10s and
        // structs.SessionTTLMax 24h printed by Go as "24h0m0s".
        case(
            Method::PUT,
            "/v1/session/create",
            br#"{"TTL": "5s"}"#,
            Expect::Rpc(
                500,
                "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]".into(),
            ),
        ),
        // agent/http.go parseWait: a `wait` time.ParseDuration rejects -> 400.
        case(
            Method::GET,
            "/v1/kv/x?index=1&wait=abc",
            b"",
            Expect::Error(400, "Invalid wait time".into()),
        ),
        // agent/http.go parseWait: an `index` strconv.ParseUint rejects -> 400, on any
        // blocking endpoint.
        case(
            Method::GET,
            "/v1/kv/x?index=abc",
            b"",
            Expect::Error(400, "Invalid index".into()),
        ),
        case(
            Method::GET,
            "/v1/catalog/nodes?index=abc",
            b"",
            Expect::Error(400, "Invalid index".into()),
        ),
        // agent/session_endpoint.go SessionRenew: no such session -> 404.
        case(
            Method::PUT,
            &format!("/v1/session/renew/{unknown}"),
            b"",
            Expect::Error(404, format!("Session id '{unknown}' not found")),
        ),
        // agent/acl_endpoint.go: every ACL handler first checks ACLs are on
        // (checkACLDisabled) -> 401 "ACL support disabled"; the agents here run without.
        case(
            Method::GET,
            "/v1/acl/token/self",
            b"",
            Expect::Error(401, "ACL support disabled".into()),
        ),
        // agent/http.go wrap: a method the endpoint was not registered with ->
        // MethodNotAllowedError{Method, append([]string{"OPTIONS"}, methods...)}: 405, body
        // "method <M> not allowed", header Allow with the methods joined by ",". Registered
        // methods (agent/http_register.go): /v1/session/create PUT; /v1/status/leader GET;
        // /v1/kv/ GET, PUT, DELETE.
        case(
            Method::GET,
            "/v1/session/create",
            b"",
            Expect::MethodNotAllowed(&["PUT"]),
        ),
        case(
            Method::DELETE,
            "/v1/status/leader",
            b"",
            Expect::MethodNotAllowed(&["GET"]),
        ),
        case(
            Method::POST,
            "/v1/kv/x",
            b"v",
            Expect::MethodNotAllowed(&["GET", "PUT", "DELETE"]),
        ),
    ]
}

/// Each of `bad_requests` gets Consul's status and message, and the target serves on.
async fn bad_requests_are_answered_as_consul_answers_them(t: &Target) {
    let api = Api::new(t);
    for c in bad_requests(t) {
        let body = (!c.body.is_empty()).then_some(c.body);
        let r = api.call(c.method.clone(), &c.path, body).await;
        match &c.expect {
            Expect::Error(status, message) => r.assert_error(*status, message),
            Expect::Prefix(status, prefix) => r.assert_error_prefix(*status, prefix),
            Expect::Rpc(status, message) => r.assert_rpc_error(*status, message),
            Expect::MethodNotAllowed(allowed) => {
                r.assert_method_not_allowed(c.method.as_str(), allowed)
            }
        }
        api.assert_still_serving(&r.what).await;
    }
}

// agent/session_endpoint.go SessionGet: no such session -> 200 with an empty JSON list
// ("Use empty list instead of nil"); the docs: "If the session does not exist, an empty JSON
// list [] is returned."
async fn info_of_an_unknown_session_is_an_empty_list(t: &Target) {
    let api = Api::new(t);
    let r = api
        .get(&format!("/v1/session/info/{}", random_uuid()))
        .await;
    assert_eq!(r.status, 200, "{}: {}", r.what, r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(v, serde_json::json!([]), "{}", r.what);
    assert!(
        r.header("x-consul-index").is_some(),
        "{}: X-Consul-Index",
        r.what
    );
    api.assert_still_serving(&r.what).await;
}

// api-docs/session "Delete Session": "If the session UUID does not exist or already expired, a
// 200 is still returned (the operation is idempotent)"; agent/session_endpoint.go
// SessionDestroy returns `true`.
async fn destroying_an_unknown_session_is_200_true(t: &Target) {
    let api = Api::new(t);
    let r = api
        .call(
            Method::PUT,
            &format!("/v1/session/destroy/{}", random_uuid()),
            None,
        )
        .await;
    assert_eq!((r.status, r.text().trim()), (200, "true"), "{}", r.what);
    api.assert_still_serving(&r.what).await;
}

// agent/consul/state/kvs.go kvsLockTxn: fmt.Errorf("invalid session %#v", entry.Session) — Go
// quotes the ID; the RPC error is a 500 (agent/http.go handleErr default case).
async fn acquiring_with_an_unknown_session_is_500(t: &Target) {
    let api = Api::new(t);
    let id = random_uuid();
    let r = api.put(&format!("/v1/kv/lock?acquire={id}"), b"x").await;
    r.assert_rpc_error(500, &format!("invalid session \"{id}\""));
    // Nothing was written.
    let r2 = api.get("/v1/kv/lock").await;
    assert_eq!(r2.status, 404, "{}: {}", r2.what, r2.text());
    api.assert_still_serving(&r.what).await;
}
