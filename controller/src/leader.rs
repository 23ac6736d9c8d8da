//! Leadership: only one replica drives rollouts and watches Git. On PostgreSQL the leader holds
//! a session advisory lock on a connection of its own (released by the server if the replica
//! dies); on SQLite, where replicas would share one file on one machine, a file lock next to it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::db::Backend;
use crate::state::AppState;

/// The advisory lock key: "fleet" in ASCII.
const LOCK_KEY: i64 = 0x0066_6c65_6574;

/// How often a follower retries and a leader checks its hold.
const CHECK: Duration = Duration::from_secs(2);

/// Keeps trying to become leader and sets `state.leader` accordingly until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    match state.db.backend() {
        Backend::Sqlite => sqlite(state, shutdown).await,
        Backend::Postgres => postgres(state, shutdown).await,
    }
}

async fn sqlite(state: AppState, shutdown: CancellationToken) {
    use fs2::FileExt;
    let path = state.cfg.data_dir.join("leader.lock");
    let mut held: Option<std::fs::File> = None;
    loop {
        if held.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(f) if f.try_lock_exclusive().is_ok() => {
                    tracing::info!("this controller is the leader (SQLite file lock)");
                    state.leader.store(true, Ordering::SeqCst);
                    state.reconcile.notify_one();
                    held = Some(f);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the leader lock file")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(CHECK) => {}
        }
    }
    state.leader.store(false, Ordering::SeqCst);
    drop(held);
}

async fn postgres(state: AppState, shutdown: CancellationToken) {
    let mut conn: Option<sqlx::pool::PoolConnection<sqlx::Any>> = None;
    loop {
        match conn.as_mut() {
            None => {
                if let Ok(mut c) = state.db.pool().acquire().await {
                    let got = sqlx::query("SELECT pg_try_advisory_lock($1) AS ok")
                        .bind(LOCK_KEY)
                        .fetch_one(&mut *c)
                        .await
                        .and_then(|r| r.try_get::<bool, _>("ok"));
                    match got {
                        Ok(true) => {
                            tracing::info!(
                                "this controller is the leader (PostgreSQL advisory lock)"
                            );
                            state.leader.store(true, Ordering::SeqCst);
                            state.reconcile.notify_one();
                            // This connection holds the lock: never return it to the pool.
                            conn = Some(c);
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot ask for the leader lock"),
                    }
                }
            }
            Some(c) => {
                if sqlx::query("SELECT 1 AS one")
                    .fetch_one(&mut **c)
                    .await
                    .is_err()
                {
                    tracing::error!("lost the leader connection; stepping down");
                    state.leader.store(false, Ordering::SeqCst);
                    if let Some(c) = conn.take() {
                        let _ = c.detach();
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(CHECK) => {}
        }
    }
    state.leader.store(false, Ordering::SeqCst);
    if let Some(c) = conn.take() {
        // Closing the session releases the advisory lock at once.
        let _ = sqlx::Connection::close(c.detach()).await;
    }
}
