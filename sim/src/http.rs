//! HTTP plumbing shared by every endpoint: query parameters as Consul reads them, Consul's
//! error responses, the blocking-query loop and the `X-Consul-*` response headers.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use rand::Rng;
use serde::Serialize;

use crate::go_json::go_json_error;
use crate::state::{Sim, State};
use crate::watch::Topic;

/// Consul's default and maximum blocking wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// An error as Consul answers it: a status code and a plain-text body.
/// What Consul's connection pool puts before an error a remote RPC returned.
pub const RPC_PREFIX: &str = "rpc error making call: ";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `Allow` header for 405 answers.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            allow: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// An error a server's RPC handler returned: the simulated client agent forwards the
    /// call to a server, and Consul's connection pool prefixes what comes back. Real Consul
    /// adds one prefix per hop (client → server, then a follower → the leader); the
    /// simulator's agent talks to the leader, so one.
    pub fn rpc(message: impl std::fmt::Display) -> Self {
        Self::internal(format!("{RPC_PREFIX}{message}"))
    }
    /// What every leader-bound request gets while the cluster has no leader.
    pub fn no_leader() -> Self {
        Self::internal("No cluster leader")
    }
    /// Consul's answer to a method an endpoint does not take.
    pub fn method_not_allowed(method: &str, allowed: &[&str]) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed"),
        );
        let mut allow = vec!["OPTIONS"];
        allow.extend_from_slice(allowed);
        e.allow = Some(allow.join(","));
        e
    }
}

/// Refuses any method but `method`, as Consul does: 405 with an `Allow` header.
pub fn only(req: &HttpRequest, method: &str) -> Result<(), ApiError> {
    if req.method().as_str() == method {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(
            req.method().as_str(),
            &[method],
        ))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status);
        b.content_type("text/plain; charset=utf-8");
        if let Some(allow) = &self.allow {
            b.insert_header(("Allow", allow.clone()));
        }
        b.body(self.message.clone())
    }
}

/// Query parameters as Consul reads them: flags by presence (`?recurse`), values decoded.
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn from_request(req: &HttpRequest) -> Self {
        let mut map = HashMap::new();
        for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            // Go's url.Values.Get returns the first value.
            map.entry(decode(k)).or_insert_with(|| decode(v));
        }
        Self(map)
    }

    /// The flag is present, with or without a value.
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The value, or None when absent. Present-but-empty is `Some("")`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The parameters re-encoded as Go's `url.Values.Encode` does (sorted by key, query-escaped),
    /// which Consul echoes in some error messages.
    pub fn encode(&self) -> String {
        let mut pairs: Vec<(&String, &String)> = self.0.iter().collect();
        pairs.sort();
        pairs
            .into_iter()
            .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Default,
    Stale,
    Consistent,
}

impl Consistency {
    fn header(self) -> &'static str {
        match self {
            Consistency::Default => "leader",
            Consistency::Stale => "stale",
            Consistency::Consistent => "consistent",
        }
    }
}

/// The options every request carries (`dc`) and every read may carry (blocking, consistency).
#[derive(Debug, Clone)]
pub struct QueryOptions {
    pub index: u64,
    pub wait: Duration,
    pub consistency: Consistency,
    pub dc: Option<String>,
    /// Whether the wait gets Consul's jitter: the servers' blocking queries add up to wait/16;
    /// the agent-local event list waits exactly what it was asked.
    pub jitter: bool,
}

impl QueryOptions {
    /// Reads the consistency flags (`stale`, `consistent`, `max_stale`, `cached`, `leader`), then
    /// `wait` and `index`, then `dc`, in the order Consul's `parse` does, with its messages for
    /// bad ones.
    pub fn parse(params: &Params) -> Result<Self, ApiError> {
        let consistency = parse_consistency(params)?;
        Ok(Self {
            consistency,
            dc: params
                .get("dc")
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            ..Self::parse_wait(params)?
        })
    }

    /// Only `wait` and `index` (Consul's `parseWait`), for the endpoints that read nothing else:
    /// the default consistency, no datacenter.
    pub fn parse_wait(params: &Params) -> Result<Self, ApiError> {
        // Go's ParseDuration takes a sign; Consul's RPCQueryTimeout makes any wait <= 0 the
        // default one rather than refusing it.
        let wait = match params.get("wait") {
            Some(w) if !w.is_empty() => crate::duration::parse_signed(w)
                .map(|ns| Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
                .map_err(|_| ApiError::bad_request("Invalid wait time"))?,
            _ => Duration::ZERO,
        };
        let index = match params.get("index") {
            Some(i) if !i.is_empty() => i
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("Invalid index"))?,
            _ => 0,
        };
        Ok(Self {
            index,
            wait,
            consistency: Consistency::Default,
            dc: None,
            jitter: true,
        })
    }

    pub fn from_request(req: &HttpRequest) -> Result<Self, ApiError> {
        Self::parse(&Params::from_request(req))
    }

    /// Consul's blocking timeout: the wait (default 5m, at most 10m) plus, unless `jitter` is
    /// off, up to wait/16 of jitter.
    pub fn timeout(&self) -> Duration {
        let wait = if self.wait.is_zero() {
            DEFAULT_WAIT
        } else {
            self.wait.min(MAX_WAIT)
        };
        let jitter_ns = (wait.as_nanos() / 16) as u64;
        let jitter = if self.jitter && jitter_ns > 0 {
            Duration::from_nanos(rand::thread_rng().gen_range(0..jitter_ns))
        } else {
            Duration::ZERO
        };
        wait + jitter
    }

    /// A request for another datacenter fails as it does on a Consul with no WAN peers.
    pub fn check_dc(&self, state: &State) -> Result<(), ApiError> {
        match &self.dc {
            Some(dc) if dc != &state.config.datacenter => {
                Err(ApiError::internal("No path to datacenter"))
            }
            _ => Ok(()),
        }
    }
}

/// Consul's `parseConsistency`: `?stale`, or a positive `?max_stale`, asks for a stale read;
/// `?consistent` for a consistent one; `?leader` and a zero `?max_stale` keep the default. The
/// agent's cache (`?cached`) is not simulated, only its conflict with `?consistent`.
fn parse_consistency(params: &Params) -> Result<Consistency, ApiError> {
    let mut stale = params.has("stale");
    let consistent = params.has("consistent");
    if let Some(max_stale) = params.get("max_stale").filter(|m| !m.is_empty()) {
        let ns = crate::duration::parse_signed(max_stale)
            .map_err(|_| ApiError::bad_request(format!("Invalid max_stale value {max_stale:?}")))?;
        stale |= ns > 0;
    }
    if stale && consistent {
        return Err(ApiError::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    if params.has("cached") && consistent {
        return Err(ApiError::bad_request(
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ));
    }
    Ok(if stale {
        Consistency::Stale
    } else if consistent {
        Consistency::Consistent
    } else {
        Consistency::Default
    })
}

/// The preamble every read endpoint starts with, in Consul's order: GET only, then the query's
/// parameters and options (a bad `?wait` or `?index` fails here).
pub struct ReadRequest {
    pub params: Params,
    pub opts: QueryOptions,
}

impl ReadRequest {
    pub fn get(req: &HttpRequest) -> Result<Self, ApiError> {
        only(req, "GET")?;
        let params = Params::from_request(req);
        let opts = QueryOptions::parse(&params)?;
        Ok(Self { params, opts })
    }

    /// A read of one named thing (the path's last segment), which Consul refuses empty with
    /// `missing` ("Missing service name") after parsing the query.
    pub fn named(
        req: &HttpRequest,
        name: String,
        missing: &str,
    ) -> Result<(Self, String), ApiError> {
        let read = Self::get(req)?;
        if name.is_empty() {
            return Err(ApiError::bad_request(missing));
        }
        Ok((read, name))
    }
}

/// Response metadata of a read.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub index: u64,
    pub known_leader: bool,
    pub last_contact_ms: u64,
    pub consistency: Consistency,
    /// Whether the response says how it was served (`X-Consul-Effective-Consistency`): only
    /// the catalog and health handlers fill in `QueryMeta.ConsistencyLevel`; KV and session
    /// reads leave it empty and Consul then sends no such header.
    pub report_consistency: bool,
}

impl Meta {
    /// Metadata for a read at `index` under the cluster's current leadership.
    /// Without a leader only a stale read is served; others get "No cluster leader".
    pub fn read(state: &State, opts: &QueryOptions, index: u64) -> Result<Self, ApiError> {
        opts.check_dc(state)?;
        let known_leader = state.cluster.has_leader();
        if !known_leader && opts.consistency != Consistency::Stale {
            return Err(ApiError::no_leader());
        }
        let last_contact_ms = match opts.consistency {
            Consistency::Stale => state.cluster.last_contact().as_millis() as u64,
            _ => 0,
        };
        Ok(Self {
            // Consul never hands out index 0: a client would spin on it.
            index: index.max(1),
            known_leader,
            last_contact_ms,
            consistency: opts.consistency,
            report_consistency: false,
        })
    }

    /// The same metadata, reporting the read's effective consistency as the catalog and health
    /// endpoints do.
    pub fn with_consistency(mut self) -> Self {
        self.report_consistency = true;
        self
    }

    /// A 200 with `body` as JSON and the X-Consul-* headers.
    pub fn json<T: Serialize>(&self, body: &T) -> HttpResponse {
        let mut b = HttpResponse::Ok();
        self.headers(&mut b);
        match serde_json::to_vec(body) {
            Ok(bytes) => b.content_type("application/json").body(bytes),
            Err(e) => ApiError::internal(e.to_string()).error_response(),
        }
    }

    /// Adds the X-Consul-* headers of Consul's `setMeta` to a response being built. The query
    /// backend is always the blocking one: the simulator has no streaming backend.
    pub fn headers(&self, b: &mut actix_web::HttpResponseBuilder) {
        b.insert_header(("X-Consul-Index", self.index.to_string()));
        b.insert_header(("X-Consul-KnownLeader", self.known_leader.to_string()));
        b.insert_header(("X-Consul-LastContact", self.last_contact_ms.to_string()));
        b.insert_header(("X-Consul-Query-Backend", "blocking-query"));
        if self.report_consistency {
            b.insert_header(("X-Consul-Effective-Consistency", self.consistency.header()));
        }
    }
}

/// Holds a read while an election is under way unless it is `?stale`: only a stale read is
/// served without a leader.
pub async fn hold_read(sim: &Sim, opts: &QueryOptions) {
    if opts.consistency != Consistency::Stale {
        hold_for_leader(sim, opts.dc.as_deref()).await;
    }
}

/// Holds a request that needs the leader while there is none, as Consul's `forwardRequestToLeader`
/// does: until an election produces one or `rpc_hold_timeout` (simulated time) runs out. The
/// caller then goes on either way and fails with "No cluster leader" if there is still none.
/// A request for another datacenter (`dc`) is not held: it fails at once with no path to it.
pub async fn hold_for_leader(sim: &Sim, dc: Option<&str>) {
    let deadline = {
        let st = sim.lock();
        if st.cluster.has_leader() || dc.is_some_and(|dc| dc != st.config.datacenter) {
            return;
        }
        tokio::time::Instant::now() + st.config.scaled(st.config.rpc_hold_timeout)
    };
    loop {
        let parked = {
            let mut st = sim.lock();
            if st.cluster.has_leader() || tokio::time::Instant::now() >= deadline {
                return;
            }
            st.waiters.park(vec![Topic::Raft])
        };
        let _ = tokio::time::timeout_at(deadline, parked).await;
    }
}

/// What one run of a read found: the index it answers at, its value and what it read.
pub struct Read<T> {
    pub index: u64,
    pub value: T,
    pub topics: Vec<Topic>,
}

/// When a blocking query's result counts as new.
#[derive(Debug, Clone, Copy)]
pub enum Fresh {
    /// The usual rule: the index moved past the one asked for.
    Greater,
    /// The event list's rule: its index is a hash of the last event ID, so any other value is new.
    Different,
}

/// Runs `read` as Consul's blocking query does: at once without `?index`, else parked until
/// something it read changes and its index is fresh, or the wait (plus jitter) runs out, when
/// the current state is returned as it is.
pub async fn blocking<T>(
    sim: &Sim,
    opts: &QueryOptions,
    fresh: Fresh,
    mut read: impl FnMut(&State) -> Result<Read<T>, ApiError>,
) -> Result<(Meta, T), ApiError> {
    // Their blocking wait starts once they are through: Consul forwards, then blocks on the
    // leader.
    hold_read(sim, opts).await;
    let deadline = tokio::time::Instant::now() + opts.timeout();
    loop {
        let parked = {
            let mut st = sim.lock();
            let r = read(&st)?;
            let meta = Meta::read(&st, opts, r.index)?;
            let is_fresh = match fresh {
                Fresh::Greater => meta.index > opts.index,
                Fresh::Different => meta.index != opts.index,
            };
            if opts.index == 0 || is_fresh || tokio::time::Instant::now() >= deadline {
                return Ok((meta, r.value));
            }
            st.waiters.park(r.topics)
        };
        // Woken or timed out, the loop reads again: a timeout returns what is there now.
        let _ = tokio::time::timeout_at(deadline, parked).await;
    }
}

/// Decodes a JSON request body, failing as Consul does.
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "Request decode failed: {}",
            go_json_error(&e, body)
        ))
    })
}

#[cfg(test)]
mod query_option_tests {
    use super::*;

    fn parse(query: &str) -> Result<QueryOptions, (u16, String)> {
        let req =
            actix_web::test::TestRequest::with_uri(&format!("/v1/kv/k?{query}")).to_http_request();
        QueryOptions::from_request(&req).map_err(|e| (e.status.as_u16(), e.message))
    }

    #[test]
    fn a_negative_wait_is_the_default_wait_not_an_error() {
        // Go's ParseDuration takes "-5s"; Consul's RPCQueryTimeout turns any wait <= 0 into
        // the default.
        let opts = parse("index=3&wait=-5s").map_err(|e| e.1);
        let timeout = opts.map(|o| o.timeout());
        assert!(
            timeout
                .as_ref()
                .is_ok_and(|t| *t >= DEFAULT_WAIT && *t < DEFAULT_WAIT + DEFAULT_WAIT / 16),
            "{timeout:?}"
        );
        assert_eq!(
            parse("wait=10").err(),
            Some((400, "Invalid wait time".into()))
        );
    }

    #[test]
    fn consistency_is_checked_before_wait_and_index() {
        let conflict = "Cannot specify ?stale with ?consistent, conflicting semantics.";
        assert_eq!(
            parse("wait=bogus&index=x&stale&consistent").err(),
            Some((400, conflict.into()))
        );
    }

    #[test]
    fn max_stale_asks_for_a_stale_read() {
        let c = |q: &str| parse(q).map(|o| o.consistency);
        assert_eq!(c("max_stale=5s"), Ok(Consistency::Stale));
        assert_eq!(c("max_stale=0s"), Ok(Consistency::Default));
        assert_eq!(
            c("max_stale=soon").err(),
            Some((400, "Invalid max_stale value \"soon\"".into()))
        );
        assert_eq!(
            c("max_stale=1m&consistent").err(),
            Some((
                400,
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into()
            ))
        );
        assert_eq!(
            c("cached&consistent").err(),
            Some((
                400,
                "Cannot specify ?cached with ?consistent, conflicting semantics.".into()
            ))
        );
        assert_eq!(c("leader"), Ok(Consistency::Default));
    }
}

#[cfg(test)]
mod json_error_tests {
    use super::*;
    use crate::go_json::go_json_error;

    fn err_of(body: &[u8]) -> String {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => panic!("{v} parsed"),
            Err(e) => go_json_error(&e, body),
        }
    }

    #[test]
    fn syntax_errors_read_like_go() {
        assert_eq!(err_of(br#"{"Name": "x", "TTL": "#), "unexpected EOF");
        assert_eq!(
            err_of(b"xyz"),
            "invalid character 'x' looking for beginning of value"
        );
        assert_eq!(
            err_of(b"{} x"),
            "invalid character 'x' after top-level value"
        );
        let e = decode_body::<serde_json::Value>(b"{")
            .err()
            .map(|e| (e.status, e.message));
        assert_eq!(
            e,
            Some((
                StatusCode::BAD_REQUEST,
                "Request decode failed: unexpected EOF".into()
            ))
        );
    }

    #[test]
    fn params_encode_like_go_url_values() {
        let req = actix_web::test::TestRequest::with_uri("/v1/kv/k?release=a%20b&cas=0&acquire")
            .to_http_request();
        assert_eq!(
            Params::from_request(&req).encode(),
            "acquire=&cas=0&release=a+b"
        );
    }
}
