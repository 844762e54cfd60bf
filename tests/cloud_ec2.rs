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
