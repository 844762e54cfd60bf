//! `rehydrator check-config`: validates a configuration file and prints the effective
//! configuration with its secrets masked.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML configuration file.
    file: PathBuf,
}

/// Prints the effective configuration, or every error in it; exit 2 when invalid.
pub fn run(args: CheckConfigArgs) -> ExitCode {
    match rehydrator_config::load(&args.file) {
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
