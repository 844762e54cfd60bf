//! Dispatcher: turns watch fires into jobs and runs each job once across all replicas.
//!
//! Every replica's Watchers see the same triggers, so every replica queues the same jobs. For
//! each job the Dispatcher asks the LockManager for the action's lock in one Consul
//! transaction that fails if the job's receipt exists and brings back the lock's LockIndex
//! (the fencing token the receipt records) and the action's watermarks. Holding it, it runs
//! the executor, writes the receipt (CAS 0: one receipt per job, whoever races) and only then
//! releases, so a waiter that sees the lock change finds the receipt. Not holding it, it blocks
//! on the lock key; when the lock changes it tries again, and a lock that changed without a
//! receipt (the holder died and its session went) is a takeover. Failures requeue with backoff;
//! after `max_attempts` a Failed receipt ends the job. Pruning old receipts first raises the
//! watch's watermark (`crate::watermark`), read with every grant: a trigger whose receipt was
//! pruned is expired, never run again, however far behind this replica is.
//!
//! One job per lock at a time on this replica: Consul lets a session re-acquire a lock it holds,
//! so two actions sharing a lock (the rollout's `step`) must be serialized here.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::backoff;
use crate::executor::{Abort, ExecError, Run, Trigger};
use crate::lock_manager::{AcquireLock, LockGrant, LocksLost, ReleaseLock};
use crate::metrics::Metrics;
use crate::ports::{ConsulPort, Fence, KvEntry, PortError};
use crate::receipt::{self, Keys, LockValue, Outcome, Receipt};
use crate::watermark;

/// Report from a Watcher: its watch saw a change that triggers an action. The trigger is what
/// the job runs with, so the message is the trigger itself.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct WatchFired(pub Trigger);

impl std::ops::Deref for WatchFired {
    type Target = Trigger;

    fn deref(&self) -> &Trigger {
        &self.0
    }
}

/// Query: the queues and what runs, for status and tests.
#[derive(Message)]
#[rtype(result = "Vec<ActionStatus>")]
pub struct GetQueues;

/// Report to observers: a job ended on this replica (ran, found done, or gave up).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct JobEnded {
    pub action: String,
    pub trigger_id: String,
    pub result: JobResult,
}

/// Subscribe to `JobEnded` reports.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observe(pub Recipient<JobEnded>);

/// Stop taking jobs and abandon the running ones without receipts (another replica will run
/// them): the SIGTERM path.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// One action's queue as `GetQueues` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionStatus {
    pub action: String,
    pub lock: String,
    pub queued: Vec<String>,
    pub running: Option<String>,
}

/// How a job ended on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// This replica ran it and wrote the receipt.
    Ran(Outcome),
    /// A receipt was already there (written by `by`).
    AlreadyDone { by: String },
    /// No receipt, but the trigger is at or below its watch's watermark: its receipt, if it
    /// ran, was pruned; it is not run (again).
    Expired { watermark: u64 },
}

/// An executor as the Dispatcher holds it: where to send runs and aborts.
#[derive(Clone)]
pub struct ExecutorRef {
    pub run: Recipient<Run>,
    pub abort: Recipient<Abort>,
}

/// One configured action.
pub struct ActionSpec {
    pub name: String,
    pub lock: String,
    pub timeout: Duration,
    pub executor: ExecutorRef,
}

/// Knobs of the protocol, from `[lock]`.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The longest a blocking wait on a held lock lasts before looking again.
    pub receipt_wait: Duration,
    /// Receipts kept per action.
    pub receipts_kept: usize,
    /// Runs before a failing job gets a Failed receipt and is dropped.
    pub max_attempts: u32,
    /// Backoff between retries of a failed job.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Upper bound of the pause between lock attempts while a free lock is under lock-delay.
    pub lock_delay: Duration,
}

#[derive(Debug, Clone)]
struct Job {
    trigger: Trigger,
    attempts: u32,
    not_before: Option<tokio::time::Instant>,
}

/// Triggers recently queued or finished, so a trigger seen twice runs once.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Seen {
    const CAP: usize = 4096;

    /// Records `id`; false if it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

struct Slot {
    spec: ActionSpec,
    queue: VecDeque<Job>,
    seen: Seen,
}

struct Running {
    action: String,
    job: Job,
    handle: SpawnHandle,
}

/// What a job future needs, shared by every job of this Dispatcher.
#[derive(Clone)]
struct Env {
    consul: Rc<dyn ConsulPort>,
    keys: Keys,
    replica: String,
    acquire: Recipient<AcquireLock>,
    release: Recipient<ReleaseLock>,
    settings: DispatchSettings,
    metrics: Metrics,
    /// Jobs this replica saw another replica's value on a lock for while it waited on that
    /// lock for any job: `(lock key, action, trigger id)`, the newest last, at most `SEEN_HELD` of them.
    /// A lock shared by several actions (the rollout's `step`) may be taken for a sibling job
    /// after its holder dies, so the lock's value no longer names the dead holder's job by
    /// the time this replica takes it up; this remembers that it was held.
    seen_held: std::cell::RefCell<VecDeque<(String, String, String)>>,
}

/// How many jobs held by others a replica remembers (a lock sees one job at a time).
const SEEN_HELD: usize = 256;

impl Env {
    /// Remembers that another replica held `lock_key` for the job `held` names.
    fn saw_held(&self, lock_key: &str, held: &LockValue) {
        if held.replica == self.replica {
            return;
        }
        let entry = (
            lock_key.to_owned(),
            held.action.clone(),
            held.trigger_id.clone(),
        );
        let mut seen = self.seen_held.borrow_mut();
        if seen.contains(&entry) {
            return;
        }
        if seen.len() == SEEN_HELD {
            seen.pop_front();
        }
        seen.push_back(entry);
    }

    /// Whether this replica saw another one hold `lock_key` for `t`'s job.
    fn was_held(&self, lock_key: &str, t: &Trigger) -> bool {
        self.seen_held
            .borrow()
            .iter()
            .any(|(k, a, id)| k == lock_key && *a == t.action && *id == t.trigger_id)
    }
}

pub struct Dispatcher {
    env: Rc<Env>,
    slots: BTreeMap<String, Slot>,
    /// Running jobs by lock name.
    running: HashMap<String, Running>,
    observers: Vec<Recipient<JobEnded>>,
    wakeup: Option<SpawnHandle>,
    stopping: bool,
    /// Where the next round of `pump` starts: one past the action started last.
    turn: usize,
    /// Every log line of this actor carries `actor`; jobs' spans are its children.
    span: tracing::Span,
}

impl Dispatcher {
    pub fn new(
        consul: Rc<dyn ConsulPort>,
        keys: Keys,
        replica: String,
        acquire: Recipient<AcquireLock>,
        release: Recipient<ReleaseLock>,
        settings: DispatchSettings,
        actions: Vec<ActionSpec>,
    ) -> Self {
        let slots = actions
            .into_iter()
            .map(|spec| {
                (
                    spec.name.clone(),
                    Slot {
                        spec,
                        queue: VecDeque::new(),
                        seen: Seen::default(),
                    },
                )
            })
            .collect();
        Self {
            env: Rc::new(Env {
                consul,
                keys,
                replica,
                acquire,
                release,
                settings,
                metrics: Metrics::default(),
                seen_held: Default::default(),
            }),
            slots,
            running: HashMap::new(),
            observers: Vec::new(),
            wakeup: None,
            stopping: false,
            turn: 0,
            span: info_span!("dispatcher", actor = "dispatcher"),
        }
    }

    /// Counts jobs, errors and takeovers in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        // Jobs share `env`; were one running, it would keep the old metrics and new jobs
        // would get these (make_mut copies rather than silently dropping them).
        Rc::make_mut(&mut self.env).metrics = metrics;
        self
    }

    /// Starts every job that can start: the head of each queue whose lock is free here and
    /// whose backoff has passed. Schedules itself for the earliest backoff still pending.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut next_wake: Option<tokio::time::Instant> = None;
        // Round robin: actions sharing a lock (SpinUp and SpinDown share `step`) take turns,
        // starting after the last one started, so a busy one cannot starve the other.
        let mut names: Vec<String> = self.slots.keys().cloned().collect();
        let turn = self.turn % names.len().max(1);
        names.rotate_left(turn);
        for (offset, name) in names.into_iter().enumerate() {
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            let lock = slot.spec.lock.clone();
            if self.running.contains_key(&lock) {
                continue;
            }
            match slot.queue.front().and_then(|j| j.not_before) {
                Some(t) if t > now => {
                    next_wake = Some(next_wake.map_or(t, |w| w.min(t)));
                    continue;
                }
                _ => {}
            }
            let Some(job) = slot.queue.pop_front() else {
                continue;
            };
            self.turn = turn + offset + 1;
            self.start(ctx, name, job);
        }
        if let Some(h) = self.wakeup.take() {
            ctx.cancel_future(h);
        }
        if let Some(t) = next_wake {
            self.wakeup = Some(ctx.run_later(t.saturating_duration_since(now), |act, ctx| {
                act.wakeup = None;
                act.pump(ctx);
            }));
        }
    }

    fn start(&mut self, ctx: &mut Context<Self>, action: String, job: Job) {
        let Some(slot) = self.slots.get(&action) else {
            return;
        };
        let lock = slot.spec.lock.clone();
        let span = info_span!(
            parent: &self.span,
            "job",
            action = %action,
            trigger = %job.trigger.trigger_id,
            attempt = job.attempts + 1,
        );
        let flow = run_job(
            self.env.clone(),
            slot.spec.executor.clone(),
            slot.spec.lock.clone(),
            slot.spec.timeout,
            job.clone(),
        )
        .instrument(span);
        let lock_for_map = lock.clone();
        let handle = ctx.spawn(flow.into_actor(self).map(move |end, act, ctx| {
            let Some(running) = act.running.remove(&lock_for_map) else {
                return;
            };
            act.finish(ctx, running, end);
            act.pump(ctx);
        }));
        self.running.insert(
            lock,
            Running {
                action,
                job,
                handle,
            },
        );
    }

    fn finish(&mut self, _ctx: &mut Context<Self>, running: Running, end: JobEnd) {
        let _span = self.span.clone().entered();
        let Running {
            action, mut job, ..
        } = running;
        let trigger_id = job.trigger.trigger_id.clone();
        let result = match end {
            JobEnd::Done(result) => result,
            JobEnd::Retry(why, (source, kind)) => {
                self.env.metrics.error(source, kind);
                job.attempts += 1;
                let delay = backoff::delay(
                    job.attempts - 1,
                    self.env.settings.retry_base,
                    self.env.settings.retry_max,
                );
                warn!(
                    %action,
                    trigger = %trigger_id,
                    attempts = job.attempts,
                    retry_in = ?delay,
                    error = %why,
                    "Job failed; requeued.",
                );
                job.not_before = Some(tokio::time::Instant::now() + delay);
                if let Some(slot) = self.slots.get_mut(&action) {
                    slot.queue.push_front(job);
                }
                return;
            }
        };
        let label = match &result {
            JobResult::Ran(outcome) => outcome.label(),
            JobResult::AlreadyDone { .. } => "already_done",
            JobResult::Expired { .. } => "expired",
        };
        self.env.metrics.job_ended(&action, label);
        match &result {
            JobResult::Ran(outcome) => {
                info!(%action, trigger = %trigger_id, outcome = outcome.label(), "Job done.")
            }
            JobResult::AlreadyDone { by } => {
                debug!(%action, trigger = %trigger_id, %by, "Job already done.")
            }
            JobResult::Expired { watermark } => warn!(
                %action,
                trigger = %trigger_id,
                position = ?job.trigger.position,
                watermark,
                "Trigger at or below what pruning removed; skipped as expired (it ran long ago, \
                 or waited while lock.receipts_kept newer ones ran)."
            ),
        }
        self.observers.retain(|o| o.connected());
        for o in &self.observers {
            o.do_send(JobEnded {
                action: action.clone(),
                trigger_id: trigger_id.clone(),
                result: result.clone(),
            });
        }
    }

    /// Abandons the job running under `lock` (no receipt) and puts it back at the head of its
    /// queue, with its executor told to stop.
    fn abandon(&mut self, ctx: &mut Context<Self>, lock: &str) {
        let Some(r) = self.running.remove(lock) else {
            return;
        };
        ctx.cancel_future(r.handle);
        if let Some(slot) = self.slots.get_mut(&r.action) {
            slot.spec.executor.abort.do_send(Abort {
                trigger_id: r.job.trigger.trigger_id.clone(),
            });
            slot.queue.push_front(Job {
                not_before: None,
                ..r.job
            });
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.pump(ctx);
    }
}

impl Supervised for Dispatcher {
    /// The queues survive in the struct; running jobs' futures died with the old context, so
    /// they go back to the head of their queues (their locks are re-acquired by the same
    /// session, which Consul allows).
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        warn!("Dispatcher restarting; requeueing running jobs.");
        self.wakeup = None;
        for (_, r) in self.running.drain() {
            if let Some(slot) = self.slots.get_mut(&r.action) {
                // The job's future died with the old context, but its executor may still be
                // running it: stop that run, or the requeued job would run beside it.
                slot.spec.executor.abort.do_send(Abort {
                    trigger_id: r.job.trigger.trigger_id.clone(),
                });
                slot.queue.push_front(Job {
                    not_before: None,
                    ..r.job
                });
            }
        }
    }
}

crate::fault::fail_handler!(Dispatcher, "dispatcher");

impl Handler<WatchFired> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: WatchFired, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        let Some(slot) = self.slots.get_mut(&msg.action) else {
            warn!(
                action = %msg.action,
                watch = %msg.watch,
                "Fired for an action that is not configured; dropped.",
            );
            return;
        };
        if !slot.seen.insert(&msg.trigger_id) {
            debug!(
                action = %msg.action,
                trigger = %msg.trigger_id,
                "Trigger already queued or done here.",
            );
            return;
        }
        debug!(action = %msg.action, trigger = %msg.trigger_id, watch = %msg.watch, "Queued.");
        slot.queue.push_back(Job {
            trigger: msg.0,
            attempts: 0,
            not_before: None,
        });
        self.pump(ctx);
    }
}

impl Handler<LocksLost> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: LocksLost, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        for key in msg.keys {
            let lock = self
                .running
                .keys()
                .find(|l| self.env.keys.lock(l) == key)
                .cloned();
            if let Some(lock) = lock {
                warn!(%lock, "Lost the lock mid-job; abandoning it without a receipt.");
                self.abandon(ctx, &lock);
            }
        }
        self.pump(ctx);
    }
}

impl Handler<GetQueues> for Dispatcher {
    type Result = Vec<ActionStatus>;

    fn handle(&mut self, _msg: GetQueues, _ctx: &mut Context<Self>) -> Vec<ActionStatus> {
        self.slots
            .values()
            .map(|s| ActionStatus {
                action: s.spec.name.clone(),
                lock: s.spec.lock.clone(),
                queued: s
                    .queue
                    .iter()
                    .map(|j| j.trigger.trigger_id.clone())
                    .collect(),
                running: self
                    .running
                    .get(&s.spec.lock)
                    .filter(|r| r.action == s.spec.name)
                    .map(|r| r.job.trigger.trigger_id.clone()),
            })
            .collect()
    }
}

impl Handler<Observe> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Observe, _ctx: &mut Context<Self>) {
        self.observers.push(msg.0);
    }
}

impl Handler<Shutdown> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.stopping = true;
        let locks: Vec<String> = self.running.keys().cloned().collect();
        for lock in locks {
            info!(%lock, "Shutting down mid-job; another replica will run it.");
            self.abandon(ctx, &lock);
        }
    }
}

/// How one run of the job flow ended.
enum JobEnd {
    Done(JobResult),
    /// Why, and the (source, kind) labels of the error for metrics.
    Retry(String, (&'static str, &'static str)),
}

impl From<PortError> for JobEnd {
    fn from(e: PortError) -> Self {
        JobEnd::Retry(format!("consul: {e}"), ("consul", e.label()))
    }
}

/// Whether the watermarks read under the lock (`read`, the entries under `key`) cover `t`: its
/// receipt was pruned, so it is never run again. Watermarks that do not decode count as none,
/// and are reported when pruning next meets them.
fn expired_by(key: &str, read: &[KvEntry], t: &Trigger) -> Option<JobResult> {
    // get-tree reads a prefix: `watermarks/notify` also lists `watermarks/notify-2`.
    let marks = read
        .iter()
        .find(|e| e.key == key)
        .and_then(|e| watermark::decode(&e.value).ok())
        .unwrap_or_default();
    watermark::covering(&marks, &t.watch, t.position)
        .map(|watermark| JobResult::Expired { watermark })
}

async fn existing_receipt(env: &Env, key: &str) -> Result<Option<Receipt>, PortError> {
    let got = env.consul.kv_get(key, 0, Duration::ZERO).await?;
    // An unreadable receipt still marks the job done: someone wrote it.
    Ok(got.value.map(|e| {
        Receipt::from_bytes(&e.value).unwrap_or_else(|| Receipt {
            action: String::new(),
            trigger_id: String::new(),
            watch: String::new(),
            outcome: Outcome::NoOp("unreadable receipt".into()),
            by: "unknown".into(),
            started_at: 0,
            finished_at: 0,
            lock_index: 0,
            attempts: 0,
            position: None,
        })
    }))
}

/// The protocol for one job, start to end; see the module header.
async fn run_job(
    env: Rc<Env>,
    executor: ExecutorRef,
    lock: String,
    timeout: Duration,
    job: Job,
) -> JobEnd {
    match run_job_inner(&env, executor, &lock, timeout, job).await {
        Ok(end) => end,
        Err(end) => end,
    }
}

async fn run_job_inner(
    env: &Env,
    executor: ExecutorRef,
    lock: &str,
    timeout: Duration,
    job: Job,
) -> Result<JobEnd, JobEnd> {
    let t = &job.trigger;
    let receipt_key = env.keys.receipt(&t.action, &t.trigger_id);
    let lock_key = env.keys.lock(lock);
    // A positioned trigger may have expired: its watermarks are read with the lock.
    let marks_key = t.position.is_some().then(|| env.keys.watermarks(&t.action));

    // Encoded at each try: `since` is when the lock was taken, not when the job began to wait.
    let holder = || {
        LockValue {
            replica: env.replica.clone(),
            action: t.action.clone(),
            trigger_id: t.trigger_id.clone(),
            since: Some(crate::receipt::now_ms()),
        }
        .encode()
    };
    let mut waits = 0u32;
    // Whether another replica held the lock for this very job while we waited (or its dead
    // session left the lock naming it): if we then get the lock and find no receipt, we are
    // taking the job over from it.
    let mut holder_had_it = false;
    // One round trip decides: the receipt must not exist, the lock is taken, and its
    // LockIndex and the watermarks come back with it, all at one Raft index. So the job runs
    // only if no receipt existed at the moment this replica's hold began, however long it
    // waited or slept before.
    let (lock_index, read, session) = loop {
        let grant = env
            .acquire
            .send(AcquireLock {
                key: lock_key.clone(),
                holder: holder(),
                unless: Some(receipt_key.clone()),
                read: marks_key.clone(),
            })
            .await
            .map_err(|e| JobEnd::Retry(format!("lock manager: {e}"), ("lock", "mailbox")))?
            .map_err(|e| JobEnd::Retry(format!("lock: {e}"), ("lock", e.kind())))?;
        match grant {
            LockGrant::Held {
                lock_index,
                read,
                prior,
                session,
            } => {
                // The lock still named this job for another replica, and no receipt exists:
                // that holder let it go unfinished (it died, or gave up), whether or not we
                // saw it hold the lock while we waited.
                holder_had_it |= prior
                    .as_deref()
                    .and_then(LockValue::decode)
                    .is_some_and(|h| h.holds(t) && h.replica != env.replica);
                // Or it held it while this replica waited for a sibling job on the same lock,
                // and that sibling's holder has since left its own value there.
                holder_had_it |= env.was_held(&lock_key, t);
                break (lock_index, read, session);
            }
            LockGrant::Present => {
                let by = existing_receipt(env, &receipt_key)
                    .await?
                    .map_or_else(|| "unknown".to_owned(), |r| r.by);
                return Ok(JobEnd::Done(JobResult::AlreadyDone { by }));
            }
            LockGrant::Busy => {}
        }
        // Another replica holds it (or lock-delay keeps it free for a while). The holder
        // writes the receipt before releasing, so the lock key changing is the moment to try
        // again.
        let current = env.consul.kv_get(&lock_key, 0, Duration::ZERO).await?;
        let held = current.value.as_ref().is_some_and(|e| e.session.is_some());
        let named = current
            .value
            .as_ref()
            .and_then(|e| LockValue::decode(&e.value));
        holder_had_it |= named.as_ref().is_some_and(|h| h.holds(t));
        if let Some(h) = &named {
            env.saw_held(&lock_key, h);
        }
        if held {
            debug!(lock = %lock_key, "Lock held by another replica; waiting for it to change.");
            env.consul
                .kv_get(&lock_key, current.index, env.settings.receipt_wait)
                .await?;
        } else {
            // Free but refused is lock-delay, which follows a session's invalidation: if the
            // lock still names this job, its holder died with it unfinished.
            waits += 1;
            let pause = backoff::delay(
                waits.min(6),
                Duration::from_millis(100),
                env.settings.lock_delay.max(Duration::from_millis(200)),
            );
            debug!(
                lock = %lock_key,
                ?pause,
                "Lock free but refused (lock-delay); trying again shortly.",
            );
            tokio::time::sleep(pause).await;
        }
    };

    // Holding the lock from here: every exit releases it, and waits for the release to land
    // before the next job of this lock may ask for it again. Consul lets a session re-acquire
    // a lock it holds, so a release still in flight could otherwise free the lock under the
    // next job's feet and let another replica run that job too.
    let result = async {
        if let Some(key) = &marks_key {
            if let Some(expired) = expired_by(key, &read, t) {
                return Ok(JobEnd::Done(expired));
            }
        }
        if holder_had_it {
            warn!(
                lock_index,
                "Taking over a job whose holder let the lock go without a receipt."
            );
            env.metrics.takeover(&lock_key);
        }
        let started_at = receipt::now_ms();
        info!(lock_index, "Holding the lock; running the action.");
        let ran = executor
            .run
            .send(Run {
                trigger: t.clone(),
                timeout,
                fence: Fence {
                    lock: lock_key.clone(),
                    session: session.clone(),
                },
            })
            .await
            .unwrap_or_else(|e| Err(ExecError::Port(format!("executor: {e}"))));
        let attempts = job.attempts + 1;
        let outcome = match ran {
            Ok(outcome) => outcome,
            Err(e) if e.is_final() => {
                env.metrics.error("action", e.kind());
                warn!(
                    attempts,
                    error = %e,
                    "The action rejected this trigger; recording it as failed.",
                );
                Outcome::Failed(format!("rejected: {e}"))
            }
            // However many attempts it took: a replica that lost the lock must not record the
            // job as failed (the receipt would end it for the holder too). Requeued, it finds
            // the holder's receipt, or takes the lock again if the holder died too.
            Err(ExecError::LockLost(why)) => {
                return Err(JobEnd::Retry(why, ("action", "lock_lost")));
            }
            Err(e) if attempts < env.settings.max_attempts => {
                return Err(JobEnd::Retry(
                    format!("{} ({})", e, e.kind()),
                    ("action", e.kind()),
                ));
            }
            Err(e) => {
                env.metrics.error("action", e.kind());
                warn!(attempts, error = %e, "Giving up on the job; recording it as failed.");
                Outcome::Failed(e.to_string())
            }
        };
        let receipt = Receipt {
            action: t.action.clone(),
            trigger_id: t.trigger_id.clone(),
            watch: t.watch.clone(),
            outcome: outcome.clone(),
            by: env.replica.clone(),
            started_at,
            finished_at: receipt::now_ms(),
            lock_index,
            attempts,
            position: t.position,
        };
        // Retried until it lands: the work is done and a missing receipt would repeat it.
        let mut tries = 0u32;
        loop {
            match env
                .consul
                .kv_put(&receipt_key, receipt.to_bytes(), Some(0))
                .await
            {
                Ok(true) => break,
                Ok(false) => {
                    warn!("A receipt was already there; another holder ran this job too.");
                    break;
                }
                Err(e) if tries < 10 => {
                    tries += 1;
                    let pause =
                        backoff::delay(tries, Duration::from_millis(100), Duration::from_secs(5));
                    warn!(error = %e, retry_in = ?pause, "Could not write the receipt; retrying.");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    return Err(JobEnd::Retry(
                        format!("writing the receipt: {e}"),
                        ("consul", e.label()),
                    ))
                }
            }
        }
        prune(env, &t.action).await;
        Ok(JobEnd::Done(JobResult::Ran(outcome)))
    }
    .await;
    // Releasing after a stale grant is harmless: Consul releases only for the holding session.
    let _ = env
        .release
        .send(ReleaseLock {
            key: lock_key.clone(),
        })
        .await;
    result
}

/// Whether a lock's value (the holder JSON written on acquire) names `t`'s job.
impl LockValue {
    /// Whether this holder held the lock for `t`'s job.
    fn holds(&self, t: &Trigger) -> bool {
        self.action == t.action && self.trigger_id == t.trigger_id
    }
}

/// Deletes the oldest receipts of `action` beyond the configured count, after raising the
/// action's watermarks over them (`crate::watermark`): never a delete the watermark does not
/// cover. Best effort: a failure leaves a few extra receipts, never fewer.
async fn prune(env: &Env, action: &str) {
    let prefix = env.keys.receipts(action);
    let Ok(list) = env.consul.kv_list(&prefix).await else {
        return;
    };
    let mut receipts = HashMap::new();
    let entries = list
        .value
        .into_iter()
        .map(|e| {
            if let Some(r) = Receipt::from_bytes(&e.value) {
                receipts.insert(e.key.clone(), r);
            }
            (e.key, e.modify_index)
        })
        .collect();
    let doomed = receipt::to_prune(entries, env.settings.receipts_kept);
    if doomed.is_empty() {
        return;
    }
    let pruned: Vec<Receipt> = doomed.iter().filter_map(|k| receipts.remove(k)).collect();
    let marks = env.keys.watermarks(action);
    match watermark::raise(env.consul.as_ref(), &marks, &pruned).await {
        Ok(true) => {}
        Ok(false) => {
            warn!(
                key = %marks,
                "Could not raise the watermark (a bad value, or lost races); no receipt pruned.",
            );
            return;
        }
        Err(e) => {
            debug!(key = %marks, error = %e, "Could not raise the watermark; no receipt pruned.");
            return;
        }
    }
    for key in doomed {
        if let Err(e) = env.consul.kv_delete(&key).await {
            debug!(%key, error = %e, "Could not prune a receipt.");
            return;
        }
    }
}
