//! The simulated Auto Scaling group over real HTTP: a refresh that launches first and one that
//! terminates first, each without a guard (what they do to a Consul cluster shows in the
//! invariants); lifecycle hooks that hold a member until completed or until their heartbeat
//! timeout applies the default result, and heartbeats that extend it; a member marked
//! unhealthy replaced; AZ rebalancing and its suspension; scale-in protection; bad requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};

use crate::common::{bounded, start, Api};

fn members(g: &Value) -> Vec<Value> {
    g["members"].as_array().unwrap().clone()
}

fn lifecycle_of<'a>(g: &'a Value, name: &str) -> Option<&'a str> {
    g["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["lifecycle"].as_str())
}

async fn new_image(api: &Api) {
    let (status, v) = api
        .post("/sim/images", Some(json!({"id": "image-b"})))
        .await;
    assert_eq!(status, 201, "{v}");
}

/// Every member on `image`, `n` of them, in service, and the refresh over.
fn refreshed(g: &Value, image: &str, n: usize) -> bool {
    let m = members(g);
    m.len() == n
        && m.iter()
            .all(|m| m["image"] == image && m["lifecycle"] == "InService")
        && g["refresh"].is_null()
}

#[actix_rt::test]
async fn a_refresh_without_a_guard_replaces_every_server_and_the_invariants_show_the_cost() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        new_image(&api).await;
        let (status, g) = api.post("/sim/group", Some(json!({}))).await;
        assert_eq!(status, 201, "{g}");
        assert_eq!(
            (g["desired"].as_u64(), g["max"].as_u64()),
            (Some(3), Some(4))
        );
        assert_eq!(members(&g).len(), 3);
        let (status, _) = api.post("/sim/invariants/reset", Some(json!({}))).await;
        assert_eq!(status, 200);

        let (status, g) = api
            .call("PUT", "/sim/group", Some(json!({"image": "image-b"})))
            .await;
        assert_eq!(status, 200, "{g}");
        let (status, g) = api
            .post(
                "/sim/group/refresh",
                Some(json!({"min_healthy_percentage": 100, "max_healthy_percentage": 110})),
            )
            .await;
        assert_eq!(status, 200, "{g}");
        assert_eq!(g["refresh"]["status"], "InProgress");
        api.until("/sim/group", "the refresh to finish", |_, g| {
            refreshed(g, "image-b", 3)
        })
        .await;
        let (_, inv) = api.get("/sim/invariants").await;
        // Launch before terminate, yet the group knows nothing of Raft: it terminates an old
        // server as soon as the new machine runs, before that server is a voter.
        assert!(
            inv["min_failure_tolerance"].as_u64().unwrap() < 1
                || inv["leader_retired"].as_u64().unwrap() > 0,
            "the unguarded refresh went below the baseline or retired a leader: {inv}"
        );
        assert!(inv["max_servers"].as_u64().unwrap() <= 4, "{inv}");
    })
    .await;
}

#[actix_rt::test]
async fn a_hook_holds_a_member_until_completed_or_its_timeout() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        let hooks = json!([
            {"name": "rehydrator-terminating", "transition": "terminating",
             "heartbeat_timeout_ms": 600_000, "default_result": "CONTINUE"},
            {"name": "rehydrator-launching", "transition": "launching",
             "heartbeat_timeout_ms": 2_000, "default_result": "ABANDON"},
        ]);
        let (status, g) = api
            .post("/sim/group", Some(json!({"hooks": hooks, "max": 5})))
            .await;
        assert_eq!(status, 201, "{g}");

        // Scale-in by one: the member the group picks waits in Terminating:Wait.
        let (status, _) = api
            .call("PUT", "/sim/group", Some(json!({"desired": 2, "min": 2})))
            .await;
        assert_eq!(status, 200);
        let g = api
            .until("/sim/group", "a member held terminating", |_, g| {
                members(g)
                    .iter()
                    .any(|m| m["lifecycle"] == "Terminating:Wait")
            })
            .await;
        let held = members(&g)
            .into_iter()
            .find(|m| m["lifecycle"] == "Terminating:Wait")
            .unwrap();
        let name = held["name"].as_str().unwrap().to_owned();
        assert_eq!(held["pending_hooks"], json!(["rehydrator-terminating"]));
        assert_eq!(
            api.server(&name).await["machine"],
            "running",
            "held, still serving"
        );
        // A heartbeat extends it; a wrong hook is not found.
        let beat = json!({"instance": name, "hook": "rehydrator-terminating"});
        let (status, _) = api.post("/sim/group/heartbeat", Some(beat)).await;
        assert_eq!(status, 200);
        let wrong = json!({"instance": name, "hook": "other", "result": "CONTINUE"});
        let (status, e) = api.post("/sim/group/lifecycle", Some(wrong)).await;
        assert_eq!(status, 404, "{e}");
        let done =
            json!({"instance": name, "hook": "rehydrator-terminating", "result": "CONTINUE"});
        let (status, _) = api.post("/sim/group/lifecycle", Some(done)).await;
        assert_eq!(status, 200);
        api.until(
            &format!("/sim/servers/{name}"),
            "the member terminated",
            |_, s| s["machine"] == "terminated",
        )
        .await;
        let (_, g) = api.get("/sim/group").await;
        assert_eq!(members(&g).len(), 2, "{g}");

        // Scale out: the launch waits in Pending:Wait; nobody completes it, and the default
        // result ABANDON terminates it when the heartbeat timeout (2 s simulated) passes.
        let (status, _) = api
            .call("PUT", "/sim/group", Some(json!({"desired": 3})))
            .await;
        assert_eq!(status, 200);
        let g = api
            .until("/sim/group", "a member held launching", |_, g| {
                members(g).iter().any(|m| m["lifecycle"] == "Pending:Wait")
            })
            .await;
        let pending = members(&g)
            .into_iter()
            .find(|m| m["lifecycle"] == "Pending:Wait")
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned();
        api.until(
            &format!("/sim/servers/{pending}"),
            "the abandoned launch terminated",
            |_, s| s["machine"] == "terminated",
        )
        .await;
        let (_, g) = api.get("/sim/group").await;
        assert_eq!(lifecycle_of(&g, &pending), None, "{g}");
    })
    .await;
}

#[actix_rt::test]
async fn an_unhealthy_member_is_replaced_and_zones_rebalance_unless_suspended() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        let (_, servers) = api.get("/sim/servers").await;
        let names: Vec<String> = servers
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        // All three in one zone, AZRebalance suspended: nothing moves.
        let placement: serde_json::Map<String, Value> =
            names.iter().map(|n| (n.clone(), json!("zone-a"))).collect();
        let (status, g) = api
            .post(
                "/sim/group",
                Some(json!({"placement": placement, "suspended": ["AZRebalance"]})),
            )
            .await;
        assert_eq!(status, 201, "{g}");

        // Unhealthy: terminated (no hooks) and replaced, in the emptiest zone.
        let (status, _) = api
            .post("/sim/group/unhealthy", Some(json!({"instance": names[1]})))
            .await;
        assert_eq!(status, 200);
        let g = api
            .until("/sim/group", "the replacement", |_, g| {
                let m = members(g);
                m.len() == 3 && !m.iter().any(|m| m["name"] == names[1].as_str())
            })
            .await;
        let in_a = members(&g).iter().filter(|m| m["zone"] == "zone-a").count();
        assert_eq!(in_a, 2, "{g}");
        assert_eq!(api.server(&names[1]).await["machine"], "terminated");

        // AZRebalance resumed: the group launches into an empty zone, then a zone-a member goes.
        let (status, _) = api
            .call("PUT", "/sim/group", Some(json!({"suspended": []})))
            .await;
        assert_eq!(status, 200);
        let g = api
            .until("/sim/group", "balanced zones", |_, g| {
                let m = members(g);
                let in_a = m.iter().filter(|m| m["zone"] == "zone-a").count();
                m.len() == 3 && in_a == 1
            })
            .await;
        assert!(
            members(&g).iter().all(|m| m["lifecycle"] == "InService"),
            "{g}"
        );

        // Bad requests are named.
        for (path, body) in [
            (
                "/sim/group/refresh",
                json!({"min_healthy_percentage": 100, "max_healthy_percentage": 100}),
            ),
            ("/sim/group/unhealthy", json!({"instance": "nobody"})),
        ] {
            let (status, e) = api.post(path, Some(body)).await;
            assert!(status == 400 || status == 404, "{path}: {status} {e}");
            assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        }
        let (status, e) = api
            .call("PUT", "/sim/group", Some(json!({"desired": 9, "max": 4})))
            .await;
        assert_eq!(status, 400, "{e}");
        let (status, e) = api
            .call("PUT", "/sim/group", Some(json!({"suspended": ["Sleep"]})))
            .await;
        assert_eq!(status, 400, "{e}");
    })
    .await;
}
