//! `GET /sim/timeline` over real HTTP: a server's launch, promotion, leadership and departure
//! appear in the order they happened, each once, with the server's image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use crate::common::Api;
use serde_json::{json, Value};

/// The events of `server` in the timeline, as (event, at).
fn lane(timeline: &Value, server: &str) -> Vec<(String, u64)> {
    timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["server"] == server)
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["at"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn names(lane: &[(String, u64)]) -> Vec<&str> {
    lane.iter().map(|(e, _)| e.as_str()).collect()
}

#[actix_rt::test]
async fn the_timeline_logs_each_server_s_life_in_order() {
    tokio::time::timeout(common::LIMIT, async {
        let sim = common::start();
        let api = Api::new(&sim);

        let (status, start) = api.get("/sim/timeline").await;
        assert_eq!(status, 200, "{start}");
        assert_eq!(
            names(&lane(&start, "consul-server-1")),
            ["launched", "started", "joined", "voter", "leader"],
            "the bootstrap leader: {start:#}"
        );
        assert_eq!(
            names(&lane(&start, "consul-server-2")),
            ["launched", "started", "joined", "voter"]
        );

        let (status, _) = api
            .post("/sim/images", Some(json!({"id": "image-b"})))
            .await;
        assert_eq!(status, 201);
        let (status, s4) = api
            .post("/sim/servers", Some(json!({"image": "image-b"})))
            .await;
        assert_eq!(status, 201, "{s4}");
        let new = s4["name"].as_str().unwrap().to_owned();
        api.until(
            &format!("/sim/servers/{new}"),
            "the new server to vote",
            |_, v| v["voter"] == true,
        )
        .await;
        // The leader goes: it steps down, leaves Raft, its machine is terminated; another is
        // elected.
        let (status, _) = api
            .post("/sim/servers/consul-server-1/terminate", None)
            .await;
        assert_eq!(status, 200);
        api.until("/sim/invariants", "a new leader", |_, v| {
            v["leader"].is_string() && v["leader"] != "consul-server-1"
        })
        .await;

        let (_, timeline) = api.get("/sim/timeline").await;
        let b = lane(&timeline, &new);
        assert_eq!(
            names(&b)[..4],
            ["launched", "started", "joined", "voter"],
            "{timeline:#}"
        );
        // Boot (100 ms) then stabilization (200 ms) at the test's time scale, give or take.
        let launched = b[0].1;
        assert!(b[1].1 >= launched + 80, "booted too soon: {b:?}");
        assert!(b[3].1 >= b[2].1 + 150, "promoted too soon: {b:?}");
        assert!(timeline
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["server"] == new.as_str())
            .all(|e| e["image"] == "image-b"));

        let old = lane(&timeline, "consul-server-1");
        assert_eq!(
            names(&old),
            [
                "launched",
                "started",
                "joined",
                "voter",
                "leader",
                "follower",
                "left",
                "terminated"
            ],
            "{timeline:#}"
        );
        let leaders: Vec<&Value> = timeline
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "leader")
            .collect();
        assert_eq!(
            leaders.len(),
            2,
            "one election after the start: {timeline:#}"
        );
        let at: Vec<u64> = timeline
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["at"].as_u64().unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] <= w[1]), "oldest first: {at:?}");
        sim.stop().await;
    })
    .await
    .expect("the test finished within its bound");
}
