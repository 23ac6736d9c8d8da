//! `fleet-agent`: the device updater's command line. Parses arguments and turns errors into a
//! message and an exit code; everything else is in the library.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage or invalid configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fleet_agent::config::{AgentConfig, ConfigError};
use fleet_agent::layout::DataDir;
use fleet_agent::status;

/// The Fleet device agent.
#[derive(Parser)]
#[command(name = "fleet-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check the configuration file and print every problem with its line and column.
    CheckConfig {
        /// The agent's configuration file.
        #[arg(long, default_value = "/etc/fleet/agent.yaml")]
        config: PathBuf,
    },
    /// Show the current and previous release, the update phase and the last result.
    Status {
        /// The agent's configuration file.
        #[arg(long, default_value = "/etc/fleet/agent.yaml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

fn load(path: &std::path::Path) -> Result<AgentConfig, ExitCode> {
    AgentConfig::load(path).map_err(|e| {
        eprintln!("fleet-agent: {e}");
        match e {
            ConfigError::Invalid(_) => ExitCode::from(2),
            ConfigError::Read { .. } => ExitCode::from(2),
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "ok: {} is valid: device `{}`, {} Git endpoint(s), {} mode",
                    config.display(),
                    c.device_id,
                    c.git.endpoints.len(),
                    if c.standalone() {
                        "standalone"
                    } else {
                        "controller"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Status { config, output } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let s = status::read(&DataDir::new(&c.data_dir), &c.device_id, c.standalone());
            match output {
                Output::Text => print!("{s}"),
                Output::Json => match serde_json::to_string_pretty(&s) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("fleet-agent: cannot encode status: {e}");
                        return ExitCode::from(1);
                    }
                },
            }
            ExitCode::SUCCESS
        }
    }
}
