//! The notifiers built from the `alerting:` section, and the answer to "which notifiers does an
//! alert of this severity go to, and which when it escalates" (from the routes; the rule is in
//! [`super::config`]). Building contacts no receiver and reads no secret file, so an
//! unreachable receiver or a missing file never stops the controller from starting: they show
//! at the first send (and in `fleet-controller notifiers test`).

use std::sync::Arc;

use fleet_config::alerts::Severity;
use fleet_config::decode::suggest;

use super::config::{Alerting, NotifierKind};
use super::email::EmailNotifier;
use super::http::USER_AGENT;
use super::slack::SlackNotifier;
use super::telegram::TelegramNotifier;
use super::webhook::WebhookNotifier;
use super::{Message, Notifier, NotifyError};

/// Why the notifiers cannot be built or picked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The HTTP client could not be set up (the TLS library failed to start).
    #[error("cannot set up the notifiers' HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// `--name` names no configured notifier.
    #[error("no notifier `{name}`{hint}; the notifiers are: {known}")]
    UnknownNotifier {
        /// The name asked for.
        name: String,
        /// ` (did you mean …?)`, or empty.
        hint: String,
        /// The configured names.
        known: String,
    },
    /// `alerting.notifiers` is empty.
    #[error("no notifier is configured (`alerting.notifiers` in controller.yaml): alerts are kept and shown, not sent")]
    NoNotifiers,
}

/// The HTTP client the webhook, Slack and Telegram notifiers share: `User-Agent:
/// fleet-controller/<version>`, redirects not followed (a receiver's URL is configured
/// exactly; following one could carry a token elsewhere). Each request sets its own timeout.
pub fn http_client() -> Result<reqwest::Client, RegistryError> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(RegistryError::HttpClient)
}

/// One notifier per entry of `alerting.notifiers`, in order.
pub fn build_all(alerting: &Alerting) -> Result<Vec<Arc<dyn Notifier>>, RegistryError> {
    let http = http_client()?;
    Ok(alerting
        .notifiers
        .iter()
        .map(|n| -> Arc<dyn Notifier> {
            match &n.kind {
                NotifierKind::Webhook(c) => Arc::new(WebhookNotifier::new(
                    &n.name,
                    c.clone(),
                    n.timeout,
                    http.clone(),
                )),
                NotifierKind::Slack(c) => Arc::new(SlackNotifier::new(
                    &n.name,
                    c.clone(),
                    n.timeout,
                    http.clone(),
                )),
                NotifierKind::Telegram(c) => Arc::new(TelegramNotifier::new(
                    &n.name,
                    c.clone(),
                    n.timeout,
                    http.clone(),
                )),
                NotifierKind::Email(c) => {
                    Arc::new(EmailNotifier::new(&n.name, c.clone(), n.timeout))
                }
            }
        })
        .collect())
}

/// The configured notifiers and the routes between severities and them.
pub struct Registry {
    alerting: Alerting,
    notifiers: Vec<Arc<dyn Notifier>>,
}

impl Registry {
    /// Builds every notifier of `alerting`.
    pub fn new(alerting: &Alerting) -> Result<Registry, RegistryError> {
        Ok(Registry {
            notifiers: build_all(alerting)?,
            alerting: alerting.clone(),
        })
    }

    /// The configuration it was built from (timings, runbook base, external URL).
    pub fn alerting(&self) -> &Alerting {
        &self.alerting
    }

    /// Every notifier, in configuration order.
    pub fn notifiers(&self) -> &[Arc<dyn Notifier>] {
        &self.notifiers
    }

    /// The notifier named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Notifier>> {
        self.notifiers.iter().find(|n| n.name() == name).cloned()
    }

    fn by_names(&self, names: Vec<&str>) -> Vec<Arc<dyn Notifier>> {
        names.into_iter().filter_map(|n| self.get(n)).collect()
    }

    /// Where an alert of `severity` is sent (every matching route; each notifier once).
    /// Empty: it is kept and shown, not sent.
    pub fn for_severity(&self, severity: Severity) -> Vec<Arc<dyn Notifier>> {
        self.by_names(self.alerting.notifiers_for(severity))
    }

    /// Where an unacknowledged alert of `severity` also goes after `escalate_after` (the
    /// matching routes' `escalate_to`; only critical routes have one).
    pub fn escalation_for(&self, severity: Severity) -> Vec<Arc<dyn Notifier>> {
        self.by_names(self.alerting.escalation_for(severity))
    }

    /// Every notifier, or the one named `only`.
    pub fn select(&self, only: Option<&str>) -> Result<Vec<Arc<dyn Notifier>>, RegistryError> {
        if self.notifiers.is_empty() {
            return Err(RegistryError::NoNotifiers);
        }
        let Some(name) = only else {
            return Ok(self.notifiers.clone());
        };
        self.get(name).map(|n| vec![n]).ok_or_else(|| {
            let names: Vec<&str> = self.notifiers.iter().map(|n| n.name()).collect();
            RegistryError::UnknownNotifier {
                name: name.to_owned(),
                hint: suggest(name, &names)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default(),
                known: names.join(", "),
            }
        })
    }

    /// The message `notifiers test` sends, with the runbook link alerts carry.
    pub fn test_message(&self, fleet: &str, now_ms: i64) -> Message {
        let alert = fleet_config::alerts::AlertName::Watchdog;
        Message::test(fleet, self.alerting.runbook_url(alert), now_ms)
    }
}

/// How the test message fared with one notifier.
pub struct TestOutcome {
    /// The notifier's name.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Delivered, or why not.
    pub result: Result<(), NotifyError>,
}

impl std::fmt::Display for TestOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(()) => write!(f, "ok      {} ({}): delivered", self.name, self.kind),
            Err(e) => write!(
                f,
                "FAILED  {} ({}): {e}{}",
                self.name,
                self.kind,
                if e.retryable() {
                    ""
                } else {
                    " (retrying will not help: fix the receiver or the configuration)"
                }
            ),
        }
    }
}

/// Sends `message` through each of `notifiers` at once (a slow receiver delays no other) and
/// reports each outcome, in the order given (the caller prints them; nothing is logged here).
pub async fn send_each(notifiers: &[Arc<dyn Notifier>], message: &Message) -> Vec<TestOutcome> {
    let sends = notifiers.iter().map(|n| async move {
        let result = n.send(message).await;
        TestOutcome {
            name: n.name().to_owned(),
            kind: n.kind(),
            result,
        }
    });
    futures_util::future::join_all(sends).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerting(yaml: &str) -> Alerting {
        crate::config::ControllerConfig::parse(yaml, "c.yaml")
            .expect("valid")
            .alerting
    }

    const ROUTED: &str = "alerting:\n  notifiers:\n\
        \x20   - { name: slack, kind: slack, url_file: /s }\n\
        \x20   - { name: pager, kind: webhook, url: 'http://127.0.0.1:9/x' }\n\
        \x20   - { name: mail, kind: email, smtp: '127.0.0.1:25', security: none, from: a@example.com, to: b@example.com }\n\
        \x20   - { name: tg, kind: telegram, bot_token_file: /t, chat_id: '-1' }\n\
        \x20 routes:\n\
        \x20   - { severity: critical, notifiers: [slack, pager], escalate_to: [mail] }\n\
        \x20   - { severity: [warning, info], notifiers: [tg] }\n\
        \x20   - { notifiers: [pager] }\n";

    #[test]
    fn severities_go_to_every_matching_route_each_notifier_once() {
        let r = Registry::new(&alerting(ROUTED)).expect("registry");
        let names =
            |v: Vec<Arc<dyn Notifier>>| v.iter().map(|n| n.name().to_owned()).collect::<Vec<_>>();
        assert_eq!(
            names(r.for_severity(Severity::Critical)),
            ["slack", "pager"]
        );
        assert_eq!(names(r.for_severity(Severity::Warning)), ["tg", "pager"]);
        assert_eq!(names(r.escalation_for(Severity::Critical)), ["mail"]);
        assert!(r.escalation_for(Severity::Warning).is_empty());
        let kinds: Vec<&str> = r.notifiers().iter().map(|n| n.kind()).collect();
        assert_eq!(kinds, ["slack", "webhook", "email", "telegram"]);
    }

    #[test]
    fn without_routes_nothing_is_sent_and_a_name_is_suggested() {
        let r = Registry::new(&Alerting::default()).expect("registry");
        assert!(r.for_severity(Severity::Critical).is_empty());
        assert!(matches!(r.select(None), Err(RegistryError::NoNotifiers)));
        let r = Registry::new(&alerting(ROUTED)).expect("registry");
        let e = r.select(Some("slak")).err().expect("unknown");
        assert_eq!(
            e.to_string(),
            "no notifier `slak` (did you mean `slack`?); the notifiers are: slack, pager, mail, tg"
        );
        assert_eq!(r.select(Some("tg")).expect("tg").len(), 1);
    }
}
