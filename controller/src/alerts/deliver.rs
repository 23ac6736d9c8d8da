//! The delivery worker (leader): sends the outbox's messages through the notifiers, in order
//! per notifier, retrying with backoff. Each attempt's outcome is stored before the next, so a
//! restart (or a new leader) neither loses a message nor sends a delivered one again (a crash
//! between a receiver's answer and its record may repeat that one message: receivers can drop
//! it by its id). A notifier that keeps failing is itself an alert (`NotifierFailing`, sent
//! through the others) and a metric.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::facts::FailingNotifier;
use crate::db::{now_ms, OutboxRow};
use crate::notify::{Message, Notifier, NotifyError};
use crate::state::AppState;

/// The first retry after this long; each next one twice as long, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// A message not delivered after this long is given up (and counted).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// A notifier with this many failed attempts in a row raises `NotifierFailing`.
pub const FAILING_AFTER: u32 = 3;
/// Messages looked at per round.
const ROUND: i64 = 500;

/// How each notifier is doing.
#[derive(Debug, Default)]
pub struct DeliveryHealth {
    notifiers: Mutex<BTreeMap<String, NotifierHealth>>,
}

/// One notifier's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifierHealth {
    /// Attempts in a row that failed.
    pub streak: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The last success, ms since the epoch.
    pub last_ok_ms: Option<i64>,
}

impl DeliveryHealth {
    fn record(&self, notifier: &str, result: Result<(), String>) -> u32 {
        let mut map = self
            .notifiers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = map.entry(notifier.to_owned()).or_default();
        match result {
            Ok(()) => {
                h.streak = 0;
                h.last_ok_ms = Some(now_ms());
            }
            Err(e) => {
                h.streak = h.streak.saturating_add(1);
                h.last_error = Some(e);
            }
        }
        h.streak
    }

    /// The notifiers at [`FAILING_AFTER`] failures in a row or more.
    pub fn failing(&self) -> Vec<FailingNotifier> {
        let map = self
            .notifiers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .filter(|(_, h)| h.streak >= FAILING_AFTER)
            .map(|(name, h)| FailingNotifier {
                name: name.clone(),
                streak: h.streak,
                error: h.last_error.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// Every notifier's record.
    pub fn all(&self) -> BTreeMap<String, NotifierHealth> {
        self.notifiers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The wait before attempt `attempts + 1`, with ±20 % jitter (`jitter` in 0..1).
pub fn backoff(attempts: i64, jitter: f64) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
    let base = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(exp))
        .min(MAX_BACKOFF);
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// Runs delivery rounds while this replica leads: at every wake-up (a pass queued messages)
/// and every second, until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    loop {
        if state.is_leader() {
            if let Err(e) = round(&state).await {
                tracing::warn!(error = %e, "alert delivery round failed; retried in a second");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = state.alerting.wake_delivery.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One round: for each notifier, its oldest undelivered messages in order while they go
/// through; notifiers in parallel.
pub async fn round(state: &AppState) -> Result<(), crate::db::DbError> {
    let now = now_ms();
    // Everything undelivered (due or not), oldest first: a notifier's first undelivered
    // message blocks the later ones until it goes through or is given up.
    let pending = state.db.due_messages(i64::MAX, ROUND).await?;
    state
        .metrics
        .set_notifier_queue(u64::try_from(state.db.undelivered_messages().await?).unwrap_or(0));
    let mut queues: BTreeMap<String, Vec<OutboxRow>> = BTreeMap::new();
    for row in pending {
        queues.entry(row.notifier.clone()).or_default().push(row);
    }
    let futures = queues.into_iter().map(|(name, rows)| {
        let state = state.clone();
        async move { drain(&state, &name, rows, now).await }
    });
    for r in futures_util::future::join_all(futures).await {
        r?;
    }
    Ok(())
}

/// Delivers `rows` (one notifier's, oldest first) while they go through.
async fn drain(
    state: &AppState,
    name: &str,
    rows: Vec<OutboxRow>,
    now: i64,
) -> Result<(), crate::db::DbError> {
    let notifier = state
        .alerting
        .notifiers
        .iter()
        .find(|n| n.name() == name)
        .cloned();
    for row in rows {
        // Not due yet: it (and what follows it) waits for its backoff.
        if row.next_ms > now {
            return Ok(());
        }
        let outcome = attempt(notifier.as_deref(), name, &row).await;
        let kind = row.kind.as_str();
        match outcome {
            Ok(()) => {
                state.db.message_attempted(row.id, Ok(())).await?;
                let streak = state.alerting.delivery.record(name, Ok(()));
                state.metrics.notification(name, kind, "sent", streak);
                tracing::info!(notifier = name, message = %row.message_id, kind, "alert message delivered");
            }
            Err(e) => {
                let text = e.to_string();
                let streak = state.alerting.delivery.record(name, Err(text.clone()));
                let attempts = row.attempts + 1;
                let age = now_ms() - row.created_ms;
                let give_up = !e.retryable()
                    || age >= i64::try_from(GIVE_UP_AFTER.as_millis()).unwrap_or(i64::MAX);
                let next = (!give_up).then(|| {
                    let jitter = f64::from(rand::random::<u16>()) / f64::from(u16::MAX);
                    now_ms()
                        + i64::try_from(backoff(attempts, jitter).as_millis()).unwrap_or(i64::MAX)
                });
                state
                    .db
                    .message_attempted(row.id, Err((&text, next)))
                    .await?;
                if give_up {
                    state.metrics.notification(name, kind, "dropped", streak);
                    tracing::error!(notifier = name, message = %row.message_id, kind, error = %text, "alert message given up");
                    continue;
                }
                state.metrics.notification(name, kind, "failed", streak);
                tracing::warn!(notifier = name, message = %row.message_id, kind, attempts, error = %text, "alert message not delivered; retried with backoff");
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn attempt(
    notifier: Option<&dyn Notifier>,
    name: &str,
    row: &OutboxRow,
) -> Result<(), NotifyError> {
    let Some(n) = notifier else {
        return Err(NotifyError::Refused {
            receiver: name.to_owned(),
            detail: format!(
                "no notifier named `{name}` in controller.yaml `alerting.notifiers` any more"
            ),
            retryable: false,
            retry_after: None,
        });
    };
    let message: Message = serde_json::from_str(&row.body).map_err(|e| NotifyError::Refused {
        receiver: name.to_owned(),
        detail: format!("stored message {} is unreadable: {e}", row.message_id),
        retryable: false,
        retry_after: None,
    })?;
    n.send(&message).await
}

/// The notifiers a message goes to: `targets` less those the message is about (a
/// `NotifierFailing` alert is not sent through the notifier that fails).
pub fn exclude_subjects(targets: BTreeSet<String>, about: &[String]) -> BTreeSet<String> {
    targets.into_iter().filter(|t| !about.contains(t)).collect()
}

/// The runtime a serving controller shares with its alert tasks.
pub struct Runtime {
    /// The settings.
    pub settings: super::settings::Settings,
    /// The notifiers, by their names in controller.yaml.
    pub notifiers: Vec<Arc<dyn Notifier>>,
    /// How they are doing.
    pub delivery: DeliveryHealth,
    /// The heartbeat's record.
    pub heartbeat: super::heartbeat::HeartbeatHealth,
    /// Wakes the delivery worker.
    pub wake_delivery: tokio::sync::Notify,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("settings", &self.settings)
            .field(
                "notifiers",
                &self
                    .notifiers
                    .iter()
                    .map(|n| n.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime with these settings and notifiers.
    pub fn new(settings: super::settings::Settings, notifiers: Vec<Arc<dyn Notifier>>) -> Runtime {
        Runtime {
            settings,
            notifiers,
            delivery: DeliveryHealth::default(),
            heartbeat: super::heartbeat::HeartbeatHealth::default(),
            wake_delivery: tokio::sync::Notify::new(),
        }
    }
}

impl Runtime {
    /// The runtime of controller.yaml's `alerting:` section. The notifiers contact nobody
    /// when built; a receiver that cannot be reached shows at its first message.
    pub fn of(a: &crate::notify::config::Alerting) -> Runtime {
        let notifiers = match crate::notify::registry::build_all(a) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the alert notifiers; alerts are kept and shown, not sent");
                Vec::new()
            }
        };
        Runtime::new(super::settings::Settings::from(a), notifiers)
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new(super::settings::Settings::default(), Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes_with_jitter() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(5));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(10));
        assert_eq!(backoff(4, 0.5), Duration::from_secs(40));
        assert_eq!(backoff(30, 0.5), MAX_BACKOFF);
        assert_eq!(backoff(1, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(6));
    }

    #[test]
    fn a_failing_notifier_is_reported_after_three_failures_and_cleared_by_a_success() {
        let h = DeliveryHealth::default();
        for _ in 0..2 {
            h.record("slack", Err("503".into()));
        }
        assert!(h.failing().is_empty());
        h.record("slack", Err("503".into()));
        let f = h.failing();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].name.as_str(), f[0].streak, f[0].error.as_str()),
            ("slack", 3, "503")
        );
        h.record("slack", Ok(()));
        assert!(h.failing().is_empty());
    }
}
