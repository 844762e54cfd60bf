//! The actor core against the simulator over real HTTP: for every watch type, a Watcher fires
//! once per real change, not on start and not on a write that changes nothing; debounce
//! coalesces a burst; events that arrive while no replica runs are replayed on start; receipts
//! are pruned; the http action retries a non-2xx answer; shutdown destroys the session; every
//! actor type restarts after an injected fault while the work goes on; a trigger the action
//! rejects ends with a failed receipt saying why, not a retry loop.
//!
//! "Nothing fired" cannot be awaited, so each test uses a sentinel: after the no-op it makes a
//! real change and asserts that the first job to end is that change's (its trigger is the
//! change's X-Consul-Index or event ID), and that the exec action recorded exactly one line per
//! real change. Before a no-op the test waits until the watch's blocking query is parked in the
//! simulator again, so the no-op is seen on its own and not folded into the next change.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix::prelude::*;
use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::{Client, ConsulConfig, WatchPolicy};
use rehydrator::webhook::AwcWebhook;
use rehydrator_actors::dispatcher::{GetQueues, JobEnded, JobResult, Observe};
use rehydrator_actors::fault::Fail;
use rehydrator_actors::lock_manager::GetSession;
use rehydrator_actors::receipt::{Outcome, Receipt};
use rehydrator_actors::tree::{self, Ports, Tree};
use rehydrator_config::Settings;
use rehydrator_sim::RunningSim;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The longest any one awaited step (a job, a parked query, a session) may take.
const STEP: Duration = Duration::from_secs(20);

// -------------------------------------------------------------------------------------------
// Harness

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "rehydrator-actors-{name}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Forwards the Dispatcher's `JobEnded` reports into a channel the test awaits.
struct Forward(mpsc::UnboundedSender<JobEnded>);

impl Actor for Forward {
    type Context = Context<Self>;
}

impl Handler<JobEnded> for Forward {
    type Result = ();

    fn handle(&mut self, msg: JobEnded, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// One simulator, a temp dir with the config and the exec action's record, and an HTTP
/// client for making changes.
struct Rig {
    sim: RunningSim,
    http: awc::Client,
    dir: TempDir,
    cluster: String,
}

/// A running tree and the jobs it reports.
struct Running {
    tree: Tree,
    jobs: mpsc::UnboundedReceiver<JobEnded>,
}

/// What the `[action.record]` section is.
enum Action<'a> {
    /// Appends the trigger JSON (one line) to `record` in the rig's dir.
    Record,
    /// POSTs to `url`.
    Http(&'a str),
    /// Runs `sh -c <script>`; `{record}` in it stands for the record file's path.
    Script(&'a str),
}

impl Rig {
    fn new(name: &str) -> Self {
        Self {
            sim: common::sim(),
            http: awc::Client::default(),
            dir: TempDir::new(name),
            cluster: format!("test-{name}"),
        }
    }

    fn record_path(&self) -> PathBuf {
        self.dir.0.join("record")
    }

    /// The settings for one watch (`watch` holds its `type` and type fields) triggering one
    /// action named `record`, loaded from a TOML file as `rehydrator run` loads it.
    fn settings(&self, watch: &str, action: Action<'_>, extra_lock: &str) -> Settings {
        let action = match action {
            Action::Record => {
                let script = format!("cat >> '{0}'; echo >> '{0}'", self.record_path().display());
                format!("type = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", {script:?}]")
            }
            Action::Http(url) => format!("type = \"http\"\nurl = {url:?}"),
            Action::Script(script) => {
                let script = script.replace("{record}", &self.record_path().display().to_string());
                format!("type = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", {script:?}]")
            }
        };
        let text = format!(
            r#"
[cluster]
name = "{cluster}"

[consul]
address = "{url}"

[lock]
session_ttl = "10s"
lock_delay = "0s"
receipt_timeout = "5s"
{extra_lock}

[action.record]
{action}
timeout = "10s"

[[watch]]
name = "w"
action = "record"
{watch}
"#,
            cluster = self.cluster,
            url = self.sim.url(),
        );
        let path = self.dir.0.join("rehydrator.toml");
        std::fs::write(&path, text).unwrap();
        rehydrator_config::load_with_env(&path, &HashMap::new()).unwrap()
    }

    fn ports(&self) -> Ports {
        let client = Client::new(ConsulConfig::with_address(&self.sim.url()).unwrap()).unwrap();
        let policy = WatchPolicy {
            min_interval: Duration::from_millis(10),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            ..WatchPolicy::default()
        };
        Ports {
            consul: Rc::new(ConsulAdapter::new(client, policy)),
            webhook: Rc::new(AwcWebhook::default()),
            cloud: None,
            gates: Vec::new(),
            objects: None,
        }
    }

    /// Starts a tree as replica-1 and subscribes to its job reports.
    async fn start(&self, settings: &Settings) -> Running {
        let tree = tree::start(settings, "replica-1", self.ports());
        let (tx, jobs) = mpsc::unbounded_channel();
        tree.dispatcher
            .send(Observe(Forward(tx).start().recipient()))
            .await
            .unwrap();
        Running { tree, jobs }
    }

    /// Starts a tree with an exec action recording its input and waits until its watch has
    /// taken the baseline and parked its first blocking query.
    async fn start_watching(&self, watch: &str) -> Running {
        let run = self.start(&self.settings(watch, Action::Record, "")).await;
        self.wait_parked().await;
        run
    }

    /// Waits until a blocking query is parked in the simulator: the one watch has read what
    /// is there and waits for the next change. (Each test runs one watch, and nothing else
    /// in the tree blocks while a single replica holds its locks.)
    async fn wait_parked(&self) {
        let parked = async {
            while self.sim.sim.lock().waiters.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(STEP, parked)
            .await
            .expect("the watch parks a blocking query");
    }

    async fn put(&self, path: &str, body: Vec<u8>) -> Value {
        let mut resp = self
            .http
            .put(format!("{}{path}", self.sim.url()))
            .send_body(body)
            .await
            .unwrap();
        let bytes = resp.body().await.unwrap();
        assert!(
            resp.status().is_success(),
            "PUT {path}: {} {}",
            resp.status(),
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap()
    }

    async fn put_kv(&self, key: &str, value: &str) {
        assert_eq!(
            self.put(&format!("/v1/kv/{key}"), value.as_bytes().to_vec())
                .await,
            json!(true)
        );
    }

    async fn delete_kv(&self, key: &str) {
        let resp = self
            .http
            .delete(format!("{}/v1/kv/{key}", self.sim.url()))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    async fn register(&self, registration: Value) {
        let body = serde_json::to_vec(&registration).unwrap();
        assert_eq!(self.put("/v1/catalog/register", body).await, json!(true));
    }

    /// Fires a user event; returns its ID.
    async fn fire(&self, name: &str) -> String {
        let event = self
            .put(&format!("/v1/event/fire/{name}"), Vec::new())
            .await;
        event["ID"].as_str().unwrap().to_owned()
    }

    /// The X-Consul-Index a read of `path` answers now: what a watch on it names its trigger.
    async fn index(&self, path: &str) -> String {
        let resp = self
            .http
            .get(format!("{}{path}", self.sim.url()))
            .send()
            .await
            .unwrap();
        resp.headers()
            .get("X-Consul-Index")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    async fn get_json(&self, path: &str) -> Value {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.sim.url()))
            .send()
            .await
            .unwrap();
        if resp.status() == awc::http::StatusCode::NOT_FOUND {
            return Value::Null;
        }
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// The triggers the exec action was handed, one per line it recorded.
    fn recorded(&self) -> Vec<Value> {
        recorded_in(&self.record_path())
    }

    fn recorded_ids(&self) -> Vec<String> {
        self.recorded()
            .iter()
            .map(|t| t["trigger_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The receipt keys of the `record` action, and their receipts.
    async fn receipts(&self) -> Vec<(String, Receipt)> {
        let prefix = format!("rehydrator/{}/receipts/record/", self.cluster);
        let list = self.get_json(&format!("/v1/kv/{prefix}?recurse")).await;
        list.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(e["Value"].as_str().unwrap())
                    .unwrap();
                let key = e["Key"].as_str().unwrap();
                (
                    key.strip_prefix(&prefix).unwrap().to_owned(),
                    Receipt::from_bytes(&raw).unwrap(),
                )
            })
            .collect()
    }
}

fn recorded_in(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

impl Running {
    /// Awaits the next job to end; it must have run here and succeeded.
    async fn next_job(&mut self) -> JobEnded {
        let job = tokio::time::timeout(STEP, self.jobs.recv())
            .await
            .unwrap_or_else(|_| panic!("no job ended within {STEP:?}"))
            .unwrap();
        assert_eq!(job.action, "record");
        assert!(
            matches!(job.result, JobResult::Ran(Outcome::Succeeded(_))),
            "{job:?}"
        );
        job
    }

    /// Awaits the next job to end; it must be `trigger_id`'s, run here and succeeded.
    async fn expect_job(&mut self, trigger_id: &str) -> JobEnded {
        let job = self.next_job().await;
        assert_eq!(
            job.trigger_id, trigger_id,
            "the first job to end is the real change's"
        );
        job
    }

    fn no_job_pending(&mut self) {
        if let Ok(job) = self.jobs.try_recv() {
            panic!("an unexpected job ended: {job:?}");
        }
    }

    async fn stop(self) {
        tokio::time::timeout(STEP, self.tree.shutdown())
            .await
            .expect("the tree stops in time");
    }
}

fn node(name: &str, addr: &str) -> Value {
    json!({ "Node": name, "Address": addr })
}

/// A node with service `web` (tags `tags`) and its check `web-alive` in `status`.
fn web(node_name: &str, addr: &str, tags: &[&str], status: &str) -> Value {
    json!({
        "Node": node_name,
        "Address": addr,
        "Service": { "ID": "web", "Service": "web", "Tags": tags, "Port": 80 },
        "Check": {
            "CheckID": "web-alive", "Name": "web alive", "Status": status, "ServiceID": "web"
        },
    })
}

// -------------------------------------------------------------------------------------------
// One test per watch type

#[actix_rt::test]
async fn key_watch_fires_once_per_real_change() {
    common::bounded(async {
        let rig = Rig::new("key");
        rig.put_kv("app/flag", "a").await;
        let mut run = rig
            .start_watching("type = \"key\"\nkey = \"app/flag\"")
            .await;

        // No-ops: the same value again (Consul does not even bump the index), another key.
        rig.put_kv("app/flag", "a").await;
        rig.put_kv("app/flag2", "x").await;
        rig.wait_parked().await;
        rig.put_kv("app/flag", "b").await;
        let first = rig.index("/v1/kv/app/flag").await;
        run.expect_job(&first).await;

        rig.put_kv("app/flag", "b").await;
        rig.wait_parked().await;
        rig.put_kv("app/flag", "c").await;
        let second = rig.index("/v1/kv/app/flag").await;
        run.expect_job(&second).await;

        // Deleting the key is a change too: the watch sees null. A missing key answers with
        // the whole KV table's index, which this replica's own lock and receipt writes move
        // too, so the trigger is known only to come after the last write before the delete.
        rig.wait_parked().await;
        let before: u64 = rig.index("/v1/kv/no-such-key").await.parse().unwrap();
        rig.delete_kv("app/flag").await;
        let third = run.next_job().await.trigger_id;
        assert!(
            third.parse::<u64>().unwrap() > before,
            "{third} after {before}"
        );

        assert_eq!(rig.recorded_ids(), [first, second, third]);
        let recorded = rig.recorded();
        assert_eq!(recorded[0]["watch"], "w");
        assert_eq!(recorded[0]["payload"]["Key"], "app/flag");
        assert_eq!(recorded[0]["payload"]["Value"], "Yg==", "base64 of b");
        assert_eq!(recorded[1]["payload"]["Value"], "Yw==", "base64 of c");
        assert_eq!(recorded[2]["payload"], Value::Null);
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn keyprefix_watch_fires_once_per_real_change() {
    common::bounded(async {
        let rig = Rig::new("keyprefix");
        rig.put_kv("app/x", "1").await;
        let mut run = rig
            .start_watching("type = \"keyprefix\"\nprefix = \"app/\"")
            .await;

        rig.put_kv("app/x", "1").await;
        rig.put_kv("other/y", "2").await;
        rig.wait_parked().await;
        rig.put_kv("app/y", "2").await;
        let first = rig.index("/v1/kv/app/?recurse").await;
        run.expect_job(&first).await;

        rig.put_kv("app/y", "2").await;
        rig.wait_parked().await;
        rig.put_kv("app/x", "3").await;
        let second = rig.index("/v1/kv/app/?recurse").await;
        run.expect_job(&second).await;

        assert_eq!(rig.recorded_ids(), [first, second]);
        assert_eq!(rig.recorded()[0]["payload"].as_array().unwrap().len(), 2);
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn services_watch_fires_once_per_real_change() {
    common::bounded(async {
        let rig = Rig::new("services");
        rig.register(web("web-1", "10.0.0.1", &["v1"], "passing"))
            .await;
        let mut run = rig.start_watching("type = \"services\"").await;

        // Re-registering the identical service changes nothing; a second instance with the
        // same tags moves the services index but not the name -> tags map the watch sees.
        rig.register(web("web-1", "10.0.0.1", &["v1"], "passing"))
            .await;
        rig.register(web("web-2", "10.0.0.2", &["v1"], "passing"))
            .await;
        rig.wait_parked().await;
        rig.register(json!({
            "Node": "web-1", "Address": "10.0.0.1",
            "Service": { "ID": "api", "Service": "api", "Port": 8080 },
        }))
        .await;
        let first = rig.index("/v1/catalog/services").await;
        run.expect_job(&first).await;
        assert!(rig.recorded()[0]["payload"]["api"].is_array());

        rig.register(web("web-2", "10.0.0.2", &["v1"], "passing"))
            .await;
        rig.wait_parked().await;
        rig.register(web("web-2", "10.0.0.2", &["v2"], "passing"))
            .await;
        let second = rig.index("/v1/catalog/services").await;
        run.expect_job(&second).await;

        assert_eq!(rig.recorded_ids(), [first, second]);
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn nodes_watch_fires_once_per_real_change() {
    common::bounded(async {
        let rig = Rig::new("nodes");
        rig.register(node("web-1", "10.0.0.1")).await;
        let mut run = rig.start_watching("type = \"nodes\"").await;

        // The identical node again, and a service on it (the services table moves, the nodes
        // table does not).
        rig.register(node("web-1", "10.0.0.1")).await;
        rig.register(web("web-1", "10.0.0.1", &[], "passing")).await;
        rig.wait_parked().await;
        rig.register(node("web-2", "10.0.0.2")).await;
        let first = rig.index("/v1/catalog/nodes").await;
        run.expect_job(&first).await;

        rig.register(node("web-2", "10.0.0.2")).await;
        rig.wait_parked().await;
        rig.register(node("web-2", "10.0.0.22")).await;
        let second = rig.index("/v1/catalog/nodes").await;
        run.expect_job(&second).await;

        assert_eq!(rig.recorded_ids(), [first, second]);
        let nodes = rig.recorded()[1]["payload"].clone();
        assert!(nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["Node"] == "web-2" && n["Address"] == "10.0.0.22"));
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn passing_service_watch_fires_once_per_real_change() {
    common::bounded(async {
        let rig = Rig::new("service");
        rig.register(web("web-1", "10.0.0.1", &["v1"], "passing"))
            .await;
        rig.register(web("web-2", "10.0.0.2", &["v1"], "critical"))
            .await;
        let mut run = rig
            .start_watching("type = \"service\"\nservice = \"web\"\npassingonly = true")
            .await;

        // The identical registration; then web-2's check moves critical -> warning: the index
        // moves, but web-2 stays out of the passing list, so what the watch sees is the same.
        rig.register(web("web-1", "10.0.0.1", &["v1"], "passing"))
            .await;
        rig.register(web("web-2", "10.0.0.2", &["v1"], "warning"))
            .await;
        rig.wait_parked().await;
        rig.register(web("web-1", "10.0.0.1", &["v1"], "critical"))
            .await;
        let first = rig.index("/v1/health/service/web?passing").await;
        run.expect_job(&first).await;
        assert_eq!(rig.recorded()[0]["payload"], json!([]));

        rig.register(web("web-1", "10.0.0.1", &["v1"], "critical"))
            .await;
        rig.wait_parked().await;
        rig.register(web("web-2", "10.0.0.2", &["v1"], "passing"))
            .await;
        let second = rig.index("/v1/health/service/web?passing").await;
        run.expect_job(&second).await;

        assert_eq!(rig.recorded_ids(), [first, second]);
        let listed = rig.recorded()[1]["payload"].clone();
        assert_eq!(listed.as_array().unwrap().len(), 1);
        assert_eq!(listed[0]["Node"]["Node"], "web-2");
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn checks_watch_by_service_fires_once_per_real_change() {
    common::bounded(async {
        let rig = Rig::new("checks-service");
        rig.register(web("web-1", "10.0.0.1", &[], "passing")).await;
        rig.register(json!({
            "Node": "db-1", "Address": "10.0.1.1",
            "Service": { "ID": "db", "Service": "db" },
            "Check": { "CheckID": "db-alive", "Name": "db alive", "Status": "passing", "ServiceID": "db" },
        }))
        .await;
        let mut run = rig
            .start_watching("type = \"checks\"\nservice = \"web\"")
            .await;

        // The identical check; another service's check changing (the checks index moves).
        rig.register(web("web-1", "10.0.0.1", &[], "passing")).await;
        rig.register(json!({
            "Node": "db-1", "Address": "10.0.1.1",
            "Check": { "CheckID": "db-alive", "Name": "db alive", "Status": "critical", "ServiceID": "db" },
        }))
        .await;
        rig.wait_parked().await;
        rig.register(web("web-1", "10.0.0.1", &[], "warning")).await;
        let first = rig.index("/v1/health/checks/web").await;
        run.expect_job(&first).await;
        assert_eq!(rig.recorded()[0]["payload"][0]["Status"], "warning");

        rig.register(web("web-1", "10.0.0.1", &[], "warning")).await;
        rig.wait_parked().await;
        rig.register(web("web-1", "10.0.0.1", &[], "critical")).await;
        let second = rig.index("/v1/health/checks/web").await;
        run.expect_job(&second).await;

        assert_eq!(rig.recorded_ids(), [first, second]);
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn checks_watch_by_state_fires_once_per_real_change() {
    common::bounded(async {
        let rig = Rig::new("checks-state");
        rig.register(web("web-1", "10.0.0.1", &[], "passing")).await;
        rig.register(web("web-2", "10.0.0.2", &[], "critical"))
            .await;
        let mut run = rig
            .start_watching("type = \"checks\"\nstate = \"critical\"")
            .await;

        // The identical critical check; a passing check turning warning (index moves, the
        // critical list does not change).
        rig.register(web("web-2", "10.0.0.2", &[], "critical"))
            .await;
        rig.register(web("web-1", "10.0.0.1", &[], "warning")).await;
        rig.wait_parked().await;
        rig.register(web("web-1", "10.0.0.1", &[], "critical"))
            .await;
        let first = rig.index("/v1/health/state/critical").await;
        run.expect_job(&first).await;
        assert_eq!(
            rig.recorded()[0]["payload"].as_array().unwrap().len(),
            2,
            "both checks are critical"
        );

        rig.register(web("web-1", "10.0.0.1", &[], "critical"))
            .await;
        rig.wait_parked().await;
        rig.register(web("web-2", "10.0.0.2", &[], "passing")).await;
        let second = rig.index("/v1/health/state/critical").await;
        run.expect_job(&second).await;

        assert_eq!(rig.recorded_ids(), [first, second]);
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn event_watch_fires_once_per_event() {
    common::bounded(async {
        let rig = Rig::new("event");
        // An event from before the tree started is history, not a trigger.
        rig.fire("deploy").await;
        let mut run = rig
            .start_watching("type = \"event\"\nevent = \"deploy\"")
            .await;

        // Another event name is not this watch's business.
        rig.fire("other").await;
        rig.wait_parked().await;
        let first = rig.fire("deploy").await;
        run.expect_job(&first).await;
        rig.fire("other").await;
        rig.wait_parked().await;
        let second = rig.fire("deploy").await;
        run.expect_job(&second).await;

        assert_eq!(rig.recorded_ids(), [first.clone(), second]);
        assert_eq!(rig.recorded()[0]["payload"]["ID"], first.as_str());
        assert_eq!(rig.recorded()[0]["payload"]["Name"], "deploy");
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

// -------------------------------------------------------------------------------------------
// Debounce, replay, receipts

#[actix_rt::test]
async fn debounce_coalesces_a_burst_into_one_fire() {
    common::bounded(async {
        let rig = Rig::new("debounce");
        rig.put_kv("app/flag", "a").await;
        let mut run = rig
            .start_watching("type = \"key\"\nkey = \"app/flag\"\ndebounce = \"500ms\"")
            .await;

        for v in ["b", "c", "d"] {
            rig.put_kv("app/flag", v).await;
        }
        let burst = rig.index("/v1/kv/app/flag").await;
        let job = run.expect_job(&burst).await;
        assert_eq!(
            job.trigger_id, burst,
            "the burst fires once, for its last state"
        );

        // The sentinel: the next job is the next change's, not a second one from the burst.
        rig.put_kv("app/flag", "e").await;
        let sentinel = rig.index("/v1/kv/app/flag").await;
        run.expect_job(&sentinel).await;

        assert_eq!(rig.recorded_ids(), [burst, sentinel]);
        assert_eq!(rig.recorded()[0]["payload"]["Value"], "ZA==", "base64 of d");
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn events_fired_while_no_replica_runs_are_replayed_on_start() {
    common::bounded(async {
        let rig = Rig::new("replay");
        // Before any replica ever ran: never replayed (the buffer predates us).
        let ancient = rig.fire("deploy").await;
        let settings = rig.settings("type = \"event\"\nevent = \"deploy\"", Action::Record, "");

        let mut run = rig.start(&settings).await;
        rig.wait_parked().await;
        let handled = rig.fire("deploy").await;
        run.expect_job(&handled).await;
        run.stop().await;

        let missed = [rig.fire("deploy").await, rig.fire("deploy").await];
        let mut run = rig.start(&settings).await;
        run.expect_job(&missed[0]).await;
        run.expect_job(&missed[1]).await;

        // Then it watches on as usual: the next job is the next event's.
        let next = rig.fire("deploy").await;
        run.expect_job(&next).await;

        assert_eq!(
            rig.recorded_ids(),
            [handled, missed[0].clone(), missed[1].clone(), next]
        );
        assert!(!rig.recorded_ids().contains(&ancient));
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn receipts_are_pruned_to_receipts_kept() {
    common::bounded(async {
        let rig = Rig::new("prune");
        let settings = rig.settings(
            "type = \"key\"\nkey = \"app/n\"",
            Action::Record,
            "receipts_kept = 2",
        );
        let mut run = rig.start(&settings).await;
        rig.wait_parked().await;

        let mut ids = Vec::new();
        for n in 1..=4 {
            rig.put_kv("app/n", &n.to_string()).await;
            let id = rig.index("/v1/kv/app/n").await;
            run.expect_job(&id).await;
            ids.push(id);
        }

        let mut receipts = rig.receipts().await;
        receipts.sort_by_key(|(k, _)| k.parse::<u64>().unwrap());
        let kept: Vec<&str> = receipts.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kept,
            [ids[2].as_str(), ids[3].as_str()],
            "the newest two stay"
        );
        for (key, r) in &receipts {
            assert_eq!(&r.trigger_id, key);
            assert_eq!(r.action, "record");
            assert_eq!(r.by, "replica-1");
            assert_eq!(r.attempts, 1);
            assert_eq!(r.outcome, Outcome::Succeeded("exit 0".into()));
        }
        assert_eq!(rig.recorded_ids(), ids);
        run.stop().await;
    })
    .await;
}

// -------------------------------------------------------------------------------------------
// The http action

/// What the test's webhook receiver saw.
#[derive(Default)]
struct Hook {
    bodies: Mutex<Vec<Value>>,
}

async fn hook(
    state: actix_web::web::Data<Hook>,
    body: actix_web::web::Json<Value>,
) -> actix_web::HttpResponse {
    let mut bodies = state.bodies.lock().unwrap();
    bodies.push(body.into_inner());
    if bodies.len() == 1 {
        actix_web::HttpResponse::ServiceUnavailable().finish()
    } else {
        actix_web::HttpResponse::Ok().finish()
    }
}

#[actix_rt::test]
async fn http_action_posts_the_trigger_and_retries_a_failed_answer() {
    common::bounded(async {
        let rig = Rig::new("http");
        let hook_state = actix_web::web::Data::new(Hook::default());
        let (url, server_handle) = common::serve_post("/hook", hook_state.clone(), hook);

        let settings = rig.settings("type = \"key\"\nkey = \"app/flag\"", Action::Http(&url), "");
        let mut run = rig.start(&settings).await;
        rig.wait_parked().await;
        rig.put_kv("app/flag", "go").await;
        let id = rig.index("/v1/kv/app/flag").await;
        let job = run.expect_job(&id).await;
        assert_eq!(
            job.result,
            JobResult::Ran(Outcome::Succeeded("HTTP 200".into()))
        );

        let bodies = hook_state.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 2, "one 503, then one retry that succeeded");
        for b in &bodies {
            assert_eq!(b["trigger_id"], id.as_str());
            assert_eq!(b["action"], "record");
            assert_eq!(b["payload"]["Key"], "app/flag");
        }
        let receipts = rig.receipts().await;
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].1.attempts, 2);
        run.no_job_pending();
        run.stop().await;
        server_handle.stop(false).await;
    })
    .await;
}

// -------------------------------------------------------------------------------------------
// Shutdown

async fn sessions(rig: &Rig) -> Vec<Value> {
    rig.get_json("/v1/session/list")
        .await
        .as_array()
        .cloned()
        .unwrap()
}

#[actix_rt::test]
async fn shutdown_destroys_the_session() {
    common::bounded(async {
        let rig = Rig::new("shutdown");
        let settings = rig.settings("type = \"key\"\nkey = \"app/flag\"", Action::Record, "");
        let run = rig.start(&settings).await;
        let session = async {
            loop {
                if let Some(id) = run.tree.lock_manager.send(GetSession).await.unwrap() {
                    return id;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let id = tokio::time::timeout(STEP, session).await.unwrap();
        let listed = sessions(&rig).await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["ID"], id.as_str());
        assert_eq!(
            listed[0]["Name"],
            format!("rehydrator {} replica-1", rig.cluster)
        );

        let took = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), run.tree.shutdown())
            .await
            .expect("shutdown finishes within 5s");
        assert_eq!(sessions(&rig).await, Vec::<Value>::new());
        eprintln!("shutdown took {:?}", took.elapsed());
    })
    .await;
}

#[actix_rt::test]
async fn shutdown_right_after_start_leaves_no_session() {
    common::bounded(async {
        let rig = Rig::new("shutdown-early");
        let settings = rig.settings("type = \"key\"\nkey = \"app/flag\"", Action::Record, "");
        let run = rig.start(&settings).await;
        // The session's creation is in flight now, or about to be.
        tokio::time::timeout(Duration::from_secs(5), run.tree.shutdown())
            .await
            .expect("shutdown finishes within 5s");
        assert_eq!(sessions(&rig).await, Vec::<Value>::new());
    })
    .await;
}

// -------------------------------------------------------------------------------------------
// Supervision and rejected triggers

fn fail(why: &str) -> Fail {
    Fail { reason: why.into() }
}

/// Waits until the job for `trigger_id` runs (its lock is held and the executor called).
async fn wait_running(run: &Running, trigger_id: &str) {
    let running = async {
        loop {
            let queues = run.tree.dispatcher.send(GetQueues).await.unwrap();
            if queues
                .iter()
                .any(|q| q.running.as_deref() == Some(trigger_id))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(STEP, running)
        .await
        .expect("the job starts");
}

#[actix_rt::test]
async fn every_actor_type_restarts_after_a_fault_and_the_work_goes_on() {
    common::bounded(async {
        let rig = Rig::new("faults");
        // Slow enough to be caught mid-run; the record is written only by a run that finishes.
        let settings = rig.settings(
            "type = \"event\"\nevent = \"go\"",
            Action::Script("sleep 0.3; cat >> '{record}'; echo >> '{record}'"),
            "",
        );
        let mut run = rig.start(&settings).await;
        rig.wait_parked().await;
        let mut fired = Vec::new();

        let e = rig.fire("go").await;
        run.expect_job(&e).await;
        fired.push(e);

        // Watcher: restarts from a fresh baseline; an event fired meanwhile is still handled,
        // either live or replayed (it came after the newest receipted event).
        run.tree.watchers[0].send(fail("test")).await.unwrap();
        let e = rig.fire("go").await;
        run.expect_job(&e).await;
        fired.push(e);

        // Dispatcher: restarts with its queues; it answers and runs the next job.
        run.tree.dispatcher.send(fail("test")).await.unwrap();
        assert!(
            run.tree.dispatcher.send(GetQueues).await.is_ok(),
            "the dispatcher answers again"
        );
        let e = rig.fire("go").await;
        run.expect_job(&e).await;
        fired.push(e);

        // LockManager: restarts keeping its session, which it renews.
        let before = run.tree.lock_manager.send(GetSession).await.unwrap();
        run.tree.lock_manager.send(fail("test")).await.unwrap();
        assert_eq!(
            run.tree.lock_manager.send(GetSession).await.unwrap(),
            before
        );
        let e = rig.fire("go").await;
        run.expect_job(&e).await;
        fired.push(e);

        // Executor, in the middle of a run: the run dies with it (its command is killed) and
        // the Dispatcher runs the job again, to a single receipt.
        let e = rig.fire("go").await;
        wait_running(&run, &e).await;
        run.tree.executors["record"]
            .send(fail("test"))
            .await
            .unwrap();
        run.expect_job(&e).await;
        fired.push(e.clone());

        assert_eq!(
            rig.recorded_ids(),
            fired,
            "each event ran to completion exactly once"
        );
        let receipts: HashMap<String, Receipt> = rig.receipts().await.into_iter().collect();
        assert_eq!(receipts.len(), fired.len());
        assert_eq!(
            receipts[&e].attempts, 2,
            "the interrupted run counts as a failed attempt"
        );
        run.no_job_pending();
        run.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn a_trigger_the_action_rejects_ends_with_a_failed_receipt_not_a_retry_loop() {
    common::bounded(async {
        let rig = Rig::new("rejects");
        // Exit 65 (EX_DATAERR) is how a command says "this trigger is not for me".
        let settings = rig.settings(
            "type = \"event\"\nevent = \"go\"",
            Action::Script("echo 'payload lacks a server name' >&2; exit 65"),
            "",
        );
        let mut run = rig.start(&settings).await;
        rig.wait_parked().await;
        let e = rig.fire("go").await;
        let job = tokio::time::timeout(STEP, run.jobs.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.trigger_id, e);
        let JobResult::Ran(Outcome::Failed(why)) = &job.result else {
            panic!("expected a failed outcome: {job:?}");
        };
        assert!(why.contains("payload lacks a server name"), "{why}");
        let receipts = rig.receipts().await;
        assert_eq!(receipts.len(), 1);
        let receipt = &receipts[0].1;
        assert_eq!(receipt.attempts, 1, "not retried");
        assert!(
            matches!(&receipt.outcome, Outcome::Failed(w) if w.contains("exit status: 65")),
            "{receipt:?}"
        );
        // The replica goes on with the next trigger.
        let next = rig.fire("go").await;
        let job = tokio::time::timeout(STEP, run.jobs.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.trigger_id, next);
        run.stop().await;
    })
    .await;
}
