//! The human view of a report: the table `rehydrator status` prints.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::model::*;

/// `1d 2h`, `3h 4m`, `5m 6s`, `7s`: the two largest units.
pub fn format_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Unix milliseconds as RFC 3339 UTC to the second.
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Left-aligned columns, two spaces apart, each as wide as its widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `text` with every control character but the line break written as an escape (`\u{1b}`):
/// what the table shows comes from Consul and the cloud (a pause reason, a receipt's error, a
/// lock's holder), and an operator's terminal must not obey escape sequences hidden in it.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The human view `rehydrator status` prints; see [`printable`] for what is escaped.
pub fn render(r: &StatusReport) -> String {
    printable(&render_raw(r))
}

fn render_raw(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cluster {}  (Consul {})", r.cluster, r.consul);
    let _ = writeln!(
        out,
        "autopilot: {}, failure tolerance {}; leader: {}",
        if r.healthy { "healthy" } else { "UNHEALTHY" },
        r.failure_tolerance,
        r.leader.as_deref().unwrap_or("none"),
    );
    let _ = writeln!(
        out,
        "newest image: {}",
        match &r.newest_image {
            Some(i) => format!("{} ({}, created {})", i.id, i.name, i.created),
            None if r.source == ServerSource::Catalog => "unknown (no cloud configured)".into(),
            None => "none matches the filter".into(),
        }
    );
    let _ = match &r.pause {
        Some(p) => writeln!(out, "paused: YES{}", describe_pause(p)),
        None => writeln!(out, "paused: no"),
    };
    if let Some(g) = &r.guard {
        let age = r.generated_at.saturating_sub(g.at) / 1000;
        let _ = writeln!(
            out,
            "lifecycle guard ({age}s ago): released {}; holding {}",
            if g.released.is_empty() {
                "none".to_owned()
            } else {
                g.released.join(", ")
            },
            if g.held.is_empty() { "none" } else { "" }
        );
        for (machine, reason) in &g.held {
            let _ = writeln!(out, "  {machine}: {reason}");
        }
    }

    let _ = writeln!(out, "\nservers ({}):", r.servers.len());
    let mut rows = vec![[
        "NODE", "MACHINE", "IMAGE", "AGE", "VOTER", "LEADER", "HEALTH", "SERF",
    ]
    .map(String::from)
    .to_vec()];
    for s in &r.servers {
        let image = match (&s.image, s.outdated) {
            (Some(i), Some(true)) => format!("{i} (outdated)"),
            (Some(i), _) => i.clone(),
            (None, _) => "-".into(),
        };
        rows.push(vec![
            s.node.clone(),
            s.machine.clone().unwrap_or_else(|| "-".into()),
            image,
            s.age_secs.map_or_else(|| "-".into(), format_age),
            yes(s.voter).into(),
            yes(s.leader).into(),
            if !s.in_raft {
                "not in raft".into()
            } else if s.healthy {
                "healthy".into()
            } else {
                "unhealthy".into()
            },
            if s.serf_status.is_empty() {
                "-".into()
            } else {
                s.serf_status.clone()
            },
        ]);
    }
    for line in table(&rows).lines() {
        let _ = writeln!(out, "  {line}");
    }

    let _ = writeln!(out);
    match (&r.rollout, &r.progress) {
        (Some(ro), Some(p)) => {
            let _ = writeln!(
                out,
                "rollout {} to {}: {}, started {}",
                ro.id,
                ro.target_image,
                p.state,
                format_time(ro.started_at)
            );
            let failed = match p.failed_launches {
                0 => String::new(),
                n => format!(" ({n} failed)"),
            };
            let _ = writeln!(
                out,
                "  {}/{} servers on the target; {} launched{failed}, {} retired; baseline tolerance {}",
                p.on_target,
                p.total,
                p.launches + p.failed_launches,
                p.retirements,
                ro.baseline_tolerance
            );
            if let Some(f) = ro.failed_launches.last() {
                let _ = writeln!(
                    out,
                    "  last failed launch: {}: {}",
                    f.machine,
                    f.reason.as_deref().unwrap_or("no reason given")
                );
            }
            if let Some(w) = &p.waiting {
                let label = if p.state == "stopped" {
                    "stopped because"
                } else {
                    "waiting"
                };
                let age = p
                    .waiting_since
                    .map(|since| format!(" ({}s)", r.generated_at.saturating_sub(since) / 1000))
                    .unwrap_or_default();
                let _ = writeln!(out, "  {label}{age}: {w}");
            }
            if let Some(s) = &ro.retiring {
                let _ = writeln!(out, "  retiring: {}", s.machine);
            }
            if let Some(last) = ro.snapshots.last() {
                let _ = writeln!(
                    out,
                    "  last snapshot: {last} ({} recorded; `consul snapshot restore` puts it back)",
                    ro.snapshots.len()
                );
            }
            for m in &ro.leader_moves {
                let _ = writeln!(
                    out,
                    "  leadership: off {} by {} to {} ({} ms until the new leader)",
                    m.from,
                    m.path,
                    m.to.as_deref().unwrap_or("?"),
                    m.until_new_leader_ms
                );
            }
        }
        _ => match &r.rollout_error {
            Some(e) => {
                let _ = writeln!(
                    out,
                    "rollout: INVALID, no step is taken: {e}; `rehydrator repair` rebuilds it"
                );
            }
            None => {
                let _ = writeln!(out, "rollout: none recorded");
            }
        },
    }

    let held: Vec<&LockStatus> = r.locks.iter().filter(|l| l.session.is_some()).collect();
    if held.is_empty() {
        let _ = writeln!(out, "locks: none held");
    } else {
        let _ = writeln!(out, "locks:");
        for l in held {
            let job = match (&l.action, &l.trigger_id) {
                (Some(a), Some(t)) => format!(", running {a} for trigger {t}"),
                _ => String::new(),
            };
            let holder = l
                .replica
                .as_deref()
                .and_then(|name| r.replicas.iter().find(|p| p.replica == name));
            let liveness = match holder {
                Some(p) if p.alive() => " [alive]".to_owned(),
                Some(p) => format!(
                    " [DEAD: liveness check {}{}: Consul ends its session; another replica \
                     takes the lock after lock-delay]",
                    p.check,
                    if p.output.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", p.output)
                    }
                ),
                None => String::new(),
            };
            let age = l
                .held_since
                .map(|since| {
                    let secs = r.generated_at.saturating_sub(since) / 1000;
                    format!(
                        " for {}",
                        humantime::format_duration(std::time::Duration::from_secs(secs))
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}: held by {} (node {}){age}{job}{liveness}",
                l.name,
                l.replica.as_deref().unwrap_or("an unknown replica"),
                l.node.as_deref().unwrap_or("?"),
            );
        }
    }
    if !r.replicas.is_empty() {
        let list: Vec<String> = r
            .replicas
            .iter()
            .map(|p| {
                if p.alive() {
                    format!("{} (alive, node {})", p.replica, p.node)
                } else {
                    format!("{} (DEAD: check {}, node {})", p.replica, p.check, p.node)
                }
            })
            .collect();
        let _ = writeln!(out, "replicas: {}", list.join(", "));
    }

    if r.receipts.is_empty() {
        let _ = writeln!(out, "receipts: none");
    } else {
        let _ = writeln!(out, "last receipts:");
        let rows: Vec<Vec<String>> = r
            .receipts
            .iter()
            .map(|rc| {
                let (label, detail) = outcome_parts(&rc.outcome);
                vec![
                    format_time(rc.finished_at),
                    rc.action.clone(),
                    rc.trigger_id.clone(),
                    rc.by.clone(),
                    format!("{label}: {detail}"),
                ]
            })
            .collect();
        for line in table(&rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn outcome_parts(o: &rehydrator_actors::receipt::Outcome) -> (&'static str, &str) {
    use rehydrator_actors::receipt::Outcome;
    let detail = match o {
        Outcome::Succeeded(d)
        | Outcome::Launched(d)
        | Outcome::Retired(d)
        | Outcome::NoOp(d)
        | Outcome::Failed(d) => d.as_str(),
    };
    (o.label(), detail)
}

fn describe_pause(p: &PauseInfo) -> String {
    let mut s = String::new();
    if let Some(by) = &p.by {
        let _ = write!(s, " by {by}");
    }
    if let Some(at) = p.at {
        let _ = write!(s, " at {}", format_time(at));
    }
    if let Some(reason) = &p.reason {
        let _ = write!(s, ": {reason}");
    }
    s
}
