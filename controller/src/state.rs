//! What every handler and background task shares: the store, the configuration, the wake-ups,
//! the rate limits and the live snapshot hub (below the service layer and the engine, so both
//! take it without importing each other).

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::ControllerConfig;
use crate::db::Db;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use crate::snapshot::Hub;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub db: Db,
    /// The configuration.
    pub cfg: Arc<ControllerConfig>,
    /// Request counters.
    pub metrics: Arc<Metrics>,
    /// Wakes the rollout reconciler (after a check-in or an operator action).
    pub reconcile: Arc<Notify>,
    /// Wakes the Git watcher (webhook).
    pub watch: Arc<Notify>,
    /// Enrollment requests per peer address.
    pub enroll_limit: Arc<RateLimit>,
    /// Claims per peer address.
    pub claim_limit: Arc<RateLimit>,
    /// Pairing-code approvals per user (guessing codes).
    pub approve_limit: Arc<RateLimit>,
    /// This replica's leadership: the lease it holds, if any, and the fence of its writes.
    pub leadership: Arc<Leadership>,
    /// The webhook secret, if the webhook is enabled.
    pub webhook_secret: Option<Arc<Vec<u8>>>,
    /// Dashboard logins per peer address and user name (guessing passwords).
    pub login_limit: Arc<RateLimit>,
    /// The dashboard's live snapshot and event streams.
    pub live: Arc<Hub>,
    /// The token `/metrics` needs, if one is configured.
    pub metrics_token: Option<Arc<String>>,
    /// The certificate served over HTTPS, if TLS is configured (reloaded on SIGHUP).
    pub tls: Option<Arc<crate::tls::CertStore>>,
    /// Held (long-poll) check-ins and their wake-ups.
    pub waits: Arc<crate::longpoll::WaitHub>,
    /// The leader's copy of what its rollout passes read (see [`crate::fleet_cache::FleetCache`]).
    pub fleet_cache: Arc<tokio::sync::Mutex<crate::fleet_cache::FleetCache>>,
    /// Every device row, read at most once a second for `/metrics`, status and the dashboard.
    pub rows: Arc<crate::rows_cache::RowsCache>,
    /// The watcher's Git endpoints: failures in a row, last error.
    pub git_health: Arc<crate::git_health::GitHealth>,
    /// The alerting: settings, notifiers, their health, the heartbeat.
    pub alerting: Arc<crate::alerts::Runtime>,
}

impl AppState {
    /// State over a store and a configuration.
    pub fn new(db: Db, cfg: ControllerConfig, webhook_secret: Option<Vec<u8>>) -> AppState {
        let cfg_waiting = cfg.long_poll.max_waiting;
        let lease = cfg.leader_lease;
        let cfg_alerting = cfg.alerting.clone();
        AppState {
            db,
            cfg: Arc::new(cfg),
            metrics: Arc::new(Metrics::default()),
            reconcile: Arc::new(Notify::new()),
            watch: Arc::new(Notify::new()),
            enroll_limit: Arc::new(RateLimit::new(60, 60_000)),
            claim_limit: Arc::new(RateLimit::new(120, 60_000)),
            approve_limit: Arc::new(RateLimit::new(10, 60_000)),
            leadership: Arc::new(Leadership::new(crate::leader::replica_id(), lease)),
            webhook_secret: webhook_secret.map(Arc::new),
            login_limit: Arc::new(RateLimit::new(10, 60_000)),
            live: Arc::new(Hub::default()),
            metrics_token: None,
            tls: None,
            waits: Arc::new(crate::longpoll::WaitHub::new(cfg_waiting)),
            fleet_cache: Arc::default(),
            rows: Arc::default(),
            git_health: Arc::default(),
            alerting: Arc::new(crate::alerts::Runtime::of(&cfg_alerting)),
        }
    }

    /// The offline threshold in ms.
    pub fn offline_after_ms(&self) -> i64 {
        self.cfg.offline_after.as_millis() as i64
    }

    /// Whether cookies are marked `Secure` (the controller serves HTTPS).
    pub fn secure_cookies(&self) -> bool {
        self.cfg.tls.is_some()
    }

    /// Whether this replica drives rollouts (holds the leader lease, by its own clock).
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }
}
