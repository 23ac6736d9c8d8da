//! Notifiers: thin adapters that deliver one alert message to one receiver (a generic JSON
//! webhook, Slack, Telegram, e-mail over SMTP). They know nothing of the alert engine: it
//! decides what to say and to whom (the `alerts` module), the delivery worker retries; a
//! notifier makes one attempt and says how it went.
//!
//! - [`config`]: the `alerting:` section of controller.yaml (notifiers, routes, timings).
//! - [`registry`]: the notifiers built from it, and which of them a severity goes to.
//! - [`webhook`], [`slack`], [`telegram`], [`email`]: one adapter each.
//! - `text` and `http`: what the adapters share (wording and limits; HTTP and secret files).
//!
//! Every adapter reads its secret files at each send (a rotated secret needs no restart), never
//! logs a secret, and maps what the receiver answered to a [`NotifyError`] whose
//! [`NotifyError::retryable`] tells the delivery worker whether to try again.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub mod config;
pub mod email;
mod http;
pub mod registry;
pub mod slack;
pub mod telegram;
mod text;
pub mod webhook;

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
    /// The alert on the dashboard, when `alerting.external_url` is set.
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
        /// How long the receiver asked to wait before the next attempt (HTTP `Retry-After`,
        /// Telegram's `parameters.retry_after`), when it said.
        retry_after: Option<Duration>,
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

    /// How long the receiver asked to wait before trying again, if it said (a 429's
    /// `Retry-After`); the delivery worker waits at least this long.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NotifyError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl Message {
    /// The message `fleet-controller notifiers test` sends: kind [`MessageKind::Test`], about
    /// the always-firing [`AlertName::Watchdog`] (the alerting pipeline works), with the
    /// runbook link an alert would carry so the operator sees how links render.
    pub fn test(fleet: &str, runbook_url: String, now_ms: i64) -> Message {
        Message {
            id: format!("test-{now_ms}"),
            alert_id: "test".to_owned(),
            alert: AlertName::Watchdog,
            severity: AlertName::Watchdog.severity(),
            kind: MessageKind::Test,
            summary: "Test message: this notifier delivers".to_owned(),
            description: "Alerts reach this receiver and look like this message.".to_owned(),
            devices: Vec::new(),
            devices_total: 0,
            runbook_url,
            dashboard_url: None,
            started_ms: now_ms,
            resolved_ms: None,
            fleet: fleet.to_owned(),
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
