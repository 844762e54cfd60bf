//! The status endpoint of a real `rehydrator run` replica on a simulated cluster: health and
//! readiness as probes see them (ready once the session is held, unready when Consul goes),
//! `/metrics` as Prometheus reads it (the names, and counters that move with a rollout),
//! `/v1/status` in the `StatusReport` shape, the server stopping with the process on SIGTERM,
//! a taken port refused naming `status.listen`, an unreadable `status.token_file` refused
//! naming it, `listen = ""` turning it off, the status token guarding `/v1/status` and the
//! dashboard (and 405 for other methods), and, on real Consul enforcing ACLs, a refused token
//! named by the log, `/readyz`, `/v1/status` and `rehydrator status`.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::endpoint::{Rig, CLUSTER, NEW_IMAGE, OLD_IMAGE, ROLLOUT_BOUND, SERVERS};
use crate::common::{bounded_for, eventually};
use rehydrator::status::StatusReport;
use serde_json::Value;

const TEST_BOUND: Duration = Duration::from_secs(150);

/// The metric families every scrape must list (series exist from the start).
const FAMILIES: [&str; 8] = [
    "rehydrator_rollout_state",
    "rehydrator_paused",
    "rehydrator_steps",
    "rehydrator_step_duration_seconds",
    "rehydrator_lock_held",
    "rehydrator_takeovers",
    "rehydrator_watch_fires",
    "rehydrator_servers",
];

/// A scrape, parsed: families by name with their type, and every sample by its series
/// (`name{labels}` as written).
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the OpenMetrics / Prometheus text format strictly enough to fail on anything a
/// scraper would refuse: comment lines, names, label sets, values, and the closing `# EOF`.
fn parse_scrape(text: &str) -> Scrape {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "no closing # EOF:\n{text}");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or_default());
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT"),
                "unknown comment {line:?}"
            );
            assert!(is_name(name), "bad name in {line:?}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or_default();
                assert!(
                    matches!(
                        t,
                        "counter" | "gauge" | "histogram" | "summary" | "info" | "unknown"
                    ),
                    "bad type in {line:?}"
                );
                types.insert(name.to_owned(), t.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(is_name(name), "bad series name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad label set in {line:?}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(is_name(k), "bad label name in {line:?}");
                assert!(!v.trim_end_matches('"').contains('"'), "{line:?}");
            }
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        // Every sample belongs to a declared family (counters as `_total`, histograms as
        // `_bucket`/`_sum`/`_count`).
        let family = types.keys().any(|f| {
            name == f
                || ["_total", "_bucket", "_sum", "_count", "_created"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
        });
        assert!(family, "sample {line:?} before its # TYPE");
        samples.insert(series.to_owned(), v);
    }
    Scrape { types, samples }
}

async fn scrape(rig: &Rig) -> Scrape {
    let (status, ctype, body) = rig.get("/metrics").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        ctype.starts_with("application/openmetrics-text") || ctype.starts_with("text/plain"),
        "content type {ctype:?}"
    );
    parse_scrape(std::str::from_utf8(&body).unwrap())
}

/// The body re-serialized from `StatusReport` is the body: no field missing, none extra, none
/// of another type.
fn assert_status_shape(body: &Value) -> StatusReport {
    let report: StatusReport = serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("/v1/status is not a StatusReport ({e}): {body:#}"));
    assert_eq!(&serde_json::to_value(&report).unwrap(), body);
    report
}

#[actix_rt::test]
async fn probes_metrics_and_status_follow_the_replica_and_a_rollout() {
    bounded_for(TEST_BOUND, async {
        let mut rig = Rig::start("status-endpoint").await;

        let (status, body) = rig.get_json("/healthz").await;
        assert_eq!(
            (status, &body["status"]),
            (200, &Value::from("ok")),
            "{body}"
        );

        // 200 once the session is held.
        let ready = rig
            .until_status("/readyz", 200, Duration::from_secs(30))
            .await;
        assert_eq!(ready["ready"], true, "{ready}");
        assert!(
            ready["session"].as_str().is_some_and(|s| !s.is_empty()),
            "{ready}"
        );

        // The rollout config's `timer` watch re-checks the rollout every second, on the
        // wall clock's second boundary, and holds the step lock for the few milliseconds each
        // check takes; the baseline is a scrape between two checks.
        let before = eventually(
            "a scrape with the step lock free between the timer's checks",
            Duration::from_secs(10),
            || async {
                let s = scrape(&rig).await;
                (s.get(r#"rehydrator_lock_held{lock="step"}"#) == Some(0.0)).then_some(s)
            },
        )
        .await;
        for f in FAMILIES {
            assert!(
                before.types.contains_key(f),
                "{f} missing: {:?}",
                before.types
            );
        }
        assert_eq!(before.types["rehydrator_steps"], "counter");
        assert_eq!(
            before.types["rehydrator_step_duration_seconds"],
            "histogram"
        );
        assert_eq!(
            before.get(&format!("rehydrator_servers{{image=\"{OLD_IMAGE}\"}}")),
            Some(SERVERS as f64)
        );
        assert_eq!(
            before.get(r#"rehydrator_steps_total{kind="launch",outcome="ok"}"#),
            Some(0.0)
        );
        assert_eq!(
            before.get(r#"rehydrator_rollout_state{state="none"}"#),
            Some(1.0)
        );
        // The alerting series: the cluster as read, this replica alive by its check, and when.
        assert_eq!(
            before.get("rehydrator_cluster_failure_tolerance"),
            Some(1.0)
        );
        assert_eq!(before.get("rehydrator_cluster_healthy"), Some(1.0));
        assert_eq!(
            before.get(r#"rehydrator_replicas{state="alive"}"#),
            Some(1.0)
        );
        assert_eq!(
            before.get("rehydrator_rollout_started_timestamp_seconds"),
            Some(0.0)
        );
        let read = before
            .get("rehydrator_status_last_read_timestamp_seconds")
            .expect("the read time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - read).abs() < 120.0, "read at {read}, now {now}");
        assert!(
            before
                .get(&format!(
                    "rehydrator_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                ))
                .is_some(),
            "build_info"
        );

        let (status, body) = rig.get_json("/v1/status").await;
        assert_eq!(status, 200, "{body}");
        let report = assert_status_shape(&body);
        assert_eq!(report.cluster, CLUSTER);
        assert_eq!(report.servers.len(), SERVERS);
        assert!(report
            .servers
            .iter()
            .all(|s| s.image.as_deref() == Some(OLD_IMAGE)));

        rig.start_rollout().await;
        let after = eventually(
            "the metrics to show every server on the new image and the rollout completed",
            ROLLOUT_BOUND,
            || async {
                let s = scrape(&rig).await;
                let done = s.get(&format!("rehydrator_servers{{image=\"{NEW_IMAGE}\"}}"))
                    == Some(SERVERS as f64)
                    && s.get(&format!("rehydrator_servers{{image=\"{OLD_IMAGE}\"}}"))
                        .is_none()
                    && s.get(r#"rehydrator_rollout_state{state="completed"}"#) == Some(1.0);
                done.then_some(s)
            },
        )
        .await;
        // One replica took every step: N launches, N retirements, one start, one completion.
        for (series, want) in [
            (r#"rehydrator_steps_total{kind="start",outcome="ok"}"#, 1.0),
            (
                r#"rehydrator_steps_total{kind="launch",outcome="ok"}"#,
                SERVERS as f64,
            ),
            (
                r#"rehydrator_steps_total{kind="retire",outcome="ok"}"#,
                SERVERS as f64,
            ),
            (
                r#"rehydrator_steps_total{kind="complete",outcome="ok"}"#,
                1.0,
            ),
            (
                r#"rehydrator_step_duration_seconds_count{kind="launch"}"#,
                SERVERS as f64,
            ),
            (r#"rehydrator_rollout_state{state="active"}"#, 0.0),
            (r#"rehydrator_takeovers_total{lock="step"}"#, 0.0),
            ("rehydrator_servers_outdated", 0.0),
        ] {
            assert_eq!(after.get(series), Some(want), "{series}");
        }
        let started = after
            .get("rehydrator_rollout_started_timestamp_seconds")
            .unwrap();
        let progress = after
            .get("rehydrator_rollout_last_progress_timestamp_seconds")
            .unwrap();
        assert!(started > 0.0 && progress >= started, "{started} {progress}");
        assert!(
            after
                .get(r#"rehydrator_watch_fires_total{watch="rehydrate"}"#)
                .unwrap_or(0.0)
                >= 1.0
        );
        let jobs: f64 = after
            .samples
            .iter()
            .filter(|(k, _)| k.starts_with("rehydrator_jobs_total{"))
            .map(|(_, v)| v)
            .sum();
        assert!(jobs >= 2.0 * SERVERS as f64, "jobs ended: {jobs}");
        let live = rig.live_servers().await;
        assert!(live.iter().all(|(_, image)| image == NEW_IMAGE), "{live:?}");

        let (_, body) = rig.get_json("/v1/status").await;
        let report = assert_status_shape(&body);
        let progress = report.progress.expect("a rollout is recorded");
        assert_eq!(progress.state, "completed");
        assert_eq!(progress.on_target, SERVERS);

        // Consul goes away: the replica is alive but not ready, and says why.
        rig.stop_sim().await;
        let unready = rig
            .until_status("/readyz", 503, Duration::from_secs(15))
            .await;
        assert_eq!(unready["ready"], false, "{unready}");
        assert!(
            unready["reason"]
                .as_str()
                .is_some_and(|r| r.contains("Consul")),
            "{unready}"
        );
        let (status, _) = rig.get_json("/healthz").await;
        assert_eq!(status, 200);
        // A report answers for up to a second, so the last one taken with Consul up may still
        // be served at first.
        let body = rig
            .until_status("/v1/status", 503, Duration::from_secs(15))
            .await;
        assert!(body["error"].as_str().is_some(), "{body}");

        // SIGTERM: the process stops in order and the endpoint goes with it.
        let exit = rig.terminate(Duration::from_secs(30)).await;
        assert_eq!(exit.code(), Some(0), "{exit}; log:\n{}", rig.log_text());
        let addr = rig.status_url.trim_start_matches("http://").to_owned();
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "the endpoint still accepts connections after the process exited"
        );
    })
    .await;
}

/// Dashboards polling at once share one report: ten concurrent `/v1/status` requests cost the
/// Consul reads of at most one report more, not ten reports' worth.
#[actix_rt::test]
async fn concurrent_status_requests_share_one_report() {
    bounded_for(Duration::from_secs(60), async {
        let rig = Rig::start("status-shared").await;
        // Once the session is held, the replica's own traffic is its idle watches.
        rig.until_status("/readyz", 200, Duration::from_secs(30))
            .await;

        let before = rig.consul_requests().await;
        let (status, body) = rig.get_json("/v1/status").await;
        assert_eq!(status, 200, "{body}");
        let one = rig.consul_requests().await - before;
        assert!(
            one >= 3,
            "a report reads Consul several times, measured {one}"
        );

        let before = rig.consul_requests().await;
        let answers =
            futures_util::future::join_all((0..10).map(|_| rig.get_json("/v1/status"))).await;
        let ten = rig.consul_requests().await - before;
        for (status, body) in &answers {
            assert_eq!(*status, 200, "{body}");
            assert_status_shape(body);
        }
        assert!(
            ten <= 2 * one,
            "ten concurrent requests made {ten} Consul requests; one report makes {one}"
        );
    })
    .await;
}

#[actix_rt::test]
async fn a_taken_port_is_refused_naming_status_listen_and_empty_turns_it_off() {
    bounded_for(Duration::from_secs(60), async {
        let dir = common::endpoint::scratch("status-listen");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        // Consul is never reached: the bind comes first, and "off" is decided at start.
        let config = |listen: &str| {
            format!(
                "[cluster]\nname = \"x\"\n[consul]\naddress = \"http://127.0.0.1:9\"\n\
                 [status]\nlisten = \"{listen}\"\n"
            )
        };

        // `run` with `text` as its configuration, to its exit: (status, log).
        let run_to_exit = |name: &str, text: String| {
            let (path, log) = (
                dir.join(format!("{name}.toml")),
                dir.join(format!("{name}.log")),
            );
            std::fs::write(&path, text).unwrap();
            let mut child = common::endpoint::spawn_run(&path, &log);
            async move {
                let status = eventually("the replica to exit", Duration::from_secs(20), || {
                    let s = child.0.try_wait().unwrap();
                    async move { s }
                })
                .await;
                (status, std::fs::read_to_string(&log).unwrap())
            }
        };

        let (status, text) = run_to_exit("taken", config(&format!("127.0.0.1:{port}"))).await;
        assert_eq!(status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!("status.listen 127.0.0.1:{port}")),
            "the error names the field and address:\n{text}"
        );
        drop(taken);

        // A token file that cannot be read stops the start, named, before any session.
        let missing = dir.join("no-such-token");
        let with_token = format!(
            "{}token_file = \"{}\"\n",
            config("127.0.0.1:0"),
            missing.display()
        );
        let (status, text) = run_to_exit("token", with_token).await;
        assert_eq!(status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!(
                "status.token_file {}: cannot read it",
                missing.display()
            )),
            "{text}"
        );
        assert!(
            !text.contains("Starting."),
            "no tree before the token: {text}"
        );

        let path = dir.join("off.toml");
        std::fs::write(&path, config("")).unwrap();
        let log = dir.join("off.log");
        let child = common::endpoint::spawn_run(&path, &log);
        eventually(
            "the replica to log that its endpoint is off",
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                async move { text.contains("Status endpoint off").then_some(()) }
            },
        )
        .await;
        drop(child);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("Status endpoint serving"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[actix_rt::test]
async fn a_status_token_guards_status_and_dashboard_and_wrong_methods_get_405() {
    bounded_for(TEST_BOUND, async {
        let token = "st-9f2c7e1d";
        let file =
            std::env::temp_dir().join(format!("rehydrator-status-token-{}", std::process::id()));
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let rig = Rig::start_with(
            "status-token",
            &format!("token_file = \"{}\"", file.display()),
        )
        .await;
        // The probes and the scrape stay open: orchestrators and Prometheus call them.
        rig.until_status("/readyz", 200, Duration::from_secs(30))
            .await;
        for path in ["/healthz", "/readyz", "/metrics"] {
            let (status, _, _) = rig.request("GET", path, None).await;
            assert_eq!(status, 200, "{path} without a token");
        }

        let session = rig.get_json("/readyz").await.1["session"]
            .as_str()
            .unwrap()
            .to_owned();
        let basic = |user_and_token: &str| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_and_token)
            )
        };
        let bearer = format!("Bearer {token}");
        for path in ["/v1/status", "/"] {
            for wrong in [
                None,
                Some("Bearer st-9f2c7e1e".to_owned()),
                Some(format!("Bearer {token}x")),
                Some(basic("ops:nope")),
                Some(token.to_owned()),
            ] {
                let (status, headers, body) = rig.request("GET", path, wrong.as_deref()).await;
                assert_eq!(status, 401, "{path} with {wrong:?}");
                assert!(
                    headers.iter().any(|h| h.starts_with("Bearer realm="))
                        && headers.iter().any(|h| h.starts_with("Basic realm=")),
                    "{path}: challenges {headers:?}"
                );
                let body = String::from_utf8_lossy(&body);
                assert!(!body.contains(&session), "{path} leaks the session: {body}");
            }
            for right in [bearer.clone(), basic(&format!("ops:{token}"))] {
                let (status, _, _) = rig.request("GET", path, Some(&right)).await;
                assert_eq!(status, 200, "{path} with the token");
            }
        }
        let (_, _, body) = rig.request("GET", "/v1/status", Some(&bearer)).await;
        let report: Value = serde_json::from_slice(&body).unwrap();
        assert_status_shape(&report);

        // Every path answers other methods with 405 and says what it allows.
        for (method, path) in [
            ("POST", "/v1/status"),
            ("DELETE", "/v1/status"),
            ("PUT", "/"),
            ("POST", "/healthz"),
            ("PATCH", "/readyz"),
            ("POST", "/metrics"),
        ] {
            let (status, headers, _) = rig.request(method, path, Some(&bearer)).await;
            assert_eq!(status, 405, "{method} {path}");
            assert!(
                headers.iter().any(|h| h == "GET"),
                "{method} {path}: Allow {headers:?}"
            );
        }
        assert_eq!(rig.request("GET", "/v2/status", None).await.0, 404);
        assert!(!rig.log_text().contains(token), "the token reached the log");
        let _ = std::fs::remove_file(&file);
    })
    .await;
}

/// A replica whose ACL token Consul refuses stays alive (`/healthz` 200) but says why it does
/// nothing, in the words an operator can act on, wherever they look: its log, `/readyz`,
/// `/v1/status` and `rehydrator status`. Against a real Consul enforcing ACLs.
#[actix_rt::test]
async fn a_refused_acl_token_is_named_by_the_log_readyz_and_status() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    bounded_for(TEST_BOUND, async {
        let agent = common::consul_agent::DevAgent::start_with(
            &bin,
            Some(&common::process_rig::acl_hcl("root-7c1f")),
        )
        .await;
        let dir = common::endpoint::scratch("acl-refused");
        let config = dir.join("rehydrator.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"x\"\n[consul]\naddress = \"{}\"\ntoken = \"not-the-token\"\n\
                 [status]\nlisten = \"127.0.0.1:0\"\n",
                agent.url
            ),
        )
        .unwrap();
        let log = dir.join("run.log");
        let _replica = common::endpoint::spawn_run(&config, &log);
        let url = eventually("the endpoint's address", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { common::endpoint::endpoint_url(&text) }
        })
        .await;
        eventually(
            "the log to say the token is refused",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                async move {
                    text.lines()
                        .any(|l| {
                            l.contains("Could not create a Consul session")
                                && l.contains("ACL token refused")
                        })
                        .then_some(())
                }
            },
        )
        .await;

        let http = awc::Client::builder()
            .timeout(Duration::from_secs(20))
            .finish();
        let get = |path: &'static str| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let mut resp = http.get(format!("{url}{path}")).send().await.unwrap();
                let body: Value = resp.json().limit(1 << 20).await.unwrap();
                (resp.status().as_u16(), body)
            }
        };
        assert_eq!(get("/healthz").await.0, 200, "alive, though useless");
        let (status, ready) = get("/readyz").await;
        assert_eq!(status, 503);
        let reason = ready["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("ACL token refused"), "{ready}");
        let (status, report) = get("/v1/status").await;
        assert_eq!(status, 503);
        assert!(
            report["error"]
                .as_str()
                .unwrap_or_default()
                .contains("ACL token refused"),
            "{report}"
        );
        assert_eq!(report["kind"], "acl_denied", "{report}");

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rehydrator"))
            .args(["status", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("ACL token refused"), "{stderr}");
        assert!(!stderr.contains("not-the-token"), "{stderr}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("not-the-token"), "the token reached the log");
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
