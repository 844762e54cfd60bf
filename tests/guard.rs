//! The lifecycle guard on the simulated Auto Scaling group: a replica runs the
//! `lifecycle-guard` action on a 1 s timer against the simulator, whose group has
//! `rehydrator-*` lifecycle hooks, while the group replaces servers on its own. Each scenario
//! checks the simulator's invariants: quorum never lost, failure tolerance never below the
//! baseline, the leader never terminated while it led, and every server a voter at the end.
//!
//! The killed-replica scenario runs two `rehydrator run` processes and SIGKILLs one; the others
//! run the guard in-process.
//!
//! The same scenarios without the guard are the simulator's own tests
//! (`sim/tests/group_http.rs`), which show what an unguarded refresh breaks.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::replica::Replica;
use crate::common::rig::Rig;
use rehydrator::cloud::SimCloud;
use rehydrator_actors::guard::{self, baseline};
use rehydrator_actors::notify::Notifier;
use rehydrator_actors::ports::{CloudPort, Fence};
use rehydrator_actors::receipt::{Keys, Outcome};
use rehydrator_actors::rollout::RolloutEnv;
use rehydrator_actors::tree::{self, Tree};
use serde_json::{json, Value};

const TEST_BOUND: Duration = Duration::from_secs(150);
const WAIT_BOUND: Duration = Duration::from_secs(90);
const CLUSTER: &str = "guarded";

/// A replica that runs only the guard, every second, on the simulator's cloud.
fn guard_config(rig: &Rig, desired: usize) -> rehydrator_config::Settings {
    let text = format!(
        r#"[cluster]
name = "{CLUSTER}"
desired_servers = {desired}
[consul]
address = "{url}"
[cloud]
type = "sim"
[lock]
session_ttl = "10s"
lock_delay = "1s"
[status]
listen = ""
[action.guard]
type = "lifecycle-guard"
[[watch]]
name = "guard"
type = "schedule"
every = "1s"
action = "guard"
"#,
        url = rig.sim.url()
    );
    let path = rig.dir.join(format!("guard-{desired}.toml"));
    std::fs::write(&path, text).unwrap();
    rehydrator_config::load_with_env(&path, &Default::default()).unwrap()
}

fn start_guard(rig: &Rig, desired: usize, replica: &str) -> Tree {
    let cloud: Rc<dyn CloudPort> = Rc::new(SimCloud::new(&rig.sim.url()).unwrap());
    tree::start(&guard_config(rig, desired), replica, rig.ports(cloud))
}

/// The hooks a guarded group has: a launch and a termination wait, each long enough that only
/// the guard (or a missing heartbeat) ends it.
fn hooks() -> Value {
    json!([
        {"name": "rehydrator-launching", "transition": "launching",
         "heartbeat_timeout_ms": 60_000, "default_result": "ABANDON"},
        {"name": "rehydrator-terminating", "transition": "terminating",
         "heartbeat_timeout_ms": 60_000, "default_result": "CONTINUE"},
    ])
}

async fn until<T, F, Fut>(rig: &Rig, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < WAIT_BOUND,
            "{what} did not happen within {WAIT_BOUND:?}: group {:#}\nservers {:#?}",
            rig.json("/sim/group").await,
            rig.servers().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn members(g: &Value) -> Vec<Value> {
    g["members"].as_array().cloned().unwrap_or_default()
}

/// The group's members all on `image`, `n` of them in service, and every live server a voter.
async fn settled(rig: &Rig, image: &str, n: usize) -> bool {
    let g = rig.json("/sim/group").await;
    let m = members(&g);
    let grouped = m.len() == n
        && m.iter()
            .all(|m| m["image"] == image && m["lifecycle"] == "InService")
        && g["refresh"].is_null();
    let servers = rig.servers().await;
    let live: Vec<&Value> = servers
        .iter()
        .filter(|s| s["machine"] != "terminated")
        .collect();
    grouped
        && live.len() == n
        && live
            .iter()
            .all(|s| s["voter"] == true && s["healthy"] == true)
}

/// The invariants a guarded replacement keeps with `n` servers at the end.
fn assert_guarded(inv: &Value, n: usize, scenario: &str) {
    let at_least = baseline(n) as u64;
    assert_eq!(inv["quorum_lost_count"], 0, "{scenario}: {inv}");
    assert_eq!(
        inv["leader_retired"], 0,
        "{scenario}: the leader went last and not leading: {inv}"
    );
    assert!(
        inv["min_failure_tolerance"].as_u64().unwrap() >= at_least,
        "{scenario}: failure tolerance went below the baseline {at_least}: {inv}"
    );
    assert!(
        inv["min_voters"].as_u64().unwrap() >= n as u64,
        "{scenario}: {inv}"
    );
    println!("{scenario}: {inv}");
}

async fn group(rig: &Rig, extra: Value) {
    let mut body = json!({"hooks": hooks()});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    rig.send("POST", "/sim/group", Some(body)).await;
    rig.send("POST", "/sim/invariants/reset", Some(json!({})))
        .await;
}

#[actix_rt::test]
async fn an_instance_refresh_rolls_five_servers_safely_with_the_guard() {
    common::bounded_for(TEST_BOUND, async {
        let rig = Rig::new("guard-refresh", 5);
        rig.register_image("image-b", false).await;
        group(&rig, json!({"max": 6})).await;
        let guard = start_guard(&rig, 5, "replica-1");
        let started = Instant::now();
        rig.send("PUT", "/sim/group", Some(json!({"image": "image-b"})))
            .await;
        rig.send(
            "POST",
            "/sim/group/refresh",
            Some(json!({"min_healthy_percentage": 100, "max_healthy_percentage": 120})),
        )
        .await;
        until(&rig, "the refresh to finish", || async {
            settled(&rig, "image-b", 5).await.then_some(())
        })
        .await;
        let inv = rig.json("/sim/invariants").await;
        assert_guarded(&inv, 5, "refresh of 5");
        println!("guarded refresh of 5 servers: {:.1?}", started.elapsed());
        let record = rig
            .json(&format!("/v1/kv/rehydrator/{CLUSTER}/guard?raw"))
            .await;
        assert!(
            record["at"].as_u64().is_some(),
            "the guard's record: {record}"
        );
        guard.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn zone_rebalancing_and_a_scale_in_keep_quorum_with_the_guard() {
    common::bounded_for(TEST_BOUND, async {
        let rig = Rig::new("guard-rebalance", 5);
        let names: Vec<String> = rig
            .servers()
            .await
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        // Three in one zone: AZRebalance launches into the others, then terminates from it.
        let placement: serde_json::Map<String, Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    json!(["zone-a", "zone-a", "zone-a", "zone-b", "zone-c"][i]),
                )
            })
            .collect();
        group(&rig, json!({"placement": placement, "max": 6})).await;
        let guard = start_guard(&rig, 5, "replica-1");
        until(&rig, "balanced zones", || async {
            let g = rig.json("/sim/group").await;
            let m = members(&g);
            let in_a = m.iter().filter(|m| m["zone"] == "zone-a").count();
            (m.len() == 5 && in_a == 2 && settled(&rig, "image-a", 5).await).then_some(())
        })
        .await;
        assert_guarded(&rig.json("/sim/invariants").await, 5, "AZ rebalance of 5");
        guard.shutdown().await;

        // A scale-in to four the configuration agrees with: the guard lets one go.
        rig.send("POST", "/sim/invariants/reset", Some(json!({})))
            .await;
        let guard = start_guard(&rig, 4, "replica-1");
        rig.send("PUT", "/sim/group", Some(json!({"desired": 4, "min": 4})))
            .await;
        until(&rig, "the scale-in", || async {
            settled(&rig, "image-a", 4).await.then_some(())
        })
        .await;
        assert_guarded(&rig.json("/sim/invariants").await, 4, "scale-in to 4");
        guard.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn a_dead_server_is_replaced_and_a_scale_in_below_the_configured_size_is_held() {
    common::bounded_for(TEST_BOUND, async {
        let rig = Rig::new("guard-health", 3);
        group(&rig, json!({})).await;
        let guard = start_guard(&rig, 3, "replica-1");
        let victim = rig.servers().await[2]["name"].as_str().unwrap().to_owned();
        // Its agent dies; a health check marks the instance unhealthy: the guard lets a dead
        // server go at once, and the group's replacement joins.
        rig.send("POST", &format!("/sim/servers/{victim}/kill"), None)
            .await;
        rig.send(
            "POST",
            "/sim/group/unhealthy",
            Some(json!({"instance": victim})),
        )
        .await;
        until(&rig, "the replacement", || async {
            let gone = rig.json(&format!("/sim/servers/{victim}")).await["machine"] == "terminated";
            (gone && settled(&rig, "image-a", 3).await).then_some(())
        })
        .await;
        let inv = rig.json("/sim/invariants").await;
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
        assert_eq!(inv["leader_retired"], 0, "{inv}");

        // A scale-in to two the configuration does not agree with: held, with the reason.
        rig.send("POST", "/sim/invariants/reset", Some(json!({})))
            .await;
        rig.send("PUT", "/sim/group", Some(json!({"desired": 2, "min": 2})))
            .await;
        let reason = until(&rig, "the guard holding the scale-in", || async {
            let (status, body) = rig
                .send_raw(
                    "GET",
                    &format!("/v1/kv/rehydrator/{CLUSTER}/guard?raw"),
                    None,
                )
                .await;
            let record: Value = serde_json::from_slice(&body).ok()?;
            let held = record["held"].as_array()?.first()?.clone();
            (status == 200).then(|| held[1].as_str().unwrap_or_default().to_owned())
        })
        .await;
        assert!(reason.contains("below 1"), "{reason}");
        // `rehydrator status` says the same, as an operator reads it.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rehydrator"))
            .args(["status", "--config"])
            .arg(rig.dir.join("guard-3.toml"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("lifecycle guard (") && text.contains(&reason),
            "{text}"
        );
        let g = rig.json("/sim/group").await;
        assert_eq!(
            members(&g)
                .iter()
                .filter(|m| m["lifecycle"] == "Terminating:Wait")
                .count(),
            1,
            "{g}"
        );
        let min_voters = rig.json("/sim/invariants").await["min_voters"]
            .as_u64()
            .unwrap();
        assert!(
            min_voters >= 3,
            "voters never below 3 while held: {min_voters}"
        );
        guard.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn a_replica_killed_while_it_holds_a_server_is_taken_over() {
    common::bounded_for(TEST_BOUND, async {
        let rig = Rig::new("guard-takeover", 3);
        rig.register_image("image-b", false).await;
        group(&rig, json!({})).await;
        // Two replica processes, as in production: either may be the one heartbeating the
        // held server (or running the guard, holding the step lock) when the other dies.
        // Written (and checked) by guard_config; the processes read the file.
        guard_config(&rig, 3);
        let config = rig.dir.join("guard-3.toml");
        let first = Replica::spawn(&rig.dir, &config, "replica-1");
        let _second = Replica::spawn(&rig.dir, &config, "replica-2");
        rig.send("PUT", "/sim/group", Some(json!({"image": "image-b"})))
            .await;
        rig.send(
            "POST",
            "/sim/group/refresh",
            Some(json!({"min_healthy_percentage": 100, "max_healthy_percentage": 150})),
        )
        .await;
        until(&rig, "a server held in Terminating:Wait", || async {
            let g = rig.json("/sim/group").await;
            members(&g)
                .iter()
                .any(|m| m["lifecycle"] == "Terminating:Wait")
                .then_some(())
        })
        .await;
        // SIGKILL: no session destroyed, no lock released; if it held the step lock, the other
        // waits out its session (up to 2 x TTL) and the lock-delay, within the hook's timeout.
        first.kill_group();
        let killed = Instant::now();
        until(&rig, "the refresh to finish", || async {
            settled(&rig, "image-b", 3).await.then_some(())
        })
        .await;
        println!("refresh finished {:.1?} after the kill", killed.elapsed());
        assert_guarded(
            &rig.json("/sim/invariants").await,
            3,
            "refresh with a killed replica",
        );
    })
    .await;
}

/// A guard run by a replica that lost the step lock (frozen past its session, say, while
/// another replica took over) changes nothing: before each release or leadership move it
/// writes its record under the lock, and that write is refused. Under the lock, the same
/// waiting server is let go.
#[actix_rt::test]
async fn a_guard_run_without_its_lock_releases_nothing() {
    common::bounded_for(TEST_BOUND, async {
        let rig = Rig::new("guard-fence", 3);
        group(&rig, json!({})).await;
        // The configuration agrees with a scale-in to two: the guard would let one go.
        let settings = guard_config(&rig, 2);
        rig.send("PUT", "/sim/group", Some(json!({"desired": 2, "min": 2})))
            .await;
        let waiting = || async {
            members(&rig.json("/sim/group").await)
                .iter()
                .filter(|m| m["lifecycle"] == "Terminating:Wait")
                .count()
        };
        until(&rig, "a server in Terminating:Wait", || async {
            (waiting().await == 1).then_some(())
        })
        .await;
        let ports = rig.sim_ports();
        let keys = Keys::new(CLUSTER);
        let env = RolloutEnv {
            consul: ports.consul.clone(),
            cloud: ports.cloud.clone().unwrap(),
            keys: keys.clone(),
            config: tree::rollout_config(&settings),
            notifier: Notifier::off(ports.webhook.clone()),
            gates: Vec::new(),
            objects: None,
        };
        // A live session that does not hold the step lock: the stale replica's view.
        let session = rig
            .send("PUT", "/v1/session/create", Some(json!({"Name": "stale"})))
            .await["ID"]
            .as_str()
            .unwrap()
            .to_owned();
        let fence = Fence {
            lock: keys.lock("step"),
            session: session.clone(),
        };
        let leader = rig.json("/v1/status/leader").await;
        let refused = guard::run(&env, &fence).await.unwrap_err().to_string();
        assert!(refused.contains("no longer holds"), "{refused}");
        assert_eq!(waiting().await, 1, "the server is still held");
        assert_eq!(
            rig.json("/v1/status/leader").await,
            leader,
            "no leadership move"
        );
        let (status, _) = rig
            .send_raw("GET", &format!("/v1/kv/{}", keys.guard()), None)
            .await;
        assert_eq!(status, 404, "nothing recorded");

        // The same session takes the lock: the run goes ahead (moving leadership first if the
        // waiting server leads, then letting it go on a later run).
        let took = rig
            .send(
                "PUT",
                &format!("/v1/kv/{}?acquire={session}", fence.lock),
                Some(json!("replica")),
            )
            .await;
        assert_eq!(took, json!(true));
        let released = until(
            &rig,
            "a run under the lock to release the server",
            || async {
                match guard::run(&env, &fence).await {
                    Ok(Outcome::Succeeded(what)) => Some(what),
                    _ => None,
                }
            },
        )
        .await;
        assert!(released.starts_with("released "), "{released}");
        until(&rig, "the scale-in", || async {
            settled(&rig, "image-a", 2).await.then_some(())
        })
        .await;
        assert_eq!(rig.json("/sim/invariants").await["quorum_lost_count"], 0);
    })
    .await;
}
