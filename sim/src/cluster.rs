//! The simulated Consul servers: machines, serf membership, the Raft configuration, leadership,
//! autopilot (health, promotion of stable non-voters, dead-server cleanup), the simulated cloud's
//! machines (launched from registered images, with idempotency tokens; terminated) and the
//! invariants the tests and the demo read (how often quorum was lost, how many voters were missing
//! at worst, how often a leader was retired without a transfer first).
//!
//! Who talks to it: `http::Meta::read` (`has_leader`, `last_contact`), the status, operator,
//! agent and catalog endpoints (read and change Raft state), and the control API (`control.rs`),
//! which adds machines and injects faults. Every change ends in `reconcile`, which does what a
//! Consul leader does on a serf event — registers members in the catalog, removes left servers
//! from Raft, adds joined ones as non-voters — then autopilot's promotions and pruning, then
//! re-checks the invariants.
//!
//! The decisions (quorum, failure tolerance, who wins an election, which dead servers autopilot
//! may remove) are plain functions over `&[Server]` at the bottom, tested without HTTP.
//! Timers (boot, failure detection, election, stabilization) run through `Sim::after_in` and
//! carry an epoch, so one that outlived the state it was set for does nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::fsm::catalog::{apply_check, apply_deregister, apply_register};
use crate::images::{Image, Images};
use crate::state::{Sim, State};
use crate::store::catalog::{self, CheckEntry, Registration, ServiceEntry, Weights};
use crate::timeline::Timeline;
use crate::watch::{Change, Topic};

/// Raft / server RPC port, the port in every Raft address.
pub const RAFT_PORT: u16 = 8300;
/// Serf LAN port, the port `/v1/agent/members` shows.
pub const SERF_LAN_PORT: u16 = 8301;
/// The Consul version the simulated agents report.
pub const CONSUL_VERSION: &str = "1.17.3";
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
    fn new(name: String, ip: String, image: String, now: Instant) -> Self {
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
    fn replicates(&self) -> bool {
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
    election_pending: bool,
    election_epoch: u64,
    next_ip: u32,
    leaderless_since: Option<Instant>,
    leaderless_total: Duration,
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
    fn set_leader(&mut self, leader: Option<String>, now: Instant) {
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
    fn observe(&mut self) {
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

// ---- lifecycle: called by the control API and timers ------------------------------------------

/// Builds the datacenter `st.config` describes: its servers up and voting, the first leading,
/// plus the agent's own node. Runs outside any runtime (no timers are needed for a healthy start).
pub fn bootstrap(sim: &Sim) {
    let mut st = sim.lock();
    let st = &mut *st;
    let now = Instant::now();
    st.cluster.agent.name = st.config.agent_node.clone();
    st.cluster.autopilot.server_stabilization_time = st.config.stabilization;
    let idx = st.next_index();
    st.cluster.autopilot.create_index = idx;
    st.cluster.autopilot.modify_index = idx;
    // The running servers' image predates the start, so any image registered later is newer.
    let day = Duration::from_secs(86_400);
    let image = Image {
        id: st.config.image.clone(),
        name: st.config.image.clone(),
        created: SystemTime::now()
            .checked_sub(day)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        broken: false,
        boot_failure: None,
    };
    if let Err(e) = st.cluster.images.register(image) {
        tracing::warn!(error = %e, "The configured image was registered already.");
    }
    for _ in 0..st.config.servers {
        let name = st.cluster.next_name();
        let i = st.cluster.launch(name, st.config.image.clone(), None);
        let s = &mut st.cluster.servers[i];
        s.machine = Machine::Running;
        s.serf = SerfStatus::Alive;
        s.in_raft = true;
        s.voter = true;
        s.last_healthy = true;
    }
    st.cluster.config_index = st.next_index();
    if let Some(first) = st.cluster.servers.first().map(|s| s.name.clone()) {
        st.cluster.set_leader(Some(first), now);
        st.cluster.term = 1;
        let term = st.cluster.term;
        for s in &mut st.cluster.servers {
            s.last_term = term;
        }
    }
    sync_catalog(sim, st);
    // The moments before the first leader are setup, not an outage.
    st.cluster.leaderless_total = Duration::ZERO;
    st.cluster.observe();
}

/// A new machine boots on `image`; after `boot_delay` Consul starts and joins serf. `token` is
/// recorded for the control API's idempotent launch (it checks it before calling this).
pub fn add_server(
    sim: &Sim,
    st: &mut State,
    name: String,
    image: String,
    token: Option<String>,
) -> usize {
    let i = st.cluster.launch(name.clone(), image, token);
    let delay = st.config.boot_delay;
    schedule(sim, st, delay, &name, |_, _, s| {
        if s.machine != Machine::Booting {
            return;
        }
        if let Some(reason) = s.boot_failure.clone() {
            s.epoch += 1;
            s.machine = Machine::Terminated;
            s.reason = Some(reason);
            s.unreachable_since.get_or_insert_with(Instant::now);
        } else {
            s.machine = Machine::Running;
            s.serf = SerfStatus::Alive;
        }
    });
    reconcile(sim, st);
    i
}

/// A graceful leave: the server leaves serf and Raft; a leader steps down first (an election
/// follows). Returns false when the server is not running.
pub fn leave(sim: &Sim, st: &mut State, name: &str) -> bool {
    let now = Instant::now();
    let was_leader = st.cluster.leader.as_deref() == Some(name);
    let has_leader = st.cluster.leader.is_some();
    let Some(s) = st.cluster.server_mut(name) else {
        return false;
    };
    if s.machine != Machine::Running {
        return false;
    }
    s.epoch += 1;
    s.machine = Machine::Stopped;
    s.serf = SerfStatus::Left;
    s.unreachable_since = Some(now);
    // The leader removes itself from the configuration before it steps down; a follower's
    // removal is the leader's job (done in reconcile, or by the next leader).
    if was_leader || (has_leader && !s.cut) {
        s.in_raft = false;
        s.voter = false;
    }
    if was_leader {
        st.cluster.config_index = st.next_index();
        st.cluster.set_leader(None, now);
    }
    reconcile(sim, st);
    true
}

/// The machine is terminated, as EC2's TerminateInstances does with `leave_on_terminate`: a
/// running agent leaves gracefully first (a leader steps down, an election follows), then the
/// machine is gone. A killed agent cannot leave: it stays a failed peer until autopilot prunes
/// it, as on EC2. Terminating a terminated machine changes nothing (EC2 answers it again).
/// Returns false for an unknown server.
pub fn terminate(sim: &Sim, st: &mut State, name: &str) -> bool {
    let Some(machine) = st.cluster.server(name).map(|s| s.machine) else {
        return false;
    };
    match machine {
        Machine::Terminated => return true,
        Machine::Running => {
            leave(sim, st, name);
        }
        Machine::Booting | Machine::Stopped | Machine::Killed => {}
    }
    if let Some(s) = st.cluster.server_mut(name) {
        // A killed server's failure detection is still due: its timer carries the epoch, so
        // only the other states (whose timers must not fire any more) move it.
        if machine != Machine::Killed {
            s.epoch += 1;
        }
        s.machine = Machine::Terminated;
        s.reason.get_or_insert_with(|| USER_TERMINATED.to_owned());
        s.unreachable_since.get_or_insert_with(Instant::now);
    }
    reconcile(sim, st);
    true
}

/// EC2's StateReason for a machine terminated through the API.
pub const USER_TERMINATED: &str = "Client.UserInitiatedShutdown: User initiated shutdown";
/// EC2's StateReason for an instance that failed on its own.
pub const MACHINE_FAILED: &str = "Server.InternalError: Internal error on launch";

/// The machine fails on its own, as an EC2 instance can at boot or at any time: its agent dies
/// without leaving (the others see it failed after `failure_detection`) and the machine is
/// terminated with `MACHINE_FAILED`. Returns false for an unknown or already terminated one.
pub fn fail(sim: &Sim, st: &mut State, name: &str) -> bool {
    let Some(s) = st.cluster.server_mut(name) else {
        return false;
    };
    if s.machine == Machine::Terminated {
        return false;
    }
    s.reason = Some(MACHINE_FAILED.to_owned());
    kill(sim, st, name);
    terminate(sim, st, name)
}

/// The process dies: the others notice after `failure_detection` (serf failed).
pub fn kill(sim: &Sim, st: &mut State, name: &str) -> bool {
    let Some(s) = st.cluster.server_mut(name) else {
        return false;
    };
    if !matches!(s.machine, Machine::Running | Machine::Booting) {
        return false;
    }
    s.epoch += 1;
    let was_member = s.serf != SerfStatus::None;
    s.machine = Machine::Killed;
    s.unreachable_since.get_or_insert_with(Instant::now);
    if was_member {
        detect_failure(sim, st, name);
    }
    lose_leader_if(st, name);
    reconcile(sim, st);
    true
}

/// A killed or stopped server's process starts again and rejoins serf (Raft follows in
/// reconcile: kept if still a peer, re-added as a non-voter if it was removed).
pub fn restart(sim: &Sim, st: &mut State, name: &str) -> bool {
    let Some(s) = st.cluster.server_mut(name) else {
        return false;
    };
    if !matches!(s.machine, Machine::Killed | Machine::Stopped) {
        return false;
    }
    s.epoch += 1;
    s.machine = Machine::Running;
    s.pruned = false;
    if !s.cut {
        s.serf = SerfStatus::Alive;
        s.unreachable_since = None;
        s.failed_since = None;
    }
    reconcile(sim, st);
    true
}

/// Partitions the server from the rest: it loses contact now and is failed after detection.
pub fn cut(sim: &Sim, st: &mut State, name: &str) -> bool {
    let Some(s) = st.cluster.server_mut(name) else {
        return false;
    };
    if s.cut {
        return true;
    }
    s.epoch += 1;
    s.cut = true;
    s.unreachable_since.get_or_insert_with(Instant::now);
    if s.machine == Machine::Running {
        detect_failure(sim, st, name);
    }
    lose_leader_if(st, name);
    reconcile(sim, st);
    true
}

/// Heals a partition: a running server is alive again and rejoins.
pub fn heal(sim: &Sim, st: &mut State, name: &str) -> bool {
    let Some(s) = st.cluster.server_mut(name) else {
        return false;
    };
    if !s.cut {
        return true;
    }
    s.epoch += 1;
    s.cut = false;
    if s.machine == Machine::Running {
        s.serf = SerfStatus::Alive;
        s.unreachable_since = None;
        s.failed_since = None;
        s.pruned = false;
    }
    reconcile(sim, st);
    true
}

/// `force-leave`: a failed member becomes left (then leaves Raft and the catalog); an alive one
/// refutes it. `prune` also drops it from the member list. Unknown names are a no-op, as serf's.
pub fn force_leave(sim: &Sim, st: &mut State, name: &str, prune: bool) {
    if st.cluster.agent.name == name {
        return;
    }
    if let Some(s) = st.cluster.server_mut(name) {
        if s.serf == SerfStatus::Failed {
            s.serf = SerfStatus::Left;
        }
        if prune && s.serf == SerfStatus::Left {
            s.pruned = true;
        }
    }
    reconcile(sim, st);
}

/// The HTTP agent leaves the cluster gracefully: its node is deregistered (its sessions die).
pub fn agent_leave(sim: &Sim, st: &mut State) {
    st.cluster.agent.serf = SerfStatus::Left;
    reconcile(sim, st);
}

/// `operator/raft/peer` DELETE: removes a peer from the configuration. A peer that is still an
/// alive serf member is added back (as a non-voter) by the leader's next reconcile, as in Consul.
pub fn remove_peer(sim: &Sim, st: &mut State, id: &str) -> bool {
    let now = Instant::now();
    let Some(s) = st
        .cluster
        .servers
        .iter_mut()
        .find(|s| s.in_raft && s.id == id)
    else {
        return false;
    };
    s.in_raft = false;
    s.voter = false;
    let name = s.name.clone();
    st.cluster.config_index = st.next_index();
    if st.cluster.leader.as_deref() == Some(name.as_str()) {
        st.cluster.set_leader(None, now);
    }
    reconcile(sim, st);
    true
}

/// Why a leadership transfer failed, worded as Consul / Raft word it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("No cluster leader")]
    NoLeader,
    #[error("Could not find address for server id {0}")]
    UnknownServer(String),
    #[error("cannot transfer leadership to itself")]
    ToItself,
    #[error("cannot find peer")]
    NoPeer,
    #[error("leadership transfer timeout")]
    Timeout,
}

/// `operator/raft/transfer-leader`: moves leadership to `id`, or to the best other voter.
pub fn transfer_leader(sim: &Sim, st: &mut State, id: Option<&str>) -> Result<(), TransferError> {
    let target = pick_transfer_target(&st.cluster.servers, st.cluster.leader.as_deref(), id)?;
    let now = Instant::now();
    st.cluster.term += 1;
    let term = st.cluster.term;
    st.cluster.set_leader(Some(target), now);
    st.next_index();
    crate::fsm::session::reset_timers(sim, st);
    for s in st.cluster.servers.iter_mut().filter(|s| s.reachable()) {
        s.last_term = term;
    }
    reconcile(sim, st);
    Ok(())
}

/// A healthy voter other than the leader and `named`, by Raft ID: where a transfer that
/// misbehaves (`TransferFault::Elsewhere`) sends leadership instead.
pub fn another_voter(st: &State, named: &str) -> Option<String> {
    let leader = st.cluster.leader.as_deref();
    st.cluster
        .servers
        .iter()
        .find(|s| s.voter && s.healthy() && s.id != named && Some(s.name.as_str()) != leader)
        .map(|s| s.id.clone())
}

/// Applies `/sim/config` changes to autopilot's stabilization time too, so the two agree.
pub fn set_stabilization(st: &mut State, d: Duration) {
    st.config.stabilization = d;
    st.cluster.autopilot.server_stabilization_time = d;
}

fn lose_leader_if(st: &mut State, name: &str) {
    if st.cluster.leader.as_deref() == Some(name) {
        st.cluster.set_leader(None, Instant::now());
    }
}

/// Serf marks `name` failed after `failure_detection`, unless it came back meanwhile.
fn detect_failure(sim: &Sim, st: &State, name: &str) {
    let delay = st.config.failure_detection;
    schedule(sim, st, delay, name, |sim, st, s| {
        if !s.reachable() && s.serf == SerfStatus::Alive {
            s.serf = SerfStatus::Failed;
            s.failed_since = Some(Instant::now());
            // Autopilot prunes it at its next reconcile.
            schedule_reconcile(sim, st, AUTOPILOT_INTERVAL);
        }
    });
}

/// Runs `f` on server `name` after `delay` (simulated), if its epoch has not moved; then
/// reconciles.
fn schedule(
    sim: &Sim,
    st: &State,
    delay: Duration,
    name: &str,
    f: impl FnOnce(&Sim, &State, &mut Server) + 'static,
) {
    let epoch = st.cluster.server(name).map(|s| s.epoch);
    let name = name.to_owned();
    sim.after_in(st, delay, move |sim, st| {
        let Some(i) = st.cluster.servers.iter().position(|s| s.name == name) else {
            return;
        };
        if Some(st.cluster.servers[i].epoch) != epoch {
            return;
        }
        let mut s = st.cluster.servers[i].clone();
        f(sim, st, &mut s);
        st.cluster.servers[i] = s;
        reconcile(sim, st);
    });
}

/// A plain reconcile after `delay` (stabilization ends, autopilot's next interval).
fn schedule_reconcile(sim: &Sim, st: &State, delay: Duration) {
    sim.after_in(st, delay, reconcile);
}

/// Starts an election timer unless one runs; it elects if quorum holds when it fires.
fn schedule_election(sim: &Sim, st: &mut State) {
    if st.cluster.election_pending {
        return;
    }
    st.cluster.election_pending = true;
    st.cluster.election_epoch += 1;
    let epoch = st.cluster.election_epoch;
    let delay = st.config.election;
    sim.after_in(st, delay, move |sim, st| {
        if st.cluster.election_epoch != epoch {
            return;
        }
        st.cluster.election_pending = false;
        if st.cluster.leader.is_none() {
            if let Some(i) = elect(&st.cluster.servers) {
                let now = Instant::now();
                st.cluster.term += 1;
                let term = st.cluster.term;
                let name = st.cluster.servers[i].name.clone();
                st.cluster.set_leader(Some(name.clone()), now);
                st.next_index();
                for s in st.cluster.servers.iter_mut().filter(|s| s.reachable()) {
                    s.last_term = term;
                }
                tracing::info!(leader = %name, term, "Simulated cluster elected a leader.");
                // A new Consul leader restarts every session's TTL timer in full.
                crate::fsm::session::reset_timers(sim, st);
            }
        }
        reconcile(sim, st);
    });
}

/// What a Consul leader and its autopilot do after any change, then the invariants.
pub fn reconcile(sim: &Sim, st: &mut State) {
    let now = Instant::now();
    // A leader that cannot reach a quorum of voters steps down.
    if st.cluster.leader.is_some() && !has_quorum(&st.cluster.servers) {
        st.cluster.set_leader(None, now);
    }
    if st.cluster.leader.is_none() {
        if has_quorum(&st.cluster.servers) {
            schedule_election(sim, st);
        }
    } else {
        apply_membership(st);
        refresh_health(sim, st, now);
        promote_stable(st, now);
        prune_dead(st, now);
        apply_membership(st);
        sync_catalog(sim, st);
    }
    let current = st.index;
    let has_leader = st.cluster.leader.is_some();
    for s in &mut st.cluster.servers {
        if s.replicates() && has_leader {
            s.last_index = current;
        }
    }
    st.cluster.observe();
    st.notify(Change::table(Topic::Raft));
}

/// The leader's serf reconcile: left servers leave Raft, joined ones enter it as non-voters.
fn apply_membership(st: &mut State) {
    let now = Instant::now();
    let mut changed = false;
    for s in &mut st.cluster.servers {
        if s.in_raft && s.serf == SerfStatus::Left {
            s.in_raft = false;
            s.voter = false;
            changed = true;
        } else if !s.in_raft && s.serf == SerfStatus::Alive && s.reachable() {
            s.in_raft = true;
            s.voter = false;
            s.stable_since = now;
            s.stable_since_wall = SystemTime::now();
            s.last_healthy = false;
            changed = true;
        }
    }
    if changed {
        st.cluster.config_index = st.next_index();
    }
}

/// Notes health changes (StableSince) and, for a healthy non-voter, when to look again.
fn refresh_health(sim: &Sim, st: &mut State, now: Instant) {
    let stabilization = st.cluster.autopilot.server_stabilization_time;
    let mut wake = false;
    for s in st.cluster.servers.iter_mut().filter(|s| s.in_raft) {
        let h = s.healthy();
        if h != s.last_healthy {
            s.last_healthy = h;
            s.stable_since = now;
            s.stable_since_wall = SystemTime::now();
            if h && !s.voter {
                wake = true;
            }
        }
    }
    if wake {
        schedule_reconcile(sim, st, stabilization);
    }
}

/// Autopilot promotes healthy non-voters that have been stable for the stabilization time.
fn promote_stable(st: &mut State, now: Instant) {
    let stabilization = st
        .config
        .scaled(st.cluster.autopilot.server_stabilization_time);
    // Timers fire on whole milliseconds; a hair of slack keeps one from landing just short.
    let slack = Duration::from_millis(2);
    let mut changed = false;
    for s in st.cluster.servers.iter_mut() {
        if s.in_raft
            && !s.voter
            && s.healthy()
            && now.saturating_duration_since(s.stable_since) + slack >= stabilization
        {
            s.voter = true;
            changed = true;
            tracing::info!(server = %s.name, "Autopilot promoted a stable server to voter.");
        }
    }
    if changed {
        st.cluster.config_index = st.next_index();
    }
}

/// Autopilot's dead-server cleanup: failed servers seen at an autopilot interval are force-left
/// (never so many that a majority of voters would go).
fn prune_dead(st: &mut State, now: Instant) {
    let cfg = &st.cluster.autopilot;
    if !cfg.cleanup_dead_servers {
        return;
    }
    let interval = st.config.scaled(AUTOPILOT_INTERVAL);
    let slack = Duration::from_millis(2);
    let ripe: Vec<usize> = st
        .cluster
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.failed_since
                .is_some_and(|t| now.saturating_duration_since(t) + slack >= interval)
        })
        .map(|(i, _)| i)
        .collect();
    if ripe.is_empty() {
        return;
    }
    for i in prunable(&st.cluster.servers, cfg.min_quorum as usize) {
        if ripe.contains(&i) {
            let s = &mut st.cluster.servers[i];
            tracing::info!(server = %s.name, "Autopilot removed a failed server.");
            s.serf = SerfStatus::Left;
        }
    }
}

/// Keeps the catalog as a Consul leader keeps it: alive members registered with a passing
/// `serfHealth` (servers with the `consul` service), failed ones critical, left ones gone.
fn sync_catalog(sim: &Sim, st: &mut State) {
    /// A serf member as the leader's reconcile sees it; `image` only for servers.
    struct Member {
        name: String,
        id: String,
        ip: String,
        serf: SerfStatus,
        image: Option<String>,
    }
    let dc_meta_version = st.config.consul_version.clone();
    let mut members: Vec<Member> = st
        .cluster
        .servers
        .iter()
        .filter(|s| s.serf != SerfStatus::None)
        .map(|s| Member {
            name: s.name.clone(),
            id: s.id.clone(),
            ip: s.ip.clone(),
            serf: s.serf,
            image: Some(s.image.clone()),
        })
        .collect();
    let a = &st.cluster.agent;
    if !a.name.is_empty() {
        members.push(Member {
            name: a.name.clone(),
            id: a.id.clone(),
            ip: a.ip.clone(),
            serf: a.serf,
            image: None,
        });
    }
    for Member {
        name,
        id,
        ip,
        serf,
        image,
    } in members
    {
        match serf {
            SerfStatus::Alive | SerfStatus::Failed => {
                let (status, output) = if serf == SerfStatus::Alive {
                    ("passing", catalog::SERF_ALIVE_OUTPUT)
                } else {
                    ("critical", catalog::SERF_FAILED_OUTPUT)
                };
                if st.catalog.node_exists(&name)
                    && st
                        .catalog
                        .check_status(&name, catalog::SERF_CHECK_ID)
                        .is_some()
                {
                    apply_check(sim, st, &name, catalog::SERF_CHECK_ID, status, output);
                    continue;
                }
                let reg = member_registration(
                    &name,
                    &id,
                    &ip,
                    image.as_deref(),
                    &dc_meta_version,
                    status,
                    output,
                );
                if let Err(e) = apply_register(sim, st, reg) {
                    tracing::warn!(node = %name, error = %e, "Could not register a member.");
                }
            }
            SerfStatus::Left => {
                if st.catalog.node_exists(&name) {
                    apply_deregister(sim, st, &name, None, None);
                }
            }
            SerfStatus::None => {}
        }
    }
}

/// The registration Consul's leader writes for a serf member.
fn member_registration(
    name: &str,
    id: &str,
    ip: &str,
    server_image: Option<&str>,
    version: &str,
    status: &str,
    output: &str,
) -> Registration {
    let tagged: BTreeMap<String, String> = ["lan", "lan_ipv4", "wan", "wan_ipv4"]
        .iter()
        .map(|k| ((*k).to_owned(), ip.to_owned()))
        .collect();
    let mut meta = BTreeMap::from([
        ("consul-network-segment".to_owned(), String::new()),
        ("consul-version".to_owned(), version.to_owned()),
    ]);
    let service = server_image.map(|image| {
        meta.insert("image".into(), image.to_owned());
        ServiceEntry {
            kind: String::new(),
            id: "consul".into(),
            service: "consul".into(),
            tags: Vec::new(),
            address: String::new(),
            tagged_addresses: None,
            meta: BTreeMap::from([
                ("non_voter".to_owned(), "false".to_owned()),
                ("raft_version".to_owned(), "3".to_owned()),
                ("read_replica".to_owned(), "false".to_owned()),
                ("serf_protocol_current".to_owned(), "2".to_owned()),
                ("serf_protocol_max".to_owned(), "5".to_owned()),
                ("serf_protocol_min".to_owned(), "1".to_owned()),
                ("version".to_owned(), version.to_owned()),
            ]),
            port: i64::from(RAFT_PORT),
            weights: Weights::default(),
            enable_tag_override: false,
            create_index: 0,
            modify_index: 0,
        }
    });
    Registration {
        id: id.to_owned(),
        node: name.to_owned(),
        address: ip.to_owned(),
        tagged_addresses: tagged,
        meta,
        skip_node_update: false,
        service,
        checks: vec![CheckEntry {
            node: name.to_owned(),
            check_id: catalog::SERF_CHECK_ID.into(),
            name: catalog::SERF_CHECK_NAME.into(),
            status: status.to_owned(),
            notes: String::new(),
            output: output.to_owned(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Vec::new(),
            kind: String::new(),
            definition: serde_json::Map::new(),
            create_index: 0,
            modify_index: 0,
        }],
    }
}

// ---- decisions: plain functions over the servers ----------------------------------------------

/// Votes needed for a majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Voters in the Raft configuration.
pub fn voters(servers: &[Server]) -> usize {
    servers.iter().filter(|s| s.in_raft && s.voter).count()
}

/// Voters that are not running or cannot be reached.
pub fn voters_missing(servers: &[Server]) -> usize {
    servers
        .iter()
        .filter(|s| s.in_raft && s.voter && !s.reachable())
        .count()
}

/// Enough live, reachable voters for a majority.
pub fn has_quorum(servers: &[Server]) -> bool {
    let v = voters(servers);
    v > 0 && servers.iter().filter(|s| s.live_voter()).count() >= quorum(v)
}

/// Autopilot's FailureTolerance: healthy voters beyond quorum.
pub fn failure_tolerance(servers: &[Server]) -> usize {
    let v = voters(servers);
    let healthy = servers.iter().filter(|s| s.voter && s.healthy()).count();
    healthy.saturating_sub(quorum(v))
}

/// Autopilot's overall health: every server in the configuration healthy.
pub fn cluster_healthy(servers: &[Server]) -> bool {
    servers.iter().filter(|s| s.in_raft).all(Server::healthy)
}

/// Who wins an election: a reachable voter with the longest log, if a quorum can vote.
pub fn elect(servers: &[Server]) -> Option<usize> {
    if !has_quorum(servers) {
        return None;
    }
    servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.live_voter())
        .max_by(|(ia, a), (ib, b)| a.last_index.cmp(&b.last_index).then(ib.cmp(ia)))
        .map(|(i, _)| i)
}

/// Which failed servers autopilot may remove, as raft-autopilot adjudicates: non-voters first,
/// then voters; never more than (potential voters − 1) / 2 voters per batch, never below
/// `min_quorum`.
pub fn prunable(servers: &[Server], min_quorum: usize) -> Vec<usize> {
    let mut potential = servers.iter().filter(|s| s.in_raft).count();
    let mut out = Vec::new();
    for want_voters in [false, true] {
        let mut batch: Vec<usize> = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_raft && s.serf == SerfStatus::Failed && s.voter == want_voters)
            .map(|(i, _)| i)
            .collect();
        batch.sort_by(|a, b| servers[*a].id.cmp(&servers[*b].id));
        let initial = potential;
        let mut max_removal = initial.saturating_sub(1) / 2;
        let mut removed = 0;
        for i in batch {
            if initial.saturating_sub(removed + 1) < min_quorum {
                continue;
            }
            if servers[i].voter && max_removal < 1 {
                continue;
            }
            max_removal = max_removal.saturating_sub(1);
            removed += 1;
            out.push(i);
        }
        potential -= removed;
    }
    out
}

/// Where a leadership transfer goes: `id` if it can lead, else the best other live voter.
pub fn pick_transfer_target(
    servers: &[Server],
    leader: Option<&str>,
    id: Option<&str>,
) -> Result<String, TransferError> {
    let leader = leader.ok_or(TransferError::NoLeader)?;
    match id.filter(|i| !i.is_empty()) {
        Some(id) => {
            let s = servers
                .iter()
                .find(|s| s.id == id && s.in_raft && s.serf == SerfStatus::Alive)
                .ok_or_else(|| TransferError::UnknownServer(id.to_owned()))?;
            if s.name == leader {
                return Err(TransferError::ToItself);
            }
            if !s.live_voter() {
                return Err(TransferError::Timeout);
            }
            Ok(s.name.clone())
        }
        None => servers
            .iter()
            .filter(|s| s.live_voter() && s.name != leader)
            .max_by(|a, b| a.last_index.cmp(&b.last_index))
            .map(|s| s.name.clone())
            .ok_or(TransferError::NoPeer),
    }
}

/// Formats a wall-clock time as RFC 3339 in UTC (Go's `time.Time` JSON), whole seconds when
/// `round` (autopilot health rounds StableSince), else with nanoseconds trimmed of zeros.
pub fn rfc3339(t: SystemTime, round: bool) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut secs = d.as_secs() as i64;
    let mut nanos = d.subsec_nanos();
    if round {
        if nanos >= 500_000_000 {
            secs += 1;
        }
        nanos = 0;
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    let frac = if nanos == 0 {
        String::new()
    } else {
        let f = format!("{nanos:09}");
        format!(".{}", f.trim_end_matches('0'))
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{frac}Z")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::SimConfig;

    fn voter(name: &str) -> Server {
        let mut s = Server::new(
            name.into(),
            "127.0.1.1".into(),
            "img".into(),
            Instant::now(),
        );
        s.machine = Machine::Running;
        s.serf = SerfStatus::Alive;
        s.in_raft = true;
        s.voter = true;
        s
    }

    #[test]
    fn quorum_and_tolerance_follow_voters() {
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
        let mut s = vec![voter("a"), voter("b"), voter("c")];
        assert_eq!(failure_tolerance(&s), 1);
        assert!(has_quorum(&s));
        s[1].machine = Machine::Killed;
        assert_eq!(failure_tolerance(&s), 0);
        assert!(!cluster_healthy(&s));
        assert!(has_quorum(&s));
        s[2].cut = true;
        assert!(!has_quorum(&s));
        assert_eq!(voters_missing(&s), 2);
        assert_eq!(elect(&s), None);
    }

    #[test]
    fn a_non_voter_adds_no_tolerance() {
        let mut s = vec![voter("a"), voter("b"), voter("c"), voter("d")];
        s[3].voter = false;
        assert_eq!(failure_tolerance(&s), 1);
        s[3].voter = true;
        assert_eq!(failure_tolerance(&s), 1, "4 voters tolerate 1 like 3");
    }

    #[test]
    fn election_picks_a_live_voter_with_the_longest_log() {
        let mut s = vec![voter("a"), voter("b"), voter("c")];
        s[0].machine = Machine::Killed;
        s[1].last_index = 5;
        s[2].last_index = 7;
        assert_eq!(elect(&s), Some(2));
        s[2].voter = false;
        assert_eq!(elect(&s), None, "one live voter of two is no majority");
    }

    #[test]
    fn autopilot_never_prunes_a_majority() {
        let mut s = vec![voter("a"), voter("b"), voter("c")];
        s[1].serf = SerfStatus::Failed;
        assert_eq!(prunable(&s, 0), vec![1]);
        assert_eq!(prunable(&s, 3), Vec::<usize>::new(), "MinQuorum holds it");
        s[2].serf = SerfStatus::Failed;
        assert_eq!(prunable(&s, 0).len(), 1, "3 voters: at most one goes");
        let mut five: Vec<Server> = ["a", "b", "c", "d", "e"].iter().map(|n| voter(n)).collect();
        five[3].serf = SerfStatus::Failed;
        five[4].serf = SerfStatus::Failed;
        assert_eq!(prunable(&five, 0).len(), 2);
    }

    #[test]
    fn transfer_target_rules() {
        let mut s = vec![voter("a"), voter("b"), voter("c")];
        s[2].voter = false;
        let id_b = s[1].id.clone();
        let id_c = s[2].id.clone();
        let id_a = s[0].id.clone();
        assert_eq!(
            pick_transfer_target(&s, Some("a"), Some(&id_b)),
            Ok("b".into())
        );
        assert_eq!(pick_transfer_target(&s, Some("a"), None), Ok("b".into()));
        assert_eq!(
            pick_transfer_target(&s, Some("a"), Some(&id_a)),
            Err(TransferError::ToItself)
        );
        assert_eq!(
            pick_transfer_target(&s, Some("a"), Some(&id_c)),
            Err(TransferError::Timeout)
        );
        assert!(matches!(
            pick_transfer_target(&s, Some("a"), Some("nope")),
            Err(TransferError::UnknownServer(_))
        ));
        assert_eq!(
            pick_transfer_target(&s, None, None),
            Err(TransferError::NoLeader)
        );
    }

    #[test]
    fn formats_times_like_go() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_488_838_071);
        assert_eq!(rfc3339(t, true), "2017-03-06T22:07:51Z");
        let t = t + Duration::from_millis(600);
        assert_eq!(rfc3339(t, true), "2017-03-06T22:07:52Z");
        assert_eq!(rfc3339(t, false), "2017-03-06T22:07:51.6Z");
    }

    fn fast() -> SimConfig {
        SimConfig {
            time_scale: 50.0,
            ..SimConfig::default()
        }
    }

    /// Polls `cond` on the state until it holds, failing after `limit`.
    async fn until(sim: &Sim, limit: Duration, what: &str, cond: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(&sim.lock()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn starts_with_a_leader_and_three_voters() {
        let sim = Sim::new(SimConfig::default());
        let st = sim.lock();
        assert!(st.cluster.has_leader());
        assert_eq!(st.cluster.leader.as_deref(), Some("consul-server-1"));
        assert_eq!(voters(&st.cluster.servers), 3);
        assert!(st.cluster.healthy());
        assert_eq!(st.cluster.failure_tolerance(), 1);
        assert!(st.catalog.node_exists("consul-server-2"));
        assert!(st.catalog.node_exists("sim-agent"));
        assert_eq!(
            st.catalog
                .check_status("consul-server-3", "serfHealth")
                .as_deref(),
            Some("passing")
        );
        let n = st.catalog.node("consul-server-1").unwrap();
        assert_eq!(n.meta.get("image").map(String::as_str), Some("image-a"));
        assert!(n.services.contains_key("consul"));
    }

    #[actix_rt::test]
    async fn a_killed_server_fails_and_tolerance_drops() {
        let sim = Sim::new(fast());
        {
            let mut st = sim.lock();
            assert!(kill(&sim, &mut st, "consul-server-2"));
            assert!(!st.cluster.healthy());
            assert_eq!(st.cluster.failure_tolerance(), 0);
            assert!(st.cluster.has_leader(), "one voter down keeps quorum");
            assert_eq!(st.cluster.invariants.voters_missing, 1);
        }
        until(
            &sim,
            Duration::from_secs(5),
            "serf failed, serfHealth critical",
            |st| {
                st.cluster.server("consul-server-2").unwrap().serf == SerfStatus::Failed
                    && st
                        .catalog
                        .check_status("consul-server-2", "serfHealth")
                        .as_deref()
                        == Some("critical")
            },
        )
        .await;
        // Autopilot prunes it at its next interval (10s / 50): two voters remain.
        until(&sim, Duration::from_secs(5), "dead server pruned", |st| {
            !st.cluster.server("consul-server-2").unwrap().in_raft
        })
        .await;
        let st = sim.lock();
        assert_eq!(voters(&st.cluster.servers), 2);
        assert!(st.cluster.healthy());
        assert_eq!(st.cluster.failure_tolerance(), 0);
        assert!(
            !st.catalog.node_exists("consul-server-2"),
            "left members leave the catalog"
        );
        assert_eq!(st.cluster.invariants.quorum_lost_count, 0);
    }

    #[actix_rt::test]
    async fn killing_two_of_three_loses_quorum_and_the_leader() {
        let sim = Sim::new(fast());
        {
            let mut st = sim.lock();
            kill(&sim, &mut st, "consul-server-2");
            kill(&sim, &mut st, "consul-server-3");
            assert!(!st.cluster.has_leader());
            assert!(crate::http::Meta::read(
                &st,
                &crate::http::QueryOptions::parse(&crate::http::Params::default()).unwrap(),
                1
            )
            .is_err());
            let inv = st.cluster.invariants_now(st.config.time_scale);
            assert_eq!(inv.quorum_lost_count, 1);
            assert!(inv.quorum_lost);
            assert_eq!(inv.max_voters_missing, 2);
        }
        // Quorum comes back with one restart; an election follows after the election delay.
        {
            let mut st = sim.lock();
            restart(&sim, &mut st, "consul-server-3");
            assert!(!st.cluster.has_leader());
        }
        until(&sim, Duration::from_secs(5), "re-election", |st| {
            st.cluster.has_leader()
        })
        .await;
        let st = sim.lock();
        assert_eq!(st.cluster.invariants.quorum_lost_count, 1);
        assert!(!st.cluster.invariants.quorum_lost);
    }

    #[actix_rt::test]
    async fn the_leader_leaving_triggers_an_election_after_the_delay() {
        let sim = Sim::new(fast());
        let started = Instant::now();
        {
            let mut st = sim.lock();
            assert!(leave(&sim, &mut st, "consul-server-1"));
            assert!(!st.cluster.has_leader());
            assert!(!st.cluster.server("consul-server-1").unwrap().in_raft);
        }
        until(&sim, Duration::from_secs(5), "new leader", |st| {
            st.cluster.has_leader()
        })
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(35),
            "election took 2s/50"
        );
        let st = sim.lock();
        assert_ne!(st.cluster.leader.as_deref(), Some("consul-server-1"));
        assert_eq!(voters(&st.cluster.servers), 2);
        assert_eq!(st.cluster.invariants.leader_changes, 1);
        assert_eq!(st.cluster.invariants.quorum_lost_count, 0);
        assert!(!st.catalog.node_exists("consul-server-1"));
    }

    #[actix_rt::test]
    async fn a_new_server_is_a_non_voter_until_stable() {
        let sim = Sim::new(fast());
        {
            let mut st = sim.lock();
            add_server(
                &sim,
                &mut st,
                "consul-server-4".into(),
                "image-b".into(),
                None,
            );
            assert!(!st.cluster.server("consul-server-4").unwrap().in_raft);
        }
        until(&sim, Duration::from_secs(5), "joined as non-voter", |st| {
            let s = st.cluster.server("consul-server-4").unwrap();
            s.in_raft && !s.voter
        })
        .await;
        let joined = Instant::now();
        {
            let st = sim.lock();
            assert!(st.cluster.healthy());
            assert_eq!(st.cluster.failure_tolerance(), 1);
            let n = st.catalog.node("consul-server-4").unwrap();
            assert_eq!(n.meta.get("image").map(String::as_str), Some("image-b"));
        }
        until(&sim, Duration::from_secs(5), "promoted", |st| {
            st.cluster.server("consul-server-4").unwrap().voter
        })
        .await;
        assert!(
            joined.elapsed() >= Duration::from_millis(150),
            "stabilization is 10s/50"
        );
        let st = sim.lock();
        assert_eq!(voters(&st.cluster.servers), 4);
    }

    #[actix_rt::test]
    async fn terminating_a_dead_or_booting_machine() {
        let sim = Sim::new(fast());
        {
            let mut st = sim.lock();
            // A killed agent cannot leave: the machine goes, the failed peer stays for autopilot.
            kill(&sim, &mut st, "consul-server-3");
            assert!(terminate(&sim, &mut st, "consul-server-3"));
            let s = st.cluster.server("consul-server-3").unwrap();
            assert_eq!(s.machine, Machine::Terminated);
            assert!(s.in_raft, "still a peer until pruned");
            assert!(!restart(&sim, &mut st, "consul-server-3"));
            // A booting machine never joins.
            add_server(
                &sim,
                &mut st,
                "consul-server-4".into(),
                "image-a".into(),
                None,
            );
            assert!(terminate(&sim, &mut st, "consul-server-4"));
            assert_eq!(
                st.cluster.invariants.max_servers, 3,
                "a terminated machine no longer counts"
            );
        }
        until(&sim, Duration::from_secs(5), "the dead peer pruned", |st| {
            !st.cluster.server("consul-server-3").unwrap().in_raft
        })
        .await;
        // Past its boot delay (5s / 50), the terminated machine still has not joined.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let st = sim.lock();
        let s = st.cluster.server("consul-server-4").unwrap();
        assert_eq!(
            (s.machine, s.serf, s.in_raft),
            (Machine::Terminated, SerfStatus::None, false)
        );
        assert_eq!(voters(&st.cluster.servers), 2);
        assert_eq!(st.cluster.invariants.min_voters, Some(2));
    }

    #[actix_rt::test]
    async fn removing_a_peer_and_transferring_leadership() {
        let sim = Sim::new(fast());
        let mut st = sim.lock();
        let id3 = st.cluster.server("consul-server-3").unwrap().id.clone();
        kill(&sim, &mut st, "consul-server-3");
        assert!(remove_peer(&sim, &mut st, &id3));
        assert!(!remove_peer(&sim, &mut st, &id3), "already gone");
        assert_eq!(voters(&st.cluster.servers), 2);
        assert!(st.cluster.has_leader());
        let id2 = st.cluster.server("consul-server-2").unwrap().id.clone();
        let before = st.cluster.term;
        transfer_leader(&sim, &mut st, Some(&id2)).unwrap();
        assert_eq!(st.cluster.leader.as_deref(), Some("consul-server-2"));
        assert_eq!(st.cluster.term, before + 1);
        assert_eq!(st.cluster.invariants.leader_changes, 1);
        assert_eq!(
            transfer_leader(&sim, &mut st, Some(&id2)),
            Err(TransferError::ToItself)
        );
    }

    #[actix_rt::test]
    async fn a_cut_leader_is_replaced_and_rejoins_when_healed() {
        let sim = Sim::new(fast());
        {
            let mut st = sim.lock();
            cut(&sim, &mut st, "consul-server-1");
            assert!(!st.cluster.has_leader());
        }
        until(&sim, Duration::from_secs(5), "new leader", |st| {
            st.cluster.has_leader()
        })
        .await;
        {
            let mut st = sim.lock();
            assert_ne!(st.cluster.leader.as_deref(), Some("consul-server-1"));
            heal(&sim, &mut st, "consul-server-1");
        }
        until(&sim, Duration::from_secs(5), "healthy again", |st| {
            st.cluster.healthy() && voters(&st.cluster.servers) == 3
        })
        .await;
    }
}
