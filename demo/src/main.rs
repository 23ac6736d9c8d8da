//! `fleet-demo`: the whole product on one machine (`make demo`), and the releases to try on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_demo::repo::{DemoRepo, ReleaseKind};
use fleet_demo::run::{run, RunOptions};

#[derive(Parser)]
#[command(
    name = "fleet-demo",
    version,
    about = "The Fleet demo: git servers, the controller, real agents on Docker and simulated devices, on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything, release, show the waves; Ctrl-C stops and removes it all.
    Run {
        /// The demo's directory (a previous demo's is wiped).
        #[arg(long, default_value = "target/fleet-demo")]
        dir: PathBuf,
        /// The controller's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Real agents on Docker (the canary ring).
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Simulated devices.
        #[arg(long, default_value_t = 200)]
        simulated: usize,
        /// Bake time between waves.
        #[arg(long, default_value = "10s")]
        bake: String,
        /// No terminal drawing; `FLEET_DEMO key=value` lines for scripts.
        #[arg(long)]
        headless: bool,
        /// Name of this demo (its containers are labelled with it).
        #[arg(long, default_value = "demo")]
        instance: String,
        /// The example fleet repository the demo's is made from.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fleet-repo"))]
        examples: PathBuf,
    },
    /// Commit and push the next release to a running demo's fleet repository.
    Release {
        /// The demo's directory.
        #[arg(long, default_value = "target/fleet-demo")]
        dir: PathBuf,
        /// A release whose health check fails (the canaries roll back, the rollout halts).
        #[arg(long)]
        bad: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            dir,
            listen,
            agents,
            simulated,
            bake,
            headless,
            instance,
            examples,
        } => {
            if agents == 0 {
                eprintln!("fleet-demo: --agents must be at least 1 (they are the canaries)");
                return ExitCode::from(2);
            }
            if let Err(e) = fleet_config::units::parse_duration(&bake) {
                eprintln!("fleet-demo: --bake: {e}");
                return ExitCode::from(2);
            }
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("fleet-demo: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let opts = RunOptions {
                dir,
                listen,
                agents,
                simulated,
                bake,
                headless,
                instance,
                examples,
            };
            match runtime.block_on(run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleet-demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Release { dir, bad } => {
            let kind = if bad {
                ReleaseKind::BadHealthCheck
            } else {
                ReleaseKind::Good
            };
            match DemoRepo::open(&dir).and_then(|r| r.release(&dir, kind)) {
                Ok((n, sha)) => {
                    println!("release {n} {sha}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleet-demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
