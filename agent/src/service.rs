//! The agent's long-running service: the metrics endpoint, start-up (waiting out a full or
//! read-only disk and an engine that does not answer yet, see [`crate::startup`]), boot
//! recovery and the update loop (standalone, or controller mode when `controller:` is
//! configured), all racing one shutdown signal.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::problems::Problems;
use crate::runtime::StackRuntime;
use crate::startup::{self, StartupError};
use crate::update::AgentError;

/// Runs the agent until `shutdown` is cancelled, reaching the engine through `connect` (retried
/// until it answers), recording into `metrics` (`/metrics`). Fails at once only when another
/// agent holds the data directory; every other start-up problem is reported and waited out.
pub async fn run<R, C, Fut>(
    cfg: AgentConfig,
    metrics: Arc<Metrics>,
    connect: C,
    shutdown: CancellationToken,
) -> Result<(), AgentError>
where
    R: StackRuntime,
    C: FnMut() -> Fut,
    Fut: Future<Output = Result<R, String>>,
{
    let problems = Arc::new(Problems::new(metrics.clone(), Some(&cfg.run_dir)));
    tracing::info!(
        device = %cfg.device_id,
        data_dir = %cfg.data_dir.display(),
        docker_host = %cfg.docker_host(),
        mode = if cfg.standalone() { "standalone" } else { "controller" },
        "fleet-agent starting"
    );
    // Up before start-up, so a problem it waits out is visible.
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
    let result = match startup::start(&cfg, metrics.clone(), problems.clone(), connect, &shutdown)
        .await
    {
        Ok(started) => {
            let mut updater = started.updater;
            tracing::info!(reason = %started.recovered, "recovered");
            // A first reading before the first update decision, then the watchers' own task.
            updater.watchers().sample().await;
            updater.flush_problem_events();
            let watch_task = tokio::spawn(updater.watchers().clone().run(shutdown.child_token()));
            metrics.with_liveness(|l| l.ready(&format!("recovered: {}", started.recovered)));
            let outcome = match cfg.controller.clone() {
                // With a controller the agent only moves to a release the controller names; it
                // never falls back to following the branch, which could push a release past the
                // waves.
                Some(controller) => {
                    crate::controller::mode::run(&mut updater, controller, shutdown.clone()).await
                }
                None => {
                    updater.run_standalone(shutdown.clone()).await;
                    Ok(())
                }
            };
            watch_task.abort();
            let _ = watch_task.await;
            // What the watchers and the loop raised or cleared since the loop's last turn (a
            // check-in hanging on a dead link holds the loop for up to its request timeout)
            // goes into the buffer before the process ends, not lost with it.
            updater.flush_problem_events();
            outcome
        }
        Err(StartupError::Shutdown) => Ok(()),
        Err(StartupError::AnotherAgent(e)) => Err(AgentError::Lock(e)),
    };
    metrics.with_liveness(Liveness::stopping);
    if let Some(t) = metrics_task {
        t.abort();
    }
    problems.withdraw();
    tracing::info!("fleet-agent stopped");
    result
}
