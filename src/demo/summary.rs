//! The demo's closing figures: how long the rollout took, how much of that the cluster itself
//! forces (each new server's boot and stabilization), what the orchestration added per server,
//! and what the simulator's record says about quorum and leadership.
//!
//! The arithmetic is the README's (*Measured on the simulator*): overhead = total − boot and
//! stabilization summed over the servers − the time a killed holder's lock blocked the
//! rollout, divided by the servers. Leaving costs nothing in the simulator (a graceful leave is
//! immediate, and leadership is transferred, not elected), so it adds no unavoidable wait.

use std::time::Duration;

use super::verdict::Violation;

/// A killed lock holder and the replica that took its step over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    pub killed: String,
    pub by: String,
    /// From the SIGKILL to the other replica holding the step lock.
    pub after: Duration,
}

/// Everything the summary reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub servers: usize,
    pub from_image: String,
    pub to_image: String,
    /// From the `consul-rehydrate` event to the rollout recorded completed.
    pub total: Duration,
    pub boot: Duration,
    pub stabilization: Duration,
    pub takeovers: Vec<Takeover>,
    /// A chaos kill that found no holder to kill, with why.
    pub chaos_missed: Option<String>,
    pub quorum_lost_count: u64,
    pub max_voters_missing: u64,
    pub leader_changes: u64,
    pub min_failure_tolerance: Option<u64>,
    /// Launches whose machine died before it joined (`--fail-launch`), each launched again.
    pub failed_launches: usize,
    pub violations: Vec<Violation>,
}

impl Summary {
    /// What the cluster itself makes a rollout wait: each new server boots, then stays a
    /// non-voter for the stabilization time.
    pub fn unavoidable(&self) -> Duration {
        (self.boot + self.stabilization) * self.servers as u32
    }

    /// The time killed holders' locks blocked the rollout (their sessions ending).
    pub fn takeover_wait(&self) -> Duration {
        self.takeovers.iter().map(|t| t.after).sum()
    }

    /// What the orchestration added per server: watch wakes, lock and receipt round trips,
    /// settle polls. Zero rather than negative when a new server booted during a takeover wait
    /// (the two overlap then).
    pub fn overhead_per_server(&self) -> Duration {
        let spent = self
            .total
            .saturating_sub(self.unavoidable() + self.takeover_wait());
        spent / self.servers.max(1) as u32
    }

    /// The summary as printed, one figure a line: `  key: value`, values aligned.
    pub fn lines(&self) -> Vec<String> {
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        let row = |key: &str, value: String| format!("  {:<23}{value}", format!("{key}:"));
        let mut out = vec![
            "Summary".to_owned(),
            row(
                "servers replaced",
                format!(
                    "{} ({} -> {})",
                    self.servers, self.from_image, self.to_image
                ),
            ),
            row(
                "total time",
                format!(
                    "{} (from consul-rehydrate to the rollout completed)",
                    s(self.total)
                ),
            ),
            row(
                "unavoidable waits",
                format!(
                    "{} ({} x (boot {} + stabilization {}); leaving is immediate)",
                    s(self.unavoidable()),
                    self.servers,
                    s(self.boot),
                    s(self.stabilization)
                ),
            ),
        ];
        if !self.takeovers.is_empty() {
            out.push(row(
                "takeover waits",
                format!(
                    "{} (a dead holder's liveness check expiring, then lock-delay)",
                    s(self.takeover_wait())
                ),
            ));
        }
        out.push(row(
            "overhead per server",
            if self.takeovers.is_empty() {
                format!(
                    "{} (total minus the waits above, per server)",
                    s(self.overhead_per_server())
                )
            } else {
                // A server launched before the kill boots while the dead session lapses.
                format!(
                    "{} (total minus the waits above, per server; they overlap when a server \
                     boots during the takeover, so read it from a run without --chaos)",
                    s(self.overhead_per_server())
                )
            },
        ));
        if self.failed_launches > 0 {
            out.push(row(
                "failed launches",
                format!(
                    "{} (recorded once each; launched again with a new token)",
                    self.failed_launches
                ),
            ));
        }
        out.push(row(
            "quorum",
            if self.quorum_lost_count == 0 {
                "never lost".to_owned()
            } else {
                format!("LOST {} time(s)", self.quorum_lost_count)
            },
        ));
        out.push(row(
            "max voters missing",
            self.max_voters_missing.to_string(),
        ));
        if let Some(ft) = self.min_failure_tolerance {
            out.push(row("min failure tolerance", ft.to_string()));
        }
        out.push(row("leader changes", self.leader_changes.to_string()));
        let detail = self
            .takeovers
            .iter()
            .map(|t| {
                format!(
                    "{} killed, {} took over after {:.1} s",
                    t.killed,
                    t.by,
                    t.after.as_secs_f64()
                )
            })
            .chain(self.chaos_missed.clone())
            .collect::<Vec<_>>()
            .join("; ");
        out.push(row(
            "takeovers",
            if detail.is_empty() {
                self.takeovers.len().to_string()
            } else {
                format!("{} ({detail})", self.takeovers.len())
            },
        ));
        out.push(row(
            "invariants",
            if self.violations.is_empty() {
                "all held".to_owned()
            } else {
                format!(
                    "BROKEN: {}",
                    self.violations
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(total_ms: u64, takeovers: Vec<Takeover>) -> Summary {
        Summary {
            servers: 3,
            from_image: "image-a".into(),
            to_image: "image-b".into(),
            total: Duration::from_millis(total_ms),
            boot: Duration::from_millis(500),
            stabilization: Duration::from_millis(1500),
            takeovers,
            chaos_missed: None,
            quorum_lost_count: 0,
            max_voters_missing: 1,
            leader_changes: 3,
            min_failure_tolerance: Some(0),
            failed_launches: 0,
            violations: Vec::new(),
        }
    }

    #[test]
    fn overhead_is_what_is_left_of_the_total_per_server() {
        let s = summary(7_500, Vec::new());
        assert_eq!(s.unavoidable(), Duration::from_secs(6));
        assert_eq!(s.overhead_per_server(), Duration::from_millis(500));
    }

    #[test]
    fn a_takeover_wait_is_not_counted_as_overhead() {
        let s = summary(
            28_500,
            vec![Takeover {
                killed: "demo-2".into(),
                by: "demo-3".into(),
                after: Duration::from_secs(21),
            }],
        );
        assert_eq!(s.takeover_wait(), Duration::from_secs(21));
        assert_eq!(s.overhead_per_server(), Duration::from_millis(500));
        let text = s.lines().join("\n");
        assert!(
            text.contains(
                "takeovers:             1 (demo-2 killed, demo-3 took over after 21.0 s)"
            ),
            "{text}"
        );
        assert!(text.contains("takeover waits:        21.00 s"), "{text}");
    }

    #[test]
    fn overlapping_waits_give_zero_overhead_not_an_underflow() {
        let s = summary(
            22_000,
            vec![Takeover {
                killed: "demo-1".into(),
                by: "demo-2".into(),
                after: Duration::from_secs(21),
            }],
        );
        assert_eq!(s.overhead_per_server(), Duration::ZERO);
    }

    #[test]
    fn the_lines_name_the_figures_and_any_broken_invariant() {
        let mut s = summary(7_500, Vec::new());
        let text = s.lines().join("\n");
        for want in [
            "servers replaced:      3 (image-a -> image-b)",
            "total time:            7.50 s",
            "unavoidable waits:     6.00 s (3 x (boot 0.50 s + stabilization 1.50 s)",
            "overhead per server:   0.50 s",
            "quorum:                never lost",
            "max voters missing:    1",
            "leader changes:        3",
            "takeovers:             0",
            "invariants:            all held",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        assert!(!text.contains("takeover waits"), "{text}");
        s.quorum_lost_count = 1;
        s.violations = vec![Violation::QuorumLost(1)];
        let text = s.lines().join("\n");
        assert!(
            text.contains("quorum:                LOST 1 time(s)"),
            "{text}"
        );
        assert!(
            text.contains("invariants:            BROKEN: quorum was lost 1 time(s)"),
            "{text}"
        );
    }
}
