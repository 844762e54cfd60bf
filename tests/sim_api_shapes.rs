//! Contract tests: every Consul endpoint the simulator serves answers with the JSON shape of real
//! Consul's response (fixtures in tests/fixtures/consul, from Consul's API docs and Go source),
//! with the status code, Content-Type and, on blocking endpoints, the X-Consul-* headers.
#![allow(clippy::unwrap_used)]

use crate::common;

use serde_json::{json, Value};

use crate::common::contract::{Api, Reply};
use crate::common::shape::assert_fixture;
use crate::common::target::Target;

crate::contract_suite!(
    "api-shapes": kv_get_and_keys_have_consuls_shape,
    sessions_have_consuls_shape,
    events_have_consuls_shape,
    catalog_has_consuls_shape,
    health_has_consuls_shape,
    agent_has_consuls_shape,
    status_has_consuls_shape,
    operator_has_consuls_shape,
);

impl Reply {
    /// The body as JSON, after checking a 200 with Consul's JSON Content-Type.
    fn ok_json(&self) -> Value {
        assert_eq!(
            self.status,
            200,
            "{}: expected 200, got {}: {}",
            self.what,
            self.status,
            self.text()
        );
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "{}: Content-Type is {ct:?}, Consul answers application/json",
            self.what
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {}", self.what, self.text()))
    }

    /// The headers Consul's `setMeta` puts on every blocking read.
    fn assert_blocking_headers(&self) {
        let index = self.header("x-consul-index");
        let index: u64 = index
            .as_deref()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{}: X-Consul-Index is {index:?}", self.what));
        assert!(index > 0, "{}: X-Consul-Index is 0", self.what);
        assert_eq!(
            self.header("x-consul-knownleader").as_deref(),
            Some("true"),
            "{}: X-Consul-KnownLeader",
            self.what
        );
        let last_contact = self.header("x-consul-lastcontact");
        assert!(
            last_contact
                .as_deref()
                .is_some_and(|l| l.parse::<u64>().is_ok()),
            "{}: X-Consul-LastContact is {last_contact:?}",
            self.what
        );
    }
}

impl Api {
    async fn put_json(&self, path: &str, body: &Value) -> Reply {
        self.put(path, body.to_string().as_bytes()).await
    }

    /// A session with a TTL on the agent's node; its ID.
    async fn create_session(&self) -> String {
        let r = self
            .put_json(
                "/v1/session/create",
                &json!({"Name": "shape-test", "TTL": "30s", "Behavior": "release"}),
            )
            .await;
        let v = r.ok_json();
        assert_fixture("session_create.json", &v, &r.what);
        v["ID"].as_str().unwrap().to_owned()
    }

    /// Registers node `shape-node` with service `web-1` (name `web`) and a passing service check.
    async fn register_web(&self) {
        let body = json!({
            "Datacenter": "dc1",
            "Node": "shape-node",
            "Address": "10.0.0.5",
            "TaggedAddresses": {"lan": "10.0.0.5", "wan": "10.0.0.5"},
            "NodeMeta": {"rack": "r1"},
            "Service": {
                "ID": "web-1",
                "Service": "web",
                "Tags": ["v1"],
                "Address": "10.0.0.5",
                "Port": 8080,
                "Meta": {"version": "1"},
                "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 8080}}
            },
            "Check": {
                "Node": "shape-node",
                "CheckID": "service:web-1",
                "Name": "web check",
                "Status": "passing",
                "ServiceID": "web-1"
            }
        });
        let r = self.put_json("/v1/catalog/register", &body).await;
        assert_eq!(r.ok_json(), json!(true), "{}", r.what);
    }
}

/// How long a fired event may take to reach the agent's own list (gossip), and autopilot its
/// first health pass.
const LISTED_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Asserts a non-empty JSON array (an empty one would check no shape at all).
fn non_empty(v: &Value, what: &str) {
    assert!(
        v.as_array().is_some_and(|a| !a.is_empty()),
        "{what}: expected a non-empty array, got {v}"
    );
}

async fn kv_get_and_keys_have_consuls_shape(t: &Target) {
    let api = Api::new(t);

    let r = api.put("/v1/kv/shape/plain", b"hello").await;
    assert_eq!(r.ok_json(), json!(true), "{}", r.what);

    // An unlocked key: no Session field (omitempty in Consul).
    let r = api.get("/v1/kv/shape/plain").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    non_empty(&v, &r.what);
    assert_fixture("kv_get.json", &v, &r.what);
    assert_eq!(v[0]["Value"], json!("aGVsbG8="), "{}: base64 Value", r.what);
    assert!(
        v[0].get("Session").is_none(),
        "{}: Session on an unlocked key",
        r.what
    );

    // A locked key carries its session.
    let id = api.create_session().await;
    let r = api
        .put(&format!("/v1/kv/shape/lock?acquire={id}"), b"held")
        .await;
    assert_eq!(r.ok_json(), json!(true), "{}", r.what);
    let r = api.get("/v1/kv/shape/lock").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    assert_fixture("kv_get.json", &v, &r.what);
    assert_eq!(v[0]["Session"], json!(id), "{}", r.what);

    let r = api.get("/v1/kv/shape/?recurse").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{}: {v}", r.what);
    assert_fixture("kv_get.json", &v, &r.what);

    let r = api.get("/v1/kv/shape/?keys").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    assert_fixture("kv_keys.json", &v, &r.what);
    assert_eq!(v, json!(["shape/lock", "shape/plain"]), "{}", r.what);

    // A missing key is a 404 with an empty body, still with the index headers.
    let r = api.get("/v1/kv/shape/missing").await;
    assert_eq!(r.status, 404, "{}: {}", r.what, r.text());
    assert!(
        r.header("x-consul-index").is_some(),
        "{}: X-Consul-Index",
        r.what
    );
}

async fn sessions_have_consuls_shape(t: &Target) {
    let api = Api::new(t);
    let id = api.create_session().await;

    let r = api.get(&format!("/v1/session/info/{id}")).await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    non_empty(&v, &r.what);
    assert_fixture("session_entry.json", &v, &r.what);
    assert_eq!(v[0]["ID"], json!(id), "{}", r.what);
    assert_eq!(v[0]["TTL"], json!("30s"), "{}", r.what);
    assert_eq!(
        v[0]["LockDelay"],
        json!(15_000_000_000u64),
        "{}: ns",
        r.what
    );

    let r = api.get("/v1/session/list").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    non_empty(&v, &r.what);
    assert_fixture("session_entry.json", &v, &r.what);

    let node = v[0]["Node"].as_str().unwrap().to_owned();
    let r = api.get(&format!("/v1/session/node/{node}")).await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    non_empty(&v, &r.what);
    assert_fixture("session_entry.json", &v, &r.what);

    let r = api.put(&format!("/v1/session/renew/{id}"), b"").await;
    let v = r.ok_json();
    non_empty(&v, &r.what);
    assert_fixture("session_entry.json", &v, &r.what);

    let r = api.put(&format!("/v1/session/destroy/{id}"), b"").await;
    assert_eq!(r.ok_json(), json!(true), "{}", r.what);
}

async fn events_have_consuls_shape(t: &Target) {
    let api = Api::new(t);

    let r = api.put("/v1/event/fire/deploy", b"v2").await;
    let v = r.ok_json();
    assert_fixture("event_fire.json", &v, &r.what);
    assert_eq!(v["Name"], json!("deploy"), "{}", r.what);
    assert_eq!(v["Payload"], json!("djI="), "{}: base64 payload", r.what);

    let r = api.put("/v1/event/fire/empty", b"").await;
    let v = r.ok_json();
    assert_fixture("event_fire.json", &v, &r.what);

    // The firing agent learns its own event through gossip, like every other agent: the
    // list has it a moment later, not at once.
    let fired = std::time::Instant::now();
    let (r, v) = common::eventually("the fired events listed", LISTED_BOUND, || async {
        let r = api.get("/v1/event/list").await;
        let v = r.ok_json();
        (v.as_array().map(Vec::len) == Some(2)).then_some((r, v))
    })
    .await;
    println!(
        "{}: events listed {:?} after firing",
        t.name,
        fired.elapsed()
    );
    assert_fixture("event_list.json", &v, &r.what);
    // The event list's index is a hash of the last event's ID (agent/event_endpoint.go).
    assert!(
        r.header("x-consul-index")
            .is_some_and(|i| i.parse::<u64>().is_ok()),
        "{}: X-Consul-Index {:?}",
        r.what,
        r.header("x-consul-index")
    );

    let r = api.get("/v1/event/list?name=deploy").await;
    let v = r.ok_json();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{}: {v}", r.what);
    assert_fixture("event_list.json", &v, &r.what);
}

async fn catalog_has_consuls_shape(t: &Target) {
    let api = Api::new(t);
    api.register_web().await;

    let r = api.get("/v1/catalog/services").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    assert_fixture("catalog_services.json", &v, &r.what);
    assert_eq!(v["web"], json!(["v1"]), "{}", r.what);

    let r = api.get("/v1/catalog/service/web").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    non_empty(&v, &r.what);
    assert_fixture("catalog_service.json", &v, &r.what);

    let r = api.get("/v1/catalog/nodes").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    non_empty(&v, &r.what);
    assert_fixture("catalog_nodes.json", &v, &r.what);

    let mut nodes: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["Node"].as_str().map(str::to_owned))
        .collect();
    assert!(nodes.contains(&"shape-node".to_owned()), "{}: {v}", r.what);
    // A server node (the simulator's own) and the registered one.
    nodes.retain(|n| n != "shape-node");
    for node in [nodes[0].clone(), "shape-node".to_owned()] {
        let r = api.get(&format!("/v1/catalog/node/{node}")).await;
        let v = r.ok_json();
        r.assert_blocking_headers();
        assert_fixture("catalog_node.json", &v, &r.what);
    }
}

async fn health_has_consuls_shape(t: &Target) {
    let api = Api::new(t);
    api.register_web().await;

    let r = api.get("/v1/health/service/web").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    non_empty(&v, &r.what);
    assert_fixture("health_service.json", &v, &r.what);

    let r = api.get("/v1/health/checks/web").await;
    let v = r.ok_json();
    r.assert_blocking_headers();
    non_empty(&v, &r.what);
    assert_fixture("health_checks.json", &v, &r.what);

    for state in ["any", "passing"] {
        let r = api.get(&format!("/v1/health/state/{state}")).await;
        let v = r.ok_json();
        r.assert_blocking_headers();
        non_empty(&v, &r.what);
        assert_fixture("health_state.json", &v, &r.what);
    }

    let r = api.get("/v1/catalog/nodes").await;
    let nodes = r.ok_json();
    for node in nodes.as_array().unwrap() {
        let node = node["Node"].as_str().unwrap();
        let r = api.get(&format!("/v1/health/node/{node}")).await;
        let v = r.ok_json();
        r.assert_blocking_headers();
        assert_fixture("health_node.json", &v, &r.what);
    }
}

async fn agent_has_consuls_shape(t: &Target) {
    let api = Api::new(t);

    let r = api.get("/v1/agent/self").await;
    let v = r.ok_json();
    assert_fixture("agent_self.json", &v, &r.what);
    assert_eq!(v["Config"]["Datacenter"], json!("dc1"), "{}", r.what);

    let r = api.get("/v1/agent/members").await;
    let v = r.ok_json();
    non_empty(&v, &r.what);
    assert_fixture("agent_members.json", &v, &r.what);
}

async fn status_has_consuls_shape(t: &Target) {
    let api = Api::new(t);

    let r = api.get("/v1/status/leader").await;
    let v = r.ok_json();
    assert_fixture("status_leader.json", &v, &r.what);
    assert!(
        v.as_str().is_some_and(|s| s.contains(':')),
        "{}: leader is an ip:port string, got {v}",
        r.what
    );

    let r = api.get("/v1/status/peers").await;
    let v = r.ok_json();
    assert_fixture("status_peers.json", &v, &r.what);
    assert_eq!(v.as_array().map(Vec::len), Some(3), "{}: {v}", r.what);
}

async fn operator_has_consuls_shape(t: &Target) {
    let api = Api::new(t);

    let r = api.get("/v1/operator/raft/configuration").await;
    let v = r.ok_json();
    assert_fixture("raft_configuration.json", &v, &r.what);
    assert_eq!(
        v["Servers"].as_array().map(Vec::len),
        Some(3),
        "{}: {v}",
        r.what
    );

    let r = api.get("/v1/operator/autopilot/configuration").await;
    let v = r.ok_json();
    assert_fixture("autopilot_configuration.json", &v, &r.what);

    // Healthy: 200 (429 when unhealthy, agent/operator_endpoint.go). Real autopilot answers
    // 429 with `"Servers": null` until its first health pass after the cluster boots.
    let r = common::eventually("autopilot healthy", LISTED_BOUND, || async {
        let r = api.get("/v1/operator/autopilot/health").await;
        (r.status != 429).then_some(r)
    })
    .await;
    let v = r.ok_json();
    assert_fixture("autopilot_health.json", &v, &r.what);

    let r = api.get("/v1/operator/autopilot/state").await;
    if !t.at_least(1, 9) {
        // Added in 1.9: before, no such route (a bare 404).
        assert_eq!((r.status, r.text().as_str()), (404, ""), "{}", r.what);
        return;
    }
    let v = r.ok_json();
    assert_fixture("autopilot_state.json", &v, &r.what);
    let leader = v["Leader"].as_str().unwrap();
    assert!(
        v["Servers"].get(leader).is_some(),
        "{}: Leader {leader} is a key of Servers: {v}",
        r.what
    );
}

/// The checker itself: it must catch what it exists to catch.
mod checker {
    use super::common::shape::{shape_errors, Rules};
    use serde_json::json;

    fn strict(fx: &serde_json::Value, act: &serde_json::Value) -> Vec<String> {
        shape_errors(fx, act, "test", &Rules::default())
    }

    #[test]
    fn same_shape_passes() {
        let fx = json!([{"Key": "a", "Flags": 0, "Ok": true, "Tags": ["x"], "N": {"A": 1}}]);
        let act = json!([
            {"Key": "b", "Flags": 7, "Ok": false, "Tags": [], "N": {"A": 2}},
            {"Key": "c", "Flags": 1, "Ok": true, "Tags": ["y", "z"], "N": {"A": 3}}
        ]);
        assert_eq!(strict(&fx, &act), Vec::<String>::new());
    }

    #[test]
    fn wrong_type_fails() {
        let errors = strict(&json!({"LockDelay": 15}), &json!({"LockDelay": "15s"}));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("$.LockDelay"), "{errors:?}");
        assert!(
            errors[0].contains("expected number, got string"),
            "{errors:?}"
        );
    }

    #[test]
    fn wrong_type_inside_array_elements_fails() {
        let errors = strict(&json!([{"Port": 1}]), &json!([{"Port": 1}, {"Port": "2"}]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("$[1].Port"), "{errors:?}");
    }

    #[test]
    fn missing_field_fails() {
        let errors = strict(&json!({"ID": "x", "Name": "n"}), &json!({"ID": "y"}));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("$.Name: missing"), "{errors:?}");
    }

    #[test]
    fn wrong_casing_fails_and_says_so() {
        let errors = strict(&json!({"ModifyIndex": 1}), &json!({"modifyIndex": 1}));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("wrong casing"), "{errors:?}");
        assert!(errors[0].contains("modifyIndex"), "{errors:?}");
    }

    #[test]
    fn invented_field_fails_unless_allowed() {
        let fx = json!({"ID": "x"});
        let act = json!({"ID": "x", "Bogus": 1});
        let errors = strict(&fx, &act);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("$.Bogus: unexpected field"),
            "{errors:?}"
        );

        let rules = Rules::from_json(&json!({"extra": ["$.Bogus"]}));
        assert!(shape_errors(&fx, &act, "t", &rules).is_empty());
        let rules = Rules::from_json(&json!({"extra": ["$.*"]}));
        assert!(shape_errors(&fx, &act, "t", &rules).is_empty());
    }

    #[test]
    fn null_fixture_matches_anything_but_null_actual_needs_a_rule() {
        assert!(strict(&json!({"P": null}), &json!({"P": "abc"})).is_empty());
        let errors = strict(&json!({"P": "abc"}), &json!({"P": null}));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let rules = Rules::from_json(&json!({"nullable": ["$.P"]}));
        assert!(shape_errors(&json!({"P": "abc"}), &json!({"P": null}), "t", &rules).is_empty());
    }

    #[test]
    fn optional_field_may_be_absent() {
        let fx = json!([{"Key": "k", "Session": "s"}]);
        let act = json!([{"Key": "k"}]);
        assert_eq!(strict(&fx, &act).len(), 1);
        let rules = Rules::from_json(&json!({"optional": ["$[].Session"]}));
        assert!(shape_errors(&fx, &act, "t", &rules).is_empty());
    }

    #[test]
    fn maps_check_every_value_against_the_fixture_value() {
        let fx = json!({"Servers": {"id-1": {"Name": "a", "Healthy": true}}});
        let act = json!({"Servers": {
            "x": {"Name": "b", "Healthy": false},
            "y": {"Name": "c", "Healthy": "yes"}
        }});
        let rules = Rules::from_json(&json!({"maps": ["$.Servers"]}));
        let errors = shape_errors(&fx, &act, "t", &rules);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("$.Servers[\"y\"].Healthy"), "{errors:?}");
        // Without the map rule the keys themselves are fields, and "x"/"y" are not "id-1".
        assert!(!strict(&fx, &act).is_empty());
    }

    #[test]
    fn messages_name_the_endpoint() {
        let errors = shape_errors(&json!({"A": 1}), &json!({}), "GET /v1/x", &Rules::default());
        assert!(errors[0].starts_with("GET /v1/x: "), "{errors:?}");
    }

    #[test]
    fn every_fixture_parses_and_has_rules() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/consul");
        let rules: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("rules.json")).unwrap())
                .unwrap();
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if !name.ends_with(".json") || name == "rules.json" {
                continue;
            }
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let _: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"));
            assert!(
                rules.get(&name).is_some(),
                "{name} has no entry in rules.json"
            );
            assert!(readme.contains(&name), "{name} has no line in README.md");
        }
    }
}
