//! The simulated cloud over real HTTP: the image registry, idempotent launches by token, a broken
//! image whose server never gets promoted, an image that never boots and a machine that fails
//! (each terminated with EC2's reason), terminating the leader and a follower, and the
//! invariants a rollout is judged by (`leader_retired`, `max_servers`, `min_voters`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};

use crate::common::{bounded, start, Api};

fn names_in_raft(cfg: &Value) -> Vec<String> {
    cfg["Servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Node"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_rt::test]
async fn the_image_registry() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);

        let (status, images) = api.get("/sim/images").await;
        assert_eq!(status, 200);
        let images = images.as_array().unwrap().clone();
        assert_eq!(images.len(), 1, "the configured image: {images:?}");
        assert_eq!(images[0]["id"], "image-a");
        assert_eq!(images[0]["name"], "image-a");
        assert_eq!(images[0]["broken"], false);
        let a_created = images[0]["created"].as_str().unwrap().to_owned();
        assert!(a_created.ends_with('Z') && a_created.len() == 24, "{a_created}");

        let (status, b) = api.post("/sim/images", Some(json!({"id": "image-b"}))).await;
        assert_eq!(status, 201, "{b}");
        assert_eq!(b["name"], "image-b");
        assert_eq!(b["broken"], false);
        assert!(
            b["created"].as_str().unwrap() > a_created.as_str(),
            "now is newer than a day before start: {b}"
        );

        let (status, c) = api
            .post(
                "/sim/images",
                Some(json!({"id": "ami-c", "name": "consul-2024-05", "created": "2024-05-01T12:00:00Z", "broken": true})),
            )
            .await;
        assert_eq!(status, 201, "{c}");
        assert_eq!(
            c,
            json!({"id": "ami-c", "name": "consul-2024-05", "created": "2024-05-01T12:00:00.000Z", "broken": true})
        );
        let (_, all) = api.get("/sim/images").await;
        let ids: Vec<&str> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["image-a", "image-b", "ami-c"]);

        let (status, v) = api.post("/sim/images", Some(json!({"id": "image-b"}))).await;
        assert_eq!(status, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("image-b"), "{v}");
        for bad in [
            json!({"id": ""}),
            json!({"name": "x"}),
            json!({"id": "d", "created": "last tuesday"}),
            json!({"id": "d", "created": "2024-05-01T12:00:00+02:00"}),
            json!({"id": "d", "colour": "blue"}),
        ] {
            let (status, v) = api.post("/sim/images", Some(bad.clone())).await;
            assert_eq!(status, 400, "{bad} → {v}");
            assert!(v["error"].is_string(), "{v}");
        }
    })
    .await;
}

#[actix_rt::test]
async fn a_launch_token_launches_once() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        api.post("/sim/images", Some(json!({"id": "image-b"})))
            .await;
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;

        let (status, first) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "image-b", "token": "step-1"})),
            )
            .await;
        assert_eq!(status, 201, "{first}");
        assert_eq!(first["token"], "step-1");
        assert_eq!(first["machine"], "booting");
        let launched_at = first["launched_at"].as_u64().unwrap();
        assert!(launched_at >= before, "{launched_at} >= {before}");

        let (status, again) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "image-b", "token": "step-1"})),
            )
            .await;
        assert_eq!(
            status, 200,
            "the same token answers the same server: {again}"
        );
        assert_eq!(again["name"], first["name"]);
        assert_eq!(again["id"], first["id"]);
        let (_, servers) = api.get("/sim/servers").await;
        assert_eq!(
            servers.as_array().unwrap().len(),
            4,
            "one launch: {servers}"
        );
        let initial = &servers[0];
        assert_eq!(initial["token"], Value::Null);

        // The same token for another image is EC2's IdempotentParameterMismatch.
        let (status, v) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "image-a", "token": "step-1"})),
            )
            .await;
        assert_eq!(status, 409, "{v}");

        // A terminated machine still answers for its token: a retried step never relaunches.
        let name = first["name"].as_str().unwrap();
        let (status, v) = api
            .post(&format!("/sim/servers/{name}/terminate"), None)
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["machine"], "terminated");
        let (status, v) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "image-b", "token": "step-1"})),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["name"], name);
        assert_eq!(v["machine"], "terminated");

        // A new token launches a new machine; its name is never a terminated one's.
        let (status, v) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "image-b", "token": "step-2"})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        assert_ne!(v["name"], name);

        let (status, v) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "image-b", "token": ""})),
            )
            .await;
        assert_eq!(status, 400, "{v}");
    })
    .await;
}

#[actix_rt::test]
async fn an_unknown_image_is_refused() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        let (status, v) = api
            .post("/sim/servers", Some(json!({"image": "ami-nope"})))
            .await;
        assert_eq!(status, 400, "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.starts_with("unknown image"), "{msg}");
        assert!(msg.contains("ami-nope"), "{msg}");
        let (_, servers) = api.get("/sim/servers").await;
        assert_eq!(servers.as_array().unwrap().len(), 3, "nothing launched");
    })
    .await;
}

#[actix_rt::test]
async fn machines_that_fail_are_terminated_with_the_clouds_reason() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        let why = "Client.InvalidKernelId.Malformed: no kernel";
        let (_, img) = api
            .post(
                "/sim/images",
                Some(json!({"id": "noboot", "boot_failure": why})),
            )
            .await;
        assert_eq!(img["boot_failure"], why, "{img}");
        api.post("/sim/images", Some(json!({"id": "good"}))).await;

        // An image that does not boot: terminated, with its reason, when the boot would end.
        let (_, s) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "noboot", "token": "t1"})),
            )
            .await;
        assert_eq!(
            (&s["machine"], &s["reason"]),
            (&json!("booting"), &Value::Null)
        );
        let name = s["name"].as_str().unwrap().to_owned();
        let s = api
            .until(
                &format!("/sim/servers/{name}"),
                "the machine that does not boot is terminated",
                |_, v| v["machine"] == "terminated",
            )
            .await;
        assert_eq!(
            (&s["reason"], &s["in_raft"]),
            (&json!(why), &json!(false)),
            "{s}"
        );
        // Its token still answers the dead machine, as EC2's ClientToken does.
        let (status, again) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "noboot", "token": "t1"})),
            )
            .await;
        assert_eq!((status, &again["name"]), (200, &json!(name)));

        // A machine that fails after it joined: its agent dies without leaving, and the
        // machine is terminated with EC2's reason for an instance that failed.
        let (_, s) = api
            .post("/sim/servers", Some(json!({"image": "good"})))
            .await;
        let name = s["name"].as_str().unwrap().to_owned();
        api.until(
            &format!("/sim/servers/{name}"),
            "the new server joins Raft",
            |_, v| v["in_raft"] == true,
        )
        .await;
        let (status, s) = api.post(&format!("/sim/servers/{name}/fail"), None).await;
        assert_eq!(status, 200, "{s}");
        assert_eq!(
            (&s["machine"], &s["reason"]),
            (
                &json!("terminated"),
                &json!("Server.InternalError: Internal error on launch")
            ),
            "{s}"
        );
        let (status, _) = api.post(&format!("/sim/servers/{name}/fail"), None).await;
        assert_eq!(status, 409, "a terminated machine cannot fail again");
        // A terminate through the API says so; a live machine has no reason.
        let (_, s) = api
            .post("/sim/servers/consul-server-3/terminate", None)
            .await;
        assert_eq!(
            s["reason"],
            "Client.UserInitiatedShutdown: User initiated shutdown"
        );
        assert_eq!(api.server("consul-server-1").await["reason"], Value::Null);
    })
    .await;
}

#[actix_rt::test]
async fn a_server_from_a_broken_image_is_never_promoted() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        api.post("/sim/images", Some(json!({"id": "bad", "broken": true})))
            .await;
        api.post("/sim/images", Some(json!({"id": "good"}))).await;

        let (status, broken) = api
            .post("/sim/servers", Some(json!({"image": "bad"})))
            .await;
        assert_eq!(status, 201, "{broken}");
        let broken_name = broken["name"].as_str().unwrap().to_owned();
        // It boots, joins serf and enters Raft as a non-voter...
        api.until(
            &format!("/sim/servers/{broken_name}"),
            "the broken server joins Raft",
            |_, v| v["in_raft"] == true,
        )
        .await;
        let s = api.server(&broken_name).await;
        assert_eq!(
            (&s["machine"], &s["serf"], &s["voter"], &s["healthy"]),
            (
                &json!("running"),
                &json!("alive"),
                &json!(false),
                &json!(false)
            ),
            "{s}"
        );
        let (status, health) = api.get("/v1/operator/autopilot/health").await;
        assert_eq!(
            status, 429,
            "one unhealthy peer makes autopilot unhealthy: {health}"
        );
        let peer = health["Servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["Name"] == broken_name.as_str())
            .unwrap()
            .clone();
        assert_eq!(peer["Healthy"], false, "{peer}");
        assert_eq!(
            health["FailureTolerance"], 1,
            "the voters are fine: {health}"
        );

        // ...and a healthy server launched after it is promoted, so stabilization has passed
        // for the broken one too: it still is not a voter.
        let (_, good) = api
            .post("/sim/servers", Some(json!({"image": "good"})))
            .await;
        let good_name = good["name"].as_str().unwrap().to_owned();
        api.until(
            &format!("/sim/servers/{good_name}"),
            "the healthy server is promoted",
            |_, v| v["voter"] == true,
        )
        .await;
        let s = api.server(&broken_name).await;
        assert_eq!(
            (&s["voter"], &s["healthy"]),
            (&json!(false), &json!(false)),
            "{s}"
        );
        let (_, state) = api.get("/v1/operator/autopilot/state").await;
        let id = s["id"].as_str().unwrap();
        assert_eq!(state["Servers"][id]["Status"], "non-voter", "{state}");
        assert_eq!(state["Healthy"], false);
    })
    .await;
}

#[actix_rt::test]
async fn terminating_the_leader_elects_another_and_counts_as_retired() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        let (status, v) = api
            .post("/sim/servers/consul-server-1/terminate", None)
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["machine"], "terminated");
        assert_eq!(v["serf"], "left");
        assert_eq!(v["in_raft"], false);
        assert_eq!(v["leader"], false);

        api.until("/v1/status/leader", "a new leader", |_, v| v != "")
            .await;
        let (_, cfg) = api.get("/v1/operator/raft/configuration").await;
        assert_eq!(names_in_raft(&cfg), ["consul-server-2", "consul-server-3"]);
        let (_, inv) = api.get("/sim/invariants").await;
        assert_eq!(inv["leader_retired"], 1, "{inv}");
        assert_eq!(inv["leader_changes"], 1, "{inv}");
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
        assert_eq!(inv["min_voters"], 2, "{inv}");
        assert_eq!(inv["max_servers"], 3, "{inv}");

        // Still listed, accepting nothing but another terminate (a no-op, as on EC2).
        let (_, servers) = api.get("/sim/servers").await;
        assert_eq!(servers[0]["machine"], "terminated", "{servers}");
        let (status, _) = api.post("/sim/servers/consul-server-1/restart", None).await;
        assert_eq!(status, 409);
        let (status, _) = api
            .post("/sim/servers/consul-server-1/terminate", None)
            .await;
        assert_eq!(status, 200);
        let (_, inv) = api.get("/sim/invariants").await;
        assert_eq!(inv["leader_retired"], 1, "{inv}");
        let (_, nodes) = api.get("/v1/catalog/service/consul").await;
        assert_eq!(nodes.as_array().unwrap().len(), 2, "{nodes}");
    })
    .await;
}

#[actix_rt::test]
async fn terminating_a_follower_takes_it_out_of_raft() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        let (status, v) = api
            .post("/sim/servers/consul-server-3/terminate", None)
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["machine"], "terminated");
        let (_, cfg) = api.get("/v1/operator/raft/configuration").await;
        assert_eq!(names_in_raft(&cfg), ["consul-server-1", "consul-server-2"]);
        let (_, leader) = api.get("/v1/status/leader").await;
        assert_eq!(leader, "127.0.1.1:8300", "leadership stays");
        let (_, inv) = api.get("/sim/invariants").await;
        assert_eq!(inv["leader_retired"], 0, "{inv}");
        assert_eq!(inv["leader_changes"], 0, "{inv}");
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");

        // Leaving or killing the leader through the control API counts too.
        api.post("/sim/invariants/reset", None).await;
        api.post("/sim/servers/consul-server-1/kill", None).await;
        let (_, inv) = api.get("/sim/invariants").await;
        assert_eq!(inv["leader_retired"], 1, "{inv}");
    })
    .await;
}

#[actix_rt::test]
async fn a_rollout_step_keeps_the_invariants() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        api.post("/sim/images", Some(json!({"id": "image-b"})))
            .await;
        let (_, inv) = api.post("/sim/invariants/reset", None).await;
        assert_eq!(
            (&inv["max_servers"], &inv["min_voters"]),
            (&json!(3), &json!(3))
        );

        let (_, new) = api
            .post(
                "/sim/servers",
                Some(json!({"image": "image-b", "token": "t"})),
            )
            .await;
        let new_name = new["name"].as_str().unwrap().to_owned();
        let promoted = api
            .until(&format!("/sim/servers/{new_name}"), "promotion", |_, v| {
                v["voter"] == true
            })
            .await;
        let id = promoted["id"].as_str().unwrap();
        let (status, _) = api
            .post(&format!("/v1/operator/raft/transfer-leader?id={id}"), None)
            .await;
        assert_eq!(status, 200);
        let (status, _) = api
            .post("/sim/servers/consul-server-1/terminate", None)
            .await;
        assert_eq!(status, 200);

        let (_, inv) = api.get("/sim/invariants").await;
        assert_eq!(inv["leader_retired"], 0, "{inv}");
        assert_eq!(inv["max_servers"], 4, "{inv}");
        assert_eq!(inv["min_voters"], 3, "{inv}");
        assert_eq!(inv["min_failure_tolerance"], 1, "{inv}");
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
    })
    .await;
}

/// `/sim/config`'s `consul_version` makes the agents an older Consul where the project branches
/// on it, answering what that version lacks as Go's mux does (a bare 404, as a real 1.8.7 agent
/// answers both routes); a string that is no version is refused.
#[actix_rt::test]
async fn an_older_consul_version_answers_the_routes_it_lacks_with_a_bare_404() {
    bounded(async {
        let sim = start();
        let api = Api::new(&sim);
        let (status, _) = api.get("/v1/operator/autopilot/state").await;
        assert_eq!(status, 200);
        let (status, cfg) = api
            .call(
                "PUT",
                "/sim/config",
                Some(json!({"consul_version": "1.8.7"})),
            )
            .await;
        assert_eq!((status, &cfg["consul_version"]), (200, &json!("1.8.7")));
        let (_, me) = api.get("/v1/agent/self").await;
        assert_eq!(me["Config"]["Version"], "1.8.7");
        let http = awc::Client::default();
        for (method, path) in [
            ("POST", "/v1/operator/raft/transfer-leader"),
            ("GET", "/v1/operator/autopilot/state"),
        ] {
            let req = http.request(method.parse().unwrap(), format!("{}{path}", sim.url()));
            let mut resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 404, "{method} {path}");
            assert!(
                resp.body().await.unwrap().is_empty(),
                "{method} {path}: a bare 404"
            );
        }
        // What 1.8 has still answers.
        let (status, _) = api.get("/v1/operator/autopilot/health").await;
        assert_eq!(status, 200);
        let (status, err) = api
            .call(
                "PUT",
                "/sim/config",
                Some(json!({"consul_version": "one.eight"})),
            )
            .await;
        assert_eq!(status, 400, "{err}");
        assert!(
            err["error"].as_str().unwrap().contains("one.eight"),
            "{err}"
        );
    })
    .await;
}
