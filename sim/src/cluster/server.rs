//! A simulated Consul server: its machine, serf membership and Raft role, what autopilot
//! knows of its health, and the invariants the tests and the demo read. Plain data; the
//! decisions over a set of servers are `raft`'s, the state machine that changes them
//! `lifecycle`'s.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Raft / server RPC port, the port in every Raft address.
pub const RAFT_PORT: u16 = 8300;
/// Serf LAN port, the port `/v1/agent/members` shows.
pub const SERF_LAN_PORT: u16 = 8301;
/// Autopilot's reconcile interval in Consul (`AutopilotInterval`, 10s): a failed server is pruned
/// at the first reconcile after it is seen failed.
pub const AUTOPILOT_INTERVAL: Duration = Duration::from_secs(10);

/// Where a server's machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// Launched, not yet joined (boot_delay).
    Booting,
    /// The Consul process runs.
    Running,
    /// Left gracefully; the process exited.
    Stopped,
    /// The process died without leaving.
    Killed,
    /// The machine is gone (its agent left first if it could). Kept in the list so a launch
    /// token still finds it; counts nowhere else.
    Terminated,
}

/// A member's serf status (`serf.MemberStatus`), from the cluster's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerfStatus {
    None,
    Alive,
    Left,
    Failed,
}

impl SerfStatus {
    /// The number `/v1/agent/members` sends.
    pub fn code(self) -> u8 {
        match self {
            SerfStatus::None => 0,
            SerfStatus::Alive => 1,
            SerfStatus::Left => 3,
            SerfStatus::Failed => 4,
        }
    }

    /// The name autopilot sends (`serf.MemberStatus.String()`).
    pub fn as_str(self) -> &'static str {
        match self {
            SerfStatus::None => "none",
            SerfStatus::Alive => "alive",
            SerfStatus::Left => "left",
            SerfStatus::Failed => "failed",
        }
    }
}

/// One Consul server: its machine, its serf membership and its place in Raft.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    /// Raft server ID (Consul's node ID).
    pub id: String,
    pub ip: String,
    pub image: String,
    pub machine: Machine,
    pub serf: SerfStatus,
    /// Partitioned from the other servers (and from the agent's view of them).
    pub cut: bool,
    /// Dropped from serf's member list (`force-leave?prune`).
    pub pruned: bool,
    pub in_raft: bool,
    pub voter: bool,
    /// When autopilot last saw this server's health change (StableSince).
    pub stable_since: Instant,
    pub stable_since_wall: SystemTime,
    /// The health autopilot last computed, to notice changes.
    pub last_healthy: bool,
    /// When the cluster last heard from it, while it is unreachable.
    pub unreachable_since: Option<Instant>,
    /// When serf marked it failed.
    pub failed_since: Option<Instant>,
    pub last_index: u64,
    pub last_term: u64,
    /// Bumped on every lifecycle change; timers set for an older epoch do nothing.
    pub epoch: u64,
    pub launched_at: SystemTime,
    /// The idempotency token it was launched with (EC2's ClientToken).
    pub token: Option<String>,
    /// Launched from a broken image: it joins, but never gets healthy.
    pub broken: bool,
    /// Launched from an image that does not boot: the machine is terminated, with this
    /// reason, when its boot would end.
    pub boot_failure: Option<String>,
    /// Why the machine was terminated, in EC2's StateReason words.
    pub reason: Option<String>,
}

impl Server {
    pub(crate) fn new(name: String, ip: String, image: String, now: Instant) -> Self {
        Self {
            name,
            id: uuid::Uuid::new_v4().to_string(),
            ip,
            image,
            machine: Machine::Booting,
            serf: SerfStatus::None,
            cut: false,
            pruned: false,
            in_raft: false,
            voter: false,
            stable_since: now,
            stable_since_wall: SystemTime::now(),
            last_healthy: false,
            unreachable_since: None,
            failed_since: None,
            last_index: 0,
            last_term: 0,
            epoch: 0,
            launched_at: SystemTime::now(),
            token: None,
            broken: false,
            boot_failure: None,
            reason: None,
        }
    }

    /// "ip:8300", the Raft address.
    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, RAFT_PORT)
    }

    /// The process runs and the others can reach it.
    pub fn reachable(&self) -> bool {
        self.machine == Machine::Running && !self.cut
    }

    /// Autopilot's health: alive in serf, in contact with the leader, caught up. A server from
    /// a broken image never catches up.
    pub fn healthy(&self) -> bool {
        self.in_raft && self.reachable() && self.serf == SerfStatus::Alive && !self.broken
    }

    /// Its Raft log follows the leader's (a broken server's stays where it joined).
    pub(crate) fn replicates(&self) -> bool {
        self.reachable() && self.in_raft && !self.broken
    }

    /// A voter that counts toward quorum right now.
    pub fn live_voter(&self) -> bool {
        self.in_raft && self.voter && self.reachable()
    }

    /// A serf member: listed by /v1/agent/members.
    pub fn is_member(&self) -> bool {
        self.serf != SerfStatus::None && !self.pruned
    }
}

/// The HTTP agent's own node: a client agent, a serf member but never a server.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub id: String,
    pub ip: String,
    pub serf: SerfStatus,
}

/// Autopilot's configuration, kept in Raft like Consul's.
#[derive(Debug, Clone, PartialEq)]
pub struct AutopilotConfig {
    pub cleanup_dead_servers: bool,
    pub last_contact_threshold: Duration,
    pub max_trailing_logs: u64,
    pub min_quorum: u64,
    pub server_stabilization_time: Duration,
    pub redundancy_zone_tag: String,
    pub disable_upgrade_migration: bool,
    pub upgrade_version_tag: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        Self {
            cleanup_dead_servers: true,
            last_contact_threshold: Duration::from_millis(200),
            max_trailing_logs: 250,
            min_quorum: 0,
            server_stabilization_time: Duration::from_secs(10),
            redundancy_zone_tag: String::new(),
            disable_upgrade_migration: false,
            upgrade_version_tag: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// What `/sim/invariants` reports: checked on every membership or Raft change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Invariants {
    /// Times the live, reachable voters fell below quorum.
    pub quorum_lost_count: u64,
    /// Quorum is lost right now.
    pub quorum_lost: bool,
    /// The most voters ever missing (not running, or cut off) at once.
    pub max_voters_missing: usize,
    /// Voters missing right now.
    pub voters_missing: usize,
    /// Leaders elected after the first (elections and transfers).
    pub leader_changes: u64,
    /// Periods without a leader.
    pub leaderless_periods: u64,
    /// Simulated milliseconds without a leader (wall time × time_scale), the current gap included.
    pub leaderless_ms: u64,
    /// The lowest autopilot failure tolerance seen while a leader was known.
    pub min_failure_tolerance: Option<usize>,
    /// Times a server was terminated, left or killed through the control API while it led.
    /// A rollout transfers leadership first, so a correct one keeps this 0.
    pub leader_retired: u64,
    /// The most machines that existed at once (any state but terminated): a rollout that
    /// launches one server at a time keeps this at the cluster's size + 1.
    pub max_servers: usize,
    /// The fewest voters in the Raft configuration at once.
    pub min_voters: Option<usize>,
    /// How many times the invariants were evaluated.
    pub checks: u64,
}
