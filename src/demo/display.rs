//! The demo's live progress display. On a terminal it is a block of lines redrawn in place
//! (cursor up, clear, draw); elsewhere (a pipe, a CI log) it prints one line each time what it
//! shows changes, so a log reads as the rollout's history rather than a flood of frames.
//!
//! `frame` and `line` are plain functions from an `Observation`; `Display` only writes them.

use std::io::Write;
use std::time::Duration;

use super::observe::Observation;

/// What the display shows besides the observation.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub header: String,
    pub old_image: String,
    pub new_image: String,
    pub elapsed: Duration,
    /// The chaos state, when there is something to say (killed, waiting for the takeover).
    pub chaos: Option<String>,
    /// Time since the chaos kill, while a takeover is awaited (the terminal frame shows it;
    /// the one-line form leaves it out, or every tick would be a change).
    pub since_kill: Option<Duration>,
}

/// The step under way: which replica holds the lock for which action.
fn step(o: &Observation) -> String {
    match &o.lock {
        Some(l) => format!("{} by {}", l.action, l.replica),
        None => "none (the step lock is free)".to_owned(),
    }
}

fn state(o: &Observation) -> String {
    match &o.rollout {
        None => "not started".to_owned(),
        Some(r) => match &r.state {
            rehydrator_actors::plan::RolloutState::Active => "active".to_owned(),
            rehydrator_actors::plan::RolloutState::Completed { .. } => "completed".to_owned(),
            rehydrator_actors::plan::RolloutState::Stopped { reason, .. } => {
                format!("stopped: {reason}")
            }
        },
    }
}

/// Old, new and retired server counts.
fn counts(o: &Observation, c: &Context) -> (usize, usize, usize) {
    let live = o.servers.iter().filter(|s| !s.terminated());
    let old = live.clone().filter(|s| s.image == c.old_image).count();
    let new = live.filter(|s| s.image == c.new_image).count();
    let retired = o.servers.iter().filter(|s| s.terminated()).count();
    (old, new, retired)
}

fn tolerance(o: &Observation) -> String {
    o.failure_tolerance
        .map_or_else(|| "?".to_owned(), |f| f.to_string())
}

/// The terminal frame: a header, a line per live server, then the rollout's state.
pub fn frame(o: &Observation, c: &Context) -> Vec<String> {
    let (old, new, retired) = counts(o, c);
    let mut out = vec![format!("{}  {:>6.1} s", c.header, c.elapsed.as_secs_f64())];
    for s in o.servers.iter().filter(|s| !s.terminated()) {
        let tag = if s.image == c.new_image { "new" } else { "old" };
        out.push(format!(
            "  {:<18} {:<10} {tag}  {}{}",
            s.name,
            s.image,
            s.state(),
            if s.leader { "  * leader" } else { "" }
        ));
    }
    out.push(format!(
        "  servers: {old} on {} (old), {new} on {} (new), {retired} retired",
        c.old_image, c.new_image
    ));
    // Replaced = an old server retired; the bar fills one cell per server.
    let total = old + retired;
    out.push(format!(
        "  progress: [{}{}] {retired} of {total} replaced",
        "#".repeat(retired),
        "-".repeat(total.saturating_sub(retired))
    ));
    out.push(format!(
        "  leader: {}   failure tolerance: {}",
        o.leader.as_deref().unwrap_or("none"),
        tolerance(o)
    ));
    out.push(format!("  rollout: {}   step: {}", state(o), step(o)));
    let waiting = o.rollout.as_ref().and_then(|r| r.waiting.clone());
    out.push(format!("  waiting: {}", waiting.as_deref().unwrap_or("-")));
    if let Some(chaos) = &c.chaos {
        match c.since_kill {
            Some(d) => out.push(format!(
                "  chaos: {chaos} ({:.1} s so far)",
                d.as_secs_f64()
            )),
            None => out.push(format!("  chaos: {chaos}")),
        }
    }
    out
}

/// The one-line form, without the time (so equal lines mean nothing changed).
pub fn line(o: &Observation, c: &Context) -> String {
    let (old, new, retired) = counts(o, c);
    let mut l = format!(
        "old {old} | new {new} | retired {retired} | leader {} | tolerance {} | rollout {} | step {}",
        o.leader.as_deref().unwrap_or("none"),
        tolerance(o),
        state(o),
        step(o)
    );
    if let Some(w) = o.rollout.as_ref().and_then(|r| r.waiting.as_deref()) {
        l.push_str(&format!(" | waiting: {w}"));
    }
    if let Some(chaos) = &c.chaos {
        l.push_str(&format!(" | chaos: {chaos}"));
    }
    l
}

/// Writes frames to stdout: redrawn in place on a terminal, a line per change otherwise.
pub struct Display {
    tty: bool,
    /// Lines of the last frame drawn (terminal), to move back over.
    drawn: usize,
    last_line: String,
}

impl Display {
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            drawn: 0,
            last_line: String::new(),
        }
    }

    /// Moves back over the live frame and clears it.
    fn clear(&mut self, out: &mut impl Write) {
        if self.tty && self.drawn > 0 {
            // Cursor to the start of the frame's first line, then clear to the screen's end.
            let _ = write!(out, "\x1b[{}F\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    /// Shows the rollout as `o` saw it.
    pub fn show(&mut self, o: &Observation, c: &Context) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            self.clear(&mut out);
            let lines = frame(o, c);
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
            self.drawn = lines.len();
        } else {
            let l = line(o, c);
            if l != self.last_line {
                let _ = writeln!(out, "[{:>6.1} s] {l}", c.elapsed.as_secs_f64());
                self.last_line = l;
            }
        }
        let _ = out.flush();
    }

    /// A line that stays (above the live frame on a terminal).
    pub fn note(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        self.clear(&mut out);
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Leaves the last frame on screen; what follows prints below it.
    pub fn finish(&mut self) {
        self.drawn = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::demo::observe::{LockHolder, ServerRow};
    use rehydrator_actors::plan::Rollout;

    fn row(name: &str, image: &str, machine: &str, voter: bool, leader: bool) -> ServerRow {
        ServerRow {
            name: name.into(),
            image: image.into(),
            machine: machine.into(),
            in_raft: machine == "running",
            voter,
            leader,
            token: None,
        }
    }

    fn mid_rollout() -> Observation {
        Observation {
            servers: vec![
                row("consul-server-1", "image-a", "terminated", false, false),
                row("consul-server-2", "image-a", "running", true, true),
                row("consul-server-3", "image-a", "running", true, false),
                row("consul-server-4", "image-b", "running", true, false),
                row("consul-server-5", "image-b", "running", false, false),
            ],
            leader: Some("consul-server-2".into()),
            failure_tolerance: Some(1),
            // From JSON, as the record is read: fields added later default.
            rollout: Some(
                serde_json::from_value::<Rollout>(serde_json::json!({
                    "id": "r1", "target_image": "image-b", "started_at": 0,
                    "baseline_tolerance": 1, "state": "active",
                    "launches": [], "retirements": [],
                    "waiting": "new server consul-server-5 is joining"
                }))
                .unwrap(),
            ),
            lock: Some(LockHolder {
                session: "s".into(),
                replica: "demo-2".into(),
                action: "spin-down".into(),
            }),
            cloud_actions: 3,
        }
    }

    fn context() -> Context {
        Context {
            header: "rehydrator demo".into(),
            old_image: "image-a".into(),
            new_image: "image-b".into(),
            elapsed: Duration::from_millis(4_250),
            chaos: None,
            since_kill: None,
        }
    }

    #[test]
    fn the_frame_shows_each_live_server_and_why_the_rollout_waits() {
        let f = frame(&mid_rollout(), &context());
        assert!(
            f[0].starts_with("rehydrator demo") && f[0].ends_with("4.2 s"),
            "{f:?}"
        );
        // Four live servers, the retired one only counted.
        assert_eq!(
            f.iter()
                .filter(|l| l.starts_with("  consul-server-"))
                .count(),
            4,
            "{f:#?}"
        );
        assert!(f
            .iter()
            .any(|l| l.contains("consul-server-2") && l.contains("* leader")));
        assert!(f
            .iter()
            .any(|l| l.contains("consul-server-5") && l.contains("non-voter (stabilizing)")));
        assert!(
            f.contains(&"  servers: 2 on image-a (old), 2 on image-b (new), 1 retired".to_owned())
        );
        assert!(f.contains(&"  leader: consul-server-2   failure tolerance: 1".to_owned()));
        assert!(
            f.contains(&"  progress: [#--] 1 of 3 replaced".to_owned()),
            "{f:#?}"
        );
        assert!(f.contains(&"  rollout: active   step: spin-down by demo-2".to_owned()));
        assert!(f.contains(&"  waiting: new server consul-server-5 is joining".to_owned()));
    }

    #[test]
    fn the_line_changes_only_when_the_rollout_does() {
        let o = mid_rollout();
        let mut c = context();
        let first = line(&o, &c);
        c.elapsed = Duration::from_secs(9);
        assert_eq!(line(&o, &c), first, "time alone is no change");
        assert_eq!(
            first,
            "old 2 | new 2 | retired 1 | leader consul-server-2 | tolerance 1 | rollout active | \
             step spin-down by demo-2 | waiting: new server consul-server-5 is joining"
        );
        c.chaos = Some("killed demo-2".into());
        c.since_kill = Some(Duration::from_secs(3));
        let killed = line(&o, &c);
        assert!(killed.ends_with(" | chaos: killed demo-2"), "{killed}");
        c.since_kill = Some(Duration::from_secs(4));
        assert_eq!(line(&o, &c), killed, "the time since the kill is no change");
        assert!(frame(&o, &c).contains(&"  chaos: killed demo-2 (4.0 s so far)".to_owned()));
    }
}
