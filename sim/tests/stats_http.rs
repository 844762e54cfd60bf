//! `GET /sim/stats` over real HTTP: it counts Consul API requests (not the control API's own)
//! and the blocking queries parked, which a write releases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rehydrator_sim::{RunningSim, SimConfig};
use serde_json::Value;

async fn get(client: &awc::Client, url: &str) -> (u16, Value, Option<String>) {
    let mut resp = client.get(url).send().await.unwrap();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.body().await.unwrap();
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (resp.status().as_u16(), v, index)
}

async fn stats(client: &awc::Client, sim: &RunningSim) -> (u64, u64) {
    let (status, v, _) = get(client, &format!("{}/sim/stats", sim.url())).await;
    assert_eq!(status, 200, "{v}");
    (
        v["requests"].as_u64().unwrap(),
        v["parked"].as_u64().unwrap(),
    )
}

/// Polls the stats until `cond` holds, failing after a bound.
async fn until(client: &awc::Client, sim: &RunningSim, cond: impl Fn(u64, u64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (r, p) = stats(client, sim).await;
        if cond(r, p) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stats stuck at requests={r} parked={p}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn stats_count_consul_requests_and_parked_queries() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let sim =
            rehydrator_sim::start("127.0.0.1:0".parse().unwrap(), SimConfig::default()).unwrap();
        // Blocking queries hold their connections: no pool limit, so they park side by side.
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(0))
            .timeout(Duration::from_secs(20))
            .finish();
        assert_eq!(stats(&client, &sim).await, (0, 0), "a fresh simulator");

        let (status, _, index) = get(&client, &format!("{}/v1/kv/stats/k", sim.url())).await;
        assert_eq!(status, 404);
        let index = index.unwrap();
        // Control API calls are not Consul requests.
        assert_eq!(stats(&client, &sim).await, (1, 0));

        let parked: Vec<_> = (0..3)
            .map(|_| {
                let (client, url) = (
                    client.clone(),
                    format!("{}/v1/kv/stats/k?index={index}&wait=15s", sim.url()),
                );
                actix_rt::spawn(async move { get(&client, &url).await })
            })
            .collect();
        until(&client, &sim, |r, p| r == 4 && p == 3).await;

        let put = client
            .put(format!("{}/v1/kv/stats/k", sim.url()))
            .send_body("v")
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 200);
        for p in parked {
            let (status, _, _) = p.await.unwrap();
            assert_eq!(status, 200, "the write woke the parked read");
        }
        until(&client, &sim, |r, p| r == 5 && p == 0).await;
        sim.stop().await;
    })
    .await
    .expect("the test took too long");
}
