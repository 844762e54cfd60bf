//! The replica's Prometheus metrics: one registry the actors update through a small API of
//! plain types (no Prometheus type leaves this file), and the status endpoint encodes.
//!
//! `tree::start` makes one `Metrics` and hands clones to the actors; `Tree::metrics` is the
//! same registry for the endpoint. What only Consul knows (servers by image, the rollout's
//! state on a replica that takes no steps) is set at scrape time from the status model.
//!
//! Every series is named `rehydrator_*`; the README lists them with their labels.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::plan::RolloutState;

/// The content type of `Metrics::encode`'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The states `rehydrator_rollout_state` has a series for; `none`: no rollout recorded.
pub const ROLLOUT_STATES: [&str; 5] = ["none", "active", "completed", "stopped", "invalid"];

/// The kinds of rollout step `rehydrator_steps_total` counts.
pub const STEP_KINDS: [&str; 6] = ["start", "launch", "transfer", "retire", "complete", "stop"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LockLabel {
    lock: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    lock: String,
    holder: String,
    /// `alive`, `dead` (its liveness check is critical), `unknown` (no check seen).
    holder_state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabel {
    watch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    source: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ImageLabel {
    image: String,
}

type HistogramFamily = Family<KindLabel, Histogram, fn() -> Histogram>;

/// Step durations run from a record write (milliseconds) to a retirement waiting for the
/// cluster to settle (minutes): 50 ms doubling to about 27 minutes.
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rollout_state: Family<StateLabel, Gauge>,
    paused: Gauge,
    steps: Family<StepLabels, Counter>,
    step_duration: HistogramFamily,
    lock_held: Family<LockLabel, Gauge>,
    takeovers: Family<LockLabel, Counter>,
    watch_fires: Family<WatchLabel, Counter>,
    events_missed: Family<WatchLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    jobs: Family<JobLabels, Counter>,
    servers: Family<ImageLabel, Gauge>,
    /// What the last status read saw, for alerting (`observe`).
    failure_tolerance: Gauge,
    healthy: Gauge,
    servers_outdated: Gauge,
    rollout_started: Gauge,
    rollout_progress: Gauge,
    replicas: Family<StateLabel, Gauge>,
    lock_held_since: Family<HolderLabels, Gauge>,
    last_read: Gauge,
    /// `process_*`, unprefixed, in a registry of their own.
    process: crate::process_metrics::ProcessMetrics,
}

/// What a status read saw, for the alerting series (`Metrics::observe`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub failure_tolerance: u32,
    pub healthy: bool,
    /// Servers not on the rollout's (or the newest) image.
    pub outdated: usize,
    /// The rollout's start and its last launch or retirement, Unix ms (0: none).
    pub rollout_started_ms: u64,
    pub last_progress_ms: u64,
    pub replicas_alive: usize,
    pub replicas_dead: usize,
    /// The locks held, by whom and since when.
    pub held: Vec<HeldLock>,
    /// When it was read, Unix ms.
    pub read_at_ms: u64,
}

/// A held lock as a status read saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldLock {
    /// Its name (`step`).
    pub lock: String,
    pub holder: String,
    /// Whether the holder's liveness check passes; None: no check seen for it.
    pub holder_alive: Option<bool>,
    /// When it was taken, Unix ms (0: its value does not say).
    pub since_ms: u64,
}

/// The registry and its series; clones share them.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rehydrator");
        let rollout_state = Family::<StateLabel, Gauge>::default();
        let paused = Gauge::default();
        let steps = Family::<StepLabels, Counter>::default();
        let step_duration: HistogramFamily = Family::new_with_constructor(step_histogram);
        let lock_held = Family::<LockLabel, Gauge>::default();
        let takeovers = Family::<LockLabel, Counter>::default();
        let watch_fires = Family::<WatchLabel, Counter>::default();
        let events_missed = Family::<WatchLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let jobs = Family::<JobLabels, Counter>::default();
        let servers = Family::<ImageLabel, Gauge>::default();
        let failure_tolerance = Gauge::default();
        let healthy = Gauge::default();
        let servers_outdated = Gauge::default();
        let rollout_started = Gauge::default();
        let rollout_progress = Gauge::default();
        let replicas = Family::<StateLabel, Gauge>::default();
        let last_read = Gauge::default();
        let lock_held_since = Family::<HolderLabels, Gauge>::default();
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the version this replica runs",
            build_info,
        );
        registry.register(
            "cluster_failure_tolerance",
            "Autopilot's failure tolerance at the last status read",
            failure_tolerance.clone(),
        );
        registry.register(
            "cluster_healthy",
            "1 while autopilot said the cluster is healthy at the last status read",
            healthy.clone(),
        );
        registry.register(
            "servers_outdated",
            "Servers not on the rollout's target (or the newest image) at the last status read",
            servers_outdated.clone(),
        );
        registry.register(
            "rollout_started_timestamp_seconds",
            "When the recorded rollout started (0: none)",
            rollout_started.clone(),
        );
        registry.register(
            "rollout_last_progress_timestamp_seconds",
            "The recorded rollout's last launch or retirement, else its start (0: none)",
            rollout_progress.clone(),
        );
        registry.register(
            "replicas",
            "The cluster's replicas by their liveness checks (alive, dead) at the last status read",
            replicas.clone(),
        );
        registry.register(
            "lock_held_since_timestamp_seconds",
            "When each held lock was taken, by lock, holder and the holder's liveness (alive, dead, unknown), at the last status read (0: the holder did not say)",
            lock_held_since.clone(),
        );
        registry.register(
            "status_last_read_timestamp_seconds",
            "When the values read from Consul (tolerance, servers, rollout, replicas) were last read: stale when Consul is down",
            last_read.clone(),
        );
        registry.register(
            "rollout_state",
            "The rollout record's state: 1 for the current one (none, active, completed, stopped, invalid: it does not decode)",
            rollout_state.clone(),
        );
        registry.register("paused", "1 while the pause key is set", paused.clone());
        registry.register(
            "steps",
            "Rollout steps this replica took, by kind and outcome (ok, error)",
            steps.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "How long each rollout step took, by kind",
            step_duration.clone(),
        );
        registry.register(
            "lock_held",
            "1 while this replica holds the lock",
            lock_held.clone(),
        );
        registry.register(
            "takeovers",
            "Jobs this replica took over from a holder whose session died before its receipt",
            takeovers.clone(),
        );
        registry.register(
            "watch_fires",
            "Changes a watch fired on",
            watch_fires.clone(),
        );
        registry.register(
            "events_missed",
            "User events an event watch never saw: Consul's agent dropped them (it keeps its last 256) before the watch read them",
            events_missed.clone(),
        );
        registry.register(
            "errors",
            "Errors, by source (consul, action, lock, status) and kind",
            errors.clone(),
        );
        registry.register(
            "jobs",
            "Jobs that ended on this replica, by action and outcome (already_done: another replica ran it)",
            jobs.clone(),
        );
        registry.register(
            "servers",
            "Consul servers by the image they run (unknown: no image known), as of the last scrape",
            servers.clone(),
        );
        // The encoder leaves out a family without series: create the known ones at zero, so
        // every name is there from the first scrape and rate() has a starting point.
        for s in ROLLOUT_STATES {
            let _ = rollout_state.get_or_create(&StateLabel { state: s.into() });
        }
        for s in ["alive", "dead"] {
            let _ = replicas.get_or_create(&StateLabel { state: s.into() });
        }
        for kind in STEP_KINDS {
            for outcome in ["ok", "error"] {
                let _ = steps.get_or_create(&StepLabels {
                    kind: kind.into(),
                    outcome: outcome.into(),
                });
            }
            let _ = step_duration.get_or_create(&KindLabel { kind: kind.into() });
        }
        Self {
            inner: Arc::new(Inner {
                failure_tolerance,
                healthy,
                servers_outdated,
                rollout_started,
                rollout_progress,
                replicas,
                lock_held_since,
                last_read,
                process: Default::default(),
                registry,
                rollout_state,
                paused,
                steps,
                step_duration,
                lock_held,
                takeovers,
                watch_fires,
                events_missed,
                errors,
                jobs,
                servers,
            }),
        }
    }

    /// Creates the series of the configured locks (by key) and watches at zero.
    pub fn declare<'a>(
        &self,
        lock_keys: impl IntoIterator<Item = &'a str>,
        watches: impl IntoIterator<Item = &'a str>,
    ) {
        for key in lock_keys {
            let label = LockLabel {
                lock: lock_name(key).into(),
            };
            let _ = self.inner.lock_held.get_or_create(&label);
            let _ = self.inner.takeovers.get_or_create(&label);
        }
        for watch in watches {
            let _ = self.inner.watch_fires.get_or_create(&WatchLabel {
                watch: watch.into(),
            });
        }
    }

    /// The rollout record's state (`None`: no record).
    pub fn rollout_state(&self, state: Option<&RolloutState>) {
        self.rollout_state_named(match state {
            None => "none",
            Some(RolloutState::Active) => "active",
            Some(RolloutState::Completed { .. }) => "completed",
            Some(RolloutState::Stopped { .. }) => "stopped",
        });
    }

    /// The rollout record is there but does not decode.
    pub fn rollout_invalid(&self) {
        self.rollout_state_named("invalid");
    }

    fn rollout_state_named(&self, current: &str) {
        for s in ROLLOUT_STATES {
            let value = i64::from(s == current);
            self.inner
                .rollout_state
                .get_or_create(&StateLabel { state: s.into() })
                .set(value);
        }
    }

    pub fn paused(&self, paused: bool) {
        self.inner.paused.set(i64::from(paused));
    }

    /// Starts timing a rollout step of `kind` (`start`, `launch`, `transfer`, `retire`,
    /// `complete`, `stop`). It counts as `ok` through `StepTimer::finish`/`ok`; dropped
    /// unfinished (an early error return, an aborted run) it counts as `error`.
    pub fn step(&self, kind: &'static str) -> StepTimer {
        StepTimer {
            metrics: self.clone(),
            kind,
            started: Instant::now(),
            done: false,
        }
    }

    fn step_ended(&self, kind: &str, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.inner
            .steps
            .get_or_create(&StepLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.inner
            .step_duration
            .get_or_create(&KindLabel { kind: kind.into() })
            .observe(took.as_secs_f64());
    }

    /// Whether this replica holds the lock at `key` (labelled by its last segment, `step`).
    pub fn lock_held(&self, key: &str, held: bool) {
        self.inner
            .lock_held
            .get_or_create(&LockLabel {
                lock: lock_name(key).into(),
            })
            .set(i64::from(held));
    }

    /// This replica took over a job at the lock `key` whose holder died before its receipt.
    pub fn takeover(&self, key: &str) {
        self.inner
            .takeovers
            .get_or_create(&LockLabel {
                lock: lock_name(key).into(),
            })
            .inc();
    }

    /// `missed` user events `watch` never saw (Consul's buffer dropped them first).
    pub fn events_missed(&self, watch: &str, missed: u64) {
        self.inner
            .events_missed
            .get_or_create(&WatchLabel {
                watch: watch.into(),
            })
            .inc_by(missed);
    }

    pub fn watch_fired(&self, watch: &str) {
        self.inner
            .watch_fires
            .get_or_create(&WatchLabel {
                watch: watch.into(),
            })
            .inc();
    }

    /// An error from `source` (`consul`, `action`, `lock`, `status`) of `kind` (the errors'
    /// own `kind()` labels).
    pub fn error(&self, source: &'static str, kind: &'static str) {
        self.inner
            .errors
            .get_or_create(&ErrorLabels {
                source: source.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// A job of `action` ended here with `outcome` (a receipt outcome's label).
    pub fn job_ended(&self, action: &str, outcome: &'static str) {
        self.inner
            .jobs
            .get_or_create(&JobLabels {
                action: action.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Replaces the servers-by-image counts with those of `images` (one entry per server).
    pub fn servers_by_image<'a>(&self, images: impl IntoIterator<Item = Option<&'a str>>) {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for image in images {
            *counts.entry(image.unwrap_or("unknown")).or_default() += 1;
        }
        // Cleared first so an image no server runs any more drops out instead of staying at
        // its last count.
        self.inner.servers.clear();
        for (image, n) in counts {
            self.inner
                .servers
                .get_or_create(&ImageLabel {
                    image: image.into(),
                })
                .set(n);
        }
    }

    /// The alerting series from a status read.
    pub fn observe(&self, o: &Observed) {
        let i = &self.inner;
        i.failure_tolerance.set(i64::from(o.failure_tolerance));
        i.healthy.set(i64::from(o.healthy));
        i.servers_outdated
            .set(i64::try_from(o.outdated).unwrap_or(i64::MAX));
        i.rollout_started.set(secs(o.rollout_started_ms));
        i.rollout_progress.set(secs(o.last_progress_ms));
        for (state, n) in [("alive", o.replicas_alive), ("dead", o.replicas_dead)] {
            i.replicas
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        // Only the locks held now: a released lock's series goes, so an alert on its age
        // ends with the hold.
        i.lock_held_since.clear();
        for h in &o.held {
            i.lock_held_since
                .get_or_create(&HolderLabels {
                    lock: h.lock.clone(),
                    holder: h.holder.clone(),
                    holder_state: match h.holder_alive {
                        Some(true) => "alive",
                        Some(false) => "dead",
                        None => "unknown",
                    }
                    .into(),
                })
                .set(secs(h.since_ms));
        }
        i.last_read.set(secs(o.read_at_ms));
    }

    /// Everything, in the OpenMetrics text format (`CONTENT_TYPE`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        encode_registry(&mut out, &self.inner.registry)?;
        if self.inner.process.refresh() {
            encode_registry(&mut out, &self.inner.process.registry)?;
        }
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// Unix ms as whole seconds for a gauge.
fn secs(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

/// A lock's name: the last segment of its key.
fn lock_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Times one rollout step; see `Metrics::step`.
#[must_use = "a step timer dropped at once counts an error"]
pub struct StepTimer {
    metrics: Metrics,
    kind: &'static str,
    started: Instant,
    done: bool,
}

impl StepTimer {
    /// Counts the step as `ok` or `error` by `result`, and hands `result` back.
    pub fn finish<T, E>(mut self, result: Result<T, E>) -> Result<T, E> {
        self.done = true;
        self.metrics
            .step_ended(self.kind, result.is_ok(), self.started.elapsed());
        result
    }

    /// Counts the step as `ok`.
    pub fn ok(self) {
        let _ = self.finish(Ok::<(), ()>(()));
    }
}

impl Drop for StepTimer {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .step_ended(self.kind, false, self.started.elapsed());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_declared_series_are_listed_before_anything_happens() {
        let m = Metrics::new();
        m.declare(["rehydrator/c/locks/step"], ["timer"]);
        let text = m.encode().unwrap();
        for name in [
            "rehydrator_rollout_state",
            "rehydrator_paused",
            "rehydrator_steps",
            "rehydrator_step_duration_seconds",
            "rehydrator_lock_held",
            "rehydrator_takeovers",
            "rehydrator_watch_fires",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        for series in [
            r#"rehydrator_rollout_state{state="none"}"#,
            r#"rehydrator_steps_total{kind="transfer",outcome="error"}"#,
            r#"rehydrator_lock_held{lock="step"}"#,
            r#"rehydrator_takeovers_total{lock="step"}"#,
            r#"rehydrator_watch_fires_total{watch="timer"}"#,
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
    }

    #[test]
    fn exactly_one_rollout_state_is_set() {
        let m = Metrics::new();
        m.rollout_state(Some(&RolloutState::Active));
        m.rollout_state(Some(&RolloutState::Stopped {
            at: 1,
            reason: "x".into(),
        }));
        let text = m.encode().unwrap();
        let set: Vec<&str> = ROLLOUT_STATES
            .into_iter()
            .filter(|s| {
                sample(&text, &format!("rehydrator_rollout_state{{state=\"{s}\"}}")) == Some(1.0)
            })
            .collect();
        assert_eq!(set, ["stopped"]);
    }

    #[test]
    fn a_step_counts_ok_when_finished_and_error_when_dropped() {
        let m = Metrics::new();
        let r: Result<u8, ()> = m.step("launch").finish(Ok(1));
        assert_eq!(r, Ok(1));
        m.step("retire").ok();
        drop(m.step("retire"));
        let _ = m.step("launch").finish(Err::<(), _>("boom"));
        let text = m.encode().unwrap();
        for (series, want) in [
            (r#"rehydrator_steps_total{kind="launch",outcome="ok"}"#, 1.0),
            (
                r#"rehydrator_steps_total{kind="launch",outcome="error"}"#,
                1.0,
            ),
            (r#"rehydrator_steps_total{kind="retire",outcome="ok"}"#, 1.0),
            (
                r#"rehydrator_steps_total{kind="retire",outcome="error"}"#,
                1.0,
            ),
            (
                r#"rehydrator_step_duration_seconds_count{kind="retire"}"#,
                2.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
    }

    #[test]
    fn the_alerting_series_follow_the_last_read() {
        let m = Metrics::new();
        m.observe(&Observed {
            failure_tolerance: 1,
            healthy: true,
            outdated: 2,
            rollout_started_ms: 1_700_000_000_999,
            last_progress_ms: 1_700_000_060_000,
            replicas_alive: 2,
            replicas_dead: 1,
            held: vec![HeldLock {
                lock: "step".into(),
                holder: "r1".into(),
                holder_alive: Some(false),
                since_ms: 1_700_000_030_000,
            }],
            read_at_ms: 1_700_000_061_500,
        });
        let text = m.encode().unwrap();
        for want in [
            "rehydrator_cluster_failure_tolerance 1",
            "rehydrator_cluster_healthy 1",
            "rehydrator_servers_outdated 2",
            "rehydrator_rollout_started_timestamp_seconds 1700000000",
            "rehydrator_rollout_last_progress_timestamp_seconds 1700000060",
            "rehydrator_replicas{state=\"alive\"} 2",
            "rehydrator_replicas{state=\"dead\"} 1",
            "rehydrator_status_last_read_timestamp_seconds 1700000061",
            "rehydrator_build_info{version=",
            r#"rehydrator_lock_held_since_timestamp_seconds{lock="step",holder="r1",holder_state="dead"} 1700000030"#,
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // Released: the series goes with the hold.
        m.observe(&Observed::default());
        let text = m.encode().unwrap();
        assert!(
            !text.contains("rehydrator_lock_held_since_timestamp_seconds{"),
            "{text}"
        );
    }

    #[test]
    fn the_process_series_are_read_from_proc() {
        let text = Metrics::new().encode().unwrap();
        let value = |name: &str| sample(&text, name).unwrap_or(-1.0);
        assert!(
            value("process_resident_memory_bytes") > 1_000_000.0,
            "{text}"
        );
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(
            value("process_max_fds") >= value("process_open_fds"),
            "{text}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0, "{text}");
        // Started after 2020 and not in the future.
        let started = value("process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started > 1.6e9 && started <= now + 1.0,
            "{started} vs {now}"
        );
        assert!(text.ends_with("# EOF\n"), "one end of the exposition");
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn servers_by_image_forgets_images_no_server_runs() {
        let m = Metrics::new();
        m.servers_by_image([Some("a"), Some("a"), Some("b")]);
        m.servers_by_image([Some("b"), Some("b"), None]);
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, r#"rehydrator_servers{image="a"}"#), None);
        assert_eq!(sample(&text, r#"rehydrator_servers{image="b"}"#), Some(2.0));
        assert_eq!(
            sample(&text, r#"rehydrator_servers{image="unknown"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn locks_are_labelled_by_name_and_counters_by_their_labels() {
        let m = Metrics::new();
        m.lock_held("rehydrator/prod/locks/step", true);
        m.takeover("rehydrator/prod/locks/step");
        m.watch_fired("rehydrate");
        m.error("consul", "unreachable");
        m.job_ended("spin-up", "launched");
        let text = m.encode().unwrap();
        for series in [
            r#"rehydrator_lock_held{lock="step"}"#,
            r#"rehydrator_takeovers_total{lock="step"}"#,
            r#"rehydrator_watch_fires_total{watch="rehydrate"}"#,
            r#"rehydrator_errors_total{source="consul",kind="unreachable"}"#,
            r#"rehydrator_jobs_total{action="spin-up",outcome="launched"}"#,
        ] {
            assert_eq!(sample(&text, series), Some(1.0), "{series} in\n{text}");
        }
    }
}
