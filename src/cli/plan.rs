//! `rehydrator plan`: a dry run of the rollout's next step, read-only. It fetches the snapshot a
//! SpinUp/SpinDown run decides on (`rollout::snapshot`: the cloud's machines, autopilot
//! health, the newest image, the rollout record, the pause key) and prints what `plan::spin_up`
//! and `plan::spin_down` would do now, and why. Nothing is written: not the record, not a
//! launch, not the `waiting` line.
//!
//! SpinUp is shown twice because its answer depends on the trigger: only a `consul-rehydrate`
//! event starts a rollout in manual mode. A start is followed through to the step the same
//! run would take next (a run records the start, then decides again on the new record).

use anyhow::Context as _;
use rehydrator_actors::plan::{self, Rollout, RolloutState, Snapshot, Step};
use rehydrator_actors::rollout::{snapshot, RolloutConfig, REHYDRATE_EVENT};
use serde::{Deserialize, Serialize};

use super::{resolve, Target};

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What one executor would do now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// `spin-up` or `spin-down`.
    pub executor: String,
    /// The trigger this decision is for: `consul-rehydrate` (or an `image` watch), `other` (a
    /// catalog change, a timer) where that changes the answer, or `any`.
    pub trigger: String,
    /// `idle`, `wait`, `settle`, `start`, `launch`, `transfer_leadership`, `retire`,
    /// `complete` or `stop`.
    pub step: String,
    /// What it would do, or why it would not.
    pub detail: String,
    /// After a `start`: the step the same run would take next on the new record.
    pub then: Option<Box<Decision>>,
}

/// The plan `rehydrator plan` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub cluster: String,
    pub paused: bool,
    pub healthy: bool,
    pub failure_tolerance: u32,
    /// Servers (machines not terminated) and how many are wanted.
    pub servers: usize,
    pub desired: usize,
    /// Servers not on the newest image.
    pub outdated: usize,
    pub newest_image: Option<String>,
    /// The record's ID, target and state, if there is a record.
    pub rollout: Option<String>,
    pub decisions: Vec<Decision>,
}

/// A step as a (kind, explanation) pair.
pub fn describe(step: &Step) -> (&'static str, String) {
    match step {
        Step::Idle(why) => ("idle", why.clone()),
        Step::Wait(why) => ("wait", why.clone()),
        Step::Settle(why) => ("settle", format!("{why}; a run looks again shortly")),
        Step::Start { image } => ("start", format!("start a rollout to {image}")),
        Step::Launch { image, token } => (
            "launch",
            format!("launch one server on {image} (idempotency token {token})"),
        ),
        Step::TransferLeadership { from, to } => (
            "transfer_leadership",
            format!(
                "move leadership off {from} (to {}) before retiring it",
                to.as_deref().unwrap_or("any voter")
            ),
        ),
        Step::Retire { machine, node } => (
            "retire",
            format!("retire server {node} (machine {machine}): it leaves, then its machine goes"),
        ),
        Step::Complete => (
            "complete",
            "every server is on the target and a stable voter: record the rollout complete".into(),
        ),
        Step::Stop { reason, .. } => ("stop", format!("stop the rollout for safety: {reason}")),
    }
}

fn decision(executor: &str, trigger: &str, step: &Step) -> Decision {
    let (kind, detail) = describe(step);
    Decision {
        executor: executor.into(),
        trigger: trigger.into(),
        step: kind.into(),
        detail,
        then: None,
    }
}

/// SpinUp's decision, a start followed by what the run would do on the record it writes.
fn spin_up(s: &Snapshot, config: &RolloutConfig, requested: bool, trigger: &str) -> Decision {
    let timeout = config.stable_timeout.as_millis() as u64;
    let window = config.windows.state_at(s.now_ms);
    let step = plan::within_window(plan::spin_up(s, config.mode, requested, timeout), &window);
    let mut d = decision("spin-up", trigger, &step);
    if let Step::Start { image } = &step {
        let mut next = s.clone();
        next.rollout = Some(Rollout::start(
            "(new)".into(),
            image,
            s.now_ms,
            s.health.failure_tolerance,
        ));
        let then = plan::within_window(
            plan::spin_up(&next, config.mode, requested, timeout),
            &window,
        );
        let mut then = decision("spin-up", trigger, &then);
        if then.step == "launch" {
            // The token names a rollout not yet recorded: leave it out rather than invent it.
            then.detail = format!("launch one server on {image}");
        }
        d.then = Some(Box::new(then));
    }
    d
}

/// The plan over one snapshot: pure, so it is tested without a cluster.
pub fn plan(cluster: &str, s: &Snapshot, config: &RolloutConfig) -> Plan {
    let timeout = config.stable_timeout.as_millis() as u64;
    // A requesting watch's trigger (a new image, a request key) asks for a rollout as the
    // event does.
    let requesting = std::iter::once(REHYDRATE_EVENT.to_owned())
        .chain(config.request_watches.iter().map(|w| format!("watch {w}")))
        .collect::<Vec<_>>()
        .join(" or ");
    let on_event = spin_up(s, config, true, &requesting);
    let on_other = spin_up(s, config, false, "other");
    let mut decisions = vec![on_event.clone()];
    if (&on_other.step, &on_other.detail) != (&on_event.step, &on_event.detail) {
        decisions.push(on_other);
    } else {
        decisions[0].trigger = "any".into();
    }
    let window = config.windows.state_at(s.now_ms);
    let down = plan::within_window(plan::spin_down(s, timeout), &window);
    decisions.push(decision("spin-down", "any", &down));
    let servers = s.servers();
    let newest = s.newest_image.as_ref().map(|i| i.id.clone());
    Plan {
        cluster: cluster.into(),
        paused: s.paused,
        healthy: s.health.healthy,
        failure_tolerance: s.health.failure_tolerance,
        servers: servers.len(),
        desired: s.desired,
        outdated: servers
            .iter()
            .filter(|sv| newest.as_deref().is_some_and(|n| sv.machine.image != n))
            .count(),
        newest_image: newest,
        rollout: s.rollout.as_ref().map(|r| {
            let state = match &r.state {
                RolloutState::Active => "active".to_owned(),
                RolloutState::Completed { .. } => "completed".to_owned(),
                RolloutState::Stopped { reason, .. } => format!("stopped: {reason}"),
            };
            format!("{} to {} ({state})", r.id, r.target_image)
        }),
        decisions,
    }
}

/// The human view.
pub fn render(p: &Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan for cluster {} (dry run: nothing is changed)",
        p.cluster
    );
    let _ = writeln!(
        out,
        "  servers: {} of {} desired, {} not on the newest image {}",
        p.servers,
        p.desired,
        p.outdated,
        p.newest_image
            .as_deref()
            .unwrap_or("(none matches the filter)")
    );
    let _ = writeln!(
        out,
        "  autopilot: {}, failure tolerance {}",
        if p.healthy { "healthy" } else { "UNHEALTHY" },
        p.failure_tolerance
    );
    let _ = writeln!(
        out,
        "  rollout: {}",
        p.rollout.as_deref().unwrap_or("none recorded")
    );
    let _ = writeln!(out, "  paused: {}", if p.paused { "YES" } else { "no" });
    let _ = writeln!(out);
    for d in &p.decisions {
        let on = match d.trigger.as_str() {
            "any" => String::new(),
            "other" => " on other triggers".into(),
            t => format!(" on {t}"),
        };
        let _ = writeln!(out, "{}{on}: {} — {}", d.executor, d.step, d.detail);
        if let Some(then) = &d.then {
            let _ = writeln!(out, "  then: {} — {}", then.step, then.detail);
        }
    }
    out
}

pub async fn run(args: PlanArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args.target)?;
    let env = resolved.rollout_env("plan").await?;
    let (s, _) = snapshot(&env).await.with_context(|| {
        format!(
            "reading the rollout's snapshot from {}",
            resolved.consul.address
        )
    })?;
    let p = plan(&resolved.cluster, &s, &env.config);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&p).context("encoding the plan")?
        );
    } else {
        print!("{}", rehydrator::status::printable(&render(&p)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use rehydrator_actors::plan::Mode;
    use rehydrator_actors::ports::{ClusterHealth, Image, Machine, MachineState, PeerHealth};

    fn config() -> RolloutConfig {
        RolloutConfig {
            desired: 3,
            mode: Mode::Manual,
            dry_run: false,
            stable_timeout: Duration::from_secs(600),
            step_timeout: Duration::from_secs(60),
            retire_failed_launch: false,
            launch_attempts: 3,
            poll: Duration::from_millis(500),
            windows: Default::default(),
            request_watches: Vec::new(),
            bake: Duration::ZERO,
            snapshots: None,
        }
    }

    fn snapshot(newest: &str, paused: bool) -> Snapshot {
        let names = ["s1", "s2", "s3"];
        Snapshot {
            machines: names
                .iter()
                .enumerate()
                .map(|(i, n)| Machine {
                    id: (*n).into(),
                    image: "A".into(),
                    launched_at: i as u64,
                    state: MachineState::Running,
                    address: None,
                    zone: None,
                    node: Some((*n).into()),
                    token: None,
                    reason: None,
                })
                .collect(),
            health: ClusterHealth {
                healthy: true,
                failure_tolerance: 1,
                servers: names
                    .iter()
                    .map(|n| PeerHealth {
                        id: (*n).into(),
                        name: (*n).into(),
                        address: format!("{n}:8300"),
                        serf_status: "alive".into(),
                        leader: *n == "s1",
                        voter: true,
                        healthy: true,
                        stable_since_ms: None,
                    })
                    .collect(),
            },
            newest_image: Some(Image {
                id: newest.into(),
                name: newest.into(),
                created: "2026-01-01T00:00:00Z".into(),
            }),
            rollout: None,
            paused,
            desired: 3,
            launch_attempts: 3,
            now_ms: 1_000,
        }
    }

    #[test]
    fn nothing_to_do_when_every_server_runs_the_newest_image() {
        let p = plan("prod", &snapshot("A", false), &config());
        assert_eq!(p.outdated, 0);
        assert_eq!(p.decisions.len(), 2, "{p:?}");
        assert_eq!(p.decisions[0].trigger, "any");
        assert_eq!(p.decisions[0].step, "idle");
        assert!(p.decisions[0].detail.contains("newest image A"));
    }

    #[test]
    fn a_new_image_starts_on_the_event_and_launches_next() {
        let p = plan("prod", &snapshot("B", false), &config());
        assert_eq!(p.outdated, 3);
        let on_event = &p.decisions[0];
        assert_eq!(
            (on_event.trigger.as_str(), on_event.step.as_str()),
            ("consul-rehydrate", "start")
        );
        let then = on_event.then.as_ref().map(|t| t.step.as_str());
        assert_eq!(then, Some("launch"));
        assert_eq!(p.decisions[1].trigger, "other");
        assert!(p.decisions[1]
            .detail
            .contains("waiting for consul-rehydrate"));
        let text = render(&p);
        assert!(
            text.contains("spin-up on consul-rehydrate: start — start a rollout to B"),
            "{text}"
        );
        assert!(
            text.contains("  then: launch — launch one server on B"),
            "{text}"
        );
    }

    #[test]
    fn an_image_watch_asks_for_a_rollout_as_the_event_does() {
        let mut c = config();
        c.request_watches = vec!["new-ami".into()];
        let p = plan("prod", &snapshot("B", false), &c);
        assert_eq!(p.decisions[0].trigger, "consul-rehydrate or watch new-ami");
        assert_eq!(p.decisions[0].step, "start");
    }

    #[test]
    fn paused_the_start_is_followed_by_a_wait() {
        let p = plan("prod", &snapshot("B", true), &config());
        let then = p.decisions[0].then.as_deref();
        assert!(
            then.is_some_and(|t| t.step == "wait" && t.detail.contains("paused")),
            "{p:?}"
        );
        assert!(render(&p).contains("paused: YES"));
    }
}
