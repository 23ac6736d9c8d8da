//! The agent's long-running service: boot recovery, the metrics endpoint and the update loop
//! (standalone, or controller mode when `controller:` is configured), all racing one shutdown
//! signal.

use std::sync::Arc;

use fleet_config::protocol::EventKind;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::liveness::{self, Liveness};
use crate::metrics::Metrics;
use crate::runtime::StackRuntime;
use crate::update::{AgentError, Updater};

/// Runs the agent until `shutdown` is cancelled. Fails at once when another agent holds the
/// data directory or the data directory is unusable.
pub async fn run<R: StackRuntime>(
    cfg: AgentConfig,
    runtime: R,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::default());
    let mut updater = Updater::open(cfg.clone(), runtime, metrics.clone())?;
    // With the lock held: record this start where the safe-mode watchdog counts restarts.
    metrics.attach_liveness(Liveness::start(&cfg));
    tracing::info!(
        device = %cfg.device_id,
        data_dir = %cfg.data_dir.display(),
        mode = if cfg.standalone() { "standalone" } else { "controller" },
        "fleet-agent starting"
    );
    let metrics_task = match cfg.metrics_listen {
        Some(addr) => match crate::metrics_server::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "serving /metrics");
                Some(tokio::spawn(crate::metrics_server::serve(
                    listener,
                    metrics.clone(),
                    cfg.data_dir.clone(),
                    shutdown.child_token(),
                )))
            }
            Err(e) => {
                // Metrics are for people; updates must go on without them.
                tracing::error!(%addr, error = %e, "cannot serve /metrics");
                None
            }
        },
        None => None,
    };
    updater.record(EventKind::AgentStarted {
        version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    report_watchdog(&mut updater, &cfg);
    let reason = updater.recover().await?;
    tracing::info!(%reason, "recovered");
    metrics.with_liveness(|l| l.ready(&format!("recovered: {reason}")));
    let result = match cfg.controller.clone() {
        // With a controller the agent only moves to a release the controller names; it never
        // falls back to following the branch, which could push a release past the waves.
        Some(controller) => {
            crate::controller::mode::run(&mut updater, controller, shutdown.clone()).await
        }
        None => {
            updater.run_standalone(shutdown.clone()).await;
            Ok(())
        }
    };
    metrics.with_liveness(Liveness::stopping);
    if let Some(t) = metrics_task {
        t.abort();
    }
    tracing::info!("fleet-agent stopped");
    result
}

/// Reports, once, that the safe-mode watchdog started the safe stack while this agent was
/// down, hung or crash-looping (an event for the controller and a log line).
fn report_watchdog<R: StackRuntime>(updater: &mut Updater<R>, cfg: &AgentConfig) {
    let Some(episode) = liveness::unreported_watchdog_episode(&cfg.data_dir) else {
        return;
    };
    tracing::warn!(episode = episode.episode, reason = %episode.reason, "the safe-mode watchdog started the safe stack while the agent was not running properly");
    updater.record(EventKind::SafeModeEntered {
        reason: format!("fleet-safe-mode watchdog: {}", episode.reason),
    });
    if let Err(e) = liveness::acknowledge_watchdog_episode(&cfg.data_dir, episode.episode) {
        tracing::warn!(error = %e, "cannot record that the watchdog episode was reported");
    }
}
