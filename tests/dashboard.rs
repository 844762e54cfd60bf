//! The dashboard in headless Chromium against a running demo, as a user would look at it: the
//! real binary's `rehydrator demo --fire-after … --linger` is started, a dashboard URL is read
//! from the line it prints ("dashboards: http://127.0.0.1:PORT/ (demo-1) …"), and the page
//! loads, shows the servers on the old image, and, in the same page session (no reload),
//! follows the rollout until every server shows the new image and the rollout is completed.
//! Then the lingering demo is stopped with SIGINT, and none of its replicas may survive it.
//!
//! Chromium is driven over the DevTools protocol: started with `--remote-debugging-port=0`,
//! its port read from `DevToolsActivePort` in a fresh profile directory, the page's target
//! found in `/json/list`, and `Runtime.evaluate` run over awc's websocket client to read the
//! rendered DOM. The flags keep it from reaching for the network (this machine's is closed).
//! The test fails, not skips, without Chromium: `apt-get install -y --no-install-recommends
//! chromium` (scripts/test.sh does it).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::demo::{alive, replica_pids};
use crate::common::endpoint::{scratch, Proc, NEW_IMAGE, OLD_IMAGE};
use crate::common::{bounded_for, eventually};
use awc::error::WsProtocolError;
use awc::ws;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};

const TEST_BOUND: Duration = Duration::from_secs(150);
/// The demo's cluster here (`--servers`), and its replicas (`--replicas`).
const SERVERS: usize = 3;
const REPLICAS: usize = 3;
/// Time, once the replicas are ready, for Chromium to start and the page to show the servers
/// before the rollout is fired (`--fire-after`); the first view must still say "none".
const FIRE_AFTER: &str = "8s";
/// From the first view to the dashboard showing the rollout complete: the wait above, then
/// 3 × (boot 0.5 s + stabilization 1.5 s) and the steps, on a machine busy with other builds.
const ROLLOUT_BOUND: Duration = Duration::from_secs(90);
/// How long the demo may take to stop its replicas and itself after SIGINT.
const STOP_BOUND: Duration = Duration::from_secs(20);

/// Where Chromium is: `$CHROMIUM`, else the Debian package's path, else `chromium` on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::iter::once(PathBuf::from("/usr/bin/chromium")).chain(
        std::env::split_paths(&path).flat_map(|d| [d.join("chromium"), d.join("chromium-browser")]),
    );
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "Chromium is needed for the dashboard test and was not found (/usr/bin/chromium, PATH, \
         $CHROMIUM). Install it: apt-get install -y --no-install-recommends chromium \
         (scripts/test.sh does this)."
    );
}

/// A headless Chromium showing one page; killed (with its helper processes) and its profile
/// removed when dropped.
struct Browser {
    _proc: Proc,
    profile: PathBuf,
    /// The DevTools HTTP endpoint, `http://127.0.0.1:PORT`.
    devtools: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // `_proc` is killed after this body runs; the profile goes once it is.
        let profile = self.profile.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let _ = std::fs::remove_dir_all(profile);
        });
    }
}

impl Browser {
    async fn open(url: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let exe = chromium();
        let profile = scratch("dashboard-chromium");
        let child = Command::new(&exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile.with_extension("log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let proc = Proc(child);
        let port_file = profile.join("DevToolsActivePort");
        let port = eventually(
            "Chromium to write DevToolsActivePort",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&port_file).unwrap_or_default();
                // Two lines once complete: the port, then the browser target's path.
                async move {
                    let mut lines = text.lines();
                    let port = lines.next()?.trim().parse::<u16>().ok()?;
                    lines.next()?;
                    Some(port)
                }
            },
        )
        .await;
        let _ = std::fs::remove_file(profile.with_extension("log"));
        Self {
            _proc: proc,
            profile,
            devtools: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The page target showing `url`: its DevTools websocket.
    async fn page(&self, url: &str) -> Page<impl Connection> {
        let client = awc::Client::default();
        let ws_url = eventually(
            "Chromium to list the dashboard's page",
            Duration::from_secs(20),
            || async {
                let mut resp = client
                    .get(format!("{}/json/list", self.devtools))
                    .send()
                    .await
                    .ok()?;
                let targets: Value = resp.json().await.ok()?;
                targets.as_array()?.iter().find_map(|t| {
                    let page = t["type"] == "page"
                        && t["url"].as_str().is_some_and(|u| u.starts_with(url));
                    page.then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                        .flatten()
                })
            },
        )
        .await;
        let (_, conn) = awc::Client::default()
            .ws(ws_url)
            .max_frame_size(16 << 20)
            .connect()
            .await
            .unwrap();
        Page { conn, next_id: 0 }
    }
}

/// A DevTools websocket, as awc's client gives it.
trait Connection:
    futures_util::Sink<ws::Message, Error = WsProtocolError>
    + futures_util::Stream<Item = Result<ws::Frame, WsProtocolError>>
    + Unpin
{
}

impl<C> Connection for C where
    C: futures_util::Sink<ws::Message, Error = WsProtocolError>
        + futures_util::Stream<Item = Result<ws::Frame, WsProtocolError>>
        + Unpin
{
}

/// One page's DevTools connection.
struct Page<C> {
    conn: C,
    next_id: u64,
}

impl<C: Connection> Page<C> {
    /// Calls DevTools' `method` with `params` on the page: its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({"id": id, "method": method, "params": params});
        self.conn
            .send(ws::Message::Text(call.to_string().into()))
            .await
            .unwrap();
        // Events may come in between; the answer carries our id.
        while let Some(frame) = self.conn.next().await {
            let ws::Frame::Text(bytes) = frame.unwrap() else {
                continue;
            };
            let msg: Value = serde_json::from_slice(&bytes).unwrap();
            if msg["id"] == id {
                assert!(msg["error"].is_null(), "{method} failed: {msg}");
                return msg["result"].clone();
            }
        }
        panic!("the DevTools connection closed");
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "the expression threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// A PNG of the page as Chromium renders it.
    async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }

    /// What the dashboard shows now; None before it has loaded.
    async fn view(&mut self) -> Option<View> {
        let text = self.eval(VIEW).await;
        serde_json::from_str(text.as_str().unwrap()).unwrap()
    }
}

/// Reads the rendered page through the ids and data attributes the dashboard keeps stable.
/// `null` until the dashboard's document is there (the first evaluation may still see the
/// blank page Chromium starts on).
const VIEW: &str = r#"!document.getElementById('rollout-state') ? 'null' : JSON.stringify({
  polls: Number(document.body.dataset.polls || 0),
  origin: performance.timeOrigin,
  rows: [...document.querySelectorAll('#servers tr')].map(tr => ({
    node: tr.dataset.node, image: tr.dataset.image, outdated: tr.dataset.outdated,
    voter: tr.dataset.voter, leader: tr.dataset.leader, text: tr.textContent })),
  rollout: document.getElementById('rollout-state').textContent,
  target: document.getElementById('rollout-target').textContent,
  progress: document.getElementById('rollout-progress').textContent,
  tolerance: document.getElementById('failure-tolerance').textContent,
  leader: document.getElementById('leader').textContent,
  lock: document.getElementById('lock-holder').textContent,
  replicas: [...document.querySelectorAll('#replicas li')].map(li => ({
    replica: li.dataset.replica, alive: li.dataset.alive })),
  events: [...document.querySelectorAll('#events li')].map(li => li.dataset.kind),
  error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
})"#;

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Row {
    node: String,
    image: String,
    outdated: String,
    voter: String,
    leader: String,
    text: String,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct View {
    polls: u64,
    origin: f64,
    rows: Vec<Row>,
    rollout: String,
    target: String,
    progress: String,
    tolerance: String,
    leader: String,
    lock: String,
    replicas: Vec<ReplicaItem>,
    events: Vec<String>,
    error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct ReplicaItem {
    replica: String,
    alive: String,
}

impl View {
    fn all_on(&self, image: &str) -> bool {
        self.rows.len() == SERVERS && self.rows.iter().all(|r| r.image == image)
    }
}

/// `rehydrator demo`, in its own process group (it and its replicas are SIGKILLed if the test
/// ends first, pass or panic), its stdout collected line by line as it comes.
struct Demo {
    proc: Proc,
    out: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        // `proc` is killed (with its group) after this body runs.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let dir = scratch("dashboard-demo");
        let mut child = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
            .arg("demo")
            .args(args)
            .arg("--timeline")
            .arg(dir.join("timeline.svg"))
            .current_dir(&dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("demo.stderr")).unwrap())
            .process_group(0)
            .spawn()
            .expect("the rehydrator binary starts");
        let stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&out);
        // Drained on a thread, so the demo never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            proc: Proc(child),
            out,
            dir,
        }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("demo.stderr")).unwrap_or_default()
    }

    /// Both outputs, for a failure's message.
    fn outputs(&self) -> String {
        format!(
            "demo stdout:\n{}\ndemo stderr:\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Until the demo has printed a line containing `text`.
    async fn printed(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stdout().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the demo did not print {text:?} within {limit:?}\n{}",
                self.outputs()
            );
            if let Some(s) = self.proc.0.try_wait().unwrap() {
                panic!(
                    "the demo exited ({s}) before printing {text:?}\n{}",
                    self.outputs()
                );
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGINT (Ctrl-C) to the demo alone, and its exit status within `limit`.
    async fn interrupt(&mut self, limit: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-INT", &self.proc.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -INT failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.proc.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within {limit:?} of SIGINT\n{}",
                self.outputs()
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The dashboards' URLs the demo printed ("dashboards: URL (demo-1) URL (demo-2) …").
fn dashboard_urls(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("dashboards: "))
        .map(|rest| {
            rest.split_whitespace()
                .filter(|w| w.starts_with("http://"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Until `url` answers 200: the replica's endpoint is serving, so Chromium's first load is the
/// dashboard rather than an error page.
async fn serving(url: &str) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    eventually(
        "the dashboard's endpoint to serve",
        Duration::from_secs(30),
        || {
            let req = client.get(url);
            async move {
                req.send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        },
    )
    .await;
}

#[actix_rt::test]
async fn the_dashboard_follows_the_demo_s_rollout_and_the_demo_stops_its_replicas() {
    bounded_for(TEST_BOUND, async {
        let started = Instant::now();
        let servers = SERVERS.to_string();
        let replicas = REPLICAS.to_string();
        let mut demo = Demo::start(&[
            "--servers",
            &servers,
            "--replicas",
            &replicas,
            "--fire-after",
            FIRE_AFTER,
            "--linger",
        ]);
        demo.printed("dashboards: ", Duration::from_secs(30)).await;
        let stdout = demo.stdout();
        let urls = dashboard_urls(&stdout);
        assert_eq!(urls.len(), REPLICAS, "{stdout}");
        let pids = replica_pids(&stdout);
        assert_eq!(pids.len(), REPLICAS, "{stdout}");
        let url = urls[0].clone();
        assert!(url.ends_with('/'), "{url}");
        serving(&url).await;
        let browser = Browser::open(&url).await;
        let mut page = browser.page(&url).await;

        // `eventually` cannot lend the page to its probe; the same loop by hand.
        let mut first = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while first.is_none() {
            let v = page.view().await;
            if v.as_ref()
                .is_some_and(|v| v.polls >= 1 && v.all_on(OLD_IMAGE))
            {
                first = v;
            } else {
                assert!(
                    Instant::now() < deadline,
                    "the dashboard never showed {SERVERS} servers on {OLD_IMAGE}: {v:?}\n{}",
                    demo.outputs()
                );
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let first = first.unwrap();
        let loaded = started.elapsed();
        assert_eq!(first.error, None);
        assert_eq!(
            first.rollout, "none",
            "the rollout had started before the page showed the servers (raise FIRE_AFTER)"
        );
        assert!(first.tolerance.parse::<u32>().is_ok(), "{first:?}");
        let leaders: Vec<&Row> = first.rows.iter().filter(|r| r.leader == "true").collect();
        assert_eq!(leaders.len(), 1, "{first:?}");
        assert_eq!(first.leader, leaders[0].node);
        assert!(first.rows.iter().all(|r| r.voter == "true"), "{first:?}");
        // Before any rollout the servers' image is the current one, not "new".
        assert!(
            first.rows.iter().all(|r| r.text.contains("(current)")),
            "{first:?}"
        );
        assert!(first.events.is_empty(), "{first:?}");

        // Poll the same page until it shows the end; note the states it passed through.
        let following = Instant::now();
        let mut seen: Vec<String> = Vec::new();
        let last = loop {
            let v = page.view().await.expect("the page stays loaded");
            let state = format!(
                "{} {} [{}]",
                v.rollout,
                v.progress,
                v.rows
                    .iter()
                    .map(|r| r.image.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            if seen.last() != Some(&state) {
                seen.push(state);
            }
            if v.all_on(NEW_IMAGE) && v.rollout == "completed" {
                break v;
            }
            assert!(
                following.elapsed() < ROLLOUT_BOUND,
                "the dashboard never showed the rollout complete; last: {v:?}\nseen: {seen:#?}\n{}",
                demo.outputs()
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        };
        let shown_complete = following.elapsed();
        assert!(
            seen.iter().any(|s| s.starts_with("active")),
            "the page never showed the rollout under way: {seen:#?}"
        );
        assert_eq!(last.error, None);
        assert_eq!(last.target, NEW_IMAGE);
        assert!(last.rows.iter().all(|r| r.outdated == "false"), "{last:?}");
        assert!(
            last.rows.iter().all(|r| r.text.contains("(new)")),
            "{last:?}"
        );
        // Replaced of desired: the extra server in flight never counts.
        assert!(
            last.progress
                .starts_with(&format!("{SERVERS}/{SERVERS} replaced")),
            "{last:?}"
        );
        assert!(
            seen.iter()
                .all(|s| !s.contains(&format!("/{} replaced", SERVERS + 1))),
            "{seen:#?}"
        );
        // Every replica listed, alive; the rollout's events as a feed, newest first.
        assert_eq!(last.replicas.len(), REPLICAS, "{last:?}");
        assert!(last.replicas.iter().all(|r| r.alive == "true"), "{last:?}");
        let count = |kind: &str| last.events.iter().filter(|e| *e == kind).count();
        assert_eq!(
            (count("launch"), count("retire"), count("started")),
            (SERVERS, SERVERS, 1),
            "{last:?}"
        );
        assert_eq!(last.events.first().map(String::as_str), Some("completed"));
        // What an operator sees at the end, kept beside the build for a look.
        let png = page.screenshot().await;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(
            png.len() > 10_000,
            "a near-empty picture: {} bytes",
            png.len()
        );
        let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        std::fs::write(&shot, &png).unwrap();
        eprintln!(
            "dashboard screenshot: {} ({} bytes)",
            shot.display(),
            png.len()
        );
        // Every server was replaced: none of the first view's nodes is still shown.
        for r in &first.rows {
            assert!(
                last.rows.iter().all(|l| l.node != r.node),
                "{} still shown: {last:?}",
                r.node
            );
        }
        // The same page session all along: no reload, and its own polling moved it.
        assert_eq!(last.origin, first.origin, "the page was reloaded");
        assert!(
            last.polls > first.polls,
            "{} -> {}",
            first.polls,
            last.polls
        );

        // The demo judged the rollout and lingers: the dashboard is still live.
        demo.printed("Lingering: ", Duration::from_secs(30)).await;
        let out = demo.stdout();
        assert!(out.contains("invariants:            all held"), "{out}");
        let polls = last.polls;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = page.view().await.expect("the page stays loaded");
            if v.polls > polls && v.error.is_none() {
                assert!(v.all_on(NEW_IMAGE), "{v:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the dashboard stopped updating while the demo lingered: {v:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }

        // Ctrl-C ends the lingering demo with its verdict, and takes its replicas with it.
        let stopping = Instant::now();
        let status = demo.interrupt(STOP_BOUND).await;
        let stopped = stopping.elapsed();
        assert!(status.success(), "{status}\n{}", demo.outputs());
        assert!(
            demo.stdout()
                .contains("Stopping the replicas and the simulator."),
            "{}",
            demo.outputs()
        );
        for pid in &pids {
            assert!(!alive(*pid), "replica pid {pid} outlived the demo");
        }
        drop(page);
        drop(browser);
        eprintln!(
            "dashboard: showing {SERVERS} servers on {OLD_IMAGE} {loaded:?} after the demo \
             started; the rollout shown complete {shown_complete:?} later (incl. the \
             {FIRE_AFTER} --fire-after), through {} distinct views: {seen:#?}; the demo and its \
             replicas stopped {stopped:?} after SIGINT; {:?} in all",
            seen.len(),
            started.elapsed()
        );
    })
    .await;
}

/// With Consul unreachable the dashboard says so where a reader looks (the rollout's state,
/// the health), not "none" as if no rollout were recorded.
#[actix_rt::test]
async fn with_consul_unreachable_the_dashboard_says_so() {
    bounded_for(Duration::from_secs(90), async {
        let dir = scratch("dashboard-unreachable");
        let config = dir.join("rehydrator.toml");
        let dead = crate::common::moto::free_port();
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"x\"\n[consul]\naddress = \"http://127.0.0.1:{dead}\"\n\
                 [status]\nlisten = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        let log = dir.join("run.log");
        let _replica = crate::common::endpoint::spawn_run(&config, &log);
        let url = eventually("the endpoint's address", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { crate::common::endpoint::endpoint_url(&text) }
        })
        .await;
        let url = format!("{url}/");
        serving(&url).await;
        let browser = Browser::open(&url).await;
        let mut page = browser.page(&url).await;
        const SHOWN: &str = r#"!document.getElementById('rollout-state') ? 'null' : JSON.stringify({
          state: document.getElementById('rollout-state').textContent,
          healthy: document.getElementById('healthy').textContent,
          error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        })"#;
        let deadline = Instant::now() + Duration::from_secs(30);
        let shown = loop {
            let v: Value = serde_json::from_str(page.eval(SHOWN).await.as_str().unwrap()).unwrap();
            if v["state"] != "none" && !v.is_null() && !v["error"].is_null() {
                break v;
            }
            assert!(Instant::now() < deadline, "the page never said why: {v}");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(shown["state"], "unknown (Consul unreachable)", "{shown}");
        assert_eq!(shown["healthy"], "unknown", "{shown}");
        let error = shown["error"].as_str().unwrap();
        assert!(error.contains("Consul unreachable: "), "{error}");
        drop(page);
        drop(browser);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
