//! `rehydrator healthcheck`: the container's health check of the status endpoint's `/healthz`
//! (the image has no curl).

use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct HealthcheckArgs {
    /// The endpoint to GET (plain http).
    #[arg(long, default_value = rehydrator::healthcheck::DEFAULT_URL)]
    url: String,
    /// The longest the whole check may take (under the 5 s Docker and ECS allow a check).
    #[arg(long, default_value = "3s", value_parser = super::parse_bounded_duration)]
    timeout: Duration,
}

/// Exit 0 if the endpoint answers 200 in time, else 1.
pub fn run(args: HealthcheckArgs) -> ExitCode {
    match rehydrator::healthcheck::check(&args.url, args.timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
