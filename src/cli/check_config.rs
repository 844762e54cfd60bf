//! `rehydrator check-config`: validates a configuration file and prints the effective
//! configuration with its secrets masked.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML configuration file.
    file: Option<PathBuf>,
    /// The same, spelt as every other command takes it.
    #[arg(long, short, conflicts_with = "file")]
    config: Option<PathBuf>,
}

/// Prints the effective configuration, or every error in it; exit 2 when invalid.
pub fn run(args: CheckConfigArgs) -> ExitCode {
    let Some(file) = args.file.or(args.config) else {
        eprintln!("check-config: name the file: rehydrator check-config [--config] FILE");
        return ExitCode::from(2);
    };
    match rehydrator_config::load(&file) {
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
