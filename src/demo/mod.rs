//! `rehydrator demo`: the whole product in one command with nothing installed. It starts the
//! simulator in this process (N servers on `image-a`, cluster constants shrunk so a rollout
//! takes seconds), starts the orchestrator replicas as real `rehydrator run` processes of this
//! binary, registers `image-b`, fires `consul-rehydrate` and shows the rollout live; with
//! `--chaos` it SIGKILLs the replica holding the `step` lock mid-step and reports the takeover.
//! It ends with a summary, a timeline picture, and a verdict from the simulator's own record.
//! Each replica's status endpoint is on a free loopback port chosen here, and the demo prints
//! their dashboards' URLs; `--fire-after` leaves time to open one before the rollout starts,
//! and `--linger` keeps everything up after it ends, until Ctrl-C.
//!
//! Sessions keep Consul's real rules (TTL 10 s, the minimum; invalidated by 2×TTL) — the
//! simulator's clock is not scaled, because scaling would shorten the TTLs the replicas renew
//! on real time. So a takeover takes about 2×TTL + lock-delay = 21 s, as it would in production.
//!
//! Pieces: `replicas` (the processes), `observe` (HTTP reads), `display` (live progress),
//! `chaos` (when to kill), `summary`, `timeline` (the SVG), `verdict` (the invariants).

pub mod asg;
pub mod chaos;
pub mod display;
pub mod observe;
pub mod real;
pub mod replicas;
pub mod summary;
pub mod timeline;
pub mod verdict;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use awc::http::Method;
use rehydrator_actors::plan::RolloutState;
use rehydrator_sim::SimConfig;
use serde_json::json;
use tracing::{debug, info, info_span, Instrument};

use self::chaos::ChaosPlan;
use self::display::{Context, Display};
use self::observe::{Observation, ObserveError, Probe};
use self::real::{RealCluster, Recorder};
use self::replicas::{Replicas, SpawnError};
use self::summary::{Summary, Takeover};
use self::timeline::{Marker, MarkerKind, Picture};
use self::verdict::Violation;

/// The demo cluster's name (its keys are `rehydrator/demo/...`).
pub const CLUSTER: &str = "demo";
pub const OLD_IMAGE: &str = "image-a";
pub const NEW_IMAGE: &str = "image-b";

/// The simulated cluster's constants: what each replaced server makes the rollout wait.
pub const BOOT: Duration = Duration::from_millis(500);
pub const STABILIZATION: Duration = Duration::from_millis(1500);
const ELECTION: Duration = Duration::from_millis(200);
const FAILURE_DETECTION: Duration = Duration::from_millis(200);

/// Consul's minimum session TTL: the backstop, should a replica's liveness check not end its
/// session (it would free a killed holder's lock between TTL and 2×TTL).
pub const SESSION_TTL: Duration = Duration::from_secs(10);
/// The replicas' liveness checks: a killed holder's session ends this long after its last pass.
pub const CHECK_TTL: Duration = Duration::from_secs(2);
/// Short, so the takeover is mostly the check expiring (Consul's default is 15 s).
pub const LOCK_DELAY: Duration = Duration::from_secs(1);

/// How long the replicas may take to start and park their watches.
const READY_BOUND: Duration = Duration::from_secs(30);
/// How long a rollout may take: generous for 9 servers on a loaded 2-core machine, plus a
/// takeover.
const ROLLOUT_BOUND: Duration = Duration::from_secs(150);
/// How long a rollout of real servers may take: each server joins, waits out its promotion and
/// an old one leaves (about 20 s a server on 1.8.7, two cores), plus a takeover.
const REAL_ROLLOUT_BASE: Duration = Duration::from_secs(90);
const REAL_ROLLOUT_PER_SERVER: Duration = Duration::from_secs(45);
/// How often the display is refreshed (and the chaos kill looks for a lock holder).
const TICK: Duration = Duration::from_millis(100);
/// How long reads may keep failing before the demo gives up: a read in a leaderless moment
/// (an election takes 0.2 s here) fails as Consul's would, and is simply retried.
const READ_OUTAGE: Duration = Duration::from_secs(10);

/// What `rehydrator demo` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub servers: usize,
    pub replicas: usize,
    /// The chaos kill's seed; None: no kill.
    pub chaos: Option<u64>,
    /// The first new server's machine fails while it boots (`POST /sim/servers/{name}/fail`).
    pub fail_launch: bool,
    pub timeline: PathBuf,
    /// The binary to start the replicas from (this one).
    pub exe: PathBuf,
    /// stdout is a terminal: redraw in place.
    pub tty: bool,
    /// How long to wait, once the replicas are ready, before firing the rollout.
    pub fire_after: Duration,
    /// Keep the simulator and the replicas (and so the dashboards) up after the rollout ends,
    /// until the stop signal.
    pub linger: bool,
    /// Real Consul instead of the simulator: this binary's agents, started through the process
    /// backend (`real`). `fail_launch` is the simulator's alone.
    pub consul_bin: Option<PathBuf>,
}

/// Why the demo could not run to its verdict.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("interrupted: the replicas and the simulator were stopped")]
    Interrupted,
    #[error("choosing the replicas' status ports: {0}")]
    Ports(#[source] std::io::Error),
    #[error("starting the simulator: {0}")]
    Sim(#[source] std::io::Error),
    #[error("scratch directory {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("replica {name} exited unexpectedly ({status}); the end of its log ({log}):\n{tail}")]
    ReplicaDied {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("reading the simulator: {0}")]
    Observe(#[from] ObserveError),
    #[error("{what} did not happen within {limit:?}; the replicas' logs are in {logs}")]
    Timeout {
        what: String,
        limit: Duration,
        logs: PathBuf,
    },
    #[error("real Consul: {what}: {reason}")]
    Real { what: String, reason: String },
    #[error("writing the timeline to {path}: {source}")]
    Timeline {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the demo ended: the figures and every broken invariant.
#[derive(Debug)]
pub struct Outcome {
    pub summary: Summary,
    pub timeline: PathBuf,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.summary.violations.is_empty()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The replicas' configuration: `config/samples/rollout.toml` with the demo's cluster and
/// timings (a 1 s timer instead of 30 s, so a missed trigger costs a second, not half a minute).
fn replica_config(consul: &str, servers: usize, cloud: &str) -> String {
    let ttl = SESSION_TTL.as_secs();
    let delay = LOCK_DELAY.as_secs();
    let check = CHECK_TTL.as_secs();
    format!(
        r#"# Written by `rehydrator demo`: the rollout sample, pointed at the demo's simulator.
[cluster]
name = "{CLUSTER}"
desired_servers = {servers}
[consul]
address = "{consul}"
[cloud]
{cloud}
[lock]
session_ttl = "{ttl}s"
lock_delay = "{delay}s"
check_ttl = "{check}s"
# Three replicas on one host: each status endpoint on its own free port, which the demo
# chooses and passes as REHYDRATOR_STATUS__LISTEN (this is the fallback).
[status]
listen = "127.0.0.1:0"
[rollout]
mode = "manual"
stable_timeout = "1m"
step_timeout = "20s"
[action.spin-up]
type = "spin-up"
[action.spin-down]
type = "spin-down"
{ROLLOUT_WATCHES}"#
    )
}

/// The watches a demo replica runs spin-up and spin-down on: `consul-rehydrate`, catalog
/// changes of the `consul` service, and a 1 s timer so a missed trigger costs a second. The
/// rollout tests run the same ones.
pub const ROLLOUT_WATCHES: &str = r#"[[watch]]
name = "rehydrate"
type = "event"
event = "consul-rehydrate"
actions = ["spin-up", "spin-down"]
[[watch]]
name = "servers"
type = "service"
service = "consul"
actions = ["spin-up", "spin-down"]
[[watch]]
name = "timer"
type = "schedule"
every = "1s"
actions = ["spin-up", "spin-down"]
"#;

/// A fresh directory for the configuration and the replicas' logs.
fn scratch_dir() -> Result<PathBuf, DemoError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = std::env::temp_dir().join(format!("rehydrator-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&path).map_err(|source| DemoError::Scratch {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Where the chaos kill is.
enum Chaos {
    Off,
    /// Waiting for the planned moment (`reached`: when the planned action count was seen).
    Armed {
        plan: ChaosPlan,
        reached: Option<Instant>,
    },
    /// Killed `victim`, whose session still holds the lock; waiting for another replica.
    Killed {
        victim: String,
        session: String,
        at: Instant,
    },
    Done,
}

/// The run's state between ticks.
struct Run<'a> {
    opts: &'a Options,
    probe: Probe,
    replicas: Replicas,
    display: Display,
    logs: PathBuf,
    chaos: Chaos,
    /// `--fail-launch`: true until the first new machine has been failed.
    fail_armed: bool,
    takeovers: Vec<Takeover>,
    chaos_missed: Option<String>,
    markers: Vec<Marker>,
    fired: Instant,
    /// Real Consul (`--consul-bin`): its agents, and what the demo rebuilds of the simulator's
    /// record from its looks.
    real: Option<(&'a RealCluster, Recorder)>,
    /// When the rollout was fired (Unix ms): the machines launched since are the rollout's.
    fired_ms: u64,
}

/// What the demo's cluster runs on.
enum Backend {
    Sim(rehydrator_sim::RunningSim),
    Real(RealCluster),
}

/// Runs the demo: its progress and summary go to stdout; the verdict is in the outcome. `stop`
/// (Ctrl-C, SIGTERM) ends it: during the rollout with `Interrupted`, while lingering with the
/// outcome; either way the replicas are killed and reaped and the simulator stopped first.
pub async fn run(opts: Options, stop: impl Future<Output = ()>) -> Result<Outcome, DemoError> {
    let span =
        info_span!("demo", servers = opts.servers, replicas = opts.replicas, chaos = ?opts.chaos);
    run_inner(&opts, stop).instrument(span).await
}

/// `n` distinct free ports on 127.0.0.1, held together while chosen so none repeats. A port
/// could be taken between here and the replica's bind; that replica then fails to start and
/// the demo says so with its log.
fn free_ports(n: usize) -> Result<Vec<u16>, DemoError> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DemoError::Ports)?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(DemoError::Ports)
}

async fn run_inner(opts: &Options, stop: impl Future<Output = ()>) -> Result<Outcome, DemoError> {
    // Who started the demo: a lingering demo stops once it is gone.
    let parent = std::os::unix::process::parent_id();
    let logs = scratch_dir()?;
    let mut display = Display::new(opts.tty);
    let backend = match &opts.consul_bin {
        None => {
            let sim = rehydrator_sim::start(
                ([127, 0, 0, 1], 0).into(),
                SimConfig {
                    servers: opts.servers,
                    image: OLD_IMAGE.into(),
                    boot_delay: BOOT,
                    stabilization: STABILIZATION,
                    election: ELECTION,
                    failure_detection: FAILURE_DETECTION,
                    ..SimConfig::default()
                },
            )
            .map_err(DemoError::Sim)?;
            info!(url = %sim.url(), "Simulator started.");
            display.note(&format!(
                "Simulated Consul datacenter on {}: {} servers on {OLD_IMAGE} (boot {:.1} s, stabilization {:.1} s).",
                sim.url(),
                opts.servers,
                BOOT.as_secs_f64(),
                STABILIZATION.as_secs_f64()
            ));
            Backend::Sim(sim)
        }
        Some(bin) => {
            display.note(&format!(
                "Starting {} real Consul servers from {} and a client agent...",
                opts.servers,
                bin.display()
            ));
            let cluster = RealCluster::start(bin, &real::data_dir(&logs), opts.servers).await?;
            info!(url = %cluster.url, version = %cluster.version, "Real Consul started.");
            display.note(&format!(
                "Real Consul {} on {}: {} servers on {OLD_IMAGE} (server_stabilization_time {:.0} s, leave_drain_time 1 s), agents' logs in {}.",
                cluster.version,
                cluster.url,
                opts.servers,
                real::STABILIZATION.as_secs_f64(),
                cluster.cloud.data_dir().join("machines").display()
            ));
            Backend::Real(cluster)
        }
    };
    let (url, cloud) = match &backend {
        Backend::Sim(sim) => (sim.url(), "type = \"sim\"".to_owned()),
        Backend::Real(c) => (c.url.clone(), c.cloud_toml()),
    };
    let config = logs.join("rehydrator.toml");
    std::fs::write(&config, replica_config(&url, opts.servers, &cloud)).map_err(|source| {
        DemoError::Scratch {
            path: config.clone(),
            source,
        }
    })?;

    let names: Vec<(String, u16)> = (1..=opts.replicas)
        .map(|i| format!("demo-{i}"))
        .zip(free_ports(opts.replicas)?)
        .collect();
    let replicas = match Replicas::spawn(&opts.exe, &config, &logs, &names) {
        Ok(r) => r,
        Err(e) => {
            stop_backend(backend).await;
            return Err(e.into());
        }
    };
    for r in &replicas.list {
        display.note(&format!(
            "replica {} started (pid {}), log {}",
            r.name,
            r.pid(),
            r.log.display()
        ));
    }
    display.note(&dashboards_line(&replicas));
    let probe = match &backend {
        Backend::Sim(_) => Probe::new(url, CLUSTER),
        Backend::Real(c) => Probe::real(url, CLUSTER, c.cloud.clone()),
    };
    let mut run = Run {
        opts,
        probe: probe?,
        replicas,
        display,
        logs,
        fail_armed: opts.fail_launch,
        chaos: match opts.chaos {
            Some(seed) => Chaos::Armed {
                plan: ChaosPlan::draw(seed, opts.servers),
                reached: None,
            },
            None => Chaos::Off,
        },
        takeovers: Vec::new(),
        chaos_missed: None,
        markers: Vec::new(),
        fired: Instant::now(),
        real: match &backend {
            Backend::Real(c) => Some((c, Recorder::new(opts.servers))),
            Backend::Sim(_) => None,
        },
        fired_ms: unix_ms(),
    };
    tokio::pin!(stop);
    let outcome = tokio::select! {
        o = run.roll() => o,
        () = &mut stop => Err(DemoError::Interrupted),
    };
    if opts.linger && outcome.is_ok() {
        run.linger(stop, parent).await;
    }
    run.replicas.stop_all();
    drop(run.real.take());
    let logs = run.logs.clone();
    let mut display = run.display;
    stop_backend(backend).await;
    let outcome = outcome?;
    if outcome.passed() {
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        display.note(&format!(
            "The replicas' logs are kept in {}",
            logs.display()
        ));
    }
    Ok(outcome)
}

async fn stop_backend(backend: Backend) {
    match backend {
        Backend::Sim(sim) => sim.stop().await,
        Backend::Real(cluster) => cluster.stop(),
    }
}

/// "dashboards: http://127.0.0.1:PORT/ (demo-1) ...": where each replica's dashboard is.
fn dashboards_line(replicas: &Replicas) -> String {
    let urls: Vec<String> = replicas
        .list
        .iter()
        .map(|r| format!("http://127.0.0.1:{}/ ({})", r.port, r.name))
        .collect();
    format!("dashboards: {}", urls.join(" "))
}

impl Run<'_> {
    /// After the rollout (`--linger`): the simulator and the replicas stay up, so their
    /// dashboards can still be looked at, until `stop` — or until the process that started
    /// the demo is gone (a killed test harness), so a lingering demo is never orphaned.
    async fn linger(&mut self, stop: impl Future<Output = ()>, parent: u32) {
        self.display.note(&dashboards_line(&self.replicas));
        self.display
            .note("Lingering: the simulator and the replicas keep running; Ctrl-C stops them.");
        let orphaned = async {
            while std::os::unix::process::parent_id() == parent {
                actix_rt::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            () = stop => {}
            () = orphaned => info!("The demo's parent process is gone; stopping."),
        }
        self.display
            .note("Stopping the replicas and the simulator.");
    }

    /// Waits for the replicas, fires the rollout, follows it to its end, then judges it.
    async fn roll(&mut self) -> Result<Outcome, DemoError> {
        self.await_ready().await?;
        if !self.opts.fire_after.is_zero() {
            self.display.note(&format!(
                "Firing the rollout in {:.1} s (--fire-after).",
                self.opts.fire_after.as_secs_f64()
            ));
            actix_rt::time::sleep(self.opts.fire_after).await;
        }
        let fired_ms = unix_ms();
        self.fired_ms = fired_ms;
        match &self.real {
            Some((cluster, _)) => cluster.register_new_image()?,
            None => {
                self.probe
                    .send(
                        Method::POST,
                        "/sim/images",
                        Some(json!({ "id": NEW_IMAGE })),
                    )
                    .await?
            }
        }
        self.display
            .note(&format!("Registered {NEW_IMAGE}; firing consul-rehydrate."));
        self.fired = Instant::now();
        self.markers.push(Marker {
            at: fired_ms,
            kind: MarkerKind::Fired,
            label: "consul-rehydrate".into(),
        });
        self.probe
            .send(Method::PUT, "/v1/event/fire/consul-rehydrate", None)
            .await?;

        let (last, completed_ms) = self.follow().await?;
        self.display.finish();
        let total = Duration::from_millis(completed_ms.saturating_sub(fired_ms));
        self.markers.push(Marker {
            at: completed_ms,
            kind: MarkerKind::Completed,
            label: "completed".into(),
        });

        let (inv, servers) = match &self.real {
            Some((cluster, recorder)) => {
                let machines = cluster.rows(fired_ms)?;
                (recorder.invariants(), real::servers_json(&machines, &last))
            }
            None => (
                self.probe.invariants().await?,
                self.probe.servers_json().await?,
            ),
        };
        let mut violations = Vec::new();
        if let Some(RolloutState::Stopped { reason, .. }) = last.rollout.as_ref().map(|r| &r.state)
        {
            violations.push(Violation::Stopped(reason.clone()));
        }
        violations.extend(verdict::check_invariants(&inv, self.opts.servers));
        let failed_launches = last.rollout.as_ref().map_or(0, |r| r.failed_launches.len());
        if self.opts.fail_launch && !self.fail_armed && failed_launches == 0 {
            violations.push(Violation::FailedLaunchUnrecorded);
        }
        violations.extend(verdict::check_servers(
            &servers,
            self.opts.servers,
            NEW_IMAGE,
            failed_launches,
        ));
        let summary = Summary {
            servers: self.opts.servers,
            from_image: OLD_IMAGE.into(),
            to_image: NEW_IMAGE.into(),
            total,
            // Real agents' boot is theirs to take; what the summary counts is the promotion.
            boot: if self.real.is_some() {
                Duration::ZERO
            } else {
                BOOT
            },
            stabilization: if self.real.is_some() {
                real::STABILIZATION
            } else {
                STABILIZATION
            },
            takeovers: self.takeovers.clone(),
            chaos_missed: self.chaos_missed.clone(),
            quorum_lost_count: inv["quorum_lost_count"].as_u64().unwrap_or(u64::MAX),
            max_voters_missing: inv["max_voters_missing"].as_u64().unwrap_or(u64::MAX),
            leader_changes: inv["leader_changes"].as_u64().unwrap_or(0),
            min_failure_tolerance: inv["min_failure_tolerance"].as_u64(),
            failed_launches,
            violations,
        };

        let events = match &self.real {
            Some((_, recorder)) => recorder.events(),
            None => self.probe.timeline().await?,
        };
        let svg = timeline::render_svg(&Picture {
            title: format!(
                "rehydrator demo: {} servers {OLD_IMAGE} -> {NEW_IMAGE}, {} replicas{}",
                self.opts.servers,
                self.opts.replicas,
                self.opts
                    .chaos
                    .map_or_else(String::new, |s| format!(", chaos seed {s}"))
            ),
            events: &events,
            markers: self.markers.clone(),
            old_image: OLD_IMAGE.into(),
            new_image: NEW_IMAGE.into(),
            end: completed_ms + 1000,
        });
        write_timeline(&self.opts.timeline, &svg)?;

        for l in summary.lines() {
            self.display.note(&l);
        }
        self.display
            .note(&format!("Timeline: {}", self.opts.timeline.display()));
        Ok(Outcome {
            summary,
            timeline: self.opts.timeline.clone(),
        })
    }

    /// Fails if a replica died on its own.
    fn check_replicas(&mut self) -> Result<(), DemoError> {
        if let Some((r, status)) = self.replicas.died() {
            return Err(DemoError::ReplicaDied {
                name: r.name.clone(),
                status: status.to_string(),
                log: r.log.clone(),
                tail: r.log_tail(20),
            });
        }
        Ok(())
    }

    /// Until every replica holds a session and its watches took their baselines: an event
    /// fired from then on is seen by all.
    async fn await_ready(&mut self) -> Result<(), DemoError> {
        let start = Instant::now();
        let want_parked = 2 * self.replicas.list.len() as u64;
        loop {
            self.check_replicas()?;
            let holders = self.probe.session_holders().await?;
            let sessions = self.replicas.list.iter().all(|r| holders.contains(&r.name));
            let baselines = self
                .replicas
                .list
                .iter()
                .all(|r| r.log_text().matches("Baseline taken.").count() >= 2);
            // The simulator counts its parked queries; a real agent does not say.
            let parked = self.real.is_some() || self.probe.parked().await? >= want_parked;
            if sessions && baselines && parked {
                self.display.note(&format!(
                    "{} replicas ready in {:.1} s: each holds a session and watches the event, the catalog and a 1 s timer.",
                    self.replicas.list.len(),
                    start.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            if start.elapsed() > READY_BOUND {
                return Err(DemoError::Timeout {
                    what: "the replicas' sessions and watches".into(),
                    limit: READY_BOUND,
                    logs: self.logs.clone(),
                });
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shows the rollout until its record says completed or stopped; answers the last
    /// observation and when it ended (unix ms).
    async fn follow(&mut self) -> Result<(Observation, u64), DemoError> {
        let header = format!(
            "rehydrator demo: {} servers {OLD_IMAGE} -> {NEW_IMAGE}, {} replicas{}",
            self.opts.servers,
            self.opts.replicas,
            self.opts
                .chaos
                .map_or_else(String::new, |s| format!(", chaos (seed {s})"))
        );
        let mut failing_since: Option<Instant> = None;
        loop {
            self.check_replicas()?;
            let looked = match &self.real {
                Some((cluster, _)) => {
                    let machines = cluster.rows(self.fired_ms)?;
                    self.probe
                        .observe_with(&machines)
                        .await
                        .map(|o| (o, Some(machines)))
                }
                None => self.probe.observe().await.map(|o| (o, None)),
            };
            let o = match looked {
                Ok((o, machines)) => {
                    failing_since = None;
                    if let (Some((_, recorder)), Some(machines)) = (&mut self.real, machines) {
                        recorder.look(unix_ms(), &o, &machines);
                    }
                    o
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > READ_OUTAGE {
                        return Err(e.into());
                    }
                    debug!(error = %e, "A read failed; trying again.");
                    actix_rt::time::sleep(TICK).await;
                    continue;
                }
            };
            let ended = match o.rollout.as_ref().map(|r| &r.state) {
                Some(RolloutState::Completed { at }) => Some(*at),
                Some(RolloutState::Stopped { at, .. }) => Some(*at),
                _ => None,
            };
            if ended.is_none() {
                self.chaos_tick(&o).await?;
                self.fail_tick(&o).await?;
            } else if matches!(self.chaos, Chaos::Killed { .. }) {
                // The kill landed in the last step and a survivor finished it: the takeover
                // happened, whether or not a tick saw the new holder before the end.
                self.chaos_tick(&o).await?;
                self.takeover_unseen();
            }
            let ctx = Context {
                header: header.clone(),
                old_image: OLD_IMAGE.into(),
                new_image: NEW_IMAGE.into(),
                elapsed: self.fired.elapsed(),
                chaos: self.chaos_status(),
                since_kill: match &self.chaos {
                    Chaos::Killed { at, .. } => Some(at.elapsed()),
                    _ => None,
                },
            };
            self.display.show(&o, &ctx);
            if let Some(at) = ended {
                if matches!(self.chaos, Chaos::Armed { .. } | Chaos::Killed { .. }) {
                    self.chaos_missed = Some("the rollout finished before the planned kill".into());
                }
                return Ok((o, at));
            }
            let limit = if self.real.is_some() {
                REAL_ROLLOUT_BASE + REAL_ROLLOUT_PER_SERVER * self.opts.servers as u32
            } else {
                ROLLOUT_BOUND
            };
            if self.fired.elapsed() > limit {
                return Err(DemoError::Timeout {
                    what: "the rollout's completion".into(),
                    limit,
                    logs: self.logs.clone(),
                });
            }
            actix_rt::time::sleep(TICK).await;
        }
    }

    /// `--fail-launch`: fails the first new server's machine while it boots, as an EC2
    /// instance can fail at boot (the simulator terminates it with EC2's reason).
    async fn fail_tick(&mut self, o: &Observation) -> Result<(), DemoError> {
        if !self.fail_armed {
            return Ok(());
        }
        let Some(new) = o
            .servers
            .iter()
            .find(|s| s.image == NEW_IMAGE && s.machine == "booting")
        else {
            return Ok(());
        };
        let path = format!("/sim/servers/{}/fail", new.name);
        // It may have booted since the read: then it fails later in its launch, which the
        // rollout handles the same way.
        if self.probe.send(Method::POST, &path, None).await.is_err() {
            return Ok(());
        }
        self.fail_armed = false;
        info!(machine = %new.name, "Fault: the new server's machine failed while booting.");
        self.markers.push(Marker {
            at: unix_ms(),
            kind: MarkerKind::Kill,
            label: format!("{} failed at boot", new.name),
        });
        self.display.note(&format!(
            "[{:>6.1} s] fault: {}'s machine failed while booting (Server.InternalError); the rollout records a failed launch and launches again",
            self.fired.elapsed().as_secs_f64(),
            new.name
        ));
        Ok(())
    }

    /// A holder killed in the last step, whose job a survivor finished between two ticks: a
    /// takeover, reported as such (its wait is at most the time since the kill).
    fn takeover_unseen(&mut self) {
        let Chaos::Killed { victim, at, .. } = &self.chaos else {
            return;
        };
        let t = Takeover {
            killed: victim.clone(),
            by: "a surviving replica".into(),
            after: at.elapsed(),
        };
        self.markers.push(Marker {
            at: unix_ms(),
            kind: MarkerKind::Takeover,
            label: format!("taken over within {:.1} s", t.after.as_secs_f64()),
        });
        self.display.note(&format!(
            "[{:>6.1} s] takeover: a surviving replica finished the step {} held, within {:.1} s of the kill (the rollout completed before a tick saw it hold the lock)",
            self.fired.elapsed().as_secs_f64(),
            t.killed,
            t.after.as_secs_f64()
        ));
        self.takeovers.push(t);
        self.chaos = Chaos::Done;
    }

    /// What the display says about the chaos kill.
    fn chaos_status(&self) -> Option<String> {
        match &self.chaos {
            Chaos::Off | Chaos::Done => None,
            Chaos::Armed { plan, .. } => Some(format!(
                "armed: SIGKILL the step lock's holder after {} cloud action(s) + {:.1} s",
                plan.after_actions,
                plan.jitter.as_secs_f64()
            )),
            Chaos::Killed { victim, .. } => Some(format!(
                "{victim} SIGKILLed; its session holds the step lock until its liveness check \
                 turns critical ({} s after its last pass), then lock-delay ({} s)",
                CHECK_TTL.as_secs(),
                LOCK_DELAY.as_secs()
            )),
        }
    }

    /// Advances the chaos kill: at the planned moment SIGKILL the lock's holder; then wait
    /// for another replica to take the lock.
    async fn chaos_tick(&mut self, o: &Observation) -> Result<(), DemoError> {
        match &mut self.chaos {
            Chaos::Off | Chaos::Done => Ok(()),
            Chaos::Armed { plan, reached } => {
                if reached.is_none() && o.cloud_actions >= plan.after_actions {
                    *reached = Some(Instant::now());
                }
                let due = reached.is_some_and(|r| r.elapsed() >= plan.jitter);
                if !due {
                    return Ok(());
                }
                // A fresh read: the holder must be the one killed, not the one a tick ago. A
                // failed read (a leaderless moment) just means trying at the next tick.
                let Some(holder) = self.probe.step_lock().await.ok().flatten() else {
                    return Ok(());
                };
                let at = Instant::now();
                let at_ms = unix_ms();
                if !self.replicas.kill(&holder.replica) {
                    return Ok(());
                }
                info!(
                    victim = %holder.replica,
                    action = %holder.action,
                    "Chaos: SIGKILLed the step lock's holder.",
                );
                self.markers.push(Marker {
                    at: at_ms,
                    kind: MarkerKind::Kill,
                    label: format!("SIGKILL {} ({})", holder.replica, holder.action),
                });
                self.display.note(&format!(
                    "[{:>6.1} s] chaos: SIGKILL {} while it held the step lock for {} ({} cloud actions done)",
                    self.fired.elapsed().as_secs_f64(),
                    holder.replica,
                    holder.action,
                    o.cloud_actions
                ));
                // Unreadable counts as still held: a dead process cannot release it.
                let released = match self.probe.step_lock().await {
                    Ok(still) => still.is_none_or(|h| h.session != holder.session),
                    Err(_) => false,
                };
                if !released {
                    self.chaos = Chaos::Killed {
                        victim: holder.replica,
                        session: holder.session,
                        at,
                    };
                } else {
                    // It released the lock between the read and the kill: nothing to take over.
                    self.chaos_missed = Some(format!(
                        "{} had released the step lock just before the kill",
                        holder.replica
                    ));
                    self.chaos = Chaos::Done;
                }
                Ok(())
            }
            Chaos::Killed {
                victim,
                session,
                at,
            } => {
                let Some(h) = o.lock.as_ref().filter(|h| h.session != *session) else {
                    return Ok(());
                };
                let t = Takeover {
                    killed: victim.clone(),
                    by: h.replica.clone(),
                    after: at.elapsed(),
                };
                info!(
                    killed = %t.killed,
                    by = %t.by,
                    after = ?t.after,
                    "Chaos: the step was taken over.",
                );
                self.markers.push(Marker {
                    at: unix_ms(),
                    kind: MarkerKind::Takeover,
                    label: format!("{} took over after {:.1} s", t.by, t.after.as_secs_f64()),
                });
                self.display.note(&format!(
                    "[{:>6.1} s] takeover: {} took the step lock {:.1} s after {} was killed (bound check TTL + lock-delay + 1 s = {} s)",
                    self.fired.elapsed().as_secs_f64(),
                    t.by,
                    t.after.as_secs_f64(),
                    t.killed,
                    (CHECK_TTL + LOCK_DELAY + Duration::from_secs(1)).as_secs()
                ));
                self.takeovers.push(t);
                self.chaos = Chaos::Done;
                Ok(())
            }
        }
    }
}

fn write_timeline(path: &Path, svg: &str) -> Result<(), DemoError> {
    std::fs::write(path, svg).map_err(|source| DemoError::Timeline {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_configuration_is_valid_and_keeps_consul_s_session_rules() {
        let dir =
            std::env::temp_dir().join(format!("rehydrator-demo-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let file = dir.join("demo.toml");
        std::fs::write(
            &file,
            replica_config("http://127.0.0.1:1", 5, "type = \"sim\""),
        )
        .unwrap_or_default();
        let settings = rehydrator_config::load_with_env(&file, &Default::default());
        let _ = std::fs::remove_dir_all(&dir);
        let settings = match settings {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(settings.cluster.desired_servers.get(), 5);
        assert_eq!(settings.lock.session_ttl, SESSION_TTL);
        assert_eq!(settings.lock.lock_delay, LOCK_DELAY);
        assert_eq!(settings.lock.check_ttl, CHECK_TTL);
        assert_eq!(settings.watches.len(), 3);
    }
}
