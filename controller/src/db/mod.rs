//! The controller's store: one schema on SQLite (default, one file) or PostgreSQL, reached
//! through sqlx's `Any` driver so every query is written once. Queries use `$1, $2, …` in
//! ascending order of first appearance, which both engines read the same way.

mod alerts;
mod audit;
mod bootstrap;
pub mod device_logs;
mod devices;
mod enroll;
pub mod lease;
mod releases;
mod rollouts;
mod sessions;
mod settings;
pub mod telemetry;
mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use alerts::{AckOutcome, AlertRow, MessageRecord, NewMessage, OutboxRow};
pub use audit::AuditEntry;
pub use bootstrap::{BootstrapEnrollment, BootstrapToken, NewBootstrapToken, Unusable};
pub use device_logs::{DeviceLogsRow, LOG_REQUEST_TTL_MS};
pub(crate) use devices::wire_name;
pub use devices::{
    problems, CheckinIdentity, DeviceRow, DeviceState, Existing, LastReport, PinChange, ProblemRow,
    RepoPin, PIN_BY_OPERATOR, PIN_BY_REPOSITORY,
};
pub use enroll::{ApproveOutcome, ClaimOutcome, Pairing};
pub use lease::{Fence, Fenced, Lease, Tenure};
pub use releases::ReleaseRow;
pub use rollouts::{RolloutRow, RolloutWrite};
pub use sessions::SESSION_TTL_MS;
pub use settings::EmergencyStop;
pub use telemetry::TelemetrySample;
pub use users::{Role, User};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL is not one this controller speaks.
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://…")]
    Url(String),
    /// Connecting failed.
    #[error("cannot open the database {url}: {source}")]
    Connect {
        /// Redacted URL.
        url: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("cannot migrate the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error while {what}: {source}")]
    Query {
        /// What the controller was doing.
        what: &'static str,
        /// Cause.
        source: sqlx::Error,
    },
    /// A stored value could not be read back.
    #[error("stored {what} is unreadable: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A write on behalf of leadership whose lease is no longer this replica's: another
    /// replica leads, or the lease expired before it could be renewed.
    #[error("fenced out: replica {holder} no longer holds the leader lease at epoch {epoch}")]
    Fenced {
        /// This replica.
        holder: String,
        /// The epoch it held.
        epoch: i64,
    },
    /// A compare-and-swap found the row changed since it was read.
    #[error("{what} `{id}` changed since it was read at version {version}")]
    Conflict {
        /// What kind of row.
        what: &'static str,
        /// Which.
        id: String,
        /// The version it was read at.
        version: i64,
    },
}

/// How the store's connections behave.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// PostgreSQL ends a session left idle inside a transaction this long (its locks with it),
    /// so a replica whose connection hangs mid-transaction cannot hold the leader lease's row
    /// (or a rollout's) past its lease. A quarter of the lease.
    pub idle_in_transaction: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions::for_lease(Duration::from_secs(10))
    }
}

impl DbOptions {
    /// The options for a leader lease of `lease`.
    pub fn for_lease(lease: Duration) -> DbOptions {
        DbOptions {
            idle_in_transaction: (lease / 4).max(Duration::from_millis(500)),
        }
    }
}

/// Wraps a sqlx error with what was being done.
pub(crate) fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Query { what, source }
}

/// Which engine the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one file, one writer.
    Sqlite,
    /// PostgreSQL: several controller replicas may share it.
    Postgres,
}

/// The store.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time, and a connection that finds the file locked sleeps in
    /// SQLite's busy handler (1, 2, 5, 10 … ms) instead of being woken when the lock is free.
    /// Frequent writers (check-ins, enrollments, the audit log, desired releases) take this
    /// gate first, so they queue here in order and never meet a lock held by another.
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Db {
    /// Opens (creating a SQLite file if needed) and migrates, with the default options.
    pub async fn open(url: &str) -> Result<Db, DbError> {
        Self::open_with(url, &DbOptions::default()).await
    }

    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open_with(url: &str, opts: &DbOptions) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::Url(redact(url)));
        };
        let connect_err = |source| DbError::Connect {
            url: redact(url),
            source,
        };
        let options = AnyConnectOptions::from_str(url).map_err(connect_err)?;
        let idle_ms = opts.idle_in_transaction.as_millis().max(1);
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                             PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                        )
                        .await?;
                    } else {
                        conn.execute(
                            format!("SET idle_in_transaction_session_timeout = {idle_ms}").as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Db {
            pool,
            backend,
            write_gate: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Held around a write on SQLite (see `write_gate`); nothing to wait for on PostgreSQL.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_gate.lock().await),
            Backend::Postgres => None,
        }
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for the few callers that need a connection of their own (leader lock).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://fleet:s3cret@db:5432/fleet"),
            "postgres://fleet:***@db:5432/fleet"
        );
        assert_eq!(redact("sqlite:///var/lib/x.db"), "sqlite:///var/lib/x.db");
        assert_eq!(redact("postgres://db/fleet"), "postgres://db/fleet");
    }
}
