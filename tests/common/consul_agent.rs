//! A real Consul dev agent on loopback for the tests that run against real Consul: the binary
//! `CONSUL_BIN` names (`common::consul_bin`), every port its own (free ports, DNS and gRPC off),
//! its data in memory. Killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::moto::distinct_free_ports;

/// Starts tried before a port race fails the test.
const PORT_TRIES: usize = 3;

/// How long an agent may take to elect itself.
const START_BOUND: Duration = Duration::from_secs(30);

pub struct DevAgent {
    pub url: String,
    pub version: rehydrator::cloud::consul_version::Version,
    child: Child,
    log: std::path::PathBuf,
    /// The agent's extra configuration file, if it has one.
    config: Option<std::path::PathBuf>,
}

impl DevAgent {
    /// Starts `consul agent -dev` from `bin` and waits until it leads itself and its node is
    /// in the catalog.
    pub async fn start(bin: &Path) -> Self {
        Self::start_with(bin, None).await
    }

    /// Like `start`, with `hcl` (e.g. an `acl` block and its tokens) in a configuration file.
    pub async fn start_with(bin: &Path, hcl: Option<&str>) -> Self {
        // Free ports are free when picked, not when the agent binds them: another test may
        // take one between. An agent that exits for that is started again on new ones.
        for _ in 1..PORT_TRIES {
            if let Some(agent) = Self::try_start(bin, hcl).await {
                return agent;
            }
        }
        Self::try_start(bin, hcl)
            .await
            .expect("the dev agent lost a port race on every try")
    }

    /// One start; None if the agent exited because a port it was given had been taken.
    async fn try_start(bin: &Path, hcl: Option<&str>) -> Option<Self> {
        let version = rehydrator::cloud::consul_version::ask(bin).expect("a consul binary");
        let [http, serf_lan, serf_wan, server] = distinct_free_ports();
        let log = std::env::temp_dir().join(format!("rehydrator-dev-agent-{http}.log"));
        let config = hcl.map(|hcl| {
            let path = std::env::temp_dir().join(format!("rehydrator-dev-agent-{http}.hcl"));
            std::fs::write(&path, hcl).expect("the agent's configuration file");
            path
        });
        let mut cmd = Command::new(bin);
        cmd.args([
            "agent",
            "-dev",
            "-bind=127.0.0.1",
            "-client=127.0.0.1",
            "-dns-port=-1",
            "-grpc-port=-1",
        ])
        .arg(format!("-http-port={http}"))
        .arg(format!("-serf-lan-port={serf_lan}"))
        .arg(format!("-serf-wan-port={serf_wan}"))
        .arg(format!("-server-port={server}"))
        .args(version.agent_flags())
        .args(
            config
                .iter()
                .map(|c| format!("-config-file={}", c.display())),
        )
        .stdin(Stdio::null());
        // Errors (a configuration it refuses) go to stderr: keep them with the log.
        let out = std::fs::File::create(&log).expect("the agent's log");
        cmd.stderr(out.try_clone().expect("the agent's log"))
            .stdout(out);
        let child = cmd.spawn().expect("consul agent -dev starts");
        let mut agent = Self {
            url: format!("http://127.0.0.1:{http}"),
            version,
            child,
            log,
            config,
        };
        let http = awc::Client::default();
        let started = Instant::now();
        loop {
            let leader = async {
                let mut resp = http
                    .get(format!("{}/v1/status/leader", agent.url))
                    .send()
                    .await
                    .ok()?;
                let body = resp.body().await.ok()?;
                let leader: String = serde_json::from_slice(&body).ok()?;
                (!leader.is_empty()).then_some(())
            };
            // A leader is not enough: until the agent has registered its own node (a few
            // hundred ms later, more on a busy machine), a session create fails with "Missing
            // node registration". The agent logs that sync, ACLs or not.
            if leader.await.is_some()
                && std::fs::read_to_string(&agent.log)
                    .is_ok_and(|log| log.contains("agent: Synced node info"))
            {
                return Some(agent);
            }
            if let Some(status) = agent.child.try_wait().ok().flatten() {
                let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
                if log.contains("address already in use") {
                    return None;
                }
                // Any other exit will not heal: say why now, not after the whole bound.
                panic!("the dev agent ({version}) exited ({status}); its log: {log}");
            }
            assert!(
                started.elapsed() < START_BOUND,
                "the dev agent ({version}) did not elect itself and register its node within \
                 {START_BOUND:?}; its log: {}",
                std::fs::read_to_string(&agent.log).unwrap_or_default()
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}
