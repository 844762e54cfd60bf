//! The rollout's decisions as plain functions over a snapshot of the world: which one safe step
//! SpinUp or SpinDown may take now, or why it must wait. The actors only fetch the snapshot and
//! carry out the step; everything that decides safety is here and unit-tested without actix.
//!
//! The rules (shared/DESIGN.md): one step at a time; never while autopilot says the cluster is
//! unhealthy, while failure tolerance is below the rollout's baseline, or while a new server is
//! not yet a healthy voter; launch first, then retire the oldest outdated server, the leader
//! last and only after leadership moved off it.

use serde::{Deserialize, Serialize};

use crate::ports::{clip, ClusterHealth, Image, Machine, MachineState, PeerHealth, MAX_REASON};
use crate::window::WindowState;

/// Everything a decision looks at, fetched fresh for every run.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The cloud's server machines that are not terminated.
    pub machines: Vec<Machine>,
    pub health: ClusterHealth,
    pub newest_image: Option<Image>,
    pub rollout: Option<Rollout>,
    pub paused: bool,
    pub desired: usize,
    /// `rollout.launch_attempts`: failed launches a rollout survives; at this many it stops.
    pub launch_attempts: u32,
    pub now_ms: u64,
}

impl Snapshot {
    /// The machines, each paired with its Raft peer (see [`servers`]).
    pub fn servers(&self) -> Vec<Server<'_>> {
        servers(&self.machines, &self.health)
    }
}

/// The rollout record kept in KV at `rehydrator/<cluster>/rollout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Names this rollout in launch tokens.
    pub id: String,
    pub target_image: String,
    pub started_at: u64,
    /// Autopilot's failure tolerance when it started: no step may begin below it.
    pub baseline_tolerance: u32,
    /// Flattened: the record reads `"state": "completed", "at": …` rather than a nested object.
    #[serde(flatten)]
    pub state: RolloutState,
    /// Launched machines, each once, that have not failed.
    pub launches: Vec<StepRecord>,
    /// Launched machines that died, were terminated or never started before the rollout was
    /// done with them, each once, with the cloud's reason. Each failure moves the next launch
    /// to a new token; `Snapshot::launch_attempts` of them stop the rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_launches: Vec<StepRecord>,
    pub retirements: Vec<StepRecord>,
    /// Retirements folded into a count to keep the record within `RECORD_BUDGET`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compacted_retirements: usize,
    /// The retirement under way, written before the cloud is asked: a holder that dies between
    /// the cloud's retire and the record write leaves it here, and the next run moves it to
    /// `retirements` once the machine is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<StepRecord>,
    /// Why the last run did not take a step, for status.
    #[serde(default)]
    pub waiting: Option<String>,
    /// Since when (Unix ms) it has waited for that reason: status shows the wait's age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<u64>,
    /// The Consul snapshots taken before this rollout's steps (file names, the newest last;
    /// the oldest dropped past `KEPT_SNAPSHOTS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// How leadership moved off each leader this rollout retired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leader_moves: Vec<LeaderMove>,
    /// An operator aborted it (`rehydrator abort`): no more launches; its servers that do not
    /// vote yet are retired, then it stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<Abort>,
    /// It rolls back to the image the servers ran before an aborted rollout to this image
    /// (`rehydrator abort --to-previous`): a newer image alone does not start a rollout to
    /// this one again, an operator's `consul-rehydrate` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
}

/// Who aborted a rollout, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub by: String,
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Abort {
    /// "aborted by alice (bad image)", for the stop reason and status.
    pub fn describe(&self) -> String {
        match &self.reason {
            Some(r) => format!("aborted by {} ({})", self.by, clip(r, MAX_TEXT)),
            None => format!("aborted by {}", self.by),
        }
    }
}

/// How leadership moved off a leader about to be retired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderMove {
    /// The old leader's node.
    pub from: String,
    /// `transfer` (transfer-leader, the leader seen to move), `transfer_retried` (the first
    /// call reported success and nothing moved; the second did), or `leave` (no transfer-leader
    /// before Consul 1.15, or two that did not move it: the leader left and the others elected).
    pub path: String,
    /// The node that leads after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// transfer-leader calls made (0 where the servers have none).
    #[serde(default)]
    pub transfers: u32,
    /// From the move's start until a new leader was seen: on the `leave` path, an upper bound
    /// of the time the cluster had no leader (the leave's own drain included).
    pub until_new_leader_ms: u64,
    pub at: u64,
}

/// The most bytes the rollout record may take: far under Consul's 512 KiB value limit, so a
/// write never fails for size in the middle of a step.
pub const RECORD_BUDGET: usize = 64 * 1024;
/// The longest text (why it waits, why it stopped) the record keeps.
const MAX_TEXT: usize = 1024;
/// Retirements kept by name once the record is folded; the rest are counted.
const KEPT_RETIREMENTS: usize = 16;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RolloutState {
    Active,
    Completed {
        at: u64,
    },
    /// Stopped for safety; a new `consul-rehydrate` event starts a new rollout.
    Stopped {
        at: u64,
        reason: String,
    },
}

/// One launch or retirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub machine: String,
    pub at: u64,
    #[serde(default)]
    pub token: Option<String>,
    /// Why the step failed (failed launches only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Rollout {
    /// A new active rollout to `image`, with the failure tolerance it must not go below.
    pub fn start(id: String, image: &str, now_ms: u64, baseline_tolerance: u32) -> Self {
        Self {
            id,
            target_image: image.to_owned(),
            started_at: now_ms,
            baseline_tolerance,
            state: RolloutState::Active,
            launches: Vec::new(),
            failed_launches: Vec::new(),
            retirements: Vec::new(),
            compacted_retirements: 0,
            retiring: None,
            waiting: None,
            waiting_since: None,
            snapshots: Vec::new(),
            leader_moves: Vec::new(),
            aborted: None,
            rolled_back_from: None,
        }
    }

    /// Records why the rollout waits (None: it does not); the time it started waiting is
    /// kept while the reason stays the same.
    pub fn wait(&mut self, why: Option<String>, now_ms: u64) {
        if why != self.waiting {
            self.waiting_since = why.as_ref().map(|_| now_ms);
        }
        self.waiting = why;
    }

    /// Retirements, those folded into the count included.
    pub fn retired(&self) -> usize {
        self.retirements.len() + self.compacted_retirements
    }

    /// The record as the JSON written to KV, within `RECORD_BUDGET`: text from outside (why it
    /// waits, why a launch failed, why it stopped) clipped, and if it is still too large, all
    /// but the newest retirements folded into a count. Launches and failed launches are not
    /// folded: the plan bounds them (a launch only when the server count allows one, each
    /// machine recorded once, at most `launch_attempts` failures), and the plan reads them.
    /// Err names the size when even that does not fit: the write is refused, no step follows.
    pub fn bounded_json(&self) -> Result<Vec<u8>, String> {
        let mut r = self.clone();
        r.waiting = r.waiting.map(|w| clip(&w, MAX_TEXT));
        if let RolloutState::Stopped { reason, .. } = &mut r.state {
            *reason = clip(reason, MAX_TEXT);
        }
        for s in r.launches.iter_mut().chain(&mut r.failed_launches) {
            s.reason = s.reason.take().map(|x| clip(&x, MAX_REASON));
        }
        let mut body = serde_json::to_vec(&r).map_err(|e| e.to_string())?;
        if body.len() > RECORD_BUDGET && r.retirements.len() > KEPT_RETIREMENTS {
            let fold = r.retirements.len() - KEPT_RETIREMENTS;
            r.retirements.drain(..fold);
            r.compacted_retirements += fold;
            body = serde_json::to_vec(&r).map_err(|e| e.to_string())?;
        }
        if body.len() > RECORD_BUDGET {
            return Err(format!(
                "the rollout record would take {} bytes, over its budget of {RECORD_BUDGET} \
                 (Consul refuses values over 512 KiB)",
                body.len()
            ));
        }
        Ok(body)
    }

    pub fn is_active(&self) -> bool {
        self.state == RolloutState::Active
    }

    /// Records a launch; a machine already recorded (a retried step answered by its token,
    /// or one already failed) is not added again.
    pub fn record_launch(&mut self, launch: StepRecord) {
        let known = |l: &StepRecord| l.machine == launch.machine;
        if !self.launches.iter().any(known) && !self.failed_launches.iter().any(known) {
            self.launches.push(launch);
        }
    }

    /// Records a failed launch: out of `launches`, into `failed_launches`, once.
    pub fn record_failure(&mut self, failed: StepRecord) {
        self.launches.retain(|l| l.machine != failed.machine);
        if !self
            .failed_launches
            .iter()
            .any(|f| f.machine == failed.machine)
        {
            self.failed_launches.push(failed);
        }
    }
}

/// How a rollout may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only a `consul-rehydrate` event starts one.
    Manual,
    /// A newer image than some server's starts one by itself.
    Auto,
}

/// What SpinUp or SpinDown should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No rollout is going on (or nothing is this executor's to do): nothing to record.
    Idle(String),
    /// Do nothing now, for this reason (shown in status).
    Wait(String),
    /// A new server is becoming a stable voter: the next step is close, so look again shortly
    /// rather than wait for the next trigger (promotion changes Raft, not the catalog, so no
    /// watch fires when it happens).
    Settle(String),
    /// Record a new rollout to `image` (then decide again).
    Start { image: String },
    /// Launch one server on `image` with this idempotency token.
    Launch { image: String, token: String },
    /// Move leadership off the server about to be retired.
    TransferLeadership { from: String, to: Option<String> },
    /// Retire this machine (its agent leaves gracefully, then it goes).
    Retire { machine: String, node: String },
    /// Every server is on the target image and the count is the desired one.
    Complete,
    /// Stop the rollout for safety, keeping the old servers, for this reason.
    Stop {
        reason: String,
        failed_machine: Option<String>,
    },
}

/// A machine with its Raft peer, if it has joined.
#[derive(Debug, Clone)]
pub struct Server<'a> {
    pub machine: &'a Machine,
    pub peer: Option<&'a PeerHealth>,
}

impl Server<'_> {
    /// A Raft voter, healthy or not.
    pub fn is_voter(&self) -> bool {
        self.peer.is_some_and(|p| p.voter)
    }

    /// A voter autopilot calls healthy: promoted after its stabilization time.
    pub fn is_stable_voter(&self) -> bool {
        self.peer.is_some_and(|p| p.voter && p.healthy)
    }

    pub fn is_leader(&self) -> bool {
        self.peer.is_some_and(|p| p.leader)
    }

    pub fn node(&self) -> String {
        self.peer
            .map(|p| p.name.clone())
            .or_else(|| self.machine.node.clone())
            .unwrap_or_else(|| self.machine.id.clone())
    }
}

/// Pairs each of `machines` with its peer in `health`: by node name where the cloud knows it,
/// else by address.
pub fn servers<'a>(machines: &'a [Machine], health: &'a ClusterHealth) -> Vec<Server<'a>> {
    machines
        .iter()
        .filter(|m| m.state != MachineState::Terminated)
        .map(|m| {
            // The node name first: machines that share an address (local processes on
            // loopback) are told apart only by it. The address is for clouds that do not know
            // the node name.
            let by_node = m
                .node
                .as_deref()
                .and_then(|n| health.servers.iter().find(|p| p.name == n));
            let peer = by_node.or_else(|| {
                m.address
                    .as_deref()
                    .and_then(|a| health.servers.iter().find(|p| p.ip() == a))
            });
            Server { machine: m, peer }
        })
        .collect()
}

/// The launch token for the step that replaces one of `outdated` servers while `count` exist,
/// after `failed` failed launches: the same for a retry of that step, different for every other
/// step of the rollout and for every attempt after a failure (a cloud answers a used token with
/// the machine it launched, even a terminated one, as EC2's ClientToken does).
pub fn launch_token(rollout_id: &str, outdated: usize, count: usize, failed: usize) -> String {
    match failed {
        0 => format!("{rollout_id}-o{outdated}-n{count}"),
        n => format!("{rollout_id}-o{outdated}-n{count}-a{n}"),
    }
}

/// The stop for a rollout whose launches failed `launch_attempts` times.
fn out_of_attempts(rollout: &Rollout, launch_attempts: u32) -> Option<Step> {
    let failed = rollout.failed_launches.len();
    if failed < launch_attempts as usize {
        return None;
    }
    let last = rollout
        .failed_launches
        .last()
        .map_or_else(String::new, |f| {
            format!(
                "; the last, {}: {}",
                f.machine,
                f.reason.as_deref().unwrap_or("no reason given")
            )
        });
    Some(Step::Stop {
        reason: format!(
            "{failed} launches failed (rollout.launch_attempts = {launch_attempts}){last}"
        ),
        failed_machine: None,
    })
}

/// Checks every step shares: the brake, autopilot's health and the baseline tolerance.
fn gate(s: &Snapshot, rollout: &Rollout) -> Option<String> {
    if s.paused {
        return Some("paused by the operator (the pause key is set)".into());
    }
    if !s.health.healthy {
        return Some("autopilot reports the cluster unhealthy".into());
    }
    if s.health.failure_tolerance < rollout.baseline_tolerance {
        return Some(format!(
            "failure tolerance {} is below the rollout's baseline {}",
            s.health.failure_tolerance, rollout.baseline_tolerance
        ));
    }
    None
}

/// Whether the rollout to `target` is done: every server on it, as many as desired, all
/// stable voters, and Raft listing no other server. A retired server still leaving, or dead
/// until autopilot prunes it, still counts towards the quorum size: a rollout called done
/// then would leave the cluster below its failure tolerance (seen on real Consul when the
/// holder that retired the last old server was killed before that server was out of Raft).
fn complete(s: &Snapshot, servers: &[Server<'_>], target: &str) -> bool {
    servers.len() == s.desired
        && servers
            .iter()
            .all(|sv| sv.machine.image == target && sv.is_stable_voter())
        && strays(s, servers).is_empty()
}

/// The servers Raft lists that are no machine's: retired ones still leaving, dead ones
/// autopilot has not pruned, or servers the cloud does not manage.
fn strays<'a>(s: &'a Snapshot, servers: &[Server<'_>]) -> Vec<&'a str> {
    unaccounted_among(s, servers)
        .into_iter()
        .map(|p| p.name.as_str())
        .collect()
}

/// The servers Raft lists that none of the cloud's live machines accounts for: a rollout does
/// not complete while Raft still counts one (`rehydrator doctor` names them).
pub fn unaccounted(s: &Snapshot) -> Vec<&PeerHealth> {
    unaccounted_among(s, &s.servers())
}

fn unaccounted_among<'a>(s: &'a Snapshot, servers: &[Server<'_>]) -> Vec<&'a PeerHealth> {
    s.health
        .servers
        .iter()
        .filter(|p| {
            !servers
                .iter()
                .any(|sv| sv.peer.is_some_and(|q| q.id == p.id))
        })
        .collect()
}

/// A launch in flight: the newest server on the target that is not yet a healthy voter. Past
/// `stable_timeout_ms` it stops the rollout; before, the caller waits (or settles) for it.
fn in_flight(
    servers: &[Server<'_>],
    target: &str,
    now_ms: u64,
    stable_timeout_ms: u64,
) -> Option<Result<String, Step>> {
    let new = servers
        .iter()
        .filter(|sv| sv.machine.image == target && !sv.is_stable_voter())
        .max_by_key(|sv| sv.machine.launched_at)?;
    if now_ms.saturating_sub(new.machine.launched_at) > stable_timeout_ms {
        return Some(Err(Step::Stop {
            reason: format!(
                "new server {} did not become a healthy voter within {}s of its launch",
                new.node(),
                stable_timeout_ms / 1000
            ),
            failed_machine: Some(new.machine.id.clone()),
        }));
    }
    Some(Ok(format!(
        "new server {} is not yet a stable voter",
        new.node()
    )))
}

/// More servers than desired with no rollout recorded: a record deleted mid-rollout (or a
/// server added by hand). Nothing retires the extra one until a rollout is recorded again.
pub fn unrecorded_extra(s: &Snapshot) -> Option<String> {
    let n = s.servers().len();
    (s.rollout.is_none() && n > s.desired).then(|| {
        format!(
            "{n} servers where {} are desired and no rollout is recorded (was the record \
             deleted?): `rehydrator repair` records the cluster as it is, and the rollout then \
             retires the extra server",
            s.desired
        )
    })
}

/// A rollout record rebuilt from what the cluster is (`rehydrator repair`), for a record that
/// does not decode or is gone mid-rollout: a new rollout `id` to the newest image, with the
/// servers already on it adopted as its launches. It is active while any server is outdated or
/// the count is not the desired one (the usual rules then retire the extra, oldest outdated
/// first), else completed. Its baseline is the failure tolerance the desired count gives, not
/// today's, which a broken cluster may have lowered.
pub fn rebuild(s: &Snapshot, id: String) -> Result<Rollout, String> {
    let newest = s
        .newest_image
        .as_ref()
        .ok_or("no image matches the cloud's filter: there is no target to rebuild towards")?;
    let baseline = u32::try_from(s.desired.saturating_sub(1) / 2).unwrap_or(u32::MAX);
    let mut r = Rollout::start(id, &newest.id, s.now_ms, baseline);
    let servers = s.servers();
    for sv in servers.iter().filter(|sv| sv.machine.image == newest.id) {
        r.record_launch(StepRecord {
            machine: sv.machine.id.clone(),
            at: sv.machine.launched_at,
            token: sv.machine.token.clone(),
            reason: None,
        });
    }
    if servers.len() == s.desired && servers.iter().all(|sv| sv.machine.image == newest.id) {
        r.state = RolloutState::Completed { at: s.now_ms };
    } else {
        r.waiting = Some("rebuilt by `rehydrator repair` from the cluster".into());
    }
    Ok(r)
}

/// SpinUp's decision. `requested` says the trigger was a `consul-rehydrate` event.
pub fn spin_up(s: &Snapshot, mode: Mode, requested: bool, stable_timeout_ms: u64) -> Step {
    let servers = s.servers();
    let active = s.rollout.as_ref().filter(|r| r.is_active());
    let Some(rollout) = active else {
        let Some(newest) = &s.newest_image else {
            return Step::Idle("no image matches the filter".into());
        };
        let outdated = servers.iter().any(|sv| sv.machine.image != newest.id);
        // Nor one an operator rolled back from.
        let already = s.rollout.as_ref().is_some_and(|r| {
            r.target_image == newest.id || r.rolled_back_from.as_deref() == Some(&newest.id)
        });
        return match (outdated, requested, mode) {
            (false, _, _) => {
                Step::Idle(format!("every server runs the newest image {}", newest.id))
            }
            (true, true, _) => Step::Start {
                image: newest.id.clone(),
            },
            // A stopped or finished rollout to this image is not restarted by a timer or a
            // catalog change: that takes an operator's `consul-rehydrate`.
            (true, false, Mode::Auto) if !already => Step::Start {
                image: newest.id.clone(),
            },
            (true, false, _) => {
                Step::Idle("servers are outdated; waiting for consul-rehydrate".into())
            }
        };
    };
    if let Some(abort) = &rollout.aborted {
        // SpinDown retires; SpinUp launches nothing more and stops it once that is done.
        return match aborted(s, rollout) {
            Some(stop @ Step::Stop { .. }) => stop,
            _ => Step::Idle(format!(
                "{}: no launch; its servers that do not vote yet are retired",
                abort.describe()
            )),
        };
    }
    let target = rollout.target_image.as_str();
    if complete(s, &servers, target) {
        return Step::Complete;
    }
    if let Some(stop) = out_of_attempts(rollout, s.launch_attempts) {
        return stop;
    }
    match in_flight(&servers, target, s.now_ms, stable_timeout_ms) {
        Some(Err(stop)) => return stop,
        Some(Ok(why)) => return Step::Wait(why),
        None => {}
    }
    if servers.len() > s.desired {
        return Step::Wait("an outdated server is due to be retired first".into());
    }
    if let Some(why) = gate(s, rollout) {
        return Step::Wait(why);
    }
    let outdated = servers
        .iter()
        .filter(|sv| sv.machine.image != target)
        .count();
    if outdated == 0 && servers.len() >= s.desired {
        let strays = strays(s, &servers);
        if !strays.is_empty() {
            return Step::Wait(format!(
                "every server is on the target; waiting for {} to leave Raft (a retired \
                 server's leave, or autopilot's pruning of a dead one)",
                strays.join(", ")
            ));
        }
        return Step::Wait("every server is on the target; waiting for the last to settle".into());
    }
    Step::Launch {
        image: target.to_owned(),
        token: launch_token(
            &rollout.id,
            outdated,
            servers.len(),
            rollout.failed_launches.len(),
        ),
    }
}

/// SpinDown's decision: retire the oldest outdated server once its replacement is a stable
/// voter, the leader last and only after leadership moved off it.
/// Marks the peer at `leader` (Raft's leader address) as the leader and no other; with no
/// leader, none. Autopilot's own flags can be stale.
pub fn mark_leader(health: &mut ClusterHealth, leader: Option<&str>) {
    for p in &mut health.servers {
        p.leader = leader.is_some_and(|l| p.address == l);
    }
}

pub fn spin_down(s: &Snapshot, stable_timeout_ms: u64) -> Step {
    let Some(rollout) = s.rollout.as_ref().filter(|r| r.is_active()) else {
        return Step::Idle("no rollout".into());
    };
    if let Some(step) = aborted(s, rollout) {
        return step;
    }
    let servers = s.servers();
    let target = rollout.target_image.as_str();
    if complete(s, &servers, target) {
        return Step::Complete;
    }
    if let Some(stop) = out_of_attempts(rollout, s.launch_attempts) {
        return stop;
    }
    if servers.len() <= s.desired {
        return Step::Idle("nothing to retire: no replacement is up yet".into());
    }
    // An outdated server that does not vote counts for no quorum: it goes first, and without
    // waiting for autopilot to call the cluster healthy, which a server that never joins (the
    // new server of a rollout rolled back from a broken image) would keep it from doing.
    if let Some(stray) = servers
        .iter()
        .filter(|sv| sv.machine.image != target && !sv.is_voter())
        .min_by_key(|sv| sv.machine.launched_at)
    {
        if s.paused {
            return Step::Wait("paused by the operator (the pause key is set)".into());
        }
        return Step::Retire {
            machine: stray.machine.id.clone(),
            node: stray.node(),
        };
    }
    match in_flight(&servers, target, s.now_ms, stable_timeout_ms) {
        Some(Err(stop)) => return stop,
        Some(Ok(why)) => return Step::Settle(why),
        None => {}
    }
    if let Some(why) = gate(s, rollout) {
        return Step::Wait(why);
    }
    // Without a known leader no server can be told apart from it: the one retired might be
    // the leader, retired without its move.
    if !servers.iter().any(Server::is_leader) {
        return Step::Wait("the cluster has no leader (an election)".into());
    }
    // Oldest outdated first, the leader last; if none is outdated (a launch too many), the
    // newest non-leader goes. Where the cloud knows zones, an outdated server from the zone
    // with the most servers goes before an older one elsewhere: the launch went where its
    // cloud chose (an Auto Scaling group, to its emptiest zone), and the retirement evens the
    // zones out again instead of leaving them for AZRebalance to fix by terminating a server.
    let per_zone = |zone: &Option<String>| {
        zone.as_ref().map_or(0, |z| {
            servers
                .iter()
                .filter(|sv| sv.machine.zone.as_ref() == Some(z))
                .count()
        })
    };
    let mut outdated: Vec<&Server<'_>> = servers
        .iter()
        .filter(|sv| sv.machine.image != target)
        .collect();
    outdated.sort_by_key(|sv| {
        (
            sv.is_leader(),
            std::cmp::Reverse(per_zone(&sv.machine.zone)),
            sv.machine.launched_at,
        )
    });
    let victim = match outdated.first() {
        Some(v) => *v,
        None => match servers
            .iter()
            .filter(|sv| !sv.is_leader())
            .max_by_key(|sv| sv.machine.launched_at)
        {
            Some(v) => v,
            None => return Step::Wait("no server can be retired safely".into()),
        },
    };
    if victim.is_leader() {
        let to = servers
            .iter()
            .filter(|sv| sv.machine.image == target && sv.is_stable_voter())
            .max_by_key(|sv| sv.machine.launched_at)
            .and_then(|sv| sv.peer.map(|p| p.id.clone()));
        return Step::TransferLeadership {
            from: victim.peer.map(|p| p.id.clone()).unwrap_or_default(),
            to,
        };
    }
    Step::Retire {
        machine: victim.machine.id.clone(),
        node: victim.node(),
    }
}

/// An aborted rollout's next step: retire its newest server that does not vote yet (it
/// counts for no quorum, so no health gate holds it), then stop. None where the usual
/// retirement applies first: every new server votes and the cluster is over its size.
fn aborted(s: &Snapshot, rollout: &Rollout) -> Option<Step> {
    let abort = rollout.aborted.as_ref()?;
    let servers = s.servers();
    let joining = servers
        .iter()
        .filter(|sv| sv.machine.image == rollout.target_image && !sv.is_voter())
        .max_by_key(|sv| sv.machine.launched_at);
    if let Some(j) = joining {
        if s.paused {
            return Some(Step::Wait(
                "paused by the operator (the pause key is set)".into(),
            ));
        }
        return Some(Step::Retire {
            machine: j.machine.id.clone(),
            node: j.node(),
        });
    }
    if servers.len() > s.desired {
        return None;
    }
    Some(Step::Stop {
        reason: abort.describe(),
        failed_machine: None,
    })
}

/// How far autopilot's StableSince (rounded to the second) may be before the real moment.
const STABLE_SINCE_ROUNDING_MS: u64 = 500;

/// Why an old server must not go yet under a bake time of `bake_ms`: the newest server on the
/// rollout's target has been healthy (autopilot's StableSince; its launch, where autopilot
/// does not say) for less than that. None when there is nothing to bake.
pub fn baking(s: &Snapshot, bake_ms: u64) -> Option<String> {
    if bake_ms == 0 {
        return None;
    }
    let rollout = s.rollout.as_ref()?;
    let servers = s.servers();
    let newest = servers
        .iter()
        .filter(|sv| sv.machine.image == rollout.target_image && sv.is_stable_voter())
        .max_by_key(|sv| sv.machine.launched_at)?;
    // Autopilot gives StableSince rounded to the second: half a second is added so the bake
    // is never short; and a server is never healthy before its launch.
    let since = newest
        .peer
        .and_then(|p| p.stable_since_ms)
        .map_or(newest.machine.launched_at, |t| {
            (t + STABLE_SINCE_ROUNDING_MS).max(newest.machine.launched_at)
        });
    let baked = s.now_ms.saturating_sub(since);
    (baked < bake_ms).then(|| {
        format!(
            "baking: new server {} has been healthy for {}s of the {}s bake time",
            newest.node(),
            baked / 1000,
            bake_ms / 1000
        )
    })
}

/// `step` held to the maintenance windows: outside them a launch, a leadership transfer or a
/// retirement waits, saying when the next window opens. What changes no server goes on:
/// starting the rollout (recording an operator's request, which would otherwise be lost),
/// completing or stopping it, and settling, the wait for a step already taken to finish (a
/// half-done step is never abandoned because a window closed).
pub fn within_window(step: Step, window: &WindowState) -> Step {
    match (&step, window.reason()) {
        (
            Step::Launch { .. } | Step::TransferLeadership { .. } | Step::Retire { .. },
            Some(why),
        ) => Step::Wait(why),
        _ => step,
    }
}

/// Steps the cloud shows that the rollout record lacks (a holder died between acting and
/// recording).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissedSteps {
    /// Machines this rollout launched, by their token, that the record does not list.
    pub launches: Vec<StepRecord>,
    /// The retirement under way, when its machine is gone from the cloud.
    pub retired: Option<StepRecord>,
}

impl MissedSteps {
    pub fn is_empty(&self) -> bool {
        self.launches.is_empty() && self.retired.is_none()
    }

    /// The record with the missed steps added.
    pub fn apply(self, r: &mut Rollout) {
        r.launches.extend(self.launches);
        if let Some(done) = self.retired {
            r.retiring = None;
            if !r.retirements.iter().any(|x| x.machine == done.machine) {
                r.retirements.push(done);
            }
        }
    }
}

/// What `machines` (the cloud's live machines) says happened that `r` does not record.
pub fn missed_steps(r: &Rollout, machines: &[Machine]) -> MissedSteps {
    let prefix = format!("{}-", r.id);
    let launches = machines
        .iter()
        .filter(|m| m.token.as_deref().is_some_and(|t| t.starts_with(&prefix)))
        .filter(|m| {
            !r.launches
                .iter()
                .chain(&r.failed_launches)
                .any(|l| l.machine == m.id)
        })
        .map(|m| StepRecord {
            machine: m.id.clone(),
            at: m.launched_at,
            token: m.token.clone(),
            reason: None,
        })
        .collect();
    let retired = r
        .retiring
        .as_ref()
        .filter(|x| {
            !machines
                .iter()
                .any(|m| m.id == x.machine && m.state != MachineState::Terminated)
        })
        .cloned();
    MissedSteps { launches, retired }
}

/// How long a launched machine may be missing from the cloud's listing, with the cloud unable
/// to say what became of it, before it counts as a failed launch: a listing can lag a launch
/// (EC2's DescribeInstances is eventually consistent).
pub const LISTING_GRACE_MS: u64 = 60_000;

/// The recorded launches `machines` (the cloud's live machines) no longer lists, and that this
/// rollout did not retire: each may have failed; `failed_launch` judges it once the cloud has
/// been asked about it.
pub fn lost_launches(r: &Rollout, machines: &[Machine]) -> Vec<StepRecord> {
    let retired = |id: &str| {
        r.retirements
            .iter()
            .chain(&r.retiring)
            .any(|x| x.machine == id)
    };
    r.launches
        .iter()
        .filter(|l| {
            !machines
                .iter()
                .any(|m| m.id == l.machine && m.state != MachineState::Terminated)
        })
        .filter(|l| !retired(&l.machine))
        .cloned()
        .collect()
}

/// Whether `launch` failed, given what the cloud says of its machine now (`found`, any state):
/// terminated is a failure with the cloud's reason; alive is a listing that lagged; unknown is
/// a failure once `LISTING_GRACE_MS` has passed since the launch.
pub fn failed_launch(
    launch: &StepRecord,
    found: Option<&Machine>,
    now_ms: u64,
) -> Option<StepRecord> {
    let reason = match found {
        Some(m) if m.state == MachineState::Terminated => m
            .reason
            .clone()
            .unwrap_or_else(|| "the machine was terminated".into()),
        Some(_) => return None,
        None if now_ms.saturating_sub(launch.at) < LISTING_GRACE_MS => return None,
        None => "the cloud no longer knows the machine".into(),
    };
    Some(StepRecord {
        reason: Some(reason),
        ..launch.clone()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn machine(id: &str, image: &str, launched_at: u64) -> Machine {
        Machine {
            id: id.into(),
            image: image.into(),
            launched_at,
            state: MachineState::Running,
            address: Some(format!("10.0.0.{}", launched_at)),
            zone: None,
            node: Some(id.into()),
            token: None,
            reason: None,
        }
    }

    fn peer(id: &str, leader: bool, voter: bool, healthy: bool) -> PeerHealth {
        PeerHealth {
            id: format!("raft-{id}"),
            name: id.into(),
            address: format!("{id}:8300"),
            serf_status: "alive".into(),
            leader,
            voter,
            healthy,
            stable_since_ms: None,
        }
    }

    fn rollout(target: &str) -> Rollout {
        Rollout {
            id: "r1".into(),
            target_image: target.into(),
            started_at: 0,
            baseline_tolerance: 1,
            state: RolloutState::Active,
            launches: Vec::new(),
            failed_launches: Vec::new(),
            retirements: Vec::new(),
            compacted_retirements: 0,
            retiring: None,
            waiting: None,
            waiting_since: None,
            snapshots: Vec::new(),
            leader_moves: Vec::new(),
            aborted: None,
            rolled_back_from: None,
        }
    }

    /// Three servers on A (s1 leads), image B newest.
    fn three_on_a() -> Snapshot {
        Snapshot {
            machines: vec![
                machine("s1", "A", 1),
                machine("s2", "A", 2),
                machine("s3", "A", 3),
            ],
            health: ClusterHealth {
                healthy: true,
                failure_tolerance: 1,
                servers: vec![
                    peer("s1", true, true, true),
                    peer("s2", false, true, true),
                    peer("s3", false, true, true),
                ],
            },
            newest_image: Some(Image {
                id: "B".into(),
                name: "b".into(),
                created: "2026".into(),
            }),
            rollout: None,
            paused: false,
            desired: 3,
            launch_attempts: 3,
            now_ms: 1000,
        }
    }

    fn add_new(s: &mut Snapshot, id: &str, launched_at: u64, voter: bool, healthy: bool) {
        s.machines.push(machine(id, "B", launched_at));
        s.health.servers.push(peer(id, false, voter, healthy));
    }

    const TIMEOUT: u64 = 600_000;

    #[test]
    fn a_request_starts_a_rollout_a_timer_does_not_in_manual_mode() {
        let s = three_on_a();
        assert_eq!(
            spin_up(&s, Mode::Manual, true, TIMEOUT),
            Step::Start { image: "B".into() }
        );
        assert!(matches!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Idle(_)
        ));
        assert_eq!(
            spin_up(&s, Mode::Auto, false, TIMEOUT),
            Step::Start { image: "B".into() }
        );
        assert!(matches!(spin_down(&s, TIMEOUT), Step::Idle(_)));
    }

    #[test]
    fn a_stopped_rollout_is_not_restarted_by_a_timer_even_in_auto_mode() {
        let mut s = three_on_a();
        let mut r = rollout("B");
        r.state = RolloutState::Stopped {
            at: 1,
            reason: "x".into(),
        };
        s.rollout = Some(r);
        assert!(matches!(
            spin_up(&s, Mode::Auto, false, TIMEOUT),
            Step::Idle(_)
        ));
        assert_eq!(
            spin_up(&s, Mode::Auto, true, TIMEOUT),
            Step::Start { image: "B".into() }
        );
    }

    #[test]
    fn launches_one_then_waits_for_it_to_be_a_stable_voter() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        assert_eq!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Launch {
                image: "B".into(),
                token: "r1-o3-n3".into()
            }
        );
        add_new(&mut s, "n1", 10, false, true);
        s.health.failure_tolerance = 1;
        assert!(
            matches!(spin_up(&s, Mode::Manual, false, TIMEOUT), Step::Wait(w) if w.contains("n1"))
        );
        assert!(matches!(spin_down(&s, TIMEOUT), Step::Settle(w) if w.contains("n1")));
    }

    #[test]
    fn retires_the_oldest_outdated_follower_once_the_new_one_votes() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        add_new(&mut s, "n1", 10, true, true);
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::Retire {
                machine: "s2".into(),
                node: "s2".into()
            }
        );
        // SpinUp does not launch a second one meanwhile.
        assert!(matches!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Wait(_)
        ));
    }

    #[test]
    fn a_wait_keeps_its_start_while_its_reason_stays() {
        let mut r = rollout("B");
        r.wait(Some("a".into()), 10);
        r.wait(Some("a".into()), 20);
        assert_eq!(
            (r.waiting.as_deref(), r.waiting_since),
            (Some("a"), Some(10))
        );
        r.wait(Some("b".into()), 30);
        assert_eq!(r.waiting_since, Some(30));
        r.wait(None, 40);
        assert_eq!((r.waiting.as_deref(), r.waiting_since), (None, None));
    }

    #[test]
    fn a_bake_time_holds_the_old_servers_until_the_new_one_has_been_healthy_that_long() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        add_new(&mut s, "n1", 10, true, true);
        s.now_ms = 100_000;
        let n1 = s
            .health
            .servers
            .iter_mut()
            .find(|p| p.name == "n1")
            .unwrap();
        n1.stable_since_ms = Some(95_000);
        let why = baking(&s, 30_000).expect("4.5 s of 30 s baked");
        assert!(
            why.contains("n1 has been healthy for 4s of the 30s bake time"),
            "{why}"
        );
        // StableSince is to the second: half a second more, so the bake is never short.
        assert!(baking(&s, 5_000).is_some());
        assert_eq!(baking(&s, 4_500), None, "baked");
        assert_eq!(baking(&s, 0), None, "no bake time");
        // Where autopilot does not say, the launch counts (n1 launched at 10 ms).
        let n1 = s
            .health
            .servers
            .iter_mut()
            .find(|p| p.name == "n1")
            .unwrap();
        n1.stable_since_ms = None;
        assert_eq!(baking(&s, 60_000), None);
        assert!(baking(&s, 120_000).is_some());
    }

    #[test]
    fn a_retirement_evens_the_zones_out_before_it_takes_the_oldest() {
        // s1 (the leader, so last) in zone b, s2 in c, s3 in a; the group put the new one in
        // zone a, which now has two servers.
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        add_new(&mut s, "n1", 10, true, true);
        for (m, z) in s.machines.iter_mut().zip(["b", "c", "a", "a"]) {
            m.zone = Some(z.into());
        }
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::Retire {
                machine: "s3".into(),
                node: "s3".into()
            },
            "the outdated server in the fuller zone, though s2 is older"
        );
        // The new one in a zone of its own: the zones are even, the oldest follower goes.
        s.machines[3].zone = Some("d".into());
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::Retire {
                machine: "s2".into(),
                node: "s2".into()
            }
        );
    }

    #[test]
    fn the_leader_goes_last_and_only_after_leadership_moved() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        // s2 and s3 replaced already: s1 (leader) and three new servers, one too many.
        s.machines.retain(|m| m.id == "s1");
        s.health.servers.retain(|p| p.name == "s1");
        add_new(&mut s, "n1", 10, true, true);
        add_new(&mut s, "n2", 11, true, true);
        add_new(&mut s, "n3", 12, true, true);
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::TransferLeadership {
                from: "raft-s1".into(),
                to: Some("raft-n3".into())
            }
        );
        s.health.servers[0].leader = false;
        s.health.servers[3].leader = true;
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::Retire {
                machine: "s1".into(),
                node: "s1".into()
            }
        );
    }

    #[test]
    fn raft_names_the_leader_when_autopilot_s_flags_are_stale_and_none_means_wait() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        s.machines.retain(|m| m.id == "s1");
        s.health.servers.retain(|p| p.name == "s1");
        add_new(&mut s, "n1", 10, true, true);
        add_new(&mut s, "n2", 11, true, true);
        add_new(&mut s, "n3", 12, true, true);
        // Autopilot names no leader (or the wrong one); Raft says s1 leads.
        s.health.servers[0].leader = false;
        s.health.servers[1].leader = true;
        mark_leader(&mut s.health, Some("s1:8300"));
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::TransferLeadership {
                from: "raft-s1".into(),
                to: Some("raft-n3".into())
            }
        );
        // In an election nobody leads: no server is retired, it might be the leader.
        mark_leader(&mut s.health, None);
        assert!(
            matches!(spin_down(&s, TIMEOUT), Step::Wait(w) if w.contains("no leader")),
            "{:?}",
            spin_down(&s, TIMEOUT)
        );
    }

    #[test]
    fn no_step_while_unhealthy_or_below_the_baseline_or_paused() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        s.health.healthy = false;
        assert!(matches!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Wait(w) if w.contains("unhealthy")
        ));
        s.health.healthy = true;
        s.health.failure_tolerance = 0;
        assert!(matches!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Wait(w) if w.contains("baseline")
        ));
        s.health.failure_tolerance = 1;
        s.paused = true;
        assert!(matches!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Wait(w) if w.contains("paused")
        ));
        add_new(&mut s, "n1", 10, true, true);
        assert!(matches!(spin_down(&s, TIMEOUT), Step::Wait(w) if w.contains("paused")));
    }

    #[test]
    fn a_launch_that_never_gets_healthy_stops_the_rollout() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        add_new(&mut s, "n1", 10, false, false);
        s.now_ms = 10 + TIMEOUT + 1;
        assert_eq!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Stop {
                reason: "new server n1 did not become a healthy voter within 600s of its launch"
                    .into(),
                failed_machine: Some("n1".into()),
            }
        );
        // SpinDown stops it too (it may hold the lock while SpinUp waits), never retiring an
        // old server for it.
        assert!(matches!(spin_down(&s, TIMEOUT), Step::Stop { .. }));
    }

    #[test]
    fn completes_when_all_are_on_target_and_stable() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        s.machines.clear();
        s.health.servers.clear();
        add_new(&mut s, "n1", 10, true, true);
        add_new(&mut s, "n2", 11, true, true);
        add_new(&mut s, "n3", 12, true, true);
        assert_eq!(spin_up(&s, Mode::Manual, false, TIMEOUT), Step::Complete);
        assert_eq!(spin_down(&s, TIMEOUT), Step::Complete);
    }

    #[test]
    fn a_retired_server_still_in_raft_holds_completion_back() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        s.machines.clear();
        s.health.servers.retain(|p| p.name == "s3");
        add_new(&mut s, "n1", 10, true, true);
        add_new(&mut s, "n2", 11, true, true);
        add_new(&mut s, "n3", 12, true, true);
        // s3's machine is gone, but Raft still counts it (leaving, or dead until pruned).
        let Step::Wait(why) = spin_up(&s, Mode::Manual, false, TIMEOUT) else {
            panic!("{:?}", spin_up(&s, Mode::Manual, false, TIMEOUT));
        };
        assert!(why.contains("waiting for s3 to leave Raft"), "{why}");
        assert_ne!(spin_down(&s, TIMEOUT), Step::Complete);
        s.health.servers.retain(|p| p.name != "s3");
        assert_eq!(spin_up(&s, Mode::Manual, false, TIMEOUT), Step::Complete);
    }

    #[test]
    fn a_dead_old_server_pruned_mid_rollout_is_replaced_with_a_fresh_token() {
        let mut s = three_on_a();
        s.rollout = Some(rollout("B"));
        s.machines.retain(|m| m.id != "s3");
        s.health.servers.retain(|p| p.name != "s3");
        s.health.failure_tolerance = 1;
        if let Some(r) = s.rollout.as_mut() {
            r.baseline_tolerance = 0;
        }
        assert_eq!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Launch {
                image: "B".into(),
                token: "r1-o2-n2".into()
            }
        );
        add_new(&mut s, "n1", 10, true, true);
        // Three servers again, two outdated: the next launch has its own token.
        assert_eq!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Launch {
                image: "B".into(),
                token: "r1-o2-n3".into()
            }
        );
    }

    #[test]
    fn machines_pair_with_peers_by_address_when_the_cloud_does_not_know_the_node() {
        let mut s = three_on_a();
        for m in &mut s.machines {
            m.node = None;
        }
        for (i, p) in s.health.servers.iter_mut().enumerate() {
            p.address = format!("10.0.0.{}:8300", i + 1);
        }
        let paired = s.servers();
        assert!(paired.iter().all(|sv| sv.peer.is_some()));
        assert_eq!(paired[0].node(), "s1");
    }

    #[test]
    fn peers_are_matched_by_node_before_address() {
        // Local processes share 127.0.0.1: only the node name tells them apart.
        let mut s = three_on_a();
        for m in &mut s.machines {
            m.address = Some("127.0.0.1".into());
        }
        for p in &mut s.health.servers {
            p.address = "127.0.0.1:8300".into();
        }
        let names: Vec<(String, Option<String>)> = s
            .servers()
            .iter()
            .map(|sv| (sv.machine.id.clone(), sv.peer.map(|p| p.name.clone())))
            .collect();
        assert_eq!(
            names,
            vec![
                ("s1".into(), Some("s1".into())),
                ("s2".into(), Some("s2".into())),
                ("s3".into(), Some("s3".into())),
            ]
        );
        // A cloud that does not know the node name still finds the peer by address.
        let mut s = three_on_a();
        s.machines[1].node = None;
        s.machines[1].address = Some("s2".into());
        assert_eq!(s.servers()[1].peer.map(|p| p.name.as_str()), Some("s2"));
        // A node not yet joined has no peer, even if its address matches another's.
        let mut s = three_on_a();
        s.machines[2].node = Some("s9".into());
        s.machines[2].address = None;
        assert!(s.servers()[2].peer.is_none());
    }

    #[test]
    fn outside_the_window_steps_wait_and_settling_goes_on() {
        let closed = WindowState::Closed {
            next_open: Some("2026-11-25T02:00:00+01:00".into()),
        };
        let mut s = three_on_a();
        // A request outside the window still starts the rollout: it is recorded, not lost.
        let start = spin_up(&s, Mode::Manual, true, TIMEOUT);
        assert_eq!(within_window(start.clone(), &closed), start);
        s.rollout = Some(rollout("B"));
        let launch = spin_up(&s, Mode::Manual, false, TIMEOUT);
        assert!(matches!(launch, Step::Launch { .. }));
        assert_eq!(
            within_window(launch.clone(), &closed),
            Step::Wait(
                "outside the maintenance window; the next opens at 2026-11-25T02:00:00+01:00"
                    .into()
            )
        );
        assert_eq!(within_window(launch.clone(), &WindowState::Open), launch);
        // A launch taken inside the window settles outside it.
        add_new(&mut s, "n1", 10, false, true);
        let settle = spin_down(&s, TIMEOUT);
        assert!(matches!(settle, Step::Settle(_)));
        assert_eq!(within_window(settle.clone(), &closed), settle);
        // Once it votes, the retirement waits for the window.
        s.health.servers[3].voter = true;
        assert!(matches!(spin_down(&s, TIMEOUT), Step::Retire { .. }));
        assert!(matches!(
            within_window(spin_down(&s, TIMEOUT), &closed),
            Step::Wait(w) if w.contains("2026-11-25T02:00:00+01:00")
        ));
        // So does moving leadership; a safety stop and completion do not.
        let transfer = Step::TransferLeadership {
            from: "a".into(),
            to: None,
        };
        assert!(matches!(within_window(transfer, &closed), Step::Wait(_)));
        assert_eq!(within_window(Step::Complete, &closed), Step::Complete);
        let stop = Step::Stop {
            reason: "x".into(),
            failed_machine: None,
        };
        assert_eq!(within_window(stop.clone(), &closed), stop);
    }

    #[test]
    fn steps_a_dead_holder_did_not_record_are_found() {
        let mut r = rollout("B");
        let mut launched = machine("n1", "B", 10);
        launched.token = Some("r1-o3-n3".into());
        let mut other = machine("x1", "B", 11);
        other.token = Some("r0-o3-n3".into()); // an earlier rollout's launch
        r.retiring = Some(StepRecord {
            machine: "s1".into(),
            at: 12,
            token: None,
            reason: None,
        });
        // s1 is still there: its retirement may not have happened; nothing to add for it.
        let machines = vec![machine("s1", "A", 1), launched.clone(), other.clone()];
        let missed = missed_steps(&r, &machines);
        assert_eq!(missed.launches.len(), 1);
        assert_eq!(missed.launches[0].machine, "n1");
        assert!(missed.retired.is_none());
        // s1 gone (or terminated): the retirement happened.
        let mut dead = machine("s1", "A", 1);
        dead.state = MachineState::Terminated;
        for machines in [vec![launched.clone()], vec![launched.clone(), dead]] {
            let missed = missed_steps(&r, &machines);
            assert_eq!(
                missed.retired.as_ref().map(|s| s.machine.as_str()),
                Some("s1")
            );
            let mut fixed = r.clone();
            missed.apply(&mut fixed);
            assert_eq!(fixed.retiring, None);
            assert_eq!(fixed.retirements.len(), 1);
            assert_eq!(fixed.launches.len(), 1);
            // Applying what is then found again adds nothing.
            assert!(missed_steps(&fixed, &machines).is_empty());
        }
        // A recorded retirement is not counted twice.
        let mut twice = r.clone();
        twice.retirements.push(r.retiring.clone().unwrap());
        missed_steps(&twice, &[]).apply(&mut twice);
        assert_eq!(twice.retirements.len(), 1);
    }

    fn launch(machine: &str, at: u64) -> StepRecord {
        StepRecord {
            machine: machine.into(),
            at,
            token: Some(format!("t-{machine}")),
            reason: None,
        }
    }

    #[test]
    fn a_launch_that_died_is_retried_with_a_new_token_until_attempts_run_out() {
        let mut s = three_on_a();
        let mut r = rollout("B");
        r.launches.push(launch("n1", 10));
        s.rollout = Some(r.clone());
        // n1 died before it joined: the cloud lists only the old servers.
        let lost = lost_launches(&r, &s.machines);
        assert_eq!(lost, vec![launch("n1", 10)]);
        let mut dead = machine("n1", "B", 10);
        dead.state = MachineState::Terminated;
        dead.reason = Some("Server.InternalError: Internal error on launch".into());
        let failed = failed_launch(&lost[0], Some(&dead), 20).unwrap();
        assert_eq!(
            failed.reason.as_deref(),
            Some("Server.InternalError: Internal error on launch")
        );
        r.record_failure(failed.clone());
        r.record_failure(failed.clone());
        assert!(r.launches.is_empty());
        assert_eq!(r.failed_launches.len(), 1, "recorded once");
        // The token answered with the dead machine is not recorded as a launch again.
        r.record_launch(launch("n1", 10));
        assert!(r.launches.is_empty());
        s.rollout = Some(r.clone());
        assert_eq!(
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            Step::Launch {
                image: "B".into(),
                token: "r1-o3-n3-a1".into()
            }
        );
        for (i, id) in ["n2", "n3"].iter().enumerate() {
            r.record_failure(StepRecord {
                reason: Some(format!("boot {i} failed")),
                ..launch(id, 30)
            });
        }
        s.rollout = Some(r);
        for step in [
            spin_up(&s, Mode::Manual, false, TIMEOUT),
            spin_down(&s, TIMEOUT),
        ] {
            let Step::Stop {
                reason,
                failed_machine,
            } = step
            else {
                panic!("{step:?}")
            };
            assert_eq!(
                reason,
                "3 launches failed (rollout.launch_attempts = 3); the last, n3: boot 1 failed"
            );
            assert_eq!(failed_machine, None);
        }
    }

    #[test]
    fn a_missing_launch_is_judged_by_what_the_cloud_says_of_it() {
        let l = launch("n1", 1_000);
        let mut alive = machine("n1", "B", 1_000);
        alive.state = MachineState::Pending;
        // The listing lagged: the machine is there when asked by ID.
        assert_eq!(failed_launch(&l, Some(&alive), 500_000), None);
        // Unknown to the cloud: a failure only once the listing's grace has passed.
        assert_eq!(failed_launch(&l, None, 1_000 + LISTING_GRACE_MS - 1), None);
        let gone = failed_launch(&l, None, 1_000 + LISTING_GRACE_MS).unwrap();
        assert_eq!(
            gone.reason.as_deref(),
            Some("the cloud no longer knows the machine")
        );
        // A launch this rollout retired (one too many) is not lost.
        let mut r = rollout("B");
        r.launches.push(l.clone());
        r.retirements.push(l.clone());
        assert!(lost_launches(&r, &[]).is_empty());
        // Nor is a failed machine found again by its token a missed launch.
        r.retirements.clear();
        r.record_failure(gone);
        let mut found = machine("n1", "B", 1_000);
        found.token = Some("r1-o3-n3".into());
        assert!(missed_steps(&r, &[found]).is_empty());
    }

    #[test]
    fn launch_tokens_differ_per_attempt_and_keep_their_old_form_for_the_first() {
        assert_eq!(launch_token("r1", 3, 3, 0), "r1-o3-n3");
        assert_eq!(launch_token("r1", 3, 3, 2), "r1-o3-n3-a2");
    }

    #[test]
    fn a_rebuilt_record_adopts_the_servers_on_the_newest_image_and_carries_on() {
        // A record lost mid-rollout: s1..s3 on A, n1 on B already launched (4 of 3).
        let mut s = three_on_a();
        add_new(&mut s, "n1", 10, true, true);
        let r = rebuild(&s, "r9".into()).unwrap();
        assert!(r.is_active());
        assert_eq!(r.target_image, "B");
        assert_eq!(r.baseline_tolerance, 1);
        assert_eq!(
            r.launches
                .iter()
                .map(|l| l.machine.as_str())
                .collect::<Vec<_>>(),
            ["n1"]
        );
        // The usual rules take it from there: the oldest outdated follower goes first.
        s.rollout = Some(r);
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::Retire {
                machine: "s2".into(),
                node: "s2".into()
            }
        );
        // A cluster all on the newest image at its size is a completed rollout.
        let mut done = three_on_a();
        done.machines.clear();
        done.health.servers.clear();
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            add_new(&mut done, n, i as u64, true, true);
        }
        let r = rebuild(&done, "r9".into()).unwrap();
        assert!(matches!(r.state, RolloutState::Completed { .. }));
        assert_eq!(r.launches.len(), 3);
        done.newest_image = None;
        assert!(rebuild(&done, "r9".into()).is_err());
    }

    #[test]
    fn the_record_stays_within_its_budget_or_is_refused() {
        let mut r = rollout("B");
        r.waiting = Some("w".repeat(100_000));
        r.state = RolloutState::Stopped {
            at: 1,
            reason: "x".repeat(100_000),
        };
        for i in 0..5_000 {
            r.retirements.push(launch(&format!("i-{i:05}"), i));
        }
        r.failed_launches.push(StepRecord {
            reason: Some("y".repeat(100_000)),
            ..launch("n1", 1)
        });
        let body = r.bounded_json().unwrap();
        assert!(body.len() <= RECORD_BUDGET, "{} bytes", body.len());
        let back: Rollout = serde_json::from_slice(&body).unwrap();
        assert_eq!(back.retired(), 5_000, "folded retirements are counted");
        assert_eq!(back.retirements.len(), 16);
        assert_eq!(back.retirements[15].machine, "i-04999", "the newest kept");
        assert!(back.waiting.unwrap().len() <= 1024);
        // A small record is written as it is.
        let small = rollout("B");
        assert_eq!(
            small.bounded_json().unwrap(),
            serde_json::to_vec(&small).unwrap()
        );
        // What cannot be folded is refused, never written past the budget.
        let huge = rollout(&"B".repeat(RECORD_BUDGET));
        assert!(huge.bounded_json().unwrap_err().contains("over its budget"));
    }

    #[test]
    fn the_record_keeps_its_state_at_the_top_level() {
        let mut r = rollout("B");
        r.state = RolloutState::Stopped {
            at: 7,
            reason: "no".into(),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["state"], "stopped");
        assert_eq!(
            (json["at"].as_u64(), json["reason"].as_str()),
            (Some(7), Some("no"))
        );
        assert_eq!(serde_json::from_value::<Rollout>(json).unwrap(), r);
        let active = serde_json::json!({
            "id": "r1", "target_image": "B", "started_at": 0, "baseline_tolerance": 1,
            "state": "active", "launches": [], "retirements": []
        });
        assert!(serde_json::from_value::<Rollout>(active)
            .unwrap()
            .is_active());
    }

    fn aborted_rollout(target: &str) -> Rollout {
        let mut r = rollout(target);
        r.aborted = Some(Abort {
            by: "alice".into(),
            at: 900,
            reason: Some("bad image".into()),
        });
        r
    }

    #[test]
    fn an_abort_retires_the_joining_server_unhealthy_or_not_then_stops() {
        let mut s = three_on_a();
        s.rollout = Some(aborted_rollout("B"));
        // The new server never got healthy: autopilot calls the cluster unhealthy, and the
        // server goes all the same (it does not vote).
        add_new(&mut s, "n1", 10, false, false);
        s.health.healthy = false;
        let retire = Step::Retire {
            machine: "n1".into(),
            node: "n1".into(),
        };
        assert_eq!(spin_down(&s, TIMEOUT), retire);
        assert!(matches!(
            spin_up(&s, Mode::Auto, true, TIMEOUT),
            Step::Idle(why) if why.contains("aborted by alice (bad image)")
        ));
        // Paused: it waits like every step.
        s.paused = true;
        assert!(matches!(spin_down(&s, TIMEOUT), Step::Wait(_)));

        let mut s = three_on_a();
        s.rollout = Some(aborted_rollout("B"));
        let stop = Step::Stop {
            reason: "aborted by alice (bad image)".into(),
            failed_machine: None,
        };
        assert_eq!(spin_down(&s, TIMEOUT), stop);
        assert_eq!(spin_up(&s, Mode::Auto, true, TIMEOUT), stop);
    }

    #[test]
    fn an_abort_keeps_a_new_server_that_votes_and_ends_at_the_desired_size() {
        let mut s = three_on_a();
        s.rollout = Some(aborted_rollout("B"));
        add_new(&mut s, "n1", 10, true, true);
        // Over size with the new server voting: the usual retirement (oldest outdated
        // follower), not the new server.
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::Retire {
                machine: "s2".into(),
                node: "s2".into()
            }
        );
    }

    #[test]
    fn a_rollback_retires_the_outdated_server_that_does_not_vote_first() {
        // Rolling back to A: n1 (on B) never joined; s1..s3 are on A already.
        let mut s = three_on_a();
        let mut r = rollout("A");
        r.rolled_back_from = Some("B".into());
        s.rollout = Some(r);
        s.machines.push(machine("n1", "B", 10));
        s.health.healthy = false;
        assert_eq!(
            spin_down(&s, TIMEOUT),
            Step::Retire {
                machine: "n1".into(),
                node: "n1".into()
            }
        );
        // Done, it does not start again to B on a timer: only an operator's request does.
        s.machines.pop();
        s.health.healthy = true;
        if let Some(r) = &mut s.rollout {
            r.state = RolloutState::Completed { at: 2000 };
        }
        assert!(matches!(
            spin_up(&s, Mode::Auto, false, TIMEOUT),
            Step::Idle(_)
        ));
        assert_eq!(
            spin_up(&s, Mode::Auto, true, TIMEOUT),
            Step::Start { image: "B".into() }
        );
    }
}
