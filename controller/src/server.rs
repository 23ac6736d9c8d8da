//! `fleet-controller serve`, the composition root: the route table's router (both faces), the
//! leader election, the Git watcher, the rollout reconciler and the live snapshot task, all
//! stopping on one shutdown signal.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ControllerConfig;
use crate::db::{Db, DbError};
use crate::service::AppState;

/// Errors starting the controller.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store.
    #[error("{0}")]
    Db(#[from] DbError),
    /// The listen address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory or a secret file.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What.
        what: &'static str,
        /// Path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Opens the store and builds the shared state.
pub async fn prepare(cfg: ControllerConfig) -> Result<AppState, ServeError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServeError::Io {
        what: "create the data directory",
        path: cfg.data_dir.clone(),
        source,
    })?;
    let secret = match &cfg.webhook_secret_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map(|s| s.trim().as_bytes().to_vec())
                .map_err(|source| ServeError::Io {
                    what: "read the webhook secret",
                    path: p.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let db = Db::open(&cfg.database_url()).await?;
    Ok(AppState::new(db, cfg, secret))
}

/// Binds the configured address and serves until `shutdown`.
pub async fn serve(state: AppState, shutdown: CancellationToken) -> Result<(), ServeError> {
    let addr = state.cfg.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    serve_on(listener, state, shutdown).await
}

/// Serves on `listener` until `shutdown`; the background tasks stop with it.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = state.cfg.listen;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(%local, backend = ?state.db.backend(), "fleet-controller listening");
    let tasks = vec![
        tokio::spawn(crate::leader::run(state.clone(), shutdown.child_token())),
        tokio::spawn(crate::watcher::run(state.clone(), shutdown.child_token())),
        tokio::spawn(crate::engine::run(state.clone(), shutdown.child_token())),
        tokio::spawn(crate::service::live::run(
            state.clone(),
            shutdown.child_token(),
        )),
    ];
    let app = crate::routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    served.map_err(|source| ServeError::Listen { addr, source })
}
