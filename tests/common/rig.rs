//! Shared by the simulator-backed rollout tests: a fast simulator (boot, stabilization and
//! election shrunk instead of scaling its clock, so sessions keep Consul's real TTL rules), an
//! HTTP client for it and a scratch directory removed on drop.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use rehydrator::cloud::SimCloud;
use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::{Client, ConsulConfig, WatchPolicy};
use rehydrator::webhook::AwcWebhook;
use rehydrator_actors::ports::CloudPort;
use rehydrator_actors::tree::Ports;
use rehydrator_sim::{RunningSim, SimConfig};
use serde_json::{json, Value};

/// The simulator's cluster, fast: what a rollout must wait for per server.
pub const BOOT: Duration = Duration::from_millis(300);
pub const STABILIZATION: Duration = Duration::from_millis(1000);
pub const ELECTION: Duration = Duration::from_millis(200);
pub const FAILURE_DETECTION: Duration = Duration::from_millis(200);

/// The largest simulator response the rig reads.
const BODY_LIMIT: usize = 16 << 20;

/// A fast simulator's configuration with `servers` servers.
pub fn fast_sim(servers: usize) -> SimConfig {
    SimConfig {
        servers,
        boot_delay: BOOT,
        stabilization: STABILIZATION,
        election: ELECTION,
        failure_detection: FAILURE_DETECTION,
        ..SimConfig::default()
    }
}

pub struct Rig {
    pub sim: RunningSim,
    pub http: awc::Client,
    pub dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Rig {
    /// A fast simulator with `servers` servers and the scratch directory
    /// `rehydrator-{name}-{pid}` under the system's temporary directory.
    pub fn new(name: &str, servers: usize) -> Self {
        Self::with(name, fast_sim(servers))
    }

    /// As `new`, on the simulator configuration `config`.
    pub fn with(name: &str, config: SimConfig) -> Self {
        let sim = super::sim_with(config);
        let dir = std::env::temp_dir().join(format!("rehydrator-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self {
            sim,
            http: awc::Client::default(),
            dir,
        }
    }

    /// A replica's ports: Consul is the simulator, watched at most every 50ms; webhooks over
    /// HTTP; `cloud` as given.
    pub fn ports(&self, cloud: Rc<dyn CloudPort>) -> Ports {
        let client = Client::new(ConsulConfig::with_address(&self.sim.url()).expect("sim URL"))
            .expect("Consul client");
        let policy = WatchPolicy {
            min_interval: Duration::from_millis(50),
            ..WatchPolicy::default()
        };
        Ports {
            consul: Rc::new(ConsulAdapter::new(client, policy)),
            webhook: Rc::new(AwcWebhook::default()),
            cloud: Some(cloud),
            gates: Vec::new(),
            objects: None,
        }
    }

    /// As `ports`, with the simulator's own cloud.
    pub fn sim_ports(&self) -> Ports {
        self.ports(Rc::new(
            SimCloud::new(&self.sim.url()).expect("the simulator's cloud"),
        ))
    }

    /// Sends `method path` (with `body` as JSON) to the simulator: its status and body.
    pub async fn send_raw(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Vec<u8>) {
        let url = format!("{}{path}", self.sim.url());
        let req = match method {
            "PUT" => self.http.put(url),
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        };
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let bytes = resp
            .body()
            .limit(BODY_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (resp.status().as_u16(), bytes.to_vec())
    }

    /// As `send_raw`, failing the test unless the answer is a success; its body as JSON (null
    /// if it is none).
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        send(&self.http, &self.sim.url(), method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn json(&self, path: &str) -> Value {
        let (status, body) = self.send_raw("GET", path, None).await;
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("a JSON body")
    }

    /// Registers image `id` in the simulator's cloud (`broken`: its servers never get healthy).
    pub async fn register_image(&self, id: &str, broken: bool) {
        self.send(
            "POST",
            "/sim/images",
            Some(json!({ "id": id, "broken": broken })),
        )
        .await;
    }

    /// The simulator's servers, as `/sim/servers` lists them.
    pub async fn servers(&self) -> Vec<Value> {
        self.send("GET", "/sim/servers", None)
            .await
            .as_array()
            .cloned()
            .expect("/sim/servers lists the servers")
    }
}

/// Sends `method path` (with `body` as JSON) to the simulator at `base`: the body as JSON (null
/// if it is none), or what went wrong, the request failing or the answer not a success.
pub async fn send(
    http: &awc::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let url = format!("{base}{path}");
    let req = match method {
        "PUT" => http.put(url),
        "POST" => http.post(url),
        _ => http.get(url),
    };
    let sent = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    };
    let mut resp = sent.map_err(|e| format!("{method} {path}: {e}"))?;
    let bytes = resp
        .body()
        .limit(BODY_LIMIT)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "{method} {path}: {} {}",
            resp.status(),
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}
