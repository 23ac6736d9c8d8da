//! `fleet-safe-mode`: the watchdog's command line. Parses arguments, starts logging and turns
//! errors into a message and an exit code; the watching is in the library.
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failure, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fleet_safe_mode::judge::{defaults, Thresholds};
use fleet_safe_mode::Options;
use tokio_util::sync::CancellationToken;

fn duration(s: &str) -> Result<Duration, String> {
    fleet_config::units::parse_duration(s).map_err(|e| e.to_string())
}

/// Starts the safe-mode stack when the Fleet agent is dead, hung or crash-looping.
#[derive(Parser)]
#[command(name = "fleet-safe-mode", version, about)]
struct Cli {
    /// The agent's data directory: its lock, its heartbeat, and this watchdog's status file
    /// (safe-mode-watchdog.json).
    #[arg(long, default_value = "/var/lib/fleet")]
    data_dir: PathBuf,
    /// The agent's Docker label namespace, used until the agent's heartbeat names its own.
    #[arg(long, default_value = "fleet")]
    namespace: String,
    /// The safe-mode compose file, used until the agent's heartbeat names its own.
    #[arg(long, default_value = "/usr/share/fleet/safe-mode/compose.yaml")]
    safe_mode_compose: PathBuf,
    /// The secrets directory (safe-mode.env), used until the agent's heartbeat names its own.
    #[arg(long, default_value = "/etc/fleet/secrets")]
    secrets_dir: PathBuf,
    /// The Docker engine: unix:///path or tcp://HOST:PORT [default: $DOCKER_HOST,
    /// else unix:///var/run/docker.sock].
    #[arg(long)]
    docker_host: Option<String>,
    /// How often to look at the agent.
    #[arg(long, default_value = "2s", value_parser = duration)]
    poll: Duration,
    /// No process holds the agent's lock and nothing was heard for this long: dead.
    #[arg(long, default_value = "60s", value_parser = duration)]
    dead_after: Duration,
    /// The agent's heartbeat is this far past the time it said the next was due: hung.
    #[arg(long, default_value = "60s", value_parser = duration)]
    hung_grace: Duration,
    /// More restarts than this within --restart-window: crash-looping.
    #[arg(long, default_value_t = defaults::MAX_RESTARTS)]
    max_restarts: usize,
    /// The crash-loop window.
    #[arg(long, default_value = "5m", value_parser = duration)]
    restart_window: Duration,
    /// An agent life that has beaten this long after a crash loop is healthy again.
    #[arg(long, default_value = "60s", value_parser = duration)]
    stable_after: Duration,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    token.cancel();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let opts = Options {
        data_dir: cli.data_dir,
        namespace: cli.namespace,
        safe_mode_compose: cli.safe_mode_compose,
        secrets_dir: cli.secrets_dir,
        docker_host: cli
            .docker_host
            .or_else(|| {
                std::env::var(fleet_docker::DOCKER_HOST_ENV)
                    .ok()
                    .filter(|h| !h.trim().is_empty())
            })
            .unwrap_or_else(|| fleet_docker::DockerHost::default().to_string()),
        poll: cli.poll,
        thresholds: Thresholds {
            dead_after: cli.dead_after,
            hung_grace: cli.hung_grace,
            max_restarts: cli.max_restarts,
            restart_window: cli.restart_window,
            stable_after: cli.stable_after,
        },
    };
    // One thread: the watchdog sleeps almost always.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-safe-mode: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let token = CancellationToken::new();
        tokio::spawn(shutdown_signal(token.clone()));
        match fleet_safe_mode::run(opts, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fleet-safe-mode: {e}");
                ExitCode::from(1)
            }
        }
    })
}
