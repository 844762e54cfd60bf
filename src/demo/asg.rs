//! `rehydrator demo --asg`: an instance refresh of a simulated Auto Scaling group of Consul
//! servers, twice. First **without the guard**: the group replaces its servers as AWS does,
//! with no idea of Raft (launch before terminate, MinHealthyPercentage 100). Then **with the
//! guard**: the group has `rehydrator-*` lifecycle hooks and replica processes run the
//! `lifecycle-guard` action, which lets a server go only once its replacement votes and the
//! healthy voters left keep the baseline failure tolerance, the leader last. One summary
//! compares the two from the simulator's own record; one picture stacks both timelines.
//!
//! The verdict is the guarded run's: it must lose no quorum, never drop below the baseline
//! and never terminate a leader while it leads. What the unguarded run breaks is the point of
//! the comparison, not a failure of the demo.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use awc::http::Method;
use rehydrator_sim::SimConfig;
use serde_json::{json, Value};

use super::display::Display;
use super::observe::Probe;
use super::replicas::Replicas;
use super::timeline::{self, Event, Marker, MarkerKind, Picture};
use super::{free_ports, scratch_dir, DemoError, Options, NEW_IMAGE, OLD_IMAGE};
use rehydrator_actors::guard::baseline;

/// How long one refresh may take (five servers, a promotion each, plus the replicas' start).
const REFRESH_BOUND: Duration = Duration::from_secs(120);
/// How often the demo looks at the group.
const LOOK: Duration = Duration::from_millis(200);
/// The hooks' heartbeat timeout: long enough that only the guard ends a wait.
const HEARTBEAT_MS: u64 = 120_000;

/// One refresh's figures, from the simulator's record.
#[derive(Debug, Clone)]
pub struct RefreshRun {
    pub guarded: bool,
    pub took: Duration,
    pub quorum_lost_count: u64,
    pub min_failure_tolerance: u64,
    pub max_voters_missing: u64,
    pub leader_retired: u64,
    pub leader_changes: u64,
    pub leaderless_ms: u64,
    /// Every live server a healthy voter on the new image at the end.
    pub healthy_at_end: bool,
    pub events: Vec<Event>,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Both runs and the verdict.
#[derive(Debug, Clone)]
pub struct AsgOutcome {
    pub servers: usize,
    pub baseline: u64,
    pub without: RefreshRun,
    pub with: RefreshRun,
    pub timeline: PathBuf,
    /// What the guarded run broke (empty: it held).
    pub violations: Vec<String>,
}

impl AsgOutcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The comparison, one line per figure.
    pub fn lines(&self) -> Vec<String> {
        let (a, b) = (&self.without, &self.with);
        let yes = |ok: bool| if ok { "yes" } else { "NO" };
        vec![
            format!(
                "Instance refresh of a {}-server group (MinHealthyPercentage 100, MaxHealthyPercentage 120), baseline failure tolerance {}:",
                self.servers, self.baseline
            ),
            format!("{:<40} {:>16} {:>16}", "", "without guard", "with guard"),
            format!("{:<40} {:>15.1}s {:>15.1}s", "time to replace every server", a.took.as_secs_f64(), b.took.as_secs_f64()),
            format!("{:<40} {:>16} {:>16}", "quorum lost (times)", a.quorum_lost_count, b.quorum_lost_count),
            format!("{:<40} {:>16} {:>16}", "lowest failure tolerance", a.min_failure_tolerance, b.min_failure_tolerance),
            format!("{:<40} {:>16} {:>16}", "voters missing at worst", a.max_voters_missing, b.max_voters_missing),
            format!("{:<40} {:>16} {:>16}", "leader terminated while leading", a.leader_retired, b.leader_retired),
            format!("{:<40} {:>16} {:>16}", "leader changes", a.leader_changes, b.leader_changes),
            format!("{:<40} {:>15}ms {:>15}ms", "without a leader", a.leaderless_ms, b.leaderless_ms),
            format!("{:<40} {:>16} {:>16}", "every server a healthy voter at the end", yes(a.healthy_at_end), yes(b.healthy_at_end)),
        ]
    }
}

/// The guard replicas' configuration: only the guard, on a 1 s timer.
fn guard_config(consul: &str, servers: usize) -> String {
    let ttl = super::SESSION_TTL.as_secs();
    let delay = super::LOCK_DELAY.as_secs();
    format!(
        r#"# Written by `rehydrator demo --asg`: the lifecycle guard, pointed at the demo's simulator.
[cluster]
name = "{cluster}"
desired_servers = {servers}
[consul]
address = "{consul}"
[cloud]
type = "sim"
[lock]
session_ttl = "{ttl}s"
lock_delay = "{delay}s"
[status]
listen = "127.0.0.1:0"
[action.guard]
type = "lifecycle-guard"
[[watch]]
name = "guard"
type = "schedule"
every = "1s"
action = "guard"
"#,
        cluster = super::CLUSTER
    )
}

struct Sim {
    running: rehydrator_sim::RunningSim,
    probe: Probe,
}

impl Sim {
    /// Must run inside an actix System (the probe's clients are awc's).
    fn start(servers: usize) -> Result<Self, DemoError> {
        let running = rehydrator_sim::start(
            ([127, 0, 0, 1], 0).into(),
            SimConfig {
                servers,
                image: OLD_IMAGE.into(),
                boot_delay: super::BOOT,
                stabilization: super::STABILIZATION,
                election: Duration::from_millis(200),
                failure_detection: Duration::from_millis(200),
                ..SimConfig::default()
            },
        )
        .map_err(DemoError::Sim)?;
        let probe = Probe::new(running.url(), super::CLUSTER)?;
        Ok(Self { running, probe })
    }

    /// GET `path` as JSON.
    async fn get(&self, path: &str) -> Result<Value, DemoError> {
        Ok(self.probe.get(path).await?)
    }

    /// `method path` with a JSON body; fails unless 2xx.
    async fn send(&self, method: Method, path: &str, body: Value) -> Result<(), DemoError> {
        Ok(self.probe.send(method, path, Some(body)).await?)
    }

    /// The group's members on the new image and in service, and every live server a
    /// healthy voter.
    async fn settled(&self, servers: usize) -> Result<(bool, String), DemoError> {
        let g = self.get("/sim/group").await?;
        let members = g["members"].as_array().cloned().unwrap_or_default();
        let new = members
            .iter()
            .filter(|m| m["image"] == NEW_IMAGE && m["lifecycle"] == "InService")
            .count();
        let held = members
            .iter()
            .filter(|m| m["lifecycle"] != "InService")
            .count();
        let list = self.get("/sim/servers").await?;
        let live: Vec<Value> = list
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s["machine"] != "terminated")
            .collect();
        let voters = live
            .iter()
            .filter(|s| s["voter"] == true && s["healthy"] == true)
            .count();
        let line = format!(
            "{new} members in service on {NEW_IMAGE} (the group's size is {servers}), {held} held in a hook, {voters} healthy voters of {} live servers",
            live.len()
        );
        let done = new == servers
            && members.len() == servers
            && g["refresh"].is_null()
            && live.len() == servers
            && voters == servers;
        Ok((done, line))
    }
}

fn unix_ms() -> u64 {
    super::unix_ms()
}

/// One refresh, guarded or not: the group made, the refresh started, followed to its end.
async fn refresh(
    opts: &Options,
    display: &mut Display,
    guarded: bool,
) -> Result<RefreshRun, DemoError> {
    let n = opts.servers;
    let sim = Sim::start(n)?;
    let mut hooks = json!([]);
    let logs = scratch_dir()?;
    let mut replicas = None;
    if guarded {
        hooks = json!([
            {"name": "rehydrator-launching", "transition": "launching",
             "heartbeat_timeout_ms": HEARTBEAT_MS, "default_result": "ABANDON"},
            {"name": "rehydrator-terminating", "transition": "terminating",
             "heartbeat_timeout_ms": HEARTBEAT_MS, "default_result": "CONTINUE"},
        ]);
        let config = logs.join("guard.toml");
        std::fs::write(&config, guard_config(&sim.running.url(), n)).map_err(|source| {
            DemoError::Scratch {
                path: config.clone(),
                source,
            }
        })?;
        let names: Vec<(String, u16)> = (1..=opts.replicas)
            .map(|i| format!("guard-{i}"))
            .zip(free_ports(opts.replicas)?)
            .collect();
        let started = Replicas::spawn(&opts.exe, &config, &logs, &names)?;
        display.note(&format!(
            "{} guard replicas started (rehydrator run, lifecycle-guard every 1 s); logs in {}",
            started.list.len(),
            logs.display()
        ));
        replicas = Some(started);
        await_sessions(&sim, opts.replicas).await?;
    }
    let label = if guarded {
        "with the guard"
    } else {
        "without the guard"
    };
    sim.send(
        Method::POST,
        "/sim/group",
        json!({"hooks": hooks, "max": n + 1}),
    )
    .await?;
    sim.send(Method::POST, "/sim/images", json!({"id": NEW_IMAGE}))
        .await?;
    sim.send(Method::POST, "/sim/invariants/reset", json!({}))
        .await?;
    sim.send(Method::PUT, "/sim/group", json!({"image": NEW_IMAGE}))
        .await?;
    let start_ms = unix_ms();
    let started = Instant::now();
    sim.send(
        Method::POST,
        "/sim/group/refresh",
        json!({"min_healthy_percentage": 100, "max_healthy_percentage": 120}),
    )
    .await?;
    display.note(&format!("Instance refresh {label}: started."));
    let mut last = String::new();
    let healthy_at_end = loop {
        let (done, line) = sim.settled(n).await?;
        if line != last {
            display.note(&format!("  {label}: {line}"));
            last = line;
        }
        if done {
            break true;
        }
        // Unguarded, the group may finish its refresh on a cluster that lost quorum: the
        // refresh is over when the group says so, whatever Consul says.
        let g = sim.get("/sim/group").await?;
        let group_done = g["refresh"].is_null()
            && g["members"].as_array().is_some_and(|m| {
                m.iter()
                    .all(|m| m["image"] == NEW_IMAGE && m["lifecycle"] == "InService")
            });
        if !guarded && group_done {
            // Give Consul the promotion time it would need, then judge.
            actix_rt::time::sleep(super::STABILIZATION * 2).await;
            break sim.settled(n).await?.0;
        }
        if started.elapsed() > REFRESH_BOUND {
            if let Some(mut r) = replicas {
                r.stop_all();
            }
            sim.running.stop().await;
            return Err(DemoError::Timeout {
                what: format!("the instance refresh {label}"),
                limit: REFRESH_BOUND,
                logs,
            });
        }
        actix_rt::time::sleep(LOOK).await;
    };
    let took = started.elapsed();
    let end_ms = unix_ms();
    let inv = sim.get("/sim/invariants").await?;
    let events: Vec<Event> =
        serde_json::from_value(sim.get("/sim/timeline").await?).unwrap_or_default();
    if let Some(mut r) = replicas {
        r.stop_all();
    }
    sim.running.stop().await;
    let _ = std::fs::remove_dir_all(&logs);
    let field = |name: &str| inv[name].as_u64().unwrap_or(u64::MAX);
    Ok(RefreshRun {
        guarded,
        took,
        quorum_lost_count: field("quorum_lost_count"),
        min_failure_tolerance: field("min_failure_tolerance"),
        max_voters_missing: field("max_voters_missing"),
        leader_retired: field("leader_retired"),
        leader_changes: field("leader_changes"),
        leaderless_ms: field("leaderless_ms"),
        healthy_at_end,
        events,
        start_ms,
        end_ms,
    })
}

/// Waits until each guard replica holds a session: its lock manager is up.
async fn await_sessions(sim: &Sim, replicas: usize) -> Result<(), DemoError> {
    let start = Instant::now();
    loop {
        let list = sim.get("/v1/session/list").await?;
        if list.as_array().map_or(0, Vec::len) >= replicas {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(DemoError::Timeout {
                what: "the guard replicas' sessions".into(),
                limit: Duration::from_secs(30),
                logs: std::env::temp_dir(),
            });
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs both refreshes and writes the stacked timeline.
pub async fn run(opts: &Options) -> Result<AsgOutcome, DemoError> {
    let mut display = Display::new(false);
    display.note(&format!(
        "rehydrator demo --asg: a simulated group of {} Consul servers refreshed onto {NEW_IMAGE}, first without the lifecycle guard, then with it.",
        opts.servers
    ));
    let without = refresh(opts, &mut display, false).await?;
    let with = refresh(opts, &mut display, true).await?;
    let floor = baseline(opts.servers) as u64;
    let mut violations = Vec::new();
    if with.quorum_lost_count != 0 {
        violations.push(format!(
            "quorum was lost {} time(s)",
            with.quorum_lost_count
        ));
    }
    if with.min_failure_tolerance < floor {
        violations.push(format!(
            "failure tolerance fell to {}, below the baseline {floor}",
            with.min_failure_tolerance
        ));
    }
    if with.leader_retired != 0 {
        violations.push(format!(
            "the leader was terminated while leading {} time(s)",
            with.leader_retired
        ));
    }
    if !with.healthy_at_end {
        violations.push("not every server is a healthy voter on the new image".into());
    }
    let svg = stacked_svg(&without, &with);
    std::fs::write(&opts.timeline, svg).map_err(|source| DemoError::Timeline {
        path: opts.timeline.clone(),
        source,
    })?;
    let outcome = AsgOutcome {
        servers: opts.servers,
        baseline: floor,
        without,
        with,
        timeline: opts.timeline.clone(),
        violations,
    };
    for line in outcome.lines() {
        display.note(&line);
    }
    display.note(&format!("Timeline: {}", opts.timeline.display()));
    Ok(outcome)
}

/// Both runs' pictures, one above the other, in one SVG document.
fn stacked_svg(without: &RefreshRun, with: &RefreshRun) -> String {
    let picture = |r: &RefreshRun, title: &str| {
        timeline::render_svg(&Picture {
            title: title.to_owned(),
            events: &r.events,
            markers: vec![
                Marker {
                    at: r.start_ms,
                    kind: MarkerKind::Fired,
                    label: "refresh".into(),
                },
                Marker {
                    at: r.end_ms,
                    kind: MarkerKind::Completed,
                    label: "replaced".into(),
                },
            ],
            old_image: OLD_IMAGE.into(),
            new_image: NEW_IMAGE.into(),
            end: r.end_ms,
        })
    };
    let top = picture(without, "Instance refresh without the guard");
    let bottom = picture(with, "Instance refresh with the lifecycle guard");
    let size = |svg: &str, attr: &str| -> f64 {
        svg.split_once(&format!("{attr}=\""))
            .and_then(|(_, rest)| rest.split_once('"'))
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (w, h1, h2) = (
        size(&top, "width").max(size(&bottom, "width")),
        size(&top, "height"),
        size(&bottom, "height"),
    );
    let height = h1 + h2;
    let nest = |svg: &str, y: f64| svg.replacen("<svg ", &format!("<svg y=\"{y}\" "), 1);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\">\n{}\n{}\n</svg>\n",
        nest(&top, 0.0),
        nest(&bottom, h1)
    )
}
