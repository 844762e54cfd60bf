//! Snapshots to S3 (`rollout.snapshot_dir = "s3://bucket/prefix"`) through the real AWS SDK
//! against moto's S3, of the simulator's Consul and of real Consul (`CONSUL_BIN`): each
//! archive lands whole under the prefix with the name the rollout records, nothing is left in
//! the scratch directory, and past `snapshots_kept` the cluster's oldest go (another
//! cluster's stay).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use rehydrator::cloud::s3::S3Store;
use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::{Client, ConsulConfig, WatchPolicy};
use rehydrator_actors::plan::Rollout;

use crate::common::{self, moto};

const BUCKET: &str = "consul-snapshots";

async fn keys(s3: &aws_sdk_s3::Client) -> Vec<String> {
    let page = s3.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    let mut keys: Vec<String> = page
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

/// Three snapshots of the Consul at `consul` with two kept: the archives' keys and bytes.
async fn three_snapshots_two_kept(moto_url: &str, consul: &str, real: bool) {
    let s3 = moto::s3_client(moto_url);
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    // Another cluster's archive under the same prefix: never pruned by this one.
    s3.put_object()
        .bucket(BUCKET)
        .key("prod/other-r1-start-1.snap")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let dir = common::endpoint::scratch("snap-s3");
    let config = dir.join("rehydrator.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"snap\"\n[consul]\naddress = \"{consul}\"\n\
             [cloud]\ntype = \"ec2\"\nregion = \"us-east-1\"\nendpoint_url = \"{moto_url}\"\n\
             launch_template = \"consul-server\"\nimage_name = \"consul-server-*\"\n\
             [rollout]\nsnapshot_dir = \"s3://{BUCKET}/prod/\"\nsnapshots_kept = 2\n"
        ),
    )
    .unwrap();
    let settings = rehydrator_config::load_with_env(&config, &HashMap::new()).unwrap();
    let store = S3Store::for_snapshots(&settings, Some(moto::credentials()))
        .await
        .unwrap()
        .expect("an s3:// destination has a store");
    let consul = ConsulAdapter::new(
        Client::new(ConsulConfig::with_address(consul).unwrap()).unwrap(),
        WatchPolicy::default(),
    );
    let snapshots = settings.rollout.snapshots.as_ref().unwrap();
    let r = Rollout::start("r1".into(), "b", 0, 1);
    let mut names = Vec::new();
    for step in ["start", "retire-s1", "retire-s2"] {
        let name = rehydrator_actors::snapshot::save(
            &consul,
            Some(store.as_ref()),
            snapshots,
            "snap",
            &r,
            step,
        )
        .await
        .unwrap();
        names.push(name);
        // Names carry the time to the millisecond: one apart orders them.
        actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(names[0].starts_with("snap-r1-start-"), "{names:?}");
    let mut want: Vec<String> = names[1..].iter().map(|n| format!("prod/{n}")).collect();
    want.push("prod/other-r1-start-1.snap".into());
    want.sort();
    assert_eq!(
        keys(&s3).await,
        want,
        "the two newest kept, the other cluster's left"
    );
    let newest = s3
        .get_object()
        .bucket(BUCKET)
        .key(format!("prod/{}", names[2]))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert!(!newest.is_empty());
    if real {
        assert_eq!(newest[..2], [0x1f, 0x8b], "real Consul's archive is gzip");
    }
    // Uploaded archives leave no scratch file behind (each waits as `<pid>-<n>-<name>`).
    let scratch = std::env::temp_dir().join("rehydrator-snapshots");
    let left: Vec<String> = std::fs::read_dir(&scratch)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| names.iter().any(|n| f.ends_with(&format!("-{n}"))))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?} left in {}", scratch.display());
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_rt::test]
async fn snapshots_of_the_simulator_go_to_s3_and_the_oldest_are_pruned() {
    common::bounded(async {
        let moto = moto::moto();
        let sim = common::sim();
        three_snapshots_two_kept(&moto.url, &sim.url(), false).await;
        sim.stop().await;
    })
    .await;
}

#[actix_rt::test]
async fn snapshots_of_real_consul_go_to_s3_whole() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    common::bounded(async {
        let moto = moto::moto();
        let agent = common::consul_agent::DevAgent::start(&bin).await;
        three_snapshots_two_kept(&moto.url, &agent.url, true).await;
    })
    .await;
}

#[actix_rt::test]
async fn a_bucket_that_does_not_exist_fails_the_snapshot_naming_it() {
    common::bounded(async {
        let moto = moto::moto();
        let sim = common::sim();
        let dir = common::endpoint::scratch("snap-s3-missing");
        let config = dir.join("rehydrator.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nname = \"snap\"\n[cloud]\ntype = \"ec2\"\nregion = \"us-east-1\"\n\
                 endpoint_url = \"{}\"\nlaunch_template = \"t\"\nimage_name = \"i\"\n\
                 [rollout]\nsnapshot_dir = \"s3://no-such-bucket/p\"\n",
                moto.url
            ),
        )
        .unwrap();
        let settings = rehydrator_config::load_with_env(&config, &HashMap::new()).unwrap();
        let store = S3Store::for_snapshots(&settings, Some(moto::credentials()))
            .await
            .unwrap()
            .unwrap();
        let consul = ConsulAdapter::new(
            Client::new(ConsulConfig::with_address(&sim.url()).unwrap()).unwrap(),
            WatchPolicy::default(),
        );
        let why = rehydrator_actors::snapshot::save(
            &consul,
            Some(store.as_ref()),
            settings.rollout.snapshots.as_ref().unwrap(),
            "snap",
            &Rollout::start("r1".into(), "b", 0, 1),
            "start",
        )
        .await
        .unwrap_err();
        assert!(
            why.contains("could not be stored at s3://no-such-bucket/p/snap-r1-start-"),
            "{why}"
        );
        assert!(why.contains("NoSuchBucket"), "{why}");
        sim.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
