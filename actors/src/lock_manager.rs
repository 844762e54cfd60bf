//! LockManager: the replica's Consul session and the locks taken with it.
//!
//! It creates the session (Behavior=release, the configured TTL and lock-delay), renews it at
//! TTL/2, and when Consul no longer knows it (TTL lapsed during a pause, node check failed) it
//! tells its listeners that every lock is gone before creating a new one. The Dispatcher asks
//! it for locks; `tree.rs` wires it. On shutdown it destroys the session, which releases every
//! lock at once so another replica can take over without waiting for the TTL.
//!
//! A replica that dies cannot destroy its session, and Consul ends a session whose TTL lapsed
//! only up to 2 × TTL later. So, with `lock.check_ttl`, the session is also tied to a liveness
//! check of the replica's own: a TTL check on its agent, registered (passing) just before the
//! session is created and passed at a third of its TTL. When the replica dies the check turns
//! critical and Consul invalidates the session at once: a takeover then waits the check's TTL
//! plus lock-delay. If the agent refuses the check (an ACL token without `service:write`), the
//! session is made without it, said once, and the TTL is the only way a dead replica's locks go.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::metrics::Metrics;
use crate::ports::{Acquire, Acquired, ConsulPort, KvEntry, LivenessSpec, PortError, SessionSpec};

/// Take the lock on `key`, writing `holder` as its value, unless `unless` exists; read the
/// keys under `read` with it. One Consul round trip.
#[derive(Message)]
#[rtype(result = "Result<LockGrant, LockError>")]
pub struct AcquireLock {
    pub key: String,
    pub holder: Vec<u8>,
    /// Take nothing if this key exists (the job's receipt).
    pub unless: Option<String>,
    /// Read the keys under this prefix in the same round trip (the job's watermarks).
    pub read: Option<String>,
}

/// Let go of the lock on `key` (no-op if not held).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseLock {
    pub key: String,
}

/// Report to listeners: the session was lost, and with it every lock in `keys`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct LocksLost {
    pub keys: Vec<String>,
}

/// Subscribe `listener` to `LocksLost`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<LocksLost>);

/// Query: the session ID, once one exists.
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct GetSession;

/// Query: why the last try to create a session failed, while this replica has none (a refused
/// ACL token shows here, for `/readyz`).
#[derive(Message)]
#[rtype(result = "Option<PortError>")]
pub struct GetSessionError;

/// Destroy the session (releasing every lock) and stop: the SIGTERM path.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The answer to `AcquireLock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockGrant {
    /// This replica holds it, for the `lock_index`-th acquisition (the fencing token a
    /// receipt records); `read` is what the prefix asked for held at that moment; `prior` the
    /// lock's value just before (see `Acquired::Held`).
    Held {
        session: String,
        lock_index: u64,
        read: Vec<KvEntry>,
        prior: Option<Vec<u8>>,
    },
    /// `unless` exists: nothing was taken.
    Present,
    /// Another session holds it, or lock-delay is in force.
    Busy,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    #[error("no Consul session yet")]
    NoSession,
    #[error("consul: {0}")]
    Consul(#[from] PortError),
}

impl LockError {
    pub fn kind(&self) -> &'static str {
        match self {
            LockError::NoSession => "no_session",
            LockError::Consul(e) => e.label(),
        }
    }
}

pub struct LockManager {
    consul: Rc<dyn ConsulPort>,
    spec: SessionSpec,
    /// The liveness check each session is tied to, when `lock.check_ttl` is set.
    liveness: Option<LivenessSpec>,
    /// Why the last session could not be tied to the liveness check (the agent refused it).
    liveness_refused: Option<PortError>,
    state: State,
    /// Locks held, by key, with the session that took them.
    held: BTreeMap<String, String>,
    listeners: Vec<Recipient<LocksLost>>,
    /// The one pending tick (create or renew), cancelled on shutdown.
    timer: Option<SpawnHandle>,
    /// The next pass of the liveness check, while a session is tied to it.
    pass_timer: Option<SpawnHandle>,
    metrics: Metrics,
    /// Every log line of this actor carries `actor`.
    span: tracing::Span,
}

/// Where the replica's session stands. Each state carries what it needs, so that, say, a
/// renewal time without a session or a create in flight after shutdown cannot be written.
#[derive(Debug)]
enum State {
    /// No session: the next tick creates one. `failures` in a row so far, for backoff, and why
    /// the last one failed (`/readyz` shows it).
    Absent {
        failures: u32,
        last_error: Option<PortError>,
    },
    /// A create is in flight; its answer moves on to `Live` or back to `Absent`.
    Creating {
        failures: u32,
        last_error: Option<PortError>,
    },
    /// Consul made session `id`; renewed last at `renewed_at`, and failed to renew `failures`
    /// times since.
    Live {
        id: String,
        renewed_at: Instant,
        failures: u32,
        /// The liveness check the session is tied to, if it is.
        check: Option<Linked>,
    },
    /// Shutdown came while a create was in flight: Consul may still make the session, so its
    /// answer is awaited and what it made destroyed before these Shutdowns are answered.
    StoppingAfterCreate { waiters: Vec<oneshot::Sender<()>> },
    /// Shut down: the session destroyed (or being destroyed). Idle for good, restarts included.
    Stopped,
}

/// A session's liveness check: its ID, and when the last pass that Consul took was sent (the
/// check turns critical no earlier than its TTL after that).
#[derive(Debug)]
struct Linked {
    id: String,
    passed_at: Instant,
}

/// A session made, and the liveness check it is tied to (with when it was registered), or why
/// it is not.
struct Created {
    id: String,
    check: Option<Linked>,
    refused: Option<PortError>,
}

impl LockManager {
    pub fn new(consul: Rc<dyn ConsulPort>, spec: SessionSpec) -> Self {
        Self {
            consul,
            spec,
            liveness: None,
            liveness_refused: None,
            pass_timer: None,
            state: State::Absent {
                failures: 0,
                last_error: None,
            },
            held: BTreeMap::new(),
            listeners: Vec::new(),
            timer: None,
            metrics: Metrics::default(),
            span: tracing::info_span!("lock_manager", actor = "lock_manager"),
        }
    }

    /// Ties each session to the liveness check `liveness` as well (see the module notes).
    pub fn with_liveness(mut self, liveness: Option<LivenessSpec>) -> Self {
        self.liveness = liveness;
        self
    }

    /// Reports locks held and session errors to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The live session's ID.
    fn session(&self) -> Option<&str> {
        match &self.state {
            State::Live { id, .. } => Some(id),
            _ => None,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        self.timer = Some(ctx.run_later(after, |act, ctx| {
            act.timer = None;
            act.tick(ctx);
        }));
    }

    /// The wait before the next try after `failures` failures in a row.
    fn backoff(&self, failures: u32) -> Duration {
        backoff::delay(failures, Duration::from_millis(250), self.spec.ttl / 2)
    }

    /// Create the session if there is none, else renew it.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        match &mut self.state {
            State::Absent {
                failures,
                last_error,
            } => {
                self.state = State::Creating {
                    failures: *failures,
                    last_error: last_error.take(),
                };
                let fut = create(
                    self.consul.clone(),
                    self.spec.clone(),
                    self.liveness.clone(),
                );
                ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
                    let _span = act.span.clone().entered();
                    act.created(res, ctx);
                }));
            }
            State::Live { id, .. } => {
                let id = id.clone();
                let fut = self.consul.session_renew(&id);
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    let _span = act.span.clone().entered();
                    act.renewed(&id, res, ctx);
                }));
            }
            // The create's answer, or nothing ever again, moves these on.
            State::Creating { .. } | State::StoppingAfterCreate { .. } | State::Stopped => {}
        }
    }

    fn created(&mut self, res: Result<Created, PortError>, ctx: &mut Context<Self>) {
        let failures = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Creating { failures, .. } => failures,
            State::StoppingAfterCreate { waiters } => {
                ctx.spawn(self.destroy_and_stop(res.ok().map(|c| c.id), waiters));
                return;
            }
            // A restart dropped the create that this answers; the state has moved on.
            other => {
                self.state = other;
                if let Ok(created) = res {
                    ctx.spawn(self.destroy(created.id));
                }
                return;
            }
        };
        match res {
            Ok(Created { id, check, refused }) => {
                match (&refused, &self.liveness_refused) {
                    (Some(e), None) => warn!(
                        error = %e,
                        "The agent refused the replica's liveness check: the session is tied to \
                         its TTL only, so a takeover after this replica dies waits up to twice \
                         the session TTL plus lock-delay.",
                    ),
                    (None, Some(_)) if check.is_some() => {
                        info!("The session is tied to the replica's liveness check again.");
                    }
                    _ => {}
                }
                self.liveness_refused = refused;
                info!(
                    session = %id,
                    liveness_check = check.as_ref().map(|c| c.id.as_str()),
                    "Created the replica's Consul session.",
                );
                let linked = check.is_some();
                self.state = State::Live {
                    id,
                    renewed_at: Instant::now(),
                    failures: 0,
                    check,
                };
                self.schedule(ctx, self.spec.ttl / 2);
                if linked {
                    self.schedule_pass(ctx, self.check_ttl() / 3);
                }
            }
            Err(e) => {
                let failures = failures + 1;
                let after = self.backoff(failures);
                self.metrics.error("consul", e.label());
                warn!(
                    error = %e,
                    kind = e.label(),
                    retry_in = ?after,
                    "Could not create a Consul session.",
                );
                self.state = State::Absent {
                    failures,
                    last_error: Some(e),
                };
                self.schedule(ctx, after);
            }
        }
    }

    fn renewed(&mut self, id: &str, res: Result<bool, PortError>, ctx: &mut Context<Self>) {
        let State::Live {
            id: live,
            renewed_at,
            failures,
            ..
        } = &mut self.state
        else {
            return; // shut down while the renew was in flight
        };
        if live != id {
            return;
        }
        match res {
            Ok(true) => {
                debug!(session = %id, "Renewed the session.");
                *failures = 0;
                *renewed_at = Instant::now();
                self.schedule(ctx, self.spec.ttl / 2);
            }
            Ok(false) => {
                warn!(session = %id, "Consul invalidated the session; its locks are gone.");
                self.state = State::Absent {
                    failures: 0,
                    last_error: None,
                };
                self.notify_lost();
                self.schedule(ctx, Duration::ZERO);
            }
            Err(e) => {
                // Consul keeps a session for at least its TTL: until then the locks are still
                // ours. Past it they may not be, so stop trusting them.
                let stale = renewed_at.elapsed() >= self.spec.ttl;
                *failures += 1;
                let failures = *failures;
                let after = self.backoff(failures).min(self.spec.ttl / 4);
                self.metrics.error("consul", e.label());
                warn!(
                    session = %id,
                    error = %e,
                    kind = e.label(),
                    retry_in = ?after,
                    "Could not renew the session.",
                );
                if stale && !self.held.is_empty() {
                    warn!(
                        session = %id,
                        "Session not renewed for a whole TTL; treating its locks as lost.",
                    );
                    self.notify_lost();
                }
                self.schedule(ctx, after);
            }
        }
    }

    /// The liveness check's TTL, when there is one.
    fn check_ttl(&self) -> Duration {
        self.liveness.as_ref().map_or(Duration::MAX, |l| l.ttl)
    }

    fn schedule_pass(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if let Some(h) = self.pass_timer.take() {
            ctx.cancel_future(h);
        }
        self.pass_timer = Some(ctx.run_later(after, |act, ctx| {
            act.pass_timer = None;
            act.pass(ctx);
        }));
    }

    /// Passes the live session's liveness check.
    fn pass(&mut self, ctx: &mut Context<Self>) {
        let State::Live {
            id,
            check: Some(check),
            ..
        } = &self.state
        else {
            return;
        };
        let (session, sent) = (id.clone(), Instant::now());
        let fut = self.consul.liveness_pass(&check.id);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let _span = act.span.clone().entered();
            act.passed(&session, sent, res, ctx);
        }));
    }

    fn passed(
        &mut self,
        session: &str,
        sent: Instant,
        res: Result<bool, PortError>,
        ctx: &mut Context<Self>,
    ) {
        let ttl = self.check_ttl();
        let State::Live {
            id,
            check: Some(check),
            ..
        } = &mut self.state
        else {
            return; // the session went while the pass was in flight
        };
        if id != session {
            return;
        }
        match res {
            Ok(true) => {
                check.passed_at = sent;
                self.schedule_pass(ctx, ttl / 3);
            }
            Ok(false) => {
                // Consul invalidates the sessions tied to a check the agent dropped (its
                // service reaped after a long stall, an agent that lost its state).
                warn!(
                    session = %session,
                    check = %check.id,
                    "The agent no longer has the replica's liveness check; its session and \
                     locks are gone with it.",
                );
                let id = session.to_owned();
                self.state = State::Absent {
                    failures: 0,
                    last_error: None,
                };
                self.notify_lost();
                ctx.spawn(self.destroy(id));
                self.schedule(ctx, Duration::ZERO);
            }
            Err(e) => {
                // The check turns critical a TTL after the last pass Consul took, and the
                // session with it: past that the locks may be another replica's.
                let stale = check.passed_at.elapsed() >= ttl;
                let check = check.id.clone();
                self.metrics.error("consul", e.label());
                warn!(
                    session = %session,
                    check = %check,
                    error = %e,
                    kind = e.label(),
                    "Could not pass the replica's liveness check.",
                );
                if stale && !self.held.is_empty() {
                    warn!(
                        session = %session,
                        "Liveness check not passed for a whole check TTL; treating the \
                         session's locks as lost.",
                    );
                    self.notify_lost();
                }
                self.schedule_pass(ctx, (ttl / 6).max(Duration::from_millis(100)));
            }
        }
    }

    /// Destroys session `id`, logging how that went.
    fn destroy(&self, id: String) -> ResponseActFuture<Self, ()> {
        let fut = self.consul.session_destroy(&id);
        Box::pin(fut.into_actor(self).map(move |res, act, _ctx| {
            let _span = act.span.clone().entered();
            match res {
                Ok(()) => info!(session = %id, "Destroyed the session; its locks are free."),
                Err(e) => warn!(
                    session = %id,
                    error = %e,
                    "Could not destroy the session; its locks go when its TTL lapses.",
                ),
            }
        }))
    }

    /// Destroys session `id` (if any), then stops and answers `waiters`.
    fn destroy_and_stop(
        &mut self,
        id: Option<String>,
        waiters: Vec<oneshot::Sender<()>>,
    ) -> ResponseActFuture<Self, ()> {
        self.state = State::Stopped;
        let destroyed = match id {
            Some(id) => self.destroy(id),
            None => Box::pin(fut::ready(())),
        };
        // After the session: removing the check first would invalidate the session, and with
        // it the locks, under lock-delay.
        let check = self
            .liveness
            .as_ref()
            .filter(|_| self.liveness_refused.is_none())
            .map(|l| l.id.clone());
        let consul = self.consul.clone();
        Box::pin(destroyed.then(move |(), act, _ctx| {
            let deregistered = async move {
                if let Some(check) = check {
                    if let Err(e) = consul.liveness_deregister(&check).await {
                        warn!(
                            check = %check,
                            error = %e,
                            "Could not remove the replica's liveness check; the agent reaps \
                             it a minute after it turns critical.",
                        );
                    }
                }
            };
            deregistered
                .into_actor(act)
                .map(move |(), _act, ctx: &mut Context<Self>| {
                    for w in waiters {
                        let _ = w.send(());
                    }
                    ctx.stop();
                })
        }))
    }

    fn notify_lost(&mut self) {
        let keys: Vec<String> = std::mem::take(&mut self.held).into_keys().collect();
        if keys.is_empty() {
            return;
        }
        for key in &keys {
            self.metrics.lock_held(key, false);
        }
        self.listeners.retain(|l| l.connected());
        for l in &self.listeners {
            l.do_send(LocksLost { keys: keys.clone() });
        }
    }
}

impl Actor for LockManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tick(ctx);
        // After a restart: the pass timer went with the old context.
        if matches!(self.state, State::Live { check: Some(_), .. }) {
            self.schedule_pass(ctx, Duration::ZERO);
        }
    }
}

impl Supervised for LockManager {
    /// The struct survives a restart: keep the session and check it at once (a renew tells
    /// whether Consul still knows it). The restart dropped every future in flight, so a create
    /// in flight is tried again, and Shutdowns waiting on one are answered now (Consul may
    /// have made that session; its TTL ends it).
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.timer = None;
        self.pass_timer = None;
        self.state = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Creating {
                failures,
                last_error,
            } => State::Absent {
                failures,
                last_error,
            },
            State::StoppingAfterCreate { waiters } => {
                drop(waiters);
                State::Stopped
            }
            other => other,
        };
        // After Shutdown the supervisor restarts the stopped actor until the system stops;
        // `Stopped` keeps it idle, so that is no news.
        if !matches!(self.state, State::Stopped) {
            warn!("LockManager restarting.");
        }
    }
}

crate::fault::fail_handler!(LockManager, "lock_manager");

impl Handler<AcquireLock> for LockManager {
    type Result = ResponseActFuture<Self, Result<LockGrant, LockError>>;

    fn handle(&mut self, msg: AcquireLock, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(session) = self.session().map(str::to_owned) else {
            return Box::pin(fut::ready(Err(LockError::NoSession)));
        };
        let key = msg.key;
        let fut = self.consul.kv_acquire(&Acquire {
            key: key.clone(),
            value: msg.holder,
            session: session.clone(),
            unless: msg.unless,
            read: msg.read,
        });
        Box::pin(fut.into_actor(self).map(move |res, act, _ctx| {
            let _span = act.span.clone().entered();
            let (lock_index, read, prior) = match res? {
                Acquired::Held {
                    lock_index,
                    read,
                    prior,
                } => (lock_index, read, prior),
                Acquired::Present => return Ok(LockGrant::Present),
                Acquired::Busy => return Ok(LockGrant::Busy),
            };
            // A session lost while the call was in flight must not be recorded as holding.
            if act.session() != Some(session.as_str()) {
                return Ok(LockGrant::Busy);
            }
            debug!(lock = %key, session = %session, lock_index, "Acquired lock.");
            act.metrics.lock_held(&key, true);
            act.held.insert(key, session.clone());
            Ok(LockGrant::Held {
                session,
                lock_index,
                read,
                prior,
            })
        }))
    }
}

impl Handler<ReleaseLock> for LockManager {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: ReleaseLock, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(session) = self.held.remove(&msg.key) else {
            return Box::pin(fut::ready(()));
        };
        // Not ours any more from here, whether or not the release lands: the session goes on
        // shutdown at the latest.
        self.metrics.lock_held(&msg.key, false);
        let key = msg.key;
        let fut = self.consul.kv_release(&key, &session);
        Box::pin(fut.into_actor(self).map(move |res, act, _ctx| {
            let _span = act.span.clone().entered();
            match res {
                Ok(_) => debug!(lock = %key, "Released lock."),
                // The lock goes with the session at the latest; nothing else to do.
                Err(e) => warn!(
                    lock = %key,
                    error = %e,
                    "Could not release lock; it goes when the session does.",
                ),
            }
        }))
    }
}

impl Handler<Subscribe> for LockManager {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Context<Self>) {
        self.listeners.push(msg.0);
    }
}

impl Handler<GetSession> for LockManager {
    type Result = Option<String>;

    fn handle(&mut self, _msg: GetSession, _ctx: &mut Context<Self>) -> Option<String> {
        self.session().map(str::to_owned)
    }
}

impl Handler<GetSessionError> for LockManager {
    type Result = Option<PortError>;

    fn handle(&mut self, _msg: GetSessionError, _ctx: &mut Context<Self>) -> Option<PortError> {
        match &self.state {
            State::Absent { last_error, .. } | State::Creating { last_error, .. } => {
                last_error.clone()
            }
            _ => None,
        }
    }
}

impl Handler<Shutdown> for LockManager {
    /// A plain future, not the actor's: it must complete after the actor has stopped.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        let _span = self.span.clone().entered();
        for h in [self.timer.take(), self.pass_timer.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(h);
        }
        for key in std::mem::take(&mut self.held).into_keys() {
            self.metrics.lock_held(&key, false);
        }
        let (tx, rx) = oneshot::channel();
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Creating { .. } => {
                // Stopping now would drop the create's answer and leave its session behind
                // until its TTL lapsed; its answer destroys it and answers this.
                debug!("Shutdown while the session is being created; waiting for it.");
                self.state = State::StoppingAfterCreate { waiters: vec![tx] };
            }
            State::StoppingAfterCreate { mut waiters } => {
                waiters.push(tx);
                self.state = State::StoppingAfterCreate { waiters };
            }
            State::Live { id, .. } => {
                ctx.spawn(self.destroy_and_stop(Some(id), vec![tx]));
            }
            State::Absent { .. } | State::Stopped => {
                ctx.spawn(self.destroy_and_stop(None, vec![tx]));
            }
        }
        // Answered once the actor has done all it will; a dropped sender (a restart) means
        // the same.
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Registers the liveness check (when there is one), then creates the session tied to it. A
/// check the agent refuses for good (ACL, an old agent) leaves the session without it; one it
/// could not answer now fails the create, to be tried again.
async fn create(
    consul: Rc<dyn ConsulPort>,
    spec: SessionSpec,
    liveness: Option<LivenessSpec>,
) -> Result<Created, PortError> {
    let registered = Instant::now();
    let (check, refused) = match liveness {
        None => (None, None),
        Some(l) => match consul.liveness_register(&l).await {
            Ok(()) => (Some(l.id), None),
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => (None, Some(e)),
        },
    };
    let id = consul
        .session_create(&SessionSpec {
            check: check.clone(),
            ..spec
        })
        .await?;
    Ok(Created {
        id,
        check: check.map(|id| Linked {
            id,
            passed_at: registered,
        }),
        refused,
    })
}
