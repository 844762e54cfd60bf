//! `Ec2Cloud`, the actors' `CloudPort` on EC2, against moto's EC2 server through the real
//! aws-sdk-ec2 client over loopback HTTP: the newest image by filter and creation date, a launch
//! from a launch template that a token makes idempotent (even after the machine was retired),
//! the cluster's machines by tag, retire, and how failures reach the port.
//!
//! moto is a Python package (`moto[server]`); `scripts/test.sh` installs it. Without it these
//! tests fail saying so rather than pass without testing anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use crate::common::moto::{
    client, credentials, free_port, launch_template, moto, register, settings,
};
use rehydrator::cloud::ec2::{Ec2Target, CLUSTER_TAG, TOKEN_TAG};
use rehydrator::cloud::Ec2Cloud;
use rehydrator_actors::ports::{CloudPort, ErrorKind, MachineState};

/// The cloud as `run` builds it (settings, endpoint override) with the test's static keys.
async fn cloud(url: &str, cluster: &str) -> Ec2Cloud {
    Ec2Cloud::load(&settings(url), cluster, Some(credentials()))
        .await
        .unwrap()
}

#[actix_rt::test]
async fn newest_image_by_filter_then_creation_date() {
    common::bounded(async {
        let moto = moto();
        let ec2 = client(&moto.url);
        let cloud = cloud(&moto.url, "prod").await;
        assert_eq!(cloud.newest_image().await.unwrap(), None, "no image yet");

        let older = register(&ec2, "consul-server-b").await;
        // moto's CreationDate is to the second: the next one is a second later at least, and
        // its name sorts first, so only the date can make it the newest.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let newer = register(&ec2, "consul-server-a").await;
        // Newer still but not matching the name filter.
        register(&ec2, "other-image").await;

        let got = cloud.newest_image().await.unwrap().expect("an image");
        assert_eq!(got.id, newer, "not {older}: {got:?}");
        assert_eq!(got.name, "consul-server-a");
        assert!(got.created.starts_with("20"), "{got:?}");

        // In the same second the name decides: z beats 0 unless 0 landed a second later.
        let z = register(&ec2, "consul-server-z").await;
        let zero = register(&ec2, "consul-server-0").await;
        let dates = ec2
            .describe_images()
            .image_ids(&z)
            .image_ids(&zero)
            .send()
            .await
            .unwrap();
        let date = |id: &str| {
            dates
                .images()
                .iter()
                .find(|i| i.image_id() == Some(id))
                .and_then(|i| i.creation_date())
                .unwrap()
                .to_owned()
        };
        let expected = if date(&z) == date(&zero) { &z } else { &zero };
        let got = cloud.newest_image().await.unwrap().unwrap();
        assert_eq!(&got.id, expected, "{got:?}");
    })
    .await;
}

#[actix_rt::test]
async fn launch_once_list_retire_and_never_twice() {
    common::bounded(async {
        let moto = moto();
        let ec2 = client(&moto.url);
        let ami_a = register(&ec2, "consul-server-1").await;
        let ami_b = register(&ec2, "consul-server-2").await;
        launch_template(&ec2, &ami_a).await;
        let cloud = cloud(&moto.url, "prod").await;
        // Another cluster's server in the same account is none of this cloud's business.
        let other = cloud_with_target(&moto.url, "staging").await;
        let theirs = other.launch(&ami_a, "staging-t1").await.unwrap();
        assert!(cloud.machines().await.unwrap().is_empty());

        // Launched on the image asked for, not the template's, and tagged.
        let first = cloud.launch(&ami_b, "r1-o3-n3").await.unwrap();
        assert!(first.id.starts_with("i-"), "{first:?}");
        assert_eq!(first.image, ami_b);
        assert_eq!(first.token.as_deref(), Some("r1-o3-n3"));
        assert_eq!(first.node.as_deref(), Some(first.id.as_str()));
        assert!(first.address.is_some(), "{first:?}");
        assert!(first.launched_at > 1_600_000_000_000, "{first:?}");
        assert!(
            matches!(first.state, MachineState::Pending | MachineState::Running),
            "{first:?}"
        );

        // The same token again: the same machine, no second one.
        let again = cloud.launch(&ami_b, "r1-o3-n3").await.unwrap();
        assert_eq!(again.id, first.id);
        let listed = cloud.machines().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let m = &listed[0];
        assert_eq!(m.id, first.id);
        assert_eq!(m.address, first.address);
        assert_eq!(m.token.as_deref(), Some("r1-o3-n3"));
        assert_eq!(m.state, MachineState::Running);

        // The tags are on the instance itself, as an operator would look for them.
        let described = ec2
            .describe_instances()
            .instance_ids(&first.id)
            .send()
            .await
            .unwrap();
        let tags: Vec<(String, String)> = described.reservations()[0].instances()[0]
            .tags()
            .iter()
            .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
            .collect();
        for (k, v) in [
            (CLUSTER_TAG, "prod"),
            (TOKEN_TAG, "r1-o3-n3"),
            ("Name", "prod-consul-server"),
        ] {
            assert!(tags.contains(&(k.into(), v.into())), "{k}={v} in {tags:?}");
        }

        // A second step has its own token: a second machine.
        let second = cloud.launch(&ami_b, "r1-o2-n4").await.unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(cloud.machines().await.unwrap().len(), 2);

        // Retired: off the list. Retiring again is harmless.
        cloud.retire(&first.id).await.unwrap();
        let left: Vec<String> = cloud
            .machines()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(left, vec![second.id.clone()]);
        cloud.retire(&first.id).await.unwrap();

        // The retried step after its machine was retired finds that machine, terminated,
        // rather than launching another.
        let retried = cloud.launch(&ami_b, "r1-o3-n3").await.unwrap();
        assert_eq!(retried.id, first.id);
        assert_eq!(retried.state, MachineState::Terminated);
        assert_eq!(cloud.machines().await.unwrap().len(), 1);
        let all = ec2.describe_instances().send().await.unwrap();
        let count: usize = all.reservations().iter().map(|r| r.instances().len()).sum();
        assert_eq!(count, 3, "prod's two and staging's one, no more");

        // The other cluster's machine was never touched.
        let theirs_now = other.machines().await.unwrap();
        assert_eq!(theirs_now.len(), 1);
        assert_eq!(theirs_now[0].id, theirs.id);
    })
    .await;
}

/// A cloud built from a client and a target, as a caller with its own SDK config would.
async fn cloud_with_target(url: &str, cluster: &str) -> Ec2Cloud {
    Ec2Cloud::new(
        client(url),
        Ec2Target {
            cluster: cluster.into(),
            launch: rehydrator_config::Launch::LaunchTemplate("consul-server".into()),
            image_name: "consul-server-*".into(),
            image_owners: vec!["self".into()],
        },
        url.into(),
    )
}

#[actix_rt::test]
async fn failures_reach_the_port_with_their_kind() {
    common::bounded(async {
        let moto = moto();
        let cloud = cloud(&moto.url, "prod").await;

        // EC2 refuses: an unknown instance, an unknown image, a token EC2 cannot take.
        let e = cloud.retire("i-0123456789abcdef0").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
        assert!(
            e.message.contains("TerminateInstances") && e.message.contains("InvalidInstanceID"),
            "{e}"
        );
        let e = cloud
            .launch("ami-12345678", &"x".repeat(65))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");

        // Nobody listening: unreachable, worth a retry, and no key in the message.
        let closed = format!("http://127.0.0.1:{}", free_port());
        let gone = Ec2Cloud::load(&settings(&closed), "prod", Some(credentials()))
            .await
            .unwrap();
        let e = gone.machines().await.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
        assert!(
            matches!(e.kind, ErrorKind::Unreachable | ErrorKind::Timeout),
            "{e:?}"
        );
        assert!(!e.message.contains("testing"), "credentials leaked: {e}");
        drop(moto);
    })
    .await;
}

/// `rehydrator doctor --json --config FILE` for an `ec2` cloud launching from a launch template
/// on moto, Consul the simulator: the exit status and the findings by check.
async fn doctor_ec2(
    moto_url: &str,
    consul: &str,
    image_name: &str,
    dir: &std::path::Path,
) -> (Option<i32>, serde_json::Value, String) {
    let cloud = format!(
        "type = \"ec2\"\nregion = \"us-east-1\"\nendpoint_url = \"{moto_url}\"\n\
         launch_template = \"consul-server\"\nimage_name = \"{image_name}\""
    );
    let config = dir.join("ec2.toml");
    std::fs::write(
        &config,
        common::rollout::config("prod", 3, consul, &cloud, "stable_timeout = \"1m\""),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rehydrator"));
    cmd.args(["doctor", "--json", "--timeout", "60s", "--config"])
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    // Waited for off this thread: the simulator serves from it.
    let out = actix_rt::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let findings = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (
        out.status.code(),
        findings,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn finding<'a>(findings: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {findings:#}"))
}

#[actix_rt::test]
async fn doctor_dry_runs_a_launch_templates_launch_and_retirement() {
    common::bounded(async {
        let moto = moto();
        let ec2 = client(&moto.url);
        let ami = register(&ec2, "consul-server-a").await;
        launch_template(&ec2, &ami).await;
        let servers = cloud(&moto.url, "prod").await;
        for i in 0..3 {
            servers.launch(&ami, &format!("seed-{i}")).await.unwrap();
        }
        let sim = common::sim();
        let dir =
            std::env::temp_dir().join(format!("rehydrator-doctor-ec2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let (code, findings, err) =
            doctor_ec2(&moto.url, &sim.url(), "consul-server-*", &dir).await;
        assert_eq!(code, Some(0), "{findings:#}\n{err}");
        let image = finding(&findings, "image");
        assert_eq!(image["level"], "ok", "{image}");
        assert!(image["detail"].as_str().unwrap().contains(&ami), "{image}");
        assert_eq!(finding(&findings, "servers")["level"], "ok");
        // moto answers DryRun as EC2 does for a caller it allows.
        let permissions = finding(&findings, "permissions");
        assert_eq!(permissions["level"], "ok", "{permissions}");
        let detail = permissions["detail"].as_str().unwrap();
        assert!(
            detail.contains("ec2:RunInstances") && detail.contains("ec2:TerminateInstances"),
            "{detail}"
        );
        // Every server is still there: DryRun changed nothing.
        assert_eq!(servers.machines().await.unwrap().len(), 3);

        // An image filter that matches nothing: the rollout would have nothing to launch.
        let (code, findings, err) = doctor_ec2(&moto.url, &sim.url(), "nothing-*", &dir).await;
        assert_eq!(code, Some(1), "{findings:#}\n{err}");
        assert_eq!(finding(&findings, "image")["level"], "fail");
        assert!(err.contains("check(s) failed"), "{err}");
        sim.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
