//! What SpinUp and SpinDown share: fetching the snapshot the plan decides on, keeping the
//! rollout record in KV, and carrying out the one step the plan chose. The two actors are
//! thin shells around `run`.
//!
//! Runs happen only while the Dispatcher holds the `step` lock, so the record is written by
//! one replica at a time; it is still written with CAS so a stale holder cannot clobber it.

use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use tracing::{debug, error, info, warn};

use crate::executor::{ExecError, Trigger};
use crate::metrics::Metrics;
use crate::notify::{Event, Notifier};
use crate::plan::{self, LeaderMove, Mode, Rollout, RolloutState, Snapshot, Step, StepRecord};
use crate::ports::{
    clip, CloudPort, ConsulPort, Fence, Fenced, GatePort, LeaderTransfer, MachineState,
    ObjectStore, PeerHealth, PortError, MAX_REASON,
};
use crate::receipt::{now_ms, Keys, Outcome};
use crate::window::Windows;

/// Which of the two steps a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    SpinUp,
    SpinDown,
}

/// The rollout's settings, from `[cluster]` and `[rollout]`.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    pub desired: usize,
    pub mode: Mode,
    pub dry_run: bool,
    pub stable_timeout: Duration,
    pub step_timeout: Duration,
    pub retire_failed_launch: bool,
    /// `rollout.launch_attempts`: failed launches before the rollout stops.
    pub launch_attempts: u32,
    /// How often a settling step looks again.
    pub poll: Duration,
    /// `[rollout] windows`: steps only inside them (none: any time).
    pub windows: Windows,
    /// The watches whose triggers ask for a rollout as `consul-rehydrate` does, in manual
    /// mode too (configuring one is the operator's opt-in): every `image` watch, and those
    /// marked `request = true` (a key an operator writes, which unlike a user event is never
    /// dropped).
    pub request_watches: Vec<String>,
    /// `rollout.bake_time`: how long the newest new server must have been healthy before an
    /// old one goes (or leadership moves to it).
    pub bake: Duration,
    /// `rollout.snapshot_*`: a Consul snapshot before the first step and each retirement.
    pub snapshots: Option<rehydrator_config::SnapshotSettings>,
}

/// What a rollout run talks to.
pub struct RolloutEnv {
    pub consul: Rc<dyn ConsulPort>,
    pub cloud: Rc<dyn CloudPort>,
    pub keys: Keys,
    pub config: RolloutConfig,
    /// Tells `[notify] url` of the steps this replica takes.
    pub notifier: Notifier,
    /// Health gates asked before every launch, leadership move and retirement of a voter.
    pub gates: Vec<Rc<dyn GatePort>>,
    /// Where `s3://` snapshots go.
    pub objects: Option<Rc<dyn ObjectStore>>,
}

/// The event name that asks for a rollout.
pub const REHYDRATE_EVENT: &str = "consul-rehydrate";

fn port(e: PortError) -> ExecError {
    ExecError::Port(e.to_string())
}

/// The rollout record and the ModifyIndex to CAS against (0: absent). A record that is there
/// but does not decode is an error, never "no rollout": acting on it as none would lose the
/// steps it records (a launched server, the retirement under way).
async fn read_record(env: &RolloutEnv) -> Result<(Option<Rollout>, u64), ExecError> {
    let key = env.keys.rollout();
    let got = env
        .consul
        .kv_get(&key, 0, Duration::ZERO)
        .await
        .map_err(port)?;
    match got.value {
        Some(e) => match serde_json::from_slice(&e.value) {
            Ok(r) => Ok((Some(r), e.modify_index)),
            Err(err) => Err(ExecError::Record(format!(
                "the rollout record at {key} does not decode ({err}); no step is taken until \
                 `rehydrator repair` rebuilds it from the cluster"
            ))),
        },
        None => Ok((None, 0)),
    }
}

/// One run's view: the rollout's env, and the lock the run holds, which fences every write of
/// the record (see `ports::Fence`).
pub struct RunEnv {
    env: Rc<RolloutEnv>,
    fence: Fence,
}

impl std::ops::Deref for RunEnv {
    type Target = RolloutEnv;

    fn deref(&self) -> &RolloutEnv {
        &self.env
    }
}

/// Writes the record if it still is at `cas` and this run still holds its lock. A run that
/// lost its lock stops at its first write: whatever it decided before is the new holder's to
/// decide again, from the record.
async fn write_record(env: &RunEnv, r: &Rollout, cas: u64) -> Result<(), ExecError> {
    let body = r.bounded_json().map_err(ExecError::Record)?;
    let written = env
        .consul
        .kv_put_fenced(&env.keys.rollout(), body, Some(cas), &env.fence)
        .await
        .map_err(port)?;
    match written {
        Fenced::Written => Ok(()),
        Fenced::Changed => Err(ExecError::Port(
            "the rollout record changed under this step; retrying".into(),
        )),
        Fenced::LockLost => Err(ExecError::LockLost(format!(
            "this replica no longer holds {} (its session ended); the step is left to the \
             replica that holds it now",
            env.fence.lock
        ))),
    }
}

/// Everything the plan looks at, fetched now, with the ModifyIndex of the record to CAS
/// against.
pub async fn snapshot(env: &RolloutEnv) -> Result<(Snapshot, u64), ExecError> {
    let mut s = cluster(env).await?;
    let (rollout, cas) = read_record(env).await?;
    s.rollout = rollout;
    Ok((s, cas))
}

/// What the plan looks at but the rollout record, fetched now: what `rehydrator repair`
/// rebuilds a record from.
pub async fn cluster(env: &RolloutEnv) -> Result<Snapshot, ExecError> {
    let machines = env.cloud.machines().await.map_err(port)?;
    let mut health = env.consul.autopilot_health().await.map_err(port)?;
    // Who leads is Raft's answer, asked after autopilot's: its health is computed every few
    // seconds and can name no leader, or the last one. Retiring a leader it does not name
    // would skip the leadership move.
    let leader = env.consul.raft_leader().await.map_err(port)?;
    plan::mark_leader(&mut health, leader.as_deref());
    let newest_image = env.cloud.newest_image().await.map_err(port)?;
    let paused = env
        .consul
        .kv_get(&env.keys.pause(), 0, Duration::ZERO)
        .await
        .map_err(port)?
        .value
        .is_some();
    Ok(Snapshot {
        machines,
        health,
        newest_image,
        rollout: None,
        paused,
        desired: env.config.desired,
        launch_attempts: env.config.launch_attempts,
        now_ms: now_ms(),
    })
}

fn decide(env: &RolloutEnv, which: Which, s: &Snapshot, requested: bool) -> Step {
    match which {
        Which::SpinUp => plan::spin_up(
            s,
            env.config.mode,
            requested,
            env.config.stable_timeout.as_millis() as u64,
        ),
        Which::SpinDown => {
            let step = plan::spin_down(s, env.config.stable_timeout.as_millis() as u64);
            match step {
                Step::Retire { .. } | Step::TransferLeadership { .. } => {
                    match plan::baking(s, env.config.bake.as_millis() as u64) {
                        Some(why) => Step::Wait(why),
                        None => step,
                    }
                }
                other => other,
            }
        }
    }
}

/// `step`, or a wait while a health gate is closed. Gates hold what changes the voters: a
/// launch, a leadership move, the retirement of a voter. Retiring a server that does not
/// vote (an aborted rollout's new server) goes on: it counts for no quorum, and the alerts a
/// gate waits on may be that server's own.
async fn gated(env: &RolloutEnv, s: &Snapshot, step: Step) -> Step {
    let guarded = match &step {
        Step::Launch { .. } | Step::TransferLeadership { .. } => true,
        Step::Retire { machine, .. } => s
            .servers()
            .iter()
            .find(|sv| sv.machine.id == *machine)
            .is_some_and(|sv| sv.is_voter()),
        _ => false,
    };
    if !guarded {
        return step;
    }
    for gate in &env.gates {
        if let Some(why) = gate.closed().await {
            return Step::Wait(format!("health gate {} is closed: {why}", gate.name()));
        }
    }
    step
}

/// Whether the trigger asks for a rollout: a `consul-rehydrate` event, or a change seen by a
/// requesting watch (a new image, a write to a `request = true` key).
fn requested(config: &RolloutConfig, trigger: &Trigger) -> bool {
    trigger.payload.get("Name").and_then(|n| n.as_str()) == Some(REHYDRATE_EVENT)
        || config.request_watches.contains(&trigger.watch)
}

/// Why a rollout must not start with this `stable_timeout`: autopilot keeps a new server
/// from voting for its `ServerStabilizationTime`, so a shorter wait would stop the rollout at
/// its first launch with the extra server left. A port that cannot tell (an agent refusing
/// the read) does not block the rollout: the settle step still bounds each launch.
async fn stable_timeout_too_short(env: &RolloutEnv) -> Option<String> {
    let stabilization = match env.consul.server_stabilization().await {
        Ok(d) => d,
        Err(e) => {
            debug!(error = %e, "Could not read autopilot's ServerStabilizationTime.");
            return None;
        }
    };
    (env.config.stable_timeout <= stabilization).then(|| {
        format!(
            "rollout.stable_timeout ({:?}) is not longer than the cluster's autopilot \
             ServerStabilizationTime ({:?}): no new server could become a voter in time",
            env.config.stable_timeout, stabilization
        )
    })
}

/// One run of SpinUp or SpinDown: decide on a fresh snapshot and take at most one step.
/// `metrics` counts and times the step taken.
pub async fn run(
    env: Rc<RolloutEnv>,
    which: Which,
    trigger: Trigger,
    fence: Fence,
    metrics: Metrics,
) -> Result<Outcome, ExecError> {
    let env = RunEnv { env, fence };
    let requested = requested(&env.config, &trigger);
    let deadline = tokio::time::Instant::now() + env.config.step_timeout;
    // Leadership moves within this run: transfer-leader calls made, and whether the leader
    // is to leave instead (no transfer-leader, or calls that reported success and moved
    // nothing). A retirement whose leadership move this run began goes on: the two are one
    // step, whatever the maintenance window does meanwhile.
    let mut transfers = 0u32;
    let mut leave_instead = false;
    loop {
        let (mut s, mut cas) = match snapshot(&env).await {
            Err(e @ ExecError::Record(_)) => {
                metrics.rollout_invalid();
                error!(error = %e, "The rollout record does not decode; no step is taken.");
                return Err(e);
            }
            got => got?,
        };
        metrics.rollout_state(s.rollout.as_ref().map(|r| &r.state));
        if let Some(r) = s.rollout.as_mut() {
            cas = reconcile(&env, r, &s.machines, cas).await?;
        }
        if which == Which::SpinUp {
            if let Some(why) = plan::unrecorded_extra(&s) {
                warn!(reason = %why, "The cluster is over its size with no rollout recorded.");
            }
        }
        let step = decide(&env, which, &s, requested);
        // A retirement whose leadership transfer this run made goes on: the two are one step.
        let step = if transfers > 0 || leave_instead {
            step
        } else {
            plan::within_window(step, &env.config.windows.state_at(s.now_ms))
        };
        // As the window: a retirement whose leadership move this run began goes on.
        let step = if transfers > 0 || leave_instead {
            step
        } else {
            gated(&env, &s, step).await
        };
        if env.config.dry_run && !matches!(step, Step::Idle(_) | Step::Wait(_) | Step::Settle(_)) {
            info!(?step, "Dry run: the step this run would take.");
            note_waiting(&env, s.rollout, cas, format!("dry run: would {step:?}")).await?;
            return Ok(Outcome::NoOp(format!("dry run: would {step:?}")));
        }
        match step {
            Step::Idle(why) => return Ok(Outcome::NoOp(why)),
            Step::Wait(why) => {
                info!(reason = %why, "Rollout waits.");
                note_waiting(&env, s.rollout, cas, why.clone()).await?;
                return Ok(Outcome::NoOp(why));
            }
            Step::Settle(why) => {
                if tokio::time::Instant::now() + env.config.poll > deadline {
                    note_waiting(&env, s.rollout, cas, why.clone()).await?;
                    return Ok(Outcome::NoOp(why));
                }
                note_waiting(&env, s.rollout, cas, why).await?;
                tokio::time::sleep(env.config.poll).await;
            }
            Step::Start { image } => {
                if let Some(why) = stable_timeout_too_short(&env).await {
                    error!(reason = %why, "The rollout does not start.");
                    note_waiting(&env, s.rollout, cas, why.clone()).await?;
                    return Ok(Outcome::NoOp(why));
                }
                let now = now_ms();
                let r = Rollout::start(format!("r{now}"), &image, now, s.health.failure_tolerance);
                info!(
                    rollout = %r.id,
                    %image,
                    baseline_tolerance = r.baseline_tolerance,
                    "Rollout started.",
                );
                metrics
                    .step("start")
                    .finish(write_record(&env, &r, cas).await)?;
                env.notifier.send(Event::Started, &r, None, None);
            }
            Step::Launch { image, token } => {
                // Before the rollout's first step: the state it started from.
                let first = s.rollout.as_ref().is_some_and(|r| {
                    r.launches.is_empty() && r.failed_launches.is_empty() && r.snapshots.is_empty()
                });
                if first {
                    if let Some(why) = snapshot_before(&env, &mut s.rollout, cas, "start").await? {
                        return Ok(Outcome::NoOp(why));
                    }
                    cas = read_record(&env).await?.1;
                }
                let timer = metrics.step("launch");
                let machine = match env.cloud.launch(&image, &token).await {
                    Ok(m) => m,
                    // Refused as made (an image that no longer exists, a launch template the
                    // role may not use): retrying the same launch cannot help, so it is a failed
                    // attempt, and `launch_attempts` of them stop the rollout with the reason.
                    Err(e) if e.kind == crate::ports::ErrorKind::Rejected => {
                        let refused = StepRecord {
                            machine: format!("(none: token {token})"),
                            at: now_ms(),
                            token: Some(token.clone()),
                            reason: Some(clip(
                                &format!("the cloud refused the launch: {e}"),
                                MAX_REASON,
                            )),
                        };
                        if let Some(r) = s.rollout.as_mut() {
                            record_failures(&env, r, vec![refused], cas).await?;
                        }
                        drop(timer);
                        continue;
                    }
                    Err(e) => return Err(port(e)),
                };
                let launched = StepRecord {
                    machine: machine.id.clone(),
                    at: now_ms(),
                    token: Some(token.clone()),
                    reason: None,
                };
                if machine.state == MachineState::Terminated {
                    // The token answered a machine that is already dead (a holder launched it
                    // and died before recording, and it failed since): a failed launch, and the
                    // next attempt gets a new token.
                    let failed = plan::failed_launch(&launched, Some(&machine), now_ms());
                    if let Some((r, failed)) = s.rollout.as_mut().zip(failed) {
                        record_failures(&env, r, vec![failed], cas).await?;
                    }
                    // Dropped unfinished: the step counts as an error.
                    drop(timer);
                    continue;
                }
                info!(machine = %machine.id, %image, %token, "Launched a server.");
                if let Some(mut r) = s.rollout {
                    r.record_launch(launched);
                    r.wait(
                        Some(format!("new server {} is joining", machine.id)),
                        now_ms(),
                    );
                    write_record(&env, &r, cas).await?;
                    let step = json!({ "kind": "launch", "machine": machine.id, "image": image });
                    env.notifier.send(Event::Step, &r, Some(step), None);
                }
                return timer.finish(Ok(Outcome::Launched(machine.id)));
            }
            Step::TransferLeadership { from, to } if !leave_instead => {
                let timer = metrics.step("transfer");
                let started = tokio::time::Instant::now();
                let result = env
                    .consul
                    .transfer_leader(to.as_deref())
                    .await
                    .map_err(port)?;
                // A call the servers do not know (404 before 1.15) is no transfer.
                if result != LeaderTransfer::Unsupported {
                    transfers += 1;
                }
                info!(
                    %from,
                    ?to,
                    ?result,
                    attempt = transfers,
                    "Moving leadership off the server to retire.",
                );
                if result != LeaderTransfer::Transferred {
                    // Too old for transfer-leader (before 1.15), or it said it did not move:
                    // the leader leaves gracefully and the others elect.
                    leave_instead = true;
                    drop(timer);
                    continue;
                }
                // Consul has answered success and moved nothing: believe the cluster, not the
                // answer.
                let check = env.config.poll * 10;
                let until = started + check.min(deadline.saturating_duration_since(started));
                match leader_moved(&env, &from, until).await? {
                    Some(new_leader) => {
                        let path = if transfers == 1 {
                            "transfer"
                        } else {
                            "transfer_retried"
                        };
                        if let Some(named) = to.as_deref() {
                            if new_leader.id != named {
                                warn!(
                                    %named,
                                    to = %new_leader.name,
                                    "Leadership went to another server than the one named.",
                                );
                            }
                        }
                        let moved = LeaderMove {
                            from: peer_name(&s, &from),
                            path: path.into(),
                            to: Some(new_leader.name),
                            transfers,
                            until_new_leader_ms: millis(started.elapsed()),
                            at: now_ms(),
                        };
                        record_move(&env, s.rollout, cas, moved).await?;
                        timer.ok();
                    }
                    None if transfers < 2 => {
                        warn!(
                            %from,
                            "transfer-leader reported success but the leader did not move; trying once more.",
                        );
                        drop(timer);
                    }
                    None => {
                        warn!(
                            %from,
                            "transfer-leader twice reported success without moving the leader; it leaves instead.",
                        );
                        leave_instead = true;
                        drop(timer);
                    }
                }
            }
            Step::TransferLeadership { from, .. } => {
                // The servers could not hand over leadership (too old for transfer-leader, or
                // it did not take): the leader leaves gracefully and the others elect anew.
                let victim = s
                    .servers()
                    .into_iter()
                    .find(|sv| sv.peer.is_some_and(|p| p.id == from))
                    .map(|sv| (sv.machine.id.clone(), sv.node()));
                let Some((machine, node)) = victim else {
                    return Err(ExecError::Port(format!("leader {from} has no machine")));
                };
                warn!(%node, "Retiring the leader without a transfer; an election follows.");
                let timer = metrics.step("retire");
                let done = retire(
                    &env,
                    s.rollout,
                    cas,
                    &machine,
                    &node,
                    Some(transfers),
                    deadline,
                )
                .await;
                return timer.finish(done);
            }
            Step::Retire { machine, node } => {
                let timer = metrics.step("retire");
                let done = retire(&env, s.rollout, cas, &machine, &node, None, deadline).await;
                return timer.finish(done);
            }
            Step::Complete => {
                let Some(mut r) = s.rollout else {
                    return Ok(Outcome::NoOp("no rollout".into()));
                };
                r.state = RolloutState::Completed { at: now_ms() };
                r.wait(None, now_ms());
                metrics
                    .step("complete")
                    .finish(write_record(&env, &r, cas).await)?;
                env.notifier.send(Event::Completed, &r, None, None);
                metrics.rollout_state(Some(&r.state));
                info!(
                    rollout = %r.id,
                    image = %r.target_image,
                    launches = r.launches.len(),
                    retirements = r.retirements.len(),
                    "Rollout complete.",
                );
                return Ok(Outcome::Succeeded(format!(
                    "rollout to {} complete",
                    r.target_image
                )));
            }
            Step::Stop {
                reason,
                failed_machine,
            } => {
                error!(
                    %reason,
                    "Rollout stopped for safety; the old servers stay. Fire consul-rehydrate to try again.",
                );
                let timer = metrics.step("stop");
                if let Some(mut r) = s.rollout {
                    r.state = RolloutState::Stopped {
                        at: now_ms(),
                        reason: reason.clone(),
                    };
                    r.wait(None, now_ms());
                    write_record(&env, &r, cas).await?;
                    env.notifier
                        .send(Event::Stopped, &r, None, Some(reason.clone()));
                }
                if let (true, Some(m)) = (env.config.retire_failed_launch, failed_machine) {
                    env.cloud.retire(&m).await.map_err(port)?;
                    info!(machine = %m, "Retired the server that never got healthy.");
                }
                timer.ok();
                return Ok(Outcome::NoOp(format!("rollout stopped: {reason}")));
            }
        }
    }
}

/// Brings the record up to what the cloud shows, for steps a holder took but died before
/// recording: a machine this rollout launched (its token names the rollout) that the record
/// lacks, and a retirement under way whose machine is gone. Status should show both, and the
/// counts must add up. Returns the index to CAS against next.
async fn reconcile(
    env: &RunEnv,
    r: &mut Rollout,
    machines: &[crate::ports::Machine],
    cas: u64,
) -> Result<u64, ExecError> {
    if !r.is_active() {
        return Ok(cas);
    }
    let mut cas = cas;
    let missed = plan::missed_steps(r, machines);
    if !missed.is_empty() {
        warn!(
            launches = missed.launches.len(),
            retirement = ?missed.retired.as_ref().map(|s| &s.machine),
            "The record missed steps (a holder died mid-step); adding them."
        );
        missed.apply(r);
        write_record(env, r, cas).await?;
        cas = read_record(env).await?.1;
    }
    // Launches the cloud no longer lists: asked about one by one (rare: a launch failed, or
    // the listing lags), so a failure is recorded with the cloud's reason.
    let mut failed = Vec::new();
    for lost in plan::lost_launches(r, machines) {
        let found = env.cloud.machine(&lost.machine).await.map_err(port)?;
        failed.extend(plan::failed_launch(&lost, found.as_ref(), now_ms()));
    }
    if failed.is_empty() {
        return Ok(cas);
    }
    record_failures(env, r, failed, cas).await
}

/// Moves `failed` launches out of the record's launches into its failed launches, each once,
/// and says so (log, notification); returns the index to CAS against next.
async fn record_failures(
    env: &RunEnv,
    r: &mut Rollout,
    failed: Vec<StepRecord>,
    cas: u64,
) -> Result<u64, ExecError> {
    for f in &failed {
        error!(
            machine = %f.machine,
            reason = f.reason.as_deref().unwrap_or(""),
            attempt = r.failed_launches.len() + 1,
            attempts = env.config.launch_attempts,
            "A launch failed (its server died before it joined, or the cloud refused it); the \
             next launch uses a new token."
        );
    }
    for f in failed.iter().cloned() {
        r.record_failure(f);
    }
    r.wait(
        Some(format!(
            "launch {} failed; launching again",
            failed.last().map_or("", |f| f.machine.as_str())
        )),
        now_ms(),
    );
    write_record(env, r, cas).await?;
    for f in failed {
        let step = json!({
            "kind": "launch_failed", "machine": f.machine, "reason": f.reason,
        });
        env.notifier.send(Event::Step, r, Some(step), None);
    }
    Ok(read_record(env).await?.1)
}

/// Retires `machine` and waits until its server is gone from Raft and autopilot is healthy.
/// A leader leaving (`leader`: the transfer-leader calls made before) is recorded as a
/// leadership move by `leave`, with the time until the others elected.
async fn retire(
    env: &RunEnv,
    rollout: Option<Rollout>,
    cas: u64,
    machine: &str,
    node: &str,
    leader: Option<u32>,
    deadline: tokio::time::Instant,
) -> Result<Outcome, ExecError> {
    info!(%machine, %node, "Retiring a server.");
    let mut rollout = rollout;
    let mut cas = cas;
    let step = format!("retire-{node}");
    if let Some(why) = snapshot_before(env, &mut rollout, cas, &step).await? {
        return Ok(Outcome::NoOp(why));
    }
    if env.config.snapshots.is_some() {
        cas = read_record(env).await?.1;
    }
    // Intent first, so a holder dying inside the cloud call leaves a trace `reconcile` finishes.
    if let Some(r) = rollout.as_mut() {
        r.retiring = Some(StepRecord {
            machine: machine.to_owned(),
            at: now_ms(),
            token: None,
            reason: None,
        });
        r.wait(Some(format!("server {node} is leaving")), now_ms());
        write_record(env, r, cas).await?;
        cas = read_record(env).await?.1;
    }
    let left_at = tokio::time::Instant::now();
    env.cloud.retire(machine).await.map_err(port)?;
    let moved = if let Some(transfers) = leader {
        // The leader has left: that is done, and its move is recorded whatever the wait for
        // the next leader gives. The wait gets a bound of its own, since the leave itself may
        // have used up the step's (a loaded host's agent can take seconds to exit); failing
        // the step here would leave the retirement to be reconciled without its move.
        let until = tokio::time::Instant::now() + env.config.step_timeout;
        let to = match leader_elected(env, node, until).await {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(
                    error = %e,
                    %node,
                    "No new leader seen after the leader left; recording the move without one.",
                );
                None
            }
        };
        let m = LeaderMove {
            from: node.to_owned(),
            path: "leave".into(),
            to,
            transfers,
            until_new_leader_ms: millis(left_at.elapsed()),
            at: now_ms(),
        };
        info!(
            from = %m.from,
            to = ?m.to,
            until_new_leader_ms = m.until_new_leader_ms,
            "The leader left; the others elected a new one.",
        );
        Some(m)
    } else {
        None
    };
    if let Some(mut r) = rollout {
        r.retirements.extend(r.retiring.take());
        r.leader_moves.extend(moved.clone());
        write_record(env, &r, cas).await?;
        let step = json!({ "kind": "retire", "machine": machine, "node": node });
        env.notifier.send(Event::Step, &r, Some(step), None);
        if let Some(m) = moved {
            env.notifier
                .send(Event::Step, &r, Some(move_step(&m)), None);
        }
    }
    await_gone(env, node, deadline).await?;
    info!(%machine, %node, "Server retired; the cluster is healthy.");
    Ok(Outcome::Retired(machine.to_owned()))
}

/// How often a retired server that died instead of leaving is force-left again while it is
/// still failed in Raft (the first force-leave may reach a leader mid-election).
const FORCE_LEAVE_EVERY: Duration = Duration::from_secs(10);

/// Waits until the retired server `node` is out of Raft and the cluster healthy. A server
/// whose machine is gone but that serf calls failed died instead of leaving (an image without
/// `leave_on_terminate`, an agent that hung on the way down): it would hold a vote, and the
/// quorum size, until autopilot pruned it, which CleanupDeadServers off or too many dead
/// servers at once never does. Its machine is ours and terminated, so it is force-left, as an
/// operator would after terminating a server by hand. Only while serf calls it failed, and only
/// the one retired: real 1.8.7 drops even a live member that is force-left.
async fn await_gone(
    env: &RolloutEnv,
    node: &str,
    deadline: tokio::time::Instant,
) -> Result<(), ExecError> {
    let mut forced: Option<tokio::time::Instant> = None;
    loop {
        let (s, _) = snapshot(env).await?;
        let peer = s.health.servers.iter().find(|p| p.name == node);
        if s.health.healthy && peer.is_none() {
            return Ok(());
        }
        let due = forced.is_none_or(|at| at.elapsed() >= FORCE_LEAVE_EVERY);
        if peer.is_some_and(|p| p.serf_status == "failed") && due {
            warn!(
                %node,
                "The retired server died without leaving; force-leaving it so Raft drops its vote.",
            );
            env.consul.force_leave(node).await.map_err(port)?;
            forced = Some(tokio::time::Instant::now());
        }
        if tokio::time::Instant::now() + env.config.poll > deadline {
            return Err(ExecError::Timeout(env.config.step_timeout));
        }
        tokio::time::sleep(env.config.poll).await;
    }
}

/// The leader in `s` that `other` accepts, if one leads.
fn leader_in(s: &Snapshot, other: impl Fn(&PeerHealth) -> bool) -> Option<&PeerHealth> {
    s.health.servers.iter().find(|p| p.leader && other(p))
}

/// The leader other than `from` (by Raft ID), once one is seen; None if none is by `until`.
async fn leader_moved(
    env: &RolloutEnv,
    from: &str,
    until: tokio::time::Instant,
) -> Result<Option<PeerHealth>, ExecError> {
    let other = |p: &PeerHealth| p.id != from;
    match wait_until(env, until, |s| leader_in(s, other).is_some()).await {
        Ok(s) => Ok(leader_in(&s, other).cloned()),
        Err(ExecError::Timeout(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until a server other than node `gone` leads; its node name.
async fn leader_elected(
    env: &RolloutEnv,
    gone: &str,
    deadline: tokio::time::Instant,
) -> Result<String, ExecError> {
    let other = |p: &PeerHealth| p.name != gone;
    let s = wait_until(env, deadline, |s| leader_in(s, other).is_some()).await?;
    Ok(leader_in(&s, other).map_or_else(String::new, |p| p.name.clone()))
}

/// The node name of the peer with Raft ID `id` (the ID itself if none is listed).
fn peer_name(s: &Snapshot, id: &str) -> String {
    s.health
        .servers
        .iter()
        .find(|p| p.id == id)
        .map_or_else(|| id.to_owned(), |p| p.name.clone())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A leadership move as a notification's step.
fn move_step(m: &LeaderMove) -> serde_json::Value {
    json!({
        "kind": "leadership_transfer", "from": m.from, "to": m.to, "path": m.path,
        "transfers": m.transfers, "until_new_leader_ms": m.until_new_leader_ms,
    })
}

/// Records a leadership move in the active rollout and tells `[notify]`.
async fn record_move(
    env: &RunEnv,
    rollout: Option<Rollout>,
    cas: u64,
    m: LeaderMove,
) -> Result<(), ExecError> {
    info!(
        from = %m.from,
        to = ?m.to,
        path = %m.path,
        until_new_leader_ms = m.until_new_leader_ms,
        "Leadership moved.",
    );
    let Some(mut r) = rollout.filter(|r| r.is_active()) else {
        return Ok(());
    };
    let step = move_step(&m);
    r.leader_moves.push(m);
    write_record(env, &r, cas).await?;
    env.notifier.send(Event::Step, &r, Some(step), None);
    Ok(())
}

/// Polls the snapshot until `done` holds, answering that snapshot, or fails at `deadline`
/// (the job is retried).
async fn wait_until(
    env: &RolloutEnv,
    deadline: tokio::time::Instant,
    done: impl Fn(&Snapshot) -> bool,
) -> Result<Snapshot, ExecError> {
    loop {
        let (s, _) = snapshot(env).await?;
        if done(&s) {
            return Ok(s);
        }
        if tokio::time::Instant::now() + env.config.poll > deadline {
            return Err(ExecError::Timeout(env.config.step_timeout));
        }
        tokio::time::sleep(env.config.poll).await;
    }
}

/// Records why the rollout waits, when that changed (status shows it).
/// With `rollout.snapshot_dir`, saves a snapshot before `step` and records its name. A failed
/// one holds the step when snapshots are required: the reason (the step waits on it) is
/// recorded and answered, and the next trigger tries again.
async fn snapshot_before(
    env: &RunEnv,
    rollout: &mut Option<Rollout>,
    cas: u64,
    step: &str,
) -> Result<Option<String>, ExecError> {
    let (Some(settings), Some(r)) = (&env.config.snapshots, rollout.as_mut()) else {
        return Ok(None);
    };
    let cluster = env.keys.cluster();
    let objects = env.objects.as_deref();
    match crate::snapshot::save(env.consul.as_ref(), objects, settings, cluster, r, step).await {
        Ok(name) => {
            crate::snapshot::record(r, name);
            write_record(env, r, cas).await?;
            Ok(None)
        }
        Err(why) if settings.required => {
            error!(reason = %why, "No snapshot: the step waits (rollout.snapshot_required).");
            let why = format!("{why}; the step waits for a snapshot (rollout.snapshot_required)");
            note_waiting(env, Some(r.clone()), cas, why.clone()).await?;
            Ok(Some(why))
        }
        Err(why) => {
            warn!(reason = %why, "No snapshot; going on (rollout.snapshot_required = false).");
            Ok(None)
        }
    }
}

async fn note_waiting(
    env: &RunEnv,
    rollout: Option<Rollout>,
    cas: u64,
    why: String,
) -> Result<(), ExecError> {
    let Some(mut r) = rollout.filter(|r| r.is_active()) else {
        return Ok(());
    };
    if r.waiting.as_deref() == Some(why.as_str()) {
        return Ok(());
    }
    r.wait(Some(why), now_ms());
    // A lost race here only loses a status line; the next run writes it again.
    if let Err(e) = write_record(env, &r, cas).await {
        warn!(error = %e, "Could not record why the rollout waits.");
    }
    Ok(())
}
