//! Shared by the simulator's HTTP tests: a small client for `/v1` and `/sim` calls, a fast
//! simulator, and the bound on every test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rehydrator_sim::{RunningSim, SimConfig};
use serde_json::Value;

pub const LIMIT: Duration = Duration::from_secs(30);

pub struct Api {
    base: String,
    client: awc::Client,
}

impl Api {
    pub fn new(sim: &RunningSim) -> Self {
        Self {
            base: sim.url(),
            client: awc::Client::default(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let req = self
            .client
            .request(method.parse().unwrap(), format!("{}{}", self.base, path));
        let mut resp = match body {
            Some(b) => req.send_json(&b).await.unwrap(),
            None => req.send().await.unwrap(),
        };
        let bytes = resp.body().await.unwrap();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (resp.status().as_u16(), v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call("POST", path, body).await
    }

    /// Polls GET `path` until `cond` holds, failing after a bound.
    pub async fn until(&self, path: &str, what: &str, cond: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, v) = self.get(path).await;
            if cond(status, &v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status} {v}"
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn server(&self, name: &str) -> Value {
        let (status, v) = self.get(&format!("/sim/servers/{name}")).await;
        assert_eq!(status, 200, "{v}");
        v
    }
}

/// 50× faster: boot 100 ms, stabilization 200 ms, election 40 ms.
pub fn start() -> RunningSim {
    rehydrator_sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            time_scale: 50.0,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}
