//! The `rehydrator` command line: the subcommands, each in its own file under `cli/`, and the
//! logging every one of them starts with.

use std::process::ExitCode;

mod cli;

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
    Sim(cli::sim::SimArgs),
    /// Roll a simulated 3-server cluster onto a new image with three replicas, live; with
    /// --chaos, SIGKILL the step lock's holder mid-step. Exits 0 only if every invariant held.
    Demo(cli::demo::DemoArgs),
    /// Run the actor tree: watch Consul as configured and run each action once across replicas.
    Run(cli::run::RunArgs),
    /// Start the process cloud's first servers and its client agent (or --stop them all): a
    /// real Consul cluster on this machine for `run` to roll.
    ProcessCluster(cli::process_cluster::ProcessClusterArgs),
    /// Validate a configuration file and print the effective configuration (secrets masked).
    CheckConfig(cli::check_config::CheckConfigArgs),
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
    /// Put the servers' Auto Scaling group back as a stopped (or paused) rollout's record on it
    /// says: processes resumed, MaxSize restored, with --template the old launch template version.
    RestoreGroup(cli::restore_group::RestoreGroupArgs),
    /// Pre-flight: what would make a rollout or the lifecycle guard unsafe or stuck (today the
    /// servers' Auto Scaling group), each with its fix; exit 1 on any failed check.
    Doctor(cli::doctor::DoctorArgs),
    /// Exit 0 if the status endpoint answers 200 in time, else 1: the container's health check.
    Healthcheck(cli::healthcheck::HealthcheckArgs),
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
        | Command::Doctor(_)
        | Command::RestoreGroup(_)
        | Command::Repair(_) => "off",
        _ => "info",
    });
    match cli.command {
        Command::Sim(args) => cli::report(cli::sim::run(args)),
        Command::Demo(args) => cli::demo::run(args),
        Command::Run(args) => cli::run::main(args),
        Command::CheckConfig(args) => cli::check_config::run(args),
        Command::ProcessCluster(args) => cli::process_cluster::run(args),
        Command::Healthcheck(args) => cli::healthcheck::run(args),
        Command::Fire(args) => cli::exit(&args.target.clone(), cli::fire::run(args)),
        Command::Status(args) => cli::exit(&args.target.clone(), cli::status::run(args)),
        Command::Pause(args) => cli::exit(&args.target.clone(), cli::pause::pause(args)),
        Command::Resume(args) => cli::exit(&args.target.clone(), cli::pause::resume(args)),
        Command::Plan(args) => cli::exit(&args.target.clone(), cli::plan::run(args)),
        Command::Repair(args) => cli::exit(&args.target.clone(), cli::repair::run(args)),
        Command::Doctor(args) => cli::exit(&args.target.clone(), cli::doctor::run(args)),
        Command::RestoreGroup(args) => {
            cli::exit(&args.target.clone(), cli::restore_group::run(args))
        }
    }
}
