//! The `rehydrator sim` command as a user runs it: the real binary on an ephemeral loopback
//! port, asked what the "done when" asks (a leader address, three voters), and bad
//! flags refused with a message naming the flag.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The simulator process; killed when the test ends, pass or fail.
struct SimProcess {
    child: Child,
    url: String,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_sim(servers: &str) -> SimProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .args(["sim", "--listen", "127.0.0.1:0", "--servers", servers])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the rehydrator binary starts");
    // It prints its URL once it is serving; port 0 means the line holds the real port.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in the simulator's banner: {line:?}"))
        .to_owned();
    SimProcess { child, url }
}

#[actix_rt::test]
async fn sim_binary_serves_a_leader_and_its_voters() {
    let sim = spawn_sim("3");
    common::bounded(async {
        let client = awc::Client::default();
        let mut resp = client
            .get(format!("{}/v1/status/leader", sim.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let leader: String = resp.json().await.unwrap();
        assert!(leader.ends_with(":8300"), "leader address: {leader:?}");

        let mut resp = client
            .get(format!("{}/v1/operator/raft/configuration", sim.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let cfg: serde_json::Value = resp.json().await.unwrap();
        let servers = cfg["Servers"].as_array().unwrap();
        let voters = servers.iter().filter(|s| s["Voter"] == true).count();
        assert_eq!(voters, 3, "raft configuration: {cfg}");
        let leaders: Vec<_> = servers.iter().filter(|s| s["Leader"] == true).collect();
        assert_eq!(leaders.len(), 1);
        assert_eq!(leaders[0]["Address"], serde_json::Value::String(leader));
    })
    .await;
}

#[test]
fn sim_binary_refuses_bad_flags_naming_them() {
    for (args, flag) in [
        (vec!["sim", "--servers", "0"], "--servers"),
        (vec!["sim", "--time-scale=-2"], "--time-scale"),
        (vec!["sim", "--listen", "not-an-address"], "--listen"),
        // A negative number after a space is a value, refused for what it means.
        (
            vec!["sim", "--stabilization", "-1"],
            "--stabilization: must be a number of seconds from 0 to 86400, got -1",
        ),
        (
            vec!["sim", "--time-scale", "-2"],
            "--time-scale: must be a positive number, got -2",
        ),
        (
            vec!["healthcheck", "--timeout", "1000d"],
            "must be at most 24h",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag),
            "{args:?}: error does not name {flag}: {err}"
        );
    }
}
