//! The `rehydrator` command line: `sim`, `check-config`, `demo`; `run` starts the actor tree;
//! the operator commands `fire`, `status`, `pause`, `resume` and `plan` live in `cli/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod cli;
mod process_cluster;
mod run;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rehydrator",
    version,
    about = "Rolls a Consul server cluster onto a new machine image without losing quorum"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a simulated Consul datacenter (Consul's HTTP API plus a /sim control API).
    Sim(SimArgs),
    /// Roll a simulated 3-server cluster onto a new image with three replicas, live; with
    /// --chaos, SIGKILL the step lock's holder mid-step. Exits 0 only if every invariant held.
    Demo(DemoArgs),
    /// Run the actor tree: watch Consul as configured and run each action once across replicas.
    Run {
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
    },
    /// Start the process cloud's first servers and its client agent (or --stop them all): a
    /// real Consul cluster on this machine for `run` to roll.
    ProcessCluster(process_cluster::ProcessClusterArgs),
    /// Validate a configuration file and print the effective configuration (secrets masked).
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Fire a Consul user event (default consul-rehydrate: ask for a rollout); prints its ID.
    Fire(cli::fire::FireArgs),
    /// Show the servers, the rollout and why it waits, lock holders, receipts, pause state.
    Status(cli::status::StatusArgs),
    /// Set the pause key: the rollout takes no new step until `resume`.
    Pause(cli::pause::PauseArgs),
    /// Delete the pause key.
    Resume(cli::pause::ResumeArgs),
    /// Dry run: what the rollout's next step would be now, and why. Changes nothing.
    Plan(cli::plan::PlanArgs),
    /// Rebuild the rollout record from the cluster when it does not decode, or is gone while
    /// the cluster is over its size; the replicas carry on from it.
    Repair(cli::repair::RepairArgs),
    /// Exit 0 if the status endpoint answers 200 in time, else 1: the container's health check.
    Healthcheck {
        /// The endpoint to GET (plain http).
        #[arg(long, default_value = rehydrator::healthcheck::DEFAULT_URL)]
        url: String,
        /// The longest the whole check may take (under the 5 s Docker and ECS allow a check).
        #[arg(long, default_value = "3s", value_parser = cli::parse_bounded_duration)]
        timeout: Duration,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    /// Address to serve Consul's HTTP API on.
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: SocketAddr,
    /// Number of server nodes at start (all voters).
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Datacenter name.
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    /// Image label of the initial servers.
    #[arg(long, default_value = "image-a")]
    image: String,
    /// Divide every simulated duration by this (1 = Consul's real timing).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    time_scale: f64,
    /// Autopilot server stabilization time, in seconds.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    stabilization: f64,
    /// Answer as this Consul version where the project branches on it (e.g. 1.8.7: no
    /// transfer-leader, no autopilot/state).
    #[arg(long, default_value = rehydrator_sim::CONSUL_VERSION)]
    consul_version: String,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Consul servers in the simulated cluster (all replaced).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    servers: u16,
    /// Orchestrator replicas (`rehydrator run` processes).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    replicas: u16,
    /// SIGKILL the replica holding the step lock at a random point of a step.
    #[arg(long)]
    chaos: bool,
    /// Fail the first new server's machine while it boots (a bad instance): the rollout
    /// records the failed launch and launches again with a new token.
    #[arg(long)]
    fail_launch: bool,
    /// Seed for the chaos kill's moment (default: drawn at random and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the timeline picture (SVG).
    #[arg(long, default_value = "rehydrator-demo.svg")]
    timeline: PathBuf,
    /// Wait this long after the replicas are ready before firing the rollout (time to open a
    /// dashboard), e.g. `10s`.
    #[arg(long, default_value = "0s", value_parser = cli::parse_bounded_duration)]
    fire_after: std::time::Duration,
    /// After the rollout, keep the simulator and the replicas (and their dashboards) running
    /// until Ctrl-C or SIGTERM.
    #[arg(long)]
    linger: bool,
    /// Run on real Consul agents from this consul binary instead of the simulator (the
    /// process backend: servers and a client agent on loopback); without a path, the one
    /// CONSUL_BIN names.
    #[arg(long, value_name = "PATH", conflicts_with = "fail_launch")]
    consul_bin: Option<Option<PathBuf>>,
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var("REHYDRATOR_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // JSON logs are for a container's log driver, which reads stdout (one document a line);
    // human logs stay on stderr, off the commands' output.
    if json {
        builder.json().with_writer(std::io::stdout).init();
    } else {
        builder.with_writer(std::io::stderr).init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's live display owns the terminal: only warnings may interrupt it.
    init_tracing(match cli.command {
        // The simulator's own warnings (a lock refused during lock-delay) are the demo working.
        Command::Demo(_) => "warn,rehydrator_sim=error",
        // The operator commands print their answer and any error themselves; RUST_LOG still
        // turns logs on.
        Command::Fire(_)
        | Command::Status(_)
        | Command::Pause(_)
        | Command::Resume(_)
        | Command::Plan(_)
        | Command::Repair(_) => "off",
        _ => "info",
    });
    let result = match cli.command {
        Command::Sim(args) => run_sim(args),
        Command::Demo(args) => return run_demo(args),
        Command::CheckConfig { file } => return check_config(&file),
        Command::ProcessCluster(args) => return process_cluster::run(args),
        Command::Fire(args) => return cli::exit(&args.target.clone(), cli::fire::run(args)),
        Command::Status(args) => return cli::exit(&args.target.clone(), cli::status::run(args)),
        Command::Pause(args) => return cli::exit(&args.target.clone(), cli::pause::pause(args)),
        Command::Resume(args) => return cli::exit(&args.target.clone(), cli::pause::resume(args)),
        Command::Plan(args) => return cli::exit(&args.target.clone(), cli::plan::run(args)),
        Command::Repair(args) => return cli::exit(&args.target.clone(), cli::repair::run(args)),
        Command::Healthcheck { url, timeout } => {
            return match rehydrator::healthcheck::check(&url, timeout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            replica,
            stop_on_stdin_eof,
        } => {
            let settings = match rehydrator_config::load(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            run::run(settings, replica, stop_on_stdin_eof)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the effective configuration, or every error in it; exit 2 when invalid.
fn check_config(file: &std::path::Path) -> ExitCode {
    match rehydrator_config::load(file) {
        Ok(settings) => {
            print!("{}", settings.to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{} error(s); the configuration was not accepted.",
                e.errors.len()
            );
            ExitCode::from(2)
        }
    }
}

fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    if args.servers == 0 {
        anyhow::bail!("--servers: a datacenter needs at least one server");
    }
    if !(args.time_scale > 0.0 && args.time_scale.is_finite()) {
        anyhow::bail!(
            "--time-scale: must be a positive number, got {}",
            args.time_scale
        );
    }
    // A negative or absurd number is refused by what it means, not by how clap reads a
    // leading '-'.
    if !(0.0..=86_400.0).contains(&args.stabilization) {
        anyhow::bail!(
            "--stabilization: must be a number of seconds from 0 to 86400, got {}",
            args.stabilization
        );
    }
    let stabilization = Duration::from_secs_f64(args.stabilization);
    if rehydrator_sim::version_parts(&args.consul_version).is_none() {
        anyhow::bail!(
            "--consul-version: {:?} is not a version like 1.8.7",
            args.consul_version
        );
    }
    let config = rehydrator_sim::SimConfig {
        consul_version: args.consul_version,
        datacenter: args.datacenter,
        servers: args.servers,
        image: args.image,
        time_scale: args.time_scale,
        stabilization,
        ..Default::default()
    };
    let system = actix_rt::System::new();
    system.block_on(async move {
        let running = rehydrator_sim::start(args.listen, config)
            .with_context(|| format!("binding the simulator to {}", args.listen))?;
        println!("Consul simulator serving on {}", running.url());
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        running.stop().await;
        Ok(())
    })
}

/// Ctrl-C (SIGINT) or SIGTERM, whichever comes first. Both are caught from this call on, so
/// one arriving while the demo starts its replicas still stops them; must run in the runtime.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// `rehydrator demo`: exit 0 only if every invariant held; 1 naming the first broken one (or
/// the demo's own failure); 2 for bad flags; 130 on Ctrl-C or SIGTERM during the rollout (the
/// replicas are killed first). While `--linger`ing, either ends the demo with its verdict.
fn run_demo(args: DemoArgs) -> ExitCode {
    use clap::CommandFactory;
    use std::io::IsTerminal;
    if args.chaos && args.replicas < 2 {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--chaos needs at least 2 --replicas: one to kill, one to take over",
            )
            .exit();
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: finding this binary to start the replicas from: {e}");
            return ExitCode::FAILURE;
        }
    };
    let consul_bin = match args.consul_bin {
        Some(None) => match std::env::var_os("CONSUL_BIN") {
            Some(bin) if !bin.is_empty() => Some(PathBuf::from(bin)),
            _ => Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--consul-bin without a path needs CONSUL_BIN set to a consul binary",
                )
                .exit(),
        },
        Some(Some(path)) => Some(path),
        None => None,
    };
    let chaos = args.chaos.then(|| args.seed.unwrap_or_else(rand::random));
    let options = rehydrator::demo::Options {
        servers: usize::from(args.servers),
        replicas: usize::from(args.replicas),
        chaos,
        fail_launch: args.fail_launch,
        timeline: args.timeline,
        exe,
        tty: std::io::stdout().is_terminal(),
        fire_after: args.fire_after,
        linger: args.linger,
        consul_bin,
    };
    let system = actix_rt::System::new();
    // On Ctrl-C or SIGTERM the demo kills and reaps its replicas and stops the simulator;
    // during the rollout that is an interruption, while lingering the verdict stands.
    let result = system.block_on(async move {
        match rehydrator::demo::run(options, stop_signal()).await {
            Err(rehydrator::demo::DemoError::Interrupted) => None,
            r => Some(r),
        }
    });
    match result {
        Some(Ok(outcome)) if outcome.passed() => ExitCode::SUCCESS,
        Some(Ok(outcome)) => {
            for v in &outcome.summary.violations {
                eprintln!("error: invariant broken ({}): {v}", v.kind());
            }
            ExitCode::FAILURE
        }
        Some(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("interrupted: the replicas and the simulator were stopped");
            ExitCode::from(130)
        }
    }
}
