//! Watchers against a hostile agent (`common::hostile`): garbage JSON, a proxy's HTML page, a
//! connection closed mid-body, a body short of its Content-Length, a byte-a-second trickle, a
//! 50 MB answer, a missing or non-numeric `X-Consul-Index`, an object where a list belongs, and
//! an event list naming one new event 1,000 times. Each case is one Watcher, all at once, with
//! one well-behaved key beside them, through the real client and the supervised Watcher actor.
//!
//! Over a window each hostile case must back off (a handful of requests, not hundreds), log at
//! most twice (once when it starts failing, once more if the failure changes kind), fire
//! nothing (the duplicated event fires once), and leave the good watch's change delivered.
//! The process's peak memory may not grow by the 50 MB answer.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use common::hostile::{Case, Hostile};
use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::{Client, ConsulConfig, WatchPolicy};
use rehydrator_actors::dispatcher::WatchFired;
use rehydrator_actors::metrics::Metrics;
use rehydrator_actors::receipt::Keys;
use rehydrator_actors::watcher::{WatchSpec, Watcher};
use rehydrator_config::WatchKind;
use tokio::sync::mpsc;

/// How long the hostile cases run before their requests are counted.
const WINDOW: Duration = Duration::from_secs(8);
/// Most requests one case may make in `WINDOW`. With the watch backoff (1 s doubling, half of
/// it jitter) a failing case makes at most 5; a restart without backoff makes dozens.
const MAX_REQUESTS: usize = 6;

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stands in for the Dispatcher: every fire goes to the test.
struct Fires(mpsc::UnboundedSender<WatchFired>);

impl Actor for Fires {
    type Context = Context<Self>;
}

impl Handler<WatchFired> for Fires {
    type Result = ();

    fn handle(&mut self, msg: WatchFired, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// The process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn kind_of(case: Case) -> WatchKind {
    match case {
        Case::DupEvents => WatchKind::Event { event: "go".into() },
        Case::Object => WatchKind::Service {
            service: "object".into(),
            tag: Vec::new(),
            passingonly: false,
        },
        other => WatchKind::Key {
            key: other.name().into(),
        },
    }
}

#[actix_rt::test]
async fn no_answer_spins_a_watcher() {
    let log = LogBuf::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    common::bounded(async {
        let agent = Hostile::start().await;
        let config = ConsulConfig {
            timeout: Duration::from_secs(2),
            ..ConsulConfig::with_address(&agent.url).unwrap()
        };
        let policy = WatchPolicy {
            wait: Duration::from_secs(2),
            ..WatchPolicy::default()
        };
        let consul = Rc::new(ConsulAdapter::new(Client::new(config).unwrap(), policy));
        let metrics = Metrics::new();
        let (tx, mut fires) = mpsc::unbounded_channel();
        let sink = Fires(tx).start().recipient();
        let rss_before = peak_rss_kib();

        let mut watchers = Vec::new();
        for case in [Case::Good].into_iter().chain(Case::HOSTILE) {
            let spec = WatchSpec {
                name: case.name().into(),
                kind: kind_of(case),
                actions: vec!["act".into()],
                debounce: None,
            };
            let (consul, sink, metrics) = (consul.clone(), sink.clone(), metrics.clone());
            watchers.push(Supervisor::start(move |_| {
                Watcher::new(spec, consul, Keys::new("hostile"), sink).with_metrics(metrics)
            }));
        }

        // The good watch's one change arrives whatever the others do.
        let first = tokio::time::timeout(Duration::from_secs(20), fires.recv())
            .await
            .expect("a fire within 20s")
            .unwrap();
        actix_rt::time::sleep(WINDOW).await;
        let mut all = vec![first];
        while let Ok(f) = fires.try_recv() {
            all.push(f);
        }
        let rss_after = peak_rss_kib();
        let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();

        let mut report = Vec::new();
        let mut problems = Vec::new();
        for case in Case::HOSTILE {
            let requests = agent.count(case);
            let tag = format!("watch={}", case.name());
            let loud: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&tag) && (l.contains(" WARN ") || l.contains(" ERROR ")))
                .collect();
            let said = loud
                .first()
                .and_then(|l| l.split_once("error="))
                .map_or("", |(_, e)| e);
            report.push(format!(
                "{}: {requests} requests, {} log lines ({said})",
                case.name(),
                loud.len()
            ));
            let loud = loud.len();
            if requests == 0 || requests > MAX_REQUESTS {
                problems.push(format!(
                    "{}: {requests} requests in {WINDOW:?} (1..={MAX_REQUESTS} expected)",
                    case.name()
                ));
            }
            // A duplicated event is no failure: it is read as one, quietly.
            let want = if case == Case::DupEvents {
                0..=0
            } else {
                1..=2
            };
            if !want.contains(&loud) {
                problems.push(format!(
                    "{}: {loud} WARN/ERROR lines ({want:?} expected)",
                    case.name()
                ));
            }
        }
        let fired: Vec<(String, String)> = all
            .iter()
            .map(|f| (f.watch.clone(), f.trigger_id.clone()))
            .collect();
        let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
        println!(
            "window {WINDOW:?}: {}; {} fires, distinct {:?}; peak RSS {} MiB -> {} MiB",
            report.join("; "),
            fired.len(),
            fired.iter().collect::<std::collections::BTreeSet<_>>(),
            rss_before / 1024,
            rss_after / 1024
        );
        assert!(problems.is_empty(), "{problems:#?}\n{}", report.join("\n"));
        let mut sorted = fired.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [("dupevents", "e-2"), ("good", "11")].map(|(w, t)| (w.to_owned(), t.to_owned())),
            "the good change and the new event each fire once; nothing else fires"
        );
        assert!(
            grown_mib < 40,
            "peak memory grew by {grown_mib} MiB under a 50 MB answer"
        );
        // Every failing case's errors are counted (all but the duplicated events fail).
        let encoded = metrics.encode().unwrap();
        let counted: f64 = encoded
            .lines()
            .filter(|l| {
                l.starts_with("rehydrator_errors_total{") && l.contains("source=\"consul\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            counted >= (Case::HOSTILE.len() - 1) as f64,
            "consul errors counted: {counted}\n{encoded}"
        );
        drop(watchers);
    })
    .await;
}
