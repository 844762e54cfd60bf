//! EC2 as the actors' `CloudPort`: the Consul servers are EC2 instances launched from a launch
//! template. `run` builds it from `[cloud] type = "ec2"`; the tests run it against moto's server
//! through the real SDK client (`tests/cloud_ec2.rs`).
//!
//! - **newest_image**: DescribeImages with `owners` and the filters `name=<image_name>`,
//!   `state=available`; the newest by CreationDate, ties by name, then ID. CreationDate may be
//!   given to the second only (moto does), so images registered within one second order by name.
//! - **machines**: DescribeInstances filtered by the tag `rehydrator:cluster=<cluster>` in the
//!   states pending, running, stopping and stopped (terminated and shutting-down ones are gone
//!   for the rollout's purposes).
//! - **launch(image, token)**: first DescribeInstances by the tag `rehydrator:token=<token>` in
//!   every state, terminated too, and answers the instance found: a retried step never makes a
//!   second machine, even after the first one was retired. Only then RunInstances from the launch
//!   template with the image overridden, one instance, `ClientToken = token` (EC2's own guard for
//!   a retry racing the lookup), and the tags `rehydrator:cluster`, `rehydrator:token`, `Name`.
//! - **retire(id)**: TerminateInstances. The Consul agent leaves the cluster on the way down: the
//!   AMI's Consul configuration should set `leave_on_terminate = true` (the default for clients,
//!   not for servers), so the shutdown's SIGTERM makes it leave gracefully. One that dies
//!   instead is force-left by the rollout's step once serf calls it failed.
//!
//! Conventions the launch template must follow:
//! - its user data sets the Consul `node_name` to the instance ID (from the instance metadata),
//!   so `Machine::node` is the instance ID;
//! - Consul's Raft address is the instance's private IP (`Machine::address`).
//!
//! Credentials come from the SDK's default chain (environment, profile, ECS task role, instance
//! profile) unless a caller passes static ones (the tests). Neither they nor a signature ever
//! reach an error or a log: errors carry the operation, EC2's error code and message only.
//!
//! The SDK's futures are `Send`; they run on actix-rt's current-thread tokio runtime like any
//! other. HTTPS is hyper with rustls on ring, the TLS stack awc already uses.

use std::time::Duration;

use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, LaunchTemplateSpecification, ResourceType, Tag,
    TagSpecification,
};
use rehydrator_actors::ports::{
    clip, CloudPort, Image, LifecycleWait, Machine, MachineState, PortFuture, MAX_REASON,
};
use rehydrator_config::{AwsSettings, Launch};
use tracing::Instrument as _;

use super::asg::{AutoScalingGroup, GroupFacts, Instances, TemplateVersion};
use super::aws::{dry_run_answer, endpoint, sdk_config, sdk_error, DryRun};
// The tests and `doctor::group` name them from here, where the instances get them.
pub use super::aws::{https_client, CLUSTER_TAG, TOKEN_TAG};
use super::CloudError;

/// EC2 refuses a longer ClientToken.
const MAX_CLIENT_TOKEN: usize = 64;

/// What the cloud needs to know about the cluster besides the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Target {
    /// `cluster.name`: the value of the `rehydrator:cluster` tag.
    pub cluster: String,
    /// Where a new instance comes from: RunInstances from a launch template (its name or ID),
    /// or the Auto Scaling group the servers run in.
    pub launch: Launch,
    /// DescribeImages' `name` filter (wildcards allowed).
    pub image_name: String,
    /// DescribeImages' owners (`self`, an account ID, `amazon`).
    pub image_owners: Vec<String>,
}

impl Ec2Target {
    /// The target `[cloud]` and `[cluster]` describe.
    pub fn from_settings(aws: &AwsSettings, cluster: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            launch: aws.launch.clone(),
            image_name: aws.image_name.clone(),
            image_owners: aws.image_owners.clone(),
        }
    }
}

/// What `rehydrator doctor` learns of a launch-template cloud (`Ec2Cloud::inspect_launch`).
#[derive(Debug)]
pub struct LaunchFacts {
    pub template: String,
    /// Servers tagged for the cluster, not terminated.
    pub servers: usize,
    /// The newest image `image_name` matches.
    pub newest_image: Option<String>,
    pub dry_run: Vec<(&'static str, DryRun)>,
}

/// A launch template by ID (`lt-…`) or by name.
fn template_spec(template: &str) -> LaunchTemplateSpecification {
    let spec = LaunchTemplateSpecification::builder();
    if template.starts_with("lt-") {
        spec.launch_template_id(template)
    } else {
        spec.launch_template_name(template)
    }
    .build()
}

/// EC2 as a cloud of Consul server machines.
#[derive(Clone)]
pub struct Ec2Cloud {
    client: aws_sdk_ec2::Client,
    target: Ec2Target,
    /// For error messages: the endpoint calls go to (the region's, or `endpoint_url`).
    endpoint: String,
    /// The servers' Auto Scaling group, when `launch` names one: then the group launches,
    /// lists and retires them.
    group: Option<AutoScalingGroup>,
}

impl std::fmt::Debug for Ec2Cloud {
    // The client holds the credentials: only the target and endpoint are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Cloud")
            .field("target", &self.target)
            .field("endpoint", &self.endpoint)
            .field("group", &self.group)
            .finish()
    }
}

impl Ec2Cloud {
    /// A cloud from `[cloud]` settings: the region from `region`, else the environment
    /// (`AWS_REGION`, the profile); `endpoint_url` replaces the region's endpoint (moto, a VPC
    /// endpoint). `credentials` replaces the SDK's default chain (the tests' static keys).
    pub async fn load(
        aws: &AwsSettings,
        cluster: &str,
        credentials: Option<Credentials>,
    ) -> Result<Self, CloudError> {
        let sdk = sdk_config(aws, credentials).await?;
        Ok(Self::from_sdk(&sdk, aws, cluster))
    }

    /// A cloud from a loaded SDK configuration: EC2's client, and the group's when
    /// `cloud.auto_scaling_group` names one.
    pub(crate) fn from_sdk(sdk: &aws_config::SdkConfig, aws: &AwsSettings, cluster: &str) -> Self {
        let target = Ec2Target::from_settings(aws, cluster);
        let group = match &target.launch {
            Launch::AutoScalingGroup(name) => Some(AutoScalingGroup::new(
                aws_sdk_autoscaling::Client::new(sdk),
                name.clone(),
                endpoint(aws, sdk, "autoscaling"),
            )),
            Launch::LaunchTemplate(_) => None,
        };
        let cloud = Self::new(
            aws_sdk_ec2::Client::new(sdk),
            target,
            endpoint(aws, sdk, "ec2"),
        );
        match group {
            Some(g) => cloud.with_group(g),
            None => cloud,
        }
    }

    /// A cloud over a client the caller configured.
    pub fn new(client: aws_sdk_ec2::Client, target: Ec2Target, endpoint: String) -> Self {
        Self {
            client,
            target,
            endpoint,
            group: None,
        }
    }

    /// The same cloud working through `group`: it launches, lists and retires the servers.
    pub fn with_group(mut self, group: AutoScalingGroup) -> Self {
        self.group = Some(group);
        self
    }

    /// The same cloud with its group's waits changed (`AutoScalingGroup::with_waits`).
    pub fn with_group_waits(
        mut self,
        launch_wait: Duration,
        poll: Duration,
        claim_after: Duration,
    ) -> Self {
        self.group = self
            .group
            .map(|g| g.with_waits(launch_wait, poll, claim_after));
        self
    }

    /// What `rehydrator doctor` judges the servers' group on, if they run in one.
    pub async fn inspect_group(&self) -> Result<Option<GroupFacts>, CloudError> {
        match &self.group {
            Some(group) => group.inspect(self).await.map(Some),
            None => Ok(None),
        }
    }

    /// The group the servers run in, if they run in one.
    pub fn group(&self) -> Option<&AutoScalingGroup> {
        self.group.as_ref()
    }

    /// The cluster, template and image filter this cloud works with.
    pub fn target(&self) -> &Ec2Target {
        &self.target
    }

    /// Every instance matching `filters`, across pages.
    async fn instances(
        &self,
        filters: Vec<Filter>,
        request: &'static str,
    ) -> Result<Vec<Instance>, CloudError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| sdk_error(&self.endpoint, request, e))?;
            for reservation in page.reservations() {
                out.extend(reservation.instances().iter().cloned());
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// The newest image's ID, for the doctor.
    pub async fn newest_image_id(&self) -> Result<Option<String>, CloudError> {
        Ok(self.newest().await?.map(|i| i.id))
    }

    pub(crate) async fn newest(&self) -> Result<Option<Image>, CloudError> {
        let request = "DescribeImages";
        let mut images = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_images()
                .set_owners(Some(self.target.image_owners.clone()))
                .filters(filter("name", [self.target.image_name.as_str()]))
                .filters(filter("state", ["available"]))
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| sdk_error(&self.endpoint, request, e))?;
            for i in page.images() {
                images.push(Image {
                    id: i.image_id().unwrap_or_default().to_owned(),
                    name: i.name().unwrap_or_default().to_owned(),
                    created: i.creation_date().unwrap_or_default().to_owned(),
                });
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        super::newest(images, request)
    }

    pub(crate) async fn list(&self) -> Result<Vec<Machine>, CloudError> {
        if let Some(group) = &self.group {
            let members = group.view().await?.members;
            let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
            let mut machines = self.by_ids(&ids).await?;
            // An instance the group is terminating may run on for a while (a lifecycle hook
            // holds it): it is on its way out all the same.
            for m in &mut machines {
                if members.iter().any(|g| g.id == m.id && g.leaving()) {
                    m.state = MachineState::Stopping;
                }
            }
            return Ok(machines);
        }
        let request = "DescribeInstances";
        let filters = vec![
            filter(
                &format!("tag:{CLUSTER_TAG}"),
                [self.target.cluster.as_str()],
            ),
            filter(
                "instance-state-name",
                ["pending", "running", "stopping", "stopped"],
            ),
        ];
        let mut out = Vec::new();
        // The filter already leaves terminated ones out; a moto or EC2 that ignored it must not
        // resurrect one.
        live(self.instances(filters, request).await?, request, &mut out)?;
        oldest_first(&mut out);
        Ok(out)
    }

    pub(crate) async fn launch_once(
        &self,
        image: &str,
        token: &str,
    ) -> Result<Machine, CloudError> {
        if token.is_empty() || token.len() > MAX_CLIENT_TOKEN || !token.is_ascii() {
            return Err(CloudError::Config {
                reason: format!(
                    "launch token {token:?} must be 1 to {MAX_CLIENT_TOKEN} ASCII characters (EC2's ClientToken)"
                ),
            });
        }
        // Any state, terminated included: a step retried after its machine was retired must
        // find that machine rather than launch another.
        if let Some(m) = self.by_token(token).await? {
            tracing::debug!(
                machine = %m.id,
                state = ?m.state,
                "The token already launched a machine.",
            );
            return Ok(m);
        }

        let template_name = match (&self.target.launch, &self.group) {
            (_, Some(group)) => return group.launch(self, image, token).await,
            (Launch::LaunchTemplate(t), None) => t,
            (Launch::AutoScalingGroup(g), None) => {
                return Err(CloudError::Config {
                    reason: format!("group {g} named but no Auto Scaling client built"),
                })
            }
        };
        let request = "RunInstances";
        let out = self
            .client
            .run_instances()
            .launch_template(template_spec(template_name))
            .image_id(image)
            .min_count(1)
            .max_count(1)
            .client_token(token)
            .tag_specifications(self.launch_tags(token))
            .send()
            .await
            .map_err(|e| sdk_error(&self.endpoint, request, e))?;
        let i = out.instances().first().ok_or_else(|| CloudError::Decode {
            request: request.into(),
            reason: "no instance in the answer".into(),
        })?;
        let m = machine(i, request)?;
        tracing::info!(machine = %m.id, %image, %token, "Launched an EC2 instance.");
        Ok(m)
    }

    /// The tags a launched server carries: the cluster's, its launch token, a Name.
    fn launch_tags(&self, token: &str) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag(CLUSTER_TAG, &self.target.cluster))
            .tags(tag(TOKEN_TAG, token))
            .tags(tag(
                "Name",
                &format!("{}-consul-server", self.target.cluster),
            ))
            .build()
    }

    /// For `rehydrator doctor`, with a launch template (no group): the servers, the newest
    /// image, and EC2's DryRun answers for the rollout's changing calls, asked as it makes
    /// them: RunInstances from the template with the newest image and the servers' tags, and
    /// TerminateInstances on a server. None with a group (`inspect_group` then).
    pub async fn inspect_launch(&self) -> Result<Option<LaunchFacts>, CloudError> {
        let (Launch::LaunchTemplate(template), None) = (&self.target.launch, &self.group) else {
            return Ok(None);
        };
        let servers = self.list().await?;
        let newest_image = self.newest_image_id().await?;
        let mut dry_run = Vec::new();
        if let Some(image) = &newest_image {
            let run = self
                .client
                .run_instances()
                .dry_run(true)
                .launch_template(template_spec(template))
                .image_id(image)
                .min_count(1)
                .max_count(1)
                .tag_specifications(self.launch_tags("doctor"))
                .send()
                .await
                .map(drop);
            dry_run.push(("ec2:RunInstances", dry_run_answer(run)));
        }
        if let Some(server) = servers.first() {
            let terminate = self
                .client
                .terminate_instances()
                .dry_run(true)
                .instance_ids(&server.id)
                .send()
                .await
                .map(drop);
            dry_run.push(("ec2:TerminateInstances", dry_run_answer(terminate)));
        }
        Ok(Some(LaunchFacts {
            template: template.clone(),
            servers: servers.len(),
            newest_image,
            dry_run,
        }))
    }

    pub(crate) async fn terminate(&self, id: &str) -> Result<(), CloudError> {
        if let Some(group) = &self.group {
            return group.retire(self, id).await;
        }
        self.terminate_instance(id).await
    }
}

impl Instances for Ec2Cloud {
    /// The machine `token` launched, in any state, terminated included.
    async fn by_token(&self, token: &str) -> Result<Option<Machine>, CloudError> {
        let request = "DescribeInstances (token)";
        let found = self
            .instances(vec![filter(&format!("tag:{TOKEN_TAG}"), [token])], request)
            .await?;
        oldest(&found).map(|i| machine(i, request)).transpose()
    }

    /// The live machines among `ids` (a group's members), oldest first.
    async fn by_ids(&self, ids: &[String]) -> Result<Vec<Machine>, CloudError> {
        let request = "DescribeInstances (group members)";
        let mut out = Vec::new();
        // DescribeInstances takes at most 200 values per filter; a server group is far smaller.
        for chunk in ids.chunks(100) {
            let filters = vec![filter("instance-id", chunk.iter().map(String::as_str))];
            live(self.instances(filters, request).await?, request, &mut out)?;
        }
        oldest_first(&mut out);
        Ok(out)
    }

    /// The image a launch template version boots, and that version's number: `version` is a
    /// number, `$Latest` or `$Default`.
    async fn template_version(
        &self,
        template_id: &str,
        version: &str,
    ) -> Result<TemplateVersion, CloudError> {
        let request = "DescribeLaunchTemplateVersions";
        let out = self
            .client
            .describe_launch_template_versions()
            .launch_template_id(template_id)
            .versions(version)
            .send()
            .await
            .map_err(|e| sdk_error(&self.endpoint, request, e))?;
        let v = out
            .launch_template_versions()
            .first()
            .ok_or_else(|| CloudError::Refused {
                request: request.into(),
                reason: format!("launch template {template_id} has no version {version:?}"),
            })?;
        Ok(TemplateVersion {
            number: v.version_number().ok_or_else(|| CloudError::Decode {
                request: request.into(),
                reason: format!("version {version:?} of {template_id} without a number"),
            })?,
            image: v
                .launch_template_data()
                .and_then(|d| d.image_id())
                .unwrap_or_default()
                .to_owned(),
            description: v.version_description().unwrap_or_default().to_owned(),
        })
    }

    /// A new version of the template: `source`'s settings with `image`, described as ours.
    async fn new_template_version(
        &self,
        template_id: &str,
        source: i64,
        image: &str,
        description: &str,
    ) -> Result<i64, CloudError> {
        let request = "CreateLaunchTemplateVersion";
        let out = self
            .client
            .create_launch_template_version()
            .launch_template_id(template_id)
            .source_version(source.to_string())
            .version_description(description)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(image)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error(&self.endpoint, request, e))?;
        out.launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or_else(|| CloudError::Decode {
                request: request.into(),
                reason: "no version number in the answer".into(),
            })
    }

    /// Marks `id` as launched by `token`: a server the group launched in a launch's place
    /// (it replaced the launch's dead instance) becomes that launch's machine.
    async fn claim(&self, id: &str, token: &str) -> Result<(), CloudError> {
        self.client
            .create_tags()
            .resources(id)
            .tags(tag(TOKEN_TAG, token))
            .send()
            .await
            .map_err(|e| sdk_error(&self.endpoint, "CreateTags", e))?;
        Ok(())
    }

    /// Whether the credentials may make the EC2 calls a group rollout makes that change
    /// something, asked with DryRun (EC2 answers DryRunOperation when it would have allowed
    /// the call, UnauthorizedOperation when not; nothing is changed either way). `instance`
    /// is a server to ask about: the calls are scoped by its tags.
    async fn dry_run(
        &self,
        template_id: &str,
        image: &str,
        instance: &str,
    ) -> Vec<(&'static str, DryRun)> {
        let version = self
            .client
            .create_launch_template_version()
            .dry_run(true)
            .launch_template_id(template_id)
            .source_version("$Latest")
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(image)
                    .build(),
            )
            .send()
            .await
            .map(drop);
        let tags = self
            .client
            .create_tags()
            .dry_run(true)
            .resources(instance)
            .tags(tag(TOKEN_TAG, "doctor"))
            .send()
            .await
            .map(drop);
        let terminate = self
            .client
            .terminate_instances()
            .dry_run(true)
            .instance_ids(instance)
            .send()
            .await
            .map(drop);
        vec![
            ("ec2:CreateLaunchTemplateVersion", dry_run_answer(version)),
            ("ec2:CreateTags", dry_run_answer(tags)),
            ("ec2:TerminateInstances", dry_run_answer(terminate)),
        ]
    }

    /// One instance by ID, in any state, if EC2 still shows it.
    async fn find(&self, id: &str) -> Result<Option<Machine>, CloudError> {
        let request = "DescribeInstances (id)";
        let found = self
            .instances(vec![filter("instance-id", [id])], request)
            .await?;
        found.first().map(|i| machine(i, request)).transpose()
    }

    /// TerminateInstances on one instance, outside any group.
    async fn terminate_instance(&self, id: &str) -> Result<(), CloudError> {
        self.client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| sdk_error(&self.endpoint, "TerminateInstances", e))?;
        tracing::info!(machine = %id, "Terminated an EC2 instance.");
        Ok(())
    }
}

impl CloudPort for Ec2Cloud {
    fn newest_image(&self) -> PortFuture<Option<Image>> {
        let this = self.clone();
        Box::pin(
            async move { Ok(this.newest().await?) }
                .instrument(tracing::debug_span!("ec2_cloud", op = "newest_image")),
        )
    }

    fn machines(&self) -> PortFuture<Vec<Machine>> {
        let this = self.clone();
        Box::pin(
            async move { Ok(this.list().await?) }
                .instrument(tracing::debug_span!("ec2_cloud", op = "machines")),
        )
    }

    fn launch(&self, image: &str, token: &str) -> PortFuture<Machine> {
        let this = self.clone();
        let (image, token) = (image.to_owned(), token.to_owned());
        let span = tracing::debug_span!("ec2_cloud", op = "launch", %image, %token);
        Box::pin(async move { Ok(this.launch_once(&image, &token).await?) }.instrument(span))
    }

    fn retire(&self, machine_id: &str) -> PortFuture<()> {
        let this = self.clone();
        let id = machine_id.to_owned();
        let span = tracing::debug_span!("ec2_cloud", op = "retire", machine = %id);
        Box::pin(async move { Ok(this.terminate(&id).await?) }.instrument(span))
    }

    fn machine(&self, machine_id: &str) -> PortFuture<Option<Machine>> {
        let this = self.clone();
        let id = machine_id.to_owned();
        let span = tracing::debug_span!("ec2_cloud", op = "machine", machine = %id);
        Box::pin(async move { Ok(this.find(&id).await?) }.instrument(span))
    }

    fn lifecycle_waits(&self) -> PortFuture<Vec<LifecycleWait>> {
        let group = self.group.clone();
        let span = tracing::debug_span!("ec2_cloud", op = "lifecycle_waits");
        Box::pin(
            async move {
                match group {
                    Some(g) => Ok(g.waits().await?),
                    None => Ok(Vec::new()),
                }
            }
            .instrument(span),
        )
    }

    fn complete_lifecycle(&self, wait: &LifecycleWait) -> PortFuture<()> {
        let (group, wait) = (self.group.clone(), wait.clone());
        let span =
            tracing::debug_span!("ec2_cloud", op = "complete_lifecycle", machine = %wait.machine);
        Box::pin(async move { Ok(no_group(group)?.complete(&wait).await?) }.instrument(span))
    }

    fn extend_lifecycle(&self, wait: &LifecycleWait) -> PortFuture<()> {
        let (group, wait) = (self.group.clone(), wait.clone());
        let span =
            tracing::debug_span!("ec2_cloud", op = "extend_lifecycle", machine = %wait.machine);
        Box::pin(async move { Ok(no_group(group)?.heartbeat(&wait).await?) }.instrument(span))
    }
}

/// The group a lifecycle action needs, or why there is none.
fn no_group(group: Option<AutoScalingGroup>) -> Result<AutoScalingGroup, CloudError> {
    group.ok_or_else(|| CloudError::Config {
        reason: "lifecycle actions need cloud.auto_scaling_group".into(),
    })
}

fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    values
        .into_iter()
        .fold(Filter::builder().name(name), |f, v| f.values(v))
        .build()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The instances that are not terminated, as machines, added to `out`.
fn live(instances: Vec<Instance>, request: &str, out: &mut Vec<Machine>) -> Result<(), CloudError> {
    for i in instances {
        let m = machine(&i, request)?;
        if m.state != MachineState::Terminated {
            out.push(m);
        }
    }
    Ok(())
}

/// Machines by launch time, then ID.
fn oldest_first(machines: &mut [Machine]) {
    machines.sort_by(|a, b| (a.launched_at, &a.id).cmp(&(b.launched_at, &b.id)));
}

/// The first instance a token launched (there is one; two only if EC2 ignored the ClientToken).
fn oldest(instances: &[Instance]) -> Option<&Instance> {
    instances.iter().min_by_key(|i| {
        (
            i.launch_time().and_then(|t| t.to_millis().ok()),
            i.instance_id(),
        )
    })
}

/// An EC2 instance as a machine. The node is the instance ID: the launch template's user data
/// names the Consul node after it.
fn machine(i: &Instance, request: &str) -> Result<Machine, CloudError> {
    let decode = |reason: String| CloudError::Decode {
        request: request.to_owned(),
        reason,
    };
    let id = i
        .instance_id()
        .ok_or_else(|| decode("an instance without an ID".into()))?
        .to_owned();
    let state = match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => MachineState::Pending,
        Some(InstanceStateName::Running) => MachineState::Running,
        // A stopped machine still exists (it may start again) but its agent is down.
        Some(InstanceStateName::Stopping | InstanceStateName::Stopped) => MachineState::Stopping,
        Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated) => {
            MachineState::Terminated
        }
        other => return Err(decode(format!("instance {id} is in state {other:?}"))),
    };
    let launched_at = i
        .launch_time()
        .and_then(|t| t.to_millis().ok())
        .and_then(|ms| u64::try_from(ms).ok())
        .ok_or_else(|| decode(format!("instance {id} has no launch time")))?;
    let token = i
        .tags()
        .iter()
        .find(|t| t.key() == Some(TOKEN_TAG))
        .and_then(|t| t.value())
        .map(str::to_owned);
    // EC2 says why an instance stopped or was terminated ("Server.InternalError: Internal
    // error on launch", "Client.UserInitiatedShutdown: …"); a live one's reason is not news.
    let reason = i
        .state_reason()
        .filter(|_| matches!(state, MachineState::Stopping | MachineState::Terminated))
        .and_then(|r| r.message().or(r.code()))
        .filter(|r| !r.is_empty())
        .map(|r| clip(r, MAX_REASON));
    Ok(Machine {
        reason,
        node: Some(id.clone()),
        image: i.image_id().unwrap_or_default().to_owned(),
        launched_at,
        state,
        address: i
            .private_ip_address()
            .filter(|a| !a.is_empty())
            .map(str::to_owned),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .filter(|z| !z.is_empty())
            .map(str::to_owned),
        token,
        id,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_sdk_ec2::primitives::DateTime;
    use aws_sdk_ec2::types::InstanceState;

    fn instance(state: InstanceStateName) -> Instance {
        Instance::builder()
            .instance_id("i-0abc")
            .image_id("ami-1")
            .launch_time(DateTime::from_millis(1_714_564_800_123))
            .state(InstanceState::builder().name(state).build())
            .private_ip_address("10.0.1.7")
            .tags(tag(CLUSTER_TAG, "prod"))
            .tags(tag(TOKEN_TAG, "r1-o3-n3"))
            .build()
    }

    #[test]
    fn a_terminated_instance_says_why_and_a_running_one_does_not() {
        let reason = aws_sdk_ec2::types::StateReason::builder()
            .code("Server.InternalError")
            .message("Server.InternalError: Internal error on launch")
            .build();
        let mut dead = instance(InstanceStateName::Terminated);
        dead.state_reason = Some(reason.clone());
        assert_eq!(
            machine(&dead, "GET").unwrap().reason.as_deref(),
            Some("Server.InternalError: Internal error on launch")
        );
        let mut live = instance(InstanceStateName::Running);
        live.state_reason = Some(reason);
        assert_eq!(machine(&live, "GET").unwrap().reason, None);
    }

    #[test]
    fn an_instance_is_a_machine_named_after_its_id() {
        let m = machine(&instance(InstanceStateName::Running), "GET").unwrap();
        assert_eq!(
            m,
            Machine {
                id: "i-0abc".into(),
                image: "ami-1".into(),
                launched_at: 1_714_564_800_123,
                state: MachineState::Running,
                address: Some("10.0.1.7".into()),
                zone: None,
                node: Some("i-0abc".into()),
                token: Some("r1-o3-n3".into()),
                reason: None,
            }
        );
        for (ec2, port) in [
            (InstanceStateName::Pending, MachineState::Pending),
            (InstanceStateName::Stopping, MachineState::Stopping),
            (InstanceStateName::Stopped, MachineState::Stopping),
            (InstanceStateName::ShuttingDown, MachineState::Terminated),
            (InstanceStateName::Terminated, MachineState::Terminated),
        ] {
            assert_eq!(machine(&instance(ec2), "GET").unwrap().state, port);
        }
        let nameless = Instance::builder().build();
        assert!(matches!(
            machine(&nameless, "GET"),
            Err(CloudError::Decode { .. })
        ));
    }
}
