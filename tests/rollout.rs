//! The rollout end to end on the simulator: 3 and 5 servers on image A, image B registered,
//! `consul-rehydrate` fired, and one replica's SpinUp/SpinDown replace every server. Checked
//! against the simulator's own record: every server ends on B, exactly N launches and N
//! retirements, quorum never lost, never more than one voter missing, never more than N+1
//! machines, and the leader never retired while leading. Also: a new server that never gets
//! healthy stops the rollout with the old servers kept and the reason recorded.
//!
//! The simulator's cluster constants are shrunk (boot, stabilization, election) instead of
//! scaling its clock, so the replica's session keeps Consul's real TTL rules.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::common::rig::{BOOT, STABILIZATION};
use aws_sdk_cloudwatch::types::{ComparisonOperator, StateValue, Statistic};
use base64::Engine;
use rehydrator::gate::cloudwatch::CloudWatchGate;
use rehydrator::gate::prometheus::PrometheusGate;
use rehydrator_actors::plan::{Rollout, RolloutState};
use rehydrator_actors::ports::GatePort;
use rehydrator_actors::tree::{self, Tree};
use rehydrator_config::AlarmPattern;
use serde_json::{json, Value};

/// How long a whole rollout may take here.
const ROLLOUT_BOUND: Duration = Duration::from_secs(50);

/// The shared rig: a fast simulator, an HTTP client, a scratch directory.
struct Rig(common::rig::Rig);

impl std::ops::Deref for Rig {
    type Target = common::rig::Rig;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Rig {
    fn new(name: &str, servers: usize) -> Self {
        Self(common::rig::Rig::new(&format!("rollout-{name}"), servers))
    }

    fn start(&self, desired: usize, stable_timeout: &str) -> Tree {
        self.start_with(desired, &format!("stable_timeout = \"{stable_timeout}\""))
    }

    /// Starts one replica; `rollout` is the body of its `[rollout]` section.
    fn start_with(&self, desired: usize, rollout: &str) -> Tree {
        self.start_gated(desired, rollout, Vec::new())
    }

    /// As `start_with`, with `gates` beside the Prometheus gate the section may configure.
    fn start_gated(&self, desired: usize, rollout: &str, gates: Vec<Rc<dyn GatePort>>) -> Tree {
        let text =
            common::rollout::config("roll", desired, &self.sim.url(), "type = \"sim\"", rollout);
        let path = self.dir.join("rehydrator.toml");
        std::fs::write(&path, text).unwrap();
        let settings = rehydrator_config::load_with_env(&path, &HashMap::new()).unwrap();
        let mut ports = self.sim_ports();
        ports.gates = settings
            .rollout
            .prometheus_gate
            .iter()
            .map(|p| Rc::new(PrometheusGate::new(p)) as Rc<dyn GatePort>)
            .chain(gates)
            .collect();
        tree::start(&settings, "replica-1", ports)
    }

    /// Fires `consul-rehydrate` once the replica's event and catalog watches have taken their
    /// baselines and parked: an event already in the buffer at a first start is not replayed.
    async fn fire_rehydrate(&self) {
        let start = Instant::now();
        while self.send("GET", "/sim/stats", None).await["parked"]
            .as_u64()
            .unwrap_or(0)
            < 2
        {
            assert!(
                start.elapsed() < ROLLOUT_BOUND,
                "the replica's watches never parked"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.send("PUT", "/v1/event/fire/consul-rehydrate", None)
            .await;
    }

    async fn rollout(&self) -> Option<Rollout> {
        let mut resp = self
            .http
            .get(format!(
                "{}/v1/kv/rehydrator/roll/rollout?raw",
                self.sim.url()
            ))
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            return None;
        }
        serde_json::from_slice(&resp.body().await.unwrap()).ok()
    }

    /// Polls the rollout record until `done` holds for it.
    async fn until(&self, what: &str, done: impl Fn(&Rollout) -> bool) -> Rollout {
        let start = Instant::now();
        loop {
            if let Some(r) = self.rollout().await {
                if done(&r) {
                    return r;
                }
            }
            assert!(
                start.elapsed() < ROLLOUT_BOUND,
                "{what} did not happen within {ROLLOUT_BOUND:?}: {:?}",
                self.rollout().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the rollout is recorded as completed.
    async fn until_completed(&self) -> Rollout {
        self.until("the rollout completing", |r| {
            matches!(r.state, RolloutState::Completed { .. })
        })
        .await
    }

    /// Waits until the rollout is stopped: the record and why it stopped.
    async fn until_stopped(&self) -> (Rollout, String) {
        let r = self
            .until("the rollout stopping", |r| {
                matches!(r.state, RolloutState::Stopped { .. })
            })
            .await;
        let RolloutState::Stopped { reason, .. } = &r.state else {
            unreachable!()
        };
        let reason = reason.clone();
        (r, reason)
    }

    /// A stopped rollout kept the old servers: the three on image-a still running voters, and
    /// quorum never lost.
    async fn assert_old_servers_kept(&self) {
        let servers = self.servers().await;
        let old_voters = servers
            .iter()
            .filter(|s| s["image"] == "image-a" && s["voter"] == true && s["machine"] == "running")
            .count();
        assert_eq!(old_voters, 3, "the old servers stay: {servers:#?}");
        let inv = self.invariants().await;
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
    }

    async fn invariants(&self) -> Value {
        self.send("GET", "/sim/invariants", None).await
    }
}

async fn full_rollout(n: usize) {
    let rig = Rig::new(&format!("full{n}"), n);
    let tree = rig.start(n, "1m");
    rig.register_image("image-b", false).await;
    let started = Instant::now();
    rig.fire_rehydrate().await;
    let r = rig.until_completed().await;
    let took = started.elapsed();

    assert_eq!(r.target_image, "image-b");
    let servers = rig.servers().await;
    let live: Vec<&Value> = servers
        .iter()
        .filter(|s| s["machine"] != "terminated")
        .collect();
    let terminated = servers
        .iter()
        .filter(|s| s["machine"] == "terminated")
        .count();
    let launched = servers.iter().filter(|s| !s["token"].is_null()).count();
    assert_eq!(live.len(), n, "{servers:#?}");
    assert!(
        live.iter()
            .all(|s| s["image"] == "image-b" && s["voter"] == true),
        "{servers:#?}"
    );
    assert_eq!(launched, n, "exactly N launches");
    assert_eq!(terminated, n, "exactly N retirements");
    assert_eq!((r.launches.len(), r.retirements.len()), (n, n));

    common::rollout::assert_clean(&rig.invariants().await, n);

    // What a rollout cannot avoid per server: the boot, the stabilization before promotion,
    // the leave; everything else is orchestration overhead.
    let unavoidable = (BOOT + STABILIZATION) * n as u32;
    let overhead = took.saturating_sub(unavoidable) / n as u32;
    println!(
        "rollout of {n} servers: {took:.2?}; unavoidable waits {unavoidable:.2?}; overhead {overhead:.2?} per server; record {} bytes",
        r.bounded_json().unwrap().len()
    );
    tree.shutdown().await;
}

#[actix_rt::test]
async fn three_servers_roll_onto_the_new_image_one_at_a_time() {
    common::bounded(full_rollout(3)).await;
}

#[actix_rt::test]
async fn five_servers_roll_onto_the_new_image_one_at_a_time() {
    common::bounded(full_rollout(5)).await;
}

#[actix_rt::test]
async fn a_new_server_that_never_gets_healthy_stops_the_rollout_and_keeps_the_old_ones() {
    common::bounded(async {
        let rig = Rig::new("broken", 3);
        let tree = rig.start(3, "3s");
        rig.register_image("image-broken", true).await;
        rig.fire_rehydrate().await;
        let (r, reason) = rig.until_stopped().await;
        let reason = reason.as_str();
        assert!(
            reason.contains("did not become a healthy voter"),
            "{reason}"
        );
        assert_eq!(r.launches.len(), 1, "one launch, no second try");
        assert!(r.retirements.is_empty(), "no old server retired");
        rig.assert_old_servers_kept().await;
        tree.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn a_stable_timeout_no_longer_than_autopilots_stabilization_keeps_the_rollout_from_starting()
{
    common::bounded(async {
        let rig = Rig::new("short-stable", 3);
        // The simulator's ServerStabilizationTime is STABILIZATION (1s): a new server could
        // not become a voter within a 1s stable_timeout.
        let tree = rig.start(3, &format!("{}ms", STABILIZATION.as_millis()));
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        let receipt = common::eventually(
            "the spin-up job's receipt",
            ROLLOUT_BOUND,
            || async {
                let (status, body) = rig
                    .send_raw("GET", "/v1/kv/rehydrator/roll/receipts/spin-up/?recurse", None)
                    .await;
                let list: Value = (status == 200).then(|| serde_json::from_slice(&body).ok())??;
                // The event's job, not the timer's (which only waits for the event).
                list.as_array()?.iter().find_map(|e| {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(e.get("Value")?.as_str()?)
                        .ok()?;
                    let receipt: Value = serde_json::from_slice(&raw).ok()?;
                    (receipt["watch"] == "rehydrate").then(|| receipt.to_string())
                })
            },
        )
        .await;
        assert!(
            receipt.contains("rollout.stable_timeout (1s) is not longer than the cluster's autopilot ServerStabilizationTime (1s)"),
            "{receipt}"
        );
        assert!(rig.rollout().await.is_none(), "no rollout was recorded");
        assert_eq!(rig.servers().await.len(), 3, "nothing was launched");
        tree.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn an_old_server_dying_mid_rollout_pauses_it_until_health_returns() {
    common::bounded(async {
        let rig = Rig::new("dies", 3);
        let tree = rig.start(3, "1m");
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        rig.until("the first launch", |r| !r.launches.is_empty())
            .await;

        // An old follower that is not the next to go dies.
        let servers = rig.servers().await;
        let victim = servers
            .iter()
            .filter(|s| {
                s["image"] == "image-a" && s["machine"] == "running" && s["leader"] == false
            })
            .max_by_key(|s| s["launched_at"].as_u64())
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .unwrap();
        rig.send("POST", &format!("/sim/servers/{victim}/kill"), None)
            .await;
        let paused = rig
            .until("the rollout waiting on health", |r| {
                r.waiting
                    .as_deref()
                    .is_some_and(|w| w.contains("unhealthy"))
            })
            .await;
        let retired_while_down = paused.retirements.len();

        // Health returns: the rollout resumes and completes.
        rig.send("POST", &format!("/sim/servers/{victim}/restart"), None)
            .await;
        let r = rig.until_completed().await;
        assert!(
            r.retirements.len() > retired_while_down,
            "it resumed after health returned"
        );
        let inv = rig.invariants().await;
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
        assert!(
            inv["max_voters_missing"].as_u64().unwrap() <= 1,
            "no step while a voter was missing: {inv}"
        );
        assert_eq!(inv["leader_retired"], 0, "{inv}");
        let live: Vec<Value> = rig
            .servers()
            .await
            .into_iter()
            .filter(|s| s["machine"] != "terminated")
            .collect();
        assert_eq!(live.len(), 3);
        assert!(live.iter().all(|s| s["image"] == "image-b"), "{live:#?}");
        tree.shutdown().await;
    })
    .await;
}

/// A server image without Consul's `leave_on_terminate` (the default for servers): each
/// retired server's agent dies with its machine instead of leaving, and stays a failed voter.
/// With CleanupDeadServers off autopilot never prunes it, so each step would wait on it for
/// ever; the rollout force-leaves the server it retired itself, and completes.
#[actix_rt::test]
async fn servers_that_die_instead_of_leaving_are_force_left_by_the_rollout_that_retired_them() {
    common::bounded(async {
        let rig = Rig::new("no-leave", 3);
        rig.send(
            "PUT",
            "/sim/config",
            Some(json!({"leave_on_terminate": false})),
        )
        .await;
        rig.send(
            "PUT",
            "/v1/operator/autopilot/configuration",
            Some(json!({"CleanupDeadServers": false})),
        )
        .await;
        let tree = rig.start(3, "1m");
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        let r = rig.until_completed().await;
        assert_eq!((r.launches.len(), r.retirements.len()), (3, 3), "{r:#?}");
        let servers = rig.servers().await;
        let retired: Vec<&Value> = servers
            .iter()
            .filter(|s| s["machine"] == "terminated")
            .collect();
        assert_eq!(retired.len(), 3, "{servers:#?}");
        // Killed, not left, by the termination; left, and out of Raft, by the force-leave.
        assert!(
            retired
                .iter()
                .all(|s| s["serf"] == "left" && s["in_raft"] == false),
            "{retired:#?}"
        );
        let inv = rig.invariants().await;
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
        assert!(inv["max_voters_missing"].as_u64().unwrap() <= 1, "{inv}");
        assert_eq!(inv["leader_retired"], 0, "{inv}");
        tree.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn the_pause_key_holds_the_rollout_until_it_is_removed() {
    common::bounded(async {
        let rig = Rig::new("pause", 3);
        rig.send(
            "PUT",
            "/v1/kv/rehydrator/roll/pause",
            Some(json!("maintenance")),
        )
        .await;
        let tree = rig.start(3, "1m");
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        let held = rig
            .until("the rollout saying it is paused", |r| {
                r.waiting.as_deref().is_some_and(|w| w.contains("paused"))
            })
            .await;
        assert!(held.launches.is_empty(), "no step while paused: {held:?}");
        let resp = rig
            .http
            .delete(format!("{}/v1/kv/rehydrator/roll/pause", rig.sim.url()))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        rig.until_completed().await;
        tree.shutdown().await;
    })
    .await;
}

/// With `rollout.bake_time`, an old server goes only once the new one has been healthy that
/// long: the rollout says it is baking, and each retirement comes at least the bake time
/// after its launch (without it, boot + stabilization: 1.3 s here).
#[actix_rt::test]
async fn a_bake_time_holds_each_retirement_until_the_new_server_has_baked() {
    common::bounded(async {
        const BAKE_MS: u64 = 3000;
        let rig = Rig::new("bake", 3);
        let tree = rig.start_with(3, "stable_timeout = \"1m\"\nbake_time = \"3s\"");
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        let baking = rig
            .until("the rollout saying it bakes", |r| {
                r.waiting
                    .as_deref()
                    .is_some_and(|w| w.starts_with("baking: "))
            })
            .await;
        assert!(baking.retirements.is_empty(), "{baking:?}");
        let r = rig.until_completed().await;
        // The record's launch time is when the launch returned, a little after the machine
        // started: the bake, counted from the server's health, may end up to that much sooner.
        const RECORD_LAG_MS: u64 = 250;
        for (launch, retire) in r.launches.iter().zip(&r.retirements) {
            assert!(
                retire.at.saturating_sub(launch.at) >= BAKE_MS - RECORD_LAG_MS,
                "{} retired {} ms after {} launched",
                retire.machine,
                retire.at.saturating_sub(launch.at),
                launch.machine
            );
        }
        common::rollout::assert_clean(&rig.invariants().await, 3);
        tree.shutdown().await;
    })
    .await;
}

/// With `rollout.snapshot_dir`: a snapshot before the first launch and before each
/// retirement, named in the record; the directory keeps `snapshots_kept` of them. A snapshot
/// that cannot be written holds the step, saying why, until it can.
#[actix_rt::test]
async fn snapshots_are_taken_before_the_first_step_and_each_retirement() {
    common::bounded(async {
        let rig = Rig::new("snapshots", 3);
        let dir = rig.dir.join("snapshots");
        // A file where the directory should be: no snapshot can be written yet.
        std::fs::write(&dir, b"in the way").unwrap();
        let tree = rig.start_with(
            3,
            &format!(
                "stable_timeout = \"1m\"\nsnapshot_dir = \"{}\"\nsnapshots_kept = 3",
                dir.display()
            ),
        );
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        let held = rig
            .until("the rollout waiting for a snapshot", |r| {
                r.waiting
                    .as_deref()
                    .is_some_and(|w| w.contains("the step waits for a snapshot"))
            })
            .await;
        assert!(
            held.launches.is_empty(),
            "no step without a snapshot: {held:?}"
        );
        assert!(
            held.waiting
                .as_deref()
                .unwrap()
                .contains("snapshot directory"),
            "{held:?}"
        );
        std::fs::remove_file(&dir).unwrap();
        let r = rig.until_completed().await;
        let steps: Vec<String> = r
            .snapshots
            .iter()
            .map(|n| n.split('-').nth(2).unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            steps,
            ["start", "retire", "retire", "retire"],
            "{:?}",
            r.snapshots
        );
        assert!(r
            .snapshots
            .iter()
            .all(|n| n.starts_with(&format!("roll-{}-", r.id))));
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut newest: Vec<String> = r.snapshots[1..].to_vec();
        newest.sort();
        assert_eq!(files, newest, "the three newest are kept");
        let archive: Value =
            serde_json::from_slice(&std::fs::read(dir.join(&r.snapshots[3])).unwrap()).unwrap();
        assert!(
            archive["KV"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["Key"] == "rehydrator/roll/rollout"),
            "the archive holds the rollout record: {archive}"
        );
        common::rollout::assert_clean(&rig.invariants().await, 3);
        tree.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn a_dry_run_records_the_step_it_would_take_and_takes_none() {
    common::bounded(async {
        let rig = Rig::new("dry", 3);
        let tree = rig.start_with(3, "dry_run = true");
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        // The spin-up job for the event ends with a receipt saying what it would have done.
        let events = rig
            .send("GET", "/v1/event/list?name=consul-rehydrate", None)
            .await;
        let id = events[0]["ID"].as_str().unwrap().to_owned();
        let key = format!("/v1/kv/rehydrator/roll/receipts/spin-up/{id}?raw");
        let start = Instant::now();
        let receipt = loop {
            let mut resp = rig
                .http
                .get(format!("{}{key}", rig.sim.url()))
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                break serde_json::from_slice::<Value>(&resp.body().await.unwrap()).unwrap();
            }
            assert!(
                start.elapsed() < ROLLOUT_BOUND,
                "no receipt for the dry run"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(receipt["outcome"]["kind"], "no_op", "{receipt}");
        let detail = receipt["outcome"]["detail"].as_str().unwrap();
        assert!(
            detail.contains("dry run: would Start") && detail.contains("image-b"),
            "{detail}"
        );
        assert!(rig.rollout().await.is_none(), "a dry run writes no rollout");
        let inv = rig.invariants().await;
        assert_eq!(inv["max_servers"], 3, "nothing launched: {inv}");
        tree.shutdown().await;
    })
    .await;
}

/// When, in its launch, the tests make a new server fail.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// The machine is booting: Consul has not started.
    Booting,
    /// Its agent has joined Raft as a non-voter; autopilot has not promoted it yet.
    Joined,
}

impl Moment {
    fn reached(self, server: &Value) -> bool {
        match self {
            Moment::Booting => server["machine"] == "booting",
            Moment::Joined => server["in_raft"] == true && server["voter"] == false,
        }
    }
}

/// The first new server of a rollout fails (its machine dies, as an EC2 instance can) at
/// `moment`: the failure is recorded once with the cloud's reason, the next launch has a token
/// of its own, and the rollout completes with one machine more than it replaced.
async fn a_new_server_failing(moment: Moment) {
    let rig = Rig::new(&format!("fail-{moment:?}"), 3);
    // Long enough for the test to see the new server in each moment of its launch.
    rig.send(
        "PUT",
        "/sim/config",
        Some(json!({"boot_delay_ms": 1500, "stabilization_ms": 2500})),
    )
    .await;
    let tree = rig.start(3, "1m");
    rig.register_image("image-b", false).await;
    rig.fire_rehydrate().await;
    let first = rig
        .until("the first launch", |r| !r.launches.is_empty())
        .await;
    let victim = first.launches[0].machine.clone();
    let start = Instant::now();
    loop {
        let s = rig.json(&format!("/sim/servers/{victim}")).await;
        if moment.reached(&s) {
            break;
        }
        assert!(
            start.elapsed() < ROLLOUT_BOUND,
            "{victim} never reached {moment:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.send("POST", &format!("/sim/servers/{victim}/fail"), None)
        .await;

    let r = rig.until_completed().await;
    assert_eq!(r.failed_launches.len(), 1, "{r:#?}");
    let failed = &r.failed_launches[0];
    assert_eq!(failed.machine, victim);
    assert_eq!(
        failed.reason.as_deref(),
        Some("Server.InternalError: Internal error on launch")
    );
    assert_eq!((r.launches.len(), r.retirements.len()), (3, 3), "{r:#?}");
    let mut recorded: Vec<&str> = r
        .launches
        .iter()
        .chain(&r.failed_launches)
        .map(|l| l.machine.as_str())
        .collect();
    recorded.sort_unstable();
    recorded.dedup();
    assert_eq!(recorded.len(), 4, "each machine recorded once: {r:#?}");

    let servers = rig.servers().await;
    let mut tokens: Vec<&str> = servers.iter().filter_map(|s| s["token"].as_str()).collect();
    assert_eq!(tokens.len(), 4, "three replacements and the failed one");
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        4,
        "every launch had its own token: {servers:#?}"
    );
    let live: Vec<&Value> = servers
        .iter()
        .filter(|s| s["machine"] != "terminated")
        .collect();
    assert_eq!(live.len(), 3, "{servers:#?}");
    assert!(
        live.iter()
            .all(|s| s["image"] == "image-b" && s["voter"] == true),
        "{servers:#?}"
    );
    common::rollout::assert_clean(&rig.invariants().await, 3);
    println!(
        "a new server failed while {moment:?}: rollout completed in {:.2?} after the failure",
        start.elapsed()
    );
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_new_server_that_fails_while_booting_is_launched_again_with_a_new_token() {
    common::bounded(a_new_server_failing(Moment::Booting)).await;
}

#[actix_rt::test]
async fn a_new_server_that_fails_after_joining_is_launched_again_with_a_new_token() {
    common::bounded(a_new_server_failing(Moment::Joined)).await;
}

#[actix_rt::test]
async fn an_image_that_never_boots_stops_the_rollout_after_its_launch_attempts() {
    common::bounded(async {
        let rig = Rig::new("noboot", 3);
        let tree = rig.start_with(3, "stable_timeout = \"1m\"\nlaunch_attempts = 2");
        let why = "Client.InvalidKernelId.Malformed: the image does not boot";
        rig.send(
            "POST",
            "/sim/images",
            Some(json!({"id": "image-bad", "boot_failure": why})),
        )
        .await;
        rig.fire_rehydrate().await;
        let (r, reason) = rig.until_stopped().await;
        let reason = reason.as_str();
        assert!(
            reason.starts_with("2 launches failed (rollout.launch_attempts = 2)")
                && reason.ends_with(why),
            "{reason}"
        );
        assert!(r.launches.is_empty() && r.retirements.is_empty(), "{r:#?}");
        assert_eq!(r.failed_launches.len(), 2, "{r:#?}");
        assert_ne!(r.failed_launches[0].machine, r.failed_launches[1].machine);

        // Two spin-up runs after the stop (the 1s timer): neither launches nor records more.
        let receipts = |rig: &Rig| {
            let url = format!(
                "{}/v1/kv/rehydrator/roll/receipts/spin-up/?keys",
                rig.sim.url()
            );
            let http = rig.http.clone();
            async move {
                let mut resp = http.get(url).send().await.unwrap();
                serde_json::from_slice::<Vec<String>>(&resp.body().await.unwrap())
                    .unwrap()
                    .len()
            }
        };
        let before = receipts(&rig).await;
        let start = Instant::now();
        while receipts(&rig).await < before + 2 {
            assert!(
                start.elapsed() < ROLLOUT_BOUND,
                "no spin-up run after the stop"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            rig.rollout().await.as_ref(),
            Some(&r),
            "the record is unchanged"
        );
        let servers = rig.servers().await;
        let launched: Vec<&Value> = servers.iter().filter(|s| !s["token"].is_null()).collect();
        assert_eq!(launched.len(), 2, "{servers:#?}");
        assert!(
            launched
                .iter()
                .all(|s| s["machine"] == "terminated" && s["reason"] == why),
            "{launched:#?}"
        );
        rig.assert_old_servers_kept().await;
        tree.shutdown().await;
    })
    .await;
}

/// A rollout whose target image does not exist (deregistered after the rollout started): the
/// cloud refuses each launch, each refusal is a failed attempt, and the rollout stops with the
/// cloud's reason instead of staying active forever.
#[actix_rt::test]
async fn a_target_image_that_does_not_exist_stops_the_rollout_after_its_attempts() {
    common::bounded(async {
        let rig = Rig::new("ghost", 3);
        let record = Rollout::start("r1".into(), "image-ghost", 1, 1);
        let (status, _) = rig
            .send_raw(
                "PUT",
                "/v1/kv/rehydrator/roll/rollout",
                Some(serde_json::to_value(&record).unwrap()),
            )
            .await;
        assert_eq!(status, 200);
        let tree = rig.start(3, "1m");
        let (r, reason) = rig.until_stopped().await;
        let reason = reason.as_str();
        assert!(
            reason.starts_with("3 launches failed (rollout.launch_attempts = 3)")
                && reason.contains("the cloud refused the launch")
                && reason.contains("image-ghost"),
            "{reason}"
        );
        assert_eq!(r.failed_launches.len(), 3, "{r:#?}");
        assert!(r.launches.is_empty() && r.retirements.is_empty());
        let servers = rig.servers().await;
        assert_eq!(servers.len(), 3, "nothing launched: {servers:#?}");
        tree.shutdown().await;
    })
    .await;
}

/// The leader's retirement takes the path the servers allow, and the record says which:
/// transfer-leader where it exists and works; a graceful leave and an election on Consul before
/// 1.15 (404); and after two transfers that report success and move nothing (Consul's bug), a
/// leave too. Quorum is never lost on any path.
async fn leadership_path(version: &str, fault: &str, path: &str, transfers: u32) {
    let rig = Rig::new(&format!("lead-{version}-{fault}"), 3);
    rig.send(
        "PUT",
        "/sim/config",
        Some(json!({"consul_version": version, "transfer_fault": fault})),
    )
    .await;
    let tree = rig.start(3, "1m");
    rig.register_image("image-b", false).await;
    rig.fire_rehydrate().await;
    let r = rig.until_completed().await;
    assert_eq!(r.leader_moves.len(), 1, "one leader retired: {r:#?}");
    let m = &r.leader_moves[0];
    assert_eq!((m.path.as_str(), m.transfers), (path, transfers), "{m:?}");
    assert!(m.to.as_deref().is_some_and(|to| to != m.from), "{m:?}");
    let inv = rig.invariants().await;
    assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
    assert!(inv["max_voters_missing"].as_u64().unwrap() <= 1, "{inv}");
    // Only the leave path retires a server while it leads.
    let left_leading = u64::from(path == "leave");
    assert_eq!(inv["leader_retired"], left_leading, "{inv}");
    println!(
        "Consul {version}, transfer fault {fault}: path {path} after {transfers} transfer call(s), new leader seen after {} ms; leaderless {} ms in all",
        m.until_new_leader_ms, inv["leaderless_ms"]
    );
    tree.shutdown().await;
}

#[actix_rt::test]
async fn the_leader_moves_by_transfer_where_consul_has_it() {
    common::bounded(leadership_path("1.17.3", "none", "transfer", 1)).await;
}

#[actix_rt::test]
async fn the_leader_leaves_and_the_others_elect_on_consul_before_1_15() {
    common::bounded(leadership_path("1.8.7", "none", "leave", 0)).await;
}

#[actix_rt::test]
async fn a_transfer_that_reports_success_and_moves_nothing_is_retried_once_then_the_leader_leaves()
{
    common::bounded(leadership_path("1.17.3", "noop", "leave", 2)).await;
}

#[actix_rt::test]
async fn a_transfer_that_goes_elsewhere_still_moves_leadership_off_the_leader() {
    common::bounded(leadership_path("1.17.3", "elsewhere", "transfer", 1)).await;
}

/// `rehydrator abort <args> --cluster roll` against the rig's simulator, as an operator runs
/// it (waited for off this thread, which the simulator serves from): exit status and output.
async fn abort(rig: &Rig, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rehydrator"));
    cmd.arg("abort")
        .args(args)
        .args(["--cluster", "roll", "--timeout", "30s"])
        .env("CONSUL_HTTP_ADDR", rig.sim.url())
        .env("USER", "alice")
        .env_remove("CONSUL_HTTP_TOKEN");
    let out = actix_rt::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[actix_rt::test]
async fn an_abort_retires_the_new_server_that_never_joined_and_stops() {
    common::bounded(async {
        let rig = Rig::new("abort", 3);
        // A stable timeout long enough that only the abort ends this rollout.
        let tree = rig.start(3, "10m");
        rig.register_image("image-broken", true).await;
        rig.fire_rehydrate().await;
        rig.until("the broken server's launch", |r| r.launches.len() == 1)
            .await;

        let (code, out) = abort(&rig, &["--reason", "bad image"]).await;
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("Aborted rollout"), "{out}");
        let (r, reason) = rig.until_stopped().await;
        assert!(
            reason.starts_with("aborted by alice@") && reason.ends_with("(bad image)"),
            "{reason}"
        );
        assert_eq!(r.launches.len(), 1, "no launch after the abort");
        assert_eq!(r.retirements.len(), 1, "the new server retired: {r:?}");
        let servers = rig.servers().await;
        assert!(
            servers
                .iter()
                .filter(|s| s["image"] == "image-broken")
                .all(|s| s["machine"] == "terminated"),
            "{servers:#?}"
        );
        rig.assert_old_servers_kept().await;

        // Aborting what is no longer active says so and fails.
        let (code, out) = abort(&rig, &[]).await;
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("is not active"), "{out}");
        tree.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn abort_to_previous_rolls_every_server_back_under_the_same_rules() {
    common::bounded(async {
        let rig = Rig::new("rollback", 3);
        let tree = rig.start(3, "1m");
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        rig.until("one server replaced", |r| r.retired() == 1).await;

        // --to-previous reads the cloud: it needs the configuration.
        let config = rig.dir.join("rehydrator.toml");
        let (code, out) = abort(&rig, &["--to-previous"]).await;
        assert_eq!(code, Some(2), "without --config: {out}");
        let (code, out) = abort(
            &rig,
            &["--to-previous", "--config", config.to_str().unwrap()],
        )
        .await;
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("back from image-b to image-a"), "{out}");

        let r = rig
            .until("the rollback completing", |r| {
                r.target_image == "image-a" && matches!(r.state, RolloutState::Completed { .. })
            })
            .await;
        assert_eq!(r.rolled_back_from.as_deref(), Some("image-b"));
        let servers = rig.servers().await;
        let live: Vec<&Value> = servers
            .iter()
            .filter(|s| s["machine"] != "terminated")
            .collect();
        assert_eq!(live.len(), 3, "{servers:#?}");
        assert!(
            live.iter()
                .all(|s| s["image"] == "image-a" && s["voter"] == true),
            "{servers:#?}"
        );
        common::rollout::assert_clean(&rig.invariants().await, 3);
        tree.shutdown().await;
    })
    .await;
}

/// A real Prometheus (`PROMETHEUS_BIN`) on a free loopback port, scraping `target` every
/// second and evaluating `rules` and the shipped `deploy/prometheus-alerts.yml` every second.
/// Killed when dropped.
struct Prometheus {
    url: String,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    async fn start(bin: &std::path::Path, target: &str, rules: &str) -> Self {
        let dir = common::endpoint::scratch("prometheus");
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        let shipped =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus-alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n  - {}\n\
             scrape_configs:\n  - job_name: gate\n    static_configs:\n      - targets: ['{target}']\n",
            dir.join("rules.yml").display(),
            shipped.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = dir.join("prometheus.log");
        let mut p = Self {
            url: String::new(),
            child: std::process::Command::new("true").spawn().unwrap(),
            dir,
        };
        let http = awc::Client::default();
        // A free port is free when chosen, not when Prometheus binds it: started again on
        // another if it lost the port to another process.
        for attempt in 1..=3 {
            let port = common::moto::free_port();
            let out = std::fs::File::create(&log).unwrap();
            let _ = p.child.kill();
            let _ = p.child.wait();
            p.child = std::process::Command::new(bin)
                .arg(format!(
                    "--config.file={}",
                    p.dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    p.dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            p.url = format!("http://127.0.0.1:{port}");
            let ready = format!("{}/-/ready", p.url);
            let started = Instant::now();
            loop {
                if let Ok(resp) = http.get(&ready).send().await {
                    if resp.status() == 200 {
                        break;
                    }
                }
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if p.child.try_wait().unwrap().is_some() {
                    assert!(
                        attempt < 3 && text.contains("address already in use"),
                        "Prometheus exited: {text}"
                    );
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "Prometheus was not ready within 20s: {text}"
                );
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
            if p.child.try_wait().unwrap().is_none() {
                break;
            }
        }
        assert!(
            std::fs::read_to_string(&log).is_ok_and(|l| !l.contains("level=error")),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        p
    }

    /// The alerts firing now, by name.
    async fn firing(&self) -> Vec<String> {
        let url = format!(
            "{}/api/v1/query?query=ALERTS%7Balertstate%3D%22firing%22%7D",
            self.url
        );
        let Ok(mut resp) = awc::Client::default().get(url).send().await else {
            return Vec::new();
        };
        let body: Value = resp.json().await.unwrap_or_default();
        body["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|s| s["metric"]["alertname"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[actix_rt::test]
async fn a_firing_alert_in_prometheus_holds_every_step_until_it_resolves() {
    let Some(bin) = common::prometheus_bin() else {
        return;
    };
    common::bounded(async {
        use std::sync::atomic::{AtomicU8, Ordering};
        // What Prometheus scrapes: one gauge the test sets; the rule below fires on it.
        let hold = actix_web::web::Data::new(AtomicU8::new(1));
        let (target, server) = common::serve(
            "/metrics",
            actix_web::http::Method::GET,
            hold.clone(),
            |h: actix_web::web::Data<AtomicU8>| async move {
                format!(
                    "# TYPE gate_test_hold gauge\ngate_test_hold {}\n",
                    h.load(Ordering::SeqCst)
                )
            },
        );
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_owned();
        let rules =
            "groups:\n  - name: gate-test\n    rules:\n      - alert: HoldTheRollout\n        \
                     expr: gate_test_hold == 1\n";
        let prometheus = Prometheus::start(&bin, &target, rules).await;
        common::eventually(
            "HoldTheRollout to fire",
            Duration::from_secs(20),
            || async {
                prometheus
                    .firing()
                    .await
                    .contains(&"HoldTheRollout".to_owned())
                    .then_some(())
            },
        )
        .await;

        let rig = Rig::new("gate", 3);
        let tree = rig.start_with(
            3,
            &format!(
                "stable_timeout = \"1m\"\ngate_prometheus_url = \"{}\"",
                prometheus.url
            ),
        );
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        let r = rig
            .until("the gate to hold the first launch", |r| {
                r.waiting.as_deref().is_some_and(|w| {
                    w.contains("health gate prometheus is closed") && w.contains("HoldTheRollout")
                })
            })
            .await;
        assert!(
            r.launches.is_empty(),
            "launched through a closed gate: {r:?}"
        );

        // Resolved: Prometheus stops firing at its next evaluation, and the rollout goes on.
        hold.store(0, Ordering::SeqCst);
        let r = rig.until_completed().await;
        assert_eq!((r.launches.len(), r.retirements.len()), (3, 3));
        common::rollout::assert_clean(&rig.invariants().await, 3);
        tree.shutdown().await;
        server.stop(false).await;
    })
    .await;
}

/// An alarm `name` on moto's CloudWatch, set to `state` (a new one is INSUFFICIENT_DATA).
async fn alarm(cw: &aws_sdk_cloudwatch::Client, name: &str, state: StateValue) {
    cw.put_metric_alarm()
        .alarm_name(name)
        .namespace("Rehydrator/Test")
        .metric_name("hold")
        .statistic(Statistic::Maximum)
        .period(60)
        .evaluation_periods(1)
        .threshold(1.0)
        .comparison_operator(ComparisonOperator::GreaterThanOrEqualToThreshold)
        .send()
        .await
        .unwrap();
    cw.set_alarm_state()
        .alarm_name(name)
        .state_reason(format!("set by the test to {state:?}"))
        .state_value(state)
        .send()
        .await
        .unwrap();
}

/// The CloudWatch gate, against moto through the real SDK: a listed alarm in ALARM holds
/// every step and is named; an alarm the gate does not list changes nothing; once the alarm
/// is OK the rollout goes on and completes.
#[actix_rt::test]
async fn an_alarm_in_cloudwatch_holds_every_step_until_it_is_ok() {
    common::bounded_for(Duration::from_secs(120), async {
        let moto = common::moto::moto();
        let cw = common::moto::cloudwatch_client(&moto.url);
        alarm(&cw, "consul-raft-commit", StateValue::Alarm).await;
        alarm(&cw, "consul-leader-changes", StateValue::Ok).await;
        alarm(&cw, "unrelated-queue-depth", StateValue::Alarm).await;
        let patterns = [
            AlarmPattern::Prefix("consul-".into()),
            AlarmPattern::Name("api-5xx".into()),
        ];
        let gate = CloudWatchGate::load(
            &patterns,
            Some("us-east-1"),
            Some(&moto.url),
            Some(common::moto::credentials()),
        )
        .await
        .unwrap();

        let rig = Rig::new("cloudwatch-gate", 3);
        let tree = rig.start_gated(3, "stable_timeout = \"1m\"", vec![Rc::new(gate)]);
        rig.register_image("image-b", false).await;
        rig.fire_rehydrate().await;
        let r = rig
            .until("the gate to hold the first launch", |r| {
                r.waiting.as_deref().is_some_and(|w| {
                    w.contains("health gate cloudwatch is closed")
                        && w.contains("consul-raft-commit")
                })
            })
            .await;
        let waiting = r.waiting.clone().unwrap_or_default();
        assert!(
            !waiting.contains("unrelated") && !waiting.contains("consul-leader-changes"),
            "only listed alarms in ALARM close the gate: {waiting}"
        );
        assert!(
            r.launches.is_empty(),
            "launched through a closed gate: {r:?}"
        );

        alarm(&cw, "consul-raft-commit", StateValue::Ok).await;
        let r = rig.until_completed().await;
        assert_eq!((r.launches.len(), r.retirements.len()), (3, 3));
        common::rollout::assert_clean(&rig.invariants().await, 3);
        tree.shutdown().await;
    })
    .await;
}

/// A CloudWatch that cannot be reached closes the gate, saying so, without the credentials.
#[actix_rt::test]
async fn an_unreachable_cloudwatch_closes_the_gate() {
    common::bounded_for(Duration::from_secs(60), async {
        let port = common::moto::free_port();
        let gate = CloudWatchGate::load(
            &[AlarmPattern::Prefix("consul-".into())],
            Some("us-east-1"),
            Some(&format!("http://127.0.0.1:{port}")),
            Some(common::moto::credentials()),
        )
        .await
        .unwrap();
        let why = gate.closed().await.expect("closed");
        assert!(
            why.contains("CloudWatch could not be asked") && why.contains("unreachable"),
            "{why}"
        );
        assert!(
            !why.contains("testing"),
            "no credentials in the reason: {why}"
        );
    })
    .await;
}
