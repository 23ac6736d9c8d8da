//! The alerting's settings as the runner uses them (made from controller.yaml `alerting:`):
//! the engine's timing, where links point, the heartbeat and the routes from severities to
//! notifiers.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_config::alerts::Severity;

use super::engine::{Route, Timing};
use super::text::Links;

/// The dead man's switch: a GET to `url` every `interval` while the alert engine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Where (e.g. a healthchecks.io check's ping URL).
    pub url: String,
    /// How often.
    pub interval: Duration,
    /// One ping's time limit.
    pub timeout: Duration,
}

/// One route: alerts of these severities go to these notifiers, and when escalated also to
/// `escalate_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// The severities it takes.
    pub severities: Vec<Severity>,
    /// Notifier names.
    pub notifiers: Vec<String>,
    /// Notifier names for escalations.
    pub escalate_to: Vec<String>,
}

/// The runner's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How often the engine runs.
    pub evaluate_every: Duration,
    /// Its timing.
    pub timing: Timing,
    /// Where links point.
    pub links: Links,
    /// The dead man's switch, if configured.
    pub heartbeat: Option<Heartbeat>,
    /// Routes, every matching one taken.
    pub routes: Vec<RouteRule>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            evaluate_every: Duration::from_secs(5),
            timing: Timing::default(),
            links: Links {
                runbook_url_base: "runbooks/".into(),
                external_url: None,
            },
            heartbeat: None,
            routes: Vec::new(),
        }
    }
}

impl Settings {
    /// The notifiers a message of `severity` goes to on `route`: every route that takes the
    /// severity contributes.
    pub fn targets(&self, severity: Severity, route: Route) -> BTreeSet<String> {
        self.routes
            .iter()
            .filter(|r| r.severities.contains(&severity))
            .flat_map(|r| match route {
                Route::Normal => r.notifiers.iter(),
                Route::Escalation => r.escalate_to.iter(),
            })
            .cloned()
            .collect()
    }
}
