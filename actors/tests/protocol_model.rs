//! The coordination protocol and the rollout, model-checked with stateright (issue 14; what
//! the model covers and leaves out: docs/model.md).
//!
//! The world: N replicas; Consul's KV with sessions, the `step` lock (its lock-delay, its
//! LockIndex, the job its value names), receipts written with CAS 0, and the rollout record
//! written in a transaction that checks the writer's session still holds the lock and CASes
//! the record's ModifyIndex (`ports::Fence`); a cloud that launches by idempotency token and
//! retires; Raft membership (a new server joins and is promoted, a retired one leaves, a
//! leaderless cluster elects). Each replica runs jobs as the Dispatcher does (the lock taken in
//! one transaction that fails if the job's receipt exists; run; receipt; release) and each run
//! as `rollout::run` does, every Consul or cloud call one atomic transition, so that anything
//! else may happen between two of them. What a run does is decided by the real `plan`
//! functions (`spin_up`, `spin_down`, `missed_steps`, `lost_launches`, `failed_launch`) on a
//! real `Snapshot`, and the record is edited by the real `Rollout` methods and held as the
//! JSON Consul would hold.
//!
//! Faults, each bounded per check: a replica crashes mid-run (its session lives on until its
//! TTL); a replica's session is invalidated mid-run (a freeze past its TTL, an agent lost),
//! and it goes on with what it decided until it notices, if ever; a new server dies before it
//! joins. Orphaned sessions expire, and the lock-delay ends, at any moment.
//!
//! Checked in every reachable state:
//! - never two live machines for one launch token, never more than desired + 1 machines;
//! - voters never below the desired cluster's quorum; no launch or retirement of a voter while
//!   failure tolerance is below the rollout's baseline; no voter retired at the desired size;
//! - the leader is never retired while it leads;
//! - a replica that lost its lock makes at most the one cloud call it had decided on before
//!   its run ends (its next record write is refused by the fence), and records nothing;
//!
//! and in every state where nothing more can happen (liveness, the faults being bounded): the
//! rollout completed, every server on the new image and a voter, as many as desired, and the
//! record listing every machine the cloud launched for it and every retirement. Each check
//! also asserts that the faults it allows were really exercised (a takeover, a stale holder
//! acting), and one plants a bug to show the check finds it.

use std::collections::BTreeSet;
use std::time::Duration;

use rehydrator_actors::plan::{self, LeaderMove, Mode, Rollout, RolloutState, Snapshot, Step};
use rehydrator_actors::plan::{StepRecord, RECORD_BUDGET};
use rehydrator_actors::ports::{ClusterHealth, Image, Machine, MachineState, PeerHealth};
use stateright::{Checker, Model, Property};

/// The model has no clock: every record and machine is stamped with this instant, and no
/// timeout fires.
const NOW_MS: u64 = 1_000_000;
const STABLE_TIMEOUT_MS: u64 = u64::MAX / 4;
const OLD: &str = "ami-old";
const NEW: &str = "ami-new";
/// `rollout.launch_attempts` as shipped.
const LAUNCH_ATTEMPTS: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Raft {
    /// Launched, not yet a voter.
    Joining,
    Voter,
    /// Left (retired) or never joined.
    Out,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Vm {
    new: bool,
    token: Option<String>,
    alive: bool,
    raft: Raft,
}

/// A Consul session: whose, and which of its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Session {
    replica: u8,
    generation: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Lock {
    holder: Option<Session>,
    /// The job the lock's value names: the last holder's, until a holder lets it go cleanly
    /// (a receipt written, or a run that failed and will be retried). A session that ends
    /// leaves it: the next holder of that job is taking it over (`Dispatcher`'s `prior`).
    names: Option<i16>,
    index: u32,
    /// Lock-delay after the holder's session was invalidated: nobody may take it.
    delay: bool,
}

/// What a run does after a record write lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Then {
    /// Decide again on a fresh snapshot (after starting, reconciling, a leadership move).
    Decide,
    /// The run is over: write the receipt.
    Receipt,
    /// The retirement's intent is recorded: ask the cloud.
    RetireCloud(u8),
    /// The retirement is recorded: wait until the server is out and the cluster healthy.
    RetireSettle(u8),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Stage {
    Decide,
    /// A CAS write of the record; `lenient`: a lost race is ignored (why it waits).
    Write {
        record: String,
        cas: u32,
        then: Then,
        lenient: bool,
    },
    Launch {
        token: String,
        record: String,
        cas: u32,
    },
    Transfer {
        to: u8,
        from: u8,
        record: String,
        cas: u32,
    },
    RetireCloud {
        machine: u8,
        record: String,
        cas: u32,
    },
    RetireSettle {
        machine: u8,
    },
    Receipt,
}

impl Stage {
    fn cas_mut(&mut self) -> Option<&mut u32> {
        match self {
            Stage::Write { cas, .. }
            | Stage::Launch { cas, .. }
            | Stage::Transfer { cas, .. }
            | Stage::RetireCloud { cas, .. } => Some(cas),
            Stage::Decide | Stage::RetireSettle { .. } | Stage::Receipt => None,
        }
    }
}

/// A ModifyIndex older than the record's: every CAS against it fails.
const STALE: u32 = u32::MAX;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Replica {
    /// Its session, while it has one it knows of.
    session: Option<Session>,
    generation: u8,
    /// The job it holds the lock for (or thinks it does), and where its run is.
    run: Option<(i16, Stage)>,
    /// Cloud calls its run made since it lost its lock.
    stale_calls: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    vms: Vec<Vm>,
    leader: Option<u8>,
    live_sessions: BTreeSet<Session>,
    lock: Lock,
    /// Receipts of jobs from the first trigger not yet done (see `normalize`).
    receipts: BTreeSet<i16>,
    /// The record's JSON and its ModifyIndex (0: absent).
    record: Option<String>,
    record_index: u32,
    triggers: u8,
    /// The world changed since the last trigger: the watches fire again.
    dirty: bool,
    replicas: Vec<Replica>,
    crashes: u8,
    freezes: u8,
    deaths: u8,
    /// Safety violations the transitions saw as they happened.
    violations: BTreeSet<&'static str>,
    /// Something a stale holder did (for the `sometimes` property that shows it is explored).
    stale_acted: bool,
    took_over: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Fire,
    /// Replica r asks for the lock for its next job (or finds its receipt).
    Acquire(u8),
    /// Replica r takes the next call of its run.
    Step(u8),
    /// Replica r notices its session is gone and drops its run (the LockManager's renewal).
    Notice(u8),
    /// Replica r creates a session.
    NewSession(u8),
    Crash(u8),
    /// A live replica's session is invalidated while it works (a freeze past its TTL).
    Freeze(u8),
    /// A session no replica knows of (a crashed one's) reaches its TTL.
    Expire(Session),
    DelayEnds,
    Promote(u8),
    Elect(u8),
    /// A new server dies before it joins.
    Die(u8),
}

struct Protocol {
    desired: usize,
    replicas: usize,
    crashes: u8,
    freezes: u8,
    deaths: u8,
    /// How many triggers may wait at once (the watches fire again while jobs queue).
    pending_triggers: u8,
    /// A fault planted to show the check finds it.
    bug: Option<Bug>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    LaunchIgnoresToken,
}

fn node(i: u8) -> String {
    format!("m{i}")
}

fn index_of(id: &str) -> u8 {
    id.trim_start_matches('m')
        .parse()
        .expect("model machine ids are m<n>")
}

fn decode(json: &str) -> Rollout {
    serde_json::from_str(json).expect("the model writes records that decode")
}

fn encode(r: &Rollout) -> String {
    let json = serde_json::to_string(r).expect("records encode");
    assert!(json.len() <= RECORD_BUDGET);
    json
}

impl World {
    /// The job every replica waits to run: the first one without a receipt (trigger
    /// `job / 2`; SpinUp if even, SpinDown if odd). A replica finds the receipts of those before
    /// it as it asks for the lock, so who lags behind does not matter: they are not modelled
    /// one by one.
    fn next_job(&self) -> Option<i16> {
        (0..2 * i16::from(self.triggers)).find(|j| !self.receipts.contains(j))
    }

    /// The same world told the same way, so that the checker sees it once: jobs numbered from
    /// the first trigger not yet done (a run of a job before it, a holder that lost its lock,
    /// keeps only whether it is SpinUp or SpinDown: -2 or -1), and ModifyIndexes as the one
    /// the record is at (1), none (0) or any older one (`STALE`): a CAS only asks whether
    /// two are equal.
    fn normalize(&mut self) {
        let first = self.next_job().unwrap_or(2 * i16::from(self.triggers));
        let base = first - first.rem_euclid(2);
        if base > 0 {
            self.receipts = self
                .receipts
                .iter()
                .filter(|j| **j >= base)
                .map(|j| j - base)
                .collect();
            let shift = |job: &mut i16| {
                let moved = *job - base;
                *job = if moved < 0 {
                    -2 + moved.rem_euclid(2)
                } else {
                    moved
                };
            };
            for rep in &mut self.replicas {
                if let Some((job, _)) = rep.run.as_mut() {
                    shift(job);
                }
            }
            if let Some(job) = self.lock.names.as_mut() {
                shift(job);
            }
            self.triggers -= u8::try_from(base / 2).unwrap_or(0);
        }
        let current = self.record_index;
        for rep in &mut self.replicas {
            if let Some((_, stage)) = rep.run.as_mut() {
                if let Some(cas) = stage.cas_mut() {
                    *cas = if *cas == current {
                        current.min(1)
                    } else {
                        STALE
                    };
                }
            }
        }
        self.record_index = current.min(1);
    }

    fn voters(&self) -> usize {
        self.vms
            .iter()
            .filter(|v| v.alive && v.raft == Raft::Voter)
            .count()
    }

    fn tolerance(&self) -> u32 {
        let n = self.voters();
        u32::try_from(n.saturating_sub(n / 2 + 1)).unwrap_or(0)
    }

    fn baseline(&self) -> Option<u32> {
        self.record.as_deref().map(|j| decode(j).baseline_tolerance)
    }

    /// What the cloud lists: its live machines.
    fn machines(&self) -> Vec<Machine> {
        self.vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.alive)
            .map(|(i, v)| self.machine(i as u8, v))
            .collect()
    }

    fn machine(&self, i: u8, v: &Vm) -> Machine {
        Machine {
            id: node(i),
            image: if v.new { NEW } else { OLD }.into(),
            launched_at: 1_000 + u64::from(i),
            state: if v.alive {
                MachineState::Running
            } else {
                MachineState::Terminated
            },
            address: Some(format!("10.0.0.{i}")),
            zone: None,
            node: Some(node(i)),
            token: v.token.clone(),
            reason: (!v.alive).then(|| "the model's machine died".into()),
        }
    }

    fn health(&self) -> ClusterHealth {
        let servers = self
            .vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.alive && v.raft == Raft::Voter)
            .map(|(i, _)| PeerHealth {
                id: format!("raft-m{i}"),
                name: node(i as u8),
                address: format!("10.0.0.{i}:8300"),
                serf_status: "alive".into(),
                leader: false,
                voter: true,
                healthy: true,
                stable_since_ms: None,
            })
            .collect();
        let mut health = ClusterHealth {
            healthy: true,
            failure_tolerance: self.tolerance(),
            servers,
        };
        let leader = self.leader.map(|l| format!("10.0.0.{l}:8300"));
        plan::mark_leader(&mut health, leader.as_deref());
        health
    }

    fn snapshot(&self, desired: usize) -> Snapshot {
        Snapshot {
            machines: self.machines(),
            health: self.health(),
            newest_image: Some(Image {
                id: NEW.into(),
                name: NEW.into(),
                created: "2026-12-01T00:00:00Z".into(),
            }),
            rollout: self.record.as_deref().map(decode),
            paused: false,
            desired,
            launch_attempts: LAUNCH_ATTEMPTS,
            now_ms: NOW_MS,
        }
    }

    /// Whether replica r's session still holds the lock.
    fn holds(&self, r: u8) -> bool {
        let session = self.replicas[usize::from(r)].session;
        session.is_some() && self.lock.holder == session
    }

    fn release(&mut self, r: u8) {
        if self.holds(r) {
            self.lock.holder = None;
            self.lock.names = None;
        }
        let rep = &mut self.replicas[usize::from(r)];
        rep.run = None;
        rep.stale_calls = 0;
    }

    fn invalidate(&mut self, s: Session) {
        self.live_sessions.remove(&s);
        if self.lock.holder == Some(s) {
            self.lock.holder = None;
            self.lock.delay = true;
        }
    }

    fn changed(&mut self) {
        self.dirty = true;
    }

    fn set_stage(&mut self, r: u8, stage: Stage) {
        if let Some(run) = self.replicas[usize::from(r)].run.as_mut() {
            run.1 = stage;
        }
    }

    fn write_stage(record: &Rollout, cas: u32, then: Then) -> Stage {
        Stage::Write {
            record: encode(record),
            cas,
            then,
            lenient: false,
        }
    }
}

impl Protocol {
    fn decide(&self, w: &World, job: i16) -> Stage {
        let s = w.snapshot(self.desired);
        let cas = w.record_index;
        // `rollout::reconcile`: steps a holder took and died before recording.
        if let Some(mut r) = s.rollout.clone().filter(Rollout::is_active) {
            let missed = plan::missed_steps(&r, &s.machines);
            if !missed.is_empty() {
                missed.apply(&mut r);
                return World::write_stage(&r, cas, Then::Decide);
            }
            let all: Vec<Machine> = w
                .vms
                .iter()
                .enumerate()
                .map(|(i, v)| w.machine(i as u8, v))
                .collect();
            let failed: Vec<StepRecord> = plan::lost_launches(&r, &s.machines)
                .iter()
                .filter_map(|l| {
                    let found = all.iter().find(|m| m.id == l.machine);
                    plan::failed_launch(l, found, NOW_MS)
                })
                .collect();
            if !failed.is_empty() {
                for f in failed {
                    r.record_failure(f);
                }
                r.wait(Some("launch failed; launching again".into()), NOW_MS);
                return World::write_stage(&r, cas, Then::Decide);
            }
        }
        let step = if job.rem_euclid(2) == 0 {
            plan::spin_up(&s, Mode::Auto, true, STABLE_TIMEOUT_MS)
        } else {
            plan::spin_down(&s, STABLE_TIMEOUT_MS)
        };
        let rollout = s.rollout.clone();
        match step {
            Step::Idle(_) => Stage::Receipt,
            Step::Wait(why) | Step::Settle(why) => {
                // `note_waiting`: the reason, when it is new; a lost race loses only that.
                match rollout.filter(|r| r.is_active() && r.waiting.as_deref() != Some(&why)) {
                    Some(mut r) => {
                        r.wait(Some(why), NOW_MS);
                        Stage::Write {
                            record: encode(&r),
                            cas,
                            then: Then::Receipt,
                            lenient: true,
                        }
                    }
                    None => Stage::Receipt,
                }
            }
            Step::Start { image } => {
                let r = Rollout::start("r1".into(), &image, NOW_MS, s.health.failure_tolerance);
                World::write_stage(&r, cas, Then::Decide)
            }
            Step::Launch { token, .. } => Stage::Launch {
                token,
                record: encode(&rollout.expect("a launch belongs to a rollout")),
                cas,
            },
            Step::TransferLeadership { from, to } => {
                let from = index_of(from.trim_start_matches("raft-"));
                let to = to.map(|t| index_of(t.trim_start_matches("raft-")));
                match to {
                    Some(to) => Stage::Transfer {
                        to,
                        from,
                        record: encode(&rollout.expect("a move belongs to a rollout")),
                        cas,
                    },
                    // Out of the model: transfer-leader without a target.
                    None => panic!("a leadership move without a stable new voter to take it"),
                }
            }
            Step::Retire { machine, node } => {
                let mut r = rollout.expect("a retirement belongs to a rollout");
                r.retiring = Some(StepRecord {
                    machine: machine.clone(),
                    at: NOW_MS,
                    token: None,
                    reason: None,
                });
                r.wait(Some(format!("server {node} is leaving")), NOW_MS);
                World::write_stage(&r, cas, Then::RetireCloud(index_of(&machine)))
            }
            Step::Complete => {
                let mut r = rollout.expect("completing belongs to a rollout");
                r.state = RolloutState::Completed { at: NOW_MS };
                r.wait(None, NOW_MS);
                World::write_stage(&r, cas, Then::Receipt)
            }
            Step::Stop { reason, .. } => match rollout {
                Some(mut r) => {
                    r.state = RolloutState::Stopped { at: NOW_MS, reason };
                    r.wait(None, NOW_MS);
                    World::write_stage(&r, cas, Then::Receipt)
                }
                None => Stage::Receipt,
            },
        }
    }

    /// Replica r's next call, its effect on the world.
    fn step(&self, w: &mut World, r: u8) {
        let Some((job, stage)) = w.replicas[usize::from(r)].run.clone() else {
            return;
        };
        let cloud_call = matches!(
            stage,
            Stage::Launch { .. } | Stage::Transfer { .. } | Stage::RetireCloud { .. }
        );
        if !w.holds(r) && cloud_call {
            w.stale_acted = true;
            let rep = &mut w.replicas[usize::from(r)];
            rep.stale_calls += 1;
            if rep.stale_calls > 1 {
                w.violations
                    .insert("a replica made two cloud calls after it lost its lock");
            }
        }
        match stage {
            Stage::Decide => {
                let next = self.decide(w, job);
                w.set_stage(r, next);
            }
            Stage::Write {
                record,
                cas,
                then,
                lenient,
            } => {
                // `write_record`: one txn that checks the lock's session, then the CAS.
                if !w.holds(r) {
                    if lenient {
                        w.set_stage(r, Stage::Receipt);
                    } else {
                        w.release(r);
                    }
                    return;
                }
                if w.record_index == cas {
                    w.record = Some(record);
                    w.record_index += 1;
                    w.changed();
                } else if !lenient {
                    // The CAS failed: the run fails and the job is retried.
                    w.release(r);
                    return;
                }
                let next = match then {
                    Then::Decide => Stage::Decide,
                    Then::Receipt => Stage::Receipt,
                    Then::RetireCloud(machine) => Stage::RetireCloud {
                        machine,
                        record: w.record.clone().unwrap_or_default(),
                        cas: w.record_index,
                    },
                    Then::RetireSettle(machine) => Stage::RetireSettle { machine },
                };
                w.set_stage(r, next);
            }
            Stage::Launch { token, record, cas } => {
                // The cloud answers a used token with the machine it launched for it.
                let used = w
                    .vms
                    .iter()
                    .position(|v| v.token.as_deref() == Some(&token))
                    .filter(|_| self.bug != Some(Bug::LaunchIgnoresToken));
                let i = match used {
                    Some(i) => i as u8,
                    None => {
                        if w.tolerance() < w.baseline().unwrap_or(0) {
                            w.violations
                                .insert("launched while failure tolerance is below baseline");
                        }
                        w.vms.push(Vm {
                            new: true,
                            token: Some(token.clone()),
                            alive: true,
                            raft: Raft::Joining,
                        });
                        w.changed();
                        (w.vms.len() - 1) as u8
                    }
                };
                let mut rec = decode(&record);
                let launched = StepRecord {
                    machine: node(i),
                    at: NOW_MS,
                    token: Some(token),
                    reason: None,
                };
                let vm = &w.vms[usize::from(i)];
                let next = if vm.alive {
                    rec.record_launch(launched);
                    rec.wait(Some(format!("new server {} is joining", node(i))), NOW_MS);
                    World::write_stage(&rec, cas, Then::Receipt)
                } else {
                    let machine = w.machine(i, vm);
                    if let Some(failed) = plan::failed_launch(&launched, Some(&machine), NOW_MS) {
                        rec.record_failure(failed);
                    }
                    World::write_stage(&rec, cas, Then::Decide)
                };
                w.set_stage(r, next);
            }
            Stage::Transfer {
                to,
                from,
                record,
                cas,
            } => {
                // transfer-leader goes to whoever leads now and hands over to `to`.
                let target = &w.vms[usize::from(to)];
                if w.leader.is_some() && target.alive && target.raft == Raft::Voter {
                    if w.leader != Some(to) {
                        w.leader = Some(to);
                        w.changed();
                    }
                } else {
                    // It did not move (out of the model: the retried call, the graceful leave).
                    w.release(r);
                    return;
                }
                let mut rec = decode(&record);
                rec.leader_moves.push(LeaderMove {
                    from: node(from),
                    path: "transfer".into(),
                    to: Some(node(to)),
                    transfers: 1,
                    until_new_leader_ms: 0,
                    at: NOW_MS,
                });
                let next = World::write_stage(&rec, cas, Then::Decide);
                w.set_stage(r, next);
            }
            Stage::RetireCloud {
                machine,
                record,
                cas,
            } => {
                let vm = &w.vms[usize::from(machine)];
                if vm.alive {
                    if w.leader == Some(machine) {
                        w.violations.insert("the leader was retired while it led");
                    }
                    if vm.raft == Raft::Voter && w.tolerance() < w.baseline().unwrap_or(0) {
                        w.violations
                            .insert("a voter was retired with failure tolerance below baseline");
                    }
                    if vm.raft == Raft::Voter && w.voters() <= self.desired {
                        w.violations
                            .insert("a voter was retired with no more voters than desired");
                    }
                    let vm = &mut w.vms[usize::from(machine)];
                    vm.alive = false;
                    vm.raft = Raft::Out;
                    if w.leader == Some(machine) {
                        w.leader = None;
                    }
                    w.changed();
                }
                let mut rec = decode(&record);
                rec.retirements.extend(rec.retiring.take());
                let next = World::write_stage(&rec, cas, Then::RetireSettle(machine));
                w.set_stage(r, next);
            }
            Stage::RetireSettle { machine } => {
                // `wait_until`: healthy and the server gone from Raft.
                if w.vms[usize::from(machine)].raft != Raft::Out || w.leader.is_none() {
                    return;
                }
                w.set_stage(r, Stage::Receipt);
            }
            Stage::Receipt => {
                // A receipt of a job before the first not done is there already.
                if job >= 0 {
                    w.receipts.insert(job);
                }
                w.release(r);
            }
        }
    }
}

impl Model for Protocol {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        let vms = (0..self.desired)
            .map(|_| Vm {
                new: false,
                token: None,
                alive: true,
                raft: Raft::Voter,
            })
            .collect();
        let replicas = (0..self.replicas)
            .map(|i| {
                let s = Session {
                    replica: i as u8,
                    generation: 0,
                };
                Replica {
                    session: Some(s),
                    generation: 0,
                    run: None,
                    stale_calls: 0,
                }
            })
            .collect::<Vec<_>>();
        vec![World {
            vms,
            leader: Some(0),
            live_sessions: replicas.iter().filter_map(|r| r.session).collect(),
            lock: Lock {
                holder: None,
                names: None,
                index: 0,
                delay: false,
            },
            receipts: BTreeSet::new(),
            record: None,
            record_index: 0,
            // The new image is there: its watch has fired once.
            triggers: 1,
            dirty: false,
            replicas,
            crashes: self.crashes,
            freezes: self.freezes,
            deaths: self.deaths,
            violations: BTreeSet::new(),
            stale_acted: false,
            took_over: false,
        }]
    }

    fn actions(&self, w: &World, actions: &mut Vec<Action>) {
        if w.dirty && w.triggers < self.pending_triggers {
            actions.push(Action::Fire);
        }
        for (i, rep) in w.replicas.iter().enumerate() {
            let r = i as u8;
            let live = rep.session.is_some_and(|s| w.live_sessions.contains(&s));
            match &rep.run {
                None if rep.session.is_none() || !live => actions.push(Action::NewSession(r)),
                None if w.next_job().is_some() && w.lock.holder.is_none() && !w.lock.delay => {
                    actions.push(Action::Acquire(r));
                }
                None => {}
                Some((_, stage)) => {
                    let waiting = matches!(stage, Stage::RetireSettle { machine }
                        if w.vms[usize::from(*machine)].raft != Raft::Out || w.leader.is_none());
                    if !waiting {
                        actions.push(Action::Step(r));
                    }
                    if !live {
                        actions.push(Action::Notice(r));
                    }
                }
            }
            // A replica crashing between jobs only leaves a session to expire; one crashing
            // in a run leaves its lock and its step too.
            if w.crashes > 0 && rep.run.is_some() {
                actions.push(Action::Crash(r));
            }
            if w.freezes > 0 && live && rep.run.is_some() {
                actions.push(Action::Freeze(r));
            }
        }
        for s in &w.live_sessions {
            let known = w.replicas.iter().any(|rep| rep.session == Some(*s));
            if !known {
                actions.push(Action::Expire(*s));
            }
        }
        if w.lock.delay {
            actions.push(Action::DelayEnds);
        }
        for (i, v) in w.vms.iter().enumerate() {
            if v.alive && v.raft == Raft::Joining {
                actions.push(Action::Promote(i as u8));
                if w.deaths > 0 {
                    actions.push(Action::Die(i as u8));
                }
            }
            if w.leader.is_none() && v.alive && v.raft == Raft::Voter {
                actions.push(Action::Elect(i as u8));
            }
        }
    }

    fn next_state(&self, last: &World, action: Action) -> Option<World> {
        let mut w = last.clone();
        match action {
            Action::Fire => {
                w.triggers += 1;
                w.dirty = false;
            }
            Action::Acquire(r) => {
                let rep = &w.replicas[usize::from(r)];
                let job = w.next_job()?;
                {
                    w.took_over |= w.lock.names == Some(job);
                    w.lock.holder = rep.session;
                    w.lock.names = Some(job);
                    w.lock.index += 1;
                    let rep = &mut w.replicas[usize::from(r)];
                    rep.run = Some((job, Stage::Decide));
                    rep.stale_calls = 0;
                }
            }
            Action::Step(r) => self.step(&mut w, r),
            Action::Notice(r) => {
                let rep = &mut w.replicas[usize::from(r)];
                rep.run = None;
                rep.stale_calls = 0;
                rep.session = None;
            }
            Action::NewSession(r) => {
                let rep = &mut w.replicas[usize::from(r)];
                rep.generation += 1;
                let s = Session {
                    replica: r,
                    generation: rep.generation,
                };
                rep.session = Some(s);
                w.live_sessions.insert(s);
            }
            Action::Crash(r) => {
                w.crashes -= 1;
                let rep = &mut w.replicas[usize::from(r)];
                // Its session lives on in Consul until its TTL: `Expire` ends it.
                rep.session = None;
                rep.run = None;
                rep.stale_calls = 0;
            }
            Action::Freeze(r) => {
                w.freezes -= 1;
                let s = w.replicas[usize::from(r)].session?;
                w.invalidate(s);
            }
            Action::Expire(s) => w.invalidate(s),
            Action::DelayEnds => w.lock.delay = false,
            Action::Promote(i) => {
                w.vms[usize::from(i)].raft = Raft::Voter;
                w.changed();
            }
            Action::Elect(i) => {
                w.leader = Some(i);
                w.changed();
            }
            Action::Die(i) => {
                w.deaths -= 1;
                let vm = &mut w.vms[usize::from(i)];
                vm.alive = false;
                vm.raft = Raft::Out;
                w.changed();
            }
        }
        w.normalize();
        Some(w)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("one live machine per launch token", |_, w: &World| {
                let tokens: Vec<&String> = w
                    .vms
                    .iter()
                    .filter(|v| v.alive)
                    .filter_map(|v| v.token.as_ref())
                    .collect();
                let unique: BTreeSet<&&String> = tokens.iter().collect();
                unique.len() == tokens.len()
            }),
            Property::always(
                "never more than desired + 1 machines",
                |m: &Protocol, w: &World| w.vms.iter().filter(|v| v.alive).count() <= m.desired + 1,
            ),
            Property::always("voters never below quorum", |m: &Protocol, w: &World| {
                w.voters() > m.desired / 2
            }),
            Property::always("no step broke a safety rule", |_, w: &World| {
                w.violations.is_empty()
            }),
            Property::eventually(
                "the rollout completes, recorded as the cloud is",
                |m: &Protocol, w: &World| complete(m, w),
            ),
            Property::sometimes(STALE_ACTS, |_, w: &World| w.stale_acted),
            Property::sometimes("a replica takes over a job another left", |_, w: &World| {
                w.took_over
            }),
        ]
    }
}

/// Every server on the new image and a voter, as many as desired, the record completed and
/// listing what the cloud did.
fn complete(m: &Protocol, w: &World) -> bool {
    let alive: Vec<(usize, &Vm)> = w.vms.iter().enumerate().filter(|(_, v)| v.alive).collect();
    let Some(r) = w.record.as_deref().map(decode) else {
        return false;
    };
    let launched: BTreeSet<String> = w
        .vms
        .iter()
        .enumerate()
        .filter(|(_, v)| v.token.is_some())
        .map(|(i, _)| node(i as u8))
        .collect();
    let recorded: BTreeSet<String> = r
        .launches
        .iter()
        .chain(&r.failed_launches)
        .map(|l| l.machine.clone())
        .collect();
    let retired_old = w.vms.iter().filter(|v| !v.new && !v.alive).count();
    matches!(r.state, RolloutState::Completed { .. })
        && alive.len() == m.desired
        && alive.iter().all(|(_, v)| v.new && v.raft == Raft::Voter)
        && launched == recorded
        && r.retirements.len() == retired_old
        && r.retiring.is_none()
}

const STALE_ACTS: &str = "a holder acts after losing its lock";

fn check(model: Protocol, budget: Duration) {
    let name = format!(
        "{} servers, {} replicas, {} crash(es), {} freeze(s), {} death(s)",
        model.desired, model.replicas, model.crashes, model.freezes, model.deaths
    );
    let (faults, freezes) = (model.crashes + model.freezes, model.freezes);
    let started = std::time::Instant::now();
    let checker = model
        .checker()
        .threads(2)
        .timeout(budget)
        .spawn_bfs()
        .join();
    let elapsed = started.elapsed();
    eprintln!(
        "model {name}: {} states ({} unique), depth {}, {:.1}s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        elapsed.as_secs_f64()
    );
    let model = checker.model();
    for p in model.properties() {
        let found = checker.discovery(p.name);
        match p.expectation {
            // Only a freeze makes a holder that lost its lock; a crash or a freeze, a takeover.
            stateright::Expectation::Sometimes
                if (p.name == STALE_ACTS && freezes == 0) || faults == 0 => {}
            stateright::Expectation::Sometimes => assert!(
                found.is_some(),
                "{name}: the model never reached \"{}\": the check explores less than it claims",
                p.name
            ),
            _ => {
                if let Some(path) = found {
                    let trace: Vec<String> = path
                        .into_actions()
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect();
                    panic!(
                        "{name}: \"{}\" broken; the trace:\n  {}\nlast state: {:#?}",
                        p.name,
                        trace.join("\n  "),
                        checker.discovery(p.name).map(|p| p.last_state().clone())
                    );
                }
            }
        }
    }
    assert!(
        elapsed < budget,
        "{name}: the check did not finish within {budget:?}: it proved nothing past the states it saw"
    );
}

fn protocol(desired: usize, replicas: usize, crashes: u8, freezes: u8, deaths: u8) -> Protocol {
    Protocol {
        desired,
        replicas,
        crashes,
        freezes,
        deaths,
        pending_triggers: 1,
        bug: None,
    }
}

/// Generous: a debug build on two loaded cores; the figures are printed.
const BUDGET: Duration = Duration::from_secs(300);

#[test]
fn three_servers_two_replicas_one_fault_each() {
    check(protocol(3, 2, 0, 0, 0), BUDGET);
    check(protocol(3, 2, 1, 0, 0), BUDGET);
    check(protocol(3, 2, 0, 1, 0), BUDGET);
    check(protocol(3, 2, 0, 0, 1), BUDGET);
}

#[test]
fn three_servers_two_replicas_crash_freeze_and_a_dying_server() {
    check(protocol(3, 2, 1, 1, 1), BUDGET);
}

#[test]
fn three_servers_three_replicas() {
    check(protocol(3, 3, 1, 0, 0), BUDGET);
    check(protocol(3, 3, 0, 1, 0), BUDGET);
}

#[test]
fn five_servers() {
    check(protocol(5, 2, 1, 0, 0), BUDGET);
    check(protocol(5, 2, 0, 1, 0), BUDGET);
}

/// The check finds what it is there to find: a cloud that launches anew for a token it has
/// seen (no idempotency) lets a holder that lost its lock launch a second server for a step.
#[test]
fn a_cloud_without_idempotent_launches_is_caught() {
    let model = Protocol {
        bug: Some(Bug::LaunchIgnoresToken),
        ..protocol(3, 2, 0, 1, 0)
    };
    let checker = model
        .checker()
        .threads(2)
        .timeout(BUDGET)
        .spawn_bfs()
        .join();
    let found = checker.discovery("never more than desired + 1 machines");
    assert!(found.is_some(), "the model check missed a double launch");
}
