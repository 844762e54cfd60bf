//! The Watcher's debounce on tokio's paused clock: a burst of changes closer together than the
//! quiet time fires once, for its last state, a quiet time after the last change; a key
//! watch's later change fires on its own; and a burst of events fires every event.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use rehydrator_actors::dispatcher::WatchFired;
use rehydrator_actors::ports::{
    Acquire, Acquired, ConsulPort, Indexed, KvEntry, PortFuture, SessionSpec, WatchRead,
    WatchStream,
};
use rehydrator_actors::receipt::Keys;
use rehydrator_actors::watcher::{WatchSpec, Watcher};
use rehydrator_config::WatchKind;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

const QUIET: Duration = Duration::from_millis(500);

/// Reads answered from a script: each after its delay; then nothing, ever.
type Script = Rc<RefCell<VecDeque<(Duration, WatchRead)>>>;

struct Scripted(Script);

impl WatchStream for Scripted {
    fn next(&self) -> PortFuture<WatchRead> {
        let next = self.0.borrow_mut().pop_front();
        Box::pin(async move {
            match next {
                Some((after, read)) => {
                    tokio::time::sleep(after).await;
                    Ok(read)
                }
                None => std::future::pending().await,
            }
        })
    }
}

struct Consul(Script);

impl ConsulPort for Consul {
    fn kv_get(&self, _: &str, _: u64, _: Duration) -> PortFuture<Indexed<Option<KvEntry>>> {
        unreachable!("the Watcher reads through its stream")
    }
    fn kv_list(&self, _: &str) -> PortFuture<Indexed<Vec<KvEntry>>> {
        // An event watch's replay looks for receipts: there are none.
        Box::pin(std::future::ready(Ok(Indexed {
            index: 1,
            value: Vec::new(),
        })))
    }
    fn kv_put(&self, _: &str, _: Vec<u8>, _: Option<u64>) -> PortFuture<bool> {
        unreachable!("the Watcher writes no keys")
    }
    fn kv_delete(&self, _: &str) -> PortFuture<bool> {
        unreachable!("the Watcher deletes no keys")
    }
    fn kv_acquire(&self, _: &Acquire) -> PortFuture<Acquired> {
        unreachable!("the Watcher takes no locks")
    }
    fn kv_release(&self, _: &str, _: &str) -> PortFuture<bool> {
        unreachable!("the Watcher takes no locks")
    }
    fn session_create(&self, _: &SessionSpec) -> PortFuture<String> {
        unreachable!("the Watcher has no session")
    }
    fn session_renew(&self, _: &str) -> PortFuture<bool> {
        unreachable!("the Watcher has no session")
    }
    fn session_destroy(&self, _: &str) -> PortFuture<()> {
        unreachable!("the Watcher has no session")
    }
    fn watch(&self, _: &WatchKind) -> Box<dyn WatchStream> {
        Box::new(Scripted(self.0.clone()))
    }
}

/// Stands in for the Dispatcher: passes each fire on, with when it came.
struct Sink(mpsc::UnboundedSender<(Instant, WatchFired)>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<WatchFired> for Sink {
    type Result = ();

    fn handle(&mut self, msg: WatchFired, _ctx: &mut Context<Self>) {
        let _ = self.0.send((Instant::now(), msg));
    }
}

fn read(index: u64, payload: Value) -> WatchRead {
    WatchRead { index, payload }
}

/// Starts a debounced Watcher of `kind` on `script`; the fires, with their times.
fn watch(
    kind: WatchKind,
    script: Vec<(Duration, WatchRead)>,
) -> (
    Addr<Watcher>,
    mpsc::UnboundedReceiver<(Instant, WatchFired)>,
) {
    let script: Script = Rc::new(RefCell::new(script.into()));
    let consul: Rc<dyn ConsulPort> = Rc::new(Consul(script));
    let (tx, rx) = mpsc::unbounded_channel();
    let spec = WatchSpec {
        name: "w".into(),
        kind,
        actions: vec!["act".into()],
        debounce: Some(QUIET),
    };
    let sink = Sink(tx).start().recipient();
    (Watcher::new(spec, consul, Keys::new("t"), sink).start(), rx)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[actix_rt::test]
async fn a_burst_of_key_changes_fires_once_a_quiet_time_after_the_last() {
    tokio::time::pause();
    let start = Instant::now();
    let value = |v: &str| json!([{"Key": "k", "Value": v}]);
    let (_w, mut fires) = watch(
        WatchKind::Key { key: "k".into() },
        vec![
            (ms(0), read(1, value("a"))),
            (ms(100), read(2, value("b"))),
            (ms(100), read(3, value("c"))),
            (ms(100), read(4, value("d"))),
            (ms(2000), read(5, value("e"))),
        ],
    );
    let (at, first) = fires.recv().await.unwrap();
    assert_eq!(first.trigger_id, "4", "the burst's last state");
    assert_eq!(first.payload, value("d"));
    // The last change came at 300 ms. tokio's timers round each deadline up to the next
    // millisecond, and the script's reads are chained timers: a few ms over, never under.
    let waited = at - start;
    assert!(waited >= ms(800) && waited < ms(810), "{waited:?}");
    let (at, second) = fires.recv().await.unwrap();
    assert_eq!(second.trigger_id, "5");
    let waited = at - start;
    assert!(waited >= ms(2800) && waited < ms(2810), "{waited:?}");
    // Nothing more: the script is spent and nothing else is waiting out its quiet time.
    tokio::time::sleep(QUIET * 4).await;
    assert!(fires.try_recv().is_err(), "one fire per burst");
}

#[actix_rt::test]
async fn a_burst_of_events_fires_every_event_once_the_burst_is_quiet() {
    tokio::time::pause();
    let start = Instant::now();
    let event = |id: &str, ltime: u64| json!({"ID": id, "Name": "go", "LTime": ltime});
    let (_w, mut fires) = watch(
        WatchKind::Event { event: "go".into() },
        vec![
            (ms(0), read(1, json!([]))),
            (ms(100), read(2, json!([event("e-1", 1)]))),
            (ms(100), read(3, json!([event("e-1", 1), event("e-2", 2)]))),
        ],
    );
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (at, fire) = fires.recv().await.unwrap();
        let waited = at - start;
        assert!(waited >= ms(700) && waited < ms(710), "{waited:?}");
        ids.push(fire.0.trigger_id);
    }
    assert_eq!(ids, ["e-1", "e-2"], "each event is a trigger of its own");
    tokio::time::sleep(QUIET * 4).await;
    assert!(fires.try_recv().is_err(), "each event fires once");
}
