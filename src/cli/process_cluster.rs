//! `rehydrator process-cluster`: a user's first run of the process cloud. Starts the first
//! Consul servers as local processes on one image (`-bootstrap-expect`), and the client agent
//! replicas talk to on `consul.address`'s port, waits for a leader, and says what to do next.
//! `--stop` kills every agent of the data directory. Both read the same configuration as `run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rehydrator::cloud::process;
use rehydrator::cloud::ProcessCloud;
use rehydrator::consul::{Client, ConsulConfig};
use rehydrator_config::CloudSettings;

#[derive(clap::Args)]
pub struct ProcessClusterArgs {
    /// The configuration `run` uses; its [cloud] must be type "process".
    #[arg(long, short)]
    config: PathBuf,
    /// How many servers to start.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// The image label they run (registered if it is not).
    #[arg(long, default_value = "a")]
    image: String,
    /// Kill every agent of the data directory instead (no graceful leave).
    #[arg(long)]
    stop: bool,
    /// How long to wait for a leader.
    #[arg(long, default_value = "60s", value_parser = super::parse_bounded_duration)]
    wait: Duration,
}

pub fn run(args: ProcessClusterArgs) -> ExitCode {
    let settings = match rehydrator_config::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let CloudSettings::Process(process) = &settings.cloud else {
        eprintln!(
            "{}: cloud.type: process-cluster needs type = \"process\"",
            args.config.display()
        );
        return ExitCode::from(2);
    };
    let Some(port) = loopback_port(&settings.consul.address) else {
        eprintln!(
            "{}: consul.address: {:?} must be http://127.0.0.1:<port>, where the client agent will listen",
            args.config.display(),
            settings.consul.address
        );
        return ExitCode::from(2);
    };
    // The token `run` will use: asking for the leader (and the agents' leave) needs it once
    // the agents enforce ACLs.
    let consul = match ConsulConfig::from_settings(&settings.consul) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: [consul]: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let result = ProcessCloud::from_settings(process)
        .context("cloud (process)")
        .map(|cloud| cloud.with_acl_token(consul.token.clone()))
        .and_then(|cloud| {
            if args.stop {
                let stopped = cloud.stop_all().context("stopping the agents")?;
                println!(
                    "Stopped {stopped} agent(s) of {}.",
                    cloud.data_dir().display()
                );
                Ok(())
            } else {
                start(&cloud, &args, port, consul)
            }
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(
    cloud: &ProcessCloud,
    args: &ProcessClusterArgs,
    port: u16,
    consul: ConsulConfig,
) -> anyhow::Result<()> {
    let images = cloud.data_dir().join("images");
    // Registering again would make an old image the newest.
    if !images.join(&args.image).exists() {
        cloud
            .register_image(&args.image, None)
            .with_context(|| format!("--image {:?}", args.image))?;
    }
    let servers = cloud
        .bootstrap(args.servers, &args.image)
        .context("starting the servers")?;
    let port = cloud
        .start_client(port)
        .context("starting the client agent")?;
    let address = format!("http://127.0.0.1:{port}");
    let client = Client::new(ConsulConfig {
        address: address.clone(),
        ..consul
    })?;
    let deadline = Instant::now() + args.wait;
    let leader = actix_rt::System::new().block_on(async {
        loop {
            if let Some(leader) = process::ready(&client, args.servers).await {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            actix_rt::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let logs = cloud.data_dir().join("machines");
    let Some(leader) = leader else {
        anyhow::bail!(
            "no leader with {} voters and the client agent registered within {:?}; see the \
             agents' logs in {}",
            args.servers,
            args.wait,
            logs.display()
        );
    };
    for s in &servers {
        println!("server {} on image {}", s.id, s.image);
    }
    println!(
        "leader at {leader}; client agent at {address}; logs in {}",
        logs.display()
    );
    println!(
        "Next: `rehydrator run --config {config}`, then register a new image with `touch {images}` and fire the rollout with `consul event -http-addr={address} -name=consul-rehydrate`. `rehydrator process-cluster --config {config} --stop` ends the cluster.",
        config = args.config.display(),
        images = images.join("b").display(),
    );
    Ok(())
}

/// The port of `http://127.0.0.1:<port>` (or `localhost`).
fn loopback_port(address: &str) -> Option<u16> {
    let rest = address.strip_prefix("http://")?.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost")
        .then(|| port.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_agent_listens_where_replicas_look() {
        assert_eq!(loopback_port("http://127.0.0.1:8500"), Some(8500));
        assert_eq!(loopback_port("http://localhost:18500/"), Some(18500));
        assert_eq!(loopback_port("https://127.0.0.1:8501"), None);
        assert_eq!(loopback_port("http://10.0.0.1:8500"), None);
        assert_eq!(loopback_port("http://127.0.0.1"), None);
    }
}
