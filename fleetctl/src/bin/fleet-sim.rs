//! `fleet-sim`: simulated devices that speak the real protocol to a controller, for demos,
//! load and failure drills. Devices enroll with a bootstrap token and check in every interval.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fleet_client::sim_run::{run, SimOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fleet-sim",
    version,
    about = "Simulated devices speaking the real check-in protocol to a Fleet controller"
)]
struct Cli {
    /// Controller URL.
    #[arg(long, env = "FLEET_URL")]
    url: String,
    /// File holding a bootstrap token (`fleet-controller bootstrap-token create`).
    #[arg(long, conflicts_with = "bootstrap_token")]
    bootstrap_token_file: Option<PathBuf>,
    /// Trust only this CA (PEM) for the controller's certificate (default: the system's roots).
    #[arg(long, env = "FLEET_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A bootstrap token.
    #[arg(long, env = "FLEET_BOOTSTRAP_TOKEN", hide_env_values = true)]
    bootstrap_token: Option<String>,
    /// How many devices.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Device ids are PREFIX followed by a number (they must be in devices.yaml to get releases).
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Check-in interval (e.g. 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = duration)]
    interval: Duration,
    /// Share of installs that fail their health window, 0 to 1 (e.g. 0.02).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    failure_rate: f64,
    /// Network latency added before every request (e.g. 150ms).
    #[arg(long, default_value = "0ms", value_parser = duration)]
    latency: Duration,
    /// Share of devices that never check in after enrolling, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    offline: f64,
    /// Seed of the random choices (failures, offline devices, jitter).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How often to print a summary line.
    #[arg(long, default_value = "10s", value_parser = duration)]
    report_every: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    fleet_config::units::parse_duration(s).map_err(|e| e.to_string())
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a share between 0 and 1 (e.g. 0.05)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let token = match (&cli.bootstrap_token, &cli.bootstrap_token_file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(p)) => match std::fs::read_to_string(p) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                eprintln!("fleet-sim: cannot read {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("fleet-sim: give --bootstrap-token-file FILE or --bootstrap-token (FLEET_BOOTSTRAP_TOKEN)");
            return ExitCode::from(2);
        }
    };
    if cli.interval < Duration::from_millis(100) {
        eprintln!("fleet-sim: --interval must be at least 100ms");
        return ExitCode::from(2);
    }
    let opts = SimOptions {
        url: cli.url,
        ca_file: cli.ca_file,
        bootstrap_token: token,
        devices: cli.devices,
        prefix: cli.prefix,
        interval: cli.interval,
        failure_rate: cli.failure_rate,
        latency: cli.latency,
        offline: cli.offline,
        seed: cli.seed,
        report_every: cli.report_every,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-sim: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            s.cancel();
        });
        match run(opts, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fleet-sim: {e}");
                ExitCode::from(1)
            }
        }
    })
}
