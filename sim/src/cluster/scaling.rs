//! What the simulated Auto Scaling group (`group`) does on its own, the behaviour that replaces
//! Consul servers without any idea of Raft: desired/min/max capacity; replacement of a
//! member whose machine is gone (ReplaceUnhealthy); lifecycle hooks that hold a launching or
//! terminating member in `Pending:Wait` / `Terminating:Wait` until completed, or until their
//! heartbeat timeout applies the default result; instance refresh with minimum and maximum
//! healthy percentages; AZ rebalancing; scale-in protection and suspended processes.
//!
//! Simplified from AWS, on purpose and stated: one launch and one termination start per tick
//! (AWS batches); a member is healthy for the group when its machine runs (EC2 status checks
//! know nothing of Consul); a machine terminated outside the group leaves it at once (no hook
//! can hold an instance that is gone); an abandoned launch is terminated at once.
//!
//! The group ticks on a timer (`TICK`, simulated time) while it exists; API calls tick it too.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::cluster::group::*;
use crate::cluster::lifecycle::{add_server, terminate};
use crate::cluster::server::Machine;
use crate::state::{Sim, State};

/// Starts (or restarts) the group's tick.
pub fn start_ticking(sim: &Sim, st: &mut State) {
    let Some(g) = st.cluster.group.as_mut() else {
        return;
    };
    g.epoch += 1;
    let epoch = g.epoch;
    schedule_tick(sim, st, epoch);
}

fn schedule_tick(sim: &Sim, st: &State, epoch: u64) {
    sim.after_in(st, TICK, move |sim, st| {
        if st.cluster.group.as_ref().map(|g| g.epoch) != Some(epoch) {
            return;
        }
        step(sim, st);
        schedule_tick(sim, st, epoch);
    });
}

/// A member enters the wait of `transition`'s hooks, or goes straight on without any.
fn begin(st: &State, g: &mut Group, i: usize, transition: Transition, cause: String) {
    let hooks: Vec<&Hook> = g
        .hooks
        .iter()
        .filter(|h| h.transition == transition)
        .collect();
    let m = &mut g.members[i];
    m.cause = cause;
    m.pending_hooks = hooks.iter().map(|h| h.name.clone()).collect();
    m.wait_until = hooks
        .iter()
        .map(|h| Instant::now() + st.config.scaled(h.heartbeat_timeout))
        .min();
    m.lifecycle = match transition {
        Transition::Launching if hooks.is_empty() => Lifecycle::InService,
        Transition::Launching => Lifecycle::PendingWait,
        Transition::Terminating => Lifecycle::TerminatingWait,
    };
    if m.lifecycle == Lifecycle::InService {
        m.in_service_at = Some(Instant::now());
    }
}

/// Completes `hook` for `instance` with `result`; false when it holds no such wait.
pub fn complete(sim: &Sim, st: &mut State, instance: &str, hook: &str, result: HookResult) -> bool {
    let Some(g) = st.cluster.group.as_mut() else {
        return false;
    };
    let Some(m) = g.members.iter_mut().find(|m| m.name == instance) else {
        return false;
    };
    if !m.pending_hooks.remove(hook) {
        return false;
    }
    if result == HookResult::Abandon {
        m.pending_hooks.clear();
        if m.lifecycle == Lifecycle::PendingWait {
            m.lifecycle = Lifecycle::TerminatingWait;
        }
    }
    step(sim, st);
    true
}

/// Extends `hook`'s wait on `instance` by its heartbeat timeout; false when there is none.
pub fn heartbeat(st: &mut State, instance: &str, hook: &str) -> bool {
    let scale = |d: Duration| st.config.scaled(d);
    let Some(g) = st.cluster.group.as_ref() else {
        return false;
    };
    let Some(h) = g.hooks.iter().find(|h| h.name == hook) else {
        return false;
    };
    let until = Instant::now() + scale(h.heartbeat_timeout);
    let Some(g) = st.cluster.group.as_mut() else {
        return false;
    };
    let Some(m) = g.members.iter_mut().find(|m| m.name == instance) else {
        return false;
    };
    if !m.pending_hooks.contains(hook) {
        return false;
    }
    m.wait_until = Some(until);
    true
}

/// One look at the group: waits that ended, members whose machine is gone, the refresh, the
/// capacity, the zones.
pub fn step(sim: &Sim, st: &mut State) {
    let Some(mut g) = st.cluster.group.take() else {
        return;
    };
    let now = Instant::now();
    // Waits whose hooks are all completed, or whose heartbeat timeout passed.
    let mut to_terminate = Vec::new();
    for m in &mut g.members {
        let timed_out = m.wait_until.is_some_and(|t| now >= t);
        let hooks_done = m.pending_hooks.is_empty();
        match m.lifecycle {
            Lifecycle::PendingWait if hooks_done || timed_out => {
                let abandon = timed_out
                    && !hooks_done
                    && g.hooks.iter().any(|h| {
                        m.pending_hooks.contains(&h.name) && h.default_result == HookResult::Abandon
                    });
                m.pending_hooks.clear();
                m.wait_until = None;
                if abandon {
                    m.lifecycle = Lifecycle::TerminatingWait;
                } else {
                    m.lifecycle = Lifecycle::InService;
                    m.in_service_at = Some(now);
                }
            }
            // For a terminating instance both results terminate it.
            Lifecycle::TerminatingWait if hooks_done || timed_out => {
                to_terminate.push(m.name.clone());
            }
            _ => {}
        }
    }
    for name in &to_terminate {
        g.members.retain(|m| &m.name != name);
    }
    // Members whose machine is gone leave the group; ones whose machine died are replaced.
    let gone: Vec<String> = g
        .members
        .iter()
        .filter(|m| {
            st.cluster
                .server(&m.name)
                .is_none_or(|s| s.machine == Machine::Terminated)
        })
        .map(|m| m.name.clone())
        .collect();
    g.members.retain(|m| !gone.contains(&m.name));

    // Refresh: replace the members not on the group's image.
    if let Some(r) = g.refresh.clone() {
        refresh_step(st, &mut g, &r);
    }

    // Capacity: as many live members as wanted. A member on its way out still holds its
    // place until it is gone: the replacement of a held termination waits for its release.
    let target = g.desired + g.extra;
    let live = g.live().count();
    let mut launch_zone = None;
    if g.members.len() < target && !g.suspended("Launch") {
        launch_zone = Some(g.emptiest_zone());
    } else if live > target && !g.suspended("Terminate") {
        if let Some(i) = scale_in_choice(st, &g) {
            let cause = "scale-in: the group has more instances than it wants".to_owned();
            begin(st, &mut g, i, Transition::Terminating, cause);
        }
    }
    // AZ rebalancing: launch in the emptiest zone, then the surplus goes from the fullest.
    if launch_zone.is_none() && g.refresh.is_none() && !g.suspended("AZRebalance") {
        let counts = g.zone_counts();
        let (lo, hi) = (
            counts.values().min().copied().unwrap_or(0),
            counts.values().max().copied().unwrap_or(0),
        );
        if hi >= lo + 2 && g.extra == 0 && live <= g.max {
            g.extra = 1;
            launch_zone = Some(g.emptiest_zone());
        } else if g.extra > 0
            && live > g.desired
            && g.members
                .iter()
                .all(|m| m.lifecycle == Lifecycle::InService)
        {
            // The rebalance's launch is in service: the surplus goes by the termination
            // policy, from the fullest zone.
            g.extra = 0;
        }
    }
    st.cluster.group = Some(g);
    for name in to_terminate {
        // As the control API counts it: the group terminating the leader while it leads.
        if st.cluster.leader.as_deref() == Some(name.as_str()) {
            st.cluster.invariants.leader_retired += 1;
        }
        terminate(sim, st, &name);
    }
    if let Some(zone) = launch_zone {
        let Some(image) = st.cluster.group.as_ref().map(|g| g.image.clone()) else {
            return;
        };
        let name = st.cluster.next_name();
        add_server(sim, st, name.clone(), image, None);
        let Some(mut g) = st.cluster.group.take() else {
            return;
        };
        g.members.push(Member {
            name,
            zone,
            lifecycle: Lifecycle::InService,
            protected: false,
            pending_hooks: BTreeSet::new(),
            wait_until: None,
            in_service_at: None,
            cause: String::new(),
        });
        let i = g.members.len() - 1;
        begin(
            st,
            &mut g,
            i,
            Transition::Launching,
            "launch: capacity".into(),
        );
        st.cluster.group = Some(g);
    }
}

/// SetInstanceHealth Unhealthy: the group terminates the member (through its hooks) and
/// launches a replacement, unless ReplaceUnhealthy is suspended. False for a non-member.
pub fn set_unhealthy(sim: &Sim, st: &mut State, instance: &str) -> bool {
    let Some(mut g) = st.cluster.group.take() else {
        return false;
    };
    let found = g
        .members
        .iter()
        .position(|m| m.name == instance && m.lifecycle == Lifecycle::InService);
    if let Some(i) = found {
        if !g.suspended("ReplaceUnhealthy") {
            let cause = "health: the instance was marked unhealthy".to_owned();
            begin(st, &mut g, i, Transition::Terminating, cause);
        }
    }
    st.cluster.group = Some(g);
    if found.is_some() {
        step(sim, st);
    }
    found.is_some()
}

/// The member a scale-in terminates: unprotected, in service, from the zone with the most
/// live members, not on the group's image first, then the oldest.
fn scale_in_choice(st: &State, g: &Group) -> Option<usize> {
    let counts = g.zone_counts();
    g.members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.lifecycle == Lifecycle::InService && !m.protected)
        .max_by_key(|(i, m)| {
            let outdated = st
                .cluster
                .server(&m.name)
                .is_some_and(|s| s.image != g.image);
            (
                counts.get(&m.zone).copied().unwrap_or(0),
                outdated,
                std::cmp::Reverse(*i),
            )
        })
        .map(|(i, _)| i)
}

/// One step of an instance refresh: with a maximum healthy percentage above 100, a new member
/// is launched first and an old one terminated once it has warmed up; otherwise old members are
/// terminated as far as the minimum healthy percentage allows and replaced after.
fn refresh_step(st: &State, g: &mut Group, r: &Refresh) {
    let outdated: Vec<usize> = g
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.lifecycle == Lifecycle::InService)
        .filter(|(_, m)| {
            st.cluster
                .server(&m.name)
                .is_some_and(|s| s.image != g.image)
        })
        .map(|(i, _)| i)
        .collect();
    let terminating = g
        .members
        .iter()
        .any(|m| m.lifecycle == Lifecycle::TerminatingWait);
    let warm = |m: &Member| {
        m.in_service_at
            .is_some_and(|t| t.elapsed() >= st.config.scaled(r.warmup))
    };
    let healthy = g
        .members
        .iter()
        .filter(|m| m.lifecycle == Lifecycle::InService && g.running(&m.name) && warm(m))
        .filter(|m| {
            st.cluster
                .server(&m.name)
                .is_some_and(|s| s.machine == Machine::Running)
        })
        .count();
    if outdated.is_empty() {
        // Nothing left to replace: the surplus goes by the termination policy.
        g.extra = 0;
        if !terminating && g.live().count() == g.desired {
            if let Some(r) = g.refresh.as_mut() {
                r.status = "Successful";
            }
            g.refresh = None;
        }
        return;
    }
    let min_healthy = (g.desired * r.min_healthy as usize).div_ceil(100);
    let oldest = outdated[0];
    if r.max_healthy > 100 {
        // Launch before terminate.
        g.extra = 1;
        let live = g.live().count();
        if terminating || live <= g.desired {
            return;
        }
        // The extra member is in service and warm: one old one goes.
        if healthy > g.desired && healthy > min_healthy {
            let cause = "instance refresh: replaced by a new instance".to_owned();
            begin(st, g, oldest, Transition::Terminating, cause);
        }
    } else if !terminating && g.live().count() >= g.desired && healthy >= g.desired {
        // Terminate before launch: at least one at a time, as AWS does whatever the minimum.
        let cause = "instance refresh: terminated to be replaced".to_owned();
        begin(st, g, oldest, Transition::Terminating, cause);
    }
}
