//! The simulator's knobs: cluster size and the time constants a test or the demo may shrink.

use std::time::Duration;

/// The Consul version the simulated agents report.
pub const CONSUL_VERSION: &str = "1.17.3";

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
    /// The Consul version the simulated agents are (`agent/self`, members, autopilot). An
    /// older one answers what it lacks as that version does: before 1.15 transfer-leader, before
    /// 1.9 autopilot/state, are a bare 404. Default `CONSUL_VERSION`.
    pub consul_version: String,
    /// A known Consul bug to play: transfer-leader answering success but leaving leadership
    /// where it was, or moving it to another server than the one named. Default none.
    pub transfer_fault: TransferFault,
    /// Whether a terminated machine's agent leaves first, as Consul's `leave_on_terminate`
    /// makes it (the default for clients, not for servers). Off, TerminateInstances kills the
    /// agent: it stays a failed peer until force-left or pruned. Default on.
    pub leave_on_terminate: bool,
}

/// How transfer-leader misbehaves (`SimConfig::transfer_fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferFault {
    #[default]
    None,
    /// Answers `{"Success": true}` and moves nothing.
    Noop,
    /// Moves leadership to another voter than the one named.
    Elsewhere,
}

/// `major.minor.patch` of a version string (`1.8.7`, `v1.15.2`, `1.17.0-rc1`); None if it is
/// not one.
pub fn version_parts(v: &str) -> Option<(u32, u32, u32)> {
    let core = v.trim().trim_start_matches('v').split(['-', '+']).next()?;
    let mut p = core.split('.').map(|x| x.parse::<u32>().ok());
    let v = (p.next()??, p.next()??, p.next().unwrap_or(Some(0))?);
    p.next().is_none().then_some(v)
}

impl SimConfig {
    /// Whether the simulated Consul is at least `major.minor`.
    pub fn consul_at_least(&self, major: u32, minor: u32) -> bool {
        version_parts(&self.consul_version).is_none_or(|(a, b, _)| (a, b) >= (major, minor))
    }
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
            consul_version: CONSUL_VERSION.to_owned(),
            transfer_fault: TransferFault::None,
            leave_on_terminate: true,
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
