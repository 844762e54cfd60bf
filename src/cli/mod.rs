//! One file per subcommand: `run` (the actor tree), `sim`, `demo`, `check-config`,
//! `process-cluster`, `healthcheck`, and the operator commands.
//!
//! The operator commands: `fire`, `status`, `pause`, `resume`, `abort`, `plan`, `repair`. Each reads the same
//! configuration as `run` (`--config FILE`), or without one the consul CLI's environment
//! (`CONSUL_HTTP_ADDR`, default `http://127.0.0.1:8500`, `CONSUL_HTTP_TOKEN`, ...) and
//! `--cluster` (for `status`, `pause` and `resume`: else the one cluster Consul holds records
//! of, see `resolve_named`), and talks to Consul (and for `status`/`plan` the cloud)
//! once, then exits.
//!
//! Exit status: 0 done; 2 bad input (a config file that does not load, a bad flag or
//! environment variable, `plan` without a rollout configuration), as `check-config` does;
//! 1 a runtime failure (Consul or the cloud unreachable, refusing, or not answering within
//! `--timeout`, default 5s: a stopped agent accepts connections and never answers).

pub mod abort;
pub mod check_config;
pub mod demo;
pub mod doctor;
pub mod fire;
pub mod healthcheck;
pub mod pause;
pub mod plan;
pub mod process_cluster;
pub mod repair;
pub mod restore_group;
pub mod run;
pub mod sim;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context as _;
use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::{Client, ConsulConfig, WatchPolicy};
use rehydrator::status::{printable, Scope};
use rehydrator::webhook::AwcWebhook;
use rehydrator_actors::notify::Notifier;
use rehydrator_actors::ports::CloudPort;
use rehydrator_actors::receipt::Keys;
use rehydrator_actors::rollout::RolloutEnv;
use rehydrator_config::Settings;

/// The cluster name without `--config` or `--cluster`.
pub const DEFAULT_CLUSTER: &str = "default";

/// Where a command finds Consul and the cluster: flags every command shares.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The TOML configuration `run` uses: cluster name, [consul], [cloud]. Without it, Consul
    /// comes from the consul CLI's environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The cluster (the KV prefix rehydrator/<cluster>/). Default: `cluster.name` from
    /// --config, else the one cluster Consul holds (status, pause, resume), else "default".
    #[arg(long)]
    pub cluster: Option<String>,
    /// How long the whole command may wait for Consul (and the cloud) before it gives up with
    /// exit status 1, from 1s to 10m.
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// The longest `--timeout`: a command is a question, not a wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d < Duration::from_secs(1) || d > MAX_TIMEOUT {
        return Err(format!("{text:?}: must be from 1s to 10m"));
    }
    Ok(d)
}

/// A duration flag of at most a day: longer is a typo, and would overflow the deadline
/// computed from it.
pub fn parse_bounded_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d > Duration::from_secs(86_400) {
        return Err(format!("{text:?}: must be at most 24h"));
    }
    Ok(d)
}

/// The input was wrong (exit 2), as opposed to the world failing (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// What a command works with once its target is resolved.
pub struct Resolved {
    /// The loaded configuration, when `--config` was given.
    pub settings: Option<Settings>,
    /// `--config`'s path, `-` without one (for messages).
    pub config_path: PathBuf,
    pub cluster: String,
    /// Whether `--cluster` or `--config` named the cluster (else it is `DEFAULT_CLUSTER`
    /// until `named_cluster` looks in Consul).
    pub named: bool,
    pub consul: ConsulConfig,
}

impl Resolved {
    pub fn keys(&self) -> Keys {
        Keys::new(&self.cluster)
    }

    /// What `status` reports on.
    pub fn scope(&self) -> Scope {
        let mut scope = match &self.settings {
            Some(s) => Scope::from_settings(s),
            None => Scope::new(self.cluster.clone()),
        };
        scope.cluster = self.cluster.clone();
        scope
    }

    /// The Consul client; must run inside an actix System.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(self.consul.clone())
            .with_context(|| format!("building the Consul client for {}", self.consul.address))
    }

    /// What a SpinUp/SpinDown run works with, for `command` (`plan`, `repair`, `abort`), which
    /// needs `--config` with a rollout: bad input otherwise. The commands read and decide; they
    /// take no step, so no notifications, no gates to ask and no snapshot store to build.
    pub async fn rollout_env(&self, command: &str) -> anyhow::Result<RolloutEnv> {
        let Some(settings) = self.settings.as_ref() else {
            return Err(BadInput(format!(
                "{command}: needs --config FILE: the rollout's [cloud], [cluster] \
                 desired_servers and [rollout] settings"
            ))
            .into());
        };
        let Some(cloud) = self.cloud().await? else {
            return Err(BadInput(format!(
                "{}: action: no spin-up or spin-down action is configured, so there is no \
                 rollout (and no [cloud]) to {command}",
                self.config_path.display()
            ))
            .into());
        };
        Ok(RolloutEnv {
            consul: Rc::new(ConsulAdapter::new(self.client()?, WatchPolicy::default())),
            cloud,
            keys: self.keys(),
            config: rehydrator_actors::tree::rollout_config(settings),
            notifier: Notifier::off(Rc::new(AwcWebhook::default())),
            gates: Vec::new(),
            objects: None,
        })
    }

    /// The cloud `run` would use for this configuration: only a configuration with a rollout
    /// (spin-up/spin-down actions) has one.
    pub async fn cloud(&self) -> anyhow::Result<Option<Rc<dyn CloudPort>>> {
        match &self.settings {
            Some(s) => run::cloud(s).await,
            None => Ok(None),
        }
    }
}

/// Loads `--config` (or reads the environment) and settles the cluster name.
pub fn resolve(target: &Target) -> Result<Resolved, BadInput> {
    let (settings, consul) = match &target.config {
        Some(path) => {
            let settings = rehydrator_config::load(path).map_err(|e| {
                BadInput(format!(
                    "{e}\n{} error(s); the configuration was not accepted.",
                    e.errors.len()
                ))
            })?;
            let consul = run::consul_config(&settings)
                .map_err(|e| BadInput(format!("{}: {e:#}", path.display())))?;
            (Some(settings), consul)
        }
        None => {
            let consul = ConsulConfig::from_env()
                .map_err(|e| BadInput(format!("the Consul environment: {e}")))?;
            (None, consul)
        }
    };
    let mut consul = consul;
    // No single request may outlast the whole command.
    consul.timeout = consul.timeout.min(target.timeout);
    consul.connect_timeout = consul.connect_timeout.min(target.timeout);
    let named = target
        .cluster
        .clone()
        .or_else(|| settings.as_ref().map(|s| s.cluster.name.clone()));
    let cluster = named.clone().unwrap_or_else(|| DEFAULT_CLUSTER.into());
    if cluster.is_empty() || cluster.contains('/') {
        return Err(BadInput(format!(
            "--cluster: {cluster:?} cannot name a KV prefix (empty or with '/')"
        )));
    }
    Ok(Resolved {
        config_path: target.config.clone().unwrap_or_else(|| PathBuf::from("-")),
        settings,
        cluster,
        named: named.is_some(),
        consul,
    })
}

/// `resolve`, then, when neither `--cluster` nor `--config` named the cluster, the one
/// cluster Consul holds records of (`rehydrator/<cluster>/`). Several, or none, is bad input
/// naming them: guessing `default` showed an operator "rollout: none recorded" mid-rollout.
pub async fn resolve_named(target: &Target) -> anyhow::Result<Resolved> {
    let mut resolved = resolve(target)?;
    if resolved.named {
        return Ok(resolved);
    }
    let client = resolved.client()?;
    let keys = client
        .kv_keys(CLUSTERS_PREFIX, Some("/"), &Default::default())
        .await
        .with_context(|| format!("listing the clusters under {CLUSTERS_PREFIX}"))?
        .value;
    let mut clusters: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(CLUSTERS_PREFIX)?.strip_suffix('/'))
        .filter(|c| {
            !c.is_empty()
                && c.len() <= MAX_CLUSTER_NAME
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        })
        .map(str::to_owned)
        .collect();
    clusters.sort();
    clusters.dedup();
    match clusters.as_slice() {
        [one] => {
            resolved.cluster = one.clone();
            resolved.named = true;
            Ok(resolved)
        }
        [] => Err(BadInput(format!(
            "--cluster: Consul at {} holds no rehydrator cluster (nothing under \
             {CLUSTERS_PREFIX}); name it with --cluster NAME or --config FILE",
            resolved.consul.address
        ))
        .into()),
        many => {
            let shown: Vec<&str> = many.iter().take(20).map(String::as_str).collect();
            Err(BadInput(format!(
                "--cluster: Consul holds {} rehydrator clusters ({}{}); name one with \
                 --cluster NAME or --config FILE",
                many.len(),
                shown.join(", "),
                if many.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            ))
            .into())
        }
    }
}

/// Where every cluster's records live.
const CLUSTERS_PREFIX: &str = "rehydrator/";
/// The longest cluster name taken from Consul's key list (an answer, not to be trusted).
const MAX_CLUSTER_NAME: usize = 128;

/// Runs a command's body on an actix System (awc needs one), bounded by `target`'s
/// `--timeout`, and turns its result into the exit status: 2 for bad input, 1 for anything else.
pub fn exit<F>(target: &Target, body: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let limit = target.timeout;
    let bounded = async move {
        match tokio::time::timeout(limit, body).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "{} not answering: no answer within {} (--timeout)",
                who_answers(target),
                humantime::format_duration(limit)
            )),
        }
    };
    let system = actix_rt::System::new();
    match system.block_on(bounded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<BadInput>() {
            Some(bad) => {
                eprintln!("{}", printable(&bad.to_string()));
                ExitCode::from(2)
            }
            None => {
                // Errors quote Consul's and the cloud's answers: shown, never obeyed.
                eprintln!("error: {}", printable(&format!("{e:#}")));
                ExitCode::FAILURE
            }
        },
    }
}

/// "Consul at <address> is" (and the cloud, when the command has one), for a command that ran
/// out of time. The address never carries credentials: `ConsulConfig` keeps the token apart.
fn who_answers(target: &Target) -> String {
    match resolve(target) {
        Ok(r) if r.settings.as_ref().is_some_and(run::has_rollout) => {
            format!("Consul at {} or the cloud is", r.consul.address)
        }
        Ok(r) => format!("Consul at {} is", r.consul.address),
        Err(_) => "Consul is".into(),
    }
}

/// `who@host` for the pause key: the user and the machine that paused.
pub fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = run::hostname().unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// Exit 0, or 1 printing the error and its causes.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
