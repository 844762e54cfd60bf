//! Replicas as operators run them: several `rehydrator run` processes (the real binary) on one
//! simulated Consul, and what the receipt/lock protocol promises when they share work, when one
//! dies mid-action, when Consul is out of reach, on SIGTERM and on a panic.
//!
//! Every action here is an `exec` that records the trigger it was given into a file of its own
//! (`records/run.XXXXXX.<replica>.json`, renamed into place once written), so the test counts
//! real executions, not what the replicas say about them. Receipts are read from Consul KV.
//! Each replica runs in its own process group, killed as a whole when the test ends (pass or
//! fail), the way a container's processes go with it.
//!
//! Readiness and settling are read from the replicas' logs (at debug for the actors): a watch
//! that has taken its baseline ("Baseline taken.") sees every event fired after it, and a
//! replica that has logged a job's end ("Job done." / "Job already done.") will not run it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use crate::common::proxy::Proxy;
use crate::common::{bounded_for, eventually};

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;

const CLUSTER: &str = "e2e";
const ACTION: &str = "record";
const EVENT: &str = "consul-rehydrate";
/// The configured session TTL; Consul invalidates a silent session between TTL and 2×TTL.
const TTL: Duration = Duration::from_secs(10);
/// The configured lock-delay: after a session is invalidated its locks stay free-but-refused.
const LOCK_DELAY: Duration = Duration::from_secs(1);
/// The session TTL of the liveness-check kill test: long, so that a takeover through the TTL
/// (no sooner than TTL/2 after the kill) cannot pass for one through the check.
const LONG_TTL: Duration = Duration::from_secs(60);
/// Its liveness check's TTL.
const CHECK_TTL: Duration = Duration::from_secs(2);
/// What a replica's bound on a slow machine may overshoot by (process start, polling, builds
/// running beside the tests).
const SLACK: Duration = Duration::from_secs(10);
/// The bound on the tests here that wait out session TTLs in real time.
const LONG_TEST: Duration = Duration::from_secs(120);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// A directory of its own under the system temp dir, removed when the test ends.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "rehydrator-replicas-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("records")).unwrap();
        Self { dir }
    }

    fn records_dir(&self) -> PathBuf {
        self.dir.join("records")
    }

    /// Writes a configuration whose one action runs `prelude` and then records its trigger,
    /// with when the run began and ended (ns), in `run.XXXXXX.<begin>.<end>.<replica>.json`.
    fn config(&self, consul: &str, prelude: &str) -> PathBuf {
        self.config_keeping(consul, prelude, 1000)
    }

    /// As `config`, keeping `receipts_kept` receipts.
    fn config_keeping(&self, consul: &str, prelude: &str, receipts_kept: usize) -> PathBuf {
        self.config_with(consul, prelude, receipts_kept, TTL, None)
    }

    /// As `config`, with this session TTL and liveness check TTL (None: the default).
    fn config_with(
        &self,
        consul: &str,
        prelude: &str,
        receipts_kept: usize,
        ttl: Duration,
        check_ttl: Option<Duration>,
    ) -> PathBuf {
        let records = self.records_dir();
        let script = format!(
            "b=$(date +%s%N); {prelude} t=$(mktemp \"{dir}/run.XXXXXX\") && cat > \"$t\" && \
             mv \"$t\" \"$t.$b.$(date +%s%N).$E2E_REPLICA.json\"",
            dir = records.display()
        );
        let text = format!(
            r#"[cluster]
name = "{CLUSTER}"

[consul]
address = "{consul}"

[lock]
session_ttl = "{ttl}s"
lock_delay = "{delay}s"
receipt_timeout = "1m"
receipts_kept = {receipts_kept}
{check}

[status]
listen = "127.0.0.1:0"

[action.{ACTION}]
type = "exec"
command = ["sh", "-c", {script:?}]
timeout = "10m"

[[watch]]
name = "rehydrate-events"
type = "event"
event = "{EVENT}"
action = "{ACTION}"
"#,
            ttl = ttl.as_secs(),
            delay = LOCK_DELAY.as_secs(),
            check = check_ttl
                .map(|c| format!("check_ttl = \"{}s\"", c.as_secs()))
                .unwrap_or_default(),
        );
        let path = self.dir.join("rehydrator.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every finished run of the action: (replica that ran it, the trigger it was given).
    fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.records_dir()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue; // still being written
            };
            let mut parts = stem.rsplitn(4, '.');
            let replica = parts.next().unwrap().to_owned();
            let ended: u128 = parts.next().unwrap().parse().unwrap();
            let began: u128 = parts.next().unwrap().parse().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let trigger: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("record {name} is not one JSON trigger ({e}): {text:?}")
            });
            out.push(Record {
                replica,
                trigger_id: trigger["trigger_id"].as_str().unwrap().to_owned(),
                began,
                ended,
            });
        }
        out
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // E2E_KEEP=1 keeps a failing test's configuration, logs and records for a look.
        if std::thread::panicking() && std::env::var_os("E2E_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Clone)]
struct Record {
    replica: String,
    trigger_id: String,
    /// When the command began and ended, Unix ns.
    began: u128,
    ended: u128,
}

/// One `rehydrator run` process; its process group is killed when this is dropped.
struct Replica {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

fn spawn_replica(scratch: &Scratch, config: &Path, name: &str, env: &[(&str, &str)]) -> Replica {
    use std::os::unix::process::CommandExt;
    let log = scratch.dir.join(format!("{name}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehydrator"));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .args(["--replica", name])
        .env("RUST_LOG", "info,rehydrator_actors=debug")
        .env("NO_COLOR", "1")
        .env("E2E_REPLICA", name)
        .env_remove("REHYDRATOR_REPLICA")
        .env_remove("REHYDRATOR_FAULT")
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        // Its own group, so that ending the replica also ends the commands it started, as
        // the end of a container would.
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("the rehydrator binary starts");
    Replica {
        name: name.to_owned(),
        child,
        log,
        exited: None,
    }
}

impl Replica {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends `signal` to the replica process itself.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {} ({}) failed", self.pid(), self.name);
    }

    /// SIGKILL to the replica and everything it started: how a container dies.
    fn kill_group(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for the process to exit (without blocking the test's thread).
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.exited = Some(s);
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "replica {} did not exit within {limit:?}; its log ends:\n{}",
                self.name,
                self.log_tail()
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether this replica logged the end of the job for `trigger` (ran it, found it done,
    /// or found it expired).
    fn ended(&self, trigger: &str) -> bool {
        self.log_text()
            .lines()
            .any(|l| job_ended(l) && l.contains(trigger))
    }

    fn jobs_ended(&self) -> usize {
        self.log_text().lines().filter(|l| job_ended(l)).count()
    }

    /// Jobs this replica found expired (their receipts pruned).
    fn jobs_expired(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("skipped as expired"))
            .count()
    }
}

/// Whether a log line is the end of a job: ran, found done, or found expired.
fn job_ended(line: &str) -> bool {
    line.contains("Job done.")
        || line.contains("Job already done.")
        || line.contains("skipped as expired")
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The simulated Consul's HTTP API, as the test reads and drives it.
struct Consul {
    url: String,
    client: awc::Client,
}

impl Consul {
    fn new(url: String) -> Self {
        Self {
            url,
            client: awc::Client::default(),
        }
    }

    async fn get_json(&self, path: &str) -> Option<Value> {
        let mut resp = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            return None;
        }
        assert_eq!(resp.status(), 200, "GET {path}");
        Some(resp.json().limit(16 << 20).await.unwrap())
    }

    /// Live sessions as (ID, replica name).
    async fn sessions(&self) -> Vec<(String, String)> {
        let list = self.get_json("/v1/session/list").await.unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let name = s["Name"].as_str().unwrap_or_default();
                let replica = name.rsplit(' ').next().unwrap_or_default().to_owned();
                (s["ID"].as_str().unwrap().to_owned(), replica)
            })
            .collect()
    }

    async fn session_of(&self, replica: &str) -> Option<String> {
        self.sessions()
            .await
            .into_iter()
            .find(|(_, r)| r == replica)
            .map(|(id, _)| id)
    }

    /// Fires a `consul-rehydrate` event; returns its ID.
    async fn fire(&self, payload: &str) -> String {
        let mut resp = self
            .client
            .put(format!("{}/v1/event/fire/{EVENT}", self.url))
            .send_body(payload.to_owned())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "firing an event");
        let event: Value = resp.json().await.unwrap();
        event["ID"].as_str().unwrap().to_owned()
    }

    /// Every receipt of the action, decoded.
    async fn receipts(&self) -> Vec<Value> {
        let path = format!("/v1/kv/rehydrator/{CLUSTER}/receipts/{ACTION}/?recurse");
        let Some(list) = self.get_json(&path).await else {
            return Vec::new();
        };
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| decode(&e["Value"]))
            .collect()
    }

    async fn receipt(&self, trigger: &str) -> Option<Value> {
        let path = format!("/v1/kv/rehydrator/{CLUSTER}/receipts/{ACTION}/{trigger}");
        let list = self.get_json(&path).await?;
        Some(decode(&list[0]["Value"]))
    }

    /// The action's lock while a session holds it: (session, holder JSON, LockIndex).
    async fn lock(&self) -> Option<(String, Value, u64)> {
        let path = format!("/v1/kv/rehydrator/{CLUSTER}/locks/{ACTION}");
        let list = self.get_json(&path).await?;
        let entry = &list[0];
        let session = entry["Session"].as_str()?.to_owned();
        Some((
            session,
            decode(&entry["Value"]),
            entry["LockIndex"].as_u64().unwrap(),
        ))
    }

    /// Waits until the lock is held for `trigger`; returns (holder replica, session, LockIndex).
    async fn holder_of(&self, trigger: &str) -> (String, String, u64) {
        eventually(
            "a replica to take the lock for the event",
            Duration::from_secs(20),
            || async {
                let (session, holder, index) = self.lock().await?;
                (holder["trigger_id"] == trigger).then(|| {
                    (
                        holder["replica"].as_str().unwrap().to_owned(),
                        session,
                        index,
                    )
                })
            },
        )
        .await
    }

    async fn await_receipt(&self, trigger: &str, limit: Duration) -> Value {
        eventually(&format!("the receipt of {trigger}"), limit, || {
            self.receipt(trigger)
        })
        .await
    }
}

fn decode(value: &Value) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("a KV value"))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Waits until each replica holds a session and its event watch has its baseline, so that
/// every event fired from now on is seen by all of them.
async fn await_ready(consul: &Consul, replicas: &[&Replica]) {
    for r in replicas {
        eventually(
            &format!("replica {} to hold a session", r.name),
            Duration::from_secs(20),
            || async { consul.session_of(&r.name).await },
        )
        .await;
        eventually(
            &format!("replica {}'s event watch to take its baseline", r.name),
            Duration::from_secs(20),
            || async { r.log_text().contains("Baseline taken.").then_some(()) },
        )
        .await;
    }
}

/// Waits until each of `replicas` has ended the job for each of `triggers`, so no run of them
/// is still to come and the records are final.
async fn await_settled(replicas: &[&Replica], triggers: &[String]) {
    for r in replicas {
        for t in triggers {
            eventually(
                &format!("replica {} to end the job for {t}", r.name),
                Duration::from_secs(30),
                || async { r.ended(t).then_some(()) },
            )
            .await;
        }
    }
}

/// Runs of the action for `trigger`, by replica.
fn runs_of<'a>(records: &'a [Record], trigger: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter(|r| r.trigger_id == trigger)
        .map(|r| r.replica.as_str())
        .collect()
}

/// Fires `events` events at once at `replicas` (all ready) and checks that each ran exactly
/// once, one run at a time, with one receipt naming the replica that ran it. Returns how long
/// until every receipt was there and the receipts by replica.
async fn burst(
    consul: &Consul,
    scratch: &Scratch,
    replicas: &[&Replica],
    events: usize,
) -> (Duration, BTreeMap<String, usize>) {
    let start = Instant::now();
    let mut fired = Vec::new();
    for i in 0..events {
        fired.push(consul.fire(&format!("e{i}")).await);
    }
    let receipts = eventually(
        &format!("{events} receipts"),
        Duration::from_secs(90),
        || async {
            let r = consul.receipts().await;
            (r.len() >= fired.len()).then_some(r)
        },
    )
    .await;
    let handled_in = start.elapsed();
    // Every replica saw every event; once each has ended all its jobs, no run is to come.
    for r in replicas {
        eventually(
            &format!("replica {} to end all {events} jobs", r.name),
            Duration::from_secs(30),
            || async { (r.jobs_ended() >= fired.len()).then_some(()) },
        )
        .await;
    }

    let fired_set: HashSet<&str> = fired.iter().map(String::as_str).collect();
    assert_eq!(fired_set.len(), events, "event IDs are distinct");

    let records = scratch.records();
    let mut runs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &records {
        runs.entry(&r.trigger_id).or_default().push(&r.replica);
    }
    let twice: Vec<_> = runs.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "events run more than once: {twice:?}");
    let ran: HashSet<&str> = runs.keys().copied().collect();
    assert_eq!(
        ran,
        fired_set,
        "the runs are not exactly the fired events: {} runs for {} events",
        records.len(),
        fired.len()
    );

    // One step at a time across all replicas: no two runs overlap.
    let mut by_start: Vec<&Record> = records.iter().collect();
    by_start.sort_by_key(|r| r.began);
    for w in by_start.windows(2) {
        assert!(
            w[0].ended <= w[1].began,
            "two runs at once: {:?} and {:?}",
            w[0],
            w[1]
        );
    }

    assert_eq!(receipts.len(), events, "one receipt per event");
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    for receipt in &receipts {
        let trigger = receipt["trigger_id"].as_str().unwrap();
        let by = receipt["by"].as_str().unwrap();
        assert!(fired_set.contains(trigger), "a receipt for {trigger}");
        assert_eq!(receipt["outcome"]["kind"], "succeeded", "{receipt}");
        assert_eq!(
            runs[trigger],
            vec![by],
            "the receipt of {trigger} names {by}, the run was by {:?}",
            runs[trigger]
        );
        *spread.entry(by.to_owned()).or_default() += 1;
    }
    for r in replicas {
        assert!(
            !r.log_text().contains("another holder ran this job too"),
            "replica {} found a receipt already written after running a job",
            r.name
        );
    }
    (handled_in, spread)
}

#[actix_rt::test]
async fn three_replicas_run_each_of_100_events_exactly_once() {
    let scratch = Scratch::new("spread");
    let sim = common::sim();
    let config = scratch.config(&sim.url(), "");
    let replicas: Vec<Replica> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| spawn_replica(&scratch, &config, n, &[]))
        .collect();
    let refs: Vec<&Replica> = replicas.iter().collect();
    bounded_for(LONG_TEST, async {
        let consul = Consul::new(sim.url());
        await_ready(&consul, &refs).await;
        assert_eq!(consul.sessions().await.len(), 3);
        let (took, spread) = burst(&consul, &scratch, &refs, 100).await;
        println!(
            "100 events over 3 replicas: all receipted {took:.2?} after the first fire; \
             receipts by replica: {spread:?}"
        );
    })
    .await;
}

/// How a dead holder's session ends in a kill test.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Its session's TTL lapses (no liveness check): between TTL and 2×TTL after its last
    /// renew, which was at most TTL/2 before the kill.
    SessionTtl,
    /// Its liveness check turns critical, CHECK_TTL after its last pass, long before the
    /// LONG_TTL session could lapse.
    LivenessCheck,
}

#[actix_rt::test]
async fn killing_the_lock_holder_mid_action_hands_the_job_over_when_its_session_ttl_lapses() {
    kill_the_holder_mid_action("kill-ttl", Ending::SessionTtl).await;
}

#[actix_rt::test]
async fn killing_the_lock_holder_mid_action_hands_the_job_over_when_its_liveness_check_fails() {
    kill_the_holder_mid_action("kill-check", Ending::LivenessCheck).await;
}

/// Kills the holder of a running action; another replica must take the job over, within the
/// bound of how the dead holder's session ends, and run it once.
async fn kill_the_holder_mid_action(tag: &str, ending: Ending) {
    let scratch = Scratch::new(tag);
    let sim = common::sim();
    let (ttl, check_ttl) = match ending {
        Ending::SessionTtl => (TTL, Some(Duration::ZERO)),
        Ending::LivenessCheck => (LONG_TTL, Some(CHECK_TTL)),
    };
    // Long enough that the holder is surely still running when it is killed.
    let config = scratch.config_with(&sim.url(), "sleep 5;", 1000, ttl, check_ttl);
    let mut replicas: Vec<Replica> = ["k1", "k2", "k3"]
        .iter()
        .map(|n| spawn_replica(&scratch, &config, n, &[]))
        .collect();
    bounded_for(LONG_TEST, async {
        let consul = Consul::new(sim.url());
        await_ready(&consul, &replicas.iter().collect::<Vec<_>>()).await;

        let trigger = consul.fire("slow").await;
        let (holder, session, held_index) = consul.holder_of(&trigger).await;
        let victim = replicas.iter().position(|r| r.name == holder).unwrap();
        let killed_at = now_ms();
        let killed = Instant::now();
        replicas[victim].kill_group();
        let status = replicas[victim].wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.code(), None, "SIGKILL, not an exit: {status}");
        assert!(
            consul.receipt(&trigger).await.is_none(),
            "the holder finished before it was killed; the test's sleep is too short"
        );

        // Consul gives the dead replica's session up (see `Ending`); then lock-delay; then a
        // waiting replica takes the lock.
        let ends_within = match ending {
            Ending::SessionTtl => 2 * ttl,
            Ending::LivenessCheck => CHECK_TTL,
        };
        eventually(
            "Consul to invalidate the dead holder's session",
            ends_within + SLACK,
            || async { consul.session_of(&holder).await.is_none().then_some(()) },
        )
        .await;
        let invalidated = killed.elapsed();
        let receipt = consul
            .await_receipt(&trigger, LOCK_DELAY + Duration::from_secs(5) + SLACK)
            .await;
        let by = receipt["by"].as_str().unwrap().to_owned();
        assert_ne!(
            by, holder,
            "the dead holder cannot have written the receipt"
        );
        assert!(replicas.iter().any(|r| r.name == by), "receipt by {by}");
        assert!(
            receipt["lock_index"].as_u64().unwrap() > held_index,
            "the new holder's LockIndex must be past the dead one's ({held_index}): {receipt}"
        );
        let started_at = receipt["started_at"].as_u64().unwrap();
        assert!(
            started_at > killed_at,
            "the action restarted {}ms before the kill",
            killed_at - started_at
        );
        let takeover = started_at - killed_at;
        let bound = ends_within + LOCK_DELAY;
        if let Ending::LivenessCheck = ending {
            // The session's TTL could not have ended it this soon: the check did.
            assert!(
                bound + SLACK < ttl / 2,
                "the test cannot tell the check from the TTL"
            );
        }
        // No one may take the lock while the dead holder's session lives; it lived past the
        // kill, and lock-delay follows its end.
        assert!(
            Duration::from_millis(takeover) >= LOCK_DELAY,
            "taken over {takeover}ms after the kill, inside lock-delay"
        );
        assert!(
            Duration::from_millis(takeover) < bound + SLACK,
            "taken over {}s after the kill; the protocol's bound is {bound:?} (+{SLACK:?} slack)",
            secs(takeover)
        );

        let survivors: Vec<&Replica> = replicas.iter().filter(|r| r.name != holder).collect();
        await_settled(&survivors, std::slice::from_ref(&trigger)).await;
        let records = scratch.records();
        assert_eq!(
            runs_of(&records, &trigger),
            vec![by.as_str()],
            "one finished run of the action, by the replica that took over"
        );
        assert_eq!(consul.receipts().await.len(), 1);
        println!(
            "holder {holder} (session {session}) SIGKILLed mid-action: session invalidated after \
             {invalidated:.1?}, {by} started the action {:.1}s after the kill; bound \
             {bound:?} ({ending:?}: session TTL {ttl:?}, check TTL {check_ttl:?}, lock-delay \
             {LOCK_DELAY:?})",
            secs(takeover)
        );
    })
    .await;
}

#[actix_rt::test]
async fn events_fired_while_consul_is_unreachable_run_once_after_it_returns() {
    let scratch = Scratch::new("outage");
    let sim = common::sim();
    bounded_for(LONG_TEST, async {
        let proxy = Proxy::start(sim.addr).await;
        let config = scratch.config(&format!("http://{}", proxy.addr), "");
        // Only this replica runs: what happens after the outage is its doing.
        let solo = spawn_replica(&scratch, &config, "solo", &[]);
        let consul = Consul::new(sim.url());
        await_ready(&consul, &[&solo]).await;

        // One event through the healthy path first: the watch works, and a receipt exists.
        let warmup = consul.fire("before").await;
        consul.await_receipt(&warmup, Duration::from_secs(20)).await;
        let old_session = consul.session_of("solo").await.unwrap();

        proxy.cut();
        let cut = Instant::now();
        let mut during = Vec::new();
        for i in 0..5 {
            during.push(consul.fire(&format!("during-{i}")).await);
        }
        eventually(
            "the replica to notice the outage",
            Duration::from_secs(20),
            || async { solo.log_text().contains("Lost Consul").then_some(()) },
        )
        .await;
        // The outage lasts until Consul gives the silent replica's session up (TTL..2×TTL):
        // the replica must come back to a new session, not its old one.
        eventually(
            "Consul to invalidate the unreachable replica's session",
            2 * TTL + SLACK,
            || async { consul.session_of("solo").await.is_none().then_some(()) },
        )
        .await;
        for t in &during {
            assert!(
                consul.receipt(t).await.is_none(),
                "{t} was handled during the outage"
            );
        }
        proxy.restore();
        let outage = cut.elapsed();
        let restored = Instant::now();

        for t in &during {
            // The watch's error backoff (doubling, up to 60s) decides when it looks again.
            consul.await_receipt(t, Duration::from_secs(45)).await;
        }
        let recovered = restored.elapsed();
        let new_session = eventually(
            "the replica to hold a new session",
            Duration::from_secs(20),
            || async { consul.session_of("solo").await },
        )
        .await;
        assert_ne!(new_session, old_session);

        let mut after = Vec::new();
        for i in 0..3 {
            after.push(consul.fire(&format!("after-{i}")).await);
        }
        for t in &after {
            consul.await_receipt(t, Duration::from_secs(20)).await;
        }

        let all: Vec<String> = std::iter::once(warmup)
            .chain(during.iter().cloned())
            .chain(after.iter().cloned())
            .collect();
        await_settled(&[&solo], &all).await;
        let records = scratch.records();
        for t in &all {
            assert_eq!(runs_of(&records, t), vec!["solo"], "runs of {t}");
            let receipt = consul.receipt(t).await.unwrap();
            assert_eq!(receipt["by"], "solo");
        }
        assert_eq!(records.len(), all.len(), "no run for anything else");
        println!(
            "Consul cut off for {outage:.1?} (until the session was invalidated); the {} events \
             fired meanwhile were all handled {recovered:.1?} after it came back, once each; \
             the watch then handled {} new events",
            during.len(),
            after.len()
        );
    })
    .await;
}

#[actix_rt::test]
async fn sigterm_stops_mid_action_with_status_0_and_frees_the_lock_at_once() {
    let scratch = Scratch::new("sigterm");
    let sim = common::sim();
    let config = scratch.config(&sim.url(), "sleep 5;");
    let mut replicas: Vec<Replica> = ["t1", "t2"]
        .iter()
        .map(|n| spawn_replica(&scratch, &config, n, &[]))
        .collect();
    bounded_for(LONG_TEST, async {
        let consul = Consul::new(sim.url());
        await_ready(&consul, &replicas.iter().collect::<Vec<_>>()).await;

        let trigger = consul.fire("stop-me").await;
        let (holder, session, _) = consul.holder_of(&trigger).await;
        let stopping = replicas.iter().position(|r| r.name == holder).unwrap();
        let termed_at = now_ms();
        let termed = Instant::now();
        replicas[stopping].signal("TERM");
        let status = replicas[stopping].wait_exit(Duration::from_secs(30)).await;
        let stop_took = termed.elapsed();
        assert_eq!(
            status.code(),
            Some(0),
            "exit after SIGTERM: {status}; log:\n{}",
            replicas[stopping].log_tail()
        );
        assert!(
            stop_took < Duration::from_secs(10),
            "the orderly stop took {stop_took:?}; ECS kills at 30s"
        );
        let sessions = consul.sessions().await;
        assert!(
            sessions.iter().all(|(id, _)| *id != session),
            "the stopped replica's session is still there: {sessions:?}"
        );

        // The session was destroyed, not left to expire: the other replica takes over after
        // lock-delay, far sooner than a TTL.
        let receipt = consul
            .await_receipt(&trigger, Duration::from_secs(5) + TTL + SLACK)
            .await;
        let by = receipt["by"].as_str().unwrap().to_owned();
        assert_ne!(by, holder);
        let takeover = receipt["started_at"].as_u64().unwrap() - termed_at;
        assert!(
            Duration::from_millis(takeover) < TTL,
            "taken over {}s after SIGTERM: the lock waited for the TTL",
            secs(takeover)
        );

        let survivor: Vec<&Replica> = replicas.iter().filter(|r| r.name != holder).collect();
        await_settled(&survivor, std::slice::from_ref(&trigger)).await;
        // The stopped replica's command was killed with it: its run left no record.
        assert_eq!(runs_of(&scratch.records(), &trigger), vec![by.as_str()]);
        println!(
            "SIGTERM to {holder} mid-action: exit 0 after {stop_took:.2?}, session gone; {by} \
             took the action over {:.1}s after the signal (lock-delay {LOCK_DELAY:?})",
            secs(takeover)
        );
    })
    .await;
}

#[actix_rt::test]
async fn a_panic_exits_70_and_the_job_it_held_is_handled_by_another_replica() {
    const PANIC_AFTER: Duration = Duration::from_secs(5);
    if !cfg!(feature = "fault-injection") {
        panic!(
            "this test makes the replica panic with REHYDRATOR_FAULT, which only a build with \
             --features fault-injection obeys (scripts/test.sh enables it)"
        );
    }
    let scratch = Scratch::new("panic");
    let sim = common::sim();
    // The doomed replica's run never ends on its own: it is mid-job when it panics.
    let config = scratch.config(
        &sim.url(),
        "if [ \"$E2E_REPLICA\" = doomed ]; then sleep 300; fi;",
    );
    let survivor = spawn_replica(&scratch, &config, "survivor", &[]);
    bounded_for(LONG_TEST, async {
        let consul = Consul::new(sim.url());
        await_ready(&consul, &[&survivor]).await;
        let fault = format!("panic-after:{}", PANIC_AFTER.as_secs_f64());
        let started = Instant::now();
        let mut doomed = spawn_replica(
            &scratch,
            &config,
            "doomed",
            &[("REHYDRATOR_FAULT", fault.as_str())],
        );
        await_ready(&consul, &[&doomed]).await;

        // Both see the event; the survivor is paused until the doomed replica holds the lock.
        survivor.signal("STOP");
        let trigger = consul.fire("doomed").await;
        let (holder, session, _) = consul.holder_of(&trigger).await;
        survivor.signal("CONT");
        assert_eq!(holder, "doomed");
        assert!(
            started.elapsed() < PANIC_AFTER,
            "the doomed replica took the lock only after its injected panic was due"
        );

        let status = doomed.wait_exit(PANIC_AFTER + SLACK).await;
        let exited = Instant::now();
        assert_eq!(
            status.code(),
            Some(70),
            "exit after a panic: {status}; log:\n{}",
            doomed.log_tail()
        );
        assert!(doomed.log_text().contains("Panicked"));
        // No orderly stop after a panic: Consul still holds the session and its lock...
        assert_eq!(consul.lock().await.map(|l| l.0), Some(session.clone()));
        // ...until the TTL runs out.
        eventually(
            "Consul to invalidate the panicked replica's session",
            2 * TTL + SLACK,
            || async { consul.session_of("doomed").await.is_none().then_some(()) },
        )
        .await;
        let invalidated = exited.elapsed();
        let receipt = consul
            .await_receipt(&trigger, LOCK_DELAY + Duration::from_secs(5) + SLACK)
            .await;
        assert_eq!(receipt["by"], "survivor");
        let handled = exited.elapsed();

        await_settled(&[&survivor], std::slice::from_ref(&trigger)).await;
        assert_eq!(
            runs_of(&scratch.records(), &trigger),
            vec!["survivor"],
            "the job ran once, by the survivor"
        );
        println!(
            "doomed panicked mid-job and exited 70; its session was invalidated {invalidated:.1?} \
             later and the survivor handled the job {handled:.1?} after the exit"
        );
    })
    .await;
}

/// One replica frozen (SIGSTOP, its whole process group) while more events than
/// `receipts_kept` arrive and the others run them; its session is invalidated meanwhile. Woken,
/// it sees every event as new: the receipts still there say done, the pruned ones' watermark
/// says expired, and no event runs a second time.
async fn frozen_replica_runs_nothing_twice(consul_url: &str, tag: &str) {
    const EVENTS: usize = 60;
    const KEPT: usize = 20;
    let scratch = Scratch::new(tag);
    let config = scratch.config_keeping(consul_url, "", KEPT);
    let replicas: Vec<Replica> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| spawn_replica(&scratch, &config, n, &[]))
        .collect();
    let refs: Vec<&Replica> = replicas.iter().collect();
    let consul = Consul::new(consul_url.to_owned());
    await_ready(&consul, &refs).await;
    let frozen = &replicas[2];
    let group = format!("-{}", frozen.pid());
    let stop = |signal: &str| {
        let ok = Command::new("kill")
            .args([signal, "--", &group])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {group}");
    };
    stop("-STOP");
    let frozen_at = Instant::now();
    // 20 a second, as the issue's probe fired them.
    let mut fired = Vec::new();
    for i in 0..EVENTS {
        fired.push(consul.fire(&format!("f{i}")).await);
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(
        "the awake replicas to run every event",
        Duration::from_secs(60),
        || async { (scratch.records().len() >= EVENTS).then_some(()) },
    )
    .await;
    // Its session goes while it sleeps (TTL 10s): woken, it must look again before acting.
    eventually(
        "the frozen replica's session to be invalidated",
        Duration::from_secs(40),
        || async { consul.session_of("r3").await.is_none().then_some(()) },
    )
    .await;
    let receipts_left = consul.receipts().await.len();
    stop("-CONT");
    let frozen_for = frozen_at.elapsed();
    eventually(
        "the woken replica to end every job",
        Duration::from_secs(60),
        || async { (frozen.jobs_ended() >= EVENTS).then_some(()) },
    )
    .await;
    await_settled(&refs, &fired).await;

    let records = scratch.records();
    let mut runs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &records {
        runs.entry(&r.trigger_id).or_default().push(&r.replica);
    }
    let twice: Vec<_> = runs.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "events run twice: {twice:?}");
    assert_eq!(runs.len(), EVENTS, "every event ran once");
    assert!(
        !runs.values().flatten().any(|r| *r == "r3"),
        "the frozen replica ran nothing"
    );
    assert!(
        receipts_left <= KEPT + 1,
        "pruning kept {receipts_left} receipts"
    );
    let expired = frozen.jobs_expired();
    assert!(
        expired >= EVENTS - receipts_left,
        "the woken replica found {expired} of the pruned events expired ({receipts_left} receipts left)"
    );
    println!(
        "{tag}: {EVENTS} events, receipts_kept {KEPT}, one replica frozen {frozen_for:.1?}: {} runs \
         ({:.2} per event); the woken replica found {expired} expired and {} done",
        records.len(),
        records.len() as f64 / EVENTS as f64,
        frozen.jobs_ended() - expired
    );
}

#[actix_rt::test]
async fn a_frozen_replica_runs_no_event_twice_with_more_events_than_receipts_kept() {
    let sim = common::sim();
    bounded_for(
        LONG_TEST,
        frozen_replica_runs_nothing_twice(&sim.url(), "frozen-sim"),
    )
    .await;
}

#[actix_rt::test]
async fn a_frozen_replica_runs_no_event_twice_on_real_consul() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    bounded_for(LONG_TEST, async {
        let agent = common::consul_agent::DevAgent::start(&bin).await;
        println!("real Consul {} dev agent at {}", agent.version, agent.url);
        frozen_replica_runs_nothing_twice(&agent.url, "frozen-real").await;
    })
    .await;
}

/// Consul keeps its last 256 user events: a replica frozen while 400 arrive finds the first
/// 144 gone when it wakes (less the few its in-flight query was answered with). It runs those
/// it can see, each once, and says what it missed: a warning with the count and
/// `rehydrator_events_missed_total`, which with the runs accounts for every event.
#[actix_rt::test]
async fn events_dropped_before_the_watch_read_them_are_reported_with_their_count() {
    let sim = common::sim();
    bounded_for(
        LONG_TEST,
        dropped_events_are_reported(&sim.url(), "gap-sim"),
    )
    .await;
}

#[actix_rt::test]
async fn events_real_consul_dropped_are_reported_with_their_count() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    bounded_for(LONG_TEST, async {
        let agent = common::consul_agent::DevAgent::start(&bin).await;
        dropped_events_are_reported(&agent.url, "gap-real").await;
    })
    .await;
}

async fn dropped_events_are_reported(consul_url: &str, tag: &str) {
    const EVENTS: usize = 400;
    const BUFFER: usize = 256;
    let scratch = Scratch::new(tag);
    let config = scratch.config(consul_url, "");
    let replica = spawn_replica(&scratch, &config, "r1", &[]);
    {
        let consul = Consul::new(consul_url.to_owned());
        await_ready(&consul, &[&replica]).await;
        // One event seen and run first: the watch knows where it stands.
        let first = consul.fire("first").await;
        consul.await_receipt(&first, Duration::from_secs(20)).await;
        let group = format!("-{}", replica.pid());
        let signal = |s: &str| {
            assert!(Command::new("kill")
                .args([s, "--", &group])
                .status()
                .unwrap()
                .success());
        };
        signal("-STOP");
        let mut fired = Vec::new();
        for i in 0..EVENTS {
            fired.push(consul.fire(&format!("g{i}")).await);
        }
        signal("-CONT");
        let kept = &fired[EVENTS - BUFFER..];
        await_settled(&[&replica], kept).await;
        let warning = eventually("the gap's warning", Duration::from_secs(20), || async {
            replica
                .log_text()
                .lines()
                .find(|l| l.contains("Consul dropped user events"))
                .map(str::to_owned)
        })
        .await;
        let missed: usize = warning
            .split("missed=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {warning}"));
        let records = scratch.records();
        let ran: HashSet<&str> = records.iter().map(|r| r.trigger_id.as_str()).collect();
        assert_eq!(ran.len(), records.len(), "each once");
        assert!(kept.iter().all(|id| ran.contains(id.as_str())));
        // Every event either ran or is counted missed. A blocking query in flight when the
        // replica froze is answered at the first fire and read on waking, so the few events it
        // lists run; the rest of the 144 the agent dropped are the gap.
        assert_eq!(
            missed + records.len(),
            1 + EVENTS,
            "{missed} missed and {} ran of {}",
            records.len(),
            1 + EVENTS
        );
        assert!(
            (EVENTS - BUFFER - 4..=EVENTS - BUFFER).contains(&missed),
            "{warning}"
        );
        // The replica's own /metrics counts them.
        let log = replica.log_text();
        let addr = log
            .split("Status endpoint serving on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the status endpoint's address in the log");
        let mut resp = awc::Client::default()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        let metrics =
            String::from_utf8(resp.body().limit(1 << 20).await.unwrap().to_vec()).unwrap();
        let series =
            format!("rehydrator_events_missed_total{{watch=\"rehydrate-events\"}} {missed}");
        assert!(metrics.contains(&series), "{series} not in:\n{metrics}");
        println!(
            "{tag}: {EVENTS} events while frozen: {} ran, {missed} reported missed",
            records.len() - 1
        );
    }
}
