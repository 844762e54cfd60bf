//! `Ec2Cloud` through an Auto Scaling group (`cloud.auto_scaling_group`), against moto's
//! server through the real aws-sdk-autoscaling and aws-sdk-ec2 clients: a launch as desired + 1
//! from a new launch template version, idempotent under a retried or resumed step; a retire as
//! a terminate in the group with decrement; the group's record (tags) written before each
//! change and removed after it is undone; MaxSize raised and restored, AZRebalance suspended for
//! the rollout and resumed once every server is new; the servers protected from scale-in; a
//! server the group launched in a dead launch's place claimed; and the refusals.
//!
//! moto implements none of CompleteLifecycleAction, RecordLifecycleActionHeartbeat or instance
//! refresh, and places every instance of a group in its first subnet: those are covered
//! through the simulated group instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::moto::{
    asg_client, client, credentials, group_settings, launch_template, moto, register, server_group,
    GROUP,
};
use aws_sdk_autoscaling::types::{AutoScalingGroup, Tag};
use rehydrator::cloud::asg::{BASE_TAG, MAX_TAG, PROCESSES_TAG, TEMPLATE_TAG, TOKEN_TAG};
use rehydrator::cloud::Ec2Cloud;
use rehydrator_actors::plan::{Rollout, RolloutState};
use rehydrator_actors::ports::{CloudPort, ErrorKind, MachineState};

const CLUSTER: &str = "prod";

/// The cloud as `run` builds it for a group, with waits for moto, which launches at once.
async fn cloud(url: &str) -> Ec2Cloud {
    Ec2Cloud::load(&group_settings(url), CLUSTER, Some(credentials()))
        .await
        .unwrap()
        .with_group_waits(
            Duration::from_secs(10),
            Duration::from_millis(100),
            Duration::from_millis(300),
        )
}

async fn group(asg: &aws_sdk_autoscaling::Client) -> AutoScalingGroup {
    asg.describe_auto_scaling_groups()
        .auto_scaling_group_names(GROUP)
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()
        .first()
        .cloned()
        .unwrap()
}

/// The group's tags of rehydrator's record.
fn record(g: &AutoScalingGroup) -> BTreeMap<String, String> {
    g.tags()
        .iter()
        .filter(|t| {
            t.key().unwrap().starts_with("rehydrator:") && t.key() != Some("rehydrator:cluster")
        })
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect()
}

fn suspended(g: &AutoScalingGroup) -> Vec<String> {
    g.suspended_processes()
        .iter()
        .map(|p| p.process_name().unwrap().to_owned())
        .collect()
}

fn sizes(g: &AutoScalingGroup) -> (i32, i32, i32) {
    (
        g.min_size().unwrap(),
        g.desired_capacity().unwrap(),
        g.max_size().unwrap(),
    )
}

/// The image each live instance of the group runs, by instance ID.
async fn images(ec2: &aws_sdk_ec2::Client, g: &AutoScalingGroup) -> BTreeMap<String, String> {
    let ids: Vec<String> = g
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    if ids.is_empty() {
        return BTreeMap::new();
    }
    let out = ec2
        .describe_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
        .map(|i| {
            (
                i.instance_id().unwrap().to_owned(),
                i.image_id().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The group's template versions: (number, image).
async fn versions(ec2: &aws_sdk_ec2::Client) -> Vec<(i64, String)> {
    let out = ec2
        .describe_launch_template_versions()
        .launch_template_name("consul-server")
        .send()
        .await
        .unwrap();
    let mut v: Vec<(i64, String)> = out
        .launch_template_versions()
        .iter()
        .map(|v| {
            (
                v.version_number().unwrap(),
                v.launch_template_data()
                    .and_then(|d| d.image_id())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[actix_rt::test]
async fn a_group_rolls_through_itself_and_ends_as_it_began() {
    common::bounded(async {
        let moto = moto();
        let ec2 = client(&moto.url);
        let asg = asg_client(&moto.url);
        let ami_a = register(&ec2, "consul-server-a").await;
        launch_template(&ec2, &ami_a).await;
        server_group(&ec2, &asg, CLUSTER, 3).await;
        let ami_b = register(&ec2, "consul-server-b").await;
        let cloud = cloud(&moto.url).await;

        let before = cloud.machines().await.unwrap();
        assert_eq!(before.len(), 3, "{before:?}");
        assert!(before
            .iter()
            .all(|m| m.image == ami_a && m.state == MachineState::Running));
        let g = group(&asg).await;
        assert!(record(&g).is_empty() && suspended(&g).is_empty());
        let old: Vec<String> = before.iter().map(|m| m.id.clone()).collect();

        for (step, victim) in old.iter().enumerate() {
            let token = format!("r1-o{step}-n{step}");
            let m = cloud.launch(&ami_b, &token).await.unwrap();
            assert_eq!(m.image, ami_b, "the group launched the new image: {m:?}");
            assert_eq!(m.token.as_deref(), Some(token.as_str()));
            // A replica that died before recording the launch retries it: the same machine,
            // and no second extra instance.
            let again = cloud.launch(&ami_b, &token).await.unwrap();
            assert_eq!(again.id, m.id);

            let g = group(&asg).await;
            assert_eq!(sizes(&g), (3, 4, 4), "desired + 1, max raised for it");
            assert_eq!(g.instances().len(), 4);
            let rec = record(&g);
            assert_eq!(rec.get(BASE_TAG).map(String::as_str), Some("3"), "{rec:?}");
            assert_eq!(rec.get(MAX_TAG).map(String::as_str), Some("3"), "{rec:?}");
            assert_eq!(rec.get(TOKEN_TAG), Some(&token), "{rec:?}");
            assert_eq!(
                rec.get(PROCESSES_TAG).map(String::as_str),
                Some("AZRebalance")
            );
            assert_eq!(rec.get(TEMPLATE_TAG).map(String::as_str), Some("$Default"));
            assert_eq!(suspended(&g), ["AZRebalance"]);
            assert!(
                g.instances()
                    .iter()
                    .all(|i| i.protected_from_scale_in() == Some(true)),
                "every server protected from scale-in: {:?}",
                g.instances()
            );
            let listed = cloud.machines().await.unwrap();
            assert_eq!(listed.len(), 4);
            assert!(listed
                .iter()
                .any(|l| l.id == m.id && l.state == MachineState::Running));

            cloud.retire(victim).await.unwrap();
            // A retried retirement changes nothing: the instance is gone from the group.
            cloud.retire(victim).await.unwrap();
            let g = group(&asg).await;
            assert_eq!(sizes(&g), (3, 3, 3), "back at its size, max restored");
            assert!(!g
                .instances()
                .iter()
                .any(|i| i.instance_id() == Some(victim)));
            let rec = record(&g);
            let last = step == old.len() - 1;
            assert!(
                !rec.contains_key(BASE_TAG) && !rec.contains_key(TOKEN_TAG),
                "{rec:?}"
            );
            assert!(!rec.contains_key(MAX_TAG), "{rec:?}");
            if last {
                assert!(
                    rec.is_empty(),
                    "all settled once every server is new: {rec:?}"
                );
                assert!(suspended(&g).is_empty(), "AZRebalance resumed");
            } else {
                assert_eq!(suspended(&g), ["AZRebalance"], "suspended between steps");
                assert!(rec.contains_key(PROCESSES_TAG) && rec.contains_key(TEMPLATE_TAG));
            }
        }
        let g = group(&asg).await;
        let running = images(&ec2, &g).await;
        assert_eq!(running.len(), 3);
        assert!(running.values().all(|i| *i == ami_b), "{running:?}");
        assert_eq!(
            versions(&ec2).await,
            [(1, ami_a.clone()), (2, ami_b.clone())],
            "one new template version for the whole rollout"
        );
        let lt = g.launch_template().unwrap();
        assert_eq!(
            lt.version(),
            Some("2"),
            "the group launches the new image from now on"
        );
    })
    .await;
}

#[actix_rt::test]
async fn a_step_resumed_after_a_crash_asks_for_the_same_size() {
    common::bounded(async {
        let moto = moto();
        let ec2 = client(&moto.url);
        let asg = asg_client(&moto.url);
        let ami_a = register(&ec2, "consul-server-a").await;
        launch_template(&ec2, &ami_a).await;
        server_group(&ec2, &asg, CLUSTER, 3).await;
        // An operator's own headroom: no raise needed, none recorded.
        asg.update_auto_scaling_group()
            .auto_scaling_group_name(GROUP)
            .max_size(5)
            .send()
            .await
            .unwrap();
        let ami_b = register(&ec2, "consul-server-b").await;
        let cloud = cloud(&moto.url).await;

        // A holder died after recording the base and before asking for more: the next one
        // asks for base + 1 from the record, not desired + 1 from whatever the group says.
        let tag = |k: &str, v: &str| {
            Tag::builder()
                .resource_id(GROUP)
                .resource_type("auto-scaling-group")
                .key(k)
                .value(v)
                .propagate_at_launch(false)
                .build()
        };
        asg.create_or_update_tags()
            .tags(tag(BASE_TAG, "3"))
            .send()
            .await
            .unwrap();
        let m = cloud.launch(&ami_b, "r1-o0-n0").await.unwrap();
        let g = group(&asg).await;
        assert_eq!(sizes(&g), (3, 4, 5));
        assert!(!record(&g).contains_key(MAX_TAG), "max was never raised");

        // The launch's instance died and the group replaced it: the replacement, on the new
        // image and claimed by no launch, is the next launch's machine, not a reason to ask
        // for a fifth server.
        ec2.terminate_instances()
            .instance_ids(&m.id)
            .send()
            .await
            .unwrap();
        asg.detach_instances()
            .auto_scaling_group_name(GROUP)
            .instance_ids(&m.id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .unwrap();
        asg.delete_tags()
            .tags(tag(TOKEN_TAG, ""))
            .send()
            .await
            .unwrap();
        asg.set_desired_capacity()
            .auto_scaling_group_name(GROUP)
            .desired_capacity(4)
            .send()
            .await
            .unwrap();
        let next = cloud.launch(&ami_b, "r1-o0-n1").await.unwrap();
        assert_ne!(next.id, m.id);
        assert_eq!(next.image, ami_b);
        assert_eq!(next.token.as_deref(), Some("r1-o0-n1"));
        let g = group(&asg).await;
        assert_eq!(sizes(&g), (3, 4, 5), "no fifth server");
        let claimed = ec2
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name(format!("tag:{TOKEN_TAG}"))
                    .values("r1-o0-n1")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let ids: Vec<&str> = claimed
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| i.instance_id().unwrap())
            .collect();
        assert_eq!(ids, [next.id.as_str()], "the claim is on the instance");
    })
    .await;
}

#[actix_rt::test]
async fn a_group_that_cannot_be_rolled_is_refused_saying_why() {
    common::bounded(async {
        let moto = moto();
        let ec2 = client(&moto.url);
        let asg = asg_client(&moto.url);
        let ami_a = register(&ec2, "consul-server-a").await;
        let cloud = cloud(&moto.url).await;

        let e = cloud.machines().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
        assert!(
            e.message.contains(GROUP) && e.message.contains("cloud.auto_scaling_group"),
            "{e}"
        );

        // A launch configuration, not a template: no per-launch image to set.
        asg.create_launch_configuration()
            .launch_configuration_name("consul-lc")
            .image_id(&ami_a)
            .instance_type("t3.micro")
            .send()
            .await
            .unwrap();
        asg.create_auto_scaling_group()
            .auto_scaling_group_name(GROUP)
            .launch_configuration_name("consul-lc")
            .min_size(3)
            .max_size(3)
            .desired_capacity(3)
            .availability_zones("us-east-1a")
            .send()
            .await
            .unwrap();
        let ami_b = register(&ec2, "consul-server-b").await;
        let e = cloud.launch(&ami_b, "r1-o0-n0").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
        assert!(e.message.contains("launch configuration"), "{e}");
        let g = group(&asg).await;
        assert_eq!(sizes(&g), (3, 3, 3), "nothing changed");
        assert!(record(&g).is_empty(), "{:?}", record(&g));
    })
    .await;
}

/// `config/samples/asg.toml` pointed at moto (and at `consul`, if given), in `dir`.
fn asg_config(url: &str, consul: Option<&str>, dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("asg.toml");
    let mut sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/asg.toml"),
    )
    .unwrap()
    .replace(
        "region = \"eu-west-1\"",
        &format!("region = \"us-east-1\"\nendpoint_url = \"{url}\""),
    )
    .replace("name = \"prod\"", &format!("name = \"{CLUSTER}\""));
    if let Some(consul) = consul {
        sample.push_str(&format!("\n[consul]\naddress = \"{consul}\"\n"));
    }
    std::fs::write(&config, sample).unwrap();
    config
}

/// `rehydrator <args> --config FILE` against moto with test keys: exit status, stdout, stderr.
fn rehydrator(args: &[&str], config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .args(args)
        .args(["--timeout", "60s", "--config"])
        .arg(config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With no credentials anywhere, the error says so and where they are looked for, instead
/// of "the cloud is unreachable" and the SDK's dump of its request.
#[test]
fn missing_credentials_are_named_with_where_they_are_looked_for() {
    let dir = std::env::temp_dir().join(format!("rehydrator-nocreds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // No one answers there: the credentials fail first, before any connection.
    let config = asg_config("http://127.0.0.1:9", None, &dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .args(["doctor", "--timeout", "60s", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("AWS_CONFIG_FILE", dir.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no AWS credentials for DescribeAutoScalingGroups"),
        "{stderr}"
    );
    assert!(stderr.contains("AWS_ACCESS_KEY_ID"), "{stderr}");
    assert!(stderr.contains("instance profile (IMDS)"), "{stderr}");
    assert!(
        !stderr.contains("DispatchFailure"),
        "the SDK's dump: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rehydrator doctor --config FILE` against moto, as an operator runs it: its exit status and
/// its stdout.
async fn doctor(
    url: &str,
    consul: &str,
    dir: &std::path::Path,
    json: bool,
) -> (Option<i32>, String, String) {
    let config = asg_config(url, Some(consul), dir);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rehydrator"));
    cmd.args(["doctor", "--timeout", "60s", "--config"])
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    if json {
        cmd.arg("--json");
    }
    // Waited for off this thread: the simulator serves from it.
    let out = actix_rt::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn doctor_names_what_makes_a_group_unsafe_and_passes_once_fixed() {
    common::bounded(async {
        let moto = moto();
        let ec2 = client(&moto.url);
        let asg = asg_client(&moto.url);
        let ami_a = register(&ec2, "consul-server-a").await;
        launch_template(&ec2, &ami_a).await;
        server_group(&ec2, &asg, CLUSTER, 3).await;
        let dir = std::env::temp_dir().join(format!("rehydrator-doctor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Consul is checked first: the simulator's cluster is fine.
        let sim = common::sim();

        // As made: the guard is configured (the sample's) but the group has no hook for it.
        let (code, out, err) = doctor(&moto.url, &sim.url(), &dir, false).await;
        assert_eq!(code, Some(1), "{out}\n{err}");
        for line in [
            "✓ launch template",
            "✓ cluster tag",
            "! scale-in protection: 3 server(s) unprotected",
            "✓ AZRebalance: runs; its terminations wait for the lifecycle guard",
            "✗ lifecycle hooks: a lifecycle-guard action is configured but the group has no terminating hook",
            "! instance maintenance policy: none set",
            "✓ max size: 3 = desired",
            "✓ rollout record",
        ] {
            assert!(out.contains(line), "no {line:?} in:\n{out}");
        }
        assert!(out.contains("fix: aws autoscaling put-lifecycle-hook"), "{out}");
        assert!(err.contains("1 check(s) failed"), "{err}");

        // Fixed as the fixes say: protection, the hook.
        let ids: Vec<String> = group(&asg)
            .await
            .instances()
            .iter()
            .map(|i| i.instance_id().unwrap().to_owned())
            .collect();
        asg.set_instance_protection()
            .auto_scaling_group_name(GROUP)
            .set_instance_ids(Some(ids))
            .protected_from_scale_in(true)
            .send()
            .await
            .unwrap();
        asg.update_auto_scaling_group()
            .auto_scaling_group_name(GROUP)
            .new_instances_protected_from_scale_in(true)
            .send()
            .await
            .unwrap();
        asg.put_lifecycle_hook()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name("rehydrator-terminating")
            .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
            .heartbeat_timeout(600)
            .default_result("CONTINUE")
            .send()
            .await
            .unwrap();
        let (code, out, err) = doctor(&moto.url, &sim.url(), &dir, true).await;
        assert_eq!(code, Some(0), "{out}\n{err}");
        let findings: serde_json::Value = serde_json::from_str(&out).unwrap();
        let level = |check: &str| {
            findings
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["check"] == check)
                .map(|f| f["level"].as_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("no {check} in {findings:#}"))
        };
        assert_eq!(level("scale-in protection"), "ok");
        // moto answers DryRun as EC2 does for keys it allows: every changing EC2 call allowed.
        assert_eq!(level("permissions"), "ok");
        assert_eq!(level("lifecycle hooks"), "ok");
        // moto keeps no instance maintenance policy: still a warning, honestly.
        assert_eq!(level("instance maintenance policy"), "warning");
        sim.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[actix_rt::test]
async fn a_stopped_rollouts_group_is_restored_on_request_and_never_under_an_active_one() {
    common::bounded(async {
        let moto = moto();
        let ec2 = client(&moto.url);
        let asg = asg_client(&moto.url);
        let ami_a = register(&ec2, "consul-server-a").await;
        launch_template(&ec2, &ami_a).await;
        server_group(&ec2, &asg, CLUSTER, 3).await;
        let ami_b = register(&ec2, "consul-server-b").await;
        let cloud = cloud(&moto.url).await;
        // A step launched its server and the rollout stopped there: the group is as the
        // record says, one server over, max raised, AZRebalance suspended, on the new image.
        let extra = cloud.launch(&ami_b, "r1-o0-n0").await.unwrap();
        let consul = crate::common::sim_with(crate::common::rig::fast_sim(1));
        let dir = std::env::temp_dir().join(format!("rehydrator-restore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = asg_config(&moto.url, Some(&consul.url()), &dir);
        let http = awc::Client::default();
        let record_url = format!("{}/v1/kv/rehydrator/{CLUSTER}/rollout", consul.url());
        let put_record = |state: RolloutState| {
            let mut r = Rollout::start("r1".into(), &ami_b, 1, 1);
            r.state = state;
            let body = serde_json::to_vec(&r).unwrap();
            let (http, url) = (http.clone(), record_url.clone());
            async move {
                let resp = http.put(url).send_body(body).await.unwrap();
                assert!(resp.status().is_success());
            }
        };

        put_record(RolloutState::Active).await;
        let (code, out, err) = rehydrator(&["restore-group", "--template"], &config);
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(
            err.contains("rollout r1") && err.contains("is active"),
            "{err}"
        );
        assert_eq!(
            suspended(&group(&asg).await),
            ["AZRebalance"],
            "nothing undone"
        );

        put_record(RolloutState::Stopped {
            at: 2,
            reason: "the operator stopped it".into(),
        })
        .await;
        let (code, out, err) = rehydrator(&["restore-group", "--template"], &config);
        assert_eq!(code, Some(0), "{out}{err}");
        for line in [
            "resumed AZRebalance",
            "MaxSize stays 4: the group wants 4 servers",
            "launches from",
            "one more than before the step (3)",
        ] {
            assert!(out.contains(line), "no {line:?} in:\n{out}");
        }
        let g = group(&asg).await;
        assert!(suspended(&g).is_empty());
        assert_eq!(g.launch_template().unwrap().version(), Some("$Default"));
        let rec = record(&g);
        assert!(
            !rec.contains_key(PROCESSES_TAG) && !rec.contains_key(TEMPLATE_TAG),
            "{rec:?}"
        );
        assert!(
            rec.contains_key(BASE_TAG) && rec.contains_key(MAX_TAG),
            "kept while the group is over: {rec:?}"
        );

        // The operator retires the extra server as told; a second restore finishes the job.
        asg.terminate_instance_in_auto_scaling_group()
            .instance_id(&extra.id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .unwrap();
        let (code, out, err) = rehydrator(&["restore-group"], &config);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("MaxSize back to 3"), "{out}");
        let g = group(&asg).await;
        assert_eq!(sizes(&g), (3, 3, 3));
        assert!(record(&g).is_empty(), "{:?}", record(&g));
        let _ = std::fs::remove_dir_all(&dir);
        consul.stop().await;
    })
    .await;
}
