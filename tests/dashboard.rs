//! The dashboard in headless Chromium against a running rollout: the page a real replica
//! serves at `/` loads, shows the servers on the old image, and, in the same page session
//! (no reload), follows the rollout until every server shows the new image.
//!
//! Chromium is driven over the DevTools protocol: started with `--remote-debugging-port=0`,
//! its port read from `DevToolsActivePort` in a fresh profile directory, the page's target
//! found in `/json/list`, and `Runtime.evaluate` run over awc's websocket client to read the
//! rendered DOM. The flags keep it from reaching for the network (this machine's is closed).
//! The test fails, not skips, without Chromium: `apt-get install -y --no-install-recommends
//! chromium` (scripts/test.sh does it).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use awc::error::WsProtocolError;
use awc::ws;
use common::endpoint::{scratch, Proc, Rig, NEW_IMAGE, OLD_IMAGE, ROLLOUT_BOUND, SERVERS};
use common::{bounded_for, eventually};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};

const TEST_BOUND: Duration = Duration::from_secs(150);

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
    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
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
                assert!(msg["error"].is_null(), "Runtime.evaluate failed: {msg}");
                let result = &msg["result"];
                assert!(
                    result["exceptionDetails"].is_null(),
                    "the expression threw: {result}"
                );
                return result["result"]["value"].clone();
            }
        }
        panic!("the DevTools connection closed");
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
    error: Option<String>,
}

impl View {
    fn all_on(&self, image: &str) -> bool {
        self.rows.len() == SERVERS && self.rows.iter().all(|r| r.image == image)
    }
}

#[actix_rt::test]
async fn the_dashboard_shows_the_servers_and_follows_a_rollout() {
    bounded_for(TEST_BOUND, async {
        let started = Instant::now();
        let rig = Rig::start("dashboard").await;
        let url = format!("{}/", rig.status_url);
        let browser = Browser::open(&url).await;
        let mut page = browser.page(&url).await;

        // `eventually` cannot lend the page to its probe; the same loop by hand.
        let mut first = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while first.is_none() {
            let v = page.view().await;
            if v.as_ref().is_some_and(|v| v.polls >= 1 && v.all_on(OLD_IMAGE)) {
                first = v;
            } else {
                assert!(
                    Instant::now() < deadline,
                    "the dashboard never showed {SERVERS} servers on {OLD_IMAGE}: {v:?}"
                );
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let first = first.unwrap();
        assert_eq!(first.error, None);
        assert_eq!(first.rollout, "none");
        assert!(first.tolerance.parse::<u32>().is_ok(), "{first:?}");
        let leaders: Vec<&Row> = first.rows.iter().filter(|r| r.leader == "true").collect();
        assert_eq!(leaders.len(), 1, "{first:?}");
        assert_eq!(first.leader, leaders[0].node);
        assert!(first.rows.iter().all(|r| r.voter == "true"), "{first:?}");
        let loaded = started.elapsed();

        rig.start_rollout().await;
        let rollout_started = Instant::now();
        // Poll the same page until it shows the end; note the states it passed through.
        let mut seen: Vec<String> = Vec::new();
        let last = loop {
            let v = page.view().await.expect("the page stays loaded");
            let state = format!(
                "{} [{}]",
                v.progress,
                v.rows.iter().map(|r| r.image.as_str()).collect::<Vec<_>>().join(",")
            );
            if seen.last() != Some(&state) {
                seen.push(state);
            }
            if v.all_on(NEW_IMAGE) && v.rollout == "completed" {
                break v;
            }
            assert!(
                rollout_started.elapsed() < ROLLOUT_BOUND,
                "the dashboard never showed the rollout complete; last: {v:?}\nseen: {seen:#?}\nreplica log:\n{}",
                rig.log_text()
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(last.target, NEW_IMAGE);
        assert!(last.rows.iter().all(|r| r.outdated == "false"), "{last:?}");
        assert!(last.rows.iter().all(|r| r.text.contains("(new)")), "{last:?}");
        assert!(
            last.progress.starts_with(&format!("{SERVERS}/{SERVERS} on target")),
            "{last:?}"
        );
        // The same page session all along: no reload, and its own polling moved it.
        assert_eq!(last.origin, first.origin, "the page was reloaded");
        assert!(last.polls > first.polls, "{} -> {}", first.polls, last.polls);
        let live = rig.live_servers().await;
        assert!(live.iter().all(|(_, image)| image == NEW_IMAGE), "{live:?}");
        let nodes: Vec<&str> = last.rows.iter().map(|r| r.node.as_str()).collect();
        for (name, _) in &live {
            assert!(nodes.contains(&name.as_str()), "{name} not shown: {nodes:?}");
        }
        eprintln!(
            "dashboard: loaded and showing the servers {loaded:?} after the replica started; \
             rollout shown complete {:?} after it was fired, through {} distinct views: {seen:#?}",
            rollout_started.elapsed(),
            seen.len()
        );
        drop(page);
        drop(browser);
    })
    .await;
}
