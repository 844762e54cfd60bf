//! The operator commands as an operator runs them: the real binary (`fire`, `status`, `pause`,
//! `resume`, `plan`) against an in-process simulator on an ephemeral loopback port. Checked
//! against what Consul then holds (the event list, the pause key) and against the parsed
//! `status --json` report; plus a whole rollout fired by `rehydrator fire` and watched through
//! `status`, and the errors an operator meets (Consul unreachable, a bad file, `plan` without
//! a rollout), with their exit statuses and without the token.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use rehydrator::status::{ServerSource, StatusReport};
use rehydrator_actors::plan::RolloutState;
use rehydrator_actors::tree;
use serde_json::{json, Value};

/// How long one command may take; they talk to a local simulator.
const COMMAND_BOUND: Duration = Duration::from_secs(20);

/// A token the commands are given and must never print.
const TOKEN: &str = "s3cr3t-t0ken-never-printed";

/// The shared rig (a fast simulator, an HTTP client, a scratch directory) with the commands.
struct Rig(common::rig::Rig);

impl std::ops::Deref for Rig {
    type Target = common::rig::Rig;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Rig {
    /// A fast simulator (boot, stabilization, election shrunk) and a scratch directory.
    fn new(name: &str) -> Self {
        Self(common::rig::Rig::new(&format!("cli-{name}"), 3))
    }

    /// The rollout configuration (cluster `roll`, 3 servers, the simulator's cloud), written
    /// to a file.
    fn config(&self) -> PathBuf {
        let text = common::rollout::config(
            "roll",
            3,
            &self.sim.url(),
            "type = \"sim\"",
            "stable_timeout = \"1m\"",
        );
        let path = self.dir.join("rollout.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `rehydrator <args>` with Consul's address (and a token) in its environment.
    async fn cli(&self, args: &[&str]) -> Output {
        cli(args, &[("CONSUL_HTTP_ADDR", &self.sim.url())]).await
    }

    async fn register_image(&self, id: &str) {
        let (status, body) = self
            .send_raw("POST", "/sim/images", Some(json!({ "id": id })))
            .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    }

    /// `status --json` with `extra`, polled until the report shows the rollout completed.
    async fn until_completed(&self, extra: &[&str]) -> StatusReport {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(extra);
        common::eventually(
            "the rollout to complete",
            Duration::from_secs(45),
            || async {
                // A leadership transfer mid-rollout can fail one read ("No cluster leader").
                let out = self.cli(&args).await;
                let r: StatusReport = serde_json::from_slice(&out.stdout).ok()?;
                r.rollout
                    .as_ref()
                    .is_some_and(|ro| matches!(ro.state, RolloutState::Completed { .. }))
                    .then_some(r)
            },
        )
        .await
    }

    async fn status(&self, extra: &[&str]) -> StatusReport {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(extra);
        let out = ok(self.cli(&args).await);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    }
}

/// Runs the binary off the test's thread (the simulator's timers share it) and kills it if
/// it outlives `COMMAND_BOUND`.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehydrator"));
    cmd.args(args)
        .env_remove("CONSUL_HTTP_TOKEN_FILE")
        .env_remove("CONSUL_HTTP_SSL")
        .env("CONSUL_HTTP_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let waited = actix_rt::time::timeout(
        COMMAND_BOUND,
        actix_rt::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(out) => {
            let out = out.unwrap().unwrap();
            for stream in [&out.stdout, &out.stderr] {
                assert!(
                    !String::from_utf8_lossy(stream).contains(TOKEN),
                    "rehydrator {args:?} printed the token"
                );
            }
            out
        }
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("rehydrator {args:?} did not finish within {COMMAND_BOUND:?}");
        }
    }
}

/// The command's stdout, after checking it exited 0.
fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

#[actix_rt::test]
async fn fire_sends_the_event_with_its_payload() {
    let rig = Rig::new("fire");
    common::bounded(async {
        let id = ok(rig.cli(&["fire", "--payload", "hello"]).await);
        let id = id.trim();
        assert_eq!(id.len(), 36, "an event ID (UUID): {id:?}");

        let file = rig.dir.join("payload.json");
        std::fs::write(&file, br#"{"ami":"ami-123"}"#).unwrap();
        let at_file = format!("@{}", file.display());
        let custom = ok(rig
            .cli(&["fire", "--name", "custom", "--payload", &at_file])
            .await);

        let events = rig.json("/v1/event/list").await;
        let events = events.as_array().unwrap();
        let find = |id: &str| {
            events
                .iter()
                .find(|e| e["ID"] == id)
                .unwrap_or_else(|| panic!("event {id} not listed: {events:?}"))
                .clone()
        };
        let decode = |e: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(e["Payload"].as_str().unwrap())
                .unwrap()
        };
        let e = find(id);
        assert_eq!(e["Name"], "consul-rehydrate");
        assert_eq!(decode(&e), b"hello");
        let e = find(custom.trim());
        assert_eq!(e["Name"], "custom");
        assert_eq!(decode(&e), br#"{"ami":"ami-123"}"#);

        // A payload file that is not there is bad input: exit 2, naming it.
        let out = rig
            .cli(&["fire", "--payload", "@/nonexistent/payload"])
            .await;
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/payload"));
    })
    .await;
}

#[actix_rt::test]
async fn status_lists_the_servers_from_the_catalog_and_from_the_cloud() {
    let rig = Rig::new("status");
    common::bounded(async {
        // Without a configuration or a name, and no cluster in Consul: nothing to guess from.
        let out = rig.cli(&["status"]).await;
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("holds no rehydrator cluster"), "{stderr}");
        // Named: the catalog's `consul` nodes, image from node meta.
        let report = rig.status(&["--cluster", "default"]).await;
        assert_eq!(report.cluster, "default");
        assert_eq!(report.source, ServerSource::Catalog);
        assert_eq!(report.servers.len(), 3, "{report:?}");
        assert_eq!(report.servers.iter().filter(|s| s.leader).count(), 1);
        assert!(report
            .servers
            .iter()
            .all(|s| s.image.as_deref() == Some("image-a") && s.voter && s.healthy));
        assert!(report.healthy);
        assert_eq!(report.failure_tolerance, 1);
        let leader = report.servers.iter().find(|s| s.leader).unwrap();
        assert_eq!(report.leader.as_deref(), Some(leader.node.as_str()));
        assert!(report.rollout.is_none() && !report.paused);

        // With the rollout's configuration: the cloud's machines, and the newest image.
        let config = rig.config();
        rig.register_image("image-b").await;
        let report = rig.status(&["--config", config.to_str().unwrap()]).await;
        assert_eq!(report.cluster, "roll");
        assert_eq!(report.source, ServerSource::Cloud);
        assert_eq!(
            report.newest_image.as_ref().map(|i| i.id.as_str()),
            Some("image-b")
        );
        assert_eq!(report.servers.len(), 3);
        assert!(report
            .servers
            .iter()
            .all(|s| s.machine.is_some() && s.outdated == Some(true) && s.age_secs.is_some()));

        // The human view says the same.
        let text = ok(rig
            .cli(&["status", "--config", config.to_str().unwrap()])
            .await);
        for want in [
            "cluster roll",
            "autopilot: healthy, failure tolerance 1",
            "newest image: image-b",
            "image-a (outdated)",
            "paused: no",
            "rollout: none recorded",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    })
    .await;
}

#[actix_rt::test]
async fn pause_shows_in_status_holds_the_plan_and_resume_clears_it() {
    let rig = Rig::new("pause");
    common::bounded(async {
        let config = rig.config();
        let config = config.to_str().unwrap();
        rig.register_image("image-b").await;

        let out = ok(rig
            .cli(&["pause", "--config", config, "--reason", "first"])
            .await);
        assert!(out.contains("Paused cluster roll"), "{out}");
        assert!(!out.contains("already paused"), "{out}");
        // A second pause says whose it replaces.
        let out = ok(rig
            .cli(&["pause", "--config", config, "--reason", "change freeze"])
            .await);
        assert!(out.contains("It was already paused by "), "{out}");
        assert!(
            out.contains("(first); this pause replaces that record"),
            "{out}"
        );
        let (status, body) = rig
            .send_raw("GET", "/v1/kv/rehydrator/roll/pause?raw", None)
            .await;
        assert_eq!(status, 200, "the pause key is written");
        let written: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(written["reason"], "change freeze");

        // The one cluster Consul holds is found without being named.
        let report = rig.status(&[]).await;
        assert_eq!(report.cluster, "roll");
        assert!(report.paused);
        assert_eq!(
            report.pause.as_ref().and_then(|p| p.reason.as_deref()),
            Some("change freeze")
        );
        let text = ok(rig.cli(&["status", "--config", config]).await);
        assert!(text.contains("paused: YES by "), "{text}");
        assert!(text.contains(": change freeze"), "{text}");

        // The plan: a consul-rehydrate would record the start, then wait because paused.
        let plan = ok(rig.cli(&["plan", "--config", config]).await);
        assert!(plan.contains("paused: YES"), "{plan}");
        assert!(
            plan.contains("spin-up on consul-rehydrate: start — start a rollout to image-b"),
            "{plan}"
        );
        assert!(
            plan.contains("then: wait — paused by the operator"),
            "{plan}"
        );

        let out = ok(rig.cli(&["resume", "--config", config]).await);
        assert!(out.contains("Resumed cluster roll"), "{out}");
        let (status, _) = rig
            .send_raw("GET", "/v1/kv/rehydrator/roll/pause?raw", None)
            .await;
        assert_eq!(status, 404, "the pause key is gone");
        let report = rig.status(&["--config", config]).await;
        assert!(!report.paused && report.pause.is_none());
        let plan: Value =
            serde_json::from_str(&ok(rig.cli(&["plan", "--config", config, "--json"]).await))
                .unwrap();
        assert_eq!(plan["paused"], false);
        assert_eq!(plan["decisions"][0]["then"]["step"], "launch", "{plan}");

        // Resuming again is harmless.
        let out = ok(rig.cli(&["resume", "--config", config]).await);
        assert!(out.contains("was not paused"), "{out}");
    })
    .await;
}

#[actix_rt::test]
async fn several_clusters_are_named_not_guessed_and_consul_cli_flags_are_refused() {
    let rig = Rig::new("clusters");
    common::bounded(async {
        for cluster in ["blue", "green"] {
            ok(rig.cli(&["pause", "--cluster", cluster]).await);
        }
        let out = rig.cli(&["resume"]).await;
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("holds 2 rehydrator clusters (blue, green)"),
            "{stderr}"
        );
        // The consul CLI's spelling: refused, saying where the setting goes; nothing done.
        let out = rig
            .cli(&[
                "resume",
                "--cluster",
                "blue",
                "-http-addr=http://127.0.0.1:1",
            ])
            .await;
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("-http-addr: that is the consul CLI's flag"),
            "{stderr}"
        );
        assert!(stderr.contains("CONSUL_HTTP_ADDR"), "{stderr}");
        let (status, _) = rig
            .send_raw("GET", "/v1/kv/rehydrator/blue/pause?raw", None)
            .await;
        assert_eq!(status, 200, "still paused");
    })
    .await;
}

/// `resume` moves a paused rollout on by itself: the replicas watch the pause key. The
/// replica here has no timer, so nothing else would trigger the step that the pause held.
#[actix_rt::test]
async fn resume_moves_a_paused_rollout_on_without_a_timer() {
    let rig = Rig::new("resume");
    let timer = "[[watch]]\nname = \"timer\"\ntype = \"schedule\"\nevery = \"1s\"\nactions = [\"spin-up\", \"spin-down\"]\n";
    let text = std::fs::read_to_string(rig.config()).unwrap();
    assert!(text.contains(timer), "{text}");
    let config = rig.dir.join("no-timer.toml");
    std::fs::write(&config, text.replace(timer, "")).unwrap();
    let settings = rehydrator_config::load_with_env(&config, &HashMap::new()).unwrap();
    let replica = tree::start(&settings, "replica-1", rig.sim_ports());
    common::bounded(async {
        let config = config.to_str().unwrap();
        rig.register_image("image-b").await;
        ok(rig.cli(&["pause", "--config", config]).await);
        common::eventually(
            "the replica's watches to park",
            Duration::from_secs(10),
            || async {
                (rig.json("/sim/stats").await["parked"].as_u64().unwrap_or(0) >= 2).then_some(())
            },
        )
        .await;
        ok(rig.cli(&["fire", "--config", config]).await);
        // Held by the pause: the rollout is recorded, and waits.
        let held = common::eventually(
            "the rollout to wait on the pause",
            Duration::from_secs(10),
            || async {
                let r = rig.status(&["--config", config]).await;
                let ro = r.rollout.clone()?;
                ro.waiting
                    .as_deref()
                    .is_some_and(|w| w.contains("paused"))
                    .then_some(r)
            },
        )
        .await;
        assert_eq!(held.progress.as_ref().map(|p| p.launches), Some(0));
        ok(rig.cli(&["resume", "--config", config]).await);
        let report = rig.until_completed(&["--config", config]).await;
        let p = report.progress.as_ref().unwrap();
        assert_eq!((p.launches, p.retirements), (3, 3));
    })
    .await;
    common::bounded(replica.shutdown()).await;
}

#[actix_rt::test]
async fn plan_before_and_after_a_new_image_changes_nothing() {
    let rig = Rig::new("plan");
    common::bounded(async {
        let config = rig.config();
        let config = config.to_str().unwrap();
        let before: Value =
            serde_json::from_str(&ok(rig.cli(&["plan", "--config", config, "--json"]).await))
                .unwrap();
        assert_eq!(before["newest_image"], "image-a");
        assert_eq!(before["outdated"], 0);
        assert_eq!(before["decisions"][0]["trigger"], "any");
        assert_eq!(before["decisions"][0]["step"], "idle");
        assert!(before["decisions"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("every server runs the newest image image-a"));

        rig.register_image("image-b").await;
        let text = ok(rig.cli(&["plan", "--config", config]).await);
        for want in [
            "servers: 3 of 3 desired, 3 not on the newest image image-b",
            "spin-up on consul-rehydrate: start — start a rollout to image-b",
            "then: launch — launch one server on image-b",
            "spin-up on other triggers: idle — servers are outdated; waiting for consul-rehydrate",
            "spin-down: idle — no rollout",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // Read-only: no record, no machine.
        let (status, _) = rig
            .send_raw("GET", "/v1/kv/rehydrator/roll/rollout", None)
            .await;
        assert_eq!(status, 404);
        assert_eq!(rig.json("/sim/servers").await.as_array().unwrap().len(), 3);
    })
    .await;
}

#[actix_rt::test]
async fn status_shows_a_recorded_rollout_in_progress() {
    let rig = Rig::new("record");
    common::bounded(async {
        let config = rig.config();
        let config = config.to_str().unwrap();
        rig.register_image("image-b").await;
        let record = json!({
            "id": "r42", "target_image": "image-b", "started_at": 1_700_000_000_000u64,
            "baseline_tolerance": 1, "state": "active",
            "launches": [{"machine": "consul-server-9", "at": 1_700_000_001_000u64, "token": "r42-o3-n3"}],
            "retirements": [],
            "waiting": "new server consul-server-9 is not yet a stable voter"
        });
        let (status, _) = rig
            .send_raw("PUT", "/v1/kv/rehydrator/roll/rollout", Some(record))
            .await;
        assert_eq!(status, 200);

        let report = rig.status(&["--config", config]).await;
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let r = report.rollout.as_ref().unwrap();
        assert_eq!((r.id.as_str(), r.state.clone()), ("r42", RolloutState::Active));
        let p = report.progress.as_ref().unwrap();
        assert_eq!((p.on_target, p.total, p.launches, p.retirements), (0, 3, 1, 0));
        assert!(p.waiting.as_deref().unwrap().contains("not yet a stable voter"));

        let text = ok(rig.cli(&["status", "--config", config]).await);
        for want in [
            "rollout r42 to image-b: active",
            "0/3 servers on the target; 1 launched, 0 retired",
            "waiting: new server consul-server-9 is not yet a stable voter",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }

        // Without the file, --cluster finds the same record; with no cloud, the servers come
        // from the catalog and are outdated against the active rollout's target.
        let report = rig.status(&["--cluster", "roll"]).await;
        assert_eq!(report.source, ServerSource::Catalog);
        assert_eq!(report.rollout.map(|r| r.id), Some("r42".to_owned()));
        assert!(report.servers.iter().all(|s| s.outdated == Some(true)));
        let other = rig.status(&["--cluster", "elsewhere"]).await;
        assert!(other.rollout.is_none());
    })
    .await;
}

#[actix_rt::test]
async fn a_rollout_fired_by_the_cli_completes_and_status_shows_it() {
    let rig = Rig::new("rollout");
    let config = rig.config();
    let settings = rehydrator_config::load_with_env(&config, &HashMap::new()).unwrap();
    let ports = rig.sim_ports();
    let replica = tree::start(&settings, "replica-1", ports);
    common::bounded(async {
        let config = config.to_str().unwrap();
        rig.register_image("image-b").await;
        // The event watch must have its baseline first: a first read does not replay events.
        common::eventually(
            "the replica's watches to park",
            Duration::from_secs(10),
            || async {
                (rig.json("/sim/stats").await["parked"].as_u64().unwrap_or(0) >= 2).then_some(())
            },
        )
        .await;
        let id = ok(rig.cli(&["fire", "--config", config]).await);

        // Every receipt: the 1s timer adds two a second, and the event's must be among them.
        let report = rig
            .until_completed(&["--receipts", "1000", "--config", config])
            .await;
        let p = report.progress.as_ref().unwrap();
        assert_eq!(p.state, "completed");
        assert_eq!(
            (p.on_target, p.total, p.launches, p.retirements),
            (3, 3, 3, 3)
        );
        assert!(report
            .servers
            .iter()
            .all(|s| s.image.as_deref() == Some("image-b") && s.outdated == Some(false)));
        // The receipts name the trigger the CLI fired.
        assert!(
            report.receipts.iter().any(|r| r.trigger_id == id.trim()),
            "no receipt for event {id}: {:?}",
            report.receipts
        );
        assert!(
            report.locks.iter().any(|l| l.name == "step"),
            "{:?}",
            report.locks
        );

        let text = ok(rig.cli(&["status", "--config", config]).await);
        assert!(text.contains("to image-b: completed"), "{text}");
        assert!(
            text.contains("3/3 servers on the target; 3 launched, 3 retired"),
            "{text}"
        );
        assert!(text.contains("last receipts:"), "{text}");
        // The replica, from its liveness check on the agent.
        assert_eq!(
            report
                .replicas
                .iter()
                .map(|p| (p.replica.as_str(), p.alive()))
                .collect::<Vec<_>>(),
            [("replica-1", true)],
            "{:?}",
            report.replicas
        );
        assert!(text.contains("replicas: replica-1 (alive, node "), "{text}");
    })
    .await;
    common::bounded(replica.shutdown()).await;
    // Stopped, it takes its check with it.
    let config = config.to_str().unwrap();
    let report = common::bounded(rig.status(&["--config", config])).await;
    assert!(report.replicas.is_empty(), "{:?}", report.replicas);
}

#[actix_rt::test]
async fn errors_name_what_is_wrong_and_exit_non_zero() {
    let rig = Rig::new("errors");
    common::bounded(async {
        // Nothing listens on a port just freed.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", free.local_addr().unwrap());
        drop(free);
        for args in [&["status"][..], &["fire"], &["pause"], &["resume"]] {
            let out = cli(args, &[("CONSUL_HTTP_ADDR", &addr)]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.contains(&addr),
                "{args:?} does not name {addr}: {stderr}"
            );
            assert!(stderr.contains("unreachable"), "{args:?}: {stderr}");
        }

        // A bad file: exit 2 with the file and the field, as check-config.
        let bad = rig.dir.join("bad.toml");
        std::fs::write(&bad, "[cluster]\nname = \"x\"\ndesired_servers = 0\n").unwrap();
        let out = rig
            .cli(&["status", "--config", bad.to_str().unwrap()])
            .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{}: cluster.desired_servers", bad.display())),
            "{stderr}"
        );
        let missing = rig.dir.join("missing.toml");
        let out = rig
            .cli(&["plan", "--config", missing.to_str().unwrap()])
            .await;
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));

        // plan needs a rollout: without a file, and with a file that configures none.
        let out = rig.cli(&["plan"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--config"), "{stderr}");
        let plain = rig.dir.join("plain.toml");
        std::fs::write(
            &plain,
            format!(
                "[cluster]\nname = \"x\"\n[consul]\naddress = \"{}\"\n",
                rig.sim.url()
            ),
        )
        .unwrap();
        let out = rig
            .cli(&["plan", "--config", plain.to_str().unwrap()])
            .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("plain.toml") && stderr.contains("spin-up"),
            "{stderr}"
        );
    })
    .await;
}

/// A stopped agent (SIGSTOP) accepts connections and never answers: a listener nobody accepts
/// from behaves the same. Every command gives up within `--timeout`, naming Consul's address,
/// with exit status 1; a configuration with a rollout names the cloud too.
#[actix_rt::test]
async fn a_consul_that_never_answers_ends_every_command_within_its_timeout() {
    let rig = Rig::new("silent");
    common::bounded(async {
        // The kernel completes the handshake for the backlog; nothing ever reads or answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", silent.local_addr().unwrap());
        for args in [&["status"][..], &["fire"], &["pause"], &["resume"]] {
            let mut with_timeout = args.to_vec();
            with_timeout.extend(["--timeout", "1s"]);
            let started = std::time::Instant::now();
            let out = cli(&with_timeout, &[("CONSUL_HTTP_ADDR", &addr)]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            // The command's deadline or the request's, whichever ends first: both say so.
            assert!(
                stderr.contains(&format!("Consul at {addr} is not answering")),
                "{args:?}: {stderr}"
            );
            println!(
                "{args:?} against a silent Consul: exit 1 after {:.2?}",
                started.elapsed()
            );
        }
        // With a rollout configuration, the cloud may be the silent one: the command's deadline
        // names both; a Consul request's own timeout (as long, so either may end first) names
        // Consul.
        let text = common::rollout::config("roll", 3, &addr, "type = \"sim\"", "");
        let path = rig.dir.join("silent.toml");
        std::fs::write(&path, text).unwrap();
        let out = cli(
            &[
                "status",
                "--config",
                path.to_str().unwrap(),
                "--timeout",
                "1s",
            ],
            &[],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("Consul at {addr} or the cloud is not answering"))
                || stderr.contains(&format!("Consul at {addr} is not answering")),
            "{stderr}"
        );
        // A timeout out of range is bad input.
        let out = cli(
            &["status", "--timeout", "0s"],
            &[("CONSUL_HTTP_ADDR", &addr)],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--timeout"), "{stderr}");
        drop(silent);
    })
    .await;
}

/// A rollout record that does not decode, with the cluster one server over its size (the lost
/// record's launch): the replica takes no step, says so in its receipt, metric and `status`,
/// and `rehydrator repair` rebuilds a record from the cluster, adopting the extra server, from
/// which the rollout completes.
#[actix_rt::test]
async fn a_record_that_does_not_decode_stops_every_step_until_repair_rebuilds_it() {
    let rig = Rig::new("repair");
    let config = rig.config();
    let settings = rehydrator_config::load_with_env(&config, &HashMap::new()).unwrap();
    let replica = tree::start(&settings, "replica-1", rig.sim_ports());
    common::bounded(async {
        let config = config.to_str().unwrap();
        rig.register_image("image-b").await;
        // The lost record's launch: a server on image-b, 4 of 3.
        rig.send(
            "POST",
            "/sim/servers",
            Some(json!({"image": "image-b", "token": "lost-launch"})),
        )
        .await;
        let (status, _) = rig
            .send_raw(
                "PUT",
                "/v1/kv/rehydrator/roll/rollout",
                Some(json!({"launches": "many"})),
            )
            .await;
        assert_eq!(status, 200);
        common::eventually(
            "the replica's watches to park",
            Duration::from_secs(10),
            || async {
                (rig.json("/sim/stats").await["parked"].as_u64().unwrap_or(0) >= 2).then_some(())
            },
        )
        .await;
        let id = ok(rig.cli(&["fire", "--config", config]).await);
        let key = format!("/v1/kv/rehydrator/roll/receipts/spin-up/{}?raw", id.trim());
        let receipt =
            common::eventually("the event's receipt", Duration::from_secs(20), || async {
                let (status, body) = rig.send_raw("GET", &key, None).await;
                (status == 200).then(|| serde_json::from_slice::<Value>(&body).unwrap())
            })
            .await;
        assert_eq!(receipt["outcome"]["kind"], "failed", "{receipt}");
        assert!(
            receipt["outcome"]["detail"]
                .as_str()
                .unwrap()
                .contains("does not decode"),
            "{receipt}"
        );
        let metrics = replica.metrics.encode().unwrap();
        assert!(
            metrics.contains("rehydrator_rollout_state{state=\"invalid\"} 1"),
            "{metrics}"
        );
        let launched = |servers: &[Value]| servers.iter().filter(|s| !s["token"].is_null()).count();
        assert_eq!(launched(&rig.servers().await), 1, "no step was taken");
        let text = ok(rig.cli(&["status", "--config", config]).await);
        assert!(
            text.contains("rollout: INVALID, no step is taken"),
            "{text}"
        );

        let out = ok(rig.cli(&["repair", "--config", config]).await);
        assert!(
            out.contains("Rebuilt the rollout record (the record does not decode")
                && out.contains("to image-b: active, 1 server(s) on it adopted"),
            "{out}"
        );
        let again = ok(rig.cli(&["repair", "--config", config]).await);
        assert!(again.contains("nothing to repair"), "{again}");

        let report = rig.until_completed(&["--config", config]).await;
        let p = report.progress.as_ref().unwrap();
        assert_eq!((p.on_target, p.total, p.retirements), (3, 3, 3), "{p:?}");
        assert_eq!(p.launches, 3, "the adopted server and two launches: {p:?}");
        let servers = rig.servers().await;
        assert_eq!(launched(&servers), 3, "{servers:#?}");
        let inv = rig.json("/sim/invariants").await;
        assert_eq!(inv["quorum_lost_count"], 0, "{inv}");
    })
    .await;
    common::bounded(replica.shutdown()).await;
}
