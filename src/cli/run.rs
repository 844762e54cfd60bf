//! `rehydrator run`: builds the backends from the settings, starts the actor tree, and stops
//! it in order on SIGTERM or Ctrl-C within ECS's 30-second stop timeout.
//!
//! Panics: actix drops a panicking actor silently (its Supervisor dies with it), which would
//! leave a replica running without, say, its Dispatcher. So a panic anywhere is logged and
//! ends the process with status 70; ECS restarts the task, and the session's TTL frees its
//! locks for the other replicas meanwhile.

use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use actix::Actor;
use anyhow::Context;
use rehydrator::cloud::{Ec2Cloud, EcsCloud, ProcessCloud, SimCloud};
use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::{Client, ConsulConfig, WatchPolicy};
use rehydrator::status::endpoint::{self, reporter::Reporter};
use rehydrator::status::Scope;
use rehydrator::webhook::AwcWebhook;
use rehydrator_actors::ports::CloudPort;
use rehydrator_actors::tree::{self, Ports};
use rehydrator_config::{ActionKind, CloudSettings, Settings};
use tracing::{error, info, warn};

/// Exit status after a panic (EX_SOFTWARE).
pub const PANIC_EXIT: i32 = 70;

/// What the tree's orderly stop may take before the process exits anyway; under ECS's 30s.
const STOP_BUDGET: Duration = Duration::from_secs(20);

#[derive(clap::Args)]
pub struct RunArgs {
    /// The TOML configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// This replica's name in sessions, lock values and receipts. Default: host name and PID.
    #[arg(long, env = "REHYDRATOR_REPLICA")]
    replica: Option<String>,
    /// Stop as on SIGTERM when stdin reaches end of file: the demo holds the other end of
    /// a pipe, so its replicas stop even when the demo itself is SIGKILLed.
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// Loads the configuration (exit 2 if it does not), then runs until stopped.
pub fn main(args: RunArgs) -> ExitCode {
    let settings = match rehydrator_config::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    super::report(run(settings, args.replica, args.stop_on_stdin_eof))
}

pub fn run(
    settings: Settings,
    replica: Option<String>,
    stop_on_stdin_eof: bool,
) -> anyhow::Result<()> {
    install_panic_policy();
    let replica = replica.unwrap_or_else(default_replica);
    let consul = consul_config(&settings)?;
    let system = actix_rt::System::new();
    system.block_on(async move {
        // Taken first: a port in use fails the start before the tree takes a session.
        let listener = settings.status.listen.map(endpoint::bind).transpose()?;
        let access = match listener {
            Some(_) => endpoint::access::Access::from_settings(&settings.status)?,
            None => endpoint::access::Access::open(),
        };
        let client = Client::new(consul).context("building the Consul client")?;
        let cloud = cloud(&settings).await?;
        let ports = Ports {
            consul: Rc::new(ConsulAdapter::new(client.clone(), WatchPolicy::default())),
            webhook: Rc::new(AwcWebhook::default()),
            cloud: cloud.clone(),
            gates: rehydrator::gate::from_settings(&settings, None)
                .await
                .context("rollout.gate_cloudwatch_alarms")?,
            objects: rehydrator::cloud::s3::S3Store::for_snapshots(&settings, None)
                .await
                .context("rollout.snapshot_dir")?,
        };
        info!(
            %replica,
            cluster = %settings.cluster.name,
            watches = settings.watches.len(),
            actions = settings.actions.len(),
            "Starting.",
        );
        let tree = tree::start(&settings, &replica, ports);
        let endpoint = match listener {
            Some(listener) => Some(serve_status(
                listener, access, client, cloud, &settings, &tree,
            )?),
            None => {
                info!("Status endpoint off (status.listen is empty).");
                None
            }
        };
        #[cfg(feature = "fault-injection")]
        inject_faults();
        wait_for_stop(stop_on_stdin_eof).await?;
        info!("Stopping: watchers, running jobs, then the session.");
        if tokio::time::timeout(STOP_BUDGET, tree.shutdown())
            .await
            .is_err()
        {
            warn!(budget = ?STOP_BUDGET, "Orderly stop took too long; exiting anyway.");
        }
        // Last, so probes see the replica go unready while it stops.
        if let Some(endpoint) = endpoint {
            endpoint.stop().await;
        }
        info!("Stopped.");
        Ok(())
    })
}

/// Serves the status endpoint on `listener` for the running `tree`.
fn serve_status(
    listener: std::net::TcpListener,
    access: endpoint::access::Access,
    client: Client,
    cloud: Option<Rc<dyn CloudPort>>,
    settings: &Settings,
    tree: &tree::Tree,
) -> anyhow::Result<endpoint::RunningEndpoint> {
    let reporter = Reporter::new(
        client,
        cloud,
        Scope::from_settings(settings),
        tree.lock_manager.clone(),
        tree.metrics.clone(),
    )
    .start();
    let protected = access.is_protected();
    let running = endpoint::serve(listener, reporter, access)?;
    let addr = running.addr();
    info!(%addr, token = protected, "Status endpoint serving on http://{addr}");
    Ok(running)
}

/// Whether the configuration runs a rollout (a spin-up or spin-down action) or the lifecycle
/// guard, and so a cloud.
pub(crate) fn has_rollout(settings: &Settings) -> bool {
    settings.actions.values().any(|a| {
        matches!(
            a.kind,
            ActionKind::SpinUp | ActionKind::SpinDown | ActionKind::LifecycleGuard
        )
    })
}

/// The cloud the rollout's actions launch and retire through, when any is configured.
pub(crate) async fn cloud(settings: &Settings) -> anyhow::Result<Option<Rc<dyn CloudPort>>> {
    if !has_rollout(settings) {
        return Ok(None);
    }
    match &settings.cloud {
        // The simulator serves its cloud beside Consul's API: the same address by default.
        CloudSettings::Sim { url } => {
            let base = url
                .clone()
                .unwrap_or_else(|| settings.consul.address.clone());
            let cloud = SimCloud::new(&base).with_context(|| format!("cloud.url {base:?}"))?;
            Ok(Some(Rc::new(cloud)))
        }
        // Credentials from the SDK's default chain: the task role on ECS, the environment here.
        CloudSettings::Ec2(aws) => {
            let cloud = Ec2Cloud::load(aws, &settings.cluster.name, None)
                .await
                .context("cloud (ec2)")?;
            info!(cloud = ?cloud, "EC2 cloud ready.");
            Ok(Some(Rc::new(cloud)))
        }
        CloudSettings::Ecs(aws) => {
            let cloud = EcsCloud::load(aws, &settings.cluster.name, None)
                .await
                .context("cloud (ecs)")?;
            info!(cloud = ?cloud, "ECS cloud ready.");
            Ok(Some(Rc::new(cloud)))
        }
        CloudSettings::Process(p) => {
            // `consul leave` of a retired agent needs the replica's token once ACLs are on.
            let token = consul_config(settings)?.token;
            let cloud = ProcessCloud::from_settings(p)
                .context("cloud (process)")?
                .with_acl_token(token);
            info!(cloud = ?cloud, "Process cloud ready.");
            Ok(Some(Rc::new(cloud)))
        }
    }
}

pub(crate) fn consul_config(settings: &Settings) -> anyhow::Result<ConsulConfig> {
    ConsulConfig::from_settings(&settings.consul).context("[consul]")
}

fn default_replica() -> String {
    let host = hostname().unwrap_or_else(|| "replica".into());
    format!("{host}-{}", std::process::id())
}

/// This machine's name: `HOSTNAME` (set in containers), else /etc/hostname.
pub(crate) fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
}

async fn wait_for_stop(stop_on_stdin_eof: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let stdin_closed = async {
        if stop_on_stdin_eof {
            stdin_eof().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received."),
        r = tokio::signal::ctrl_c() => {
            r.context("listening for Ctrl-C")?;
            info!("Interrupt received.");
        }
        () = stdin_closed => info!("Stdin closed: the process that started this replica is gone."),
    }
    Ok(())
}

/// Resolves when stdin reaches end of file (or fails). A plain thread rather than tokio's stdin,
/// whose blocking read would hold up the runtime's shutdown until the pipe closed.
async fn stdin_eof() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    // A dropped sender (the thread could not start) also ends the wait: stop rather than run
    // on without the guard the caller asked for.
    let _ = rx.await;
}

fn install_panic_policy() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        error!(panic = %info, "Panicked; exiting so the container restarts.");
        default(info);
        std::process::exit(PANIC_EXIT);
    }));
}

/// Test-only fault injection (the `fault-injection` feature):
/// `REHYDRATOR_FAULT=panic-after:<seconds>` panics on the actor system's thread, as a panicking
/// handler would. Used by the panic-policy test.
#[cfg(feature = "fault-injection")]
fn inject_faults() {
    let Ok(fault) = std::env::var("REHYDRATOR_FAULT") else {
        return;
    };
    if let Some(secs) = fault
        .strip_prefix("panic-after:")
        .and_then(|s| s.parse::<f64>().ok())
    {
        warn!(%fault, "Fault injection armed.");
        actix_rt::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            panic!("injected fault: {fault}");
        });
    }
}
