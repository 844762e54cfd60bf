//! Benchmark: what parked blocking queries cost the simulator, and that a write wakes only
//! the queries that read it. Run with `cargo bench --bench blocking_queries`.
//!
//! It starts the real `rehydrator sim` binary on a free loopback port, parks N blocking KV
//! queries over raw HTTP/1.1 connections (N = 10,000 unless BENCH_QUERIES says otherwise),
//! then reads the simulator process's resident memory and CPU time from /proc, and finally
//! writes one key and counts which queries answered. It prints figures; it asserts only what
//! makes the figures meaningless if false (every query parked, exactly the readers woke).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEYS: usize = 1000;

fn proc_field(pid: u32, file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// utime + stime of `pid`, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

struct Sim {
    child: Child,
    addr: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sim() -> Sim {
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
    // The simulator prints its URL once it is serving.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(&addr), "unexpected simulator banner: {line}");
    Sim { child, addr }
}

async fn request(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn header(resp: &str, name: &str) -> Option<u64> {
    resp.lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&name.to_ascii_lowercase())
        })
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

fn main() {
    let n: usize = std::env::var("BENCH_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let sim = start_sim();
        let pid = sim.child.id();
        let addr = sim.addr.clone();
        for k in 0..KEYS {
            request(&addr, "PUT", &format!("/v1/kv/bench/k{k}"), "v").await;
        }
        let resp = request(&addr, "GET", "/v1/kv/bench/k0", "").await;
        let index = header(&resp, "X-Consul-Index").unwrap();
        // Every key's ModifyIndex is at most the last write's: block on the newest index seen.
        let last = request(&addr, "GET", &format!("/v1/kv/bench/k{}", KEYS - 1), "").await;
        let block_at = header(&last, "X-Consul-Index").unwrap().max(index);

        let rss_before = proc_field(pid, "status", "VmRSS:");
        let started = Instant::now();
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let req = format!(
                "GET /v1/kv/bench/k{}?index={block_at}&wait=10m HTTP/1.1\r\nHost: bench\r\n\r\n",
                i % KEYS
            );
            s.write_all(req.as_bytes()).await.unwrap();
            conns.push(s);
        }
        let opened = started.elapsed();
        // Let the simulator read and park every request: its waiter count is not exposed over
        // HTTP, so wait until its CPU use stops moving.
        let mut last_ticks = cpu_ticks(pid);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t = cpu_ticks(pid);
            if t == last_ticks {
                break;
            }
            last_ticks = t;
        }
        let rss_parked = proc_field(pid, "status", "VmRSS:");
        let idle_from = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_ticks = cpu_ticks(pid) - idle_from;

        // One write to k7: exactly the queries on k7 must answer.
        let written = Instant::now();
        request(&addr, "PUT", "/v1/kv/bench/k7", "changed").await;
        let readers: Vec<usize> = (0..n).filter(|i| i % KEYS == 7).collect();
        let mut buf = vec![0u8; 4096];
        for &i in &readers {
            let got = tokio::time::timeout(Duration::from_secs(5), conns[i].read(&mut buf))
                .await
                .expect("a reader of the written key was not woken")
                .unwrap();
            assert!(got > 0);
        }
        let wake = written.elapsed();
        // Nobody else may have answered.
        let mut spurious = 0;
        for (i, c) in conns.iter_mut().enumerate() {
            if i % KEYS == 7 {
                continue;
            }
            if let Ok(Ok(got)) =
                tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await
            {
                if got > 0 {
                    spurious += 1;
                }
            }
        }

        let per_query = (rss_parked.saturating_sub(rss_before) as f64) * 1024.0 / n as f64;
        println!("blocking_queries: {n} parked over {KEYS} keys (opened in {opened:.2?})");
        println!(
            "  simulator RSS: {} KiB before, {} KiB parked: {:.0} bytes per parked query",
            rss_before, rss_parked, per_query
        );
        println!(
            "  simulator CPU while {n} queries idle for 3 s: {} ms",
            idle_ticks * 10
        );
        println!(
            "  one write woke {} readers of its key in {wake:.2?}; spurious wakes: {spurious}",
            readers.len()
        );
        assert_eq!(
            spurious, 0,
            "a write woke queries that did not read the key"
        );
        drop(sim);
    });
}
