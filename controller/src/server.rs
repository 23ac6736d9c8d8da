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
    /// Plain HTTP on an address other than loopback without `insecure_http`.
    #[error("{0}")]
    Transport(String),
    /// A secret file is empty (an empty webhook secret would accept any signature made with
    /// the empty key; an empty metrics token any empty bearer).
    #[error("{what} {path} is empty; put the secret in it, or remove the setting")]
    EmptySecret {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
    },
    /// The TLS certificate or key.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
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
    cfg.check_transport().map_err(ServeError::Transport)?;
    let secret = match &cfg.webhook_secret_file {
        Some(p) => Some(read_secret(p, "the webhook secret file")?.into_bytes()),
        None => None,
    };
    let metrics_token = match &cfg.metrics_token_file {
        Some(p) => Some(read_secret(p, "the metrics token file")?),
        None => None,
    };
    let tls = match &cfg.tls {
        Some(files) => Some(std::sync::Arc::new(crate::tls::CertStore::open(files)?)),
        None => None,
    };
    let db = Db::open_with(
        &cfg.database_url(),
        &crate::db::DbOptions::for_lease(cfg.leader_lease),
    )
    .await?;
    let mut state = AppState::new(db, cfg, secret);
    state.metrics_token = metrics_token.map(std::sync::Arc::new);
    state.tls = tls;
    Ok(state)
}

/// A secret file's contents without surrounding whitespace; an empty one is refused.
fn read_secret(path: &std::path::Path, what: &'static str) -> Result<String, ServeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::Io {
        what: "read",
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ServeError::EmptySecret {
            what,
            path: path.to_owned(),
        });
    }
    Ok(secret.to_owned())
}

/// Binds the configured address and serves until `shutdown`.
pub async fn serve(state: AppState, shutdown: CancellationToken) -> Result<(), ServeError> {
    let addr = state.cfg.listen;
    state.cfg.check_transport().map_err(ServeError::Transport)?;
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
    let local = listener.local_addr().unwrap_or(state.cfg.listen);
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    tracing::info!(%local, %scheme, backend = ?state.db.backend(), "fleet-controller listening");
    let mut tasks = vec![
        tokio::spawn(crate::leader::run(state.clone(), shutdown.child_token())),
        tokio::spawn(crate::watcher::run(state.clone(), shutdown.child_token())),
        tokio::spawn(crate::engine::run(state.clone(), shutdown.child_token())),
        tokio::spawn(crate::longpoll::run(state.clone(), shutdown.child_token())),
        tokio::spawn(crate::alerts::run::run(
            state.clone(),
            shutdown.child_token(),
        )),
        tokio::spawn(crate::alerts::deliver::run(
            state.clone(),
            shutdown.child_token(),
        )),
        tokio::spawn(crate::service::live::run(
            state.clone(),
            shutdown.child_token(),
        )),
    ];
    let tls = match &state.tls {
        Some(store) => {
            let acceptor =
                tokio_rustls::TlsAcceptor::from(crate::tls::server_config(store.clone())?);
            tasks.push(tokio::spawn(reload_on_sighup(
                store.clone(),
                shutdown.child_token(),
            )));
            Some(acceptor)
        }
        None => None,
    };
    let limits = state.cfg.limits.clone();
    let metrics = state.metrics.clone();
    let app = crate::routes::router(state);
    crate::listener::serve(listener, app, tls, limits, metrics, shutdown.clone()).await;
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Reloads the TLS certificate and key on every SIGHUP until `shutdown`.
async fn reload_on_sighup(
    store: std::sync::Arc<crate::tls::CertStore>,
    shutdown: CancellationToken,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS certificate is not reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => {}
        }
        match store.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded; new connections use it"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; still serving the previous one")
            }
        }
    }
}
