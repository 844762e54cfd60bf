//! `rehydrator demo`: a simulated (or real, with `--consul-bin`) cluster rolled by replica
//! processes, live, with a verdict.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DemoArgs {
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
    #[arg(long, default_value = "0s", value_parser = super::parse_bounded_duration)]
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
    /// An instance refresh of a simulated Auto Scaling group of the servers, without and then
    /// with the lifecycle guard (`--replicas` guard replicas), compared in one summary and one
    /// timeline picture. Try `--servers 5`.
    #[arg(long, conflicts_with_all = ["chaos", "fail_launch", "consul_bin", "linger", "fire_after"])]
    asg: bool,
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
pub fn run(args: DemoArgs) -> ExitCode {
    use clap::CommandFactory;
    use std::io::IsTerminal;
    if args.chaos && args.replicas < 2 {
        crate::Cli::command()
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
            _ => crate::Cli::command()
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
    if args.asg {
        return run_asg(&options);
    }
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

/// `rehydrator demo --asg`: exit 0 only if the guarded refresh kept every invariant; 1 naming
/// what broke; 130 on Ctrl-C or SIGTERM (the replicas and the simulator are stopped first).
fn run_asg(options: &rehydrator::demo::Options) -> ExitCode {
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        tokio::select! {
            r = rehydrator::demo::asg::run(options) => Some(r),
            () = stop_signal() => None,
        }
    });
    match result {
        Some(Ok(outcome)) if outcome.passed() => ExitCode::SUCCESS,
        Some(Ok(outcome)) => {
            for v in &outcome.violations {
                eprintln!("error: the guarded refresh broke an invariant: {v}");
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
