//! The servers' EC2 Auto Scaling group, for the `ec2` and `ecs` backends when
//! `cloud.auto_scaling_group` names it. The group launches, counts and retires every server;
//! rehydrator only steers it, so the group never fights the rollout (it would replace a server
//! terminated behind its back from the old image, and not count one launched outside it).
//!
//! **How a step runs through the group.** desired + 1, not standby or detach: the rollout
//! launches first and chooses the server to retire only once the new one is a voter (the
//! leader last, by the same rules as every backend); the extra server is the group's own from
//! the start (its health checks and lifecycle hooks apply to it); and no server is ever
//! outside the group where a crash could forget it.
//! - **launch(image, token)**: the EC2 token lookup first (`Ec2Cloud`), then
//!   1. the group's launch template gets a version booting `image` (made from the version the
//!      group uses, described `rehydrator: <image>`, reused if the newest version already is
//!      that), and the group is pointed at it: whatever the group launches from now on, a
//!      health replacement included, is new;
//!   2. the group tag `rehydrator:token = <token>`, propagated at launch, so the instance the
//!      group launches carries the token like one from RunInstances;
//!   3. `DesiredCapacity = base + 1`, an absolute value: `base` is the desired capacity before
//!      the step, kept in the group tag `rehydrator:base-desired`, so a retried launch asks
//!      for the same size and never a second extra instance; MaxSize is raised to base + 1
//!      if it was lower, AZRebalance suspended (it would terminate a server to even out the
//!      zones, with no idea of Raft), the servers protected from scale-in;
//!   4. a bounded wait for the group's instance with the token. An instance of the group on
//!      the new image without any token is claimed instead: the group launched it in place of
//!      this step's earlier instance that died (a health replacement), and it is the new
//!      server the step wants.
//! - **retire(id)**: TerminateInstanceInAutoScalingGroup with ShouldDecrementDesiredCapacity,
//!   so the group ends at its base size; then the step's record is settled: MaxSize restored,
//!   the base and token tags removed, and once every server runs the group's image, the
//!   suspended processes resumed and the template record dropped. An instance no longer in the
//!   group (already gone, or detached) is terminated as by `Ec2Cloud`.
//!
//! **The record lives on the group, as tags**, each written before the change it describes
//! and removed after what it records is undone, so a replica that dies at any point leaves the
//! group saying what to restore, and the next holder (or an operator, in the console) reads it
//! there: `rehydrator:base-desired`, `rehydrator:restore-max`, `rehydrator:resume-processes`,
//! `rehydrator:restore-template` (the version the group used before the rollout), and
//! `rehydrator:token`.
//!
//! **The lifecycle guard's side** (`lifecycle_waits`, `complete_lifecycle`, `extend_lifecycle`
//! of the port): the group's hooks whose names start with `rehydrator` (others are a user's
//! own, left alone), the instances they hold in `Pending:Wait` or `Terminating:Wait`, and
//! CompleteLifecycleAction CONTINUE or RecordLifecycleActionHeartbeat on them. A rollout step's
//! own instance is let through those hooks by the step itself, which has made the guard's
//! checks and holds the lock the guard would need.
//!
//! AWS API actions called (beyond `Ec2Cloud`'s): Auto Scaling DescribeAutoScalingGroups,
//! CreateOrUpdateTags, DeleteTags, UpdateAutoScalingGroup, SetDesiredCapacity,
//! SuspendProcesses, ResumeProcesses, SetInstanceProtection,
//! TerminateInstanceInAutoScalingGroup, DescribeLifecycleHooks, CompleteLifecycleAction,
//! RecordLifecycleActionHeartbeat; EC2 DescribeLaunchTemplateVersions,
//! CreateLaunchTemplateVersion, CreateTags (a claimed instance). Errors are `Ec2Cloud`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_autoscaling::types::{AutoScalingGroup as Group, LaunchTemplateSpecification, Tag};
use rehydrator_actors::ports::{LifecycleWait, Machine, MachineState, Transition};
use tokio::time::Instant;

use super::aws::{sdk_error, DryRun};
use super::CloudError;

/// What the group needs of EC2: its instances by token or ID, their tags, their termination
/// outside the group, and the launch template's versions. `Ec2Cloud` is the one there is; the
/// group names the trait, not it, so EC2's module may hold a group without a circle.
pub(crate) trait Instances {
    /// The instance a launch's token names, in any state.
    async fn by_token(&self, token: &str) -> Result<Option<Machine>, CloudError>;
    /// The instances with these IDs that EC2 still shows.
    async fn by_ids(&self, ids: &[String]) -> Result<Vec<Machine>, CloudError>;
    /// A version (a number, `$Latest` or `$Default`) of a launch template.
    async fn template_version(
        &self,
        template_id: &str,
        version: &str,
    ) -> Result<TemplateVersion, CloudError>;
    /// A new version of the template, `source`'s settings with `image`; its number.
    async fn new_template_version(
        &self,
        template_id: &str,
        source: i64,
        image: &str,
        description: &str,
    ) -> Result<i64, CloudError>;
    /// Tags `id` as the machine `token`'s launch made.
    async fn claim(&self, id: &str, token: &str) -> Result<(), CloudError>;
    /// Whether the credentials allow the EC2 calls a group rollout makes, by permission.
    async fn dry_run(
        &self,
        template_id: &str,
        image: &str,
        instance: &str,
    ) -> Vec<(&'static str, DryRun)>;
    /// One instance by ID, in any state.
    async fn find(&self, id: &str) -> Result<Option<Machine>, CloudError>;
    /// Terminates an instance that is no longer (or never was) the group's.
    async fn terminate_instance(&self, id: &str) -> Result<(), CloudError>;
}

/// One version of a launch template, as far as a rollout cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateVersion {
    pub number: i64,
    pub image: String,
    pub description: String,
}

/// The group tag holding the desired capacity before the step's extra server.
pub const BASE_TAG: &str = "rehydrator:base-desired";
/// The group tag holding MaxSize before the rollout raised it.
pub const MAX_TAG: &str = "rehydrator:restore-max";
/// The group tag naming the processes the rollout suspended (comma-separated).
pub const PROCESSES_TAG: &str = "rehydrator:resume-processes";
/// The group tag holding the launch template version the group used before the rollout.
pub const TEMPLATE_TAG: &str = "rehydrator:restore-template";
/// The launch's token, propagated to the instance the group launches.
pub const TOKEN_TAG: &str = super::aws::TOKEN_TAG;

/// The lifecycle hooks that are the guard's to complete: their names start with this. Other
/// hooks (a user's own) are left alone.
pub const HOOK_PREFIX: &str = "rehydrator";
/// How long a retirement waits for its instance to reach a hook's wait state, to let it go.
const HOOK_WAIT: Duration = Duration::from_secs(60);

/// The processes a rollout keeps suspended: AZRebalance terminates a server to even out
/// the zones, without regard for Raft.
const SUSPENDED: &[&str] = &["AZRebalance"];

/// How long a launch waits for the group's instance before it fails (retryably).
pub const DEFAULT_LAUNCH_WAIT: Duration = Duration::from_secs(300);
/// How often that wait looks.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// How long a token instance's absence is believed before a claim: EC2's listing lags a
/// launch by a few seconds, and a claim in that time would take an instance of the group's
/// own for this launch while the launch's instance arrives as well.
pub const DEFAULT_CLAIM_AFTER: Duration = Duration::from_secs(20);

/// The servers' Auto Scaling group.
#[derive(Clone)]
pub struct AutoScalingGroup {
    client: aws_sdk_autoscaling::Client,
    name: String,
    endpoint: String,
    launch_wait: Duration,
    poll: Duration,
    claim_after: Duration,
}

impl std::fmt::Debug for AutoScalingGroup {
    // The client holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoScalingGroup")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// One instance of the group, as the group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// The group's lifecycle state: `Pending`, `InService`, `Terminating:Wait`, …
    pub lifecycle: String,
    pub zone: String,
    pub protected: bool,
}

impl Member {
    /// On its way out of the group: the group terminates or detaches it.
    pub fn leaving(&self) -> bool {
        self.lifecycle.starts_with("Terminat") || self.lifecycle.starts_with("Detach")
    }
}

/// The group's launch template: the only way its image can be changed per launch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TemplateRef {
    id: String,
    /// As the group names it: a number, `$Latest` or `$Default`.
    version: String,
}

/// The group as one read sees it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub desired: i32,
    pub min: i32,
    pub max: i32,
    pub members: Vec<Member>,
    pub suspended: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// The tag keys the group copies onto the instances it launches.
    pub propagated: BTreeSet<String>,
    /// NewInstancesProtectedFromScaleIn.
    pub new_instances_protected: bool,
    /// The instance maintenance policy's MinHealthyPercentage and MaxHealthyPercentage.
    pub maintenance: Option<(i32, i32)>,
    template: Option<TemplateRef>,
}

impl GroupView {
    /// A numeric tag of ours, if set and valid; a tag that does not parse is refused rather
    /// than guessed at (an operator edited it, or another tool uses the key).
    fn number(&self, key: &str) -> Result<Option<i32>, CloudError> {
        self.tags
            .get(key)
            .map(|v| {
                v.trim().parse::<i32>().map_err(|_| CloudError::Refused {
                    request: "DescribeAutoScalingGroups".into(),
                    reason: format!("the group's tag {key} = {v:?} is not a number"),
                })
            })
            .transpose()
    }

    fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.leaving())
    }
}

impl AutoScalingGroup {
    pub fn new(client: aws_sdk_autoscaling::Client, name: String, endpoint: String) -> Self {
        Self {
            client,
            name,
            endpoint,
            launch_wait: DEFAULT_LAUNCH_WAIT,
            poll: DEFAULT_POLL,
            claim_after: DEFAULT_CLAIM_AFTER,
        }
    }

    /// Other waits for the group's instance: in all, between looks, and before a claim (the
    /// tests' moto launches at once and never lags).
    pub fn with_waits(
        mut self,
        launch_wait: Duration,
        poll: Duration,
        claim_after: Duration,
    ) -> Self {
        self.launch_wait = launch_wait;
        self.poll = poll;
        self.claim_after = claim_after;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn error<E>(&self, request: &str, e: aws_sdk_autoscaling::error::SdkError<E>) -> CloudError
    where
        E: aws_sdk_autoscaling::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        sdk_error(&self.endpoint, request, e)
    }

    /// The group now.
    pub async fn view(&self) -> Result<GroupView, CloudError> {
        let request = "DescribeAutoScalingGroups";
        let out = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.name)
            .send()
            .await
            .map_err(|e| self.error(request, e))?;
        let group = out
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(self.name.as_str()))
            .ok_or_else(|| CloudError::Refused {
                request: request.into(),
                reason: format!(
                    "there is no Auto Scaling group named {:?} (cloud.auto_scaling_group)",
                    self.name
                ),
            })?;
        view(group)
    }

    async fn set_tag(&self, key: &str, value: &str, propagate: bool) -> Result<(), CloudError> {
        let tag = Tag::builder()
            .resource_id(&self.name)
            .resource_type("auto-scaling-group")
            .key(key)
            .value(value)
            .propagate_at_launch(propagate)
            .build();
        self.client
            .create_or_update_tags()
            .tags(tag)
            .send()
            .await
            .map_err(|e| self.error("CreateOrUpdateTags", e))?;
        Ok(())
    }

    async fn delete_tags(&self, keys: &[&str]) -> Result<(), CloudError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut call = self.client.delete_tags();
        for key in keys {
            call = call.tags(
                Tag::builder()
                    .resource_id(&self.name)
                    .resource_type("auto-scaling-group")
                    .key(*key)
                    .build(),
            );
        }
        call.send().await.map_err(|e| self.error("DeleteTags", e))?;
        Ok(())
    }

    /// Points the group at the template version that boots `image`, making it if need be.
    async fn use_image(
        &self,
        ec2: &impl Instances,
        group: &GroupView,
        image: &str,
    ) -> Result<(), CloudError> {
        let Some(template) = &group.template else {
            return Err(CloudError::Refused {
                request: "DescribeAutoScalingGroups".into(),
                reason: format!(
                    "group {} launches from a launch configuration or a mixed instances \
                     policy; rehydrator rolls groups with a launch template (LaunchTemplate)",
                    self.name
                ),
            });
        };
        let current = ec2
            .template_version(&template.id, &template.version)
            .await?;
        if current.image == image {
            return Ok(());
        }
        let description = format!("rehydrator: {image}");
        // A holder that died between making the version and pointing the group at it left it
        // as the newest: reused, not made twice.
        let latest = ec2.template_version(&template.id, "$Latest").await?;
        let number = if latest.image == image && latest.description == description {
            latest.number
        } else {
            ec2.new_template_version(&template.id, current.number, image, &description)
                .await?
        };
        if !group.tags.contains_key(TEMPLATE_TAG) {
            self.set_tag(TEMPLATE_TAG, &template.version, false).await?;
        }
        self.client
            .update_auto_scaling_group()
            .auto_scaling_group_name(&self.name)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(&template.id)
                    .version(number.to_string())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("UpdateAutoScalingGroup (launch template)", e))?;
        tracing::info!(
            group = %self.name,
            template = %template.id,
            version = number,
            %image,
            "The group launches the new image from now on.",
        );
        Ok(())
    }

    /// Launches one server through the group: see the module's notes.
    pub(crate) async fn launch(
        &self,
        ec2: &impl Instances,
        image: &str,
        token: &str,
    ) -> Result<Machine, CloudError> {
        let group = self.view().await?;
        self.use_image(ec2, &group, image).await?;
        let base = match group.number(BASE_TAG)? {
            Some(base) => base,
            None => {
                self.set_tag(BASE_TAG, &group.desired.to_string(), false)
                    .await?;
                group.desired
            }
        };
        let want = base + 1;
        if group.desired > want {
            return Err(CloudError::Refused {
                request: "DescribeAutoScalingGroups".into(),
                reason: format!(
                    "group {} wants {} servers, more than its size before this step ({base}, \
                     tag {BASE_TAG}) and the one a step adds: a step never shrinks the group; \
                     bring its desired capacity back to {want} or less",
                    self.name, group.desired
                ),
            });
        }
        if group.tags.get(TOKEN_TAG).map(String::as_str) != Some(token) {
            self.set_tag(TOKEN_TAG, token, true).await?;
        }
        let to_suspend: Vec<&str> = SUSPENDED
            .iter()
            .copied()
            .filter(|p| !group.suspended.iter().any(|s| s == p))
            .collect();
        if !to_suspend.is_empty() {
            // Only what we suspended is ours to resume: the record lists exactly that.
            let mut record: Vec<&str> = group
                .tags
                .get(PROCESSES_TAG)
                .map(|v| v.split(',').filter(|p| !p.is_empty()).collect())
                .unwrap_or_default();
            record.extend(to_suspend.iter().copied());
            record.sort_unstable();
            record.dedup();
            self.set_tag(PROCESSES_TAG, &record.join(","), false)
                .await?;
            self.client
                .suspend_processes()
                .auto_scaling_group_name(&self.name)
                .set_scaling_processes(Some(to_suspend.iter().map(|p| p.to_string()).collect()))
                .send()
                .await
                .map_err(|e| self.error("SuspendProcesses", e))?;
        }
        let unprotected: Vec<String> = group
            .live()
            .filter(|m| !m.protected)
            .map(|m| m.id.clone())
            .collect();
        if !unprotected.is_empty() {
            self.protect(&unprotected).await?;
        }
        if group.max < want {
            if !group.tags.contains_key(MAX_TAG) {
                self.set_tag(MAX_TAG, &group.max.to_string(), false).await?;
            }
            self.client
                .update_auto_scaling_group()
                .auto_scaling_group_name(&self.name)
                .max_size(want)
                .send()
                .await
                .map_err(|e| self.error("UpdateAutoScalingGroup (MaxSize)", e))?;
        }
        if group.desired != want {
            self.client
                .set_desired_capacity()
                .auto_scaling_group_name(&self.name)
                .desired_capacity(want)
                .honor_cooldown(false)
                .send()
                .await
                .map_err(|e| self.error("SetDesiredCapacity", e))?;
            tracing::info!(
                group = %self.name,
                from = group.desired,
                to = want,
                %token,
                "Asked the group for one server more.",
            );
        }
        self.await_launch(ec2, image, token).await
    }

    /// Scale-in protection on `ids`: a lowered desired capacity (a scheduled action, an
    /// operator) makes the group pick an instance to terminate, and a server must not be one.
    async fn protect(&self, ids: &[String]) -> Result<(), CloudError> {
        self.client
            .set_instance_protection()
            .auto_scaling_group_name(&self.name)
            .set_instance_ids(Some(ids.to_vec()))
            .protected_from_scale_in(true)
            .send()
            .await
            .map_err(|e| self.error("SetInstanceProtection", e))?;
        Ok(())
    }

    /// The instance the group launched for `token`: found by the token, or claimed (see the
    /// module's notes); bounded by the launch wait.
    async fn await_launch(
        &self,
        ec2: &impl Instances,
        image: &str,
        token: &str,
    ) -> Result<Machine, CloudError> {
        let started = Instant::now();
        let until = started + self.launch_wait;
        loop {
            if let Some(m) = ec2.by_token(token).await? {
                if m.state != MachineState::Terminated {
                    self.protect(std::slice::from_ref(&m.id)).await?;
                    self.release_own(&m.id, Transition::Launching).await?;
                }
                tracing::info!(group = %self.name, machine = %m.id, %token, "The group launched the server.");
                return Ok(m);
            }
            if started.elapsed() >= self.claim_after.min(self.launch_wait) {
                if let Some(m) = self.unclaimed(ec2, image).await? {
                    ec2.claim(&m.id, token).await?;
                    tracing::warn!(
                        group = %self.name,
                        machine = %m.id,
                        %token,
                        "Claimed a server the group launched on the new image in this launch's place.",
                    );
                    return Ok(Machine {
                        token: Some(token.to_owned()),
                        ..m
                    });
                }
            }
            if Instant::now() + self.poll > until {
                let group = self.view().await?;
                return Err(CloudError::NotReady {
                    machine: format!("group {}", self.name),
                    reason: format!(
                        "no instance with token {token} after {:?}; the group wants {} and \
                         has {} live ({}); see its activity history for a failed launch",
                        self.launch_wait,
                        group.desired,
                        group.live().count(),
                        group
                            .live()
                            .map(|m| format!("{} {}", m.id, m.lifecycle))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// A live instance of the group on `image` that no launch claims.
    async fn unclaimed(
        &self,
        ec2: &impl Instances,
        image: &str,
    ) -> Result<Option<Machine>, CloudError> {
        let group = self.view().await?;
        let ids: Vec<String> = group.live().map(|m| m.id.clone()).collect();
        Ok(ec2
            .by_ids(&ids)
            .await?
            .into_iter()
            .filter(|m| m.image == image && m.token.is_none())
            .max_by_key(|m| m.launched_at))
    }

    /// The group's lifecycle hooks that are the guard's, by transition.
    async fn hooks(&self) -> Result<Vec<(Transition, String, Duration)>, CloudError> {
        let request = "DescribeLifecycleHooks";
        let out = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&self.name)
            .send()
            .await
            .map_err(|e| self.error(request, e))?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .filter_map(|h| {
                let name = h.lifecycle_hook_name()?;
                if !name.starts_with(HOOK_PREFIX) {
                    return None;
                }
                let transition = match h.lifecycle_transition()? {
                    "autoscaling:EC2_INSTANCE_LAUNCHING" => Transition::Launching,
                    "autoscaling:EC2_INSTANCE_TERMINATING" => Transition::Terminating,
                    _ => return None,
                };
                let timeout = h.heartbeat_timeout().and_then(|t| u64::try_from(t).ok());
                Some((
                    transition,
                    name.to_owned(),
                    Duration::from_secs(timeout.unwrap_or(3600)),
                ))
            })
            .collect())
    }

    /// The group's instances held in a wait state by a hook of the guard's.
    pub(crate) async fn waits(&self) -> Result<Vec<LifecycleWait>, CloudError> {
        let hooks = self.hooks().await?;
        if hooks.is_empty() {
            return Ok(Vec::new());
        }
        let group = self.view().await?;
        let mut out = Vec::new();
        for m in &group.members {
            let transition = match m.lifecycle.as_str() {
                "Pending:Wait" => Transition::Launching,
                "Terminating:Wait" => Transition::Terminating,
                _ => continue,
            };
            for (t, hook, timeout) in &hooks {
                if *t == transition {
                    out.push(LifecycleWait {
                        machine: m.id.clone(),
                        transition,
                        hook: hook.clone(),
                        heartbeat_timeout: *timeout,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Lets a held instance go on: CompleteLifecycleAction CONTINUE.
    pub(crate) async fn complete(&self, wait: &LifecycleWait) -> Result<(), CloudError> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.name)
            .lifecycle_hook_name(&wait.hook)
            .instance_id(&wait.machine)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .map_err(|e| self.error("CompleteLifecycleAction", e))?;
        Ok(())
    }

    /// Keeps a held instance waiting for another heartbeat timeout.
    pub(crate) async fn heartbeat(&self, wait: &LifecycleWait) -> Result<(), CloudError> {
        self.client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.name)
            .lifecycle_hook_name(&wait.hook)
            .instance_id(&wait.machine)
            .send()
            .await
            .map_err(|e| self.error("RecordLifecycleActionHeartbeat", e))?;
        Ok(())
    }

    /// Lets the rollout's own instance through the guard's hooks of `transition`: the step has
    /// made the checks the guard makes (the new server is awaited as a voter; the old one's
    /// leadership was moved and its replacement promoted), and the guard cannot run while the
    /// step holds the `step` lock. Bounded: an instance that never reaches the wait state (no
    /// hook, or the group was quicker) is left to the group.
    async fn release_own(&self, id: &str, transition: Transition) -> Result<(), CloudError> {
        let hooks: Vec<_> = self
            .hooks()
            .await?
            .into_iter()
            .filter(|(t, _, _)| *t == transition)
            .collect();
        if hooks.is_empty() {
            return Ok(());
        }
        let wait_state = match transition {
            Transition::Launching => "Pending:Wait",
            Transition::Terminating => "Terminating:Wait",
        };
        let until = Instant::now() + HOOK_WAIT.min(self.launch_wait);
        loop {
            let group = self.view().await?;
            match group.members.iter().find(|m| m.id == id) {
                Some(m) if m.lifecycle == wait_state => break,
                // Still on its way into the hook's wait.
                Some(m) if m.lifecycle == "Pending" || m.lifecycle == "Terminating" => {}
                _ => return Ok(()),
            }
            if Instant::now() + self.poll > until {
                return Ok(());
            }
            tokio::time::sleep(self.poll).await;
        }
        for (_, hook, timeout) in hooks {
            let wait = LifecycleWait {
                machine: id.to_owned(),
                transition,
                hook,
                heartbeat_timeout: timeout,
            };
            self.complete(&wait).await?;
            tracing::info!(group = %self.name, machine = %id, hook = %wait.hook, "Let the step's own server through its lifecycle hook.");
        }
        Ok(())
    }

    /// Puts back what a stopped rollout's record says it changed, for `rehydrator
    /// restore-group`: the suspended processes resumed, MaxSize restored (when the group's size
    /// allows), and with `template` the launch template version the group used before. Each
    /// record tag goes once its change is undone. An extra server a stopped step left is not
    /// terminated here: which server goes is the operator's call, and the answer says so.
    /// Answers what was done, a line each.
    pub async fn restore(&self, template: bool) -> Result<Vec<String>, CloudError> {
        let group = self.view().await?;
        let mut done = Vec::new();
        let mut delete: Vec<&str> = Vec::new();
        if let Some(processes) = self.resume_recorded(&group).await? {
            done.push(format!("resumed {}", processes.join(", ")));
            delete.push(PROCESSES_TAG);
        }
        if let Some(max) = group.number(MAX_TAG)? {
            if group.desired <= max {
                self.client
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(&self.name)
                    .max_size(max)
                    .send()
                    .await
                    .map_err(|e| self.error("UpdateAutoScalingGroup (MaxSize)", e))?;
                done.push(format!("MaxSize back to {max}"));
                delete.push(MAX_TAG);
            } else {
                done.push(format!(
                    "MaxSize stays {}: the group wants {} servers, more than the {max} it had",
                    group.max, group.desired
                ));
            }
        }
        match (group.tags.get(TEMPLATE_TAG), &group.template) {
            (Some(version), Some(t)) if template => {
                self.client
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(&self.name)
                    .launch_template(
                        LaunchTemplateSpecification::builder()
                            .launch_template_id(&t.id)
                            .version(version)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| self.error("UpdateAutoScalingGroup (launch template)", e))?;
                done.push(format!(
                    "the group launches from {} version {version} again",
                    t.id
                ));
                delete.push(TEMPLATE_TAG);
            }
            (Some(version), Some(t)) => done.push(format!(
                "the group still launches the new image (template {} version {});                  --template puts back version {version}",
                t.id, t.version
            )),
            _ => {}
        }
        match group.number(BASE_TAG)? {
            Some(base) if group.desired > base => done.push(format!(
                "the group wants {} servers, one more than before the step ({base}): retire                  the extra one with `aws autoscaling terminate-instance-in-auto-scaling-group                  --should-decrement-desired-capacity --instance-id <id>`",
                group.desired
            )),
            Some(_) => delete.extend([BASE_TAG, TOKEN_TAG]),
            None => delete.push(TOKEN_TAG),
        }
        delete.retain(|k| group.tags.contains_key(*k));
        self.delete_tags(&delete).await?;
        if done.is_empty() {
            done.push("the group carries no rollout's changes: nothing to restore".into());
        }
        Ok(done)
    }

    /// What `rehydrator doctor` judges the group on: the group, its hooks of the guard's,
    /// and the image its launch template boots.
    pub(crate) async fn inspect(&self, ec2: &impl Instances) -> Result<GroupFacts, CloudError> {
        let view = self.view().await?;
        let hooks = self.hooks().await?;
        let image = match &view.template {
            Some(t) => Some(ec2.template_version(&t.id, &t.version).await?.image),
            None => None,
        };
        let ids: Vec<String> = view.live().map(|m| m.id.clone()).collect();
        let images = ec2
            .by_ids(&ids)
            .await?
            .into_iter()
            .map(|m| (m.id, m.image))
            .collect();
        let dry_run = match (&view.template, &image, ids.first()) {
            (Some(t), Some(image), Some(server)) => ec2.dry_run(&t.id, image, server).await,
            _ => Vec::new(),
        };
        Ok(GroupFacts {
            name: self.name.clone(),
            view,
            hooks,
            template_image: image,
            images,
            dry_run,
        })
    }

    /// Retires one server through the group: see the module's notes.
    pub(crate) async fn retire(&self, ec2: &impl Instances, id: &str) -> Result<(), CloudError> {
        let group = self.view().await?;
        match group.members.iter().find(|m| m.id == id) {
            Some(m) if !m.leaving() => {
                self.client
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(id)
                    .should_decrement_desired_capacity(true)
                    .send()
                    .await
                    .map_err(|e| self.error("TerminateInstanceInAutoScalingGroup", e))?;
                tracing::info!(group = %self.name, machine = %id, "Terminated a server in the group, one fewer wanted.");
                self.release_own(id, Transition::Terminating).await?;
            }
            Some(_) => {
                tracing::debug!(machine = %id, "The group is already terminating it.");
            }
            None => match ec2.find(id).await? {
                Some(m) if m.state != MachineState::Terminated => {
                    ec2.terminate_instance(id).await?;
                }
                Some(_) => {}
                None => {
                    return Err(CloudError::Refused {
                        request: "TerminateInstanceInAutoScalingGroup".into(),
                        reason: format!("{id} is neither in group {} nor in EC2", self.name),
                    })
                }
            },
        }
        self.settle(ec2).await
    }

    /// Undoes what the record says once the step it covers is over: MaxSize and the tags of
    /// the step once the group is back at its base size; the processes and the template
    /// record once every server runs the group's image.
    async fn settle(&self, ec2: &impl Instances) -> Result<(), CloudError> {
        let group = self.view().await?;
        let Some(base) = group.number(BASE_TAG)? else {
            return Ok(());
        };
        if group.desired > base {
            return Ok(());
        }
        if let Some(max) = group.number(MAX_TAG)? {
            if group.max != max && group.desired <= max {
                self.client
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(&self.name)
                    .max_size(max)
                    .send()
                    .await
                    .map_err(|e| self.error("UpdateAutoScalingGroup (MaxSize)", e))?;
            }
        }
        let mut done: Vec<&str> = vec![BASE_TAG, TOKEN_TAG];
        if group.tags.contains_key(MAX_TAG) {
            done.push(MAX_TAG);
        }
        if self.uniform(ec2, &group).await? {
            if self.resume_recorded(&group).await?.is_some() {
                done.push(PROCESSES_TAG);
            }
            if group.tags.contains_key(TEMPLATE_TAG) {
                done.push(TEMPLATE_TAG);
            }
        }
        done.retain(|k| group.tags.contains_key(*k));
        self.delete_tags(&done).await?;
        tracing::info!(group = %self.name, size = group.desired, settled = ?done, "The group is back at its size.");
        Ok(())
    }

    /// Resumes the processes the group's record says rehydrator suspended; answers them, or
    /// None when the record names none.
    async fn resume_recorded(&self, group: &GroupView) -> Result<Option<Vec<String>>, CloudError> {
        let Some(tag) = group.tags.get(PROCESSES_TAG) else {
            return Ok(None);
        };
        let processes: Vec<String> = tag
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if !processes.is_empty() {
            self.client
                .resume_processes()
                .auto_scaling_group_name(&self.name)
                .set_scaling_processes(Some(processes.clone()))
                .send()
                .await
                .map_err(|e| self.error("ResumeProcesses", e))?;
        }
        Ok(Some(processes))
    }

    /// Whether every live server runs the image the group launches.
    async fn uniform(&self, ec2: &impl Instances, group: &GroupView) -> Result<bool, CloudError> {
        let Some(template) = &group.template else {
            return Ok(false);
        };
        let image = ec2
            .template_version(&template.id, &template.version)
            .await?
            .image;
        let ids: Vec<String> = group.live().map(|m| m.id.clone()).collect();
        Ok(ec2.by_ids(&ids).await?.iter().all(|m| m.image == image))
    }
}

/// What the doctor reads of a group.
#[derive(Debug, Clone)]
pub struct GroupFacts {
    pub name: String,
    pub view: GroupView,
    /// The guard's hooks: transition, name, heartbeat timeout.
    pub hooks: Vec<(Transition, String, Duration)>,
    /// The image the group's launch template boots (None: no launch template).
    pub template_image: Option<String>,
    /// Each live server's image, by instance.
    pub images: BTreeMap<String, String>,
    /// What EC2's DryRun said of the changing EC2 calls a group rollout makes.
    pub dry_run: Vec<(&'static str, DryRun)>,
}

impl GroupFacts {
    /// Whether the group launches from a launch template rehydrator can version.
    pub fn has_template(&self) -> bool {
        self.view.template.is_some()
    }
}

/// The group as the SDK answered it, as the rollout reads it.
fn view(g: &Group) -> Result<GroupView, CloudError> {
    let decode = |reason: &str| CloudError::Decode {
        request: "DescribeAutoScalingGroups".into(),
        reason: reason.into(),
    };
    let template = g.launch_template().map(|t| TemplateRef {
        id: t.launch_template_id().unwrap_or_default().to_owned(),
        version: t.version().unwrap_or("$Default").to_owned(),
    });
    if template.as_ref().is_some_and(|t| t.id.is_empty()) {
        return Err(decode("a launch template without an ID"));
    }
    Ok(GroupView {
        desired: g
            .desired_capacity()
            .ok_or_else(|| decode("no DesiredCapacity"))?,
        min: g.min_size().ok_or_else(|| decode("no MinSize"))?,
        max: g.max_size().ok_or_else(|| decode("no MaxSize"))?,
        members: g
            .instances()
            .iter()
            .map(|i| Member {
                id: i.instance_id().unwrap_or_default().to_owned(),
                lifecycle: i
                    .lifecycle_state()
                    .map(|s| s.as_str())
                    .unwrap_or("")
                    .to_owned(),
                zone: i.availability_zone().unwrap_or_default().to_owned(),
                protected: i.protected_from_scale_in().unwrap_or(false),
            })
            .filter(|m| !m.id.is_empty())
            .collect(),
        suspended: g
            .suspended_processes()
            .iter()
            .filter_map(|p| p.process_name().map(str::to_owned))
            .collect(),
        tags: g
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
            .collect(),
        propagated: g
            .tags()
            .iter()
            .filter(|t| t.propagate_at_launch() == Some(true))
            .filter_map(|t| t.key().map(str::to_owned))
            .collect(),
        new_instances_protected: g.new_instances_protected_from_scale_in().unwrap_or(false),
        maintenance: g
            .instance_maintenance_policy()
            .and_then(|p| Some((p.min_healthy_percentage()?, p.max_healthy_percentage()?))),
        template,
    })
}
