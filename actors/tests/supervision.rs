//! Supervision and the lock protocol with scripted ports, where the simulator cannot make the
//! failure happen on cue: a Watcher whose stream answers something undecodable backs off on
//! the same stream and fires once for the change after it; a Dispatcher that loses its lock
//! mid-job aborts the executor, requeues the job, and runs it once more when the lock is
//! granted again.
#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::{pending, ready};
use rehydrator_actors::dispatcher::{
    ActionSpec, DispatchSettings, Dispatcher, ExecutorRef, JobEnded, JobResult, Observe, WatchFired,
};
use rehydrator_actors::executor::{Abort, ExecError, Run, Trigger};
use rehydrator_actors::lock_manager::{AcquireLock, LockError, LockGrant, LocksLost, ReleaseLock};
use rehydrator_actors::metrics::Metrics;
use rehydrator_actors::ports::{
    Acquire, Acquired, ConsulPort, ErrorKind, Indexed, KvEntry, PortError, PortFuture, SessionSpec,
    WatchRead, WatchStream,
};
use rehydrator_actors::receipt::{Keys, LockValue, Outcome, Receipt};
use rehydrator_actors::watcher::{WatchSpec, Watcher};
use rehydrator_config::WatchKind;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Every test's bound.
async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("test did not finish within 30s")
}

/// Awaits the next item of `rx` for at most 10s.
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 10s"))
        .unwrap()
}

// -------------------------------------------------------------------------------------------
// A scripted Consul

/// One watch stream: answers its script in order, then says so on `drained` and never answers
/// again.
struct ScriptedStream {
    script: RefCell<VecDeque<Result<WatchRead, PortError>>>,
    drained: mpsc::UnboundedSender<usize>,
    number: usize,
}

impl WatchStream for ScriptedStream {
    fn next(&self) -> PortFuture<WatchRead> {
        match self.script.borrow_mut().pop_front() {
            Some(answer) => Box::pin(ready(answer)),
            None => {
                let _ = self.drained.send(self.number);
                Box::pin(pending())
            }
        }
    }
}

/// KV in memory (enough of it for receipts), and watch streams handed out from a script.
#[derive(Default)]
struct Stub {
    kv: RefCell<BTreeMap<String, KvEntry>>,
    index: Cell<u64>,
    puts: RefCell<Vec<String>>,
    streams: RefCell<VecDeque<ScriptedStream>>,
    watch_calls: Cell<usize>,
}

impl ConsulPort for Stub {
    fn kv_get(
        &self,
        key: &str,
        _index: u64,
        _wait: Duration,
    ) -> PortFuture<Indexed<Option<KvEntry>>> {
        let value = self.kv.borrow().get(key).cloned();
        let index = self.index.get().max(1);
        Box::pin(ready(Ok(Indexed { index, value })))
    }

    fn kv_list(&self, prefix: &str) -> PortFuture<Indexed<Vec<KvEntry>>> {
        let value = self
            .kv
            .borrow()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        let index = self.index.get().max(1);
        Box::pin(ready(Ok(Indexed { index, value })))
    }

    fn kv_put(&self, key: &str, value: Vec<u8>, cas: Option<u64>) -> PortFuture<bool> {
        let mut kv = self.kv.borrow_mut();
        let current = kv.get(key).map(|e| e.modify_index);
        if let Some(cas) = cas {
            if current.unwrap_or(0) != cas {
                return Box::pin(ready(Ok(false)));
            }
        }
        self.index.set(self.index.get() + 1);
        let index = self.index.get();
        self.puts.borrow_mut().push(key.to_owned());
        kv.insert(
            key.to_owned(),
            KvEntry {
                key: key.to_owned(),
                value,
                session: None,
                lock_index: 0,
                create_index: index,
                modify_index: index,
            },
        );
        Box::pin(ready(Ok(true)))
    }

    fn kv_delete(&self, key: &str) -> PortFuture<bool> {
        self.kv.borrow_mut().remove(key);
        Box::pin(ready(Ok(true)))
    }

    fn kv_acquire(&self, _req: &Acquire) -> PortFuture<Acquired> {
        unreachable!("locks go through the LockManager, stood in for by LockStub")
    }

    fn kv_release(&self, _key: &str, _session: &str) -> PortFuture<bool> {
        unreachable!("locks go through the LockManager, stood in for by LockStub")
    }

    fn session_create(&self, _spec: &SessionSpec) -> PortFuture<String> {
        unreachable!("no LockManager in these tests")
    }

    fn session_renew(&self, _id: &str) -> PortFuture<bool> {
        unreachable!("no LockManager in these tests")
    }

    fn session_destroy(&self, _id: &str) -> PortFuture<()> {
        unreachable!("no LockManager in these tests")
    }

    fn watch(&self, _kind: &WatchKind) -> Box<dyn WatchStream> {
        self.watch_calls.set(self.watch_calls.get() + 1);
        let stream = self
            .streams
            .borrow_mut()
            .pop_front()
            .expect("watch() called more often than the test scripted");
        Box::new(stream)
    }
}

fn read(index: u64, value: &str) -> Result<WatchRead, PortError> {
    Ok(WatchRead {
        index,
        payload: json!({ "Key": "k", "Value": value, "ModifyIndex": index }),
    })
}

// -------------------------------------------------------------------------------------------
// Stand-ins for the actors around the one under test

/// Stands in for the Dispatcher: forwards every fire.
struct Collect(mpsc::UnboundedSender<WatchFired>);

impl Actor for Collect {
    type Context = Context<Self>;
}

impl Handler<WatchFired> for Collect {
    type Result = ();

    fn handle(&mut self, msg: WatchFired, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// An undecodable answer is an outage like any other (the stream backs off and keeps its
/// index): the Watcher neither fires for it nor restarts, so the change after it is compared
/// with the baseline from before it and fires exactly once.
#[actix_rt::test]
async fn an_undecodable_answer_neither_fires_nor_restarts_the_watcher() {
    bounded(async {
        let (drained_tx, mut drained) = mpsc::unbounded_channel();
        let stub = Rc::new(Stub::default());
        stub.streams.borrow_mut().extend([ScriptedStream {
            script: RefCell::new(
                [
                    read(1, "a"),
                    Err(PortError::new(ErrorKind::Decode, "not JSON")),
                    // The same value at a new index: no change to fire for.
                    read(5, "a"),
                    read(6, "c"),
                ]
                .into(),
            ),
            drained: drained_tx,
            number: 1,
        }]);
        let (fired_tx, mut fired) = mpsc::unbounded_channel();
        let to = Collect(fired_tx).start().recipient();
        let spec = WatchSpec {
            name: "w".into(),
            kind: WatchKind::Key { key: "k".into() },
            actions: vec!["a".into()],
            debounce: None,
        };
        let consul: Rc<dyn ConsulPort> = stub.clone();
        let _watcher = Supervisor::start(move |_| Watcher::new(spec, consul, Keys::new("c"), to));

        let fire = next(&mut fired, "fire").await;
        assert_eq!(fire.trigger_id, "6", "the first fire is the real change's");
        assert_eq!(fire.index, 6);
        assert_eq!(fire.action, "a");
        assert_eq!(fire.payload["Value"], "c");
        // The Watcher read on after the fire: it has handled everything it was given.
        assert_eq!(next(&mut drained, "the stream drained").await, 1);
        assert!(fired.try_recv().is_err(), "exactly one fire");
        assert_eq!(stub.watch_calls.get(), 1, "the same stream throughout");
    })
    .await;
}

// -------------------------------------------------------------------------------------------
// The Dispatcher losing its lock mid-job

/// Stands in for the LockManager: answers `AcquireLock` from a script (then Held), counts
/// releases. A grant writes the holder into the stub's KV, as Consul's acquire does.
struct LockStub {
    grants: VecDeque<LockGrant>,
    acquires: Rc<Cell<usize>>,
    releases: Rc<Cell<usize>>,
    kv: Rc<Stub>,
}

/// A grant as the script writes it; the stand-in fills in LockIndex and the read.
fn held() -> LockGrant {
    LockGrant::Held {
        session: "s".into(),
        lock_index: 0,
        read: Vec::new(),
        prior: None,
    }
}

/// What a real grant answers for `msg`, with the stub's KV as Consul: `Present` if `unless`
/// exists, else held by `session` with its LockIndex and the keys under `read`.
fn grant(stub: &Stub, msg: &AcquireLock, session: &str) -> LockGrant {
    if let Some(unless) = &msg.unless {
        if stub.kv.borrow().contains_key(unless) {
            return LockGrant::Present;
        }
    }
    let prior = stub.kv.borrow().get(&msg.key).map(|e| e.value.clone());
    let lock_index = hold(stub, &msg.key, Some(session));
    let read = msg.read.as_deref().map_or_else(Vec::new, |prefix| {
        stub.kv
            .borrow()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect()
    });
    LockGrant::Held {
        session: session.to_owned(),
        lock_index,
        read,
        prior,
    }
}

/// Records `session` as the holder of `key` in the stub's KV, bumping LockIndex; returns it.
fn hold(stub: &Stub, key: &str, session: Option<&str>) -> u64 {
    let mut kv = stub.kv.borrow_mut();
    let e = kv.entry(key.to_owned()).or_insert_with(|| KvEntry {
        key: key.to_owned(),
        value: Vec::new(),
        session: None,
        lock_index: 0,
        create_index: 1,
        modify_index: 1,
    });
    if session.is_some() && e.session.is_none() {
        e.lock_index += 1;
    }
    e.session = session.map(str::to_owned);
    e.lock_index
}

impl Actor for LockStub {
    type Context = Context<Self>;
}

impl Handler<AcquireLock> for LockStub {
    type Result = Result<LockGrant, LockError>;

    fn handle(&mut self, msg: AcquireLock, _ctx: &mut Context<Self>) -> Self::Result {
        self.acquires.set(self.acquires.get() + 1);
        match self.grants.pop_front().unwrap_or_else(held) {
            LockGrant::Held { session, .. } => Ok(grant(&self.kv, &msg, &session)),
            other => Ok(other),
        }
    }
}

impl Handler<ReleaseLock> for LockStub {
    type Result = ();

    fn handle(&mut self, _msg: ReleaseLock, _ctx: &mut Context<Self>) {
        self.releases.set(self.releases.get() + 1);
    }
}

/// Query the stand-in: how many releases it handled (FIFO: every earlier one is counted).
#[derive(Message)]
#[rtype(result = "usize")]
struct GetReleases;

impl Handler<GetReleases> for LockStub {
    type Result = usize;

    fn handle(&mut self, _msg: GetReleases, _ctx: &mut Context<Self>) -> usize {
        self.releases.get()
    }
}

/// What the executor stand-in saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Run(String),
    Abort(String),
}

/// Stands in for an executor: the first run never finishes (until aborted, it hangs as a slow
/// command would); later runs succeed.
struct ExecStub {
    runs: usize,
    seen: mpsc::UnboundedSender<Seen>,
}

impl Actor for ExecStub {
    type Context = Context<Self>;
}

impl Handler<Run> for ExecStub {
    type Result = ResponseFuture<Result<Outcome, ExecError>>;

    fn handle(&mut self, msg: Run, _ctx: &mut Context<Self>) -> Self::Result {
        self.runs += 1;
        let _ = self.seen.send(Seen::Run(msg.trigger.trigger_id));
        if self.runs == 1 {
            Box::pin(pending())
        } else {
            Box::pin(ready(Ok(Outcome::Succeeded("done".into()))))
        }
    }
}

impl Handler<Abort> for ExecStub {
    type Result = ();

    fn handle(&mut self, msg: Abort, _ctx: &mut Context<Self>) {
        let _ = self.seen.send(Seen::Abort(msg.trigger_id));
    }
}

/// Forwards job reports.
struct Jobs(mpsc::UnboundedSender<JobEnded>);

impl Actor for Jobs {
    type Context = Context<Self>;
}

impl Handler<JobEnded> for Jobs {
    type Result = ();

    fn handle(&mut self, msg: JobEnded, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// A Dispatcher for action `a` under lock `l` of cluster `c`, asking `acquire`/`release` for the
/// lock and `executor` for runs, its job reports forwarded: the dispatcher and the reports.
async fn start_dispatcher(
    stub: &Rc<Stub>,
    acquire: Recipient<AcquireLock>,
    release: Recipient<ReleaseLock>,
    executor: ExecutorRef,
    settings: DispatchSettings,
    metrics: Metrics,
) -> (Addr<Dispatcher>, mpsc::UnboundedReceiver<JobEnded>) {
    let action = ActionSpec {
        name: "a".into(),
        lock: "l".into(),
        timeout: Duration::from_secs(5),
        executor,
    };
    let consul: Rc<dyn ConsulPort> = stub.clone();
    let dispatcher = Supervisor::start(move |_| {
        Dispatcher::new(
            consul,
            Keys::new("c"),
            "replica-1".into(),
            acquire,
            release,
            settings,
            vec![action],
        )
        .with_metrics(metrics.clone())
    });
    let (jobs_tx, jobs) = mpsc::unbounded_channel();
    dispatcher
        .send(Observe(Jobs(jobs_tx).start().recipient()))
        .await
        .unwrap();
    (dispatcher, jobs)
}

/// Fires trigger `id` of watch `w` for action `a`.
async fn fire(dispatcher: &Addr<Dispatcher>, id: &str) {
    dispatcher
        .send(WatchFired(Trigger {
            watch: "w".into(),
            action: "a".into(),
            trigger_id: id.into(),
            position: None,
            index: 7,
            payload: Value::Null,
        }))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn locks_lost_mid_job_abort_it_and_it_runs_again_once_the_lock_is_back() {
    bounded(async {
        let stub = Rc::new(Stub::default());
        let keys = Keys::new("c");
        let acquires = Rc::new(Cell::new(0));
        let locks = LockStub {
            // Held for the first run; after the loss, refused once (lock-delay), then Held.
            grants: [held(), LockGrant::Busy].into(),
            acquires: acquires.clone(),
            releases: Rc::new(Cell::new(0)),
            kv: stub.clone(),
        }
        .start();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let exec = ExecStub {
            runs: 0,
            seen: seen_tx,
        }
        .start();
        let settings = DispatchSettings {
            receipt_wait: Duration::from_secs(1),
            receipts_kept: 10,
            max_attempts: 5,
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(100),
            lock_delay: Duration::from_millis(50),
        };
        let executor = ExecutorRef {
            run: exec.clone().recipient(),
            abort: exec.recipient(),
        };
        let (dispatcher, mut jobs) = start_dispatcher(
            &stub,
            locks.clone().recipient(),
            locks.clone().recipient(),
            executor,
            settings,
            Metrics::new(),
        )
        .await;

        fire(&dispatcher, "t1").await;
        assert_eq!(next(&mut seen, "first run").await, Seen::Run("t1".into()));

        dispatcher
            .send(LocksLost {
                keys: vec![keys.lock("l")],
            })
            .await
            .unwrap();
        assert_eq!(next(&mut seen, "abort").await, Seen::Abort("t1".into()));
        assert_eq!(next(&mut seen, "second run").await, Seen::Run("t1".into()));

        let job = next(&mut jobs, "job end").await;
        assert_eq!(job.trigger_id, "t1");
        assert_eq!(
            job.result,
            JobResult::Ran(Outcome::Succeeded("done".into()))
        );
        assert!(jobs.try_recv().is_err(), "the job ends once");
        assert!(seen.try_recv().is_err(), "two runs, one abort");

        let receipt_key = keys.receipt("a", "t1");
        let puts = stub.puts.borrow().clone();
        assert_eq!(
            puts,
            vec![receipt_key.as_str()],
            "exactly one receipt written"
        );
        let receipt = Receipt::from_bytes(&stub.kv.borrow()[&receipt_key].value).unwrap();
        assert_eq!(receipt.by, "replica-1");
        assert_eq!(receipt.outcome, Outcome::Succeeded("done".into()));
        assert_eq!(
            receipt.attempts, 1,
            "an abandoned run is not a failed attempt"
        );
        assert_eq!(acquires.get(), 3, "held, lost, refused once, held again");
        // The lost lock is not released (it is gone); the second run releases its own, sent
        // before the job's end was reported.
        assert_eq!(locks.send(GetReleases).await.unwrap(), 1);
    })
    .await;
}

// -------------------------------------------------------------------------------------------
// Two jobs under one lock: the release of the first lands before the second asks

/// Stands in for the LockManager with slow releases, as a release's HTTP call can be slower
/// than the next acquire's. Logs the order of what happens to the lock.
struct SlowLocks {
    kv: Rc<Stub>,
    log: Rc<RefCell<Vec<&'static str>>>,
}

impl Actor for SlowLocks {
    type Context = Context<Self>;
}

impl Handler<AcquireLock> for SlowLocks {
    type Result = Result<LockGrant, LockError>;

    fn handle(&mut self, msg: AcquireLock, _ctx: &mut Context<Self>) -> Self::Result {
        self.log.borrow_mut().push("acquire");
        Ok(grant(&self.kv, &msg, "s"))
    }
}

impl Handler<ReleaseLock> for SlowLocks {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ReleaseLock, _ctx: &mut Context<Self>) -> Self::Result {
        self.log.borrow_mut().push("release sent");
        let (kv, log) = (self.kv.clone(), self.log.clone());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            hold(&kv, &msg.key, None);
            log.borrow_mut().push("released");
        })
    }
}

/// An executor that always succeeds at once.
struct Quick;

impl Actor for Quick {
    type Context = Context<Self>;
}

impl Handler<Run> for Quick {
    type Result = Result<Outcome, ExecError>;

    fn handle(&mut self, _msg: Run, _ctx: &mut Context<Self>) -> Self::Result {
        Ok(Outcome::Succeeded("done".into()))
    }
}

impl Handler<Abort> for Quick {
    type Result = ();

    fn handle(&mut self, _msg: Abort, _ctx: &mut Context<Self>) {}
}

#[actix_rt::test]
async fn the_next_job_under_a_lock_waits_for_the_previous_release_to_land() {
    bounded(async {
        let stub = Rc::new(Stub::default());
        let log = Rc::new(RefCell::new(Vec::new()));
        let locks = SlowLocks {
            kv: stub.clone(),
            log: log.clone(),
        }
        .start();
        let exec = Quick.start();
        let settings = DispatchSettings {
            receipt_wait: Duration::from_secs(1),
            receipts_kept: 10,
            max_attempts: 5,
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(100),
            lock_delay: Duration::from_millis(50),
        };
        let executor = ExecutorRef {
            run: exec.clone().recipient(),
            abort: exec.recipient(),
        };
        let (dispatcher, mut jobs) = start_dispatcher(
            &stub,
            locks.clone().recipient(),
            locks.recipient(),
            executor,
            settings,
            Metrics::new(),
        )
        .await;
        for t in ["t1", "t2"] {
            fire(&dispatcher, t).await;
        }
        for t in ["t1", "t2"] {
            let job = next(&mut jobs, "job end").await;
            assert_eq!(job.trigger_id, t);
            assert_eq!(
                job.result,
                JobResult::Ran(Outcome::Succeeded("done".into()))
            );
        }
        // A release still in flight when the next acquire lands would free the lock under the
        // second job (Consul lets the same session re-acquire): the order must be strict.
        assert_eq!(
            *log.borrow(),
            [
                "acquire",
                "release sent",
                "released",
                "acquire",
                "release sent",
                "released"
            ]
        );
        let receipts = stub
            .kv_list(&Keys::new("c").receipts("a"))
            .await
            .unwrap()
            .value;
        assert_eq!(receipts.len(), 2);
        for r in receipts {
            let r = Receipt::from_bytes(&r.value).unwrap();
            assert_eq!(r.lock_index, if r.trigger_id == "t1" { 1 } else { 2 });
        }
    })
    .await;
}

// -------------------------------------------------------------------------------------------
// A run that finds its lock gone records nothing, however many times it happens

/// Stands in for an executor whose first `lost` runs find the lock gone when they go to record
/// (the fenced write refused); later runs succeed.
struct LostStub {
    lost: usize,
    runs: Rc<Cell<usize>>,
}

impl Actor for LostStub {
    type Context = Context<Self>;
}

impl Handler<Run> for LostStub {
    type Result = ResponseFuture<Result<Outcome, ExecError>>;

    fn handle(&mut self, _msg: Run, _ctx: &mut Context<Self>) -> Self::Result {
        self.runs.set(self.runs.get() + 1);
        if self.runs.get() <= self.lost {
            Box::pin(ready(Err(ExecError::LockLost(
                "this replica no longer holds the lock".into(),
            ))))
        } else {
            Box::pin(ready(Ok(Outcome::Succeeded("done".into()))))
        }
    }
}

impl Handler<Abort> for LostStub {
    type Result = ();

    fn handle(&mut self, _msg: Abort, _ctx: &mut Context<Self>) {}
}

#[actix_rt::test]
async fn a_run_that_lost_its_lock_never_writes_a_failed_receipt() {
    bounded(async {
        let stub = Rc::new(Stub::default());
        let keys = Keys::new("c");
        let locks = LockStub {
            grants: VecDeque::new(),
            acquires: Rc::new(Cell::new(0)),
            releases: Rc::new(Cell::new(0)),
            kv: stub.clone(),
        }
        .start();
        // More lost runs than attempts allowed: a failure would have ended the job by now.
        let runs = Rc::new(Cell::new(0));
        let exec = LostStub {
            lost: 3,
            runs: runs.clone(),
        }
        .start();
        let settings = DispatchSettings {
            receipt_wait: Duration::from_secs(1),
            receipts_kept: 10,
            max_attempts: 2,
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(40),
            lock_delay: Duration::from_millis(10),
        };
        let executor = ExecutorRef {
            run: exec.clone().recipient(),
            abort: exec.recipient(),
        };
        let (dispatcher, mut jobs) = start_dispatcher(
            &stub,
            locks.clone().recipient(),
            locks.recipient(),
            executor,
            settings,
            Metrics::new(),
        )
        .await;
        fire(&dispatcher, "t1").await;

        let job = next(&mut jobs, "job end").await;
        assert_eq!(
            job.result,
            JobResult::Ran(Outcome::Succeeded("done".into())),
            "the job ends only when a run under the lock records it"
        );
        assert_eq!(
            runs.get(),
            4,
            "three lost runs, then one that held the lock"
        );
        let receipt_key = keys.receipt("a", "t1");
        assert_eq!(
            stub.puts.borrow().clone(),
            vec![receipt_key.as_str()],
            "one receipt, the successful run's"
        );
        let receipt = Receipt::from_bytes(&stub.kv.borrow()[&receipt_key].value).unwrap();
        assert_eq!(receipt.outcome, Outcome::Succeeded("done".into()));
    })
    .await;
}

/// Succeeds at once, reporting each run's trigger.
struct Succeeds(mpsc::UnboundedSender<String>);

impl Actor for Succeeds {
    type Context = Context<Self>;
}

impl Handler<Run> for Succeeds {
    type Result = ResponseFuture<Result<Outcome, ExecError>>;

    fn handle(&mut self, msg: Run, _ctx: &mut Context<Self>) -> Self::Result {
        let _ = self.0.send(msg.trigger.trigger_id);
        Box::pin(ready(Ok(Outcome::Succeeded("done".into()))))
    }
}

impl Handler<Abort> for Succeeds {
    type Result = ();

    fn handle(&mut self, _msg: Abort, _ctx: &mut Context<Self>) {}
}

/// The takeover count when a lock shared by sibling jobs changes hands between them: another
/// replica holds the lock for job t2 while this one waits to run t1; by the time this replica
/// takes t2 up, a third replica's sibling job has left its own value on the lock (as the
/// rollout's `step` lock sees after its holder dies). t2 had a holder and no receipt: a
/// takeover, counted once; t1 had none, and is not.
#[actix_rt::test]
async fn a_job_held_by_another_replica_counts_as_taken_over_after_a_sibling_held_the_lock() {
    bounded(async {
        let stub = Rc::new(Stub::default());
        let keys = Keys::new("c");
        let lock_key = keys.lock("l");
        let value = |replica: &str, trigger: &str| {
            LockValue {
                replica: replica.into(),
                action: "a".into(),
                trigger_id: trigger.into(),
                since: None,
            }
            .encode()
        };
        stub.kv_put(&lock_key, value("replica-2", "t2"), None)
            .await
            .unwrap();
        hold(&stub, &lock_key, Some("s2"));
        let locks = LockStub {
            // t1 first finds the lock busy (replica-2 holds it for t2), then gets it.
            grants: [LockGrant::Busy, held(), held()].into(),
            acquires: Rc::new(Cell::new(0)),
            releases: Rc::new(Cell::new(0)),
            kv: stub.clone(),
        }
        .start();
        let (runs_tx, mut runs) = mpsc::unbounded_channel();
        let exec = Succeeds(runs_tx).start();
        let settings = DispatchSettings {
            receipt_wait: Duration::from_millis(10),
            receipts_kept: 10,
            max_attempts: 5,
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(100),
            lock_delay: Duration::from_millis(50),
        };
        let metrics = Metrics::new();
        let (dispatcher, mut jobs) = start_dispatcher(
            &stub,
            locks.clone().recipient(),
            locks.clone().recipient(),
            ExecutorRef {
                run: exec.clone().recipient(),
                abort: exec.recipient(),
            },
            settings,
            metrics.clone(),
        )
        .await;
        let takeovers = || {
            let text = metrics.encode().unwrap();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(r#"rehydrator_takeovers_total{lock="l"} "#)?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0)
        };

        fire(&dispatcher, "t1").await;
        assert_eq!(next(&mut runs, "t1's run").await, "t1");
        assert_eq!(next(&mut jobs, "t1's end").await.trigger_id, "t1");
        assert_eq!(takeovers(), 0.0, "t1 had no other holder");

        // replica-2 died without a receipt for t2; replica-3 then held the lock for a sibling
        // job and left its value there, without a session.
        stub.kv_put(&lock_key, value("replica-3", "t3"), None)
            .await
            .unwrap();
        fire(&dispatcher, "t2").await;
        assert_eq!(next(&mut runs, "t2's run").await, "t2");
        assert_eq!(next(&mut jobs, "t2's end").await.trigger_id, "t2");
        assert_eq!(takeovers(), 1.0, "t2 was taken over from replica-2");
    })
    .await;
}
