//! moto's EC2 server for the tests that run the EC2 backend through the real SDK client: a
//! child process on an ephemeral loopback port, killed on drop, and the SDK configured for it
//! with static test keys (the process environment is left alone).
//!
//! moto is a Python package (`moto[server]`) that `scripts/test.sh` installs; without it the
//! tests fail saying so rather than pass without testing anything.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
use rehydrator::cloud::ec2::https_client;
use rehydrator_config::{AwsSettings, Launch};

/// How long moto may take to start answering (it imports a lot of Python).
const MOTO_START: Duration = Duration::from_secs(30);

/// moto's EC2 server on an ephemeral loopback port; killed when dropped.
pub struct Moto {
    child: Child,
    pub url: String,
    /// Where moto's recorder writes the requests it records (only once asked to record).
    recording: PathBuf,
    /// moto's stderr, where werkzeug logs every request. A file, not a pipe: nobody drains a
    /// pipe once moto answers, and after ~64 KiB of request lines moto would block writing
    /// its log and stop answering mid-test.
    log: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.recording);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A name of its own for each moto this process starts: its files are named by it.
fn next_id() -> String {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{}-{n}", std::process::id())
}

/// Where moto `id` keeps its recording: one file per server, outside the checkout.
fn recording_path(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rehydrator-moto-recording-{id}.jsonl"))
}

/// Where moto `id` writes its stderr.
fn log_path(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rehydrator-moto-{id}.log"))
}

/// The last 8 KiB of `path`, lossily as text: enough to show why moto stopped.
fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = bytes.len().saturating_sub(8 << 10);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// A port free right now on 127.0.0.1 (moto binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `N` ports free right now on 127.0.0.1, all different: a port freed after one pick can be
/// the kernel's next pick too, and an agent given one port twice refuses to start (seen:
/// "Serf Advertise WAN address … already configured for Serf Advertise LAN").
pub fn distinct_free_ports<const N: usize>() -> [u16; N] {
    let mut ports = [0u16; N];
    let mut found = 0;
    while found < N {
        let port = free_port();
        if !ports[..found].contains(&port) {
            ports[found] = port;
            found += 1;
        }
    }
    ports
}

/// moto on port 0: it binds a free port itself and logs which (`* Running on http://…`), so no
/// other process can take the port between choosing and binding it.
fn moto_command(program: &str, args: &[&str], id: &str) -> Command {
    let log = std::fs::File::create(log_path(id)).expect("moto's log file in the temp dir");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .args(["-H", "127.0.0.1", "-p", "0"])
        // moto signs nothing, but the same variables a client would see keep it off any real
        // account and off the instance metadata service.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("MOTO_RECORDER_FILEPATH", recording_path(id))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// Starts `moto_server` (else `python3 -m moto.server`) and waits until it answers HTTP.
pub fn moto() -> Moto {
    let id = next_id();
    let child = moto_command("moto_server", &[], &id)
        .spawn()
        .or_else(|_| moto_command("python3", &["-m", "moto.server"], &id).spawn())
        .expect("neither moto_server nor python3 could be started: install moto with `python3 -m pip install 'moto[server]'` (scripts/test.sh does)");
    wait_for(child, &id)
}

/// moto 5 answers a task's containers with `cpu` and `memory` as numbers where the ECS API has
/// strings (moto copies them from the task definition, where they are integers), and the Rust
/// SDK refuses the whole StartTask or DescribeTasks answer. The ECS tests' moto turns them into
/// strings as it builds a container; a moto that already does is left as it is.
const ECS_CONTAINER_FIX: &str = r#"
import sys
import moto.ecs.models as ecs
_init = ecs.Container.__init__
def _init_with_strings(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    for field in ("cpu", "memory"):
        value = getattr(self, field, None)
        if value is not None and not isinstance(value, str):
            setattr(self, field, str(value))
ecs.Container.__init__ = _init_with_strings
from moto.server import main
main(sys.argv[1:])
"#;

/// moto's server for the ECS tests: `python3` with moto installed, its task answers fixed as
/// `ECS_CONTAINER_FIX` says.
pub fn moto_ecs() -> Moto {
    let id = next_id();
    let child = moto_command("python3", &["-c", ECS_CONTAINER_FIX], &id)
        .spawn()
        .expect("python3 could not be started: install moto with `python3 -m pip install 'moto[server]'` (scripts/test.sh does)");
    wait_for(child, &id)
}

/// The port moto's log says it runs on.
fn running_port(log: &str) -> Option<u16> {
    let at = log.find("Running on http://127.0.0.1:")? + "Running on http://127.0.0.1:".len();
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn wait_for(child: Child, id: &str) -> Moto {
    let mut moto = Moto {
        child,
        url: String::new(),
        recording: recording_path(id),
        log: log_path(id),
    };
    let deadline = Instant::now() + MOTO_START;
    let port = loop {
        if let Some(status) = moto.child.try_wait().unwrap() {
            let err = tail(&moto.log);
            panic!(
                "moto's server exited ({status}) before answering; is moto installed? \
                 `python3 -m pip install 'moto[server]'` (scripts/test.sh does). Its stderr:\n{err}"
            );
        }
        if let Some(port) = running_port(&tail(&moto.log)) {
            break port;
        }
        assert!(
            Instant::now() < deadline,
            "moto's server did not say its port within {MOTO_START:?}: {}",
            tail(&moto.log)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    moto.url = format!("http://127.0.0.1:{port}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = moto.child.try_wait().unwrap() {
            let err = tail(&moto.log);
            panic!(
                "moto's server exited ({status}) before answering; is moto installed? \
                 `python3 -m pip install 'moto[server]'` (scripts/test.sh does). Its stderr:\n{err}"
            );
        }
        if answers_http(addr) {
            return moto;
        }
        assert!(
            Instant::now() < deadline,
            "moto's server did not answer on {addr} within {MOTO_START:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether something on `addr` answers an HTTP request with a status line.
fn answers_http(addr: SocketAddr) -> bool {
    use std::io::Write as _;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

pub fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "tests")
}

/// A stuck moto call fails the test naming the call, instead of waiting out the test's bound.
fn test_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(Duration::from_secs(30))
        .build()
}

/// The SDK configured explicitly for moto: static test keys, its endpoint, us-east-1.
pub fn client(url: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(url)
        .http_client(https_client())
        .timeout_config(test_timeouts())
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// moto's S3 through the real SDK, path-style (no bucket names in DNS on loopback).
pub fn s3_client(url: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(url)
        .force_path_style(true)
        .http_client(https_client())
        .timeout_config(test_timeouts())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// moto's CloudWatch through the real SDK (Smithy RPC v2 CBOR, which moto speaks from 5.2.6).
pub fn cloudwatch_client(url: &str) -> aws_sdk_cloudwatch::Client {
    let config = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(url)
        .http_client(https_client())
        .timeout_config(test_timeouts())
        .build();
    aws_sdk_cloudwatch::Client::from_conf(config)
}

pub fn settings(url: &str) -> AwsSettings {
    AwsSettings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(url.into()),
        launch: Launch::LaunchTemplate("consul-server".into()),
        image_name: "consul-server-*".into(),
        image_owners: vec!["self".into()],
        ecs_cluster: None,
        task_definition: None,
        registration_timeout: None,
    }
}

/// Registers an AMI owned by moto's account; its CreationDate is now, to the second.
pub async fn register(ec2: &aws_sdk_ec2::Client, name: &str) -> String {
    ec2.register_image()
        .name(name)
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_owned()
}

/// The launch template `settings` names ("consul-server"), on `image` by default.
pub async fn launch_template(ec2: &aws_sdk_ec2::Client, image: &str) {
    ec2.create_launch_template()
        .launch_template_name("consul-server")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(image)
                .instance_type(InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// The ECS client, configured as `client` is, on the same moto.
pub fn ecs_client(url: &str) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .region(aws_sdk_ecs::config::Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(url)
        .http_client(https_client())
        .timeout_config(test_timeouts())
        .build();
    aws_sdk_ecs::Client::from_conf(config)
}

/// The ECS cluster `ecs_settings` names.
pub const ECS_CLUSTER: &str = "consul";
/// The Consul server's task definition family `ecs_settings` names.
pub const TASK_FAMILY: &str = "consul-server";

/// `settings` for `type = "ecs"`: the ECS cluster, the task definition, a registration timeout.
pub fn ecs_settings(url: &str, registration_timeout: Duration) -> AwsSettings {
    AwsSettings {
        ecs_cluster: Some(ECS_CLUSTER.into()),
        task_definition: Some(TASK_FAMILY.into()),
        registration_timeout: Some(registration_timeout),
        ..settings(url)
    }
}

/// The ECS side `ecs_settings` expects: the cluster, the Consul task definition (host
/// networking, as the backend's conventions say), and tasks that stay RUNNING when described
/// (moto advances a task one state per describe unless told otherwise).
pub async fn ecs_cluster(url: &str, ecs: &aws_sdk_ecs::Client) {
    use aws_sdk_ecs::types::{ContainerDefinition, NetworkMode};
    ecs.create_cluster()
        .cluster_name(ECS_CLUSTER)
        .send()
        .await
        .unwrap();
    ecs.register_task_definition()
        .family(TASK_FAMILY)
        .network_mode(NetworkMode::Host)
        .container_definitions(
            ContainerDefinition::builder()
                .name("consul")
                .image("hashicorp/consul:1.20")
                .memory(256)
                .essential(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
    moto_api(
        url,
        "/moto-api/state-manager/set-transition",
        r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000000}}"#,
    )
    .await;
}

/// POSTs `body` to moto's own API at `path`.
pub async fn moto_api(url: &str, path: &str, body: &str) -> String {
    let mut resp = awc::Client::default()
        .post(format!("{url}{path}"))
        .insert_header(("content-type", "application/json"))
        .send_body(body.to_owned())
        .await
        .unwrap();
    let text = resp.body().limit(16 << 20).await.unwrap();
    assert!(
        resp.status().is_success(),
        "moto {path}: {} {}",
        resp.status(),
        String::from_utf8_lossy(&text)
    );
    String::from_utf8_lossy(&text).into_owned()
}

/// Registers `instance` in the ECS cluster as its agent would (moto reads the instance ID from
/// the identity document); answers the container instance's ARN.
pub async fn register_container_instance(
    ecs: &aws_sdk_ecs::Client,
    instance: &str,
) -> Result<String, String> {
    let doc = serde_json::json!({"instanceId": instance, "region": "us-east-1"});
    let out = ecs
        .register_container_instance()
        .cluster(ECS_CLUSTER)
        .instance_identity_document(doc.to_string())
        .send()
        .await
        .map_err(|e| format!("register {instance}: {e:?}"))?;
    out.container_instance()
        .and_then(|ci| ci.container_instance_arn())
        .map(str::to_owned)
        .ok_or_else(|| format!("register {instance}: no ARN in the answer"))
}

/// Stands in for the ECS agent on every instance tagged with `cluster`: once moto shows it
/// running, it is registered in the ECS cluster (once). moto registers nothing by itself.
/// Aborted when dropped; what failed is kept in `errors` (a panic would only end the task).
pub struct Registrar {
    task: tokio::task::JoinHandle<()>,
    pub errors: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often the registrar looks at moto's instances.
const REGISTRAR_TICK: Duration = Duration::from_millis(50);

pub fn registrar(url: &str, cluster: &str) -> Registrar {
    let (ec2, ecs) = (client(url), ecs_client(url));
    let cluster = cluster.to_owned();
    let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let errs = errors.clone();
    let task = actix_rt::spawn(async move {
        let mut registered = std::collections::BTreeSet::<String>::new();
        loop {
            let found = ec2
                .describe_instances()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name(format!("tag:{}", rehydrator::cloud::ec2::CLUSTER_TAG))
                        .values(&cluster)
                        .build(),
                )
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("instance-state-name")
                        .values("running")
                        .build(),
                )
                .send()
                .await;
            match found {
                Ok(out) => {
                    for i in out.reservations().iter().flat_map(|r| r.instances()) {
                        let Some(id) = i.instance_id() else { continue };
                        if registered.contains(id) {
                            continue;
                        }
                        match register_container_instance(&ecs, id).await {
                            Ok(_) => {
                                registered.insert(id.to_owned());
                            }
                            Err(e) => errs.borrow_mut().push(e),
                        }
                    }
                }
                Err(e) => errs.borrow_mut().push(format!("describe: {e:?}")),
            }
            tokio::time::sleep(REGISTRAR_TICK).await;
        }
    });
    Registrar { task, errors }
}

/// Starts moto's recorder: from now on it logs every AWS request it answers.
pub async fn start_recording(url: &str) {
    moto_api(url, "/moto-api/recorder/reset-recording", "").await;
    moto_api(url, "/moto-api/recorder/start-recording", "").await;
}

/// The AWS actions moto answered since `start_recording`, in order, each with its request
/// body: ECS's JSON calls by their X-Amz-Target, EC2's query calls by their `Action`.
pub async fn recorded(url: &str) -> Vec<(String, String)> {
    use base64::Engine as _;
    let mut resp = awc::Client::default()
        .get(format!("{url}/moto-api/recorder/download-recording"))
        .send()
        .await
        .unwrap();
    let text = resp.body().limit(64 << 20).await.unwrap();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let body = entry["body"].as_str().unwrap_or_default();
            let body = if entry["body_encoded"] == true {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .unwrap();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                body.to_owned()
            };
            let target = entry["headers"]
                .as_object()
                .and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target"))
                        .and_then(|(_, v)| v.as_str())
                })
                .map(|t| t.rsplit('.').next().unwrap_or(t).to_owned());
            let action = target.unwrap_or_else(|| {
                body.split('&')
                    .find_map(|kv| kv.strip_prefix("Action="))
                    .unwrap_or("?")
                    .to_owned()
            });
            (action, body)
        })
        .collect()
}

/// The Auto Scaling client, configured as `client` is, on the same moto.
pub fn asg_client(url: &str) -> aws_sdk_autoscaling::Client {
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(aws_sdk_autoscaling::config::BehaviorVersion::latest())
        .region(aws_sdk_autoscaling::config::Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(url)
        .http_client(https_client())
        .timeout_config(test_timeouts())
        .build();
    aws_sdk_autoscaling::Client::from_conf(config)
}

/// The Auto Scaling group `group_settings` names.
pub const GROUP: &str = "consul-servers";

/// `settings` for servers in the group `GROUP` instead of a bare launch template.
pub fn group_settings(url: &str) -> AwsSettings {
    AwsSettings {
        launch: Launch::AutoScalingGroup(GROUP.into()),
        ..settings(url)
    }
}

/// A group as terraform-aws-consul lays one out: `size` servers from the launch template
/// `launch_template` made (version `$Default`), across three zones' subnets, min = max =
/// desired, the cluster tag propagated to the instances. moto launches them at once.
pub async fn server_group(
    ec2: &aws_sdk_ec2::Client,
    asg: &aws_sdk_autoscaling::Client,
    cluster: &str,
    size: i32,
) {
    server_group_sized(ec2, asg, cluster, size, size).await;
}

/// As `server_group`, with `desired` (and min) servers and room for `max`.
pub async fn server_group_sized(
    ec2: &aws_sdk_ec2::Client,
    asg: &aws_sdk_autoscaling::Client,
    cluster: &str,
    desired: i32,
    max: i32,
) {
    let size = desired;
    use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag};
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .and_then(|v| v.vpc_id())
        .unwrap()
        .to_owned();
    let mut subnets = Vec::new();
    for (i, zone) in ["us-east-1a", "us-east-1b", "us-east-1c"]
        .iter()
        .enumerate()
    {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{i}.0/24"))
            .availability_zone(*zone)
            .send()
            .await
            .unwrap();
        subnets.push(
            subnet
                .subnet()
                .and_then(|s| s.subnet_id())
                .unwrap()
                .to_owned(),
        );
    }
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(GROUP)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_name("consul-server")
                .version("$Default")
                .build(),
        )
        .min_size(size)
        .max_size(max)
        .desired_capacity(size)
        .vpc_zone_identifier(subnets.join(","))
        .tags(
            Tag::builder()
                .resource_id(GROUP)
                .resource_type("auto-scaling-group")
                .key(rehydrator::cloud::ec2::CLUSTER_TAG)
                .value(cluster)
                .propagate_at_launch(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
}
