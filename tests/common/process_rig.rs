//! Real Consul agents started through the process backend: `n` servers on image `a` and a
//! client agent in a data directory of the test's, every agent killed on drop (panics
//! included); a failed test keeps the agents' logs.

use std::path::PathBuf;
use std::time::Duration;

use rehydrator::cloud::process::{ProcessCloud, ProcessOptions};
use rehydrator::consul::{Client, ConsulConfig, QueryOptions};

/// What the agents run with: promotion after 2s instead of 10s, a 1s leave drain instead of 5s
/// (one block a line).
pub const AGENT_HCL: &str =
    "autopilot { server_stabilization_time = \"2s\" }\nperformance { leave_drain_time = \"1s\" }";

/// The `server_stabilization_time` in `AGENT_HCL`.
pub const STABILIZATION: Duration = Duration::from_secs(2);

/// How long a cluster may take to elect a leader with every server a voter.
pub const BOOT_BOUND: Duration = Duration::from_secs(90);

/// A data directory with its agents, all killed on drop.
pub struct ProcessRig {
    pub cloud: ProcessCloud,
    pub dir: PathBuf,
    pub consul_bin: PathBuf,
}

impl Drop for ProcessRig {
    fn drop(&mut self) {
        let stopped = self.cloud.stop_all();
        if std::thread::panicking() {
            eprintln!(
                "agents stopped ({stopped:?}); their logs are kept in {}",
                self.dir.join("machines").display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl ProcessRig {
    /// A rig in a scratch directory named after `name` and this process.
    pub fn new(name: &str, consul_bin: PathBuf) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rehydrator-cloud-process-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let cloud = ProcessCloud::new(ProcessOptions {
            consul_bin: consul_bin.clone(),
            data_dir: dir.clone(),
            agent_hcl: vec![AGENT_HCL.to_owned()],
        })
        .expect("a process cloud in a scratch directory");
        Self {
            cloud,
            dir,
            consul_bin,
        }
    }

    /// `n` servers on image `a` and the client agent; returns a client of the client agent
    /// once the cluster has a leader and `n` voters.
    pub async fn bootstrap(&self, n: usize) -> Client {
        self.cloud
            .register_image("a", None)
            .expect("image a registers");
        let servers = self.cloud.bootstrap(n, "a").expect("the servers start");
        assert_eq!(servers.len(), n);
        let port = self.cloud.start_client(0).expect("the client agent starts");
        let client = Client::new(
            ConsulConfig::with_address(&format!("http://127.0.0.1:{port}"))
                .expect("a loopback address"),
        )
        .expect("a client");
        super::eventually("a leader and every server a voter", BOOT_BOUND, || async {
            let leader = client.status_leader().await.ok().flatten()?;
            let raft = client
                .raft_configuration(&QueryOptions::default())
                .await
                .ok()?;
            (raft.voters() == n).then_some(leader)
        })
        .await;
        client
    }
}
