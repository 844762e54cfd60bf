//! Raw configuration -> `Settings`. Every problem is collected with the field at fault, so a
//! user fixes a file in one pass instead of one error per run.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::FieldError;
use crate::raw::*;
use crate::settings::*;

/// Consul's bounds on a session TTL.
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(86400);
/// A liveness check passed at a third of its TTL: below a second that is a request every
/// 333 ms per replica, for no takeover worth having.
const MIN_CHECK_TTL: Duration = Duration::from_secs(1);
/// `cloud.registration_timeout`'s default: an ECS-optimized AMI boots and its agent registers in
/// a minute or two; ten leaves room for a slow pull without hiding an instance that never will.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(600);
/// An image watch's default poll interval, and the shortest it may be: the cloud's image
/// listing (DescribeImages) is rate-limited per account, and every replica polls.
const IMAGE_INTERVAL: Duration = Duration::from_secs(300);
const MIN_IMAGE_INTERVAL: Duration = Duration::from_secs(10);
/// The longest any duration in the file may be: far past any sane timeout or interval, and
/// short enough that no instant computed from one overflows.
const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);
/// The shortest schedule: every replica ticks, and each tick is a job with a lock round trip.
const MIN_SCHEDULE: Duration = Duration::from_secs(1);
/// The environment variable the notification webhook's bearer token comes from.
pub const NOTIFY_TOKEN_ENV: &str = "REHYDRATOR_NOTIFY_TOKEN";
/// The environment variable the status endpoint's bearer token comes from.
pub const STATUS_TOKEN_ENV: &str = "REHYDRATOR_STATUS_TOKEN";

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// A duration field; longer than [`MAX_DURATION`] is refused, so no instant computed from
    /// one can overflow.
    fn duration(&mut self, field: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => match humantime::parse_duration(v) {
                Ok(d) if d > MAX_DURATION => {
                    self.push(
                        field,
                        format!("{v:?} is longer than the most any duration here may be, 30 days"),
                    );
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.push(
                        field,
                        format!("invalid duration {v:?} ({e}); write e.g. \"15s\" or \"10m\""),
                    );
                    default
                }
            },
        }
    }

    /// A duration that must be longer than zero.
    fn nonzero_duration(
        &mut self,
        field: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(field, value, default);
        if d.is_zero() {
            self.push(field, "must be longer than zero");
            return default;
        }
        d
    }

    fn positive(&mut self, field: &str, value: Option<i64>, default: u32) -> NonZeroU32 {
        let fallback = NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN);
        match value {
            None => fallback,
            Some(v) => match u32::try_from(v).ok().and_then(NonZeroU32::new) {
                Some(n) => n,
                None => {
                    self.push(
                        field,
                        format!("must be a whole number from 1 to {}, got {v}", u32::MAX),
                    );
                    fallback
                }
            },
        }
    }

    /// `positive`, and at most `max`: a count that bounds what the cluster goes through.
    fn at_most(&mut self, field: &str, value: Option<i64>, default: u32, max: u32) -> NonZeroU32 {
        match value {
            Some(v) if v > i64::from(max) => {
                self.push(
                    field,
                    format!("must be a whole number from 1 to {max}, got {v}"),
                );
                NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN)
            }
            _ => self.positive(field, value, default),
        }
    }

    fn required(&mut self, field: &str, value: Option<&String>) -> String {
        match value.map(|v| v.trim()) {
            Some(v) if !v.is_empty() => v.to_owned(),
            _ => {
                self.push(field, "is required");
                String::new()
            }
        }
    }
}

/// Validates `raw`. `env` supplies the consul CLI's variables (CONSUL_HTTP_ADDR, ...) used as
/// defaults for `[consul]`.
pub fn validate(
    raw: RawConfig,
    env: &HashMap<String, String>,
) -> Result<Settings, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    let rc = raw.cluster.unwrap_or_default();
    let name = errs.required("cluster.name", rc.name.as_ref());
    if !name.is_empty()
        && !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errs.push(
            "cluster.name",
            format!("{name:?} may hold only letters, digits, '-' and '_' (it names KV keys)"),
        );
    }
    let desired_servers = errs.positive("cluster.desired_servers", rc.desired_servers, 3);
    let cluster = ClusterSettings {
        name,
        desired_servers,
        service: rc.service.unwrap_or_else(|| "consul".into()),
    };

    let consul = consul_settings(raw.consul.unwrap_or_default(), env, &mut errs);

    let rl = raw.lock.unwrap_or_default();
    let session_ttl = errs.duration(
        "lock.session_ttl",
        rl.session_ttl.as_deref(),
        Duration::from_secs(15),
    );
    if !(MIN_TTL..=MAX_TTL).contains(&session_ttl) {
        errs.push(
            "lock.session_ttl",
            "must be between 10s and 24h (Consul's session TTL bounds)",
        );
    }
    let lock_delay = errs.duration(
        "lock.lock_delay",
        rl.lock_delay.as_deref(),
        Duration::from_secs(15),
    );
    if lock_delay > Duration::from_secs(60) {
        errs.push(
            "lock.lock_delay",
            "must be at most 60s (Consul caps lock-delay there)",
        );
    }
    let check_ttl = errs.duration(
        "lock.check_ttl",
        rl.check_ttl.as_deref(),
        Duration::from_secs(5),
    );
    if !check_ttl.is_zero() && !(MIN_CHECK_TTL..=session_ttl).contains(&check_ttl) {
        errs.push(
            "lock.check_ttl",
            format!(
                "must be 0s (off) or between 1s and lock.session_ttl ({}): a longer check \
                 would never end a session before its TTL does",
                crate::go_duration::format(session_ttl)
            ),
        );
    }
    let lock = LockSettings {
        session_ttl,
        lock_delay,
        check_ttl,
        receipt_timeout: errs.nonzero_duration(
            "lock.receipt_timeout",
            rl.receipt_timeout.as_deref(),
            Duration::from_secs(600),
        ),
        receipts_kept: errs.positive("lock.receipts_kept", rl.receipts_kept, 100),
    };

    let cloud = cloud_settings(raw.cloud.unwrap_or_default(), env, &mut errs);

    let raw_status = raw.status.unwrap_or_default();
    let status_token = env
        .get(STATUS_TOKEN_ENV)
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(Secret::new);
    let status_token_file = raw_status
        .token_file
        .filter(|f| !f.trim().is_empty())
        .map(PathBuf::from);
    if status_token.is_some() && status_token_file.is_some() {
        errs.push(
            "status.token_file",
            format!("give either {STATUS_TOKEN_ENV} or a token file, not both"),
        );
    }
    let listen = raw_status.listen.unwrap_or_else(|| "127.0.0.1:9090".into());
    // Empty turns the endpoint off.
    let listen = match listen.trim() {
        "" => None,
        text => Some(text.parse::<SocketAddr>().unwrap_or_else(|_| {
            errs.push(
                "status.listen",
                format!("{listen:?} is not an address like \"0.0.0.0:9090\" (or \"\" for off)"),
            );
            SocketAddr::from(([127, 0, 0, 1], 9090))
        })),
    };

    let mut actions = BTreeMap::new();
    for (name, ra) in raw.action.unwrap_or_default() {
        if let Some(a) = action_settings(&name, ra, &mut errs) {
            actions.insert(name, a);
        }
    }
    // The guard works a group's lifecycle hooks: a cloud without a group has none.
    let has_group = match &cloud {
        CloudSettings::Sim { .. } => true,
        CloudSettings::Ec2(aws) | CloudSettings::Ecs(aws) => {
            matches!(aws.launch, Launch::AutoScalingGroup(_))
        }
        _ => false,
    };
    for (name, a) in &actions {
        if a.kind == ActionKind::LifecycleGuard && !has_group {
            errs.push(
                format!("action.{name}.type"),
                "\"lifecycle-guard\" works an Auto Scaling group's lifecycle hooks: it needs \
                 cloud.auto_scaling_group (or the simulator's cloud)",
            );
        }
    }

    let mut watches = Vec::new();
    let mut seen = BTreeMap::new();
    for (i, rw) in raw.watch.unwrap_or_default().into_iter().enumerate() {
        let at = format!("watch[{i}]");
        if let Some(n) = &rw.name {
            if let Some(first) = seen.insert(n.clone(), i) {
                errs.push(
                    format!("{at}.name"),
                    format!("{n:?} is already the name of watch[{first}]"),
                );
            }
        }
        if let Some(w) = watch_settings(&at, rw, &actions, &mut errs) {
            watches.push(w);
        }
    }

    let rollout = rollout_settings(raw.rollout.unwrap_or_default(), &mut errs);
    windows_need_a_schedule(&watches, &actions, &rollout, &mut errs);
    let notify = notify_settings(raw.notify.unwrap_or_default(), env, &mut errs);

    if errs.0.is_empty() {
        Ok(Settings {
            cluster,
            consul,
            lock,
            cloud,
            status: StatusSettings {
                listen,
                token: status_token,
                token_file: status_token_file,
            },
            rollout,
            notify,
            watches,
            actions,
        })
    } else {
        Err(errs.0)
    }
}

/// `[consul]` resolved as the consul CLI resolves its variables, the file's fields first:
/// address (CONSUL_HTTP_ADDR; a bare `host:port` is https when `ssl` or CONSUL_HTTP_SSL says
/// so), token (the file's token or token_file, else CONSUL_HTTP_TOKEN, else
/// CONSUL_HTTP_TOKEN_FILE: the CLI prefers the token), TLS (CONSUL_CACERT, CONSUL_CAPATH,
/// CONSUL_CLIENT_CERT/KEY, CONSUL_TLS_SERVER_NAME, CONSUL_HTTP_SSL_VERIFY). Every command
/// reaches Consul through this, with a configuration file or without one.
fn consul_settings(
    rc: RawConsul,
    env: &HashMap<String, String>,
    errs: &mut Errors,
) -> ConsulSettings {
    let env_get = |k: &str| env.get(k).filter(|v| !v.trim().is_empty()).cloned();
    let mut env_bool = |field: &str, var: &str, default: bool| match env_get(var) {
        None => default,
        Some(v) => parse_bool(&v).unwrap_or_else(|| {
            errs.push(field, format!("{var}={v:?} is not a boolean"));
            default
        }),
    };
    let ssl = match rc.ssl {
        Some(v) => v,
        None => env_bool("consul.ssl", "CONSUL_HTTP_SSL", false),
    };
    let tls_verify = match rc.tls_verify {
        Some(v) => v,
        None => env_bool("consul.tls_verify", "CONSUL_HTTP_SSL_VERIFY", true),
    };
    let address = rc.address.or_else(|| env_get("CONSUL_HTTP_ADDR"));
    let address = match address {
        None if ssl => "https://127.0.0.1:8500".to_owned(),
        None => "http://127.0.0.1:8500".to_owned(),
        Some(a) => normalize_address(&a, ssl).unwrap_or_else(|why| {
            errs.push("consul.address", why);
            a
        }),
    };
    if rc.token.is_some() && rc.token_file.is_some() {
        errs.push(
            "consul.token_file",
            "give either a token or a token file, not both",
        );
    }
    let (token, token_file) = match (rc.token, rc.token_file) {
        (Some(t), _) => (Some(t), None),
        (None, Some(f)) => (None, Some(f)),
        (None, None) => match env_get("CONSUL_HTTP_TOKEN") {
            Some(t) => (Some(t), None),
            None => (None, env_get("CONSUL_HTTP_TOKEN_FILE")),
        },
    };
    let path = |field: Option<String>, var: &str| field.or_else(|| env_get(var)).map(PathBuf::from);
    let client_cert = path(rc.client_cert, "CONSUL_CLIENT_CERT");
    let client_key = path(rc.client_key, "CONSUL_CLIENT_KEY");
    if client_cert.is_some() != client_key.is_some() {
        errs.push(
            "consul.client_key",
            "a client certificate and its key go together (client_cert and client_key, or CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)",
        );
    }
    ConsulSettings {
        address,
        token: token.map(|t| Secret::new(t.trim())),
        token_file: token_file.map(PathBuf::from),
        datacenter: rc.datacenter,
        ca_file: path(rc.ca_file, "CONSUL_CACERT"),
        ca_path: path(rc.ca_path, "CONSUL_CAPATH"),
        client_cert,
        client_key,
        tls_server_name: rc
            .tls_server_name
            .or_else(|| env_get("CONSUL_TLS_SERVER_NAME")),
        tls_verify,
    }
}

/// `[consul]` from the environment alone, as the commands run without `--config` take it.
pub fn consul_from_env(env: &HashMap<String, String>) -> Result<ConsulSettings, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());
    let settings = consul_settings(RawConsul::default(), env, &mut errs);
    if errs.0.is_empty() {
        Ok(settings)
    } else {
        Err(errs.0)
    }
}

/// Go's `strconv.ParseBool`, which is how the CLI reads its boolean variables. Unlike the CLI,
/// anything else is an error: the CLI reads a bad CONSUL_HTTP_SSL_VERIFY as "do not verify",
/// which is the unsafe way to be wrong.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `http://h:p`, `https://h:p` or `h:p` (https when `ssl`) as a base URL without a trailing
/// slash; why not, naming what is wrong. No path, credentials or query: the token goes in a
/// header, never in a URL. Unix sockets, which the CLI also takes, are not supported.
pub fn normalize_address(addr: &str, ssl: bool) -> Result<String, String> {
    let addr = addr.trim().trim_end_matches('/');
    let (scheme, rest) = match addr.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None if ssl => ("https".to_owned(), addr),
        None => ("http".to_owned(), addr),
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "unsupported scheme {scheme:?} (http and https only, or host:port)"
        ));
    }
    if rest.contains('@') {
        return Err(
            "must not hold credentials (give the token as consul.token or consul.token_file)"
                .into(),
        );
    }
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err("must be host:port or a URL with no path".into());
    }
    // `[v6]:port`, `host:port` or a bare host.
    let (host, port) = match rest.strip_prefix('[').and_then(|r| r.find(']')) {
        Some(end) => (&rest[..end + 2], rest[end + 2..].strip_prefix(':')),
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let host_ok = bracketed
        || (!host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
    if !host_ok {
        return Err(format!("{host:?} is not a host name or address"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{p:?} is not a port"));
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

fn cloud_settings(rc: RawCloud, env: &HashMap<String, String>, errs: &mut Errors) -> CloudSettings {
    let kind = rc.kind.clone().unwrap_or_else(|| "sim".into());
    if kind != "process" {
        for (field, set) in [
            ("consul_bin", rc.consul_bin.is_some()),
            ("data_dir", rc.data_dir.is_some()),
            ("agent_hcl", rc.agent_hcl.is_some()),
        ] {
            if set {
                errs.push(
                    format!("cloud.{field}"),
                    format!("applies to type \"process\", not {kind:?}"),
                );
            }
        }
    }
    match kind.as_str() {
        "sim" => {
            for (field, set) in [
                ("launch_template", rc.launch_template.is_some()),
                ("auto_scaling_group", rc.auto_scaling_group.is_some()),
                ("image_name", rc.image_name.is_some()),
                ("ecs_cluster", rc.ecs_cluster.is_some()),
            ] {
                if set {
                    errs.push(
                        format!("cloud.{field}"),
                        "applies to type \"ec2\" or \"ecs\", not \"sim\"",
                    );
                }
            }
            for (field, set) in [
                ("task_definition", rc.task_definition.is_some()),
                ("registration_timeout", rc.registration_timeout.is_some()),
            ] {
                if set {
                    errs.push(
                        format!("cloud.{field}"),
                        "applies to type \"ecs\", not \"sim\"",
                    );
                }
            }
            CloudSettings::Sim { url: rc.url }
        }
        "ec2" | "ecs" => {
            let mut aws = AwsSettings {
                launch: launch(rc.launch_template, rc.auto_scaling_group, errs),
                image_name: errs.required("cloud.image_name", rc.image_name.as_ref()),
                image_owners: rc.image_owners.unwrap_or_else(|| vec!["self".into()]),
                region: rc.region,
                endpoint_url: rc.endpoint_url,
                ecs_cluster: rc.ecs_cluster,
                task_definition: rc.task_definition,
                registration_timeout: rc.registration_timeout.as_deref().map(|v| {
                    errs.duration("cloud.registration_timeout", Some(v), REGISTRATION_TIMEOUT)
                }),
            };
            if kind == "ecs" {
                if aws.ecs_cluster.is_none() {
                    errs.push("cloud.ecs_cluster", "is required for type \"ecs\"");
                }
                if !matches!(aws.task_definition.as_deref(), Some(t) if !t.trim().is_empty()) {
                    errs.push("cloud.task_definition", "is required for type \"ecs\"");
                }
                aws.registration_timeout.get_or_insert(REGISTRATION_TIMEOUT);
                CloudSettings::Ecs(aws)
            } else {
                for (field, set) in [
                    ("ecs_cluster", aws.ecs_cluster.is_some()),
                    ("task_definition", aws.task_definition.is_some()),
                    ("registration_timeout", aws.registration_timeout.is_some()),
                ] {
                    if set {
                        errs.push(
                            format!("cloud.{field}"),
                            "applies to type \"ecs\", not \"ec2\"",
                        );
                    }
                }
                CloudSettings::Ec2(aws)
            }
        }
        "process" => process_settings(rc, env, errs),
        other => {
            errs.push(
                "cloud.type",
                format!(
                    "unknown cloud type {other:?} (expected one of \"sim\", \"ec2\", \"ecs\", \
                     \"process\")"
                ),
            );
            CloudSettings::Sim { url: None }
        }
    }
}

/// `cloud.launch_template` or `cloud.auto_scaling_group`: exactly one. With a group, the group's
/// launch template is the one that counts, so a second one named here could only disagree.
fn launch(template: Option<String>, group: Option<String>, errs: &mut Errors) -> Launch {
    let named = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    match (named(template), named(group)) {
        (Some(_), Some(group)) => {
            errs.push(
                "cloud.launch_template",
                "leave it out with cloud.auto_scaling_group: the group's own launch template is \
                 the one its instances come from",
            );
            Launch::AutoScalingGroup(group)
        }
        (Some(template), None) => Launch::LaunchTemplate(template),
        (None, Some(group)) => {
            if group.len() > 255 || group.chars().any(char::is_control) {
                errs.push(
                    "cloud.auto_scaling_group",
                    "is not a group name (1 to 255 printable characters)",
                );
            }
            Launch::AutoScalingGroup(group)
        }
        (None, None) => {
            errs.push(
                "cloud.launch_template",
                "is required unless cloud.auto_scaling_group names the group the servers run in",
            );
            Launch::LaunchTemplate(String::new())
        }
    }
}

/// `[cloud] type = "process"`: local consul agents sharing `data_dir`.
fn process_settings(
    rc: RawCloud,
    env: &HashMap<String, String>,
    errs: &mut Errors,
) -> CloudSettings {
    for (field, set) in [
        ("region", rc.region.is_some()),
        ("endpoint_url", rc.endpoint_url.is_some()),
        ("launch_template", rc.launch_template.is_some()),
        ("auto_scaling_group", rc.auto_scaling_group.is_some()),
        ("image_name", rc.image_name.is_some()),
        ("image_owners", rc.image_owners.is_some()),
        ("ecs_cluster", rc.ecs_cluster.is_some()),
        ("task_definition", rc.task_definition.is_some()),
        ("registration_timeout", rc.registration_timeout.is_some()),
        ("url", rc.url.is_some()),
    ] {
        if set {
            errs.push(
                format!("cloud.{field}"),
                "does not apply to type \"process\"",
            );
        }
    }
    let consul_bin = rc
        .consul_bin
        .filter(|b| !b.trim().is_empty())
        .or_else(|| env.get("CONSUL_BIN").filter(|b| !b.trim().is_empty()).cloned())
        .unwrap_or_else(|| {
            errs.push(
                "cloud.consul_bin",
                "is required for type \"process\": set it, or the CONSUL_BIN environment variable, to a consul binary",
            );
            String::new()
        });
    let data_dir = PathBuf::from(errs.required("cloud.data_dir", rc.data_dir.as_ref()));
    if !data_dir.as_os_str().is_empty() && !data_dir.is_absolute() {
        errs.push(
            "cloud.data_dir",
            format!(
                "{:?} must be an absolute path: every replica on the machine shares it, whatever its working directory",
                data_dir.display().to_string()
            ),
        );
    }
    CloudSettings::Process(ProcessSettings {
        consul_bin: PathBuf::from(consul_bin),
        data_dir,
        agent_hcl: rc
            .agent_hcl
            .filter(|h| !h.trim().is_empty())
            .map(SecretHcl::new),
    })
}

/// Why `name` cannot be one segment of a KV key (`rehydrator/<cluster>/locks/<name>`, ...), if
/// it cannot: letters, digits, '-' and '_' only, as `cluster.name`. No dots: Consul 1.21.5 and
/// later refuse a `..` segment, an HTTP client may fold `.` and `..` away, and the layered
/// loader reads a dot in a table name as nesting.
pub fn kv_segment_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        Some("may hold only letters, digits, '-' and '_' (it names KV keys)")
    } else {
        None
    }
}

fn action_settings(name: &str, ra: RawAction, errs: &mut Errors) -> Option<ActionSettings> {
    let at = format!("action.{name}");
    let before = errs.0.len();
    if let Some(problem) = kv_segment_problem(name) {
        errs.push(at.clone(), format!("the name {name:?} {problem}"));
    }
    let kind = match ra.kind.as_deref() {
        None => {
            errs.push(
                format!("{at}.type"),
                format!("is required (one of {})", quoted(ACTION_TYPES)),
            );
            None
        }
        Some("exec") => match ra.command {
            Some(c) if !c.is_empty() && !c[0].is_empty() => Some(ActionKind::Exec { command: c }),
            _ => {
                errs.push(
                    format!("{at}.command"),
                    "is required for type \"exec\": the program and its arguments, e.g. \
                     [\"/bin/notify\", \"--quiet\"]",
                );
                None
            }
        },
        Some("spin-up") => Some(ActionKind::SpinUp),
        Some("spin-down") => Some(ActionKind::SpinDown),
        Some("lifecycle-guard") => Some(ActionKind::LifecycleGuard),
        Some("http") => match ra.url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Some(ActionKind::Http {
                    url: SecretUrl::new(u),
                })
            }
            Some(_) => {
                // Not echoed: a mistyped value may be a secret.
                errs.push(format!("{at}.url"), "is not an http:// or https:// URL");
                None
            }
            None => {
                errs.push(format!("{at}.url"), "is required for type \"http\"");
                None
            }
        },
        Some(other) => {
            errs.push(
                format!("{at}.type"),
                format!(
                    "unknown action type {other:?} (expected one of {})",
                    quoted(ACTION_TYPES)
                ),
            );
            None
        }
    };
    // The rollout's two steps share one lock: one mutating step at a time, cluster-wide; and a
    // step may wait out a server's leave, so its default run time is longer.
    let rollout_step = matches!(
        ra.kind.as_deref(),
        Some("spin-up" | "spin-down" | "lifecycle-guard")
    );
    let default_timeout = Duration::from_secs(if rollout_step { 900 } else { 300 });
    let timeout = errs.duration(
        &format!("{at}.timeout"),
        ra.timeout.as_deref(),
        default_timeout,
    );
    if timeout.is_zero() {
        errs.push(format!("{at}.timeout"), "must be longer than zero");
    }
    // A lock left to default is the action's name, refused above if it must be.
    let explicit = ra.lock.is_some();
    let lock = ra.lock.unwrap_or_else(|| {
        if rollout_step {
            STEP_LOCK.to_owned()
        } else {
            name.to_owned()
        }
    });
    if let Some(problem) = kv_segment_problem(&lock).filter(|_| explicit) {
        errs.push(format!("{at}.lock"), format!("{lock:?} {problem}"));
    }
    if errs.0.len() > before {
        return None;
    }
    kind.map(|kind| ActionSettings {
        kind,
        timeout,
        lock,
    })
}

fn watch_settings(
    at: &str,
    rw: RawWatch,
    actions: &BTreeMap<String, ActionSettings>,
    errs: &mut Errors,
) -> Option<WatchSettings> {
    let before = errs.0.len();
    let name = errs.required(&format!("{at}.name"), rw.name.as_ref());
    // Parameters a type does not take are errors, not silently ignored: a `key` on a
    // keyprefix watch is almost always a typo for `prefix`.
    let mut only = |allowed: &[&str]| {
        for (field, set) in [
            ("key", rw.key.is_some()),
            ("prefix", rw.prefix.is_some()),
            ("service", rw.service.is_some()),
            ("tag", rw.tag.is_some()),
            ("passingonly", rw.passingonly.is_some()),
            ("state", rw.state.is_some()),
            ("event", rw.event.is_some()),
            ("every", rw.every.is_some()),
            ("interval", rw.interval.is_some()),
        ] {
            if set && !allowed.contains(&field) {
                let t = rw.kind.as_deref().unwrap_or_default();
                errs.push(
                    format!("{at}.{field}"),
                    format!("does not apply to a watch of type {t:?}"),
                );
            }
        }
    };
    let kind = match rw.kind.as_deref() {
        None => {
            errs.push(
                format!("{at}.type"),
                format!("is required (one of {})", quoted(WATCH_TYPES)),
            );
            None
        }
        Some("key") => {
            only(&["key"]);
            Some(WatchKind::Key {
                key: errs.required(&format!("{at}.key"), rw.key.as_ref()),
            })
        }
        Some("keyprefix") => {
            only(&["prefix"]);
            Some(WatchKind::Keyprefix {
                prefix: errs.required(&format!("{at}.prefix"), rw.prefix.as_ref()),
            })
        }
        Some("services") => {
            only(&[]);
            Some(WatchKind::Services)
        }
        Some("nodes") => {
            only(&[]);
            Some(WatchKind::Nodes)
        }
        Some("service") => {
            only(&["service", "tag", "passingonly"]);
            Some(WatchKind::Service {
                service: errs.required(&format!("{at}.service"), rw.service.as_ref()),
                tag: rw.tag.clone().unwrap_or_default(),
                passingonly: rw.passingonly.unwrap_or(false),
            })
        }
        Some("checks") => {
            only(&["service", "state"]);
            if rw.service.is_some() && rw.state.is_some() {
                errs.push(
                    format!("{at}.state"),
                    "give either service or state, not both (as consul watch)",
                );
            }
            if let Some(s) = &rw.state {
                if !["any", "passing", "warning", "critical"].contains(&s.as_str()) {
                    errs.push(
                        format!("{at}.state"),
                        format!(
                            "unknown check state {s:?} (expected one of \"any\", \"passing\", \
                             \"warning\", \"critical\")"
                        ),
                    );
                }
            }
            Some(WatchKind::Checks {
                service: rw.service.clone(),
                state: rw.state.clone(),
            })
        }
        Some("schedule") => {
            only(&["every"]);
            let every = errs.duration(&format!("{at}.every"), rw.every.as_deref(), Duration::ZERO);
            if rw.every.is_none() {
                errs.push(
                    format!("{at}.every"),
                    "is required for type \"schedule\": e.g. \"1m\"",
                );
            } else if every < MIN_SCHEDULE {
                errs.push(
                    format!("{at}.every"),
                    "must be at least 1s: every replica runs each tick as a job",
                );
            }
            Some(WatchKind::Schedule { every })
        }
        Some("image") => {
            only(&["interval"]);
            let field = format!("{at}.interval");
            let interval = errs.duration(&field, rw.interval.as_deref(), IMAGE_INTERVAL);
            if interval < MIN_IMAGE_INTERVAL {
                errs.push(
                    field,
                    "must be at least 10s: every replica polls the cloud's image list",
                );
            }
            // The cloud it polls is built for the rollout's actions.
            let rollout = actions
                .values()
                .any(|a| matches!(a.kind, ActionKind::SpinUp | ActionKind::SpinDown));
            if !rollout {
                errs.push(
                    format!("{at}.type"),
                    "an \"image\" watch polls the rollout's cloud: it needs a spin-up or spin-down action",
                );
            }
            Some(WatchKind::Image { interval })
        }
        Some("event") => {
            only(&["event"]);
            Some(WatchKind::Event {
                event: errs.required(&format!("{at}.event"), rw.event.as_ref()),
            })
        }
        Some(other) => {
            errs.push(
                format!("{at}.type"),
                format!(
                    "unknown watch type {other:?} (expected one of {}){}",
                    quoted(WATCH_TYPES),
                    did_you_mean(other, WATCH_TYPES)
                ),
            );
            None
        }
    };
    let names = match (rw.action, rw.actions) {
        (Some(_), Some(_)) => {
            errs.push(
                format!("{at}.actions"),
                "give either action or actions, not both",
            );
            Vec::new()
        }
        (Some(a), None) => vec![a],
        (None, Some(list)) => list,
        (None, None) => {
            errs.push(
                format!("{at}.action"),
                "is required: the name of an [action.<name>] to run",
            );
            Vec::new()
        }
    };
    for a in &names {
        if !actions.contains_key(a)
            && !errs
                .0
                .iter()
                .any(|e| e.field.starts_with(&format!("action.{a}.")))
        {
            let known: Vec<&str> = actions.keys().map(String::as_str).collect();
            errs.push(
                format!("{at}.action"),
                format!(
                    "no action named {a:?} (defined: {}){}",
                    quoted(&known),
                    did_you_mean(a, &known)
                ),
            );
        }
    }
    let debounce = rw
        .debounce
        .as_deref()
        .map(|d| errs.duration(&format!("{at}.debounce"), Some(d), Duration::ZERO));
    let request = rw.request.unwrap_or(false);
    let rollout_action = names.iter().any(|a| {
        actions
            .get(a)
            .is_some_and(|a| matches!(a.kind, ActionKind::SpinUp | ActionKind::SpinDown))
    });
    if request && !rollout_action {
        errs.push(
            format!("{at}.request"),
            "asks for a rollout, so the watch needs a spin-up or spin-down action",
        );
    }
    if errs.0.len() > before {
        return None;
    }
    kind.map(|kind| WatchSettings {
        name,
        kind,
        actions: names,
        debounce,
        request,
    })
}

fn quoted(items: &[&str]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rollout.launch_attempts`: a bad image fails three launches before the rollout stops.
const DEFAULT_LAUNCH_ATTEMPTS: u32 = 3;
/// Each failed attempt leaves a dead machine behind (and an entry in the rollout record).
const MAX_LAUNCH_ATTEMPTS: u32 = 10;

fn rollout_settings(rr: RawRollout, errs: &mut Errors) -> RolloutSettings {
    let mode = match rr.mode.as_deref() {
        None | Some("manual") => RolloutMode::Manual,
        Some("auto") => RolloutMode::Auto,
        Some(other) => {
            errs.push(
                "rollout.mode",
                format!("unknown mode {other:?} (expected \"manual\" or \"auto\")"),
            );
            RolloutMode::Manual
        }
    };
    let ten_minutes = Duration::from_secs(600);
    RolloutSettings {
        mode,
        dry_run: rr.dry_run.unwrap_or(false),
        stable_timeout: errs.nonzero_duration(
            "rollout.stable_timeout",
            rr.stable_timeout.as_deref(),
            crate::DEFAULT_STABLE_TIMEOUT,
        ),
        step_timeout: errs.nonzero_duration(
            "rollout.step_timeout",
            rr.step_timeout.as_deref(),
            ten_minutes,
        ),
        retire_failed_launch: rr.retire_failed_launch.unwrap_or(false),
        launch_attempts: errs.at_most(
            "rollout.launch_attempts",
            rr.launch_attempts,
            DEFAULT_LAUNCH_ATTEMPTS,
            MAX_LAUNCH_ATTEMPTS,
        ),
        windows: rr
            .windows
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, w)| window_settings(&format!("rollout.windows[{i}]"), w, errs))
            .collect(),
        bake_time: errs.duration("rollout.bake_time", rr.bake_time.as_deref(), Duration::ZERO),
        snapshots: snapshot_settings(
            rr.snapshot_dir,
            rr.snapshots_kept,
            rr.snapshot_required,
            rr.snapshot_max_mib,
            errs,
        ),
        prometheus_gate: prometheus_gate(rr.gate_prometheus_url, rr.gate_prometheus_query, errs),
        cloudwatch_gate: cloudwatch_gate(rr.gate_cloudwatch_alarms.unwrap_or_default(), errs),
    }
}

/// The most entries `rollout.gate_cloudwatch_alarms` takes: each prefix is a request of its
/// own before every step.
pub const MAX_ALARM_PATTERNS: usize = 20;
/// CloudWatch's own limit on an alarm's name.
const MAX_ALARM_NAME: usize = 255;

/// `rollout.gate_cloudwatch_alarms`: names, and prefixes written with a trailing `*`.
fn cloudwatch_gate(entries: Vec<String>, errs: &mut Errors) -> Vec<AlarmPattern> {
    const FIELD: &str = "rollout.gate_cloudwatch_alarms";
    if entries.len() > MAX_ALARM_PATTERNS {
        errs.push(
            FIELD,
            format!(
                "lists {} alarms, over {MAX_ALARM_PATTERNS}: name a common prefix with a \
                 trailing * instead",
                entries.len()
            ),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let field = format!("{FIELD}[{i}]");
        let (stem, prefix) = match entry.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (entry.as_str(), false),
        };
        if stem.is_empty() && !prefix {
            errs.push(
                &field,
                "is empty: give an alarm's name, or a prefix ending in *",
            );
        } else if stem.contains('*') {
            errs.push(
                &field,
                "has a * before its end: CloudWatch matches names or prefixes only",
            );
        } else if stem.len() > MAX_ALARM_NAME || stem.chars().any(char::is_control) {
            errs.push(
                &field,
                format!("is not an alarm name (1 to {MAX_ALARM_NAME} printable characters)"),
            );
        } else if prefix {
            out.push(AlarmPattern::Prefix(stem.to_owned()));
        } else {
            out.push(AlarmPattern::Name(stem.to_owned()));
        }
    }
    out
}

/// The longest gate query taken: it goes into a URL.
const MAX_GATE_QUERY: usize = 4096;

/// `rollout.gate_prometheus_*`: on with a URL; the query only with one.
fn prometheus_gate(
    url: Option<String>,
    query: Option<String>,
    errs: &mut Errors,
) -> Option<PrometheusGate> {
    let Some(url) = url else {
        if query.is_some() {
            errs.push(
                "rollout.gate_prometheus_query",
                "applies only with rollout.gate_prometheus_url",
            );
        }
        return None;
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        // Not echoed: a mistyped value may hold credentials.
        errs.push(
            "rollout.gate_prometheus_url",
            "is not an http:// or https:// URL",
        );
    }
    let query = query.unwrap_or_else(|| DEFAULT_GATE_QUERY.to_owned());
    if query.trim().is_empty() {
        errs.push(
            "rollout.gate_prometheus_query",
            "is empty: give a PromQL query, or leave it out for firing alerts",
        );
    } else if query.len() > MAX_GATE_QUERY {
        errs.push(
            "rollout.gate_prometheus_query",
            format!("is {} bytes, over {MAX_GATE_QUERY}", query.len()),
        );
    }
    Some(PrometheusGate {
        url: SecretUrl::new(url.trim_end_matches('/')),
        query,
    })
}

/// `rollout.snapshot_*`: on with a directory; the other fields only with one.
fn snapshot_settings(
    dir: Option<String>,
    kept: Option<i64>,
    required: Option<bool>,
    max_mib: Option<i64>,
    errs: &mut Errors,
) -> Option<SnapshotSettings> {
    let Some(dir) = dir else {
        for (field, set) in [
            ("rollout.snapshots_kept", kept.is_some()),
            ("rollout.snapshot_required", required.is_some()),
            ("rollout.snapshot_max_mib", max_mib.is_some()),
        ] {
            if set {
                errs.push(field, "applies only with rollout.snapshot_dir");
            }
        }
        return None;
    };
    if dir.trim().is_empty() {
        errs.push(
            "rollout.snapshot_dir",
            "is empty: give a directory, or leave it out",
        );
        return None;
    }
    let dest = match dir.strip_prefix("s3://") {
        None => SnapshotDest::Dir(PathBuf::from(dir)),
        Some(rest) => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // S3's bucket naming rules: 3 to 63 of lowercase letters, digits, dots, hyphens.
            let valid = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
            if !valid {
                errs.push(
                    "rollout.snapshot_dir",
                    "s3://BUCKET/PREFIX: the bucket must be 3 to 63 lowercase letters, digits, dots or hyphens",
                );
                return None;
            }
            let prefix = match prefix.trim_matches('/') {
                "" => String::new(),
                p => format!("{p}/"),
            };
            SnapshotDest::S3 {
                bucket: bucket.to_owned(),
                prefix,
            }
        }
    };
    Some(SnapshotSettings {
        dest,
        kept: errs.positive("rollout.snapshots_kept", kept, 10),
        required: required.unwrap_or(true),
        max_mib: errs.at_most("rollout.snapshot_max_mib", max_mib, 512, 65_536),
    })
}

fn window_settings(at: &str, rw: RawWindow, errs: &mut Errors) -> Option<WindowSettings> {
    let before = errs.0.len();
    let mut days = Vec::new();
    match rw.days {
        Some(list) if !list.is_empty() => {
            for d in list {
                let known = WEEKDAYS
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(d.trim()));
                match known {
                    Some((_, day)) if !days.contains(day) => days.push(*day),
                    Some(_) => {}
                    None => errs.push(
                        format!("{at}.days"),
                        format!(
                            "unknown day {d:?} (expected {})",
                            quoted(&WEEKDAYS.iter().map(|(n, _)| *n).collect::<Vec<_>>())
                        ),
                    ),
                }
            }
        }
        _ => errs.push(
            format!("{at}.days"),
            "is required: the days the window opens, e.g. [\"mon\", \"tue\"]",
        ),
    }
    let mut clock = |field: &str, value: Option<&String>| {
        let field = format!("{at}.{field}");
        let Some(v) = value else {
            errs.push(field, "is required: a local time like \"02:00\"");
            return None;
        };
        let parsed = v.trim().split_once(':').and_then(|(h, m)| {
            let digits = |t: &str, n: std::ops::RangeInclusive<usize>| {
                n.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit())
            };
            if !digits(h, 1..=2) || !digits(m, 2..=2) {
                return None;
            }
            jiff::civil::Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
        });
        if parsed.is_none() {
            errs.push(
                field,
                format!("{v:?} is not a time like \"02:00\" (HH:MM, 24-hour)"),
            );
        }
        parsed
    };
    let start = clock("start", rw.start.as_ref());
    let end = clock("end", rw.end.as_ref());
    if let (Some(s), Some(e)) = (start, end) {
        if s == e {
            errs.push(
                format!("{at}.end"),
                "equals start: the window would be empty (an end before start runs past midnight)",
            );
        }
    }
    let time_zone = errs.required(&format!("{at}.time_zone"), rw.time_zone.as_ref());
    if !time_zone.is_empty() && jiff::tz::TimeZone::get(&time_zone).is_err() {
        errs.push(
            format!("{at}.time_zone"),
            format!("unknown time zone {time_zone:?} (an IANA name like \"Europe/Berlin\")"),
        );
    }
    if errs.0.len() > before {
        return None;
    }
    Some(WindowSettings {
        days,
        start: start?,
        end: end?,
        time_zone,
    })
}

/// A rollout waiting for a maintenance window needs a `schedule` watch on its actions to look
/// again once the window opens: no other trigger comes when the clock passes a time.
fn windows_need_a_schedule(
    watches: &[WatchSettings],
    actions: &BTreeMap<String, ActionSettings>,
    rollout: &RolloutSettings,
    errs: &mut Errors,
) {
    let is_step = |name: &String| {
        actions
            .get(name)
            .is_some_and(|a| matches!(a.kind, ActionKind::SpinUp | ActionKind::SpinDown))
    };
    let ticks = watches
        .iter()
        .any(|w| matches!(w.kind, WatchKind::Schedule { .. }) && w.actions.iter().any(is_step));
    if !rollout.windows.is_empty() && !ticks {
        errs.push(
            "rollout.windows",
            "a rollout waiting for a window resumes only when triggered: add a [[watch]] of type \"schedule\" for the spin-up/spin-down actions",
        );
    }
}

fn notify_settings(
    rn: RawNotify,
    env: &HashMap<String, String>,
    errs: &mut Errors,
) -> NotifySettings {
    if let Some(u) = &rn.url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            // Not echoed: a mistyped value may be a secret.
            errs.push("notify.url", "is not an http:// or https:// URL");
        }
    }
    NotifySettings {
        url: rn.url.map(SecretUrl::new),
        token: env
            .get(NOTIFY_TOKEN_ENV)
            .filter(|t| !t.is_empty())
            .map(Secret::new),
    }
}

/// " (did you mean \"x\"?)" when `name` is close to one of `known`, else nothing.
fn did_you_mean(name: &str, known: &[&str]) -> String {
    crate::suggest::did_you_mean(name, known)
        .map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default()
}
