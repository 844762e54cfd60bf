//! `SimCloud`, the actors' `CloudPort` over the simulator's control API, against an in-process
//! simulator over real HTTP: the newest image, an idempotent launch that boots (Pending, then
//! Running) and is promoted, a retire that takes the server out of Raft and off the list; and
//! how failures reach the port (rejected, unreachable, server error, undecodable).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use rehydrator::cloud::SimCloud;
use rehydrator_actors::ports::{CloudPort, ErrorKind, Machine, MachineState};
use rehydrator_sim::SimConfig;
use serde_json::{json, Value};

/// 10× faster: a machine boots in 500 ms and is promoted 1 s after it joins.
fn config() -> SimConfig {
    SimConfig {
        time_scale: 10.0,
        ..SimConfig::default()
    }
}

async fn get(base: &str, path: &str) -> Value {
    let mut resp = awc::Client::default()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap();
    resp.json().limit(1 << 20).await.unwrap()
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let mut resp = awc::Client::default()
        .post(format!("{base}{path}"))
        .send_json(&body)
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Polls `f` until it answers `Some`, failing after 10 s.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn find<'a>(machines: &'a [Machine], id: &str) -> Option<&'a Machine> {
    machines.iter().find(|m| m.id == id)
}

fn raft_nodes(cfg: &Value) -> Vec<String> {
    cfg["Servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Node"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_rt::test]
async fn launch_once_boot_and_retire() {
    common::bounded(async {
        let sim = common::sim_with(config());
        let base = sim.url();
        let cloud = SimCloud::new(&base).unwrap();

        // The servers at start, on the configured image.
        let start = cloud.machines().await.unwrap();
        assert_eq!(start.len(), 3, "{start:?}");
        let first = &start[0];
        assert_eq!(first.id, "consul-server-1");
        assert_eq!(first.node.as_deref(), Some("consul-server-1"));
        assert_eq!(first.address.as_deref(), Some("127.0.1.1"));
        assert_eq!(first.image, "image-a");
        assert_eq!(first.state, MachineState::Running);
        assert_eq!(first.token, None);
        assert_eq!(cloud.newest_image().await.unwrap().unwrap().id, "image-a");

        // A newer image appears.
        let (status, v) = post(&base, "/sim/images", json!({"id": "image-b"})).await;
        assert_eq!(status, 201, "{v}");
        let newest = cloud.newest_image().await.unwrap().unwrap();
        assert_eq!(
            (newest.id.as_str(), newest.name.as_str()),
            ("image-b", "image-b")
        );

        // A retried launch answers the same machine.
        let launched = cloud.launch("image-b", "demo/step-1").await.unwrap();
        assert_eq!(launched.state, MachineState::Pending);
        assert_eq!(launched.token.as_deref(), Some("demo/step-1"));
        assert_eq!(launched.image, "image-b");
        let again = cloud.launch("image-b", "demo/step-1").await.unwrap();
        assert_eq!(again.id, launched.id);
        assert_eq!(again.launched_at, launched.launched_at);
        let listed = cloud.machines().await.unwrap();
        assert_eq!(listed.len(), 4, "one machine for one token: {listed:?}");
        assert_eq!(
            find(&listed, &launched.id).unwrap().state,
            MachineState::Pending
        );

        // It boots, and autopilot makes it a voter.
        until("the machine runs", || async {
            let ms = cloud.machines().await.unwrap();
            (find(&ms, &launched.id)?.state == MachineState::Running).then_some(())
        })
        .await;
        let path = format!("/sim/servers/{}", launched.id);
        until("the new server is a voter", || async {
            (get(&base, &path).await["voter"] == true).then_some(())
        })
        .await;

        // Retiring an old follower: it leaves Raft and is no longer listed.
        cloud.retire("consul-server-2").await.unwrap();
        let cfg = get(&base, "/v1/operator/raft/configuration").await;
        assert!(
            !raft_nodes(&cfg).contains(&"consul-server-2".to_owned()),
            "{cfg}"
        );
        assert_eq!(raft_nodes(&cfg).len(), 3, "{cfg}");
        let listed = cloud.machines().await.unwrap();
        assert!(find(&listed, "consul-server-2").is_none(), "{listed:?}");
        assert_eq!(listed.len(), 3);
        // Retiring it again is a no-op, as a retried step needs.
        cloud.retire("consul-server-2").await.unwrap();
        // The token still answers the machine it launched; nothing new is launched.
        let again = cloud.launch("image-b", "demo/step-1").await.unwrap();
        assert_eq!(again.id, launched.id);

        let inv = get(&base, "/sim/invariants").await;
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
        assert_eq!(inv["leader_retired"], 0, "{inv}");
        assert_eq!(inv["max_servers"], 4, "{inv}");
        sim.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn failures_reach_the_port_with_their_kind() {
    common::bounded(async {
        let sim = common::sim_with(config());
        let cloud = SimCloud::new(&sim.url()).unwrap();

        let e = cloud.launch("ami-nope", "t").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
        assert!(e.message.contains("unknown image"), "{e}");
        let e = cloud.retire("no-such-machine").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
        sim.stop().await;

        // Nothing listening: a port that was free a moment ago.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gone = SimCloud::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = gone.machines().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
        assert!(e.is_retryable());
    })
    .await;
}

#[actix_rt::test]
async fn a_broken_answer_is_a_decode_or_server_error() {
    use actix_web::{web, App, HttpResponse, HttpServer};

    common::bounded(async {
        // A stand-in for a simulator gone wrong: garbage images, a failing server list.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = HttpServer::new(|| {
            App::new()
                .route(
                    "/sim/images",
                    web::get().to(|| async { HttpResponse::Ok().body("not json") }),
                )
                .route(
                    "/sim/servers",
                    web::get().to(|| async {
                        HttpResponse::ServiceUnavailable().json(json!({"error": "overloaded"}))
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);

        let cloud = SimCloud::new(&format!("http://{addr}")).unwrap();
        let e = cloud.newest_image().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Decode, "{e}");
        let e = cloud.machines().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Server, "{e}");
        assert!(e.message.contains("overloaded"), "{e}");
        handle.stop(false).await;
    })
    .await;
}
