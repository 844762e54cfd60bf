//! The simulator's knobs: cluster size and the time constants a test or the demo may shrink.

use std::time::Duration;

/// How the simulated datacenter starts and how fast its clocks run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Datacenter name; `?dc=` naming any other answers "No path to datacenter".
    pub datacenter: String,
    /// Server nodes at start, all voters, the first one leading.
    pub servers: usize,
    /// Image label of the initial servers (node meta `image`).
    pub image: String,
    /// Node name of the agent that serves the HTTP API (a client agent, like an ECS host's).
    pub agent_node: String,
    /// Divides every simulated duration (session TTL, lock-delay, stabilization, boot, election).
    /// 1.0 is Consul's real timing; tests and the demo raise it.
    pub time_scale: f64,
    /// Autopilot `ServerStabilizationTime`: how long a new server stays a non-voter. Default 10s.
    pub stabilization: Duration,
    /// How long the cluster has no leader after the leader goes away. Default 2s.
    pub election: Duration,
    /// How long a machine added through the control API takes to boot and join. Default 5s.
    pub boot_delay: Duration,
    /// How long before serf marks a killed server `failed`. Default 1s.
    pub failure_detection: Duration,
    /// Consul's `rpc_hold_timeout`: how long a request that needs the leader waits for one
    /// (an election) before failing with "No cluster leader". Default 7s.
    pub rpc_hold_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            datacenter: "dc1".into(),
            servers: 3,
            image: "image-a".into(),
            agent_node: "sim-agent".into(),
            time_scale: 1.0,
            stabilization: Duration::from_secs(10),
            election: Duration::from_secs(2),
            boot_delay: Duration::from_secs(5),
            failure_detection: Duration::from_secs(1),
            rpc_hold_timeout: Duration::from_secs(7),
        }
    }
}

impl SimConfig {
    /// A simulated duration as wall-clock time under `time_scale`.
    pub fn scaled(&self, d: Duration) -> Duration {
        if self.time_scale > 0.0 && self.time_scale.is_finite() {
            d.div_f64(self.time_scale)
        } else {
            d
        }
    }
}
