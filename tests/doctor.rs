//! `rehydrator doctor`'s Consul checks as an operator runs them: on the simulator, on an
//! unreachable address, and on real Consul (`CONSUL_BIN`, Debian's 1.8.7 in CI) with ACLs on
//! and tokens of several rights — among them one made from the policy shipped in
//! `deploy/consul-acl-policy.hcl`, which a replica then runs with.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, bounded_for, eventually};

const TEST_BOUND: Duration = Duration::from_secs(120);
const MASTER: &str = "root-5d21";

/// `rehydrator doctor --json` with Consul from the consul CLI's variables and `extra`
/// arguments: its exit status, findings and stderr.
async fn doctor(
    address: &str,
    token: Option<&str>,
    extra: &[&str],
) -> (Option<i32>, Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehydrator"));
    cmd.args(["doctor", "--json", "--timeout", "20s"])
        .args(extra)
        .env("CONSUL_HTTP_ADDR", address)
        // For the S3 snapshot check against moto; no real account is ever reached.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_TOKEN_FILE");
    if let Some(token) = token {
        cmd.env("CONSUL_HTTP_TOKEN", token);
    }
    // Waited for off this thread: the simulator a test runs serves from it.
    let out = actix_rt::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let findings = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor's --json ({e}): {stdout}\n{stderr}"));
    (out.status.code(), findings, stderr)
}

/// The finding of `check`: its level and its detail.
fn finding(findings: &Value, check: &str) -> (String, String) {
    let f = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {findings:#}"));
    (
        f["level"].as_str().unwrap().to_owned(),
        f["detail"].as_str().unwrap().to_owned(),
    )
}

#[actix_rt::test]
async fn on_the_simulator_doctor_passes_and_names_the_leadership_path() {
    bounded_for(TEST_BOUND, async {
        let sim = common::sim();
        let (code, findings, err) = doctor(&sim.url(), None, &[]).await;
        assert_eq!(code, Some(0), "{findings:#}\n{err}");
        assert_eq!(finding(&findings, "consul").0, "ok");
        let (level, detail) = finding(&findings, "acl.token");
        assert_eq!(
            (level.as_str(), detail.as_str()),
            ("ok", "ACLs are off: every call is allowed")
        );
        assert_eq!(finding(&findings, "acl.rights").0, "ok");
        let (_, path) = finding(&findings, "leadership");
        assert!(
            path.contains("transfer-leader"),
            "the simulator is newest: {path}"
        );
        assert_eq!(finding(&findings, "health").0, "ok");
        sim.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn an_unreachable_consul_is_a_failure_and_the_only_finding() {
    bounded_for(TEST_BOUND, async {
        let port = common::moto::free_port();
        let (code, findings, err) = doctor(&format!("http://127.0.0.1:{port}"), None, &[]).await;
        assert_eq!(code, Some(1), "{findings:#}\n{err}");
        assert_eq!(findings.as_array().unwrap().len(), 1, "{findings:#}");
        let (level, detail) = finding(&findings, "consul");
        assert_eq!(level, "fail");
        assert!(detail.contains("unreachable"), "{detail}");
        assert!(err.contains("1 check(s) failed"), "{err}");
    })
    .await;
}

/// `consul <args>` against `address` with the master token in the environment: its stdout.
fn consul(bin: &Path, address: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("CONSUL_HTTP_ADDR", address)
        // For the S3 snapshot check against moto; no real account is ever reached.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env("CONSUL_HTTP_TOKEN", MASTER)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "consul {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A token for a new policy `name` of `rules` (a file): its secret.
fn token_for(bin: &Path, address: &str, name: &str, rules: &Path) -> String {
    consul(
        bin,
        address,
        &[
            "acl",
            "policy",
            "create",
            "-name",
            name,
            "-rules",
            &format!("@{}", rules.display()),
        ],
    );
    let out = consul(
        bin,
        address,
        &[
            "acl",
            "token",
            "create",
            "-policy-name",
            name,
            "-format=json",
        ],
    );
    let token: Value = serde_json::from_str(&out).unwrap();
    token["SecretID"].as_str().unwrap().to_owned()
}

#[actix_rt::test]
async fn on_real_consul_with_acls_doctor_tells_each_tokens_rights() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    bounded_for(TEST_BOUND, async {
        let agent = common::consul_agent::DevAgent::start_with(
            &bin,
            Some(&common::process_rig::acl_hcl(MASTER)),
        )
        .await;
        let url = agent.url.clone();
        // Autopilot judges the servers a few seconds after the election; until then doctor
        // says so (a warning), which is not what this test is about.
        let http = awc::Client::default();
        eventually(
            "autopilot to judge the server",
            Duration::from_secs(30),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let mut resp = http
                        .get(format!("{url}/v1/operator/autopilot/health"))
                        .insert_header(("X-Consul-Token", MASTER))
                        .send()
                        .await
                        .ok()?;
                    let health: Value = resp.json().await.ok()?;
                    (health["Healthy"] == true).then_some(())
                }
            },
        )
        .await;

        // A token Consul does not know.
        let (code, findings, err) = doctor(&url, Some("not-a-token"), &[]).await;
        assert_eq!(code, Some(1), "{findings:#}\n{err}");
        let (level, detail) = finding(&findings, "acl.token");
        assert_eq!(level, "fail");
        assert!(detail.contains("ACL not found"), "{detail}");
        assert!(!err.contains("not-a-token") && !findings.to_string().contains("not-a-token"));

        // The master token may do anything, which is more than rehydrator needs.
        let (code, findings, err) = doctor(&url, Some(MASTER), &[]).await;
        assert_eq!(code, Some(0), "{findings:#}\n{err}");
        assert_eq!(finding(&findings, "acl.token").0, "warning");
        assert_eq!(finding(&findings, "acl.rights").0, "ok");
        let (_, path) = finding(&findings, "leadership");
        assert!(path.contains("older than 1.15.0"), "{path}");
        assert!(
            !findings.to_string().contains(MASTER),
            "the secret in the report"
        );

        // The write probe stored nothing.
        let probe = consul(&bin, &url, &["kv", "get", "-recurse", "rehydrator/"]);
        assert!(probe.is_empty(), "the probe wrote: {probe}");

        let dir = common::endpoint::scratch("doctor-acl");
        // Keys and operator rights, but no node:read: Consul then lists no members at all,
        // and a rollout would see no servers.
        let partial = dir.join("partial.hcl");
        std::fs::write(
            &partial,
            "key_prefix \"rehydrator/\" { policy = \"write\" }\noperator = \"write\"\n",
        )
        .unwrap();
        let partial = token_for(&bin, &url, "partial", &partial);
        let (code, findings, err) = doctor(&url, Some(&partial), &[]).await;
        assert_eq!(code, Some(1), "{findings:#}\n{err}");
        let (level, detail) = finding(&findings, "acl.rights");
        assert_eq!(level, "fail");
        assert!(detail.contains("node:read"), "{detail}");

        // The shipped policy: every right that can be proved, the others named; and a
        // replica runs with it (session, liveness check) until it is ready.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/consul-acl-policy.hcl");
        let token = token_for(&bin, &url, "rehydrator", &shipped);
        let (code, findings, err) = doctor(&url, Some(&token), &[]).await;
        assert_eq!(code, Some(0), "{findings:#}\n{err}");
        let (level, detail) = finding(&findings, "acl.rights");
        assert_eq!(level, "warning", "{detail}");
        assert!(detail.contains("cannot be checked"), "{detail}");

        // With snapshots required, that token (no acl = "write") fails the step: doctor says
        // so before a rollout does.
        let config = dir.join("rehydrator.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"prod\"\ndesired_servers = 1\n[consul]\naddress = \"{url}\"\n\
                 token = \"{token}\"\n[status]\nlisten = \"127.0.0.1:0\"\n\
                 [rollout]\nsnapshot_dir = \"{}\"\n",
                dir.join("snapshots").display()
            ),
        )
        .unwrap();
        let (code, findings, err) =
            doctor(&url, None, &["--config", config.to_str().unwrap()]).await;
        assert_eq!(code, Some(1), "{findings:#}\n{err}");
        assert_eq!(finding(&findings, "acl.snapshot").0, "fail");
        assert!(
            !findings.to_string().contains(&token),
            "the secret in the report"
        );

        let log = dir.join("run.log");
        let _replica = common::endpoint::spawn_run(&config, &log);
        let endpoint = eventually("the endpoint's address", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { common::endpoint::endpoint_url(&text) }
        })
        .await;
        eventually(
            "the replica on the shipped policy to be ready",
            Duration::from_secs(30),
            || {
                let (http, endpoint) = (http.clone(), endpoint.clone());
                async move {
                    let resp = http.get(format!("{endpoint}/readyz")).send().await.ok()?;
                    (resp.status().as_u16() == 200).then_some(())
                }
            },
        )
        .await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("ACL token refused"), "{text}");
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[actix_rt::test]
async fn doctor_asks_the_gate_and_lists_the_snapshot_bucket() {
    bounded_for(TEST_BOUND, async {
        let sim = common::sim();
        let moto = common::moto::moto();
        let s3 = common::moto::s3_client(&moto.url);
        s3.create_bucket().bucket("snaps").send().await.unwrap();
        // An image and a launch template, so that the cloud's own findings pass too.
        let ec2 = common::moto::client(&moto.url);
        let ami = common::moto::register(&ec2, "consul-server-a").await;
        common::moto::launch_template(&ec2, &ami).await;
        // An alarm the CloudWatch gate lists, in ALARM.
        let cw = common::moto::cloudwatch_client(&moto.url);
        cw.put_metric_alarm()
            .alarm_name("consul-raft-commit")
            .namespace("Rehydrator/Test")
            .metric_name("commit")
            .statistic(aws_sdk_cloudwatch::types::Statistic::Maximum)
            .period(60)
            .evaluation_periods(1)
            .threshold(1.0)
            .comparison_operator(
                aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold,
            )
            .send()
            .await
            .unwrap();
        cw.set_alarm_state()
            .alarm_name("consul-raft-commit")
            .state_value(aws_sdk_cloudwatch::types::StateValue::Alarm)
            .state_reason("commit time over 1s")
            .send()
            .await
            .unwrap();
        let dir = common::endpoint::scratch("doctor-nets");
        let dead = common::moto::free_port();
        let config = |bucket: &str| {
            let path = dir.join(format!("{bucket}.toml"));
            std::fs::write(
                &path,
                format!(
                    "[cluster]\nname = \"prod\"\n[consul]\naddress = \"{}\"\n\
                     [cloud]\ntype = \"ec2\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
                     launch_template = \"consul-server\"\nimage_name = \"consul-server-*\"\n\
                     [rollout]\nsnapshot_dir = \"s3://{bucket}/prod\"\n\
                     gate_prometheus_url = \"http://127.0.0.1:{dead}\"\n\
                     gate_cloudwatch_alarms = [\"consul-*\"]\n",
                    sim.url(),
                    moto.url
                ),
            )
            .unwrap();
            path
        };
        let good = config("snaps");
        let (code, findings, err) =
            doctor(&sim.url(), None, &["--config", good.to_str().unwrap()]).await;
        assert_eq!(code, Some(0), "{findings:#}\n{err}");
        let gates: Vec<&Value> = findings
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "gate")
            .collect();
        assert_eq!(gates.len(), 2, "{findings:#}");
        let detail = |gate: &str| {
            let f = gates
                .iter()
                .find(|f| f["detail"].as_str().unwrap().starts_with(gate))
                .unwrap_or_else(|| panic!("no {gate} gate in {findings:#}"));
            assert_eq!(f["level"], "warning", "{f}");
            f["detail"].as_str().unwrap().to_owned()
        };
        let prometheus = detail("prometheus");
        assert!(
            prometheus.contains("prometheus is closed now")
                && prometheus.contains("cannot connect"),
            "{prometheus}"
        );
        let cloudwatch = detail("cloudwatch");
        assert!(
            cloudwatch.contains("cloudwatch is closed now")
                && cloudwatch.contains("consul-raft-commit (commit time over 1s)"),
            "{cloudwatch}"
        );
        let (level, detail) = finding(&findings, "snapshots");
        assert_eq!(level, "ok", "{detail}");
        assert!(
            detail.contains("s3://snaps/prod/ can be listed"),
            "{detail}"
        );

        // A bucket that is not there fails required snapshots before a step does.
        let missing = config("no-such-bucket");
        let (code, findings, err) =
            doctor(&sim.url(), None, &["--config", missing.to_str().unwrap()]).await;
        assert_eq!(code, Some(1), "{findings:#}\n{err}");
        let (level, detail) = finding(&findings, "snapshots");
        assert_eq!(level, "fail", "{detail}");
        assert!(detail.contains("NoSuchBucket"), "{detail}");
        sim.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A server Raft still counts that no machine of the cloud accounts for (killed, its machine
/// terminated, and autopilot told not to prune it) would hold every rollout back: doctor names
/// it with its Raft ID, and says nothing of the kind before.
#[actix_rt::test]
async fn doctor_names_a_raft_server_no_machine_accounts_for() {
    bounded_for(TEST_BOUND, async {
        let sim = common::sim();
        let http = awc::Client::default();
        let send = |method: &'static str, path: String, body: Option<Value>| {
            let (http, base) = (&http, sim.url());
            async move {
                common::rig::send(http, &base, method, &path, body)
                    .await
                    .unwrap()
            }
        };
        let dir = common::endpoint::scratch("doctor-raft");
        let path = dir.join("rehydrator.toml");
        std::fs::write(
            &path,
            common::rollout::config("raft", 3, &sim.url(), "type = \"sim\"", ""),
        )
        .unwrap();
        let config = ["--config", path.to_str().unwrap()];
        let (_, findings, err) = doctor(&sim.url(), None, &config).await;
        let (level, detail) = finding(&findings, "raft");
        assert_eq!(level, "ok", "{detail}\n{err}");
        assert!(detail.contains("3 live machines"), "{detail}");

        let servers = send("GET", "/sim/servers".into(), None).await;
        let victim = servers[2]["name"].as_str().unwrap().to_owned();
        let mut autopilot = send("GET", "/v1/operator/autopilot/configuration".into(), None).await;
        autopilot["CleanupDeadServers"] = Value::Bool(false);
        send(
            "PUT",
            "/v1/operator/autopilot/configuration".into(),
            Some(autopilot),
        )
        .await;
        send("POST", format!("/sim/servers/{victim}/kill"), None).await;
        send("POST", format!("/sim/servers/{victim}/terminate"), None).await;
        let (level, detail) = eventually("doctor to name the stray", TEST_BOUND, || async {
            let (_, findings, _) = doctor(&sim.url(), None, &config).await;
            let (level, detail) = finding(&findings, "raft");
            (level == "warning").then_some((level, detail))
        })
        .await;
        assert_eq!(level, "warning");
        assert!(
            detail.contains(&format!("Raft lists {victim} (ID "))
                && detail.contains("a rollout waits for it to leave"),
            "{detail}"
        );
        sim.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
