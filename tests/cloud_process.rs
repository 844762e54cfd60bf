//! The process backend against real Consul: `consul agent -server` processes on loopback, from
//! the binary `CONSUL_BIN` names (`scripts/test.sh` installs Debian's 1.8.7 and sets it).
//! Without it a test prints why it is skipped and passes, except under `CI=true`, where it
//! fails; with it:
//! - a launched server joins the cluster with its image in node meta and becomes a voter, and
//!   retiring it makes it leave Raft and its process exit;
//! - 3 servers bootstrapped on image `a`, image `b` registered, `consul-rehydrate` fired: the
//!   actor tree's SpinUp/SpinDown (the same as `run` builds) roll every server onto `b`, with
//!   a leader at every poll but for short elections and never fewer than 3 voters;
//! - the same with the first new agent SIGKILLed while it starts, and once it is in Raft as a
//!   non-voter: one failed launch recorded with the agent's exit, a new token for the next.
//!
//! The replica talks to a client agent, which stays while every server is replaced. Every
//! agent is killed when a test ends, panics included; a failed test keeps the agents' logs.
//!
//! One test runs always: `rehydrator process-cluster` with a stand-in agent (a script that
//! sleeps), for what is process management rather than Consul (start, a missing leader named,
//! a second start refused, `--stop`, bad input).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::common::process_rig::{
    assert_rolled_onto, catalog_images, fire_until_rolling, rollout_record, watch_quorum,
    ProcessRig, Quorum, AGENT_HCL,
};
use rehydrator::cloud::process::{ProcessCloud, ProcessOptions};
use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::{Client, ConsulConfig, QueryOptions, WatchPolicy};
use rehydrator::webhook::AwcWebhook;
use rehydrator_actors::plan::RolloutState;
use rehydrator_actors::ports::{CloudPort, MachineState};
use rehydrator_actors::tree::{self, Ports};
use rehydrator_config::CloudSettings;

/// A whole test, agents' start included.
const TEST_BOUND: Duration = Duration::from_secs(240);
/// Any one wait inside it.
const WAIT_BOUND: Duration = Duration::from_secs(90);
/// The longest a poll may see no leader: an election on loopback (raft_multiplier 1) takes
/// about a second; a lost quorum never ends.
const LEADERLESS_BOUND: Duration = Duration::from_secs(10);

const CLUSTER: &str = "roll";

/// Waits until Raft lists `node` as a voter (`voting`), or no longer lists it (`!voting`).
async fn until_in_raft(client: &Client, node: &str, voting: bool) {
    let what = if voting {
        format!("{node} a voter")
    } else {
        format!("{node} out of Raft")
    };
    common::eventually(&what, WAIT_BOUND, || async {
        let raft = client
            .raft_configuration(&QueryOptions::default())
            .await
            .ok()?;
        let listed = raft.servers.iter().find(|s| s.node == node);
        let done = if voting {
            listed.is_some_and(|s| s.voter)
        } else {
            listed.is_none()
        };
        done.then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn a_launched_server_joins_with_its_image_and_leaves_when_retired() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    common::bounded_for(TEST_BOUND, async {
        let rig = ProcessRig::new("launch", bin);
        let client = rig.bootstrap(3).await;
        rig.cloud.register_image("b", None).unwrap();
        assert_eq!(rig.cloud.newest_image().await.unwrap().unwrap().id, "b");

        let m = rig.cloud.launch("b", "test-launch-1").await.unwrap();
        assert_eq!(m.node.as_deref(), Some(m.id.as_str()));
        // A retried launch answers the same machine.
        assert_eq!(
            rig.cloud.launch("b", "test-launch-1").await.unwrap().id,
            m.id
        );
        until_in_raft(&client, &m.id, true).await;
        assert_eq!(
            catalog_images(&client).await.get(&m.id).map(String::as_str),
            Some("b")
        );
        let machines = rig.cloud.machines().await.unwrap();
        assert_eq!(machines.len(), 4, "{machines:?}");
        assert!(machines.iter().all(|m| m.state == MachineState::Running));

        rig.cloud.retire(&m.id).await.unwrap();
        until_in_raft(&client, &m.id, false).await;
        let raft = client
            .raft_configuration(&QueryOptions::default())
            .await
            .unwrap();
        assert!(raft.leader().is_some() && raft.voters() == 3, "{raft:?}");
        let machines = rig.cloud.machines().await.unwrap();
        assert_eq!(machines.len(), 3, "{machines:?}");
        assert!(!machines.iter().any(|x| x.id == m.id));
        // Retiring again is done already.
        rig.cloud.retire(&m.id).await.unwrap();
    })
    .await;
}

/// What the rollout does with a retired server that died instead of leaving (a server image
/// without `leave_on_terminate`), checked on real Consul: with CleanupDeadServers off, a
/// SIGKILLed voter whose machine is retired stays a failed voter; the port's force-leave makes
/// the leader take it out of Raft, leaving the three others voting under a leader.
#[actix_rt::test]
async fn a_dead_server_is_out_of_raft_once_force_left() {
    use rehydrator_actors::ports::ConsulPort;
    let Some(bin) = common::consul_bin() else {
        return;
    };
    common::bounded_for(TEST_BOUND, async {
        let rig = ProcessRig::new("force-leave", bin);
        let client = rig.bootstrap(3).await;
        let mut config = client
            .autopilot_configuration(&QueryOptions::default())
            .await
            .unwrap();
        config.cleanup_dead_servers = false;
        assert!(client
            .autopilot_set_configuration(&config, None)
            .await
            .unwrap());
        rig.cloud.register_image("b", None).unwrap();
        let m = rig.cloud.launch("b", "test-dead-1").await.unwrap();
        until_in_raft(&client, &m.id, true).await;

        let pid = rig
            .cloud
            .records()
            .unwrap()
            .into_iter()
            .find(|r| r.id == m.id)
            .and_then(|r| r.pid)
            .expect("its PID");
        let killed = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -KILL -{pid}");
        rig.cloud.retire(&m.id).await.unwrap();
        let failed = common::eventually("the dead server failed in serf", WAIT_BOUND, || async {
            let health = client
                .autopilot_health(&QueryOptions::default())
                .await
                .ok()?;
            health
                .servers
                .into_iter()
                .find(|s| s.name == m.id && s.serf_status == "failed")
        })
        .await;
        assert!(failed.voter, "still a voter while failed: {failed:?}");

        let port = ConsulAdapter::new(client.clone(), WatchPolicy::default());
        let at = Instant::now();
        port.force_leave(&m.id).await.unwrap();
        until_in_raft(&client, &m.id, false).await;
        println!(
            "force-left server out of Raft {:.1?} after the call",
            at.elapsed()
        );
        let raft = client
            .raft_configuration(&QueryOptions::default())
            .await
            .unwrap();
        assert!(raft.leader().is_some() && raft.voters() == 3, "{raft:?}");
    })
    .await;
}

/// When the test SIGKILLs the rollout's first new agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Never,
    /// As soon as the rollout record lists the launch: the agent is starting.
    Starting,
    /// Once the new server is in Raft as a non-voter, before autopilot promotes it.
    Joined,
    /// An old server that is neither the leader nor the next to be retired, once the first
    /// launch is recorded: the cluster loses a voter mid-rollout.
    OldServer,
}

/// Once the first launch is recorded, SIGKILLs an old server that neither leads nor is next
/// to go (the plan retires the oldest outdated non-leader first, ties by machine ID); returns
/// its machine ID.
async fn kill_old_server(rig: &ProcessRig, client: &Client, before: &[String]) -> String {
    common::eventually("the first launch", WAIT_BOUND, || async {
        rollout_record(client, CLUSTER)
            .await
            .filter(|r| !r.launches.is_empty())
    })
    .await;
    let raft = client
        .raft_configuration(&QueryOptions::default())
        .await
        .unwrap();
    let leader = raft.leader().map(|l| l.node.clone());
    let record = rig
        .cloud
        .records()
        .unwrap()
        .into_iter()
        .filter(|r| before.contains(&r.id) && Some(&r.id) != leader.as_ref())
        .max_by(|a, b| (a.launched_at, &a.id).cmp(&(b.launched_at, &b.id)))
        .expect("an old follower");
    let pid = record.pid.expect("its PID");
    let killed = std::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -KILL -{pid}");
    record.id
}

/// Waits for the rollout's first launch, waits for `kill`'s moment and SIGKILLs its agent;
/// returns the machine and whether it was in Raft when killed.
async fn kill_first_launch(rig: &ProcessRig, client: &Client, kill: Kill) -> (String, bool) {
    let first = common::eventually("the first launch", WAIT_BOUND, || async {
        rollout_record(client, CLUSTER)
            .await
            .and_then(|r| r.launches.first().cloned())
    })
    .await;
    let id = first.machine;
    let in_raft = || async {
        client
            .raft_configuration(&QueryOptions::default())
            .await
            .ok()
            .and_then(|raft| raft.servers.iter().find(|s| s.node == id).map(|s| s.voter))
    };
    if kill == Kill::Joined {
        common::eventually("the new server joining Raft", WAIT_BOUND, || async {
            (in_raft().await == Some(false)).then_some(())
        })
        .await;
    }
    let was_in_raft = in_raft().await.is_some();
    let pid = rig
        .cloud
        .records()
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .and_then(|r| r.pid)
        .expect("the launched agent has a PID");
    let killed = std::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -KILL -{pid}");
    (id, was_in_raft)
}

#[actix_rt::test]
async fn three_real_servers_roll_onto_the_new_image_keeping_quorum() {
    real_rollout(3, Kill::Never).await;
}

#[actix_rt::test]
async fn a_new_real_server_killed_while_starting_is_launched_again() {
    real_rollout(3, Kill::Starting).await;
}

#[actix_rt::test]
async fn a_new_real_server_killed_after_joining_is_launched_again() {
    real_rollout(3, Kill::Joined).await;
}

#[actix_rt::test]
async fn an_old_real_server_killed_mid_rollout_holds_the_steps_until_health_returns() {
    real_rollout(3, Kill::OldServer).await;
}

/// `n` real servers on image `a` roll onto `b` through the actor tree, the first new agent
/// SIGKILLed at `kill`'s moment: every server ends on `b`, never fewer than `n` voters, and a
/// killed agent is one failed launch with its exit in the record, replaced under a new token.
async fn real_rollout(n: usize, kill: Kill) {
    real_rollout_with(n, kill, None).await;
}

/// The management token of the ACL rollout (a UUID, as Consul's tokens are).
const ACL_TOKEN: &str = "3f6c2a7e-8d41-4b59-9c0e-5a1b7d2e4f60";

#[actix_rt::test]
async fn three_real_servers_roll_with_acls_on_denying_by_default() {
    real_rollout_with(3, Kill::Never, Some(ACL_TOKEN)).await;
}

/// `real_rollout`; with `acl`, the agents enforce ACLs (default deny) with that management
/// token, which the replica gets as `run` would from `CONSUL_HTTP_TOKEN`, and which no agent's
/// (or `consul leave`'s) arguments may show.
async fn real_rollout_with(n: usize, kill: Kill, acl: Option<&str>) {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    common::bounded_for(TEST_BOUND, async {
        let name = format!(
            "rollout-{kill:?}{}",
            if acl.is_some() { "-acl" } else { "" }
        );
        let rig = match acl {
            Some(token) => ProcessRig::with_acl(&name, bin, token),
            None => ProcessRig::new(&name, bin),
        };
        let client = rig.bootstrap(n).await;
        let before: Vec<String> = rig
            .cloud
            .machines()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();

        // The replica's configuration, loaded as `run` loads it; its cloud built as `run` does.
        let acl_hcl = acl.map(common::process_rig::acl_hcl);
        let agent_hcl = match &acl_hcl {
            Some(a) => format!("'''{AGENT_HCL}\n{a}'''"),
            None => format!("'''{AGENT_HCL}'''"),
        };
        let cloud = format!(
            "type = \"process\"\nconsul_bin = \"{}\"\ndata_dir = \"{}\"\nagent_hcl = {agent_hcl}",
            rig.consul_bin.display(),
            rig.dir.display()
        );
        let text = common::rollout::config(
            CLUSTER,
            n,
            client.address(),
            &cloud,
            "stable_timeout = \"1m\"",
        );
        let path = rig.dir.join("rehydrator.toml");
        std::fs::write(&path, text).unwrap();
        let env: HashMap<String, String> = acl
            .map(|t| ("CONSUL_HTTP_TOKEN".to_owned(), t.to_owned()))
            .into_iter()
            .collect();
        let settings = rehydrator_config::load_with_env(&path, &env).unwrap();
        let CloudSettings::Process(process) = &settings.cloud else {
            panic!("the config names the process cloud: {:?}", settings.cloud)
        };
        // As `run` builds them: the Consul client from [consul] and its token, which the
        // process cloud also gets for `consul leave`.
        let consul_config = ConsulConfig::from_settings(&settings.consul).unwrap();
        let replica_cloud = ProcessCloud::from_settings(process)
            .unwrap()
            .with_acl_token(consul_config.token.clone());
        let tree = tree::start(
            &settings,
            "replica-1",
            Ports {
                consul: Rc::new(ConsulAdapter::new(
                    Client::new(consul_config).unwrap(),
                    WatchPolicy {
                        min_interval: Duration::from_millis(50),
                        ..WatchPolicy::default()
                    },
                )),
                webhook: Rc::new(AwcWebhook::default()),
                cloud: Some(Rc::new(replica_cloud)),
                gates: Vec::new(),
                objects: None,
            },
        );

        let quorum = Rc::new(RefCell::new(Quorum::default()));
        let watcher = watch_quorum(client.clone(), before.clone(), quorum.clone());
        // Without a kill, image b names its own consul binary, as an image that also upgrades
        // Consul does: a wrapper that notes each run and execs the real one (only one Consul
        // version is installable here, so the binaries differ but the version does not).
        let wrapper = (kill == Kill::Never).then(|| {
            use std::os::unix::fs::PermissionsExt as _;
            let path = rig.dir.join("consul-b");
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\necho \"$1\" >> '{}'\nexec '{}' \"$@\"\n",
                    rig.dir.join("consul-b.runs").display(),
                    rig.consul_bin.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        });
        rig.cloud.register_image("b", wrapper.as_deref()).unwrap();
        let started = Instant::now();
        fire_until_rolling(&client, CLUSTER, WAIT_BOUND).await;
        let (killed, old_killed) = match kill {
            Kill::Never => (None, None),
            Kill::OldServer => (None, Some(kill_old_server(&rig, &client, &before).await)),
            _ => (Some(kill_first_launch(&rig, &client, kill).await), None),
        };
        let r = common::eventually("the rollout completing", TEST_BOUND, || async {
            rollout_record(&client, CLUSTER)
                .await
                .filter(|r| matches!(r.state, RolloutState::Completed { .. }))
        })
        .await;
        let took = started.elapsed();
        watcher.abort();

        assert_eq!(r.target_image, "b");
        // A killed old server is gone without a retirement: the rollout replaced it anyway.
        let retired = n - usize::from(old_killed.is_some());
        assert_eq!(
            (r.launches.len(), r.retirements.len()),
            (n, retired),
            "{r:?}"
        );
        assert!(
            !r.retirements
                .iter()
                .any(|x| old_killed.as_ref() == Some(&x.machine)),
            "{r:?}"
        );
        // The leader went by the path its version allows: transfer-leader from 1.15, else a
        // graceful leave and an election.
        let version = rehydrator::cloud::consul_version::ask(&rig.consul_bin).unwrap();
        let path = if version >= rehydrator::cloud::consul_version::Version::new(1, 15, 0) {
            "transfer"
        } else {
            "leave"
        };
        // The first leader is an old server, retired last, so it is moved once. An election
        // (a killed new agent, or heartbeats missed under load) may hand leadership to a new
        // server on its own first; then no old leader is retired and nothing is moved, and
        // the quorum watch must have seen that new leader while old servers remained.
        assert!(r.leader_moves.len() <= 1, "{r:#?}");
        let q = std::mem::take(&mut *quorum.borrow_mut());
        assert!(
            r.leader_moves.len() == 1 || q.new_leader_beside_old,
            "an old leader was retired unmoved: {r:#?} {q:?}"
        );
        assert!(
            r.leader_moves.iter().all(|m| m.path == path),
            "{:?}",
            r.leader_moves
        );
        let lead = r.leader_moves.first().map_or_else(
            || "none needed".to_owned(),
            |m| {
                format!(
                    "{} with a new leader {} ms after",
                    m.path, m.until_new_leader_ms
                )
            },
        );
        if let Some((victim, was_in_raft)) = &killed {
            assert_eq!(r.failed_launches.len(), 1, "{r:#?}");
            let f = &r.failed_launches[0];
            assert_eq!(&f.machine, victim);
            let reason = f.reason.as_deref().unwrap_or_default();
            assert!(reason.contains("SIGKILL"), "the agent's exit: {reason}");
            let tokens: std::collections::BTreeSet<_> = r
                .launches
                .iter()
                .chain(&r.failed_launches)
                .map(|l| l.token.clone())
                .collect();
            assert_eq!(tokens.len(), n + 1, "a token per launch: {r:#?}");
            println!("killed {victim} (in Raft: {was_in_raft}); recorded: {reason}");
        }
        let machines = rig.cloud.machines().await.unwrap();
        // The cloud and Consul: n new machines on b, n voters, each with b in its node meta.
        assert_rolled_onto(&client, &machines, &before, n, "b").await;
        if let Some(wrapper) = &wrapper {
            // Every new server's agent ran from image b's binary.
            let runs = std::fs::read_to_string(rig.dir.join("consul-b.runs")).unwrap_or_default();
            assert_eq!(runs.lines().filter(|l| *l == "agent").count(), n, "{runs}");
            let records = rig.cloud.records().unwrap();
            assert!(
                records
                    .iter()
                    .filter(|r| r.image == "b")
                    .all(|r| &r.binary == wrapper),
                "{records:?}"
            );
        }
        assert!(q.polls > 10, "{q:?}");
        assert!(q.longest_leaderless < LEADERLESS_BOUND, "{q:?}");
        // A killed old server is the one voter the fault may take; the rollout takes none.
        let floor = n - usize::from(old_killed.is_some());
        assert!(
            q.min_voters.unwrap_or(0) >= floor,
            "never fewer than {floor} voters: {q:?}"
        );
        if let Some(token) = acl {
            acl_checks(&rig, &client, token).await;
        }
        println!(
            "real rollout of {n} servers on Consul {version}, kill {kill:?}, ACLs {}: {took:.2?}; \
             leadership move: {lead}; quorum watch {q:?}",
            if acl.is_some() { "on" } else { "off" }
        );
        tree.shutdown().await;
    })
    .await;
}

/// After an ACL rollout: the agents really denied an anonymous read, every retired server
/// left gracefully (a `consul leave` without the token is refused, and the backend then
/// SIGTERMs: the leave log would say so), and the token is in no live agent's arguments, only
/// in owner-only config files.
async fn acl_checks(rig: &ProcessRig, client: &Client, token: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let anonymous = Client::new(ConsulConfig::with_address(client.address()).unwrap()).unwrap();
    let denied = anonymous
        .raft_configuration(&QueryOptions::default())
        .await
        .unwrap_err();
    assert_eq!(denied.status(), Some(403), "{denied}");
    let records = rig.cloud.records().unwrap();
    for r in records.iter().filter(|r| r.retired) {
        let log = rig.dir.join("machines").join(format!("{}.log", r.id));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains("Graceful leave complete"),
            "{} did not leave gracefully: {}",
            r.id,
            &text[text.len().saturating_sub(2000)..]
        );
        assert!(!text.contains("Permission denied"), "{text}");
    }
    let mut checked = 0;
    for r in records.iter().filter(|r| !r.retired) {
        let Some(pid) = r.pid else { continue };
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!argv.is_empty(), "agent {} (pid {pid}) is running", r.id);
        assert!(
            !String::from_utf8_lossy(&argv).contains(token),
            "the token is in {}'s arguments",
            r.id
        );
        let config = rig.dir.join("machines").join(&r.id).join("config");
        let mut holds_token = false;
        for f in std::fs::read_dir(&config).unwrap() {
            let f = f.unwrap();
            let mode = f.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.path().display());
            holds_token |= std::fs::read_to_string(f.path()).unwrap().contains(token);
        }
        assert!(holds_token, "{} has its ACL config", config.display());
        checked += 1;
    }
    assert!(checked >= 3, "{records:?}");
    println!("ACLs: anonymous read refused ({denied}); token in no argv of {checked} agents");
}

/// `process-cluster` without Consul: a stand-in agent (a script that sleeps) never elects a
/// leader, so the command starts 3 servers and the client agent, gives up after `--wait` naming
/// the logs, and `--stop` kills every one of them. Runs always: it is process management.
#[test]
fn process_cluster_starts_the_agents_names_a_missing_leader_and_stops_them_all() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!(
        "rehydrator-process-cluster-cli-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let agent = dir.join("consul");
    // Answers `version` as Consul 1.8.7 does (the backend asks before it starts an agent).
    std::fs::write(
        &agent,
        "#!/bin/sh\n[ \"$1\" = version ] && { echo '{\"Version\": \"1.8.7\"}'; exit 0; }\nsleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.join("data");
    // Whatever happens below, no stand-in outlives the test.
    let cloud = ProcessCloud::new(ProcessOptions {
        consul_bin: agent.clone(),
        data_dir: data.clone(),
        agent_hcl: Vec::new(),
        acl_token: None,
    })
    .unwrap();
    struct StopAll(ProcessCloud);
    impl Drop for StopAll {
        fn drop(&mut self) {
            let _ = self.0.stop_all();
        }
    }
    let _guard = StopAll(cloud.clone());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("process.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"laptop\"\n[consul]\naddress = \"http://127.0.0.1:{port}\"\n[cloud]\ntype = \"process\"\nconsul_bin = \"{}\"\ndata_dir = \"{}\"\n",
            agent.display(),
            data.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rehydrator"))
            .arg("process-cluster")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };

    let out = run(&["--servers", "3", "--wait", "1s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no leader with 3 voters") && stderr.contains("machines"),
        "{stderr}"
    );
    let records = cloud.records().unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records.iter().all(|r| cloud.is_alive(r) && r.image == "a"));
    let client: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("client.json")).unwrap()).unwrap();
    assert_eq!(
        client["ports"]["http"], port,
        "the client agent listens on consul.address"
    );

    // A second start over the running servers is refused rather than a second cluster.
    let out = run(&["--wait", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("still run"));

    let out = run(&["--stop"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("Stopped 4 agent(s)"), "{stdout}");
    assert!(records
        .iter()
        .all(|r| !rehydrator::cloud::process::pid_runs(r.pid.unwrap(), &r.id)));
    assert!(cloud.live_machines().unwrap().is_empty());

    // A configuration of another cloud is bad input: exit 2, naming the field.
    let sim = dir.join("sim.toml");
    std::fs::write(&sim, "[cluster]\nname = \"x\"\n[cloud]\ntype = \"sim\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .args(["process-cluster", "--config"])
        .arg(&sim)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cloud.type"));
    let _ = std::fs::remove_dir_all(&dir);
}
