//! Shared by the status endpoint tests: a fast simulator, one `rehydrator run` replica on it
//! (the real binary, the rollout's configuration, its status endpoint on a free port), and
//! the few calls the tests make to both.
//!
//! The replica runs in its own process group, killed when the rig drops (pass or fail). The
//! endpoint's address is read from the replica's log ("Status endpoint serving on ..."), the
//! way an operator finds a port 0 endpoint.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rehydrator_sim::{RunningSim, SimConfig};
use serde_json::{json, Value};

use super::eventually;

pub const CLUSTER: &str = "dash";
pub const SERVERS: usize = 3;
pub const OLD_IMAGE: &str = "image-a";
pub const NEW_IMAGE: &str = "image-b";
/// How long a whole rollout may take here (boot 0.3 s and stabilization 1 s per server, on a
/// machine busy with other builds).
pub const ROLLOUT_BOUND: Duration = Duration::from_secs(60);

/// One simulator and one replica with its status endpoint, plus a scratch directory.
/// Field order is drop order: the replica goes before the simulator.
pub struct Rig {
    pub replica: Proc,
    pub sim: Option<RunningSim>,
    pub http: awc::Client,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// `http://127.0.0.1:PORT` of the replica's status endpoint.
    pub status_url: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
        kill_group(&self.replica.0);
        if std::thread::panicking() && std::env::var_os("STATUS_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process started by a test, killed with everything it started when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(&self.0);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILL to a process and everything it started (it leads its own group).
pub fn kill_group(child: &Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}

/// A fresh directory under the system temp dir.
pub fn scratch(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("rehydrator-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `rehydrator run --config config` in its own process group, logging to `log`.
pub fn spawn_run(config: &std::path::Path, log: &std::path::Path) -> Proc {
    spawn_run_at(config, log, "info,rehydrator_actors=debug")
}

/// As `spawn_run`, logging at `rust_log`.
pub fn spawn_run_at(config: &std::path::Path, log: &std::path::Path, rust_log: &str) -> Proc {
    use std::os::unix::process::CommandExt;
    let child = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .args(["--replica", "r1"])
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .env_remove("REHYDRATOR_REPLICA")
        .env_remove("REHYDRATOR_FAULT")
        .env_remove("REHYDRATOR_STATUS__LISTEN")
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .process_group(0)
        .spawn()
        .expect("the rehydrator binary starts");
    Proc(child)
}

impl Rig {
    /// A 3-server simulator on the old image, and a replica whose endpoint is serving.
    pub async fn start(tag: &str) -> Self {
        Self::start_with(tag, "").await
    }

    /// Like `start`, with `status_extra` (lines of the `[status]` table) in the configuration.
    pub async fn start_with(tag: &str, status_extra: &str) -> Self {
        let sim = super::sim_with(SimConfig {
            servers: SERVERS,
            image: OLD_IMAGE.into(),
            boot_delay: Duration::from_millis(300),
            stabilization: Duration::from_millis(1000),
            election: Duration::from_millis(200),
            failure_detection: Duration::from_millis(200),
            ..SimConfig::default()
        });
        let dir = scratch(tag);
        let config = dir.join("rehydrator.toml");
        // The shared rollout configuration sets `[status] listen = "127.0.0.1:0"`.
        std::fs::write(
            &config,
            super::rollout::config(
                CLUSTER,
                SERVERS,
                &sim.url(),
                "type = \"sim\"",
                "stable_timeout = \"1m\"",
            )
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:0\"\n{status_extra}"),
            ),
        )
        .unwrap();
        let log = dir.join("r1.log");
        let replica = spawn_run(&config, &log);
        let mut rig = Self {
            replica,
            sim: Some(sim),
            http: awc::Client::builder()
                .timeout(Duration::from_secs(20))
                .finish(),
            dir,
            log,
            status_url: String::new(),
        };
        let log = rig.log.clone();
        rig.status_url = eventually(
            "the replica to log its status endpoint's address",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                async move { endpoint_url(&text) }
            },
        )
        .await;
        rig
    }

    pub fn sim_url(&self) -> String {
        self.sim.as_ref().expect("the simulator is running").url()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` of the status endpoint: (status, content type, body).
    pub async fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.status_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.body().limit(16 << 20).await.unwrap().to_vec();
        (resp.status().as_u16(), ctype, body)
    }

    /// `method` on `path` with `authorization` as that header, if any: (status, the values of
    /// `Allow` and `WWW-Authenticate`, body).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> (u16, Vec<String>, Vec<u8>) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.status_url));
        if let Some(a) = authorization {
            req = req.insert_header(("authorization", a));
        }
        let mut resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let headers = ["allow", "www-authenticate"]
            .iter()
            .flat_map(|name| resp.headers().get_all(*name))
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect();
        let body = resp.body().limit(16 << 20).await.unwrap().to_vec();
        (resp.status().as_u16(), headers, body)
    }

    /// GET `path`, expecting JSON: (status, body).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, ctype, body) = self.get(path).await;
        assert!(
            ctype.starts_with("application/json"),
            "{path}: content type {ctype:?}"
        );
        let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
        });
        (status, v)
    }

    /// GETs `path` until it answers `status`, for up to `within`: its JSON body then.
    pub async fn until_status(&self, path: &str, status: u16, within: Duration) -> Value {
        eventually(&format!("{path} to answer {status}"), within, || async {
            let (got, body) = self.get_json(path).await;
            (got == status).then_some(body)
        })
        .await
    }

    /// The Consul API requests the simulator has received (`GET /sim/stats`).
    pub async fn consul_requests(&self) -> u64 {
        let stats = self.sim_call("GET", "/sim/stats", None).await;
        stats["requests"].as_u64().unwrap()
    }

    async fn sim_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.sim_url());
        let req = match method {
            "PUT" => self.http.put(url),
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        };
        let mut resp = match body {
            Some(b) => req.send_json(&b).await.unwrap(),
            None => req.send().await.unwrap(),
        };
        let bytes = resp.body().limit(16 << 20).await.unwrap();
        assert!(
            resp.status().is_success(),
            "{method} {path}: {} {}",
            resp.status(),
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    /// Waits for the replica's watches to take their baselines, registers the new image and
    /// fires `consul-rehydrate`: what an operator does to start a rollout.
    pub async fn start_rollout(&self) {
        eventually(
            "the replica's rehydrate and servers watches to take their baselines",
            Duration::from_secs(30),
            || {
                let text = self.log_text();
                async move {
                    ["watch=rehydrate", "watch=servers"]
                        .iter()
                        .all(|w| {
                            text.lines()
                                .any(|l| l.contains("Baseline taken.") && l.contains(w))
                        })
                        .then_some(())
                }
            },
        )
        .await;
        self.sim_call("POST", "/sim/images", Some(json!({"id": NEW_IMAGE})))
            .await;
        self.sim_call("PUT", "/v1/event/fire/consul-rehydrate", None)
            .await;
    }

    /// The simulator's servers that are not terminated, as (name, image).
    pub async fn live_servers(&self) -> Vec<(String, String)> {
        self.sim_call("GET", "/sim/servers", None)
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["machine"] != "terminated")
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or_default().to_owned(),
                    s["image"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Stops the simulator: Consul is gone for the replica.
    pub async fn stop_sim(&mut self) {
        if let Some(sim) = self.sim.take() {
            sim.stop().await;
        }
    }

    /// SIGTERM to the replica, and its exit status (within `limit`).
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.replica.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
        let start = Instant::now();
        loop {
            if let Some(s) = self.replica.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "no exit within {limit:?} of SIGTERM"
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The endpoint address from a replica's log line "Status endpoint serving on http://ADDR".
pub fn endpoint_url(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("Status endpoint serving on http://"))?;
    let start = line.find("http://")?;
    let url: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    Some(url.trim_end_matches('/').to_owned())
}
