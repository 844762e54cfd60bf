//! The LockManager's timing on tokio's paused clock, which jumps straight to each timer: a
//! session is renewed every TTL/2 for as long as Consul renews it; a failed create is retried
//! with jittered exponential backoff (250 ms doubling, each wait between half and all of it,
//! capped at TTL/2); and when renewals fail for a whole TTL the locks held are reported lost,
//! because Consul may have invalidated the session meanwhile. With a liveness check, it is
//! registered before each create and the session tied to it, passed every third of its TTL,
//! removed after the session on shutdown, and passes failing for a whole check TTL lose the
//! locks too; a check the agent refuses leaves the session without it.
#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::ready;
use rehydrator_actors::lock_manager::{
    AcquireLock, GetSession, LockGrant, LockManager, LocksLost, Shutdown, Subscribe,
};
use rehydrator_actors::ports::{
    Acquire, Acquired, ConsulPort, ErrorKind, Indexed, KvEntry, LivenessSpec, PortError,
    PortFuture, SessionSpec, WatchStream,
};
use rehydrator_config::WatchKind;
use tokio::sync::mpsc;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(10);

/// Consul's session calls, answered from a script and timed on the paused clock.
#[derive(Default)]
struct Clocked {
    creates: RefCell<Vec<Instant>>,
    renews: RefCell<Vec<Instant>>,
    /// Creates that fail before one succeeds.
    failing_creates: Cell<u32>,
    /// Renewals fail from this one on (0-based), when set.
    renew_fails_from: Cell<Option<usize>>,
    /// How long a create takes to answer.
    create_takes: Cell<Duration>,
    destroyed: RefCell<Vec<String>>,
    /// The liveness check's calls in order: `register`, `pass`, `deregister`, with `create`
    /// and `destroy` between them.
    calls: RefCell<Vec<(&'static str, Instant)>>,
    /// The check each create tied its session to.
    created_with: RefCell<Vec<Option<String>>>,
    /// The agent refuses the check (an ACL token without service:write).
    refuse_check: Cell<bool>,
    /// Passes fail from this one on (0-based), when set.
    pass_fails_from: Cell<Option<usize>>,
}

impl Clocked {
    fn call(&self, what: &'static str) {
        self.calls.borrow_mut().push((what, Instant::now()));
    }

    fn count(&self, what: &str) -> usize {
        self.calls
            .borrow()
            .iter()
            .filter(|(w, _)| *w == what)
            .count()
    }
}

fn unreachable_consul() -> PortError {
    PortError::new(ErrorKind::Unreachable, "connection refused")
}

impl ConsulPort for Clocked {
    fn kv_get(&self, _: &str, _: u64, _: Duration) -> PortFuture<Indexed<Option<KvEntry>>> {
        unreachable!("the LockManager reads no keys")
    }
    fn kv_list(&self, _: &str) -> PortFuture<Indexed<Vec<KvEntry>>> {
        unreachable!("the LockManager lists no keys")
    }
    fn kv_put(&self, _: &str, _: Vec<u8>, _: Option<u64>) -> PortFuture<bool> {
        unreachable!("the LockManager writes no keys")
    }
    fn kv_delete(&self, _: &str) -> PortFuture<bool> {
        unreachable!("the LockManager deletes no keys")
    }
    fn kv_acquire(&self, _: &Acquire) -> PortFuture<Acquired> {
        Box::pin(ready(Ok(Acquired::Held {
            lock_index: 1,
            read: Vec::new(),
            prior: None,
        })))
    }
    fn kv_release(&self, _: &str, _: &str) -> PortFuture<bool> {
        Box::pin(ready(Ok(true)))
    }
    fn session_create(&self, spec: &SessionSpec) -> PortFuture<String> {
        self.creates.borrow_mut().push(Instant::now());
        self.created_with.borrow_mut().push(spec.check.clone());
        self.call("create");
        let fails = self.failing_creates.get();
        if fails > 0 {
            self.failing_creates.set(fails - 1);
            return Box::pin(ready(Err(unreachable_consul())));
        }
        let takes = self.create_takes.get();
        if takes.is_zero() {
            return Box::pin(ready(Ok("s-1".to_owned())));
        }
        Box::pin(async move {
            tokio::time::sleep(takes).await;
            Ok("s-1".to_owned())
        })
    }
    fn session_renew(&self, _: &str) -> PortFuture<bool> {
        let n = {
            let mut renews = self.renews.borrow_mut();
            renews.push(Instant::now());
            renews.len() - 1
        };
        match self.renew_fails_from.get() {
            Some(from) if n >= from => Box::pin(ready(Err(unreachable_consul()))),
            _ => Box::pin(ready(Ok(true))),
        }
    }
    fn session_destroy(&self, id: &str) -> PortFuture<()> {
        self.destroyed.borrow_mut().push(id.to_owned());
        self.call("destroy");
        Box::pin(ready(Ok(())))
    }
    fn liveness_register(&self, _: &LivenessSpec) -> PortFuture<()> {
        self.call("register");
        if self.refuse_check.get() {
            return Box::pin(ready(Err(PortError::new(
                ErrorKind::Denied,
                "Permission denied",
            ))));
        }
        Box::pin(ready(Ok(())))
    }
    fn liveness_pass(&self, _: &str) -> PortFuture<bool> {
        let n = self.count("pass");
        self.call("pass");
        match self.pass_fails_from.get() {
            Some(from) if n >= from => Box::pin(ready(Err(unreachable_consul()))),
            _ => Box::pin(ready(Ok(true))),
        }
    }
    fn liveness_deregister(&self, _: &str) -> PortFuture<()> {
        self.call("deregister");
        Box::pin(ready(Ok(())))
    }
    fn watch(&self, _: &WatchKind) -> Box<dyn WatchStream> {
        unreachable!("the LockManager watches nothing")
    }
}

fn spec() -> SessionSpec {
    SessionSpec {
        check: None,
        name: "r1".into(),
        ttl: TTL,
        lock_delay: Duration::from_secs(1),
    }
}

const CHECK_TTL: Duration = Duration::from_secs(3);

fn liveness() -> Option<LivenessSpec> {
    Some(LivenessSpec {
        id: "rehydrator-c-r1-00000001".into(),
        cluster: "c".into(),
        replica: "r1".into(),
        ttl: CHECK_TTL,
    })
}

/// Takes one lock through `lm` and subscribes to its loss.
async fn hold_a_lock(lm: &Addr<LockManager>) -> mpsc::UnboundedReceiver<(Vec<String>, Instant)> {
    let (tx, lost) = mpsc::unbounded_channel();
    lm.send(Subscribe(Lost(tx).start().recipient()))
        .await
        .unwrap();
    // Let the create land, then take a lock.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let grant = lm
        .send(AcquireLock {
            key: "rehydrator/c/locks/step".into(),
            holder: b"r1".to_vec(),
            unless: None,
            read: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(grant, LockGrant::Held { .. }), "{grant:?}");
    lost
}

#[actix_rt::test]
async fn a_session_is_tied_to_its_liveness_check_passed_every_third_of_its_ttl() {
    tokio::time::pause();
    let consul = Rc::new(Clocked::default());
    let port: Rc<dyn ConsulPort> = consul.clone();
    let lm = LockManager::new(port, spec())
        .with_liveness(liveness())
        .start();
    tokio::time::sleep(Duration::from_secs(30) + Duration::from_millis(500)).await;
    assert_eq!(
        *consul.created_with.borrow(),
        vec![Some("rehydrator-c-r1-00000001".to_owned())]
    );
    let calls = consul.calls.borrow().clone();
    let names: Vec<&str> = calls.iter().map(|(w, _)| *w).collect();
    assert_eq!(
        names[..2],
        ["register", "create"],
        "registered before the create"
    );
    let passes: Vec<Instant> = calls
        .iter()
        .filter(|(w, _)| *w == "pass")
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(passes.len(), 30, "one pass a second for 30 s");
    let third = |d: Duration| d >= CHECK_TTL / 3 && d <= CHECK_TTL / 3 + Duration::from_millis(1);
    assert!(gaps(&passes).into_iter().all(third), "{:?}", gaps(&passes));

    lm.send(Shutdown).await.unwrap();
    let names: Vec<&str> = consul.calls.borrow().iter().map(|(w, _)| *w).collect();
    assert_eq!(
        names[names.len() - 2..],
        ["destroy", "deregister"],
        "the check goes after the session: removing it first would end the session under \
         lock-delay"
    );
}

#[actix_rt::test]
async fn a_refused_liveness_check_leaves_a_session_tied_to_its_ttl_only() {
    tokio::time::pause();
    let consul = Rc::new(Clocked::default());
    consul.refuse_check.set(true);
    let port: Rc<dyn ConsulPort> = consul.clone();
    let lm = LockManager::new(port, spec())
        .with_liveness(liveness())
        .start();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(*consul.created_with.borrow(), vec![None]);
    assert_eq!(lm.send(GetSession).await.unwrap().as_deref(), Some("s-1"));
    assert_eq!(consul.count("pass"), 0);
    assert_eq!(consul.renews.borrow().len(), 2, "renewed as ever");
    lm.send(Shutdown).await.unwrap();
    assert_eq!(
        consul.count("deregister"),
        0,
        "nothing of its own to remove"
    );
}

#[actix_rt::test]
async fn locks_are_reported_lost_once_passes_have_failed_for_a_whole_check_ttl() {
    tokio::time::pause();
    let consul = Rc::new(Clocked::default());
    // The first three passes land; every one after fails.
    consul.pass_fails_from.set(Some(3));
    let port: Rc<dyn ConsulPort> = consul.clone();
    let lm = LockManager::new(port, spec())
        .with_liveness(liveness())
        .start();
    let mut lost = hold_a_lock(&lm).await;
    let (keys, at) = tokio::time::timeout(Duration::from_secs(60), lost.recv())
        .await
        .expect("the locks are reported lost")
        .unwrap();
    assert_eq!(keys, ["rehydrator/c/locks/step"]);
    let last_pass = consul
        .calls
        .borrow()
        .iter()
        .filter(|(w, _)| *w == "pass")
        .nth(2)
        .map(|(_, at)| *at)
        .unwrap();
    let since = at - last_pass;
    // Not before a whole check TTL after the last pass that landed; by the first failed retry
    // after it (retries every TTL/6); long before the session's own TTL.
    assert!(
        since >= CHECK_TTL && since <= CHECK_TTL + CHECK_TTL / 6 + Duration::from_millis(2),
        "lost {since:?} after the last pass"
    );
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[actix_rt::test]
async fn a_held_session_is_renewed_every_half_ttl() {
    tokio::time::pause();
    let consul = Rc::new(Clocked::default());
    let port: Rc<dyn ConsulPort> = consul.clone();
    let _lm = LockManager::new(port, spec()).start();
    // The paused clock runs every timer due in the next 102 s, in order.
    tokio::time::sleep(Duration::from_secs(102)).await;
    let created = consul.creates.borrow()[0];
    let renews = consul.renews.borrow().clone();
    assert_eq!(
        consul.creates.borrow().len(),
        1,
        "one create, then renewals"
    );
    assert_eq!(renews.len(), 20, "one renewal per 5 s, 5 s to 100 s");
    // tokio's timers tick in whole milliseconds, rounding a deadline up.
    let half = |d: Duration| d >= TTL / 2 && d <= TTL / 2 + Duration::from_millis(1);
    assert!(half(renews[0] - created), "{:?}", renews[0] - created);
    assert!(gaps(&renews).into_iter().all(half), "{:?}", gaps(&renews));
}

#[actix_rt::test]
async fn a_failing_create_backs_off_exponentially_with_jitter_up_to_half_ttl() {
    tokio::time::pause();
    let consul = Rc::new(Clocked::default());
    consul.failing_creates.set(6);
    let port: Rc<dyn ConsulPort> = consul.clone();
    let _lm = LockManager::new(port, spec()).start();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let creates = consul.creates.borrow().clone();
    assert_eq!(
        creates.len(),
        7,
        "six failures, then the create that succeeds"
    );
    // After the n-th failure: 250 ms × 2^n, capped at TTL/2, then between half and all of it.
    for (n, gap) in gaps(&creates).into_iter().enumerate() {
        let full = (Duration::from_millis(250) * 2u32.pow(n as u32 + 1)).min(TTL / 2);
        assert!(
            gap >= full / 2 && gap <= full + Duration::from_millis(1),
            "wait {n}: {gap:?}, not within [{:?}, {full:?}]",
            full / 2
        );
    }
    assert!(!consul.renews.borrow().is_empty(), "renewing once created");
}

struct Lost(mpsc::UnboundedSender<(Vec<String>, Instant)>);

impl Actor for Lost {
    type Context = Context<Self>;
}

impl Handler<LocksLost> for Lost {
    type Result = ();

    fn handle(&mut self, msg: LocksLost, _ctx: &mut Context<Self>) {
        let _ = self.0.send((msg.keys, Instant::now()));
    }
}

#[actix_rt::test]
async fn locks_are_reported_lost_once_renewals_have_failed_for_a_whole_ttl() {
    tokio::time::pause();
    let consul = Rc::new(Clocked::default());
    // The first renewal succeeds; every one after it fails.
    consul.renew_fails_from.set(Some(1));
    let port: Rc<dyn ConsulPort> = consul.clone();
    let lm = LockManager::new(port, spec()).start();
    let mut lost = hold_a_lock(&lm).await;

    let (keys, at) = tokio::time::timeout(Duration::from_secs(60), lost.recv())
        .await
        .expect("the locks are reported lost")
        .unwrap();
    assert_eq!(keys, ["rehydrator/c/locks/step"]);
    let renewed = consul.renews.borrow()[0];
    let since = at - renewed;
    // Not before a whole TTL without a renewal; by the first failed retry after it, which
    // comes within TTL/4 (the renewal retries' cap).
    assert!(
        since >= TTL && since <= TTL + TTL / 4,
        "lost {since:?} after the last renewal"
    );
}

#[actix_rt::test]
async fn a_shutdown_during_the_create_destroys_the_session_the_create_made() {
    tokio::time::pause();
    let consul = Rc::new(Clocked::default());
    consul.create_takes.set(Duration::from_secs(3));
    let port: Rc<dyn ConsulPort> = consul.clone();
    let lm = LockManager::new(port, spec()).start();
    // The create is in flight once the actor has started and asked for it.
    assert_eq!(lm.send(GetSession).await.unwrap(), None);
    assert_eq!(consul.creates.borrow().len(), 1);
    let asked = Instant::now();
    lm.send(Shutdown).await.unwrap();
    // Answered only once the create landed and what it made was destroyed.
    assert!(
        asked.elapsed() >= Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(*consul.destroyed.borrow(), ["s-1"]);
    assert!(
        consul.renews.borrow().is_empty(),
        "no renewal after shutdown"
    );
    assert!(!lm.connected(), "stopped");
}

#[actix_rt::test]
async fn a_shutdown_with_a_live_session_destroys_it_and_renews_no_more() {
    tokio::time::pause();
    let consul = Rc::new(Clocked::default());
    let port: Rc<dyn ConsulPort> = consul.clone();
    let lm = LockManager::new(port, spec()).start();
    tokio::time::sleep(TTL).await;
    assert_eq!(lm.send(GetSession).await.unwrap().as_deref(), Some("s-1"));
    let renewed = consul.renews.borrow().len();
    assert!(renewed >= 1, "renewed while live");
    lm.send(Shutdown).await.unwrap();
    assert_eq!(*consul.destroyed.borrow(), ["s-1"]);
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(
        consul.renews.borrow().len(),
        renewed,
        "no renewal after shutdown"
    );
}
