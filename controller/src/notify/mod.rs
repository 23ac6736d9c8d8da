//! Notifiers: thin adapters that deliver one alert message to one receiver (a generic JSON
//! webhook, Slack, Telegram, e-mail over SMTP). They know nothing of the alert engine: it
//! decides what to say and to whom (the `alerts` module), the delivery worker retries; a
//! notifier makes one attempt and says how it went.

use std::future::Future;
use std::pin::Pin;

use fleet_config::alerts::{AlertName, Severity};
use serde::{Deserialize, Serialize};

/// Why a message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// The alert started firing.
    Firing,
    /// Still firing, and what it concerns changed (devices joined or left).
    Updated,
    /// Still firing and not acknowledged: said again (critical alerts, `repeat_interval`).
    Reminder,
    /// Not acknowledged within `escalate_after`: sent to the escalation route.
    Escalation,
    /// It stopped firing.
    Resolved,
    /// A test message an operator asked for (`fleet-controller notifiers test`).
    Test,
}

impl MessageKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Firing => "firing",
            MessageKind::Updated => "updated",
            MessageKind::Reminder => "reminder",
            MessageKind::Escalation => "escalation",
            MessageKind::Resolved => "resolved",
            MessageKind::Test => "test",
        }
    }
}

/// One message about one alert, as every notifier renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique per message and stable across retries (receivers may drop duplicates by it).
    pub id: String,
    /// The alert's id in the controller (`fleetctl alerts ack ID`).
    pub alert_id: String,
    /// Which alert.
    pub alert: AlertName,
    /// How urgent.
    pub severity: Severity,
    /// Why it is sent.
    pub kind: MessageKind,
    /// One line a person reads at 3 a.m.: what is wrong, where, how much.
    pub summary: String,
    /// What is known and what to do next (a few lines, plain text).
    pub description: String,
    /// The devices concerned (at most [`MAX_DEVICES_LISTED`]); empty for fleet-wide alerts.
    pub devices: Vec<String>,
    /// How many devices are concerned in all (may exceed `devices.len()`).
    pub devices_total: u64,
    /// Where the runbook is: `<alerting.runbook_url_base><AlertName>.md`.
    pub runbook_url: String,
    /// The alert on the dashboard, when `alerting.dashboard_url` is set.
    pub dashboard_url: Option<String>,
    /// When the alert started firing, ms since the epoch.
    pub started_ms: i64,
    /// When it resolved, for [`MessageKind::Resolved`].
    pub resolved_ms: Option<i64>,
    /// The fleet's name (fleet.yaml), so one receiver can serve several fleets.
    pub fleet: String,
}

/// A message lists at most this many devices by name.
pub const MAX_DEVICES_LISTED: usize = 20;

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The receiver could not be reached (DNS, connection, TLS, timeout).
    #[error("cannot reach {receiver}: {detail}")]
    Unreachable {
        /// The receiver (URL without secrets, or SMTP host:port).
        receiver: String,
        /// What failed.
        detail: String,
    },
    /// The receiver answered and refused the message.
    #[error("{receiver} refused the message: {detail}")]
    Refused {
        /// The receiver.
        receiver: String,
        /// Its status and answer.
        detail: String,
        /// Whether trying again may help (5xx, 429) or not (4xx).
        retryable: bool,
    },
    /// The notifier's own settings cannot work (a secret file unreadable, a bad address).
    #[error("{0}")]
    Config(String),
}

impl NotifyError {
    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            NotifyError::Unreachable { .. } => true,
            NotifyError::Refused { retryable, .. } => *retryable,
            NotifyError::Config(_) => true,
        }
    }
}

/// A boxed future, for the object-safe [`Notifier`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One configured receiver.
pub trait Notifier: Send + Sync {
    /// Its name in controller.yaml.
    fn name(&self) -> &str;
    /// Its kind: `webhook`, `slack`, `telegram` or `email`.
    fn kind(&self) -> &'static str;
    /// One attempt to deliver `message`.
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>>;
}
