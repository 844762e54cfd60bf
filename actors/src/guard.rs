//! The lifecycle guard's decision: which of the instances an Auto Scaling group holds in a
//! lifecycle hook's wait state may go on now, so that the group's own replacements (instance
//! refresh, AZ rebalancing, health replacements, scale-in) keep quorum. Pure: the cluster's
//! machines and Raft view and the waiting instances in, what to do with each out. The
//! `lifecycle-guard` action (`guard_run`) carries it out under the `step` lock, so it never
//! interleaves with a rollout step.
//!
//! The rules, in order:
//! - **Launching** (`Pending:Wait`): released once its machine has started (the cloud says it
//!   runs); a Consul server must boot to join, and holding it gains nothing.
//! - **Terminating** (`Terminating:Wait`), one at a time and the leader last:
//!   1. held while a server is being promoted (a live machine that is not yet a stable voter,
//!      or one still held in `Pending:Wait`): a replacement must be a voter before the server it
//!      replaces goes;
//!   2. held while an earlier release is still leaving (its machine is on its way out but its
//!      server is still a Raft peer);
//!   3. the candidate is the oldest waiting instance that does not lead; the leader only when
//!      it is the last. A healthy voter is released only if the healthy voters left after it
//!      keep the baseline failure tolerance (`cluster.desired_servers`'s); a dead peer still in
//!      Raft counts as no margin. A server that is no healthy voter (dead, or never promoted)
//!      takes no margin with it and may always go;
//!   4. a leader candidate first has leadership moved off it; it is released on a later run,
//!      once it no longer leads.
//! - Every instance not released is **held**: its wait is extended (a heartbeat), with the
//!   reason shown in status.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::executor::ExecError;
use crate::plan::{servers, Server};
use crate::ports::{
    ClusterHealth, Fence, Fenced, LifecycleWait, Machine, MachineState, PortError, Transition,
};
use crate::receipt::{now_ms, Outcome};
use crate::rollout::{self, RolloutEnv};

/// What the guard does with one waiting instance, or to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    /// Let it go on (CompleteLifecycleAction CONTINUE).
    Release { wait: LifecycleWait, why: String },
    /// Keep it waiting (RecordLifecycleActionHeartbeat), for this reason.
    Hold { wait: LifecycleWait, reason: String },
    /// Move leadership off this Raft peer (by ID), which a terminating instance runs.
    MoveLeader { from: String, node: String },
}

/// The failure tolerance of `voters` voters of which `healthy` are healthy: autopilot's
/// where it is 0 or more, negative where quorum is lost (autopilot says 0; the guard must tell
/// "no margin" from "no quorum").
pub fn tolerance(voters: usize, healthy: usize) -> i64 {
    let (voters, healthy) = (voters as i64, healthy as i64);
    healthy - (voters / 2 + 1)
}

/// The failure tolerance a cluster of `desired` healthy servers has: the guard's baseline.
pub fn baseline(desired: usize) -> i64 {
    tolerance(desired, desired).max(0)
}

fn node(s: &Server<'_>) -> String {
    s.node()
}

/// Decides what to do with every waiting instance; see the module's notes.
pub fn decide(
    machines: &[Machine],
    health: &ClusterHealth,
    waits: &[LifecycleWait],
    desired: usize,
) -> Vec<GuardAction> {
    let all = servers(machines, health);
    let by_id = |id: &str| all.iter().find(|s| s.machine.id == id);
    let mut out = Vec::new();
    let mut promoting: Vec<String> = Vec::new();

    for w in waits
        .iter()
        .filter(|w| w.transition == Transition::Launching)
    {
        match by_id(&w.machine).map(|s| s.machine.state) {
            Some(MachineState::Running) => out.push(GuardAction::Release {
                wait: w.clone(),
                why: "it has started; its server is awaited before any server goes".into(),
            }),
            state => {
                promoting.push(w.machine.clone());
                out.push(GuardAction::Hold {
                    wait: w.clone(),
                    reason: format!("it has not started yet ({state:?})"),
                });
            }
        }
    }

    let terminating: Vec<&LifecycleWait> = waits
        .iter()
        .filter(|w| w.transition == Transition::Terminating)
        .collect();
    if terminating.is_empty() {
        return out;
    }
    let waiting = |id: &str| terminating.iter().any(|w| w.machine == id);
    let hold_all = |out: &mut Vec<GuardAction>, reason: String| {
        for w in &terminating {
            out.push(GuardAction::Hold {
                wait: (*w).clone(),
                reason: reason.clone(),
            });
        }
    };

    // 1. A replacement must be a voter before the server it replaces goes.
    promoting.extend(
        all.iter()
            .filter(|s| !waiting(&s.machine.id))
            .filter(|s| {
                matches!(s.machine.state, MachineState::Pending)
                    || (s.machine.state == MachineState::Running && !s.is_voter())
            })
            .map(node),
    );
    if !promoting.is_empty() {
        promoting.sort();
        promoting.dedup();
        hold_all(
            &mut out,
            format!("waiting for {} to become a voter", promoting.join(", ")),
        );
        return out;
    }
    // 2. One at a time: an earlier release still in Raft.
    let leaving: Vec<String> = all
        .iter()
        .filter(|s| s.machine.state == MachineState::Stopping && s.peer.is_some())
        .map(node)
        .collect();
    if !leaving.is_empty() {
        hold_all(
            &mut out,
            format!(
                "one at a time: {} is still leaving Raft",
                leaving.join(", ")
            ),
        );
        return out;
    }
    // 3. The oldest that does not lead; the leader last.
    let mut candidates: Vec<(&LifecycleWait, Option<&Server<'_>>)> = terminating
        .iter()
        .map(|w| (*w, by_id(&w.machine)))
        .collect();
    candidates.sort_by_key(|(w, s)| {
        (
            s.is_some_and(|s| s.is_leader()),
            s.map_or(0, |s| s.machine.launched_at),
            w.machine.clone(),
        )
    });
    let (first, server) = candidates[0];
    let peer = server.and_then(|s| s.peer);
    // After it leaves, the healthy voters alone must keep the baseline: a dead peer still in
    // Raft is no margin (autopilot prunes it), so it is not counted on either side.
    let healthy = health
        .servers
        .iter()
        .filter(|p| p.voter && p.healthy)
        .count();
    let leaves_healthy = peer.is_some_and(|p| p.voter && p.healthy);
    let remaining = healthy - usize::from(leaves_healthy);
    let after = tolerance(remaining, remaining);
    let floor = baseline(desired);
    let others = |out: &mut Vec<GuardAction>, reason: &str| {
        for (w, _) in &candidates[1..] {
            out.push(GuardAction::Hold {
                wait: (*w).clone(),
                reason: reason.to_owned(),
            });
        }
    };
    let name = server.map_or_else(|| first.machine.clone(), node);
    // A server that is no healthy voter takes no margin with it: it may always go.
    if leaves_healthy && after < floor {
        hold_all(
            &mut out,
            format!(
                "{name} going would leave {remaining} healthy voters, failure tolerance {after}, \
                 below {floor} (the baseline of {desired} servers); waiting for a replacement voter"
            ),
        );
        return out;
    }
    if let Some(p) = peer.filter(|p| p.leader) {
        out.push(GuardAction::MoveLeader {
            from: p.id.clone(),
            node: name.clone(),
        });
        out.push(GuardAction::Hold {
            wait: first.clone(),
            reason: format!("{name} leads: leadership moves off it first"),
        });
        others(&mut out, "one at a time: the leader goes last");
        return out;
    }
    out.push(GuardAction::Release {
        wait: first.clone(),
        why: format!(
            "failure tolerance stays {after} (baseline {})",
            baseline(desired)
        ),
    });
    others(&mut out, &format!("one at a time: {name} goes first"));
    out
}

/// What the last guard run decided, kept at `rehydrator/<cluster>/guard` for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRecord {
    pub at: u64,
    pub released: Vec<String>,
    /// Each held instance, with why.
    pub held: Vec<(String, String)>,
}

/// The longest a held instance's reason is kept in the guard's record.
const MAX_HELD_REASON: usize = 300;
/// The most instances the record lists (a server group is far smaller).
const MAX_LISTED: usize = 32;

fn port(e: PortError) -> ExecError {
    ExecError::Port(e.to_string())
}

/// One run of the `lifecycle-guard` action: the waiting instances, the cluster now, and the
/// decision carried out. Runs under the `step` lock (`fence`), like a rollout step: before
/// each change it makes (a release, a leadership move) it writes its record so far under that
/// lock, so a replica that lost the lock (frozen past its session, cut off from its agent)
/// changes nothing on a decision the new holder may not share.
pub async fn run(env: &RolloutEnv, fence: &Fence) -> Result<Outcome, ExecError> {
    let waits = env.cloud.lifecycle_waits().await.map_err(port)?;
    if waits.is_empty() {
        return Ok(Outcome::NoOp("no server waits in a lifecycle hook".into()));
    }
    let s = rollout::cluster(env).await?;
    let actions = decide(&s.machines, &s.health, &waits, env.config.desired);
    let mut record = GuardRecord {
        at: now_ms(),
        released: Vec::new(),
        held: Vec::new(),
    };
    for action in actions {
        match action {
            GuardAction::Release { wait, why } => {
                write_record(env, fence, &record).await?;
                env.cloud.complete_lifecycle(&wait).await.map_err(port)?;
                info!(machine = %wait.machine, transition = ?wait.transition, hook = %wait.hook, %why, "Released a server from its lifecycle hook.");
                record.released.push(wait.machine);
            }
            GuardAction::Hold { wait, reason } => {
                // A failed heartbeat is not the end: the hook's timeout is longer than a run,
                // and the next run tries again. A heartbeat only keeps the instance as it is,
                // so it needs no fence.
                if let Err(e) = env.cloud.extend_lifecycle(&wait).await {
                    warn!(machine = %wait.machine, error = %e, "Could not extend a held server's lifecycle wait.");
                }
                info!(machine = %wait.machine, transition = ?wait.transition, %reason, "Holding a server in its lifecycle hook.");
                record
                    .held
                    .push((wait.machine, crate::ports::clip(&reason, MAX_HELD_REASON)));
            }
            GuardAction::MoveLeader { from, node } => {
                write_record(env, fence, &record).await?;
                info!(%node, "Moving leadership off a server the group terminates.");
                let moved = env.consul.transfer_leader(None).await.map_err(port)?;
                info!(%from, ?moved, "Asked Raft to move leadership.");
            }
        }
    }
    write_record(env, fence, &record).await?;
    Ok(if record.released.is_empty() {
        Outcome::NoOp(format!(
            "holding {}",
            record
                .held
                .iter()
                .map(|(m, r)| format!("{m}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    } else {
        Outcome::Succeeded(format!("released {}", record.released.join(", ")))
    })
}

/// Writes the guard's record (bounded) while `fence` holds; an error once it does not.
async fn write_record(
    env: &RolloutEnv,
    fence: &Fence,
    record: &GuardRecord,
) -> Result<(), ExecError> {
    let mut bounded = record.clone();
    bounded.held.truncate(MAX_LISTED);
    bounded.released.truncate(MAX_LISTED);
    let body = serde_json::to_vec(&bounded).map_err(|e| ExecError::Record(e.to_string()))?;
    match env
        .consul
        .kv_put_fenced(&env.keys.guard(), body, None, fence)
        .await
        .map_err(port)?
    {
        Fenced::Written => Ok(()),
        // No index is asked for, so only the lock can refuse it.
        Fenced::Changed | Fenced::LockLost => Err(ExecError::LockLost(format!(
            "this replica no longer holds {} (its session ended); the waiting servers are \
             left to the replica that holds it now",
            fence.lock
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ports::PeerHealth;
    use std::time::Duration;

    fn machine(id: &str, at: u64, state: MachineState) -> Machine {
        Machine {
            id: id.into(),
            image: "ami-a".into(),
            launched_at: at,
            state,
            address: Some(format!("10.0.0.{at}")),
            zone: None,
            node: Some(id.into()),
            token: None,
            reason: None,
        }
    }

    fn peer(id: &str, voter: bool, healthy: bool, leader: bool) -> PeerHealth {
        PeerHealth {
            id: format!("raft-{id}"),
            name: id.into(),
            address: "x:8300".into(),
            serf_status: "alive".into(),
            leader,
            voter,
            healthy,
            stable_since_ms: None,
        }
    }

    fn wait(id: &str, transition: Transition) -> LifecycleWait {
        LifecycleWait {
            machine: id.into(),
            transition,
            hook: "rehydrator-terminating".into(),
            heartbeat_timeout: Duration::from_secs(300),
        }
    }

    /// `n` running voters s1..sn, s1 the leader, all healthy.
    fn cluster(n: usize) -> (Vec<Machine>, ClusterHealth) {
        let ids: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
        let machines = ids
            .iter()
            .enumerate()
            .map(|(i, id)| machine(id, i as u64 + 1, MachineState::Running))
            .collect();
        let servers = ids
            .iter()
            .enumerate()
            .map(|(i, id)| peer(id, true, true, i == 0))
            .collect();
        (
            machines,
            ClusterHealth {
                healthy: true,
                failure_tolerance: u32::try_from(tolerance(n, n)).unwrap(),
                servers,
            },
        )
    }

    fn released(actions: &[GuardAction]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                GuardAction::Release { wait, .. } => Some(wait.machine.as_str()),
                _ => None,
            })
            .collect()
    }

    fn held(actions: &[GuardAction]) -> Vec<(&str, &str)> {
        actions
            .iter()
            .filter_map(|a| match a {
                GuardAction::Hold { wait, reason } => {
                    Some((wait.machine.as_str(), reason.as_str()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tolerance_is_autopilots() {
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(baseline), [0, 0, 1, 1, 2, 2, 3]);
        assert_eq!(tolerance(5, 4), 1);
        assert_eq!(tolerance(3, 2), 0);
        assert_eq!(tolerance(3, 1), -1, "quorum lost");
        assert_eq!(baseline(0), 0);
    }

    #[test]
    fn a_refresh_lets_an_old_server_go_only_once_its_replacement_votes() {
        // Five servers and the refresh's sixth, launched first (MinHealthyPercentage 100).
        let (mut machines, mut health) = cluster(5);
        machines.push(machine("s6", 6, MachineState::Running));
        let waits = [wait("s2", Transition::Terminating)];
        // Joined but not yet promoted: s2 is held.
        health.servers.push(peer("s6", false, true, false));
        let actions = decide(&machines, &health, &waits, 5);
        assert!(released(&actions).is_empty(), "{actions:?}");
        assert!(
            held(&actions)[0].1.contains("s6 to become a voter"),
            "{actions:?}"
        );
        // Promoted: s2 goes, tolerance stays 2.
        health.servers[5].voter = true;
        let actions = decide(&machines, &health, &waits, 5);
        assert_eq!(released(&actions), ["s2"], "{actions:?}");
    }

    #[test]
    fn a_refresh_that_terminates_before_launching_is_held() {
        // MinHealthyPercentage below 100 on five servers: the group terminates first.
        let (machines, health) = cluster(5);
        let actions = decide(
            &machines,
            &health,
            &[wait("s3", Transition::Terminating)],
            5,
        );
        assert!(released(&actions).is_empty(), "{actions:?}");
        assert!(
            held(&actions)[0].1.contains("failure tolerance 1, below 2"),
            "{actions:?}"
        );
    }

    #[test]
    fn one_at_a_time_and_the_leader_last() {
        // Seven servers of a five-server cluster's refresh: two extras already vote.
        let (machines, health) = cluster(7);
        let waits = [
            wait("s1", Transition::Terminating),
            wait("s2", Transition::Terminating),
            wait("s3", Transition::Terminating),
        ];
        let actions = decide(&machines, &health, &waits, 5);
        assert_eq!(
            released(&actions),
            ["s2"],
            "the oldest that does not lead: {actions:?}"
        );
        assert_eq!(held(&actions).len(), 2);
        // s2 released and on its way out, still in Raft: nobody else goes.
        let mut leaving = machines.clone();
        leaving[1].state = MachineState::Stopping;
        let actions = decide(&leaving, &health, &waits[..1], 5);
        assert!(released(&actions).is_empty());
        assert!(
            held(&actions)[0].1.contains("s2 is still leaving"),
            "{actions:?}"
        );
        // Only the leader waits: leadership moves first, then it goes.
        let actions = decide(&machines, &health, &waits[..1], 5);
        assert!(actions.contains(&GuardAction::MoveLeader {
            from: "raft-s1".into(),
            node: "s1".into()
        }));
        assert!(released(&actions).is_empty());
    }

    #[test]
    fn a_dead_server_may_always_go() {
        // A health replacement terminates the dead server before launching its successor.
        let (machines, mut health) = cluster(3);
        health.servers[2].healthy = false;
        let actions = decide(
            &machines,
            &health,
            &[wait("s3", Transition::Terminating)],
            3,
        );
        assert_eq!(released(&actions), ["s3"], "{actions:?}");
        // A healthy one below the baseline already may not.
        let actions = decide(
            &machines,
            &health,
            &[wait("s2", Transition::Terminating)],
            3,
        );
        assert!(released(&actions).is_empty(), "{actions:?}");
    }

    #[test]
    fn scale_in_follows_the_configured_size() {
        // A five-server cluster scaled in to four: the baseline of 5 (2) cannot be kept.
        let (machines, health) = cluster(5);
        let waits = [wait("s5", Transition::Terminating)];
        assert!(released(&decide(&machines, &health, &waits, 5)).is_empty());
        // The operator changed cluster.desired_servers to 4 (baseline 1): it goes.
        assert_eq!(released(&decide(&machines, &health, &waits, 4)), ["s5"]);
    }

    #[test]
    fn a_launch_is_released_when_it_has_started_and_holds_terminations() {
        let (mut machines, health) = cluster(3);
        machines.push(machine("s4", 4, MachineState::Pending));
        let waits = [
            wait("s4", Transition::Launching),
            wait("s2", Transition::Terminating),
        ];
        let actions = decide(&machines, &health, &waits, 3);
        assert!(released(&actions).is_empty(), "{actions:?}");
        assert_eq!(held(&actions).len(), 2);
        machines[3].state = MachineState::Running;
        let actions = decide(&machines, &health, &waits, 3);
        assert_eq!(released(&actions), ["s4"], "{actions:?}");
        assert!(
            held(&actions)
                .iter()
                .any(|(m, r)| *m == "s2" && r.contains("s4")),
            "{actions:?}"
        );
    }
}
