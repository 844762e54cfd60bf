//! `rehydrator demo` as a new user runs it: the real binary, which starts its own simulator and
//! its own replica processes. Checked: it exits 0, its summary's figures (servers replaced,
//! quorum never lost, the takeover after the chaos kill), the timeline picture (a lane per
//! server, old and new, with launch, voter and leave marks), and that no replica outlives it.
//! Also `--fail-launch` (a new machine failing at boot, launched again), and a bad flag refused
//! with exit 2 and a message naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::demo::{alive, replica_pids};

/// The demo with chaos: ~10 s of rollout plus a ~21 s takeover, on a loaded 2-core machine.
const DEMO_BOUND: Duration = Duration::from_secs(150);

/// The demo process; its process group (it and its replicas) is killed if the test ends first.
struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "rehydrator-cli-demo-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Demo {
    /// Starts `rehydrator <args>` with its stdout and stderr piped.
    fn spawn(args: &[&str], cwd: &Path) -> Self {
        Demo {
            child: Command::new(env!("CARGO_BIN_EXE_rehydrator"))
                .args(args)
                .current_dir(cwd)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Its own group, so that a timeout can end it and every replica it started.
                .process_group(0)
                .spawn()
                .unwrap(),
        }
    }
}

/// Runs `rehydrator <args>` to its end within `limit`; the test fails past it (and the drop
/// kills the demo and its replicas).
fn run_bounded(args: &[&str], cwd: &Path, limit: Duration) -> Output {
    let mut demo = Demo::spawn(args, cwd);
    // Drain the pipes on threads so a chatty demo never blocks on a full pipe.
    let mut out = demo.child.stdout.take().unwrap();
    let mut err = demo.child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < limit,
            "`rehydrator {}` did not finish within {limit:?}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The summary's value for `key` ("  key: value").
fn figure<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} in the summary:\n{stdout}"))
}

/// The `<g class="lane" ...>` elements of the picture, by server, with their marks.
fn lanes(svg: &str) -> Vec<(String, String, String)> {
    svg.split("<g class=\"lane\" ")
        .skip(1)
        .map(|lane| {
            let body = lane.split("</g>").next().unwrap();
            let attr = |name: &str| {
                body.split(&format!("{name}=\""))
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_owned()
            };
            (attr("data-server"), attr("data-image"), body.to_owned())
        })
        .collect()
}

fn assert_demo_passed(out: &Output, servers: usize, chaos: bool, svg_path: &Path) {
    assert_demo_passed_within(out, servers, chaos, svg_path, 120.0);
}

fn assert_demo_passed_within(
    out: &Output,
    servers: usize,
    chaos: bool,
    svg_path: &Path,
    max_total: f64,
) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        figure(&stdout, "servers replaced").starts_with(&format!("{servers} (image-a -> image-b)")),
        "{stdout}"
    );
    assert_eq!(figure(&stdout, "quorum"), "never lost", "{stdout}");
    let missing: u64 = figure(&stdout, "max voters missing").parse().unwrap();
    assert!(missing <= 1, "{stdout}");
    assert_eq!(figure(&stdout, "invariants"), "all held", "{stdout}");
    let takeovers: usize = figure(&stdout, "takeovers")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    if chaos {
        assert!(
            takeovers >= 1,
            "no takeover after the chaos kill:\n{stdout}"
        );
        assert!(stdout.contains("chaos: SIGKILL demo-"), "{stdout}");
    } else {
        assert_eq!(takeovers, 0, "{stdout}");
    }
    let total: f64 = figure(&stdout, "total time")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total > 0.0 && total < max_total, "total time {total}");

    // The replicas it started are gone with it.
    let pids = replica_pids(&stdout);
    assert_eq!(pids.len(), 3, "three replicas announced:\n{stdout}");
    for pid in pids {
        assert!(!alive(pid), "replica pid {pid} outlived the demo");
    }

    let svg = std::fs::read_to_string(svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let lanes = lanes(&svg);
    let old: Vec<_> = lanes.iter().filter(|l| l.1 == "image-a").collect();
    let new: Vec<_> = lanes.iter().filter(|l| l.1 == "image-b").collect();
    assert_eq!(old.len(), servers, "a lane per old server: {lanes:?}");
    assert_eq!(new.len(), servers, "a lane per new server: {lanes:?}");
    for (server, image, body) in &lanes {
        assert!(
            body.contains("class=\"mark launched\""),
            "{server} launch mark"
        );
        assert!(body.contains("class=\"mark voter\""), "{server} voter mark");
        if image == "image-a" {
            assert!(body.contains("class=\"mark left\""), "{server} leave mark");
        } else {
            assert!(
                !body.contains("class=\"mark left\""),
                "{server} is still there"
            );
        }
    }
    assert_eq!(
        svg.contains("class=\"marker kill\""),
        chaos,
        "a kill marker exactly when there was chaos"
    );
    assert_eq!(svg.contains("class=\"marker takeover\""), chaos);
}

#[test]
fn demo_with_chaos_rolls_three_servers_and_survives_the_killed_holder() {
    let dir = scratch("chaos");
    let svg = dir.join("timeline.svg");
    let out = run_bounded(
        &[
            "demo",
            "--servers",
            "3",
            "--replicas",
            "3",
            "--chaos",
            "--seed",
            "7",
            "--timeline",
            svg.to_str().unwrap(),
        ],
        &dir,
        DEMO_BOUND,
    );
    assert_demo_passed(&out, 3, true, &svg);
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A kill that lands in the last step (this seed's plan: after 5 cloud actions): a survivor
/// finishes the rollout, and the summary reports the takeover and its wait, not "finished
/// before the planned kill" with the wait counted as overhead.
#[test]
fn a_kill_in_the_last_step_is_reported_as_a_takeover() {
    let dir = scratch("last-step");
    let svg = dir.join("timeline.svg");
    let out = run_bounded(
        &[
            "demo",
            "--chaos",
            "--seed",
            "11321246294793943793",
            "--timeline",
            svg.to_str().unwrap(),
        ],
        &dir,
        DEMO_BOUND,
    );
    assert_demo_passed(&out, 3, true, &svg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(5 cloud actions done)"), "{stdout}");
    assert!(
        !stdout.contains("finished before the planned kill"),
        "{stdout}"
    );
    assert!(stdout.contains("takeover waits:"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_rolls_five_servers_without_chaos() {
    let dir = scratch("five");
    let out = run_bounded(&["demo", "--servers", "5"], &dir, DEMO_BOUND);
    // The default timeline path is in the working directory.
    assert_demo_passed(&out, 5, false, &dir.join("rehydrator-demo.svg"));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `demo --asg`: an instance refresh of a five-server group, without and with the guard. The
/// guarded column keeps every invariant (the exit status says so too); the unguarded one is
/// whatever the group did, read from the same summary; both timelines are in one picture.
#[test]
fn demo_asg_compares_a_refresh_without_and_with_the_guard() {
    let dir = scratch("asg");
    let out = run_bounded(
        &["demo", "--asg", "--servers", "5", "--replicas", "2"],
        &dir,
        DEMO_BOUND,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |key: &str| -> (String, String) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key:?} row:\n{stdout}"));
        let cells: Vec<&str> = line[key.len()..].split_whitespace().collect();
        (cells[0].to_owned(), cells[1].to_owned())
    };
    assert!(stdout.contains("baseline failure tolerance 2"), "{stdout}");
    let (_, guarded) = row("quorum lost (times)");
    assert_eq!(guarded, "0", "{stdout}");
    let (unguarded_ft, guarded_ft) = row("lowest failure tolerance");
    assert_eq!(guarded_ft, "2", "{stdout}");
    let (unguarded_leader, guarded_leader) = row("leader terminated while leading");
    assert_eq!(guarded_leader, "0", "{stdout}");
    // What the group does without the guard, as the simulator recorded it: below the baseline
    // or the leader terminated while it led.
    assert!(
        unguarded_ft != "2" || unguarded_leader != "0",
        "the unguarded refresh showed no cost:\n{stdout}"
    );
    let (_, end) = row("every server a healthy voter at the end");
    assert_eq!(end, "yes");
    let svg = std::fs::read_to_string(dir.join("rehydrator-demo.svg")).unwrap();
    assert!(
        svg.contains("Instance refresh without the guard")
            && svg.contains("Instance refresh with the lifecycle guard"),
        "both timelines in one picture"
    );
    assert_eq!(lanes(&svg).len(), 20, "ten lanes each: five old, five new");
    println!("{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `demo --consul-bin`: the same demo on real Consul agents (`CONSUL_BIN`, Debian's 1.8.7 in
/// CI) started through the process backend, with the chaos kill: the same verdict, summary and
/// picture, and no agent outlives it.
#[test]
fn demo_on_real_consul_with_chaos_rolls_three_servers() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    let dir = scratch("real");
    let svg = dir.join("timeline.svg");
    let out = run_bounded(
        &[
            "demo",
            "--consul-bin",
            bin.to_str().unwrap(),
            "--chaos",
            "--seed",
            "3",
            "--timeline",
            svg.to_str().unwrap(),
        ],
        &dir,
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Real Consul 1."), "{stdout}");
    assert_demo_passed_within(&out, 3, true, &svg, 240.0);
    // The agents' data directory the demo named; no process runs from it any more.
    let data = stdout
        .lines()
        .find_map(|l| l.split("agents' logs in ").nth(1))
        .map(|d| {
            d.trim_end_matches('.')
                .trim_end_matches("/machines")
                .to_owned()
        })
        .unwrap_or_else(|| panic!("no agents' directory announced:\n{stdout}"));
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&data) && c.contains("agent"))
        .collect();
    assert!(
        survivors.is_empty(),
        "agents outlived the demo: {survivors:?}"
    );
    println!("{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--fail-launch`: the first new server's machine fails while it boots. The demo still exits
/// 0 with every invariant held, its summary counts one failed launch, and the picture has one
/// new lane more than servers, which never became a voter.
#[test]
fn demo_with_a_failed_launch_launches_again_and_completes() {
    let dir = scratch("fail-launch");
    let svg = dir.join("timeline.svg");
    let out = run_bounded(
        &["demo", "--fail-launch", "--timeline", svg.to_str().unwrap()],
        &dir,
        DEMO_BOUND,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}
{stdout}",
        out.status
    );
    assert!(stdout.contains("failed while booting"), "{stdout}");
    assert!(
        figure(&stdout, "failed launches").starts_with("1 (recorded once each"),
        "{stdout}"
    );
    assert_eq!(figure(&stdout, "quorum"), "never lost", "{stdout}");
    assert_eq!(figure(&stdout, "invariants"), "all held", "{stdout}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    let new: Vec<_> = lanes(&svg)
        .into_iter()
        .filter(|l| l.1 == "image-b")
        .collect();
    assert_eq!(
        new.len(),
        4,
        "three replacements and the failed one: {new:?}"
    );
    let never_voted = new
        .iter()
        .filter(|l| !l.2.contains("class=\"mark voter\""))
        .count();
    assert_eq!(never_voted, 1, "{new:?}");
    println!("{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_refuses_bad_flags_naming_them() {
    let dir = scratch("bad");
    for (args, names) in [
        (vec!["demo", "--servers", "0"], "--servers"),
        (vec!["demo", "--replicas", "1", "--chaos"], "--chaos"),
        (
            vec!["demo", "--consul-bin", "/bin/true", "--fail-launch"],
            "--fail-launch",
        ),
    ] {
        let out = run_bounded(&args, &dir, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing started: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "no timeline written for a refused run"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A demo killed outright gets no chance to stop its replicas: they stop themselves when the
/// pipe the demo holds on their stdin closes, rather than retrying a dead simulator forever.
#[test]
fn replicas_stop_when_the_demo_is_sigkilled() {
    const REPLICAS: usize = 3;
    let dir = scratch("sigkill");
    // Fired late, so the kill lands while the replicas idle on their watches.
    let mut demo = Demo::spawn(
        &[
            "demo",
            "--replicas",
            &REPLICAS.to_string(),
            "--fire-after",
            "120s",
        ],
        &dir,
    );
    let stdout = BufReader::new(demo.child.stdout.take().unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica_pids(&printed).len() < REPLICAS {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => printed.push_str(&(line + "\n")),
            Err(e) => panic!("the demo did not announce {REPLICAS} replicas ({e}):\n{printed}"),
        }
    }
    let pids = replica_pids(&printed);
    assert!(pids.iter().all(|pid| alive(*pid)), "{printed}");

    // SIGKILL to the demo alone, not its group.
    demo.child.kill().unwrap();
    demo.child.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(40);
    while let Some(pid) = pids.iter().find(|pid| alive(**pid)) {
        assert!(
            Instant::now() < deadline,
            "replica pid {pid} outlived the SIGKILLed demo by 40 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
