//! `rehydrator doctor`'s checks of an `ec2` cloud that launches from a launch template (no
//! Auto Scaling group): the template and the servers it finds, the image a rollout would
//! launch, and the permissions of the calls a rollout makes, asked with EC2's DryRun.

use super::{not, ok, permissions, Finding, Level};
use crate::cloud::ec2::LaunchFacts;

/// The findings for `facts`, a cluster `desired` servers strong.
pub fn check(facts: &LaunchFacts, desired: u32) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(match &facts.newest_image {
        Some(image) => ok(
            "image",
            format!(
                "a rollout would launch {image} from launch template {}",
                facts.template
            ),
        ),
        None => not(
            "image",
            Level::Fail,
            "no available image matches cloud.image_name (and cloud.image_owners): a rollout has \
             nothing to launch"
                .into(),
            "check cloud.image_name's pattern against `aws ec2 describe-images --owners self`"
                .into(),
        ),
    });
    out.push(if facts.servers == desired as usize {
        ok(
            "servers",
            format!(
                "{} instance(s) tagged for the cluster, as desired",
                facts.servers
            ),
        )
    } else {
        not(
            "servers",
            Level::Warning,
            format!(
                "{} instance(s) tagged for the cluster where {desired} are desired: a rollout \
                 launches and retires only what carries the rehydrator:cluster tag",
                facts.servers
            ),
            "tag the servers with rehydrator:cluster = cluster.name (the launch template's tag \
             specification does it for new ones)"
                .into(),
        )
    });
    out.push(permissions(
        &facts.dry_run,
        "with no image to launch or no server to retire, the calls on them were not asked",
    ));
    out
}
