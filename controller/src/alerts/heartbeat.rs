//! The dead man's switch: while the leader's alert engine runs, it sends a GET to
//! `alerting.heartbeat.url` every `interval` (the healthchecks.io pattern), so a controller that
//! dies, hangs or loses its network is noticed from outside, by a service that alerts when the
//! pings stop. A heartbeat that fails is counted, and failing for
//! `alerts.heartbeat_missed_after` is itself an alert (`MonitoringDown`): the outside monitor
//! then believes this controller is down, or cannot be told otherwise.

use std::sync::Mutex;

use super::facts::HeartbeatFailing;
use super::settings::Heartbeat;
use crate::db::now_ms;

/// The heartbeat's record.
#[derive(Debug, Default)]
pub struct HeartbeatHealth {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_sent_ms: Option<i64>,
    failing: Option<HeartbeatFailing>,
    in_flight: bool,
}

impl HeartbeatHealth {
    /// Whether a heartbeat is due at `now` (and none is in flight); marks it sent.
    fn due(&self, every_ms: i64, now: i64) -> bool {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = !s.in_flight && s.last_sent_ms.is_none_or(|t| now - t >= every_ms);
        if due {
            s.in_flight = true;
            s.last_sent_ms = Some(now);
        }
        due
    }

    fn done(&self, result: Result<(), String>, at: i64) {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.in_flight = false;
        match result {
            Ok(()) => s.failing = None,
            Err(error) => match &mut s.failing {
                Some(f) => f.error = error,
                None => {
                    s.failing = Some(HeartbeatFailing {
                        since_ms: at,
                        error,
                    })
                }
            },
        }
    }

    /// Since when heartbeats fail, if they do.
    pub fn failing(&self) -> Option<HeartbeatFailing> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .failing
            .clone()
    }
}

/// Sends a heartbeat in the background if one is due (never holds up the caller).
pub fn beat(state: &crate::state::AppState, hb: &Heartbeat) {
    let now = now_ms();
    let every = i64::try_from(hb.interval.as_millis()).unwrap_or(i64::MAX);
    if !state.alerting.heartbeat.due(every, now) {
        return;
    }
    let state = state.clone();
    let hb = hb.clone();
    tokio::spawn(async move {
        let result = ping(&hb).await;
        let at = now_ms();
        state.metrics.heartbeat(result.is_ok(), at);
        if let Err(e) = &result {
            tracing::warn!(url = %redact(&hb.url), error = %e, "heartbeat to the dead man's switch failed");
        }
        state.alerting.heartbeat.done(result, at);
    });
}

async fn ping(hb: &Heartbeat) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(hb.timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .get(&hb.url)
        .header(
            "user-agent",
            concat!("fleet-controller/", env!("CARGO_PKG_VERSION")),
        )
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", redact(&hb.url)))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(format!("{} answered {}", redact(&hb.url), answer.status()))
    }
}

/// The URL without its path (a ping URL's path is its secret).
fn redact(url: &str) -> String {
    match url.find("://").map(|i| i + 3) {
        Some(start) => match url[start..].find('/') {
            Some(slash) => format!("{}/…", &url[..start + slash]),
            None => url.to_owned(),
        },
        None => "the heartbeat URL".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_due_once_per_interval_and_never_twice_in_flight() {
        let h = HeartbeatHealth::default();
        assert!(h.due(60_000, 0));
        assert!(!h.due(60_000, 70_000), "one in flight");
        h.done(Err("refused".into()), 1_000);
        assert!(!h.due(60_000, 30_000));
        assert!(h.due(60_000, 70_000));
        h.done(Err("refused again".into()), 71_000);
        let f = h.failing().expect("failing");
        assert_eq!(f.since_ms, 1_000, "since the first failure");
        assert_eq!(f.error, "refused again");
        assert!(h.due(60_000, 140_000));
        h.done(Ok(()), 140_500);
        assert!(h.failing().is_none());
    }

    #[test]
    fn the_ping_urls_path_is_not_logged() {
        assert_eq!(
            redact("https://hc-ping.com/5f0e-secret"),
            "https://hc-ping.com/…"
        );
        assert_eq!(redact("http://127.0.0.1:9/x/y"), "http://127.0.0.1:9/…");
    }
}
