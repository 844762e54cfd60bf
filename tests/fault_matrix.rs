//! Issue 14's fault matrix on real Consul (`CONSUL_BIN`: Debian's 1.8.7 in CI): three
//! `rehydrator run` replicas (the real binary, `[cloud] type = "process"`) roll three real
//! servers onto a new image while a different fault lands at each step:
//!
//! 1. after the first launch, the Consul leader (an old server, due to be retired last) is
//!    SIGKILLed;
//! 2. after the next step, the replica holding the `step` lock is frozen (SIGSTOP) until Consul
//!    has ended its session, then woken (SIGCONT) to go on with what it was doing;
//! 3. after the next, every replica is SIGKILLed at once, then all three are started again;
//! 4. after the next, the client agent the replicas talk to is frozen until Consul has ended
//!    their sessions and for longer than the session TTL, then woken;
//! 5. straight after, that agent is SIGKILLed, left down as long, then started again on its
//!    port with its node name and data directory.
//!
//! Checked by polling Consul itself, not by what the replicas say: never fewer voters in Raft
//! than desired, leaderless only briefly, and at the end every server a new machine on the new
//! image, one launch per step under its own token (a launch the kill of every replica left
//! unstarted may fail once and is replaced), every old server retired but the killed leader.
//! The figures of each fault (leaderless time, takeover times, the whole run) are printed.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::common::process_rig::{
    assert_rolled_onto, every_replica_in_session, fire_until_rolling, rollout_record, sessions,
    step_lock, watch_quorum, ProcessRig, Quorum,
};
use crate::common::replica::Replica;
use crate::common::rollout::SESSION_TTL_SECS;
use crate::common::{bounded_for, eventually};
use rehydrator::consul::{Client, ConsulConfig, QueryOptions};
use rehydrator_actors::plan::{Rollout, RolloutState};
use rehydrator_actors::ports::CloudPort;

const CLUSTER: &str = "matrix";
const N: usize = 3;
const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];
/// Any one wait for the replicas or the cluster.
const WAIT_BOUND: Duration = Duration::from_secs(120);
const TEST_BOUND: Duration = Duration::from_secs(600);
/// An election on loopback takes a few seconds at most; a lost quorum never ends.
const LEADERLESS_BOUND: Duration = Duration::from_secs(15);

fn signal(sig: &str, pid: u32, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), "--", &target])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {target}");
}

fn steps(r: &Rollout) -> usize {
    r.launches.len() + r.retirements.len() + r.failed_launches.len()
}

/// Waits until the record shows `n` steps (launches, retirements, failed launches).
async fn after_steps(client: &Client, n: usize) {
    eventually(&format!("{n} steps recorded"), WAIT_BOUND, || async {
        rollout_record(client, CLUSTER)
            .await
            .filter(|r| steps(r) >= n)
    })
    .await;
}

fn spawn_all(rig: &ProcessRig, config: &std::path::Path) -> Vec<Replica> {
    REPLICAS
        .iter()
        .map(|name| Replica::spawn(&rig.dir, config, name))
        .collect()
}

/// With the replicas' agent out of reach since `at`: waits until Consul (asked through
/// `server`) has ended every replica's session, then until the session TTL has passed too, so
/// the outage outlasts what a TTL alone would forgive. How long the sessions took to end.
async fn outlast_the_sessions(server: &Client, at: Instant) -> Duration {
    eventually("the replicas' sessions to end", WAIT_BOUND, || async {
        let left = sessions(server).await;
        (!left
            .iter()
            .any(|(name, _)| REPLICAS.contains(&name.as_str())))
        .then_some(())
    })
    .await;
    let ended = at.elapsed();
    let ttl = Duration::from_secs(SESSION_TTL_SECS);
    if ended < ttl {
        actix_rt::time::sleep(ttl - ended + Duration::from_secs(1)).await;
    }
    ended
}

#[actix_rt::test]
async fn three_real_servers_roll_through_a_fault_at_every_step() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    bounded_for(TEST_BOUND, async {
        let rig = ProcessRig::new("fault-matrix", bin);
        let client = rig.bootstrap(N).await;
        let before: Vec<String> = rig
            .cloud
            .machines()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        let config = rig.replica_config(CLUSTER, N, &client);
        let mut replicas = spawn_all(&rig, &config);
        let logs = |replicas: &[Replica]| {
            replicas
                .iter()
                .map(|r| format!("--- {} ---\n{}", r.name, r.log_tail(30)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        every_replica_in_session(&client, &REPLICAS, WAIT_BOUND).await;
        for r in &replicas {
            r.await_baselines(2, WAIT_BOUND).await;
        }

        let quorum = Rc::new(RefCell::new(Quorum::default()));
        let watcher = watch_quorum(client.clone(), before.clone(), quorum.clone());
        rig.cloud.register_image("b", None).unwrap();
        let started = Instant::now();
        fire_until_rolling(&client, CLUSTER, WAIT_BOUND).await;
        let mut figures = Vec::new();

        // 1. The leader, an old server, SIGKILLed once the first new server is launched.
        after_steps(&client, 1).await;
        let leader = client
            .raft_configuration(&QueryOptions::default())
            .await
            .unwrap()
            .leader()
            .map(|l| l.node.clone())
            .expect("a leader");
        let killed_leader = if before.contains(&leader) {
            let record = rig
                .cloud
                .records()
                .unwrap()
                .into_iter()
                .find(|r| r.id == leader)
                .unwrap();
            let at = Instant::now();
            signal("KILL", record.pid.unwrap(), true);
            eventually("a new leader", WAIT_BOUND, || async {
                let raft = client.raft_configuration(&QueryOptions::default()).await.ok()?;
                raft.leader().filter(|l| l.node != leader).map(|_| ())
            })
            .await;
            figures.push(format!(
                "leader {leader} SIGKILLed; a new leader seen {:.1?} after",
                at.elapsed()
            ));
            Some(leader)
        } else {
            figures.push(format!("leader {leader} is a new server already: no leader kill"));
            None
        };

        // 2. The step holder frozen until Consul ended its session, then woken.
        after_steps(&client, 2).await;
        let (session, frozen, _) =
            eventually("a replica to hold the step lock", WAIT_BOUND, || step_lock(&client, CLUSTER)).await;
        let i = replicas.iter().position(|r| r.name == frozen).unwrap();
        let at = Instant::now();
        signal("STOP", replicas[i].pid(), false);
        eventually("the frozen holder's session to end", WAIT_BOUND, || async {
            (!sessions(&client).await.iter().any(|(_, id)| *id == session)).then_some(())
        })
        .await;
        let ended = at.elapsed();
        signal("CONT", replicas[i].pid(), false);
        figures.push(format!(
            "{frozen} frozen holding the step lock; its session ended {ended:.1?} after; woken"
        ));

        // 3. Every replica SIGKILLed at once mid-step, then all started again.
        after_steps(&client, 3).await;
        // Whether the woken replica went on with a write its lock no longer covered (it may
        // have been frozen between two calls): the fence refused it.
        let fenced = replicas[i].log_text().contains("no longer holds");
        figures.push(format!("{frozen}'s late record write refused by the fence: {fenced}"));
        let at = Instant::now();
        for r in &replicas {
            r.kill_group();
        }
        for r in &mut replicas {
            let status = r.wait_exit(Duration::from_secs(10)).await;
            assert_eq!(status.code(), None, "SIGKILL, not an exit: {status}");
        }
        replicas = spawn_all(&rig, &config);
        let done = rollout_record(&client, CLUSTER).await.map_or(0, |r| steps(&r));
        after_steps(&client, done + 1).await;
        figures.push(format!(
            "every replica SIGKILLed at {done} steps and started again; the next step recorded {:.1?} after",
            at.elapsed()
        ));

        // 4. The client agent frozen past the session TTL, then woken.
        let agent = rig.cloud.client_record().unwrap().expect("the client agent's record");
        let server = rig
            .cloud
            .records()
            .unwrap()
            .into_iter()
            .find(|r| r.image == "b" && !r.retired)
            .expect("a new server");
        let server_client = Client::new(
            ConsulConfig::with_address(&format!("http://127.0.0.1:{}", server.ports.http)).unwrap(),
        )
        .unwrap();
        let at = Instant::now();
        signal("STOP", agent.pid.unwrap(), false);
        let ended = outlast_the_sessions(&server_client, at).await;
        let stopped = at.elapsed();
        signal("CONT", agent.pid.unwrap(), false);
        every_replica_in_session(&client, &REPLICAS, WAIT_BOUND).await;
        figures.push(format!(
            "client agent frozen {stopped:.1?}: the replicas' sessions ended {ended:.1?} in; all \
             three held sessions again {:.1?} after it woke",
            at.elapsed() - stopped
        ));

        // 5. The client agent SIGKILLed, down past the session TTL, then started again on its
        //    port (same node name and data directory, as a restarted host's agent comes back).
        let at = Instant::now();
        signal("KILL", agent.pid.unwrap(), true);
        let ended = outlast_the_sessions(&server_client, at).await;
        let down = at.elapsed();
        let port = rig.cloud.start_client(agent.ports.http).unwrap();
        assert_eq!(port, agent.ports.http, "the client agent back on its port");
        every_replica_in_session(&client, &REPLICAS, WAIT_BOUND).await;
        figures.push(format!(
            "client agent SIGKILLed and down {down:.1?}: the replicas' sessions ended {ended:.1?} \
             in; all three held sessions again {:.1?} after it was started again",
            at.elapsed() - down
        ));

        // Not `eventually`: a rollout that does not complete must say where it stands (its
        // record's wait reason, Raft's servers, the cloud's machines) and what the replicas did.
        let deadline = Instant::now() + WAIT_BOUND * 3;
        let r = loop {
            let r = rollout_record(&client, CLUSTER).await;
            match &r {
                Some(r) if matches!(r.state, RolloutState::Completed { .. }) => break r.clone(),
                Some(r) if matches!(r.state, RolloutState::Stopped { .. }) => {
                    panic!("the rollout stopped: {r:#?}\n{}", logs(&replicas))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let raft = client
                    .raft_configuration(&QueryOptions::default())
                    .await
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "the rollout did not complete within {:?}; so far: {}\nrecord: {r:#?}\n\
                     Raft: {raft}\nmachines: {:#?}\n{}",
                    WAIT_BOUND * 3,
                    figures.join("; "),
                    rig.cloud.records(),
                    logs(&replicas)
                );
            }
            actix_rt::time::sleep(Duration::from_millis(250)).await;
        };
        let took = started.elapsed();
        watcher.abort();
        let q = std::mem::take(&mut *quorum.borrow_mut());

        // One launch per step under its own token; the killed leader goes without retirement.
        assert_eq!(r.target_image, "b");
        assert_eq!(r.launches.len(), N, "{r:#?}");
        let retired: BTreeSet<&str> = r.retirements.iter().map(|x| x.machine.as_str()).collect();
        let expected: BTreeSet<&str> = before
            .iter()
            .map(String::as_str)
            .filter(|m| Some(*m) != killed_leader.as_deref())
            .collect();
        assert_eq!(retired, expected, "{r:#?}");
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
        assert_eq!(tokens.len(), N + r.failed_launches.len(), "{r:#?}");
        let machines = rig.cloud.machines().await.unwrap();
        assert_rolled_onto(&client, &machines, &before, N, "b").await;

        assert!(q.polls > 10, "{q:?}");
        assert!(q.min_voters.unwrap_or(0) >= N, "never fewer than {N} voters: {q:?}");
        assert!(q.longest_leaderless < LEADERLESS_BOUND, "{q:?}");
        println!(
            "fault matrix on {N} real servers (Consul {}), 3 replicas: rollout completed in \
             {took:.1?}; {}; longest leaderless {:?}; failed launches {}; quorum watch {q:?}",
            rehydrator::cloud::consul_version::ask(&rig.consul_bin).unwrap(),
            figures.join("; "),
            q.longest_leaderless,
            r.failed_launches.len(),
        );
        drop(replicas);
    })
    .await;
}
