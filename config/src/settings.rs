//! The validated configuration the program runs on: typed fields, every default applied.
//! Serializes back to TOML for `check-config`, with secrets masked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A value that must never reach a log, an error or `check-config`'s output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it (the Consul client's header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// A URL that may carry secrets: `user:pass@` (sent as Basic auth, never in the URL) or query
/// values such as `?sig=…`, `?apikey=…`. Every way of showing it (`Debug`, `Display`, the
/// serialized settings) masks them ([`redact_url`]); [`SecretUrl::expose`] is for the request.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, for the one place that sends the request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redact_url(&self.0))
    }
}

/// Query keys whose values are taken for secrets (matched anywhere in the key, any case).
const SECRET_KEYS: &[&str] = &[
    "token",
    "key",
    "secret",
    "pass",
    "pwd",
    "sig",
    "auth",
    "credential",
    "session",
];

/// `url` as it may be shown: credentials before an `@` as `***`, the values of query keys
/// that look like secrets ([`SECRET_KEYS`]) as `***`, a fragment as `***`. Text that is not
/// `scheme://…` is shown as a placeholder: it may be a secret mistyped into the field.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, _)) => (r, "#***"),
        None => (rest, ""),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let query = query.map(|q| {
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _))
                    if SECRET_KEYS
                        .iter()
                        .any(|s| k.to_ascii_lowercase().contains(s)) =>
                {
                    format!("{k}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        format!("?{}", pairs.join("&"))
    });
    format!(
        "{scheme}://{authority}{path}{}{fragment}",
        query.unwrap_or_default()
    )
}

fn human<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn human_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => human(d, s),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub cluster: ClusterSettings,
    pub consul: ConsulSettings,
    pub lock: LockSettings,
    pub cloud: CloudSettings,
    pub status: StatusSettings,
    pub rollout: RolloutSettings,
    #[serde(skip_serializing_if = "NotifySettings::is_off")]
    pub notify: NotifySettings,
    #[serde(rename = "watch")]
    pub watches: Vec<WatchSettings>,
    #[serde(rename = "action")]
    pub actions: BTreeMap<String, ActionSettings>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterSettings {
    /// Names the cluster's keys in Consul KV (`rehydrator/<name>/...`). Required.
    pub name: String,
    /// How many Consul servers the cluster should have. Default 3.
    pub desired_servers: NonZeroU32,
    /// The catalog service the servers register. Default "consul".
    pub service: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsulSettings {
    /// The agent's HTTP address. Default: CONSUL_HTTP_ADDR, else "http://127.0.0.1:8500".
    pub address: String,
    /// ACL token. Default: CONSUL_HTTP_TOKEN, else the file CONSUL_HTTP_TOKEN_FILE names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding the ACL token (read at start, not stored in the output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Datacenter to address (`?dc=`). Default: the agent's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// CA certificate for https. Default: CONSUL_CACERT, else the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A directory of CA certificates. Default: CONSUL_CAPATH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<PathBuf>,
    /// Client certificate and key for an agent that verifies incoming HTTPS; both or neither.
    /// Default: CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// The name the agent's certificate must carry, when it is not the address's host.
    /// Default: CONSUL_TLS_SERVER_NAME.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Verify the agent's certificate. Default true (CONSUL_HTTP_SSL_VERIFY=false turns it off).
    pub tls_verify: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockSettings {
    /// The replica's Consul session TTL; renewed at half of it. Default 15s (Consul: 10s..24h).
    #[serde(serialize_with = "human")]
    pub session_ttl: Duration,
    /// Lock-delay after the holder's session is invalidated. Default 15s (Consul's).
    #[serde(serialize_with = "human")]
    pub lock_delay: Duration,
    /// The TTL of the replica's own liveness check on its Consul agent, which its session is
    /// tied to besides `serfHealth`: a dead replica's session goes when the check turns
    /// critical, so a takeover waits this plus `lock_delay` instead of up to 2 × `session_ttl`.
    /// Passed at a third of it. Default 5s; zero turns the check off (session TTL only).
    #[serde(serialize_with = "human")]
    pub check_ttl: Duration,
    /// How long a waiting replica waits on a receipt before it tries the lock again. Default 10m.
    #[serde(serialize_with = "human")]
    pub receipt_timeout: Duration,
    /// Receipts kept per action; older ones are pruned. Default 100.
    pub receipts_kept: NonZeroU32,
}

/// Where the servers' machines come from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CloudSettings {
    /// The simulator's cloud (the default): machines are simulated servers.
    Sim {
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// EC2 instances launched from a launch template.
    Ec2(AwsSettings),
    /// ECS container instances running the Consul server task.
    Ecs(AwsSettings),
    /// Consul agents as local processes on loopback (a laptop's real rollout).
    Process(ProcessSettings),
}

/// `[cloud] type = "process"`: every replica on the machine shares `data_dir`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessSettings {
    /// The consul binary. Default: the `CONSUL_BIN` environment variable.
    pub consul_bin: PathBuf,
    /// The cloud's state: images, machine records, agent data and logs. Required, absolute.
    pub data_dir: PathBuf,
    /// HCL every agent gets (an owner-only file in its config folder), e.g. a shorter
    /// autopilot stabilization, or ACLs with their tokens (masked when shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_hcl: Option<SecretHcl>,
}

/// Agent HCL, which may hold ACL tokens or a gossip key: shown ([`redact_hcl`]) with the
/// values of such keys as `***`; [`SecretHcl::expose`] is for the agent's config file.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHcl(String);

impl SecretHcl {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretHcl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_hcl(&self.0))
    }
}

impl Serialize for SecretHcl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redact_hcl(&self.0))
    }
}

/// HCL keys whose values are secrets: the `acl.tokens` names across Consul's versions, any
/// key naming a token, and the gossip `encrypt` key.
const SECRET_HCL_KEYS: &[&str] = &[
    "token",
    "master",
    "initial_management",
    "agent_recovery",
    "agent",
    "default",
    "replication",
    "config_file_service_registration",
    "dns",
    "encrypt",
    "secret",
    "password",
];

/// `hcl` with the value of every `key = value` whose key is in [`SECRET_HCL_KEYS`] (or
/// contains `token`) shown as `"***"`; blocks, other keys and layout as written.
pub fn redact_hcl(hcl: &str) -> String {
    hcl.lines()
        .map(|line| {
            let Some((key, _)) = line.split_once('=') else {
                return line.to_owned();
            };
            let k = key.trim().trim_matches('"').to_ascii_lowercase();
            if SECRET_HCL_KEYS.iter().any(|s| k == *s) || k.contains("token") {
                format!("{key}= \"***\"")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, Serialize)]
pub struct AwsSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Another endpoint (moto in tests, a VPC endpoint in production).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Where new instances come from: a launch template, or an Auto Scaling group.
    #[serde(flatten)]
    pub launch: Launch,
    /// Image name filter (DescribeImages `name`), e.g. "consul-server-*".
    pub image_name: String,
    /// Image owners. Default ["self"].
    pub image_owners: Vec<String>,
    /// The ECS cluster (ecs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecs_cluster: Option<String>,
    /// The Consul server's task definition, `family`, `family:revision` or an ARN (ecs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_definition: Option<String>,
    /// How long a launched instance may take to register as a container instance (ecs only).
    /// Default 10m for ecs.
    #[serde(serialize_with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub registration_timeout: Option<Duration>,
}

/// How the `ec2` and `ecs` backends get a new instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Launch {
    /// RunInstances from this launch template (its name, or its ID `lt-…`).
    LaunchTemplate(String),
    /// Through this Auto Scaling group (its name), from the group's own launch template: the
    /// group launches, and keeps counting, every server.
    AutoScalingGroup(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusSettings {
    /// The status endpoint's address. Default 127.0.0.1:9090; `listen = ""` turns it off
    /// (`None`); port 0 takes a free port, which `run` logs.
    #[serde(serialize_with = "listen_or_off")]
    pub listen: Option<SocketAddr>,
    /// The bearer token `/v1/status` and the dashboard ask for (`REHYDRATOR_STATUS_TOKEN`);
    /// none leaves them open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding that token, read when `run` starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// An endpoint turned off prints as `listen = ""`, the way it is written.
fn listen_or_off<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.collect_str(a),
        None => s.serialize_str(""),
    }
}

/// What a watch watches: the types of `consul watch`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WatchKind {
    Key {
        key: String,
    },
    Keyprefix {
        prefix: String,
    },
    Services,
    Nodes,
    Service {
        service: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tag: Vec<String>,
        passingonly: bool,
    },
    Checks {
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
    Event {
        event: String,
    },
    /// A tick every `every`: the rollout's slow timer, so a missed trigger never stalls it.
    /// Its trigger is the tick's number (Unix time / `every`), the same on every replica.
    Schedule {
        #[serde(serialize_with = "human")]
        every: Duration,
    },
    /// Polls the cloud's newest image every `interval`; fires when it changes. Its trigger is
    /// named after the image, the same on every replica, so a new image runs once.
    Image {
        #[serde(serialize_with = "human")]
        interval: Duration,
    },
}

/// The watch type names, as `consul watch -type` spells them.
pub const WATCH_TYPES: &[&str] = &[
    "key",
    "keyprefix",
    "services",
    "nodes",
    "service",
    "checks",
    "event",
    "schedule",
    "image",
];

#[derive(Debug, Clone, Serialize)]
pub struct WatchSettings {
    pub name: String,
    #[serde(flatten)]
    pub kind: WatchKind,
    /// The actions it triggers, by name (`[action.<name>]`).
    pub actions: Vec<String>,
    /// Quiet time after a change before firing; changes within it fire once. Default none.
    #[serde(serialize_with = "human_opt", skip_serializing_if = "Option::is_none")]
    pub debounce: Option<Duration>,
    /// Its changes ask for a rollout, as a `consul-rehydrate` event does (in `manual` mode
    /// too): a key an operator writes is never dropped, unlike a user event. Default false;
    /// `image` watches always ask.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub request: bool,
}

/// What an action does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ActionKind {
    /// Runs a command with the trigger as JSON on stdin; exit status 0 is success.
    Exec { command: Vec<String> },
    /// POSTs the trigger as JSON to a URL; a 2xx answer is success.
    Http { url: SecretUrl },
    /// The rollout's launch step: one server on the newest image, if safe.
    #[serde(rename = "spin-up")]
    SpinUp,
    /// The rollout's retire step: the oldest outdated server, the leader last, if safe.
    #[serde(rename = "spin-down")]
    SpinDown,
    /// The lifecycle guard: lets an Auto Scaling group's held servers go on only while quorum
    /// and the baseline failure tolerance hold, the leader last.
    #[serde(rename = "lifecycle-guard")]
    LifecycleGuard,
}

/// The action type names.
pub const ACTION_TYPES: &[&str] = &["exec", "http", "spin-up", "spin-down", "lifecycle-guard"];

/// The lock SpinUp and SpinDown share by default: one rollout step at a time cluster-wide.
pub const STEP_LOCK: &str = "step";

/// `rollout.stable_timeout` when the file does not set it.
pub const DEFAULT_STABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// How rollouts start and how patient they are.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutSettings {
    /// "manual" (default): only a `consul-rehydrate` event starts a rollout; "auto": a newer
    /// image than some server's starts one by itself.
    pub mode: RolloutMode,
    /// Log and record the step a run would take, and take none. Default false.
    pub dry_run: bool,
    /// A new server that is not a healthy voter this long after launch stops the rollout.
    /// Default 10m.
    #[serde(serialize_with = "human")]
    pub stable_timeout: Duration,
    /// How long one step may wait for the cluster to settle (leadership moved, a retired
    /// server gone). Default 10m.
    #[serde(serialize_with = "human")]
    pub step_timeout: Duration,
    /// When a rollout stops because a new server never got healthy, retire that server too.
    /// Default false (leave it for inspection).
    pub retire_failed_launch: bool,
    /// How many launches of a rollout may fail (the machine died, was terminated or never
    /// started before it became a voter) before the rollout stops with the last reason; each
    /// attempt after a failure uses a new launch token. Default 3, at most 10.
    pub launch_attempts: NonZeroU32,
    /// How long the newest new server must have been healthy (autopilot's StableSince) before
    /// an old server is retired or leadership moves to it. Default 0s (no bake).
    #[serde(serialize_with = "human")]
    pub bake_time: Duration,
    /// Maintenance windows: steps are taken only inside one of them. Default none: always.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowSettings>,
    /// Consul snapshots taken before a rollout's first step and before each retirement.
    /// Default none (off).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotSettings>,
    /// `rollout.gate_prometheus_*`: a PromQL query that must come back empty before every
    /// step. Default none (off).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub prometheus_gate: Option<PrometheusGate>,
    /// `rollout.gate_cloudwatch_alarms`: CloudWatch alarms none of which may be in ALARM
    /// before every step. Default none (off).
    #[serde(
        rename = "gate_cloudwatch_alarms",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cloudwatch_gate: Vec<AlarmPattern>,
}

/// One entry of `rollout.gate_cloudwatch_alarms`: an alarm's name, or, written with a `*` at
/// its end, every alarm whose name starts with what comes before it (`"*"` alone: every alarm
/// in the region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmPattern {
    Name(String),
    Prefix(String),
}

impl Serialize for AlarmPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Name(n) => s.serialize_str(n),
            Self::Prefix(p) => s.serialize_str(&format!("{p}*")),
        }
    }
}

/// The query Prometheus' gate asks when none is set: any alert firing closes it.
pub const DEFAULT_GATE_QUERY: &str = "ALERTS{alertstate=\"firing\"}";

/// A health gate on Prometheus (`rollout.gate_prometheus_*`): the step waits while the query
/// returns any series, and while Prometheus cannot be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrometheusGate {
    /// Prometheus' base URL (`http://prometheus:9090`); masked in output, as it may carry
    /// credentials.
    #[serde(rename = "gate_prometheus_url")]
    pub url: SecretUrl,
    /// PromQL whose result must be empty. Default `ALERTS{alertstate="firing"}`.
    #[serde(rename = "gate_prometheus_query")]
    pub query: String,
}

/// Where and how the rollout saves Consul snapshots (`rollout.snapshot_*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotSettings {
    /// Where the archives go (`<cluster>-<rollout>-<step>-<unix ms>.snap`): a directory,
    /// created if missing, or `s3://bucket/prefix`.
    #[serde(rename = "snapshot_dir")]
    pub dest: SnapshotDest,
    /// The newest kept of this cluster's archives in `dir`; older ones are deleted. Default 10.
    #[serde(rename = "snapshots_kept")]
    pub kept: NonZeroU32,
    /// A snapshot that fails holds the step (it waits, saying why) unless false. Default true.
    #[serde(rename = "snapshot_required")]
    pub required: bool,
    /// The largest snapshot read, in MiB (it is held in memory on its way to disk). Default
    /// 512.
    #[serde(rename = "snapshot_max_mib")]
    pub max_mib: NonZeroU32,
}

/// Where snapshots go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotDest {
    Dir(std::path::PathBuf),
    /// An S3 bucket, the keys under `prefix` (empty, or ending in `/`).
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl fmt::Display for SnapshotDest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotDest::Dir(d) => write!(f, "{}", d.display()),
            SnapshotDest::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Serialize for SnapshotDest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// One maintenance window: on each of `days`, from `start` to `end` local time in
/// `time_zone`; an `end` before `start` runs past midnight into the next day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowSettings {
    #[serde(serialize_with = "weekdays")]
    pub days: Vec<jiff::civil::Weekday>,
    #[serde(serialize_with = "clock")]
    pub start: jiff::civil::Time,
    #[serde(serialize_with = "clock")]
    pub end: jiff::civil::Time,
    /// An IANA time zone name, checked against the embedded tz database.
    pub time_zone: String,
}

/// The day names windows are written with, Monday first.
pub const WEEKDAYS: &[(&str, jiff::civil::Weekday)] = &[
    ("mon", jiff::civil::Weekday::Monday),
    ("tue", jiff::civil::Weekday::Tuesday),
    ("wed", jiff::civil::Weekday::Wednesday),
    ("thu", jiff::civil::Weekday::Thursday),
    ("fri", jiff::civil::Weekday::Friday),
    ("sat", jiff::civil::Weekday::Saturday),
    ("sun", jiff::civil::Weekday::Sunday),
];

fn weekdays<S: Serializer>(days: &[jiff::civil::Weekday], s: S) -> Result<S::Ok, S::Error> {
    let names: Vec<&str> = days
        .iter()
        .filter_map(|d| WEEKDAYS.iter().find(|(_, w)| w == d).map(|(n, _)| *n))
        .collect();
    names.serialize(s)
}

fn clock<S: Serializer>(t: &jiff::civil::Time, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{:02}:{:02}", t.hour(), t.minute()))
}

/// `[notify]`: the rollout's webhook, posted on start, each step, a stop and completion.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NotifySettings {
    /// Where to POST. Default none: no notifications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretUrl>,
    /// Sent as `Authorization: Bearer`; from REHYDRATOR_NOTIFY_TOKEN, never from the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

impl NotifySettings {
    fn is_off(&self) -> bool {
        self.url.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMode {
    Manual,
    Auto,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionSettings {
    #[serde(flatten)]
    pub kind: ActionKind,
    /// How long one run may take before it is killed and requeued. Default 5m.
    #[serde(serialize_with = "human")]
    pub timeout: Duration,
    /// The lock it runs under (`rehydrator/<cluster>/locks/<lock>`). Default: the action's name.
    pub lock: String,
}

impl Settings {
    /// The effective configuration as TOML, secrets masked: what `check-config` prints.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn agent_hcl_is_shown_without_its_tokens() {
        let hcl = "autopilot { server_stabilization_time = \"2s\" }\nacl {\n  enabled = true\n  tokens {\n    master = \"m-1\"\n    agent = \"a-2\"\n    initial_management = \"i-3\"\n  }\n}\nencrypt = \"k-4\"\nacl_token = \"t-5\"";
        let shown = redact_hcl(hcl);
        for secret in ["m-1", "a-2", "i-3", "k-4", "t-5"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("server_stabilization_time = \"2s\""),
            "{shown}"
        );
        assert!(shown.contains("enabled = true"), "{shown}");
        let h = SecretHcl::new(hcl);
        assert!(!format!("{h:?}").contains("m-1"));
        assert!(!toml::Value::try_from(&h)
            .unwrap()
            .to_string()
            .contains("m-1"));
        assert_eq!(h.expose(), hcl);
    }

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(
            redact_url("https://user:p%40ss@hooks.example.com:8443/a/b?sig=abc&x=1&apiKey=k#tok"),
            "https://***@hooks.example.com:8443/a/b?sig=***&x=1&apiKey=***#***"
        );
        assert_eq!(
            redact_url("http://hooks.example.com/plain?page=2"),
            "http://hooks.example.com/plain?page=2"
        );
        for secret in [
            "token",
            "access_token",
            "Password",
            "X-Amz-Signature",
            "auth",
            "session_id",
        ] {
            let shown = redact_url(&format!("https://h/p?{secret}=s3cr3t"));
            assert!(!shown.contains("s3cr3t"), "{secret}: {shown}");
        }
        // A value with no scheme may be a secret pasted into the wrong field.
        assert_eq!(redact_url("s3cr3t-token"), "(not a URL)");
        #[derive(Serialize)]
        struct Field {
            url: SecretUrl,
        }
        let u = SecretUrl::new("https://u:pw@h/x?sig=1");
        let toml = toml::to_string(&Field { url: u.clone() }).unwrap_or_default();
        assert!(toml.starts_with("url = "), "{toml}");
        for shown in [format!("{u}"), format!("{u:?}"), toml] {
            assert!(!shown.contains("pw") && !shown.contains("sig=1"), "{shown}");
        }
        assert_eq!(u.expose(), "https://u:pw@h/x?sig=1");
    }
}
