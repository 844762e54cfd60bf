//! Three `rehydrator run` replicas (the real binary, `[cloud] type = "process"`) roll real
//! Consul servers (`CONSUL_BIN`: Debian's 1.8.7 in CI) onto a new image, and the replica holding
//! the `step` lock is SIGKILLed (its whole process group, as a container dies) at a point of the
//! rollout a seeded RNG picks: 3 servers, and 5.
//!
//! Checked by polling Consul itself during the run, not by what the replicas say: never fewer
//! than N voters in Raft, a leader at every poll but for the leader's retirement (on Consul
//! before 1.15 it leaves and the others elect: the longest leaderless stretch is reported);
//! and at the end exactly N launches with distinct tokens and N retirements, no failed launch
//! but one the kill itself caused, every server a new machine on the new image, N voters.
//!
//! The agents run in their own process groups (the process backend's), so they outlive the
//! replica that launched them, as EC2 instances outlive a task. The two tests take turns: each
//! runs N+1 agents and three replicas, and two cores hold one such run well, not two.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::process_rig::{
    assert_rolled_onto, every_replica_in_session, fire_until_rolling, rollout_record, sessions,
    step_lock, watch_quorum, ProcessRig, Quorum, STABILIZATION,
};
use crate::common::replica::Replica;
use crate::common::rollout::{CHECK_TTL_SECS, LOCK_DELAY_SECS};
use crate::common::{bounded_for, eventually};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rehydrator_actors::plan::{Rollout, RolloutState};
use rehydrator_actors::ports::CloudPort;

const CLUSTER: &str = "roll";
const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];
const CHECK_TTL: Duration = Duration::from_secs(CHECK_TTL_SECS);
const LOCK_DELAY: Duration = Duration::from_secs(LOCK_DELAY_SECS);
/// What the takeover may overshoot check TTL + lock-delay by on a loaded machine.
const SLACK: Duration = Duration::from_secs(15);
/// Any one wait for the replicas or the cluster.
const WAIT_BOUND: Duration = Duration::from_secs(90);
/// A whole rollout of 5 real servers with a takeover, on two cores.
const ROLLOUT_BOUND: Duration = Duration::from_secs(300);
/// A whole test, agents' start included.
const TEST_BOUND: Duration = Duration::from_secs(420);
/// The longest a poll may see no leader: an election on loopback takes about a second; a lost
/// quorum never ends.
const LEADERLESS_BOUND: Duration = Duration::from_secs(10);

/// One real rollout at a time (see the module notes).
static TURN: Mutex<()> = Mutex::new(());

#[actix_rt::test]
async fn three_real_servers_roll_with_the_step_holder_killed() {
    rollout_with_the_holder_killed(3, 1).await;
}

#[actix_rt::test]
async fn five_real_servers_roll_with_the_step_holder_killed() {
    rollout_with_the_holder_killed(5, 2).await;
}

/// Launches and retirements the record lists so far.
fn steps(r: &Rollout) -> usize {
    r.launches.len() + r.retirements.len()
}

// The turn is held across awaits on purpose: each test runs its own runtime on its own
// thread, and nothing else on that runtime takes it.
#[allow(clippy::await_holding_lock)]
async fn rollout_with_the_holder_killed(n: usize, seed: u64) {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    let _turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    bounded_for(TEST_BOUND, async {
        let rig = ProcessRig::new(&format!("replicas-{n}"), bin);
        let client = rig.bootstrap(n).await;
        let before: Vec<String> = rig
            .cloud
            .machines()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();

        let config = rig.replica_config(CLUSTER, n, &client);
        let mut replicas: Vec<Replica> = REPLICAS
            .iter()
            .map(|name| Replica::spawn(&rig.dir, &config, name))
            .collect();
        let logs = |replicas: &[Replica]| {
            replicas
                .iter()
                .map(|r| format!("--- {} ---\n{}", r.name, r.log_tail(25)))
                .collect::<Vec<_>>()
                .join("\n")
        };

        // Every replica holds a session and its event and catalog watches took their baselines.
        every_replica_in_session(&client, &REPLICAS, WAIT_BOUND).await;
        for r in &replicas {
            r.await_baselines(2, WAIT_BOUND).await;
        }

        let quorum = Rc::new(RefCell::new(Quorum::default()));
        let watcher = watch_quorum(client.clone(), before.clone(), quorum.clone());
        rig.cloud.register_image("b", None).unwrap();
        let started = Instant::now();
        fire_until_rolling(&client, CLUSTER, WAIT_BOUND).await;

        // The rollout takes 2N steps (launch, retire, ...): the kill comes after `after` of
        // them, `jitter` later, during whatever step holds the lock then.
        let mut rng = StdRng::seed_from_u64(seed);
        let after = rng.gen_range(0..2 * n);
        let jitter = Duration::from_millis(rng.gen_range(0..1500));
        eventually(&format!("{after} steps recorded"), ROLLOUT_BOUND, || async {
            rollout_record(&client, CLUSTER)
                .await
                .filter(|r| steps(r) >= after)
        })
        .await;
        actix_rt::time::sleep(jitter).await;
        let (session, victim, holder) =
            eventually("a replica to hold the step lock", WAIT_BOUND, || {
                step_lock(&client, CLUSTER)
            })
            .await;
        let done_before = rollout_record(&client, CLUSTER)
            .await
            .map_or(0, |r| steps(&r));
        let i = replicas.iter().position(|r| r.name == victim).unwrap();
        let killed = Instant::now();
        replicas[i].kill_group();
        let status = replicas[i].wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.code(), None, "SIGKILL, not an exit: {status}");

        // Another replica takes the lock once Consul ends the dead session (its liveness check
        // turns critical CHECK_TTL after the last pass) and lock-delay has passed.
        let (_, next, _) = eventually(
            "another replica to take the step lock",
            CHECK_TTL + LOCK_DELAY + SLACK,
            || async {
                step_lock(&client, CLUSTER)
                    .await
                    .filter(|(s, _, _)| *s != session)
            },
        )
        .await;
        let takeover = killed.elapsed();
        assert_ne!(next, victim, "the dead replica took the lock again");

        let r = eventually("the rollout completing", ROLLOUT_BOUND, || async {
            let r = rollout_record(&client, CLUSTER).await?;
            if let RolloutState::Stopped { .. } = r.state {
                panic!("the rollout stopped: {r:#?}\n{}", logs(&replicas));
            }
            matches!(r.state, RolloutState::Completed { .. }).then_some(r)
        })
        .await;
        let took = started.elapsed();
        watcher.abort();
        let q = std::mem::take(&mut *quorum.borrow_mut());

        // The record: N launches under N distinct tokens, N retirements. The one failed launch
        // allowed is the kill's: a replica SIGKILLed after claiming a machine's record and
        // before starting its agent leaves a machine that never ran (EC2's RunInstances has no
        // such window), which the next holder records as failed and launches anew.
        assert_eq!(r.target_image, "b");
        assert_eq!((r.launches.len(), r.retirements.len()), (n, n), "{r:#?}");
        assert!(
            r.failed_launches.len() <= 1
                && r.failed_launches.iter().all(|f| f.reason.as_deref()
                    == Some("the launcher died before it started the agent")),
            "{r:#?}"
        );
        let tokens: BTreeSet<_> = r
            .launches
            .iter()
            .chain(&r.failed_launches)
            .map(|l| l.token.clone())
            .collect();
        assert_eq!(
            tokens.len(),
            n + r.failed_launches.len(),
            "a token per launch: {r:#?}"
        );
        let retired: BTreeSet<&str> = r.retirements.iter().map(|x| x.machine.as_str()).collect();
        let old: BTreeSet<&str> = before.iter().map(String::as_str).collect();
        assert_eq!(retired, old, "every old server retired, and only those");

        // The cloud and Consul: N new machines on b, N voters, each with b in its node meta.
        let machines = rig.cloud.machines().await.unwrap();
        assert_rolled_onto(&client, &machines, &before, n, "b").await;

        // Polled all along: never fewer than N voters, leaderless only briefly.
        assert!(q.polls > 10, "{q:?}");
        assert!(
            q.min_voters.unwrap_or(0) >= n,
            "never fewer than {n} voters: {q:?}"
        );
        assert!(q.longest_leaderless < LEADERLESS_BOUND, "{q:?}");
        assert!(
            r.leader_moves.len() == 1 || q.new_leader_beside_old,
            "an old leader was retired unmoved: {r:#?} {q:?}"
        );
        let sessions = sessions(&client).await;
        assert!(
            !sessions.iter().any(|(name, _)| *name == victim),
            "the dead replica's session outlived it: {sessions:?}"
        );

        let lead = r.leader_moves.first().map_or_else(
            || "none needed (an election had moved it)".to_owned(),
            |m| {
                format!(
                    "{} with a new leader {} ms after",
                    m.path, m.until_new_leader_ms
                )
            },
        );
        println!(
            "{n} real servers (Consul {}), 3 replicas, seed {seed}: killed {victim} after \
             {done_before} steps (aimed at {after} + {jitter:.0?}) while it ran {} for {}; {next} \
             took the step lock {takeover:.1?} later (bound check TTL + lock-delay = {:?}); rollout \
             completed in {took:.1?} (promotion waits {:?} a server); leadership: {lead}; \
             failed launches: {:?}; quorum watch {q:?}",
            rehydrator::cloud::consul_version::ask(&rig.consul_bin).unwrap(),
            holder["action"],
            holder["trigger_id"],
            CHECK_TTL + LOCK_DELAY,
            STABILIZATION,
            r.failed_launches
                .iter()
                .map(|f| f.reason.as_deref().unwrap_or_default())
                .collect::<Vec<_>>(),
        );
        drop(replicas);
    })
    .await;
}
