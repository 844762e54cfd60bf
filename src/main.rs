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
    /// Abort the rollout: no more launches, new servers that do not vote yet retired, then it
    /// stops; with --to-previous, roll back to the image the other servers run.
    Abort(cli::abort::AbortArgs),
    /// Rebuild the rollout record from the cluster when it does not decode, or is gone while
    /// the cluster is over its size; the replicas carry on from it.
    Repair(cli::repair::RepairArgs),
    /// Put the servers' Auto Scaling group back as a stopped (or paused) rollout's record on it
    /// says: processes resumed, MaxSize restored, with --template the old launch template version.
    RestoreGroup(cli::restore_group::RestoreGroupArgs),
    /// Pre-flight: what would make a rollout or the lifecycle guard unsafe or stuck (Consul,
    /// its autopilot and the token's rights; the servers' Auto Scaling group), each with its
    /// fix; exit 1 on any failed check.
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

/// The consul CLI's single-dash flags. clap reads `-http-addr=…` as `-h` and prints help with
/// exit 0, so an operator's `pause -http-addr=…` did nothing and said nothing: they are refused,
/// saying where rehydrator takes each from.
const CONSUL_CLI_FLAGS: &[(&str, &str)] = &[
    (
        "http-addr",
        "CONSUL_HTTP_ADDR, or [consul] address in --config",
    ),
    (
        "token",
        "CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE, or [consul] token_file in --config (a \
         token on the command line is visible to every user of the host)",
    ),
    (
        "token-file",
        "CONSUL_HTTP_TOKEN_FILE, or [consul] token_file in --config",
    ),
    ("datacenter", "[consul] datacenter in --config"),
    ("ca-file", "CONSUL_CACERT, or [consul] ca_file in --config"),
    ("ca-path", "CONSUL_CAPATH, or [consul] ca_path in --config"),
    (
        "client-cert",
        "CONSUL_CLIENT_CERT, or [consul] client_cert in --config",
    ),
    (
        "client-key",
        "CONSUL_CLIENT_KEY, or [consul] client_key in --config",
    ),
    (
        "tls-server-name",
        "CONSUL_TLS_SERVER_NAME, or [consul] tls_server_name in --config",
    ),
];

/// The hint for the first consul-CLI-style flag in `args`, if any (none after `--`).
fn consul_cli_flag(args: &[String]) -> Option<String> {
    args.iter()
        .skip(1)
        .take_while(|a| a.as_str() != "--")
        .find_map(|arg| {
            let name = arg.strip_prefix('-').filter(|n| !n.starts_with('-'))?;
            let name = name.split_once('=').map_or(name, |(n, _)| n);
            let (flag, from) = CONSUL_CLI_FLAGS.iter().find(|(f, _)| *f == name)?;
            Some(format!(
                "-{flag}: that is the consul CLI's flag; rehydrator takes it from {from}"
            ))
        })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(hint) = consul_cli_flag(&args) {
        eprintln!("{hint}");
        return ExitCode::from(2);
    }
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
        | Command::Abort(_)
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
        Command::Abort(args) => cli::exit(&args.target.clone(), cli::abort::run(args)),
        Command::RestoreGroup(args) => {
            cli::exit(&args.target.clone(), cli::restore_group::run(args))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::consul_cli_flag;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn the_consul_clis_flags_are_refused_with_where_to_put_them() {
        let hint = consul_cli_flag(&args(&["rehydrator", "pause", "-http-addr=http://c:8500"]));
        assert!(hint.is_some_and(|h| h.contains("CONSUL_HTTP_ADDR")));
        let hint = consul_cli_flag(&args(&["rehydrator", "status", "-token", "x"]));
        assert!(hint.is_some_and(|h| h.contains("visible to every user")));
        for fine in [
            &["rehydrator", "status", "--cluster", "prod"][..],
            &["rehydrator", "status", "-c", "f.toml"],
            &["rehydrator", "fire", "--", "-token"],
        ] {
            assert_eq!(consul_cli_flag(&args(fine)), None, "{fine:?}");
        }
    }
}
