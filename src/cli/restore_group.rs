//! `rehydrator restore-group`: puts the servers' Auto Scaling group back as a stopped rollout's
//! record on the group says it was: the suspended processes resumed, MaxSize restored, and with
//! `--template` the launch template version it launched before. Refused while a rollout is
//! active and not paused: undoing its changes under it would fight it. (A paused rollout
//! redoes what it needs at its next step.)

use anyhow::Context as _;
use rehydrator::cloud::Ec2Cloud;
use rehydrator::consul::QueryOptions;
use rehydrator_actors::plan::Rollout;
use rehydrator_config::{CloudSettings, Launch};

use super::{resolve, BadInput, Target};

#[derive(clap::Args)]
pub struct RestoreGroupArgs {
    #[command(flatten)]
    pub target: Target,
    /// Also point the group back at the launch template version it used before the rollout
    /// (it launches the old image again).
    #[arg(long)]
    pub template: bool,
}

pub async fn run(args: RestoreGroupArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args.target)?;
    let Some(settings) = resolved.settings.as_ref() else {
        return Err(
            BadInput("restore-group: needs --config FILE: the [cloud] group".into()).into(),
        );
    };
    let aws = match &settings.cloud {
        CloudSettings::Ec2(aws) | CloudSettings::Ecs(aws)
            if matches!(aws.launch, Launch::AutoScalingGroup(_)) =>
        {
            aws
        }
        _ => {
            return Err(BadInput(format!(
                "{}: cloud.auto_scaling_group is not set: there is no group to restore",
                resolved.config_path.display()
            ))
            .into())
        }
    };
    let key = resolved.keys().rollout();
    let record = resolved
        .client()?
        .kv_get(&key, &QueryOptions::default())
        .await
        .with_context(|| format!("reading the rollout record {key}"))?
        .value;
    let pause = resolved.keys().pause();
    let paused = resolved
        .client()?
        .kv_get(&pause, &QueryOptions::default())
        .await
        .with_context(|| format!("reading the pause key {pause}"))?
        .value
        .is_some();
    if let Some(entry) = record.filter(|_| !paused) {
        let r: Rollout = serde_json::from_slice(&entry.value)
            .with_context(|| format!("the rollout record {key} does not decode"))?;
        if r.is_active() {
            anyhow::bail!(
                "rollout {} to {} is active: restoring the group under it would fight it; \
                 pause it first (`rehydrator pause`), or let it finish",
                r.id,
                r.target_image
            );
        }
    }
    let cloud = Ec2Cloud::load(aws, &settings.cluster.name, None)
        .await
        .context("the cloud")?;
    let group = cloud
        .group()
        .context("cloud.auto_scaling_group names a group but none was built")?;
    let done = group
        .restore(args.template)
        .await
        .with_context(|| format!("restoring group {}", group.name()))?;
    for line in done {
        println!("{line}");
    }
    Ok(())
}
