//! What the HTTP tests of the data-plane modules share: a simulator serving on a loopback
//! port, requests in one line, and a bound on every test.

use std::future::Future;
use std::time::Duration;

use actix_web::http::Method;

use crate::config::SimConfig;
use crate::server::RunningSim;
use crate::state::Sim;

/// How long any one of these tests may run.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Runs `fut`, failing the test if it outlives `LIMIT`.
pub async fn bounded<F: Future>(fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {LIMIT:?}"),
    }
}

/// A simulator on 127.0.0.1:0 with its clocks sped up `time_scale` times, and a client.
pub struct Api {
    pub running: RunningSim,
    client: awc::Client,
}

impl Api {
    pub fn start(time_scale: f64) -> Self {
        let config = SimConfig {
            time_scale,
            ..SimConfig::default()
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        match crate::server::start(addr, config) {
            Ok(running) => Self {
                running,
                client: awc::Client::builder().timeout(LIMIT).finish(),
            },
            Err(e) => panic!("the simulator could not bind a loopback port: {e}"),
        }
    }

    pub fn sim(&self) -> &Sim {
        &self.running.sim
    }

    pub async fn call(&self, method: Method, path: &str, body: &[u8]) -> Resp {
        let url = format!("{}{path}", self.running.url());
        let mut resp = match self
            .client
            .request(method.clone(), &url)
            .send_body(body.to_vec())
            .await
        {
            Ok(r) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let body = match resp.body().limit(4 * 1024 * 1024).await {
            Ok(b) => b.to_vec(),
            Err(e) => panic!("{method} {path}: reading the body: {e}"),
        };
        let headers = resp.headers().clone();
        let index = headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Resp {
            status: resp.status().as_u16(),
            index,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, b"").await
    }

    pub async fn put(&self, path: &str, body: &[u8]) -> Resp {
        self.call(Method::PUT, path, body).await
    }

    /// Polls `fut` until the simulator has `n` parked blocking queries, so a test writes
    /// only once its reader is really waiting. Fails if `fut` finishes first.
    pub async fn until_parked<F: Future + Unpin>(&self, fut: &mut F, n: usize)
    where
        F::Output: std::fmt::Debug,
    {
        while self.sim().lock().waiters.len() < n {
            tokio::select! {
                out = &mut *fut => panic!("the blocking read returned before parking: {out:?}"),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub index: Option<u64>,
    pub headers: awc::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}
