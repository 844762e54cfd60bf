//! `rehydrator sim`: a simulated Consul datacenter serving Consul's HTTP API (and `/sim/...`)
//! until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct SimArgs {
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

/// Serves until Ctrl-C.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
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
