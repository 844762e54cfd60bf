//! ECS as the actors' `CloudPort`: the Consul servers are ECS tasks, one per container instance,
//! and a "machine" is the EC2 instance under it. `run` builds it from `[cloud] type = "ecs"`; the
//! tests run it against moto's server through the real SDK clients (`tests/cloud_ecs.rs`).
//!
//! The EC2 half is `Ec2Cloud`'s, not a copy: images, the instance list by the
//! `rehydrator:cluster` tag, the token lookup, RunInstances from the launch template with the
//! image overridden, and TerminateInstances all go through it.
//!
//! - **newest_image**: as `Ec2Cloud`.
//! - **machines**: `Ec2Cloud`'s instances of the cluster, with the state ECS adds: a running
//!   instance is `Pending` until it has registered as an ACTIVE container instance and a task of
//!   the Consul task definition's family (any revision) is RUNNING on it, `Stopping` once its
//!   container instance is DRAINING; other instance states are EC2's. The Consul agent only
//!   answers once its task runs, so a machine is not "running" before that.
//! - **launch(image, token)**: `Ec2Cloud`'s launch (a token already used answers its instance,
//!   even a terminated one, which is returned as is), then a wait, polled and bounded by
//!   `registration_timeout`, until the instance is an ACTIVE container instance of the ECS
//!   cluster (ListContainerInstances with `ec2InstanceId == <id>`, then
//!   DescribeContainerInstances, matched on the instance ID too). Then the Consul task: first
//!   ListTasks by `startedBy` (the one filter ECS allows with it) and DescribeTasks, and a RUNNING
//!   task of that `startedBy` on this container instance is the answer; only without one,
//!   StartTask (`task_definition`, `containerInstances = [arn]`, `startedBy`). `startedBy` is the
//!   token where ECS takes it (1 to 36 letters, digits, `-`, `_`), else a readable prefix and a
//!   64-bit FNV-1a hash of it. A retried launch therefore makes neither a second instance nor a
//!   second task; a token whose task has stopped on a still ACTIVE instance gets it started
//!   again (the Consul server is what the step wants). An instance that never registers fails
//!   with `CloudError::NotReady` naming the instance and the likely causes; one that stops or
//!   terminates meanwhile (each poll also asks DescribeInstances) fails at once.
//! - **retire(id)**: the container instance (if registered) → UpdateContainerInstancesState
//!   DRAINING; StopTask for each task of the Consul family on it and a wait (bounded, 90 s) for
//!   them to stop; TerminateInstances (`Ec2Cloud`); then DeregisterContainerInstance with
//!   `force` so the cluster's list stays tidy. Repeating it is harmless: a drained instance is not
//!   drained again, a stopped task is not listed, EC2 accepts terminating a terminated instance,
//!   and a deregistered instance is no longer found (an unknown instance ID is still refused, as
//!   by `Ec2Cloud`).
//!
//! Conventions the deployment must follow:
//! - the launch template boots an ECS-optimized AMI whose user data writes
//!   `ECS_CLUSTER=<ecs_cluster>` to `/etc/ecs/ecs.config`, with an instance profile that lets the
//!   agent register (`ecs:RegisterContainerInstance` and kin, e.g. the managed
//!   AmazonEC2ContainerServiceforEC2Role);
//! - the task definition runs `consul agent -server` with host networking, so the Raft address
//!   is the instance's private IP (`Machine::address`), and `node_name` set to the instance ID
//!   (from the instance metadata, or ECS's container metadata file), so `Machine::node` is the
//!   instance ID;
//! - its Consul configuration sets `leave_on_terminate = true` (not the default for servers):
//!   StopTask's SIGTERM then makes the agent leave gracefully; the task's `stopTimeout` should
//!   leave it time to (the default 30 s does). One that dies instead is force-left by the
//!   rollout's step once serf calls it failed.
//!
//! AWS API actions called (the IAM policy needs them): EC2 DescribeImages, DescribeInstances,
//! RunInstances, CreateTags (tags on launch), TerminateInstances, plus iam:PassRole for the
//! launch template's instance profile; ECS ListContainerInstances, DescribeContainerInstances,
//! ListTasks, DescribeTasks, StartTask, StopTask, UpdateContainerInstancesState,
//! DeregisterContainerInstance, plus iam:PassRole for the task definition's roles if it has any.
//!
//! Credentials and errors are `Ec2Cloud`'s: the SDK's default chain unless a caller passes
//! static keys; errors carry the operation, the service's code and message, never a key.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_ec2::config::Credentials;
use aws_sdk_ecs::types::{ContainerInstance, ContainerInstanceStatus, Failure, Task};
use rehydrator_actors::ports::{CloudPort, Image, Machine, MachineState, PortError, PortFuture};
use rehydrator_config::AwsSettings;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::asg::Instances as _;
use super::aws::{self, sdk_error};
use super::ec2::Ec2Cloud;
use super::CloudError;

/// `registration_timeout` when the settings give none (the config's default too).
pub const DEFAULT_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// How often launch looks for the registration and retire for the stopped tasks.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// How long retire waits for the Consul tasks to stop before terminating anyway: ECS's default
/// stop timeout (SIGTERM, 30 s, SIGKILL) with room to spare.
const STOP_WAIT: Duration = Duration::from_secs(90);
/// ECS's limit on `startedBy`.
const MAX_STARTED_BY: usize = 36;
/// DescribeContainerInstances and DescribeTasks take at most 100 ARNs.
const DESCRIBE_BATCH: usize = 100;
/// StopTask's reason, shown in the console beside the stopped task.
const STOP_REASON: &str = "rehydrator retired the machine";

const ACTIVE: &str = "ACTIVE";
const DRAINING: &str = "DRAINING";
const REGISTERING: &str = "REGISTERING";
const RUNNING: &str = "RUNNING";
const STOPPED: &str = "STOPPED";

/// What the cloud needs to know about the ECS side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsTarget {
    /// The ECS cluster the instances join (`cloud.ecs_cluster`).
    pub cluster: String,
    /// The Consul server's task definition: `family`, `family:revision` or an ARN.
    pub task_definition: String,
    /// How long a launched instance may take to register as a container instance.
    pub registration_timeout: Duration,
}

impl EcsTarget {
    /// The target `[cloud]` describes; the config's validation guarantees the fields, this
    /// refuses their absence again for callers that build settings by hand.
    pub fn from_settings(aws: &AwsSettings) -> Result<Self, CloudError> {
        let required = |value: &Option<String>, field: &str| {
            value
                .clone()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| CloudError::Config {
                    reason: format!("cloud.{field} is required for type \"ecs\""),
                })
        };
        Ok(Self {
            cluster: required(&aws.ecs_cluster, "ecs_cluster")?,
            task_definition: required(&aws.task_definition, "task_definition")?,
            registration_timeout: aws
                .registration_timeout
                .unwrap_or(DEFAULT_REGISTRATION_TIMEOUT),
        })
    }

    /// The task definition's family: how `machines` and `retire` recognise the Consul task,
    /// whatever its revision.
    pub fn family(&self) -> &str {
        family(&self.task_definition)
    }
}

/// ECS as a cloud of Consul server machines.
#[derive(Clone)]
pub struct EcsCloud {
    ec2: Ec2Cloud,
    ecs: aws_sdk_ecs::Client,
    target: EcsTarget,
    /// For error messages: the endpoint ECS calls go to.
    endpoint: String,
    poll: Duration,
}

impl std::fmt::Debug for EcsCloud {
    // The clients hold the credentials: only the targets and endpoints are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsCloud")
            .field("ec2", &self.ec2)
            .field("target", &self.target)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Which tasks ListTasks asks for.
enum Tasks<'a> {
    /// Started with this `startedBy` (ECS allows no other filter with it).
    StartedBy(&'a str),
    /// On this container instance.
    On(&'a str),
    /// Of the Consul task definition's family, desired RUNNING.
    Consul,
}

impl EcsCloud {
    /// A cloud from `[cloud]` settings, as `Ec2Cloud::load` (region, `endpoint_url` for both
    /// services, `credentials` else the default chain). `cluster` is `cluster.name`, the
    /// instances' `rehydrator:cluster` tag; the ECS cluster is `cloud.ecs_cluster`.
    pub async fn load(
        aws: &AwsSettings,
        cluster: &str,
        credentials: Option<Credentials>,
    ) -> Result<Self, CloudError> {
        let target = EcsTarget::from_settings(aws)?;
        let sdk = aws::sdk_config(aws, credentials).await?;
        let ec2 = Ec2Cloud::from_sdk(&sdk, aws, cluster);
        Ok(Self::new(
            ec2,
            aws_sdk_ecs::Client::new(&sdk),
            target,
            aws::endpoint(aws, &sdk, "ecs"),
        ))
    }

    /// A cloud over clients the caller configured.
    pub fn new(
        ec2: Ec2Cloud,
        ecs: aws_sdk_ecs::Client,
        target: EcsTarget,
        endpoint: String,
    ) -> Self {
        Self {
            ec2,
            ecs,
            target,
            endpoint,
            poll: DEFAULT_POLL,
        }
    }

    /// Polls the registration and the stopping tasks every `poll` instead of every 5 s (tests).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The ECS cluster, task definition and registration timeout this cloud works with.
    pub fn target(&self) -> &EcsTarget {
        &self.target
    }

    /// The EC2 half: the instances under the container instances.
    pub fn ec2(&self) -> &Ec2Cloud {
        &self.ec2
    }

    /// The cluster's container instances (ACTIVE, DRAINING and registering ones, ECS's
    /// default), narrowed by a cluster query language `filter`.
    async fn container_instances(
        &self,
        filter: Option<String>,
    ) -> Result<Vec<ContainerInstance>, CloudError> {
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .ecs
                .list_container_instances()
                .cluster(&self.target.cluster)
                .set_filter(filter.clone())
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| sdk_error(&self.endpoint, "ListContainerInstances", e))?;
            arns.extend(page.container_instance_arns().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        let mut out = Vec::new();
        for batch in arns.chunks(DESCRIBE_BATCH) {
            let page = self
                .ecs
                .describe_container_instances()
                .cluster(&self.target.cluster)
                .set_container_instances(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| sdk_error(&self.endpoint, "DescribeContainerInstances", e))?;
            // A failure here is an instance deregistered between the two calls: gone.
            out.extend(page.container_instances().iter().cloned());
        }
        Ok(out)
    }

    /// The container instance on EC2 instance `id`, if it has registered. The ID is matched
    /// again on the answer: a filter ECS (or moto) ignored must not pick another instance.
    async fn container_instance(&self, id: &str) -> Result<Option<ContainerInstance>, CloudError> {
        Ok(self
            .container_instances(Some(format!("ec2InstanceId == {id}")))
            .await?
            .into_iter()
            .find(|ci| ci.ec2_instance_id() == Some(id)))
    }

    /// The tasks ListTasks answers for `which`, described.
    async fn tasks(&self, which: Tasks<'_>) -> Result<Vec<Task>, CloudError> {
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let request = self
                .ecs
                .list_tasks()
                .cluster(&self.target.cluster)
                .set_next_token(next.take());
            let request = match which {
                Tasks::StartedBy(started_by) => request.started_by(started_by),
                Tasks::On(arn) => request.container_instance(arn),
                Tasks::Consul => request
                    .family(self.target.family())
                    .desired_status(aws_sdk_ecs::types::DesiredStatus::Running),
            };
            let page = request
                .send()
                .await
                .map_err(|e| sdk_error(&self.endpoint, "ListTasks", e))?;
            arns.extend(page.task_arns().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        self.describe_tasks(&arns).await
    }

    async fn describe_tasks(&self, arns: &[String]) -> Result<Vec<Task>, CloudError> {
        let mut out = Vec::new();
        for batch in arns.chunks(DESCRIBE_BATCH) {
            let page = self
                .ecs
                .describe_tasks()
                .cluster(&self.target.cluster)
                .set_tasks(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| sdk_error(&self.endpoint, "DescribeTasks", e))?;
            out.extend(page.tasks().iter().cloned());
        }
        Ok(out)
    }

    /// Whether `task` is a Consul server task ECS still means to run.
    fn is_live_consul(&self, task: &Task) -> bool {
        task.desired_status() == Some(RUNNING)
            && task.task_definition_arn().map(family) == Some(self.target.family())
    }

    async fn list(&self) -> Result<Vec<Machine>, CloudError> {
        let mut machines = self.ec2.list().await?;
        // Only a running instance can be further along in ECS: no ECS call otherwise.
        if !machines.iter().any(|m| m.state == MachineState::Running) {
            return Ok(machines);
        }
        let instances = self.container_instances(None).await?;
        let tasks = self.tasks(Tasks::Consul).await?;
        let serving: HashSet<&str> = tasks
            .iter()
            .filter(|t| self.is_live_consul(t) && t.last_status() == Some(RUNNING))
            .filter_map(|t| t.container_instance_arn())
            .collect();
        let registered: HashMap<&str, Registration<'_>> = instances
            .iter()
            .filter_map(|ci| {
                Some((
                    ci.ec2_instance_id()?,
                    Registration {
                        status: ci.status().unwrap_or_default(),
                        arn: ci.container_instance_arn().unwrap_or_default(),
                    },
                ))
            })
            .collect();
        for m in &mut machines {
            m.state = ecs_state(m.state, registered.get(m.id.as_str()), &serving);
        }
        Ok(machines)
    }

    async fn launch_once(&self, image: &str, token: &str) -> Result<Machine, CloudError> {
        let m = self.ec2.launch_once(image, token).await?;
        if matches!(m.state, MachineState::Stopping | MachineState::Terminated) {
            tracing::debug!(
                machine = %m.id,
                state = ?m.state,
                "The token's machine is on its way out: no task for it.",
            );
            return Ok(m);
        }
        let ci = self.await_registration(&m.id).await?;
        let arn = ci
            .container_instance_arn()
            .ok_or_else(|| CloudError::Decode {
                request: "DescribeContainerInstances".into(),
                reason: format!("the container instance on {} has no ARN", m.id),
            })?
            .to_owned();
        let started_by = started_by(token);
        let existing = self
            .tasks(Tasks::StartedBy(&started_by))
            .await?
            .into_iter()
            .find(|t| {
                t.container_instance_arn() == Some(arn.as_str())
                    && t.desired_status() == Some(RUNNING)
            });
        let task = match existing {
            Some(task) => {
                tracing::debug!(
                    machine = %m.id,
                    task = task.task_arn().unwrap_or_default(),
                    "The token's task is already there.",
                );
                task
            }
            // Draining: a retire got there first; starting Consul on it would be undone.
            None if ci.status() != Some(ACTIVE) => {
                return Ok(Machine {
                    state: MachineState::Stopping,
                    ..m
                });
            }
            None => self.start_task(&m.id, &arn, &started_by).await?,
        };
        let state = if task.last_status() == Some(RUNNING) {
            MachineState::Running
        } else {
            MachineState::Pending
        };
        Ok(Machine { state, ..m })
    }

    /// Polls until instance `id` is a container instance of the cluster past REGISTERING, at
    /// most `registration_timeout`. Errors worth a retry do not end the wait early.
    async fn await_registration(&self, id: &str) -> Result<ContainerInstance, CloudError> {
        let timeout = self.target.registration_timeout;
        let started = Instant::now();
        let deadline = started + timeout;
        let mut last_error: Option<CloudError>;
        loop {
            match self.container_instance(id).await {
                Ok(Some(ci)) if ci.status() != Some(REGISTERING) => {
                    tracing::info!(
                        machine = %id,
                        container_instance = ci.container_instance_arn().unwrap_or_default(),
                        waited = ?started.elapsed(),
                        "The instance joined the ECS cluster."
                    );
                    return Ok(ci);
                }
                Ok(_) => match self.ec2.find(id).await {
                    // An instance that failed to boot or was terminated will never register:
                    // say so now rather than at the deadline.
                    Ok(Some(m))
                        if matches!(m.state, MachineState::Stopping | MachineState::Terminated) =>
                    {
                        return Err(CloudError::NotReady {
                            machine: id.to_owned(),
                            reason: format!(
                                "it is {:?} in EC2 and never registered as a container instance \
                                 in ECS cluster {:?}",
                                m.state, self.target.cluster
                            ),
                        });
                    }
                    // Both lookups answered: an error before is no longer the news.
                    Ok(_) => last_error = None,
                    Err(e) if PortError::from(e.clone()).is_retryable() => last_error = Some(e),
                    Err(e) => return Err(e),
                },
                Err(e) if PortError::from(e.clone()).is_retryable() => {
                    tracing::debug!(
                        machine = %id,
                        error = %e,
                        "Looking for the container instance failed; trying again.",
                    );
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= deadline {
                let cluster = &self.target.cluster;
                let mut reason = format!(
                    "it did not register as a container instance in ECS cluster {cluster:?} within \
                     {timeout:?} (cloud.registration_timeout): the launch template's user data \
                     must write ECS_CLUSTER={cluster} to /etc/ecs/ecs.config, and its instance \
                     profile must let the ECS agent register"
                );
                if let Some(e) = last_error {
                    reason.push_str(&format!("; the last lookup failed: {e}"));
                }
                return Err(CloudError::NotReady {
                    machine: id.to_owned(),
                    reason,
                });
            }
            tokio::time::sleep(self.poll.min(deadline - now)).await;
        }
    }

    async fn start_task(&self, id: &str, arn: &str, started_by: &str) -> Result<Task, CloudError> {
        let out = self
            .ecs
            .start_task()
            .cluster(&self.target.cluster)
            .task_definition(&self.target.task_definition)
            .container_instances(arn)
            .started_by(started_by)
            .send()
            .await
            .map_err(|e| sdk_error(&self.endpoint, "StartTask", e))?;
        if let Some(task) = out.tasks().first() {
            tracing::info!(
                machine = %id,
                task = task.task_arn().unwrap_or_default(),
                %started_by,
                "Started the Consul server task."
            );
            return Ok(task.clone());
        }
        Err(CloudError::NotReady {
            machine: id.to_owned(),
            reason: format!(
                "ECS did not start task definition {} on container instance {arn}: {}",
                self.target.task_definition,
                failures(out.failures())
            ),
        })
    }

    async fn retire_once(&self, id: &str) -> Result<(), CloudError> {
        let ci = self.container_instance(id).await?;
        let arn = ci
            .as_ref()
            .and_then(|ci| ci.container_instance_arn())
            .map(str::to_owned);
        if let (Some(ci), Some(arn)) = (&ci, &arn) {
            if ci.status() != Some(DRAINING) {
                self.drain(id, arn).await?;
            }
            let consul: Vec<String> = self
                .tasks(Tasks::On(arn))
                .await?
                .iter()
                .filter(|t| self.is_live_consul(t))
                .filter_map(|t| t.task_arn().map(str::to_owned))
                .collect();
            for task in &consul {
                self.ecs
                    .stop_task()
                    .cluster(&self.target.cluster)
                    .task(task)
                    .reason(STOP_REASON)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&self.endpoint, "StopTask", e))?;
                tracing::info!(machine = %id, %task, "Stopped the Consul server task.");
            }
            self.await_stopped(id, &consul).await?;
        }
        self.ec2.terminate(id).await?;
        if let Some(arn) = arn {
            // Tidying only: ECS drops a terminated instance's registration by itself in time.
            match self
                .ecs
                .deregister_container_instance()
                .cluster(&self.target.cluster)
                .container_instance(&arn)
                .force(true)
                .send()
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        machine = %id,
                        container_instance = %arn,
                        "Deregistered the container instance.",
                    );
                }
                Err(e) => {
                    let e = sdk_error(&self.endpoint, "DeregisterContainerInstance", e);
                    tracing::warn!(
                        machine = %id,
                        container_instance = %arn,
                        error = %e,
                        "Could not deregister the terminated instance; ECS will in time.",
                    );
                }
            }
        }
        Ok(())
    }

    async fn drain(&self, id: &str, arn: &str) -> Result<(), CloudError> {
        let out = self
            .ecs
            .update_container_instances_state()
            .cluster(&self.target.cluster)
            .container_instances(arn)
            .status(ContainerInstanceStatus::Draining)
            .send()
            .await
            .map_err(|e| sdk_error(&self.endpoint, "UpdateContainerInstancesState", e))?;
        // MISSING: deregistered meanwhile, nothing left to drain. Anything else is worth a
        // warning but not a refusal: the instance is about to be terminated anyway.
        let failed: Vec<Failure> = out
            .failures()
            .iter()
            .filter(|f| f.reason() != Some("MISSING"))
            .cloned()
            .collect();
        if failed.is_empty() {
            tracing::info!(
                machine = %id,
                container_instance = %arn,
                "Draining the container instance.",
            );
        } else {
            tracing::warn!(
                machine = %id,
                container_instance = %arn,
                failures = %failures(&failed),
                "ECS would not drain the container instance.",
            );
        }
        Ok(())
    }

    /// Waits until every task in `arns` is STOPPED, at most `STOP_WAIT`; past it the instance's
    /// termination ends them anyway, so a slow task only earns a warning.
    async fn await_stopped(&self, id: &str, arns: &[String]) -> Result<(), CloudError> {
        if arns.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            let tasks = self.describe_tasks(arns).await?;
            if tasks.iter().all(|t| t.last_status() == Some(STOPPED)) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    machine = %id,
                    waited = ?STOP_WAIT,
                    "The Consul task has not stopped; terminating the instance anyway.",
                );
                return Ok(());
            }
            tokio::time::sleep(self.poll.min(deadline - now)).await;
        }
    }
}

impl CloudPort for EcsCloud {
    fn newest_image(&self) -> PortFuture<Option<Image>> {
        let this = self.clone();
        Box::pin(
            async move { Ok(this.ec2.newest().await?) }
                .instrument(tracing::debug_span!("ecs_cloud", op = "newest_image")),
        )
    }

    fn machines(&self) -> PortFuture<Vec<Machine>> {
        let this = self.clone();
        Box::pin(
            async move { Ok(this.list().await?) }
                .instrument(tracing::debug_span!("ecs_cloud", op = "machines")),
        )
    }

    fn launch(&self, image: &str, token: &str) -> PortFuture<Machine> {
        let this = self.clone();
        let (image, token) = (image.to_owned(), token.to_owned());
        let span = tracing::debug_span!("ecs_cloud", op = "launch", %image, %token);
        Box::pin(async move { Ok(this.launch_once(&image, &token).await?) }.instrument(span))
    }

    fn retire(&self, machine_id: &str) -> PortFuture<()> {
        let this = self.clone();
        let id = machine_id.to_owned();
        let span = tracing::debug_span!("ecs_cloud", op = "retire", machine = %id);
        Box::pin(async move { Ok(this.retire_once(&id).await?) }.instrument(span))
    }

    /// The instance as EC2 sees it: asked only about a launch that `machines` no longer lists,
    /// which is gone from EC2's listing, not merely waiting for its task.
    fn machine(&self, machine_id: &str) -> PortFuture<Option<Machine>> {
        let this = self.clone();
        let id = machine_id.to_owned();
        let span = tracing::debug_span!("ecs_cloud", op = "machine", machine = %id);
        Box::pin(async move { Ok(this.ec2.find(&id).await?) }.instrument(span))
    }

    // The container instances' group is EC2's: its hooks are `Ec2Cloud`'s to work.
    fn lifecycle_waits(&self) -> PortFuture<Vec<rehydrator_actors::ports::LifecycleWait>> {
        self.ec2.lifecycle_waits()
    }

    fn complete_lifecycle(&self, wait: &rehydrator_actors::ports::LifecycleWait) -> PortFuture<()> {
        self.ec2.complete_lifecycle(wait)
    }

    fn extend_lifecycle(&self, wait: &rehydrator_actors::ports::LifecycleWait) -> PortFuture<()> {
        self.ec2.extend_lifecycle(wait)
    }
}

/// Where an instance stands in ECS.
#[derive(Debug, Clone, Copy)]
struct Registration<'a> {
    status: &'a str,
    arn: &'a str,
}

/// A machine's state from its EC2 state, its container instance and the container instances
/// where a Consul task runs.
fn ecs_state(
    ec2: MachineState,
    registration: Option<&Registration<'_>>,
    serving: &HashSet<&str>,
) -> MachineState {
    if ec2 != MachineState::Running {
        return ec2;
    }
    match registration {
        Some(r) if r.status == ACTIVE && serving.contains(r.arn) => MachineState::Running,
        // Drained or on its way out of the cluster: its server is leaving.
        Some(r) if r.status == DRAINING || r.status == "DEREGISTERING" => MachineState::Stopping,
        // Not registered yet, still registering, or registered without its server running.
        _ => MachineState::Pending,
    }
}

/// A task definition's family from `family`, `family:revision` or its ARN
/// (`arn:aws:ecs:<region>:<account>:task-definition/family:revision`).
fn family(task_definition: &str) -> &str {
    let name = task_definition
        .rsplit_once('/')
        .map_or(task_definition, |(_, name)| name);
    name.split_once(':').map_or(name, |(family, _)| family)
}

/// The `startedBy` for a launch token: the token itself where ECS takes it, else a readable
/// prefix and a hash of the whole token, within ECS's 36 characters.
pub fn started_by(token: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !token.is_empty() && token.len() <= MAX_STARTED_BY && token.chars().all(allowed) {
        return token.to_owned();
    }
    let readable: String = token
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(15)
        .collect();
    format!("rh-{readable}-{:016x}", fnv1a(token.as_bytes()))
}

/// 64-bit FNV-1a: stable across builds and Rust versions, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn failures(failures: &[Failure]) -> String {
    if failures.is_empty() {
        return "no task and no failure in the answer".into();
    }
    failures
        .iter()
        .map(|f| {
            let mut s = format!(
                "{}: {}",
                f.arn().unwrap_or("?"),
                f.reason().unwrap_or("no reason")
            );
            if let Some(detail) = f.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn started_by_is_the_token_where_ecs_takes_it() {
        assert_eq!(started_by("r1-o3-n3"), "r1-o3-n3");
        assert_eq!(started_by(&"a".repeat(36)), "a".repeat(36));
        // A rollout ID that is a UUID makes the token too long: a stable hashed form.
        let long = "3f2b7c1e-8d4a-4c55-9e0f-1a2b3c4d5e6f-o3-n3";
        let s = started_by(long);
        assert!(s.len() <= MAX_STARTED_BY, "{s}");
        assert!(s.starts_with("rh-3f2b7c1e-8d4a-"), "{s}");
        assert_eq!(s, started_by(long), "stable");
        assert_ne!(s, started_by("3f2b7c1e-8d4a-4c55-9e0f-1a2b3c4d5e6f-o3-n4"));
        // Characters ECS refuses are replaced, and the result still differs from the token.
        let odd = started_by("step 1/3");
        assert!(odd.starts_with("rh-step-1-3-"), "{odd}");
        assert!(odd
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn family_of_every_task_definition_form() {
        assert_eq!(family("consul-server"), "consul-server");
        assert_eq!(family("consul-server:7"), "consul-server");
        assert_eq!(
            family("arn:aws:ecs:eu-west-1:123456789012:task-definition/consul-server:7"),
            "consul-server"
        );
    }

    #[test]
    fn a_running_instance_runs_once_its_consul_task_does() {
        let serving: HashSet<&str> = HashSet::from(["arn:ci/1"]);
        let reg = |status, arn| Registration { status, arn };
        let running = MachineState::Running;
        assert_eq!(ecs_state(running, None, &serving), MachineState::Pending);
        assert_eq!(
            ecs_state(running, Some(&reg(REGISTERING, "arn:ci/1")), &serving),
            MachineState::Pending
        );
        assert_eq!(
            ecs_state(running, Some(&reg(ACTIVE, "arn:ci/2")), &serving),
            MachineState::Pending
        );
        assert_eq!(
            ecs_state(running, Some(&reg(ACTIVE, "arn:ci/1")), &serving),
            MachineState::Running
        );
        assert_eq!(
            ecs_state(running, Some(&reg(DRAINING, "arn:ci/1")), &serving),
            MachineState::Stopping
        );
        for ec2 in [
            MachineState::Pending,
            MachineState::Stopping,
            MachineState::Terminated,
        ] {
            assert_eq!(
                ecs_state(ec2, Some(&reg(ACTIVE, "arn:ci/1")), &serving),
                ec2
            );
        }
    }

    #[test]
    fn the_target_needs_the_cluster_and_task_definition() {
        let mut aws = AwsSettings {
            region: None,
            endpoint_url: None,
            launch: rehydrator_config::Launch::LaunchTemplate("lt".into()),
            image_name: "consul-*".into(),
            image_owners: vec!["self".into()],
            ecs_cluster: Some("consul".into()),
            task_definition: None,
            registration_timeout: None,
        };
        let e = EcsTarget::from_settings(&aws).unwrap_err();
        assert!(e.to_string().contains("cloud.task_definition"), "{e}");
        aws.task_definition = Some("arn:aws:ecs:eu-west-1:1:task-definition/consul:3".into());
        let t = EcsTarget::from_settings(&aws).unwrap();
        assert_eq!(t.registration_timeout, DEFAULT_REGISTRATION_TIMEOUT);
        assert_eq!(t.family(), "consul");
        aws.ecs_cluster = Some(" ".into());
        let e = EcsTarget::from_settings(&aws).unwrap_err();
        assert!(e.to_string().contains("cloud.ecs_cluster"), "{e}");
    }
}
