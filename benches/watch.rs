//! Benchmark: what a watch costs. Run with `cargo bench --bench watch`; add
//! `-- --consul 127.0.0.1:8500` to measure against a real Consul agent instead of the simulator.
//!
//! 1. **Latency**, event fire → action start. One actor tree runs in this process (started with
//!    `tree::start` inside an actix System, as `rehydrator run` does) with an `event` watch and
//!    an `http` action whose URL is a receiver in this process that timestamps each POST. Events
//!    are fired one at a time (`PUT /v1/event/fire/<name>`, timestamped just before sending).
//!    For comparison, the same fire → a raw blocking `GET /v1/event/list?index=` returning:
//!    the time Consul itself takes to wake a blocking query. Events are spaced more than the
//!    default `WatchPolicy::min_interval` (250 ms) apart; a last short run fires back to back:
//!    after a real change a watch calls again at once (a burst of 10, refilled at one per
//!    min_interval), so those should cost no more than the spaced ones.
//! 2. **Idle cost** of 1, 100, 1,000 and 10,000 `key` watches in one replica: a real
//!    `rehydrator run` child process per count, against a fresh simulator each. Once settled,
//!    over a window: the replica's RSS and CPU (from /proc), and the Consul requests it made
//!    (the simulator's `GET /sim/stats`; "n/a" against a real agent).
//!
//! Options (after `--`): `--consul ADDR`, `--events N` (default 200), `--window SECS`
//! (default 10), `--watches 1,100,1000,10000`, `--only latency|idle`.
//!
//! It prints figures and asserts only what would make them meaningless: every fired event
//! reaches its receiver as that event, and every watch is parked before the idle window.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::{Client, ConsulConfig, QueryOptions, WatchPolicy};
use rehydrator::webhook::AwcWebhook;
use rehydrator_actors::ports::{Acquire, Acquired, ConsulPort as _, SessionSpec};
use rehydrator_actors::tree::{self, Ports};
use serde_json::Value;
use tokio::sync::mpsc;

/// Events fired before the measured ones: the first runs also create the session.
const WARMUP: usize = 3;
/// Events fired back to back to show the rate limit's cost.
const BACK_TO_BACK: usize = 20;
/// Descriptors a process needs beyond one per watch.
const FD_MARGIN: u64 = 256;

struct Args {
    consul: Option<String>,
    events: usize,
    window: Duration,
    watches: Vec<usize>,
    latency: bool,
    idle: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        consul: None,
        events: 200,
        window: Duration::from_secs(10),
        watches: vec![1, 100, 1_000, 10_000],
        latency: true,
        idle: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--consul" => args.consul = Some(value()),
            "--events" => args.events = value().parse().expect("--events N"),
            "--window" => {
                args.window = Duration::from_secs_f64(value().parse().expect("--window SECS"))
            }
            "--watches" => {
                args.watches = value()
                    .split(',')
                    .map(|n| n.trim().parse().expect("--watches N,N,..."))
                    .collect()
            }
            "--only" => match value().as_str() {
                "latency" => args.idle = false,
                "idle" => args.latency = false,
                other => panic!("--only latency|idle, not {other:?}"),
            },
            // cargo bench passes `--bench`, and perhaps a filter; neither means anything here.
            _ => {}
        }
    }
    assert!(args.events > 0, "--events must be above zero");
    args
}

// ---------------------------------------------------------------------------------------------
// /proc

fn proc_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// utime + stime of `pid`, every thread, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// This process's soft limit on open files; children inherit it.
fn fd_soft_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft = line.split_whitespace().nth(3).unwrap();
    soft.parse().unwrap_or(u64::MAX) // "unlimited"
}

// ---------------------------------------------------------------------------------------------
// Consul: the simulator as a child process, or an agent given with --consul

/// A child process that is stopped when dropped: SIGTERM first (a replica then destroys its
/// session), SIGKILL if it lingers.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn assert_running(&mut self, log: Option<&Path>) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let tail = log
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.lines().rev().take(20).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            panic!(
                "the {} exited ({status}); last log lines, newest first:\n{tail}",
                self.name
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Consul {
    /// `http://host:port`.
    url: String,
    sim: Option<Proc>,
}

impl Consul {
    fn start(external: Option<&str>) -> Consul {
        if let Some(addr) = external {
            let url = if addr.contains("://") {
                addr.trim_end_matches('/').to_owned()
            } else {
                format!("http://{addr}")
            };
            return Consul { url, sim: None };
        }
        // Bind-then-release to find a free port; the simulator binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
            .args(["sim", "--listen", &addr, "--servers", "3"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains(&format!("Consul simulator serving on http://{addr}")),
            "unexpected simulator banner: {line}"
        );
        Consul {
            url: format!("http://{addr}"),
            sim: Some(Proc {
                child,
                name: "simulator",
            }),
        }
    }

    /// The simulator's `{"requests", "parked"}`; `None` for a real agent.
    fn stats(&self) -> Option<(u64, u64)> {
        self.sim.as_ref()?;
        let host = self.url.trim_start_matches("http://");
        let body = http_get(host, "/sim/stats");
        let v: Value = serde_json::from_str(&body).unwrap();
        Some((
            v["requests"].as_u64().unwrap(),
            v["parked"].as_u64().unwrap(),
        ))
    }
}

fn describe(external: Option<&str>) -> String {
    match external {
        None => "the simulator (`rehydrator sim`, a child process; a fresh one per run)".into(),
        Some(addr) => format!("Consul at {addr}"),
    }
}

/// A plain HTTP/1.1 GET over a fresh loopback connection; the body.
fn http_get(host: &str, path: &str) -> String {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_owned()
}

fn work_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rehydrator-watch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A cluster name of this run's own, so receipts and locks from other runs (or another
/// bench against the same agent) do not mix in.
fn cluster_name(what: &str) -> String {
    format!("watch-bench-{}-{what}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Latency

struct Percentiles {
    p50: Duration,
    p90: Duration,
    p99: Duration,
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    v.sort();
    // Nearest rank.
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An arrival: when it was seen, and the event ID it was about.
type Arrival = (Instant, String);

/// Fires `count` events named `event`, each `spacing` after the previous fire (or at once
/// after the previous arrival when `spacing` is zero), and returns fire → arrival for each.
async fn fire_and_time(
    http: &awc::Client,
    url: &str,
    event: &str,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
    count: usize,
    spacing: Duration,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(count);
    let mut last_fire: Option<Instant> = None;
    for i in 0..count {
        if let Some(at) = last_fire {
            tokio::time::sleep_until((at + spacing).into()).await;
        }
        let fired = Instant::now();
        last_fire = Some(fired);
        let mut resp = http
            .put(format!("{url}/v1/event/fire/{event}"))
            .send_body(format!("bench {i}"))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "event fire refused");
        let id = resp.json::<Value>().await.unwrap()["ID"]
            .as_str()
            .unwrap()
            .to_owned();
        let (at, got) = tokio::time::timeout(Duration::from_secs(15), arrivals.recv())
            .await
            .unwrap_or_else(|_| panic!("event {i} ({id}) never arrived"))
            .unwrap();
        assert_eq!(got, id, "event {i} arrived as another event");
        out.push(at.saturating_duration_since(fired));
    }
    out
}

/// A thread of its own that loops a raw blocking `GET /v1/event/list` and reports each wake
/// with the newest event's ID, until `stop` is set (and a last event wakes it).
fn raw_waker(
    url: String,
    event: String,
    tx: mpsc::UnboundedSender<Arrival>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let http = awc::Client::builder()
                .timeout(Duration::from_secs(120))
                .finish();
            let list = |index: u64| {
                http.get(format!(
                    "{url}/v1/event/list?name={event}&index={index}&wait=60s"
                ))
                .send()
            };
            let mut index = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut resp = list(index).await.unwrap();
                let body = resp.body().limit(64 << 20).await.unwrap();
                let at = Instant::now();
                let new_index: u64 = resp
                    .headers()
                    .get("X-Consul-Index")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                let events: Value = serde_json::from_slice(&body).unwrap();
                let newest = events
                    .as_array()
                    .and_then(|l| l.last())
                    .and_then(|e| e["ID"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                // The first read is the baseline; a wait running out leaves the index as it was.
                if index != 0 && new_index != index {
                    let _ = tx.send((at, newest));
                }
                index = new_index;
            }
        })
    })
}

/// The tree's configuration for the latency run.
fn latency_toml(url: &str, event: &str, hook: &str) -> String {
    format!(
        r#"[cluster]
name = "{cluster}"
[consul]
address = "{url}"
[action.hook]
type = "http"
url = "{hook}"
[[watch]]
name = "bench-event"
type = "event"
event = "{event}"
action = "hook"
"#,
        cluster = cluster_name("latency"),
    )
}

/// One tree on a thread of its own (its own actix System, as `rehydrator run` has), until
/// `stop` fires; then it shuts down in order.
fn tree_thread(
    config: PathBuf,
    url: String,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let settings = rehydrator_config::load(&config).unwrap();
        actix_rt::System::new().block_on(async move {
            let client = Client::new(ConsulConfig::with_address(&url).unwrap()).unwrap();
            let ports = Ports {
                consul: Rc::new(ConsulAdapter::new(client, WatchPolicy::default())),
                webhook: Rc::new(AwcWebhook::default()),
                cloud: None,
                gates: Vec::new(),
                objects: None,
            };
            let tree = tree::start(&settings, "watch-bench", ports);
            let _ = stop.await;
            tree.shutdown().await;
        })
    })
}

async fn hook(tx: web::Data<mpsc::UnboundedSender<Arrival>>, body: web::Bytes) -> HttpResponse {
    let at = Instant::now();
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["trigger_id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let _ = tx.send((at, id));
    HttpResponse::Ok().finish()
}

struct Latency {
    events: usize,
    spacing: Duration,
    consul: Percentiles,
    tree: Percentiles,
    back_to_back: Percentiles,
    /// One plain read (`GET /v1/kv/<missing key>`) by the Consul client, as the Dispatcher's
    /// receipt lookup makes it: the unit the tree's extra latency is counted in.
    round_trip: Percentiles,
    /// The job's lock as the LockManager takes it: one `/v1/txn` (receipt absent, lock, read
    /// the watermarks) through the same adapter, with a session.
    txn: Percentiles,
    /// Consul requests the tree made per event (the simulator only).
    requests_per_event: Option<f64>,
}

fn latency(consul: &Consul, events: usize) -> Latency {
    let spacing = WatchPolicy::default().min_interval + Duration::from_millis(100);
    let url = consul.url.clone();
    let run = format!("{}", std::process::id());
    actix_rt::System::new().block_on(async move {
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();

        // Consul's own wake: a raw blocking GET on another thread.
        let raw_event = format!("watch-bench-raw-{run}");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let waker = raw_waker(url.clone(), raw_event.clone(), tx, stop.clone());
        // Its first read is the baseline: fire only once it has parked.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let raw = fire_and_time(&http, &url, &raw_event, &mut rx, WARMUP + events, spacing).await;
        stop.store(true, Ordering::SeqCst);
        let _ = http
            .put(format!("{url}/v1/event/fire/{raw_event}"))
            .send()
            .await;
        waker.join().unwrap();

        // One plain Consul read, for scale; 20 ms apart, so that both sides are idle before
        // it, as they are when an event comes.
        let client = Client::new(ConsulConfig::with_address(&url).unwrap()).unwrap();
        let missing = format!("watch-bench/{run}/round-trip");
        let mut trips = Vec::with_capacity(events);
        for _ in 0..WARMUP + events {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let t = Instant::now();
            client
                .kv_get(&missing, &QueryOptions::default())
                .await
                .unwrap();
            trips.push(t.elapsed());
        }

        // The job's lock transaction, as the LockManager sends it; released (untimed) after
        // each, as a job's end releases it.
        let adapter = ConsulAdapter::new(client.clone(), WatchPolicy::default());
        let session = adapter
            .session_create(&SessionSpec {
                name: format!("watch-bench-{run}"),
                ttl: Duration::from_secs(60),
                lock_delay: Duration::ZERO,
                check: None,
            })
            .await
            .unwrap();
        let mut txns = Vec::with_capacity(events);
        for i in 0..WARMUP + events {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let req = Acquire {
                key: format!("watch-bench/{run}/lock"),
                value: b"bench".to_vec(),
                session: session.clone(),
                unless: Some(format!("watch-bench/{run}/receipts/{i}")),
                read: Some(format!("watch-bench/{run}/watermarks/")),
            };
            let t = Instant::now();
            let got = adapter.kv_acquire(&req).await.unwrap();
            txns.push(t.elapsed());
            assert!(matches!(got, Acquired::Held { .. }), "{got:?}");
            adapter.kv_release(&req.key, &session).await.unwrap();
        }
        let _ = adapter.session_destroy(&session).await;
        let _ = adapter.kv_delete(&format!("watch-bench/{run}/lock")).await;

        // The tree: an event watch whose http action POSTs to a receiver here.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tx = web::Data::new(tx);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(tx.clone())
                .route("/hook", web::post().to(hook))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let hook_url = format!("http://{}/hook", server.addrs()[0]);
        let server = server.run();
        let server_handle = server.handle();
        actix_rt::spawn(server);
        let tree_event = format!("watch-bench-tree-{run}");
        let config = work_dir().join("latency.toml");
        std::fs::write(&config, latency_toml(&url, &tree_event, &hook_url)).unwrap();
        let (stop_tree, stopped) = tokio::sync::oneshot::channel();
        let tree = tree_thread(config, url.clone(), stopped);
        // Let the watch take its baseline and the LockManager its session.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = consul.stats();
        let spaced =
            fire_and_time(&http, &url, &tree_event, &mut rx, WARMUP + events, spacing).await;
        // The last job's receipt and release land after its POST.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let requests_per_event = match (before, consul.stats()) {
            (Some((r0, _)), Some((r1, _))) => {
                // Less the fires themselves.
                Some((r1 - r0) as f64 / (WARMUP + events) as f64 - 1.0)
            }
            _ => None,
        };
        // Back to back: each event fired as soon as the previous one's POST arrived.
        let b2b = fire_and_time(
            &http,
            &url,
            &tree_event,
            &mut rx,
            BACK_TO_BACK,
            Duration::ZERO,
        )
        .await;
        let _ = stop_tree.send(());
        tree.join().unwrap();
        server_handle.stop(false).await;
        if consul.sim.is_none() {
            // Leave a real agent as we found it: the run's receipts and locks.
            let _ = http
                .delete(format!(
                    "{url}/v1/kv/rehydrator/{}/?recurse",
                    cluster_name("latency")
                ))
                .send()
                .await;
        }
        Latency {
            events,
            spacing,
            consul: percentiles(raw[WARMUP..].to_vec()),
            tree: percentiles(spaced[WARMUP..].to_vec()),
            back_to_back: percentiles(b2b),
            round_trip: percentiles(trips[WARMUP..].to_vec()),
            txn: percentiles(txns[WARMUP..].to_vec()),
            requests_per_event,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Idle cost

fn idle_toml(url: &str, n: usize) -> String {
    let mut t = format!(
        r#"[cluster]
name = "{cluster}"
[consul]
address = "{url}"
[status]
listen = "127.0.0.1:0"
[action.noop]
type = "exec"
command = ["true"]
"#,
        cluster = cluster_name(&format!("idle-{n}")),
    );
    for i in 0..n {
        t.push_str(&format!(
            "[[watch]]\nname = \"k{i}\"\ntype = \"key\"\nkey = \"watch-bench/{}/k{i}\"\naction = \"noop\"\n",
            std::process::id()
        ));
    }
    t
}

/// What runs the idle watches.
#[derive(Clone, Copy, PartialEq)]
enum Subject {
    /// `rehydrator run` with N key watches: the whole replica.
    Replica,
    /// This bench re-run as `--probe-client`: N blocking `Client::kv_get`s parked in one
    /// process and nothing else, to tell the HTTP client's share from the actors'.
    Client,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Replica => "replica",
            Subject::Client => "client only",
        }
    }
}

struct Idle {
    subject: Subject,
    watches: usize,
    rss_kib: u64,
    cpu_pct: f64,
    /// Consul requests per minute; `None` against a real agent.
    req_per_min: Option<f64>,
    parked: Option<u64>,
    settle: Duration,
}

fn idle(external: Option<&str>, subject: Subject, n: usize, window: Duration) -> Option<Idle> {
    let limit = fd_soft_limit();
    if limit < n as u64 + FD_MARGIN {
        println!(
            "  skipping {n} watches: `ulimit -n` is {limit}, and the replica (and the simulator) \
             each need a descriptor per watch plus {FD_MARGIN}; raise it in the shell first"
        );
        return None;
    }
    let consul = Consul::start(external);
    let dir = work_dir();
    let log = dir.join(format!("idle-{n}.log"));
    let mut command = match subject {
        Subject::Replica => {
            let config = dir.join(format!("idle-{n}.toml"));
            std::fs::write(&config, idle_toml(&consul.url, n)).unwrap();
            let mut c = Command::new(env!("CARGO_BIN_EXE_rehydrator"));
            c.args(["run", "--config"])
                .arg(&config)
                .args(["--replica", &format!("watch-bench-{n}")]);
            c
        }
        Subject::Client => {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.args(["--probe-client", &consul.url, &n.to_string()]);
            c
        }
    };
    let child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut replica = Proc {
        child,
        name: subject.name(),
    };
    let pid = replica.pid();

    // Settled: every watch parked (the simulator says so), no request and under 5 % of a
    // core over the last second. A real agent cannot tell what is parked: wait for the CPU
    // to go quiet, and at least a few seconds.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut last = (cpu_ticks(pid), consul.stats());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        replica.assert_running(Some(&log));
        let now = (cpu_ticks(pid), consul.stats());
        let quiet_cpu = now.0 - last.0 <= 5;
        let settled = match (last.1, now.1) {
            (Some((r0, _)), Some((r1, parked))) => parked >= n as u64 && r1 == r0 && quiet_cpu,
            _ => quiet_cpu && started.elapsed() > Duration::from_secs(5 + n as u64 / 1000),
        };
        last = now;
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} watches did not settle in 300 s (parked, requests: {:?})",
            last.1
        );
    }
    let settle = started.elapsed();

    let (c0, s0, t0) = (cpu_ticks(pid), consul.stats(), Instant::now());
    std::thread::sleep(window);
    let (c1, s1, t1) = (cpu_ticks(pid), consul.stats(), Instant::now());
    replica.assert_running(Some(&log));
    let rss_kib = proc_kib(pid, "VmRSS:");
    let secs = (t1 - t0).as_secs_f64();
    let cpu_pct = (c1 - c0) as f64 * 10.0 / 1000.0 / secs * 100.0;
    let req_per_min = match (s0, s1) {
        (Some((r0, _)), Some((r1, _))) => Some((r1 - r0) as f64 * 60.0 / secs),
        _ => None,
    };
    let parked = s1.map(|(_, p)| p);
    if let Some(p) = parked {
        assert!(
            p >= n as u64,
            "only {p} of {n} watches were parked at the end of the window"
        );
    }
    drop(replica);
    drop(consul);
    Some(Idle {
        subject,
        watches: n,
        rss_kib,
        cpu_pct,
        req_per_min,
        parked,
        settle,
    })
}

// ---------------------------------------------------------------------------------------------

/// `--probe-client URL N`: parks N blocking KV reads with one `Client` and waits to be killed.
fn probe_client(url: &str, n: usize) {
    actix_rt::System::new().block_on(async move {
        let c = Client::new(ConsulConfig::with_address(url).unwrap()).unwrap();
        let run = std::process::id();
        let index = c
            .kv_get(
                &format!("watch-bench/{run}/probe"),
                &QueryOptions::default(),
            )
            .await
            .unwrap()
            .meta
            .index;
        for i in 0..n {
            let c = c.clone();
            actix_rt::spawn(async move {
                let opts = QueryOptions::blocking(index, Duration::from_secs(300));
                let _ = c.kv_get(&format!("watch-bench/{run}/k{i}"), &opts).await;
            });
        }
        std::future::pending::<()>().await;
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--probe-client") {
        return probe_client(&argv[2], argv[3].parse().unwrap());
    }
    let args = parse_args();
    let external = args.consul.as_deref();
    let described = describe(external);
    println!("watch: against {described}");

    let lat = args.latency.then(|| {
        println!(
            "latency: {} events per run, plus {WARMUP} warm-up events ...",
            args.events
        );
        let consul = Consul::start(external);
        latency(&consul, args.events)
    });

    let mut idles = Vec::new();
    if args.idle {
        for &n in &args.watches {
            for subject in [Subject::Replica, Subject::Client] {
                println!(
                    "idle: {} with {n} key watches, {} s window ...",
                    subject.name(),
                    args.window.as_secs_f64()
                );
                if let Some(i) = idle(external, subject, n, args.window) {
                    idles.push(i);
                }
            }
        }
    }

    println!();
    println!("watch benchmark, against {described}");
    if let Some(l) = &lat {
        println!();
        println!(
            "Event fire -> action start, {} events each, fired {} ms apart (more than the default \
             WatchPolicy min_interval of {} ms, which spaces calls after answers with no news):",
            l.events,
            l.spacing.as_millis(),
            WatchPolicy::default().min_interval.as_millis()
        );
        println!("  {:<44} {:>9} {:>9} {:>9}", "", "p50", "p90", "p99");
        let row = |name: &str, p: &Percentiles| {
            println!(
                "  {:<44} {:>6.3} ms {:>6.3} ms {:>6.3} ms",
                name,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99)
            )
        };
        row("Consul's own wake (raw blocking event/list)", &l.consul);
        row("the job's lock: one /v1/txn round trip", &l.txn);
        row("tree: fire -> http action's POST arrives", &l.tree);
        // The POST's arrival is the action's start plus its own request, about one plain
        // round trip: the action starts that much earlier.
        let start = ms(l.tree.p50) - ms(l.round_trip.p50);
        let budget = ms(l.consul.p50) + ms(l.txn.p50) + 0.3;
        println!(
            "  at p50: action start ~ {start:.3} ms (POST arrival less one plain round trip); \
             target wake + txn + 0.3 = {budget:.3} ms: {}; the rest, {:+.3} ms, is the actor \
             hops",
            if start <= budget { "met" } else { "MISSED" },
            start - ms(l.consul.p50) - ms(l.txn.p50)
        );
        row(
            &format!("tree, {BACK_TO_BACK} events back to back"),
            &l.back_to_back,
        );
        row(
            "one plain Consul read after idling (GET /v1/kv)",
            &l.round_trip,
        );
        if let Some(r) = l.requests_per_event {
            println!(
                "  Consul requests the tree made per event (watch, receipt, lock, ...): {r:.1}"
            );
        }
    }
    if !idles.is_empty() {
        println!();
        println!(
            "Idle, {} s window after settling: a replica (`rehydrator run`, child process) with N \
             key watches and one action; and, for its share, the Consul client alone (N blocking \
             KV reads parked by one `Client` in a child process):",
            args.window.as_secs_f64()
        );
        println!(
            "  {:<12} {:>7} {:>8} {:>10} {:>9} {:>10} {:>12} {:>7} {:>7}",
            "",
            "watches",
            "RSS MiB",
            "KiB/watch*",
            "CPU %core",
            "Consul r/m",
            "r/m per watch",
            "parked",
            "settled"
        );
        for i in &idles {
            let base = idles.iter().find(|b| b.subject == i.subject);
            let per_watch = match base {
                Some(b) if i.watches > b.watches => format!(
                    "{:.1}",
                    (i.rss_kib as f64 - b.rss_kib as f64) / (i.watches - b.watches) as f64
                ),
                _ => "-".into(),
            };
            let (rpm, per) = match i.req_per_min {
                Some(r) => (format!("{r:.1}"), format!("{:.4}", r / i.watches as f64)),
                None => ("n/a".into(), "n/a".into()),
            };
            println!(
                "  {:<12} {:>7} {:>8.1} {:>10} {:>9.2} {:>10} {:>12} {:>7} {:>6.0}s",
                i.subject.name(),
                i.watches,
                i.rss_kib as f64 / 1024.0,
                per_watch,
                i.cpu_pct,
                rpm,
                per,
                i.parked.map_or("n/a".into(), |p| p.to_string()),
                i.settle.as_secs_f64()
            );
        }
        println!("  * RSS above the same subject's first row, per extra watch.");
        let big = idles
            .iter()
            .find(|i| i.subject == Subject::Replica && i.watches == 10_000);
        if let Some(big) = big {
            let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
            println!(
                "  10,000 watches: {:.1} MiB RSS (target < 100 MB) {}, {:.2} % of a core \
                 (target < 1 %) {}",
                big.rss_kib as f64 / 1024.0,
                verdict((big.rss_kib as f64) * 1024.0 < 100e6),
                big.cpu_pct,
                verdict(big.cpu_pct < 1.0),
            );
        }
    }
    let _ = std::fs::remove_dir_all(work_dir());
}
