//! The cluster as `State` holds it: the servers, the Raft state (leader, epoch), autopilot's
//! configuration, the simulated cloud's images and the invariant counters. What it changes,
//! and when, is `lifecycle`'s.

use std::time::{Duration, Instant};

use crate::cluster::raft::*;
use crate::cluster::server::*;
use crate::images::Images;
use crate::timeline::Timeline;

/// The servers, the Raft state and the invariant counters.
pub struct Cluster {
    /// In launch order; left and killed servers stay until pruned from serf, and terminated
    /// ones stay for good (names and launch tokens are never reused).
    pub servers: Vec<Server>,
    /// The images machines launch from.
    pub images: Images,
    /// Name of the leader, if any.
    pub leader: Option<String>,
    pub term: u64,
    /// Raft index of the last configuration change.
    pub config_index: u64,
    pub autopilot: AutopilotConfig,
    pub agent: Agent,
    pub invariants: Invariants,
    /// Every server's launches, promotions, leaderships and departures, for `/sim/timeline`.
    pub timeline: Timeline,
    /// The simulated Auto Scaling group over the servers, once one is made.
    pub group: Option<crate::cluster::group::Group>,
    pub(crate) election_pending: bool,
    pub(crate) election_epoch: u64,
    pub(crate) next_ip: u32,
    pub(crate) leaderless_since: Option<Instant>,
    pub(crate) leaderless_total: Duration,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            images: Images::default(),
            leader: None,
            term: 0,
            config_index: 0,
            autopilot: AutopilotConfig::default(),
            agent: Agent {
                name: String::new(),
                id: uuid::Uuid::new_v4().to_string(),
                ip: "127.0.2.1".into(),
                serf: SerfStatus::Alive,
            },
            invariants: Invariants::default(),
            timeline: Timeline::default(),
            group: None,
            election_pending: false,
            election_epoch: 0,
            next_ip: 1,
            leaderless_since: Some(Instant::now()),
            leaderless_total: Duration::ZERO,
        }
    }
}

impl Cluster {
    /// Whether a leader is known; without one, non-stale reads and all writes fail.
    pub fn has_leader(&self) -> bool {
        self.leader.is_some()
    }

    /// How long since the agent last heard from a leader (what a stale read reports).
    pub fn last_contact(&self) -> Duration {
        match (&self.leader, self.leaderless_since) {
            (None, Some(since)) => since.elapsed(),
            _ => Duration::ZERO,
        }
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    pub fn server_mut(&mut self, name: &str) -> Option<&mut Server> {
        self.servers.iter_mut().find(|s| s.name == name)
    }

    pub fn leader_server(&self) -> Option<&Server> {
        self.leader.as_deref().and_then(|l| self.server(l))
    }

    /// The servers in the Raft configuration, in launch order.
    pub fn raft_servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.iter().filter(|s| s.in_raft)
    }

    /// The log index a server reports: the current one while it follows, else where it stopped.
    pub fn server_last_index(&self, s: &Server, current: u64) -> u64 {
        if s.replicates() && self.leader.is_some() {
            current
        } else {
            s.last_index
        }
    }

    /// Time since the leader last heard from `s` (0 for the leader).
    pub fn server_last_contact(&self, s: &Server) -> Duration {
        if self.leader.as_deref() == Some(s.name.as_str()) {
            return Duration::ZERO;
        }
        match s.unreachable_since {
            Some(t) => t.elapsed(),
            // A follower in touch answers within a heartbeat; Consul shows a few ms.
            None if s.reachable() => Duration::from_millis(10),
            None => Duration::ZERO,
        }
    }

    /// Autopilot's overall health: every Raft server healthy.
    pub fn healthy(&self) -> bool {
        cluster_healthy(&self.servers)
    }

    pub fn failure_tolerance(&self) -> usize {
        failure_tolerance(&self.servers)
    }

    /// A machine name not yet taken: "consul-server-N".
    pub fn next_name(&self) -> String {
        (1..)
            .map(|i| format!("consul-server-{i}"))
            .find(|n| self.server(n).is_none())
            .unwrap_or_else(|| format!("consul-server-{}", self.servers.len() + 1))
    }

    /// Adds a machine (booting) and returns its index.
    pub fn launch(&mut self, name: String, image: String, token: Option<String>) -> usize {
        let ip = format!("127.0.1.{}", self.next_ip);
        self.next_ip += 1;
        let mut s = Server::new(name, ip, image, Instant::now());
        s.broken = self.images.is_broken(&s.image);
        s.boot_failure = self.images.boot_failure(&s.image);
        s.token = token;
        self.servers.push(s);
        self.servers.len() - 1
    }

    /// The server launched with `token`, in any state (terminated included).
    pub fn by_token(&self, token: &str) -> Option<&Server> {
        self.servers
            .iter()
            .find(|s| s.token.as_deref() == Some(token))
    }

    /// Records leadership moving to `name` (or away) for the invariants.
    pub(crate) fn set_leader(&mut self, leader: Option<String>, now: Instant) {
        if self.leader == leader {
            return;
        }
        match (&self.leader, &leader) {
            (Some(_), None) => {
                self.leaderless_since = Some(now);
                self.invariants.leaderless_periods += 1;
            }
            (None, Some(_)) => {
                if let Some(since) = self.leaderless_since.take() {
                    self.leaderless_total += now.saturating_duration_since(since);
                }
            }
            _ => {}
        }
        if leader.is_some() && self.term > 0 {
            self.invariants.leader_changes += 1;
        }
        self.leader = leader;
    }

    /// The invariants with the ongoing leaderless gap counted in (simulated ms).
    pub fn invariants_now(&self, time_scale: f64) -> Invariants {
        let mut inv = self.invariants.clone();
        let mut gap = self.leaderless_total;
        if let (None, Some(since)) = (&self.leader, self.leaderless_since) {
            gap += since.elapsed();
        }
        let scale = if time_scale > 0.0 && time_scale.is_finite() {
            time_scale
        } else {
            1.0
        };
        inv.leaderless_ms = (gap.as_secs_f64() * scale * 1000.0) as u64;
        inv
    }

    /// Zeroes the counters; the current state becomes the baseline.
    pub fn reset_invariants(&mut self) {
        self.invariants = Invariants::default();
        self.leaderless_total = Duration::ZERO;
        if self.leader.is_none() {
            self.leaderless_since = Some(Instant::now());
        }
        self.observe();
    }

    /// Evaluates the invariants against the current state.
    pub(crate) fn observe(&mut self) {
        let inv = &mut self.invariants;
        inv.checks += 1;
        let missing = voters_missing(&self.servers);
        inv.voters_missing = missing;
        inv.max_voters_missing = inv.max_voters_missing.max(missing);
        let lost = !has_quorum(&self.servers) && voters(&self.servers) > 0;
        if lost && !inv.quorum_lost {
            inv.quorum_lost_count += 1;
        }
        inv.quorum_lost = lost;
        if self.leader.is_some() {
            let ft = failure_tolerance(&self.servers);
            inv.min_failure_tolerance = Some(inv.min_failure_tolerance.map_or(ft, |m| m.min(ft)));
        }
        let machines = self
            .servers
            .iter()
            .filter(|s| s.machine != Machine::Terminated)
            .count();
        inv.max_servers = inv.max_servers.max(machines);
        let v = voters(&self.servers);
        inv.min_voters = Some(inv.min_voters.map_or(v, |m| m.min(v)));
        self.timeline.observe(&self.servers, self.leader.as_deref());
    }
}
