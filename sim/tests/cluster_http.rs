//! The cluster plane over real HTTP: the control API drives a rollout step by hand (add a server,
//! wait for autopilot to make it a voter, move leadership, retire the old leader) while Consul's
//! endpoints report it; plus faults (kill, quorum loss) and the control API's errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use crate::common::{bounded, start, Api};

#[actix_rt::test]
async fn a_rollout_step_by_hand() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);

        let (status, health) = api.get("/v1/operator/autopilot/health").await;
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["FailureTolerance"], 1);

        let (status, v) = api
            .post("/sim/images", Some(json!({"id": "image-b"})))
            .await;
        assert_eq!(status, 201, "{v}");
        let (status, v) = api
            .post("/sim/servers", Some(json!({"image": "image-b"})))
            .await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["name"], "consul-server-4");
        assert_eq!(v["machine"], "booting");

        // Joined as a non-voter first, then promoted by autopilot.
        let cfg = api
            .until("/v1/operator/raft/configuration", "non-voter", |_, v| {
                v["Servers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["Node"] == "consul-server-4")
            })
            .await;
        let new = cfg["Servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Node"] == "consul-server-4")
            .unwrap();
        assert_eq!(new["Voter"], false, "{cfg}");
        let new_id = new["ID"].as_str().unwrap().to_owned();
        api.until("/v1/operator/autopilot/state", "promotion", |_, v| {
            v["Servers"][&new_id]["Status"] == "voter"
        })
        .await;
        let (_, nodes) = api.get("/v1/catalog/service/consul").await;
        assert_eq!(nodes.as_array().unwrap().len(), 4);

        // Move leadership to the new server, then retire the old leader gracefully.
        let (status, v) = api
            .post(
                &format!("/v1/operator/raft/transfer-leader?id={new_id}"),
                None,
            )
            .await;
        assert_eq!((status, v), (200, json!({"Success": true})));
        let (_, leader) = api.get("/v1/status/leader").await;
        assert_eq!(leader, "127.0.1.4:8300");
        let (status, _) = api.post("/sim/servers/consul-server-1/leave", None).await;
        assert_eq!(status, 200);
        let (_, peers) = api.get("/v1/status/peers").await;
        assert_eq!(peers.as_array().unwrap().len(), 3, "{peers}");
        let (_, members) = api.get("/v1/agent/members").await;
        let left = members
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Name"] == "consul-server-1")
            .unwrap();
        assert_eq!(left["Status"], 3);

        let (_, inv) = api.get("/sim/invariants").await;
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
        assert_eq!(inv["max_voters_missing"], 0, "{inv}");
        assert_eq!(inv["leader_changes"], 1, "{inv}");
        assert_eq!(inv["leaderless_ms"], 0, "{inv}");
    })
    .await;
}

#[actix_rt::test]
async fn faults_show_in_consuls_answers() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);

        api.post("/sim/servers/consul-server-3/kill", None).await;
        let (status, health) = api.get("/v1/operator/autopilot/health").await;
        assert_eq!(status, 429, "unhealthy autopilot answers 429: {health}");
        assert_eq!(health["Healthy"], false);
        assert_eq!(health["FailureTolerance"], 0);
        api.until(
            "/v1/health/state/critical",
            "serfHealth critical",
            |_, v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["Node"] == "consul-server-3")
            },
        )
        .await;

        api.post("/sim/servers/consul-server-2/kill", None).await;
        let (status, body) = api.get("/v1/catalog/nodes").await;
        assert_eq!((status, body), (500, json!("No cluster leader")));
        let (_, leader) = api.get("/v1/status/leader").await;
        assert_eq!(leader, "");
        let (status, _) = api.get("/v1/catalog/nodes?stale").await;
        assert_eq!(status, 200, "stale reads are served without a leader");
        let (_, inv) = api.get("/sim/invariants").await;
        assert_eq!(inv["quorum_lost_count"], 1, "{inv}");
        assert_eq!(inv["max_voters_missing"], 2, "{inv}");

        api.post("/sim/servers/consul-server-2/restart", None).await;
        api.until("/v1/status/leader", "a leader again", |_, v| v != "")
            .await;
        let (_, inv) = api.post("/sim/invariants/reset", None).await;
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
    })
    .await;
}

#[actix_rt::test]
async fn control_api_errors() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        let (status, v) = api.post("/sim/servers/nope/kill", None).await;
        assert_eq!(status, 404, "{v}");
        assert!(v["error"].as_str().unwrap().contains("nope"));
        let (status, _) = api.post("/sim/servers", Some(json!({"name": "x"}))).await;
        assert_eq!(status, 400);
        let (status, _) = api.post("/sim/servers/consul-server-1/restart", None).await;
        assert_eq!(status, 409, "restarting a running server");
        let (status, v) = api
            .call("PUT", "/sim/config", Some(json!({"time_scale": -1.0})))
            .await;
        assert_eq!(status, 400, "{v}");
        let (status, v) = api
            .call("PUT", "/sim/config", Some(json!({"election_ms": 500})))
            .await;
        assert_eq!(status, 200);
        assert_eq!(v["election_ms"], 500);
        let (status, v) = api
            .call("DELETE", "/v1/operator/raft/peer?id=nope", None)
            .await;
        assert_eq!(status, 500);
        assert_eq!(v, "id \"nope\" was not found in the Raft configuration");
    })
    .await;
}
