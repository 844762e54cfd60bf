//! The rollout with three replicas as operators run them: three `rehydrator run` processes (the
//! real binary, `[cloud] type = "sim"`) against one simulated Consul that is also their cloud.
//! Every replica sees `consul-rehydrate`, the catalog and the timer; the `step` lock that
//! SpinUp and SpinDown share makes one of them take each step.
//!
//! Checked against the simulator's own record, not what the replicas say: every live server
//! ends on the new image and votes, exactly N machines launched (distinct launch tokens, no two
//! live servers from one token) and N terminated, quorum never lost, never more than one voter
//! missing, never more than N+1 machines, and the leader never retired while leading.
//!
//! Then the same with the replica holding the `step` lock SIGKILLed (its whole process group,
//! as a container dies) at a point of the rollout picked by a seeded RNG: the others take over
//! once Consul ends the dead session (its liveness check expires, then lock-delay) and finish the rollout
//! with the same guarantees. A launch retried after the kill carries the same token, so it
//! finds the machine the dead replica launched instead of launching another.
//!
//! The simulator's cluster constants are shrunk (boot, stabilization, election) instead of
//! scaling its clock, so sessions keep Consul's real TTL rules.
#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::replica::Replica;
use crate::common::{bounded_for, eventually};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::rig::{BOOT, STABILIZATION};
use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rehydrator_sim::RunningSim;
use serde_json::{json, Value};

const CLUSTER: &str = "roll";
/// Servers in the cluster, and so launches and retirements in a rollout.
const SERVERS: usize = 3;
const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];
/// The replicas' liveness check: a dead replica's session ends this long after its last pass.
const CHECK_TTL: Duration = Duration::from_secs(common::rollout::CHECK_TTL_SECS);
const LOCK_DELAY: Duration = Duration::from_secs(common::rollout::LOCK_DELAY_SECS);

/// How long a rollout without failures may take (three processes on two cores).
const ROLLOUT_BOUND: Duration = Duration::from_secs(60);
/// A rollout with one holder killed (the dead session ends with its check: seconds).
const KILLED_ROLLOUT_BOUND: Duration = Duration::from_secs(100);
/// What the takeover may overshoot check TTL + lock-delay by on a loaded machine.
const SLACK: Duration = Duration::from_secs(10);
/// The bound on each test here.
const TEST_BOUND: Duration = Duration::from_secs(150);

/// One simulator, three replicas on it, and a scratch directory for their config and logs.
/// Field order is drop order: the replicas go before the simulator and the directory.
struct Rig {
    replicas: Vec<Replica>,
    sim: RunningSim,
    http: awc::Client,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for r in &self.replicas {
            r.kill_group();
        }
        // ROLLOUT_KEEP=1 keeps a failing test's configuration and logs for a look.
        if std::thread::panicking() && std::env::var_os("ROLLOUT_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Rig {
    fn new(tag: &str) -> Self {
        let sim = common::sim_with(common::rig::fast_sim(SERVERS));
        let url = sim.url();
        Self::on(sim, &url, tag)
    }

    /// A rig whose replicas reach the simulator through `proxy`'s address (`consul`).
    fn on(sim: RunningSim, consul: &str, tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "rehydrator-rollout-replicas-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("rehydrator.toml");
        std::fs::write(
            &config,
            common::rollout::config(
                CLUSTER,
                SERVERS,
                consul,
                "type = \"sim\"",
                "stable_timeout = \"1m\"",
            ),
        )
        .unwrap();
        let replicas = REPLICAS
            .iter()
            .map(|n| Replica::spawn(&dir, &config, n))
            .collect();
        Self {
            replicas,
            sim,
            http: awc::Client::default(),
            dir,
        }
    }

    /// Starts the three replicas again, as they were configured.
    fn respawn(&mut self) {
        let config = self.dir.join("rehydrator.toml");
        self.replicas = REPLICAS
            .iter()
            .map(|n| Replica::spawn(&self.dir, &config, n))
            .collect();
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        common::rig::send(&self.http, &self.sim.url(), method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A KV entry as `?raw` JSON; None while it does not exist.
    async fn kv_entry(&self, key: &str) -> Option<Value> {
        let mut resp = self
            .http
            .get(format!("{}/v1/kv/{key}", self.sim.url()))
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            return None;
        }
        assert_eq!(resp.status(), 200, "GET kv {key}");
        let list: Value = resp.json().limit(16 << 20).await.unwrap();
        Some(list[0].clone())
    }

    /// The rollout record, once one is written.
    async fn rollout(&self) -> Option<Value> {
        let entry = self
            .kv_entry(&format!("rehydrator/{CLUSTER}/rollout"))
            .await?;
        decode(&entry["Value"])
    }

    /// The `step` lock while a session holds it: (session, holder JSON).
    async fn step_lock(&self) -> Option<(String, Value)> {
        let entry = self
            .kv_entry(&format!("rehydrator/{CLUSTER}/locks/step"))
            .await?;
        let session = entry["Session"].as_str()?.to_owned();
        Some((session, decode(&entry["Value"]).unwrap_or(Value::Null)))
    }

    /// Live sessions by replica name (the session's name ends with it).
    async fn sessions(&self) -> HashMap<String, String> {
        self.send("GET", "/v1/session/list", None)
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let name = s["Name"].as_str().unwrap_or_default();
                let replica = name.rsplit(' ').next().unwrap_or_default().to_owned();
                (replica, s["ID"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    async fn servers(&self) -> Vec<Value> {
        self.send("GET", "/sim/servers", None)
            .await
            .as_array()
            .cloned()
            .unwrap()
    }

    /// Machines launched and terminated so far, by the simulator's record.
    async fn cloud_actions(&self) -> usize {
        let servers = self.servers().await;
        servers.iter().filter(|s| !s["token"].is_null()).count()
            + servers
                .iter()
                .filter(|s| s["machine"] == "terminated")
                .count()
    }

    /// `rehydrator_takeovers_total{lock="step"}` from `replica`'s status endpoint.
    async fn takeovers(&self, replica: &Replica) -> f64 {
        let url = common::endpoint::endpoint_url(&replica.log_text())
            .unwrap_or_else(|| panic!("{} logged no status endpoint", replica.name));
        let mut resp = self
            .http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{url}/metrics");
        let body = resp.body().limit(16 << 20).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(r#"rehydrator_takeovers_total{lock="step"} "#))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no step takeovers series in:\n{text}"))
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.name, r.log_tail(25)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every replica holds a session and all their event and catalog watches are
    /// parked: an event fired from then on is seen by every replica.
    async fn await_ready(&self) {
        eventually(
            "every replica to hold a session",
            Duration::from_secs(30),
            || async {
                let sessions = self.sessions().await;
                REPLICAS
                    .iter()
                    .all(|r| sessions.contains_key(*r))
                    .then_some(())
            },
        )
        .await;
        // Two blocking watches per replica (the event and the catalog service); the timer
        // reads no endpoint.
        let want = 2 * REPLICAS.len() as u64;
        eventually(
            "every replica's watches to park",
            Duration::from_secs(30),
            || async {
                let parked = self.send("GET", "/sim/stats", None).await["parked"]
                    .as_u64()
                    .unwrap_or(0);
                (parked >= want).then_some(())
            },
        )
        .await;
        for r in &self.replicas {
            r.await_baselines(2, Duration::from_secs(30)).await;
        }
    }

    async fn start_rollout(&self) -> Instant {
        self.send("POST", "/sim/images", Some(json!({ "id": "image-b" })))
            .await;
        self.await_ready().await;
        let fired = Instant::now();
        self.send("PUT", "/v1/event/fire/consul-rehydrate", None)
            .await;
        fired
    }

    /// Polls the rollout record until it is completed; fails on a stopped one or past `limit`.
    async fn await_completed(&self, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some(r) = self.rollout().await {
                match r["state"].as_str() {
                    Some("completed") => return r,
                    Some("stopped") => panic!("the rollout stopped: {r:#}\n{}", self.logs()),
                    _ => {}
                }
            }
            assert!(
                start.elapsed() < limit,
                "the rollout did not complete within {limit:?}: {:#?}\n{}",
                self.rollout().await,
                self.logs()
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What every finished rollout of the cluster must show, by the simulator's record.
    async fn assert_rolled_out(&self, record: &Value) {
        self.assert_rolled_out_after(record, 0).await;
    }

    /// As `assert_rolled_out`, where the test itself killed the leader `leader_kills` times
    /// (the simulator counts any end of a leading server as `leader_retired`).
    async fn assert_rolled_out_after(&self, record: &Value, leader_kills: u64) {
        assert_eq!(record["target_image"], "image-b", "{record:#}");
        // Every live server on image-b and voting, exactly SERVERS launches (no token used
        // twice, so no two machines from one launch) and SERVERS retirements: the demo's check.
        let servers = self.servers().await;
        let broken = rehydrator::demo::verdict::check_servers(&servers, SERVERS, "image-b", 0);
        assert!(broken.is_empty(), "{broken:?}: {servers:#?}");

        let mut invariants = self.send("GET", "/sim/invariants", None).await;
        let retired = invariants["leader_retired"].as_u64().unwrap_or(0);
        assert!(retired >= leader_kills, "{invariants}");
        invariants["leader_retired"] = (retired - leader_kills).into();
        common::rollout::assert_clean(&invariants, SERVERS);
    }
}

/// A KV value (base64) decoded as JSON.
fn decode(value: &Value) -> Option<Value> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[actix_rt::test]
async fn three_replicas_roll_three_servers_onto_the_new_image() {
    let rig = Rig::new("plain");
    bounded_for(TEST_BOUND, async {
        let fired = rig.start_rollout().await;
        let record = rig.await_completed(ROLLOUT_BOUND).await;
        let took = fired.elapsed();
        rig.assert_rolled_out(&record).await;
        let sessions = rig.sessions().await;
        assert!(
            REPLICAS.iter().all(|r| sessions.contains_key(*r)),
            "every replica still holds its session: {sessions:?}"
        );
        println!(
            "3 replicas rolled {SERVERS} servers onto image-b in {took:.2?} (unavoidable boot + \
             stabilization {:.2?})",
            (BOOT + STABILIZATION) * SERVERS as u32
        );
    })
    .await;
}

/// Fires the rollout, kills the `step` lock's holder at a point picked by `seed`, and checks
/// the others finish it as if nothing happened.
async fn rollout_with_the_holder_killed(seed: u64) {
    let mut rig = Rig::new(&format!("kill{seed}"));
    bounded_for(TEST_BOUND, async {
        let mut rng = StdRng::seed_from_u64(seed);
        // The rollout takes 2×SERVERS cloud actions (launch, retire, ...): the kill comes after
        // `after` of them, `jitter` later, during whatever step holds the lock then. Each seed
        // draws from its own third of the rollout, so three seeds cover its start (the event's
        // job, the first launch), its middle and the leader's retirement.
        let third = (2 * SERVERS / 3) as u64;
        let stratum = (seed - 1) % 3;
        let after = rng.gen_range(stratum * third..(stratum + 1) * third) as usize;
        let jitter = Duration::from_millis(rng.gen_range(0..1500));
        let fired = rig.start_rollout().await;

        eventually(
            &format!("{after} launches and retirements"),
            ROLLOUT_BOUND,
            || async { (rig.cloud_actions().await >= after).then_some(()) },
        )
        .await;
        actix_rt::time::sleep(jitter).await;
        let (session, holder) = eventually(
            "a replica to hold the step lock",
            Duration::from_secs(20),
            || rig.step_lock(),
        )
        .await;
        let victim_name = holder["replica"].as_str().unwrap().to_owned();
        let done_before = rig.cloud_actions().await;
        let victim = rig
            .replicas
            .iter()
            .position(|r| r.name == victim_name)
            .unwrap();
        let killed = Instant::now();
        rig.replicas[victim].kill_group();
        let status = rig.replicas[victim].wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.code(), None, "SIGKILL, not an exit: {status}");
        assert!(
            rig.rollout()
                .await
                .is_none_or(|r| r["state"] != "completed"),
            "the rollout completed before the kill"
        );

        // Another replica takes the lock once Consul ends the dead session (its liveness check
        // turns critical CHECK_TTL after the last pass) and lock-delay has passed.
        let (_, next) = eventually(
            "another replica to take the step lock",
            CHECK_TTL + LOCK_DELAY + SLACK,
            || async { rig.step_lock().await.filter(|(s, _)| *s != session) },
        )
        .await;
        let takeover = killed.elapsed();
        let next_name = next["replica"].as_str().unwrap().to_owned();
        assert_ne!(
            next_name, victim_name,
            "the dead replica took the lock again"
        );
        assert!(
            takeover >= LOCK_DELAY,
            "taken over {takeover:?} after the kill, inside lock-delay"
        );

        let record = rig.await_completed(KILLED_ROLLOUT_BOUND).await;
        let took = fired.elapsed();
        rig.assert_rolled_out(&record).await;
        // The survivors' /metrics count the takeover: a replica that took the lock for the
        // very job the dead holder was running found no receipt and ran it itself.
        let mut takeovers = HashMap::new();
        for r in rig.replicas.iter().filter(|r| r.name != victim_name) {
            takeovers.insert(r.name.clone(), rig.takeovers(r).await);
        }
        if next["action"] == holder["action"] && next["trigger_id"] == holder["trigger_id"] {
            assert!(
                takeovers[&next_name] >= 1.0,
                "{next_name} took over {}'s job but counts no takeover: {takeovers:?}",
                victim_name
            );
        }
        let servers = rig.servers().await;
        let launched: HashSet<&str> = servers
            .iter()
            .filter(|s| !s["token"].is_null())
            .filter_map(|s| s["name"].as_str())
            .collect();
        let terminated: HashSet<&str> = servers
            .iter()
            .filter(|s| s["machine"] == "terminated")
            .filter_map(|s| s["name"].as_str())
            .collect();
        let recorded = |list: &str| -> Vec<String> {
            record[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["machine"].as_str().unwrap().to_owned())
                .collect()
        };
        let (rec_launches, rec_retirements) = (recorded("launches"), recorded("retirements"));
        // Whatever step the kill interrupted, the record ends up listing exactly what the
        // cloud did: the next holder reconciles missed launches and retirements.
        fn as_set(v: &[String]) -> HashSet<&str> {
            v.iter().map(String::as_str).collect()
        }
        assert_eq!(
            (rec_launches.len(), as_set(&rec_launches)),
            (SERVERS, launched.clone()),
            "recorded launches vs the cloud's"
        );
        assert_eq!(
            (rec_retirements.len(), as_set(&rec_retirements)),
            (SERVERS, terminated.clone()),
            "recorded retirements vs the cloud's"
        );
        let sessions = rig.sessions().await;
        assert!(
            !sessions.contains_key(&victim_name),
            "the dead replica's session outlived it: {sessions:?}"
        );
        println!(
            "seed {seed}: killed {victim_name} after {done_before} cloud actions (aimed at \
             {after} + {jitter:.0?}) while it ran {} for {}; {next_name} took the step lock \
             {takeover:.1?} later (bound check TTL + lock-delay = {:?}); rollout completed in \
             {took:.1?}; the record lists {}/{SERVERS} launches and {}/{SERVERS} retirements; \
             takeovers counted: {takeovers:?}",
            holder["action"],
            holder["trigger_id"],
            CHECK_TTL + LOCK_DELAY,
            rec_launches.len(),
            rec_retirements.len()
        );
    })
    .await;
}

#[actix_rt::test]
async fn the_rollout_completes_when_the_step_holder_is_killed_seed_1() {
    rollout_with_the_holder_killed(1).await;
}

#[actix_rt::test]
async fn the_rollout_completes_when_the_step_holder_is_killed_seed_2() {
    rollout_with_the_holder_killed(2).await;
}

#[actix_rt::test]
async fn the_rollout_completes_when_the_step_holder_is_killed_seed_3() {
    rollout_with_the_holder_killed(3).await;
}

/// Issue 14's fault matrix on the simulator, as `fault_matrix` runs it on real Consul: one
/// rollout, a different fault at each step. After the first launch the leader (an old server)
/// is killed; after the next step the step holder is frozen until its session ends, then
/// woken; after the next every replica is SIGKILLed and started again; after the next the
/// replicas lose Consul (a proxy cut) until their sessions end and past the session TTL. The
/// simulator's record: quorum never lost, never more than one voter missing, never more than
/// N+1 machines, the leader never retired while leading; the record lists what the cloud did.
#[actix_rt::test]
async fn the_rollout_survives_a_fault_at_every_step() {
    let sim = common::sim_with(common::rig::fast_sim(SERVERS));
    bounded_for(Duration::from_secs(240), async {
        let proxy = common::proxy::Proxy::start(sim.addr).await;
        let mut rig = Rig::on(sim, &format!("http://{}", proxy.addr), "faults");
        let fired = rig.start_rollout().await;
        let mut figures = Vec::new();
        let actions = |n: usize| format!("{n} launches and retirements");

        // 1. The leader, an old server, killed after the first launch.
        let rig_ref = &rig;
        eventually(&actions(1), ROLLOUT_BOUND, || async {
            (rig_ref.cloud_actions().await >= 1).then_some(())
        })
        .await;
        let leader = rig
            .servers()
            .await
            .into_iter()
            .find(|s| s["leader"] == true)
            .expect("a leader");
        let name = leader["name"].as_str().unwrap().to_owned();
        let old = leader["token"].is_null();
        if old {
            rig.send("POST", &format!("/sim/servers/{name}/kill"), None).await;
            let at = Instant::now();
            eventually("a new leader", ROLLOUT_BOUND, || async {
                rig_ref
                    .servers()
                    .await
                    .iter()
                    .any(|s| s["leader"] == true && s["name"] != name.as_str())
                    .then_some(())
            })
            .await;
            figures.push(format!("leader {name} killed; a new leader {:.1?} after", at.elapsed()));
        } else {
            figures.push(format!("leader {name} is new already: no leader kill"));
        }

        // 2. The step holder frozen until its session ends, then woken.
        eventually(&actions(2), ROLLOUT_BOUND, || async {
            (rig_ref.cloud_actions().await >= 2).then_some(())
        })
        .await;
        let (session, holder) =
            eventually("a replica to hold the step lock", ROLLOUT_BOUND, || rig_ref.step_lock()).await;
        let frozen = holder["replica"].as_str().unwrap().to_owned();
        let pid = rig.replicas.iter().find(|r| r.name == frozen).unwrap().pid();
        let signal = |sig: &str, pid: u32| {
            let ok = std::process::Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status()
                .unwrap();
            assert!(ok.success(), "kill -{sig} {pid}");
        };
        let at = Instant::now();
        signal("STOP", pid);
        eventually("the frozen holder's session to end", ROLLOUT_BOUND, || async {
            (!rig_ref.sessions().await.values().any(|s| *s == session)).then_some(())
        })
        .await;
        figures.push(format!("{frozen} frozen holding the lock; its session ended {:.1?} after", at.elapsed()));
        signal("CONT", pid);

        // 3. Every replica SIGKILLed at once, then started again.
        eventually(&actions(3), ROLLOUT_BOUND, || async {
            (rig_ref.cloud_actions().await >= 3).then_some(())
        })
        .await;
        let done = rig.cloud_actions().await;
        for r in &rig.replicas {
            r.kill_group();
        }
        for r in &mut rig.replicas {
            let status = r.wait_exit(Duration::from_secs(10)).await;
            assert_eq!(status.code(), None, "SIGKILL, not an exit: {status}");
        }
        let at = Instant::now();
        rig.respawn();
        let rig_ref = &rig;
        eventually("the next step after the restart", ROLLOUT_BOUND, || async {
            (rig_ref.cloud_actions().await > done).then_some(())
        })
        .await;
        figures.push(format!(
            "every replica SIGKILLed after {done} actions and started again; the next action {:.1?} after",
            at.elapsed()
        ));

        // 4. Consul out of the replicas' reach past their sessions' end and the session TTL.
        let ttl = Duration::from_secs(common::rollout::SESSION_TTL_SECS);
        let at = Instant::now();
        proxy.cut();
        eventually("the replicas' sessions to end", ROLLOUT_BOUND, || async {
            let s = rig_ref.sessions().await;
            (!REPLICAS.iter().any(|r| s.contains_key(*r))).then_some(())
        })
        .await;
        let ended = at.elapsed();
        if ended < ttl {
            actix_rt::time::sleep(ttl - ended + Duration::from_secs(1)).await;
        }
        let cut_for = at.elapsed();
        proxy.restore();
        let back = Instant::now();
        eventually("every replica to hold a session again", ROLLOUT_BOUND, || async {
            let s = rig_ref.sessions().await;
            REPLICAS.iter().all(|r| s.contains_key(*r)).then_some(())
        })
        .await;
        figures.push(format!(
            "Consul cut off {cut_for:.1?}: the sessions ended {ended:.1?} in; all three held \
             sessions again {:.1?} after it came back",
            back.elapsed()
        ));

        let record = rig.await_completed(KILLED_ROLLOUT_BOUND * 2).await;
        let took = fired.elapsed();
        rig.assert_rolled_out_after(&record, u64::from(old)).await;
        println!(
            "fault matrix on the simulator, {SERVERS} servers, 3 replicas: rollout completed in \
             {took:.1?}; {}",
            figures.join("; ")
        );
    })
    .await;
}
