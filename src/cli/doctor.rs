//! `rehydrator doctor`: a pre-flight of what would make a rollout or the lifecycle guard
//! unsafe or stuck, each finding ✓ / ! / ✗ with its fix; exit 1 on any ✗. Read-only: it
//! changes nothing.
//!
//! - Consul, for every cloud (`doctor::consul`): reaching the cluster and its leader, the
//!   servers' versions and the leadership path, autopilot's configuration against the
//!   rollout's, the cluster's health, the ACL token's rights.
//! - The servers' Auto Scaling group, when `cloud.auto_scaling_group` names one
//!   (`doctor::group`): launch template, cluster tag, scale-in protection, AZRebalance, the
//!   guard's lifecycle hooks and their heartbeat timeout, the instance maintenance policy, max
//!   size, a rollout's record left on the group, the image, and the permissions (EC2's
//!   changing calls by DryRun).
//! - An `ec2` cloud launching from a launch template (`doctor::launch`): the image a rollout
//!   would launch, the servers tagged for the cluster, and RunInstances and TerminateInstances
//!   asked with DryRun.
//!
//! Without `--config`, Consul comes from the consul CLI's environment and the rollout's
//! defaults stand for its settings.

use anyhow::Context as _;
use rehydrator::cloud::Ec2Cloud;
use rehydrator::doctor::group::{self, Expect};
use rehydrator::doctor::{self, not, ok, Finding, Level};
use rehydrator_config::{
    ActionKind, CloudSettings, Launch, Settings, WatchKind, DEFAULT_STABLE_TIMEOUT,
};

use super::{resolve, Resolved, Target};

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
    let mut findings = consul_findings(&resolved).await?;
    if let Some(settings) = resolved.settings.as_ref() {
        findings.extend(safety_net_findings(settings).await);
        findings.extend(group_findings(settings).await?);
        findings.extend(launch_findings(settings).await?);
        findings.extend(raft_findings(&resolved).await);
    }
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

/// The cluster through Consul: with `--config`, against what the configuration expects;
/// without, against `run`'s defaults.
async fn consul_findings(resolved: &Resolved) -> anyhow::Result<Vec<Finding>> {
    let client = resolved.client()?;
    let settings = resolved.settings.as_ref();
    let facts = doctor::consul::gather(&client, &resolved.cluster).await;
    Ok(doctor::consul::check(
        &facts,
        &doctor::consul::Expect {
            cluster: resolved.cluster.clone(),
            desired_servers: settings.map(|s| s.cluster.desired_servers.get()),
            stable_timeout: settings.map_or(DEFAULT_STABLE_TIMEOUT, |s| s.rollout.stable_timeout),
            snapshots: settings
                .and_then(|s| s.rollout.snapshots.as_ref())
                .map(|s| s.required),
        },
    ))
}

/// The rollout's gates and snapshot destination, asked as a step would ask them.
async fn safety_net_findings(settings: &Settings) -> Vec<Finding> {
    let mut out = Vec::new();
    let gates = match rehydrator::gate::from_settings(settings, None).await {
        Ok(gates) => gates,
        Err(e) => {
            out.push(not(
                "gate",
                Level::Fail,
                format!("the CloudWatch gate cannot be built: {e}"),
                "set the AWS region and credentials the rollout's steps will have".into(),
            ));
            Vec::new()
        }
    };
    for gate in gates {
        out.push(match gate.closed().await {
            None => ok("gate", format!("{} is open: steps may go", gate.name())),
            // Closed is the gate working; a rollout would wait, not break.
            Some(why) => not(
                "gate",
                Level::Warning,
                format!(
                    "{} is closed now, so every step would wait: {why}",
                    gate.name()
                ),
                "check the gate's settings; a firing alert or an alarm in ALARM holds steps by design"
                    .into(),
            ),
        });
    }
    let Some(snapshots) = settings.rollout.snapshots.as_ref() else {
        return out;
    };
    match &snapshots.dest {
        rehydrator_config::SnapshotDest::Dir(dir) => out.push(ok(
            "snapshots",
            format!(
                "to the directory {} (created at the first snapshot)",
                dir.display()
            ),
        )),
        dest @ rehydrator_config::SnapshotDest::S3 { prefix, .. } => {
            let store = rehydrator::cloud::s3::S3Store::for_snapshots(settings, None).await;
            let listed = match store {
                Ok(Some(store)) => store.list(prefix).await.map_err(|e| e.to_string()),
                Ok(None) => Err("no S3 client was built".into()),
                Err(e) => Err(e.to_string()),
            };
            out.push(match listed {
                Ok(keys) => ok(
                    "snapshots",
                    format!("{dest} can be listed ({} archive(s) there)", keys.len()),
                ),
                Err(why) => not(
                    "snapshots",
                    if snapshots.required {
                        Level::Fail
                    } else {
                        Level::Warning
                    },
                    format!("{dest} cannot be listed: {why}"),
                    "create the bucket and allow s3:ListBucket, s3:PutObject and \
                     s3:DeleteObject on it (deploy/cloudformation.yaml: SnapshotBucket)"
                        .into(),
                ),
            });
        }
    }
    out
}

/// The servers' Auto Scaling group, when `[cloud]` names one.
async fn group_findings(settings: &Settings) -> anyhow::Result<Vec<Finding>> {
    let (CloudSettings::Ec2(aws) | CloudSettings::Ecs(aws)) = &settings.cloud else {
        return Ok(Vec::new());
    };
    let Launch::AutoScalingGroup(_) = &aws.launch else {
        return Ok(Vec::new());
    };
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
    Ok(group::check(
        &facts,
        &Expect {
            cluster: settings.cluster.name.clone(),
            newest_image: newest,
            guard,
            promotion: settings.rollout.stable_timeout,
            guard_every,
        },
    ))
}

/// An `ec2` cloud launching from a launch template: the image, the servers, the permissions.
async fn launch_findings(settings: &Settings) -> anyhow::Result<Vec<Finding>> {
    let CloudSettings::Ec2(aws) = &settings.cloud else {
        return Ok(Vec::new());
    };
    let cloud = Ec2Cloud::load(aws, &settings.cluster.name, None)
        .await
        .context("the cloud")?;
    let Some(facts) = cloud
        .inspect_launch()
        .await
        .context("reading the servers and the image")?
    else {
        return Ok(Vec::new());
    };
    Ok(rehydrator::doctor::launch::check(
        &facts,
        settings.cluster.desired_servers.get(),
    ))
}

/// With a rollout configured: the servers Raft lists that no machine of the cloud accounts
/// for, which would hold a rollout back. Nothing without a rollout (no cloud to compare with).
async fn raft_findings(resolved: &Resolved) -> Option<Finding> {
    if !resolved
        .settings
        .as_ref()
        .is_some_and(super::run::has_rollout)
    {
        return None;
    }
    let snapshot = match resolved.rollout_env("doctor").await {
        Ok(env) => rehydrator_actors::rollout::cluster(&env)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    Some(match snapshot {
        Ok(s) => doctor::raft::check(&rehydrator_actors::plan::unaccounted(&s), s.servers().len()),
        Err(e) => not(
            "raft",
            Level::Warning,
            format!("Raft's servers could not be compared with the cloud's machines: {e:#}"),
            "see the findings above for Consul and the cloud".into(),
        ),
    })
}
