//! `fleetctl devices logs ID`: asks a device for a fresh tail of its logs, waits for a tail
//! newer than the request (polling the controller, bounded by `--wait`), and prints it grouped
//! by source. The controller never connects to the device: the request rides on the answer to
//! its next check-in and the tail on the one after, so a device that long-polls answers in
//! seconds and one that does not within about its check-in interval.

use std::time::Duration;

use fleet_config::protocol::logs::{LogStatus, LogStream, LogTail};
use serde_json::Value;

use crate::api::{ago, Api, CtlError};

/// How often the controller is asked whether the tail arrived.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// What to ask for and how long to wait.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The device.
    pub id: String,
    /// Lines per source (the controller's default when `None`).
    pub lines: Option<u32>,
    /// Only these sources (`agent`, stacks, services, `stack/service`).
    pub services: Vec<String>,
    /// Longest wait for the tail.
    pub wait: Duration,
    /// Print the controller's JSON instead of text.
    pub json: bool,
}

/// Asks, waits and renders (see the module's doc). A tail that answers the request (or a newer
/// one) is the output; past `wait`, the newest tail there is is printed with how old it is and
/// the command fails; a device that never checked in fails at once.
pub async fn fetch(api: &Api, ask: &Ask) -> Result<String, CtlError> {
    let asked = api.request_logs(&ask.id, ask.lines, &ask.services).await?;
    let id = &ask.id;
    let request = asked["request"]["id"]
        .as_u64()
        .ok_or_else(|| CtlError::Refused {
            status: 200,
            message: format!("the controller's answer names no request: {asked}"),
        })?;
    if asked["last_seen_ms"].is_null() {
        return Err(CtlError::Local(format!(
            "device `{id}` has never checked in: it is asked for its logs at its first check-in; \
             run this again once `fleetctl devices show {id}` shows a last check-in"
        )));
    }
    let started = tokio::time::Instant::now();
    loop {
        let v = api.device_logs(id).await?;
        let answered = v["tail"]["request_id"]
            .as_u64()
            .is_some_and(|t| t >= request);
        if answered {
            return Ok(output(&v, ask.json, crate::now_ms()));
        }
        if started.elapsed() >= ask.wait {
            let now = crate::now_ms();
            let last = ago(&v["last_seen_ms"], now);
            let shown = match v["received_ms"].as_i64() {
                Some(_) => format!(
                    "the logs shown are older: received {}",
                    ago(&v["received_ms"], now)
                ),
                None => "no logs were ever received from it".to_owned(),
            };
            return Err(CtlError::Partial {
                output: if v["tail"].is_null() && !ask.json {
                    String::new()
                } else {
                    output(&v, ask.json, now)
                },
                message: format!(
                    "device `{id}` has not answered within {} s (its last check-in: {last}; agent {}); \
                     {shown}. It is asked again at each check-in for 15 minutes",
                    ask.wait.as_secs(),
                    v["agent_version"].as_str().unwrap_or("?"),
                ),
            });
        }
        tokio::time::sleep(POLL_EVERY.min(ask.wait.saturating_sub(started.elapsed()))).await;
    }
}

fn output(v: &Value, json: bool, now_ms: i64) -> String {
    if json {
        return format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default());
    }
    match serde_json::from_value::<LogTail>(v["tail"].clone()) {
        Ok(t) => render(&t, v["received_ms"].as_i64(), now_ms),
        Err(_) => String::new(),
    }
}

/// `2026-11-30 00:53:20.042` (UTC) from milliseconds since the epoch.
pub fn when(ms: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return "?".into();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn status_text(s: LogStatus) -> &'static str {
    match s {
        LogStatus::Ok => "",
        LogStatus::NoLogs => "no logs",
        LogStatus::Gone => "gone",
        LogStatus::NotFound => "not found",
        LogStatus::Unavailable => "unavailable",
        LogStatus::Unknown => "unknown status",
    }
}

/// A tail as text, grouped by source: a header line per source (its container, its status,
/// lines left out), then its lines with their time (UTC) and stream.
pub fn render(t: &LogTail, received_ms: Option<i64>, now_ms: i64) -> String {
    let mut out = String::new();
    if let Some(at) = received_ms {
        out.push_str(&format!(
            "# logs of request {}, received {}{}\n",
            t.request_id,
            ago(&Value::from(at), now_ms),
            if t.truncated {
                "; some lines were left out to keep within the bounds"
            } else {
                ""
            }
        ));
    }
    for s in &t.sources {
        let mut head = format!("== {}", s.name);
        if let Some(c) = &s.container {
            head.push_str(&format!(" (container {c})"));
        }
        let status = status_text(s.status);
        if !status.is_empty() {
            head.push_str(&format!(": {status}"));
        }
        if let Some(d) = &s.detail {
            head.push_str(&format!(": {d}"));
        }
        if s.omitted > 0 {
            head.push_str(&format!(" ({} older lines not shown)", s.omitted));
        }
        head.push_str(" ==\n");
        out.push_str(&head);
        for l in &s.lines {
            let at = l.at_ms.map(when).unwrap_or_else(|| " ".repeat(23));
            let stream = match l.stream {
                Some(LogStream::Stdout) => "stdout ",
                Some(LogStream::Stderr) => "stderr ",
                Some(LogStream::Other) => "other  ",
                None => "",
            };
            out.push_str(&format!("{at} {stream}{}\n", l.text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_config::protocol::logs::{LogLine, LogSource};

    #[test]
    fn a_tail_is_grouped_by_source_with_times_streams_and_statuses() {
        let t = LogTail {
            request_id: 9,
            collected_ms: 0,
            sources: vec![
                LogSource {
                    name: "agent".into(),
                    container: None,
                    status: LogStatus::Ok,
                    detail: None,
                    lines: vec![LogLine {
                        at_ms: Some(1_796_000_000_042),
                        stream: None,
                        text: "INFO  fleet_agent: checked in".into(),
                    }],
                    omitted: 3,
                },
                LogSource {
                    name: "app/web".into(),
                    container: Some("ns-app-web".into()),
                    status: LogStatus::Ok,
                    detail: None,
                    lines: vec![LogLine {
                        at_ms: Some(1_796_000_001_000),
                        stream: Some(LogStream::Stderr),
                        text: "oops".into(),
                    }],
                    omitted: 0,
                },
                LogSource::empty("app/side", LogStatus::NoLogs, None),
                LogSource::empty(
                    "nope",
                    LogStatus::NotFound,
                    Some("no container of a stack or service `nope`".into()),
                ),
            ],
            truncated: false,
        };
        assert_eq!(
            render(&t, Some(1_796_000_002_000), 1_796_000_007_000),
            "# logs of request 9, received 5s ago\n\
             == agent (3 older lines not shown) ==\n\
             2026-11-30 00:53:20.042 INFO  fleet_agent: checked in\n\
             == app/web (container ns-app-web) ==\n\
             2026-11-30 00:53:21.000 stderr oops\n\
             == app/side: no logs ==\n\
             == nope: not found: no container of a stack or service `nope` ==\n"
        );
    }
}
