//! LockManager: the replica's Consul session and the locks taken with it.
//!
//! It creates the session (Behavior=release, the configured TTL and lock-delay), renews it at
//! TTL/2, and when Consul no longer knows it (TTL lapsed during a pause, node check failed) it
//! tells its listeners that every lock is gone before creating a new one. The Dispatcher asks
//! it for locks; `tree.rs` wires it. On shutdown it destroys the session, which releases every
//! lock at once so another replica can take over without waiting for the TTL.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::metrics::Metrics;
use crate::ports::{Acquire, Acquired, ConsulPort, KvEntry, PortError, SessionSpec};

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
    /// receipt records); `read` is what the prefix asked for held at that moment.
    Held {
        session: String,
        lock_index: u64,
        read: Vec<KvEntry>,
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
    session: Option<String>,
    /// Locks held, by key, with the session that took them.
    held: BTreeMap<String, String>,
    listeners: Vec<Recipient<LocksLost>>,
    /// Consecutive failures of create or renew, for backoff.
    failures: u32,
    /// Why the last create failed, until one succeeds.
    create_error: Option<PortError>,
    /// When the last renew succeeded; a session not renewed for a TTL may be gone.
    renewed_at: Option<tokio::time::Instant>,
    timer: Option<SpawnHandle>,
    shutting_down: bool,
    /// A session create is in flight: Consul may make the session after a Shutdown arrived,
    /// so Shutdown waits for it to land and destroys what it made.
    creating: bool,
    /// Shutdowns waiting for that create to land and its session to be destroyed.
    stop_waiters: Vec<oneshot::Sender<()>>,
    metrics: Metrics,
    /// Every log line of this actor carries `actor`.
    span: tracing::Span,
}

impl LockManager {
    pub fn new(consul: Rc<dyn ConsulPort>, spec: SessionSpec) -> Self {
        Self {
            consul,
            spec,
            session: None,
            held: BTreeMap::new(),
            listeners: Vec::new(),
            failures: 0,
            create_error: None,
            renewed_at: None,
            timer: None,
            shutting_down: false,
            creating: false,
            stop_waiters: Vec::new(),
            metrics: Metrics::default(),
            span: tracing::info_span!("lock_manager", actor = "lock_manager"),
        }
    }

    /// Reports locks held and session errors to `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
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

    fn retry_after(&mut self) -> Duration {
        self.failures += 1;
        backoff::delay(self.failures, Duration::from_millis(250), self.spec.ttl / 2)
    }

    /// Create the session if there is none, else renew it.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        if self.shutting_down {
            return;
        }
        match self.session.clone() {
            None => {
                let fut = self.consul.session_create(&self.spec);
                self.creating = true;
                ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
                    let _span = act.span.clone().entered();
                    act.creating = false;
                    if act.shutting_down {
                        ctx.spawn(act.destroy_and_stop(res.ok()));
                        return;
                    }
                    act.created(res, ctx);
                }));
            }
            Some(id) => {
                let fut = self.consul.session_renew(&id);
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let _span = act.span.clone().entered();
            match res {
                    Ok(true) => {
                        debug!(session = %id, "Renewed the session.");
                        act.failures = 0;
                        act.renewed_at = Some(tokio::time::Instant::now());
                        act.schedule(ctx, act.spec.ttl / 2);
                    }
                    Ok(false) => {
                        warn!(session = %id, "Consul invalidated the session; its locks are gone.");
                        act.lose_session();
                        act.schedule(ctx, Duration::ZERO);
                    }
                    Err(e) => {
                        // Consul keeps a session for at least its TTL: until then the locks
                        // are still ours. Past it they may not be, so stop trusting them.
                        let stale = act
                            .renewed_at
                            .is_none_or(|t| t.elapsed() >= act.spec.ttl);
                        let after = act.retry_after().min(act.spec.ttl / 4);
                        act.metrics.error("consul", e.label());
                        warn!(
                            session = %id,
                            error = %e,
                            kind = e.label(),
                            retry_in = ?after,
                            "Could not renew the session.",
                        );
                        if stale && !act.held.is_empty() {
                            warn!(
                                session = %id,
                                "Session not renewed for a whole TTL; treating its locks as lost.",
                            );
                            act.notify_lost();
                        }
                        act.schedule(ctx, after);
                    }
            }
                }));
            }
        }
    }

    fn created(&mut self, res: Result<String, PortError>, ctx: &mut Context<Self>) {
        match res {
            Ok(id) => {
                info!(session = %id, "Created the replica's Consul session.");
                self.session = Some(id);
                self.failures = 0;
                self.create_error = None;
                self.renewed_at = Some(tokio::time::Instant::now());
                self.schedule(ctx, self.spec.ttl / 2);
            }
            Err(e) => {
                let after = self.retry_after();
                self.metrics.error("consul", e.label());
                warn!(
                    error = %e,
                    kind = e.label(),
                    retry_in = ?after,
                    "Could not create a Consul session.",
                );
                self.create_error = Some(e);
                self.schedule(ctx, after);
            }
        }
    }

    /// Destroys session `id` (if any), then stops and answers every waiting Shutdown.
    fn destroy_and_stop(&mut self, id: Option<String>) -> ResponseActFuture<Self, ()> {
        let done = |act: &mut Self, ctx: &mut Context<Self>| {
            for w in act.stop_waiters.drain(..) {
                let _ = w.send(());
            }
            ctx.stop();
        };
        let Some(id) = id else {
            return Box::pin(fut::ready(()).map(move |(), act, ctx| done(act, ctx)));
        };
        let fut = self.consul.session_destroy(&id);
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            let _span = act.span.clone().entered();
            match res {
                Ok(()) => info!(session = %id, "Destroyed the session; its locks are free."),
                Err(e) => warn!(session = %id, error = %e, "Could not destroy the session; its locks go when its TTL lapses."),
            }
            done(act, ctx);
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

    fn lose_session(&mut self) {
        self.session = None;
        self.renewed_at = None;
        self.notify_lost();
    }
}

impl Actor for LockManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tick(ctx);
    }
}

impl Supervised for LockManager {
    /// The struct survives a restart: keep the session and check it at once (a renew tells
    /// whether Consul still knows it).
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        self.timer = None;
        // After Shutdown the supervisor restarts the stopped actor until the system stops;
        // `shutting_down` survives in the struct and keeps it idle, so that is no news.
        if !self.shutting_down {
            warn!("LockManager restarting.");
        }
    }
}

crate::fault::fail_handler!(LockManager, "lock_manager");

impl Handler<AcquireLock> for LockManager {
    type Result = ResponseActFuture<Self, Result<LockGrant, LockError>>;

    fn handle(&mut self, msg: AcquireLock, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(session) = self.session.clone() else {
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
            let (lock_index, read) = match res? {
                Acquired::Held { lock_index, read } => (lock_index, read),
                Acquired::Present => return Ok(LockGrant::Present),
                Acquired::Busy => return Ok(LockGrant::Busy),
            };
            // A session lost while the call was in flight must not be recorded as holding.
            if act.session.as_deref() != Some(session.as_str()) {
                return Ok(LockGrant::Busy);
            }
            debug!(lock = %key, session = %session, lock_index, "Acquired lock.");
            act.metrics.lock_held(&key, true);
            act.held.insert(key, session.clone());
            Ok(LockGrant::Held {
                session,
                lock_index,
                read,
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
            Err(e) => warn!(lock = %key, error = %e, "Could not release lock; it goes when the session does."),
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
        self.session.clone()
    }
}

impl Handler<GetSessionError> for LockManager {
    type Result = Option<PortError>;

    fn handle(&mut self, _msg: GetSessionError, _ctx: &mut Context<Self>) -> Option<PortError> {
        self.session
            .is_none()
            .then(|| self.create_error.clone())
            .flatten()
    }
}

impl Handler<Shutdown> for LockManager {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        let _span = self.span.clone().entered();
        self.shutting_down = true;
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        for key in std::mem::take(&mut self.held).into_keys() {
            self.metrics.lock_held(&key, false);
        }
        if self.creating {
            // Stopping now would drop the create's answer and leave its session behind until
            // its TTL lapsed; its completion destroys it and answers this.
            debug!("Shutdown while the session is being created; waiting for it.");
            let (tx, rx) = oneshot::channel();
            self.stop_waiters.push(tx);
            return Box::pin(fut::wrap_future(async move {
                let _ = rx.await;
            }));
        }
        let id = self.session.take();
        self.destroy_and_stop(id)
    }
}
