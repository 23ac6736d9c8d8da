//! `fleet-agent`: the device updater's command line. Parses arguments, starts logging and turns
//! errors into a message and an exit code; everything else is in the library.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage or invalid configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use fleet_agent::config::{AgentConfig, ConfigError, DockerHost};
use fleet_agent::docker::{Namespace, Runtime, RuntimeOptions};
use fleet_agent::journal::Journal;
use fleet_agent::layout::DataDir;
use fleet_agent::lock::{LockError, UpdateLock};
use fleet_agent::metrics::Metrics;
use fleet_agent::runtime::DockerStacks;
use fleet_agent::update::{AgentError, Updater};
use fleet_agent::{service, status};
use fleet_config::protocol::UpdateResult;
use fleet_logging::{Console, Logging, LokiSetup};
use tokio_util::sync::CancellationToken;

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
    /// Run the agent: recover, then keep the device on the newest good release.
    Run {
        /// The agent's configuration file.
        #[arg(long, default_value = "/etc/fleet/agent.yaml")]
        config: PathBuf,
    },
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
    /// Go back to the previous release by hand (the running agent does it, or this command
    /// when no agent runs), with the same transaction and health window.
    Rollback {
        /// The agent's configuration file.
        #[arg(long, default_value = "/etc/fleet/agent.yaml")]
        config: PathBuf,
    },
}

fn load(path: &Path) -> Result<AgentConfig, ExitCode> {
    AgentConfig::load(path).map_err(|e| {
        eprintln!("fleet-agent: {e}");
        match e {
            ConfigError::Invalid(_) | ConfigError::Read { .. } | ConfigError::Env { .. } => {
                ExitCode::from(2)
            }
        }
    })
}

/// JSON lines on standard output, the same lines kept in memory for the controller's log
/// requests ([`fleet_agent::logs::ring`]) and, for `run` with `logging.loki`, pushed to Loki,
/// labelled with this device's id.
fn init_logging(cfg: &AgentConfig, loki: bool) -> Logging {
    let setup = cfg
        .logging
        .loki
        .clone()
        .filter(|_| loki)
        .map(|l| LokiSetup::new(l, "agent", cfg.device_id.clone()));
    fleet_logging::init_with(
        Console::Stdout,
        setup,
        Some(Box::new(fleet_agent::logs::ring::layer())),
    )
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    // One thread: the agent waits on I/O; a single thread keeps it small on a Raspberry Pi.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("fleet-agent: cannot start the async runtime: {e}");
            ExitCode::from(1)
        })
}

async fn docker(
    host: &DockerHost,
    ns: Namespace,
    pull_stall: Duration,
) -> Result<DockerStacks, String> {
    let docker = Runtime::connect_to(host, ns)
        .await
        .map_err(|e| fleet_agent::problems::chain(&e))?
        .with_options(RuntimeOptions {
            pull_stall,
            ..RuntimeOptions::default()
        });
    Ok(DockerStacks {
        docker,
        health_poll: Duration::from_secs(1),
    })
}

fn namespace(cfg: &AgentConfig) -> Result<Namespace, ExitCode> {
    Namespace::new(&cfg.docker_namespace).map_err(|e| {
        eprintln!("fleet-agent: `docker_namespace`: {e}");
        ExitCode::from(2)
    })
}

fn agent_error(e: AgentError) -> ExitCode {
    eprintln!("fleet-agent: {e}");
    ExitCode::from(1)
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

/// Runs `body` on a one-thread async runtime with a connection to the Docker engine.
fn with_docker<F, Fut>(cfg: AgentConfig, body: F) -> ExitCode
where
    F: FnOnce(AgentConfig, DockerStacks) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let rt = match tokio_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let ns = match namespace(&cfg) {
        Ok(ns) => ns,
        Err(code) => return code,
    };
    rt.block_on(async {
        match docker(&cfg.docker_host(), ns, cfg.pull_stall_timeout).await {
            Ok(runtime) => body(cfg, runtime).await,
            Err(e) => {
                eprintln!("fleet-agent: cannot reach the Docker engine: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// The agent: it waits for the engine (and its data directory) instead of exiting, so the
/// engine starting after the agent at boot, or later, is no problem.
fn run(cfg: AgentConfig, mut logging: Logging) -> ExitCode {
    let rt = match tokio_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let ns = match namespace(&cfg) {
        Ok(ns) => ns,
        Err(code) => return code,
    };
    let host = cfg.docker_host();
    let pull_stall = cfg.pull_stall_timeout;
    let metrics = std::sync::Arc::new(Metrics::default());
    if let Some(stats) = logging.stats() {
        metrics.attach_log_shipping(stats);
    }
    let code = rt.block_on(async {
        let shipping = logging.start();
        let token = CancellationToken::new();
        tokio::spawn(shutdown_signal(token.clone()));
        let connect = || docker(&host, ns.clone(), pull_stall);
        let code = match service::run(cfg, metrics, connect, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => agent_error(e),
        };
        // The last lines (the stop included) go to Loki within a short deadline.
        shipping.finish().await;
        code
    });
    // A fetch from a silent Git server may still be running on a blocking thread after
    // SIGTERM: its result is not needed (recovery takes the update from the journal at the next
    // start), so the agent does not wait for it.
    rt.shutdown_timeout(EXIT_WAIT);
    code
}

/// How long the agent waits at exit for blocking work (a Git fetch) still under way.
const EXIT_WAIT: Duration = Duration::from_secs(2);

fn print_result(r: &UpdateResult) -> ExitCode {
    match r {
        UpdateResult::Succeeded { release } => {
            println!("rolled back: now running {release}");
            ExitCode::SUCCESS
        }
        UpdateResult::RolledBack { release, reason } => {
            println!(
                "the previous release {} failed its health window ({reason}); the device stays where it was",
                release.short()
            );
            ExitCode::from(1)
        }
        UpdateResult::Rejected { reason, .. } | UpdateResult::Skipped { reason } => {
            println!("no rollback: {reason}");
            ExitCode::from(1)
        }
    }
}

fn rollback(cfg: AgentConfig) -> ExitCode {
    let data = DataDir::new(&cfg.data_dir);
    // Is an agent running? Then it must do it: ask and wait for its verdict.
    match UpdateLock::acquire(&data.lock()) {
        Err(LockError::Held { holder, .. }) => {
            let before = Journal::load(&data.journal())
                .ok()
                .flatten()
                .map(|j| j.updated_at_ms);
            if let Err(e) =
                fleet_agent::fsutil::write_atomic(&data.rollback_request(), b"rollback\n")
            {
                eprintln!("fleet-agent: cannot ask the running agent to roll back: {e}");
                return ExitCode::from(1);
            }
            println!(
                "asked the running agent{} to roll back; waiting for the health window",
                holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
            );
            let deadline = Instant::now() + cfg.health_window + Duration::from_secs(300);
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                let j = Journal::load(&data.journal()).ok().flatten();
                if let Some(j) = j {
                    let done = !data.rollback_request().exists()
                        && Some(j.updated_at_ms) != before
                        && j.phase == fleet_config::protocol::UpdatePhase::Idle;
                    if done {
                        if let Some(r) = &j.last_result {
                            return print_result(r);
                        }
                    }
                }
            }
            eprintln!("fleet-agent: the running agent did not finish the rollback in time; see `fleet-agent status`");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            ExitCode::from(1)
        }
        Ok(lock) => {
            drop(lock);
            with_docker(cfg, |cfg, runtime| async move {
                let metrics = std::sync::Arc::new(Metrics::default());
                let mut updater = match Updater::open(cfg, runtime, metrics) {
                    Ok(u) => u,
                    Err(e) => return agent_error(e),
                };
                if let Err(e) = updater.recover().await {
                    return agent_error(e);
                }
                print_result(&updater.rollback_by_hand().await)
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => match load(&config) {
            Ok(cfg) => {
                let logging = init_logging(&cfg, true);
                run(cfg, logging)
            }
            Err(code) => code,
        },
        // A person at the device's terminal: the console only.
        Command::Rollback { config } => match load(&config) {
            Ok(cfg) => {
                init_logging(&cfg, false);
                rollback(cfg)
            }
            Err(code) => code,
        },
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "ok: {} is valid: device `{}`, {} Git endpoint(s), {} mode{}",
                    config.display(),
                    c.device_id,
                    c.git.endpoints.len(),
                    if c.standalone() {
                        "standalone"
                    } else {
                        "controller"
                    },
                    c.logging
                        .loki
                        .as_ref()
                        .map(|l| format!(", logs pushed to Loki at {}", l.push_url()))
                        .unwrap_or_default()
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
            let s = status::read(
                &DataDir::new(&c.data_dir),
                &c.run_dir,
                &c.device_id,
                c.controller.as_ref(),
            );
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
