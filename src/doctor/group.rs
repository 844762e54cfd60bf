//! What makes an Auto Scaling group unsafe for Consul servers, judged from what
//! `AutoScalingGroup::inspect` read: `rehydrator doctor`'s group checks. Pure, so each rule is
//! tested on its own; the command prints them.

use std::time::Duration;

use super::{not, ok, Finding, Level};
use crate::cloud::asg::{GroupFacts, BASE_TAG, HOOK_PREFIX, MAX_TAG, PROCESSES_TAG, TEMPLATE_TAG};
use crate::cloud::aws::CLUSTER_TAG;

/// What the permissions finding cannot check of a group.
const AUTOSCALING: &str =
    "the Auto Scaling calls that change the group have no dry run and are not \
                           checked (deploy/cloudformation.yaml's task role has them)";
use rehydrator_actors::ports::Transition;

/// What the configuration expects of the group.
#[derive(Debug, Clone)]
pub struct Expect {
    /// `cluster.name`: the tag the group must put on its instances.
    pub cluster: String,
    /// The newest image the rollout would roll onto, if known.
    pub newest_image: Option<String>,
    /// A `lifecycle-guard` action is configured.
    pub guard: bool,
    /// `rollout.stable_timeout`: how long a new server may take to become a voter.
    pub promotion: Duration,
    /// The guard's schedule, if it has one: it heartbeats once a run.
    pub guard_every: Option<Duration>,
}

/// Every check, in the order an operator fixes them.
pub fn check(f: &GroupFacts, e: &Expect) -> Vec<Finding> {
    let g = &f.view;
    let name = &f.name;
    let mut out = Vec::new();

    out.push(if f.has_template() {
        ok(
            "launch template",
            "the group launches from a launch template".into(),
        )
    } else {
        not(
            "launch template",
            Level::Fail,
            "the group launches from a launch configuration or a mixed instances policy".into(),
            "use a launch template (LaunchTemplate) on the group: rehydrator sets the image \
             of the next launch through a template version"
                .into(),
        )
    });

    let tagged = g.tags.get(CLUSTER_TAG) == Some(&e.cluster) && g.propagated.contains(CLUSTER_TAG);
    out.push(if tagged {
        ok("cluster tag", format!("{CLUSTER_TAG} = {} is propagated at launch", e.cluster))
    } else {
        not(
            "cluster tag",
            Level::Warning,
            format!("the group does not put {CLUSTER_TAG} = {} on its instances", e.cluster),
            format!(
                "aws autoscaling create-or-update-tags --tags ResourceId={name},ResourceType=auto-scaling-group,Key={CLUSTER_TAG},Value={},PropagateAtLaunch=true (the task role's policy is scoped by it)",
                e.cluster
            ),
        )
    });

    let unprotected: Vec<&str> = g
        .members
        .iter()
        .filter(|m| !m.leaving() && !m.protected)
        .map(|m| m.id.as_str())
        .collect();
    out.push(if unprotected.is_empty() && g.new_instances_protected {
        ok(
            "scale-in protection",
            "every server and every new instance is protected".into(),
        )
    } else {
        not(
            "scale-in protection",
            Level::Warning,
            format!(
                "{} server(s) unprotected{}: a lowered desired capacity lets the group pick a \
                 server to terminate",
                unprotected.len(),
                if g.new_instances_protected {
                    ""
                } else {
                    ", new instances unprotected"
                }
            ),
            format!(
                "aws autoscaling update-auto-scaling-group --auto-scaling-group-name {name} \
                 --new-instances-protected-from-scale-in, and set-instance-protection on the \
                 servers (a rollout's first step does both for its servers)"
            ),
        )
    });

    let rebalancing = !g.suspended.iter().any(|p| p == "AZRebalance");
    out.push(match (rebalancing, e.guard) {
        (false, _) => ok("AZRebalance", "suspended".into()),
        (true, true) => ok(
            "AZRebalance",
            "runs; its terminations wait for the lifecycle guard".into(),
        ),
        (true, false) => not(
            "AZRebalance",
            Level::Warning,
            "AZRebalance runs: it terminates servers to even out the zones, with no idea of Raft"
                .into(),
            format!(
                "aws autoscaling suspend-processes --auto-scaling-group-name {name} \
                 --scaling-processes AZRebalance, or run the lifecycle guard"
            ),
        ),
    });

    let hook = |t: Transition| f.hooks.iter().find(|(tr, _, _)| *tr == t);
    let terminating = hook(Transition::Terminating);
    let launching = hook(Transition::Launching);
    match (e.guard, terminating) {
        (true, None) => out.push(not(
            "lifecycle hooks",
            Level::Fail,
            format!("a lifecycle-guard action is configured but the group has no terminating hook named {HOOK_PREFIX}*"),
            format!(
                "aws autoscaling put-lifecycle-hook --auto-scaling-group-name {name} \
                 --lifecycle-hook-name {HOOK_PREFIX}-terminating --lifecycle-transition \
                 autoscaling:EC2_INSTANCE_TERMINATING --heartbeat-timeout 600 --default-result CONTINUE"
            ),
        )),
        (false, _) => out.push(not(
            "lifecycle hooks",
            Level::Warning,
            "no lifecycle-guard action: AWS's own replacements (instance refresh, AZ \
             rebalancing, health replacements, scale-in) are not guarded"
                .into(),
            "add an action of type \"lifecycle-guard\" on a schedule watch, and the group's \
             rehydrator-terminating and rehydrator-launching hooks (docs/auto-scaling-groups.md)"
                .into(),
        )),
        (true, Some((_, hook_name, timeout))) => {
            let short_for_promotion = *timeout < e.promotion;
            let short_for_runs = e.guard_every.is_some_and(|every| *timeout < every * 3);
            out.push(if short_for_promotion || short_for_runs {
                not(
                    "lifecycle hooks",
                    Level::Warning,
                    format!(
                        "{hook_name}'s heartbeat timeout ({timeout:?}) is shorter than {}: a \
                         server could go unguarded",
                        if short_for_promotion {
                            format!("a promotion (rollout.stable_timeout {:?})", e.promotion)
                        } else {
                            "three of the guard's runs".into()
                        }
                    ),
                    format!(
                        "put-lifecycle-hook --lifecycle-hook-name {hook_name} --heartbeat-timeout {}",
                        e.promotion.max(Duration::from_secs(600)).as_secs()
                    ),
                )
            } else {
                ok(
                    "lifecycle hooks",
                    format!(
                        "{hook_name} (heartbeat {timeout:?}){}",
                        launching.map_or(String::new(), |(_, l, _)| format!(", {l}"))
                    ),
                )
            });
        }
    }

    out.push(match g.maintenance {
        Some((min, _)) if min >= 100 => ok(
            "instance maintenance policy",
            "MinHealthyPercentage 100: replacements launch before they terminate".into(),
        ),
        other => not(
            "instance maintenance policy",
            Level::Warning,
            match other {
                Some((min, max)) => format!("MinHealthyPercentage {min}, MaxHealthyPercentage {max}: the group may terminate a server before its replacement runs"),
                None => "none set: the group may terminate a server before its replacement runs".into(),
            },
            format!(
                "aws autoscaling update-auto-scaling-group --auto-scaling-group-name {name} \
                 --instance-maintenance-policy MinHealthyPercentage=100,MaxHealthyPercentage=110"
            ),
        ),
    });

    out.push(if g.max > g.desired {
        ok(
            "max size",
            format!(
                "{} leaves room for a step's extra server over {}",
                g.max, g.desired
            ),
        )
    } else {
        ok(
            "max size",
            format!(
                "{} = desired: a rollout step raises it by one and restores it ({MAX_TAG})",
                g.max
            ),
        )
    });

    let record: Vec<&str> = [BASE_TAG, MAX_TAG, PROCESSES_TAG, TEMPLATE_TAG]
        .into_iter()
        .filter(|k| g.tags.contains_key(*k))
        .collect();
    out.push(if record.is_empty() {
        ok(
            "rollout record",
            "the group carries no rollout's changes".into(),
        )
    } else {
        not(
            "rollout record",
            Level::Warning,
            format!(
                "the group carries a rollout's changes ({}): a rollout is under way, or one \
                 stopped",
                record.join(", ")
            ),
            "`rehydrator status` says whether a rollout runs; docs/auto-scaling-groups.md \
             says how to put a stopped one's group back"
                .into(),
        )
    });

    out.push(super::permissions(&f.dry_run, AUTOSCALING));

    match (&f.template_image, &e.newest_image) {
        (Some(launches), Some(newest)) if launches != newest => out.push(ok(
            "image",
            format!(
                "the group launches {launches}; the newest image is {newest}: a rollout is due"
            ),
        )),
        (Some(launches), _) => {
            let behind = f.images.values().filter(|i| *i != launches).count();
            out.push(ok(
                "image",
                format!("the group launches {launches}; {behind} server(s) run another image"),
            ));
        }
        (None, _) => {}
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cloud::aws::DryRun;

    #[test]
    fn a_denied_dry_run_fails_and_an_unclear_one_warns() {
        let allowed = [
            ("ec2:CreateTags", DryRun::Allowed),
            ("ec2:TerminateInstances", DryRun::Allowed),
        ];
        let f = crate::doctor::permissions(&allowed, AUTOSCALING);
        assert_eq!(f.level, Level::Ok, "{f:?}");
        assert!(
            f.detail.contains("ec2:CreateTags, ec2:TerminateInstances"),
            "{f:?}"
        );
        let mut denied = allowed.to_vec();
        denied.push((
            "ec2:CreateLaunchTemplateVersion",
            DryRun::Denied("You are not authorized".into()),
        ));
        let f = crate::doctor::permissions(&denied, AUTOSCALING);
        assert_eq!(f.level, Level::Fail);
        assert!(f
            .detail
            .contains("ec2:CreateLaunchTemplateVersion (You are not authorized)"));
        let unclear = [("ec2:CreateTags", DryRun::Unknown("Throttling: slow".into()))];
        assert_eq!(
            crate::doctor::permissions(&unclear, AUTOSCALING).level,
            Level::Warning
        );
        assert_eq!(
            crate::doctor::permissions(&[], AUTOSCALING).level,
            Level::Ok
        );
    }

    #[test]
    fn a_mark_per_level() {
        assert_eq!(
            [Level::Ok, Level::Warning, Level::Fail].map(Level::mark),
            ["✓", "!", "✗"]
        );
        let json = serde_json::to_value(not("x", Level::Fail, "d".into(), "f".into())).unwrap();
        assert_eq!(json["level"], "fail");
        assert_eq!(json["fix"], "f");
        let fine = serde_json::to_value(ok("x", "d".into())).unwrap();
        assert!(fine.get("fix").is_none(), "{fine}");
    }
}
