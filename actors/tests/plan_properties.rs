//! The planner's safety rules over random clusters (issue 14's properties, first step):
//! machines on two images, each in Raft or not, voting or not, healthy or not, one leader or
//! none; a rollout recorded or not, aborted or not; paused or not; any health and failure
//! tolerance. Whatever the cluster, `spin_up` and `spin_down`:
//!
//! - take no step while paused;
//! - never launch a server that would make more than desired + 1;
//! - retire only over the desired size (an aborted rollout's own server that does not vote
//!   excepted: the operator asked for it to go, and it counts for no quorum), never the
//!   leader, and a voter only while autopilot is healthy at the rollout's baseline tolerance
//!   or above;
//! - and `missed_steps` converges: applied once, it finds nothing more.
//!
//! A failing case is shrunk by proptest to a small cluster and printed.

use proptest::prelude::*;
use rehydrator_actors::plan::{
    missed_steps, spin_down, spin_up, Abort, Mode, Rollout, RolloutState, Snapshot, Step,
    StepRecord,
};
use rehydrator_actors::ports::{ClusterHealth, Image, Machine, MachineState, PeerHealth};

const STABLE_TIMEOUT_MS: u64 = 600_000;
const NOW_MS: u64 = 10_000_000;

/// One machine as generated: its image (true: the new one), whether it is in Raft, votes,
/// is healthy.
#[derive(Debug, Clone)]
struct Gen {
    new_image: bool,
    in_raft: bool,
    voter: bool,
    healthy: bool,
}

fn machine_gen() -> impl Strategy<Value = Gen> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(new_image, in_raft, voter, healthy)| Gen {
            new_image,
            in_raft,
            voter: in_raft && voter,
            healthy: in_raft && healthy,
        },
    )
}

#[derive(Debug, Clone)]
struct Case {
    machines: Vec<Gen>,
    /// Which voter leads (an index into the voters), if any.
    leader: Option<usize>,
    desired: usize,
    healthy: bool,
    tolerance: u32,
    baseline: u32,
    paused: bool,
    /// 0: no rollout; 1: active; 2: active and aborted.
    rollout: u8,
    requested: bool,
}

fn case_gen() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(machine_gen(), 1..=7),
        prop::option::of(0usize..7),
        1usize..=5,
        any::<bool>(),
        0u32..=2,
        0u32..=2,
        any::<bool>(),
        0u8..=2,
        any::<bool>(),
    )
        .prop_map(
            |(
                machines,
                leader,
                desired,
                healthy,
                tolerance,
                baseline,
                paused,
                rollout,
                requested,
            )| {
                Case {
                    machines,
                    leader,
                    desired,
                    healthy,
                    tolerance,
                    baseline,
                    paused,
                    rollout,
                    requested,
                }
            },
        )
}

fn snapshot(c: &Case) -> Snapshot {
    let mut machines = Vec::new();
    let mut peers = Vec::new();
    let voters: Vec<usize> = (0..c.machines.len())
        .filter(|&i| c.machines[i].voter)
        .collect();
    let leader = c
        .leader
        .and_then(|l| (!voters.is_empty()).then(|| voters[l % voters.len()]));
    for (i, g) in c.machines.iter().enumerate() {
        let id = format!("m{i}");
        machines.push(Machine {
            id: id.clone(),
            image: if g.new_image { "B" } else { "A" }.into(),
            launched_at: 1_000 + i as u64 * 1_000,
            state: MachineState::Running,
            address: Some(format!("10.0.0.{i}")),
            zone: None,
            node: Some(id.clone()),
            token: None,
            reason: None,
        });
        if g.in_raft {
            peers.push(PeerHealth {
                id: format!("raft-{i}"),
                name: id,
                address: format!("10.0.0.{i}:8300"),
                serf_status: "alive".into(),
                leader: leader == Some(i),
                voter: g.voter,
                healthy: g.healthy,
                stable_since_ms: Some(1_000),
            });
        }
    }
    let rollout = (c.rollout > 0).then(|| {
        let mut r = Rollout::start("r1".into(), "B", 500, c.baseline);
        if c.rollout == 2 {
            r.aborted = Some(Abort {
                by: "ops".into(),
                at: 900,
                reason: None,
            });
        }
        r
    });
    Snapshot {
        machines,
        health: ClusterHealth {
            healthy: c.healthy,
            failure_tolerance: c.tolerance,
            servers: peers,
        },
        newest_image: Some(Image {
            id: "B".into(),
            name: "b".into(),
            created: "2026".into(),
        }),
        rollout,
        paused: c.paused,
        desired: c.desired,
        launch_attempts: 3,
        now_ms: NOW_MS,
    }
}

fn acts(step: &Step) -> bool {
    matches!(
        step,
        Step::Launch { .. } | Step::Retire { .. } | Step::TransferLeadership { .. }
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_step_while_paused(c in case_gen()) {
        let s = snapshot(&Case { paused: true, ..c.clone() });
        let up = spin_up(&s, Mode::Auto, c.requested, STABLE_TIMEOUT_MS);
        let down = spin_down(&s, STABLE_TIMEOUT_MS);
        prop_assert!(!acts(&up), "spin_up acted while paused: {up:?}");
        prop_assert!(!acts(&down), "spin_down acted while paused: {down:?}");
    }

    #[test]
    fn a_launch_never_makes_more_than_desired_plus_one(c in case_gen()) {
        let s = snapshot(&c);
        if let Step::Launch { .. } = spin_up(&s, Mode::Auto, c.requested, STABLE_TIMEOUT_MS) {
            prop_assert!(s.servers().len() <= s.desired, "{} servers, {} desired", s.servers().len(), s.desired);
            prop_assert!(s.rollout.as_ref().is_some_and(|r| r.aborted.is_none()), "a launch for an aborted rollout");
        }
    }

    #[test]
    fn retirements_keep_the_leader_the_size_and_the_baseline(c in case_gen()) {
        let s = snapshot(&c);
        if let Step::Retire { machine, .. } = spin_down(&s, STABLE_TIMEOUT_MS) {
            let servers = s.servers();
            let victim = servers.iter().find(|sv| sv.machine.id == machine).expect("a known machine");
            let peer = victim.peer;
            let aborted_own = s.rollout.as_ref().is_some_and(|r| {
                r.aborted.is_some() && victim.machine.image == r.target_image
            }) && !victim.is_voter();
            prop_assert!(
                servers.len() > s.desired || aborted_own,
                "retired {machine} at {} of {} desired", servers.len(), s.desired
            );
            prop_assert!(!peer.is_some_and(|p| p.leader), "retired the leader {machine}");
            if victim.is_voter() {
                let baseline = s.rollout.as_ref().map_or(0, |r| r.baseline_tolerance);
                prop_assert!(s.health.healthy, "retired voter {machine} while unhealthy");
                prop_assert!(
                    s.health.failure_tolerance >= baseline,
                    "retired voter {machine} at tolerance {} below baseline {baseline}",
                    s.health.failure_tolerance
                );
            }
        }
    }

    #[test]
    fn missed_steps_converge(
        launched in prop::collection::vec(any::<bool>(), 1..=6),
        recorded in prop::collection::vec(any::<bool>(), 1..=6),
        retiring in prop::option::of(0usize..6),
        gone in any::<bool>(),
    ) {
        // Machines this rollout launched (token r1-…) or not, some recorded, a retirement
        // under way whose machine is gone or not.
        let machines: Vec<Machine> = launched
            .iter()
            .enumerate()
            .map(|(i, &ours)| Machine {
                id: format!("m{i}"),
                image: "B".into(),
                launched_at: 1_000 + i as u64,
                state: MachineState::Running,
                address: None,
                zone: None,
                node: None,
                token: ours.then(|| format!("r1-t{i}")),
                reason: None,
            })
            .filter(|m| !(gone && retiring == Some(m.launched_at as usize - 1_000)))
            .collect();
        let mut r = Rollout::start("r1".into(), "B", 0, 1);
        for (i, &rec) in recorded.iter().enumerate() {
            if rec && launched.get(i).copied().unwrap_or(false) {
                r.launches.push(StepRecord { machine: format!("m{i}"), at: 1, token: None, reason: None });
            }
        }
        r.retiring = retiring.map(|i| StepRecord { machine: format!("m{i}"), at: 2, token: None, reason: None });
        missed_steps(&r, &machines).apply(&mut r);
        let again = missed_steps(&r, &machines);
        prop_assert!(again.launches.is_empty() && again.retired.is_none(), "not converged: {again:?}");
        // Applying it did not record a machine twice.
        let mut ids: Vec<&str> = r.launches.iter().map(|l| l.machine.as_str()).collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        prop_assert_eq!(before, ids.len());
        prop_assert!(r.state == RolloutState::Active);
    }
}
