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

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl From<&crate::notify::config::Alerting> for Settings {
    fn from(a: &crate::notify::config::Alerting) -> Settings {
        Settings {
            evaluate_every: a.evaluate_every,
            timing: Timing {
                group_wait_ms: ms(a.group_wait),
                group_interval_ms: ms(a.group_interval),
                repeat_interval_ms: ms(a.repeat_interval),
                escalate_after_ms: ms(a.escalate_after),
                resolve_after_ms: ms(a.resolve_after),
            },
            links: Links {
                runbook_url_base: a.runbook_url_base.clone(),
                external_url: a.external_url.clone(),
            },
            heartbeat: a.heartbeat.as_ref().map(|h| Heartbeat {
                url: h.url.to_string(),
                interval: h.interval,
                timeout: h.timeout,
            }),
            routes: a
                .routes
                .iter()
                .map(|r| RouteRule {
                    severities: r.severities.clone(),
                    notifiers: r.notifiers.clone(),
                    escalate_to: r.escalate_to.clone(),
                })
                .collect(),
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
