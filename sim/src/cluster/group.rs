//! A simulated EC2 Auto Scaling group over the simulated servers: its sizes, zones, lifecycle
//! hooks, suspended processes, members and the refresh under way. What changes it, and when,
//! is `scaling`'s (as `server` holds a server and `lifecycle` changes it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How often the group looks at its members, in simulated time.
pub const TICK: Duration = Duration::from_millis(250);

/// The processes a group runs that can be suspended.
pub const PROCESSES: &[&str] = &[
    "Launch",
    "Terminate",
    "ReplaceUnhealthy",
    "AZRebalance",
    "HealthCheck",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Launching,
    Terminating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookResult {
    Continue,
    Abandon,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    pub transition: Transition,
    pub heartbeat_timeout: Duration,
    pub default_result: HookResult,
}

/// Where a member is in the group's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    PendingWait,
    InService,
    TerminatingWait,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::PendingWait => "Pending:Wait",
            Lifecycle::InService => "InService",
            Lifecycle::TerminatingWait => "Terminating:Wait",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    /// The server's name (its instance ID).
    pub name: String,
    pub zone: String,
    pub lifecycle: Lifecycle,
    pub protected: bool,
    /// The hooks of the current wait not completed yet.
    pub pending_hooks: BTreeSet<String>,
    /// When the current wait's heartbeat timeout applies its default result (wall clock).
    pub wait_until: Option<Instant>,
    /// When it went in service (wall clock), for the refresh's warmup.
    pub in_service_at: Option<Instant>,
    /// Why the group launched or terminates it.
    pub cause: String,
}

/// An instance refresh under way.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub min_healthy: u32,
    pub max_healthy: u32,
    /// How long a new member must be in service before it counts as healthy.
    pub warmup: Duration,
    pub status: &'static str,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub min: usize,
    pub max: usize,
    pub desired: usize,
    /// The launch template's image.
    pub image: String,
    pub zones: Vec<String>,
    pub hooks: Vec<Hook>,
    pub suspended: BTreeSet<String>,
    pub members: Vec<Member>,
    pub refresh: Option<Refresh>,
    /// Launches beyond `desired` a refresh or a rebalance has made room for.
    pub extra: usize,
    /// Bumped when the group is replaced; the tick of an older one stops.
    pub epoch: u64,
}

impl Group {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub(crate) fn live(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| m.lifecycle != Lifecycle::TerminatingWait)
    }

    pub(crate) fn zone_counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> =
            self.zones.iter().map(|z| (z.clone(), 0)).collect();
        for m in self.live() {
            *counts.entry(m.zone.clone()).or_default() += 1;
        }
        counts
    }

    /// The zone a launch goes to: the one with the fewest live members, first by order.
    pub(crate) fn emptiest_zone(&self) -> String {
        let counts = self.zone_counts();
        self.zones
            .iter()
            .min_by_key(|z| counts.get(*z).copied().unwrap_or(0))
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn running(&self, name: &str) -> bool {
        self.member(name)
            .is_some_and(|m| m.lifecycle == Lifecycle::InService)
    }

    pub(crate) fn suspended(&self, process: &str) -> bool {
        self.suspended.contains(process)
    }
}
