//! `rehydrator doctor`: a pre-flight of what would make a rollout or the lifecycle guard
//! unsafe or stuck, each finding ✓ / ! / ✗ with its fix; exit 1 on any ✗. Today it checks the
//! servers' Auto Scaling group (`cloud.auto_scaling_group`): launch template, cluster tag,
//! scale-in protection, AZRebalance, the guard's lifecycle hooks and their heartbeat timeout,
//! the instance maintenance policy, max size, a rollout's record left on the group, the image,
//! and the permissions (EC2's changing calls by DryRun). Read-only: it changes nothing.

use anyhow::Context as _;
use rehydrator::cloud::asg_checks::{self, Expect, Finding, Level};
use rehydrator::cloud::Ec2Cloud;
use rehydrator_config::{ActionKind, CloudSettings, Launch, Settings, WatchKind};

use super::{resolve, BadInput, Target};

#[derive(clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The guard's configuration: whether one runs, and how often.
fn guard(settings: &Settings) -> (bool, Option<std::time::Duration>) {
    let names: Vec<&String> = settings
        .actions
        .iter()
        .filter(|(_, a)| a.kind == ActionKind::LifecycleGuard)
        .map(|(n, _)| n)
        .collect();
    let every = settings
        .watches
        .iter()
        .filter(|w| w.actions.iter().any(|a| names.contains(&a)))
        .filter_map(|w| match w.kind {
            WatchKind::Schedule { every } => Some(every),
            _ => None,
        })
        .min();
    (!names.is_empty(), every)
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args.target)?;
    let Some(settings) = resolved.settings.as_ref() else {
        return Err(BadInput(
            "doctor: needs --config FILE: the [cloud] and [cluster] to check".into(),
        )
        .into());
    };
    let findings = match &settings.cloud {
        CloudSettings::Ec2(aws) | CloudSettings::Ecs(aws) => match &aws.launch {
            Launch::AutoScalingGroup(_) => {
                let cloud = Ec2Cloud::load(aws, &settings.cluster.name, None)
                    .await
                    .context("the cloud")?;
                let name = cloud
                    .group()
                    .context("cloud.auto_scaling_group names a group but none was built")?
                    .name();
                let facts = cloud
                    .inspect_group()
                    .await
                    .with_context(|| format!("reading group {name}"))?
                    .context("cloud.auto_scaling_group names a group but none was built")?;
                let newest = cloud.newest_image_id().await.context("the newest image")?;
                let (guard, guard_every) = guard(settings);
                asg_checks::check(
                    &facts,
                    &Expect {
                        cluster: settings.cluster.name.clone(),
                        newest_image: newest,
                        guard,
                        promotion: settings.rollout.stable_timeout,
                        guard_every,
                    },
                )
            }
            Launch::LaunchTemplate(_) => vec![nothing("cloud.auto_scaling_group is not set")],
        },
        _ => vec![nothing("the cloud is not ec2 or ecs")],
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings).context("encoding the findings")?
        );
    } else {
        for f in &findings {
            println!("{} {}: {}", f.level.mark(), f.check, f.detail);
            if let Some(fix) = &f.fix {
                println!("    fix: {fix}");
            }
        }
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

fn nothing(why: &str) -> Finding {
    Finding {
        check: "group",
        level: Level::Ok,
        detail: format!("{why}: no Auto Scaling group to check"),
        fix: None,
    }
}
