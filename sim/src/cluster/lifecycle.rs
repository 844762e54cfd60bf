//! What changes the cluster, called by the control API, the agent and operator endpoints and
//! timers: bootstrap, launches, leaves, failures, cuts and heals, leadership transfers, and
//! `reconcile`, which does what a Consul leader does on a serf event (registers members in the
//! catalog, removes left servers from Raft, adds joined ones as non-voters), then autopilot's
//! promotions and pruning, then re-checks the invariants. Timers (boot, failure detection,
//! election, stabilization) run through `Sim::after_in` and carry an epoch, so one that
//! outlived the state it was set for does nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use crate::cluster::raft::*;
use crate::cluster::server::*;
use crate::fsm::catalog::{apply_check, apply_deregister, apply_register};
use crate::images::Image;
use crate::state::{Sim, State};
use crate::store::catalog::{self, CheckEntry, Registration, ServiceEntry, Weights};
use crate::watch::{Change, Topic};

impl Sim {
    /// A datacenter as `config` describes it: its servers up, the first one leading.
    pub fn new(config: crate::config::SimConfig) -> Self {
        let sim = Sim::empty(config);
        bootstrap(&sim);
        sim
    }
}

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
/// machine is gone; with `SimConfig::leave_on_terminate` off the agent is killed instead. A killed agent cannot leave: it stays a failed peer until autopilot prunes
/// it, as on EC2. Terminating a terminated machine changes nothing (EC2 answers it again).
/// Returns false for an unknown server.
pub fn terminate(sim: &Sim, st: &mut State, name: &str) -> bool {
    let Some(machine) = st.cluster.server(name).map(|s| s.machine) else {
        return false;
    };
    match machine {
        Machine::Terminated => return true,
        Machine::Running if st.config.leave_on_terminate => {
            leave(sim, st, name);
        }
        Machine::Running => {
            kill(sim, st, name);
        }
        Machine::Booting | Machine::Stopped | Machine::Killed => {}
    }
    if let Some(s) = st.cluster.server_mut(name) {
        // A killed server's failure detection is still due: its timer carries the epoch, so
        // only the other states (whose timers must not fire any more) move it.
        if s.machine != Machine::Killed {
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
