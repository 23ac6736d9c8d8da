//! Slack incoming webhooks: a JSON POST with `text` (the notification and fallback text) and
//! `blocks` (header, summary and description, facts, devices, what to do next), each within
//! Slack's documented limits (header text 150 characters, section text 3,000, a field 2,000,
//! 50 blocks). The webhook's URL is its secret, read from `url_file` at each send and never
//! logged. Slack answers `ok` (200); `invalid_payload` (400), `action_prohibited` (403),
//! `no_service` / `channel_not_found` (404), `channel_is_archived` (410) will not pass by
//! retrying; 429 (with `Retry-After`) and 5xx may.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::Url;
use serde_json::{json, Value};

use super::config::SlackConfig;
use super::http::{self, read_secret};
use super::text::{self, StepForm};
use super::{BoxFuture, Message, MessageKind, Notifier, NotifyError};

/// Slack's limit on a header block's text.
pub const HEADER_MAX: usize = 150;
/// Slack's limit on a section block's text.
pub const SECTION_MAX: usize = 3000;
/// Slack's limit on one field of a section.
pub const FIELD_MAX: usize = 2000;
/// Slack's limit on blocks in one message.
pub const BLOCKS_MAX: usize = 50;
/// The notification text is kept to this (Slack truncates `text` past 40,000 characters; a
/// notification shows far less).
pub const TEXT_MAX: usize = 3000;

fn escape(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        _ => None,
    }
}

/// `s` as Slack mrkdwn text (`&`, `<`, `>` escaped, as Slack requires), at most `max` characters.
fn mrkdwn(s: &str, max: usize) -> String {
    text::escape_within(s, max, escape)
}

/// A link in mrkdwn: `<url|text>`; the characters that would end it are percent-encoded.
fn link(url: &str, label: &str) -> String {
    let url: String = url
        .chars()
        .map(|c| match c {
            '|' => "%7C".to_owned(),
            '<' => "%3C".to_owned(),
            '>' => "%3E".to_owned(),
            ' ' => "%20".to_owned(),
            c => c.to_string(),
        })
        .collect();
    format!("<{url}|{}>", mrkdwn(label, 200))
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
}

/// The JSON posted for `message`.
pub fn payload(message: &Message) -> Value {
    let m = message;
    let mut blocks = Vec::new();
    blocks.push(json!({
        "type": "header",
        "text": {"type": "plain_text", "text": text::truncate_chars(&text::title(m), HEADER_MAX), "emoji": true}
    }));

    let head = format!(
        "*{}*\n{}",
        mrkdwn(&text::one_line(&m.summary), 500),
        mrkdwn(&text::status_sentence(m), 500)
    );
    let main = if m.description.trim().is_empty() {
        head
    } else {
        let budget = SECTION_MAX.saturating_sub(head.chars().count() + 2);
        format!("{head}\n\n{}", mrkdwn(m.description.trim(), budget))
    };
    blocks.push(section(main));

    let mut fields = vec![
        format!("*Severity*\n{}", m.severity),
        format!("*Fleet*\n{}", mrkdwn(&m.fleet, FIELD_MAX - 10)),
    ];
    if m.devices_total > 0 || !m.devices.is_empty() {
        fields.push(format!(
            "*Devices*\n{}",
            m.devices_total
                .max(u64::try_from(m.devices.len()).unwrap_or(u64::MAX))
        ));
    }
    match (m.kind, m.resolved_ms) {
        (MessageKind::Resolved, Some(ms)) => {
            fields.push(format!("*Resolved*\n{}", crate::timefmt::utc(ms)))
        }
        (MessageKind::Test, _) => {
            fields.push(format!("*Sent*\n{}", crate::timefmt::utc(m.started_ms)))
        }
        _ => fields.push(format!(
            "*Firing since*\n{}",
            crate::timefmt::utc(m.started_ms)
        )),
    }
    blocks.push(json!({
        "type": "section",
        "fields": fields.into_iter().map(|t| json!({"type": "mrkdwn", "text": t})).collect::<Vec<_>>()
    }));

    if let Some(list) = text::devices_list(m, "`") {
        let heading = format!("*{}*\n", text::devices_heading(m));
        let budget = SECTION_MAX - heading.chars().count();
        blocks.push(section(format!("{heading}{}", mrkdwn(&list, budget))));
    }

    let mut steps = String::from("*What to do next*");
    for step in text::next_steps(m) {
        let value = match step.form {
            StepForm::Link if step.label == "Runbook" => link(&step.value, &text::runbook_name(m)),
            StepForm::Link => link(&step.value, "open the alert"),
            StepForm::Command => format!("`{}`", mrkdwn(&step.value, 500)),
            StepForm::Text => format!("`{}`", mrkdwn(&step.value, 1000)),
        };
        steps.push_str(&format!("\n• {}: {value}", step.label));
    }
    if steps.chars().count() > SECTION_MAX {
        // Absurdly long URLs: plain text, cut, rather than a broken link.
        let plain: Vec<String> = text::next_steps(m)
            .into_iter()
            .map(|s| format!("{}: {}", s.label, s.value))
            .collect();
        steps = mrkdwn(
            &format!("What to do next\n{}", plain.join("\n")),
            SECTION_MAX,
        );
    }
    blocks.push(section(steps));

    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": mrkdwn(
            &format!("alert {} · message {} · {}", m.alert_id, m.id, http::USER_AGENT),
            SECTION_MAX,
        )}]
    }));
    json!({"text": mrkdwn(&text::headline(m), TEXT_MAX), "blocks": blocks})
}

/// What to do about an error Slack names (its documented incoming-webhook errors).
fn hint(answer: &str) -> Option<&'static str> {
    Some(match answer.trim() {
        "invalid_payload" => "Slack could not read the message (a Fleet bug: please report it)",
        "no_service" | "no_service_id" | "no_team" | "team_disabled" | "invalid_token" => {
            "the webhook in url_file was removed or is wrong: create a new incoming webhook and put its URL in url_file"
        }
        "channel_not_found" => "the webhook's channel is gone: create a new incoming webhook",
        "channel_is_archived" => {
            "the webhook's channel is archived: unarchive it or create a webhook for another channel"
        }
        "action_prohibited" | "posting_to_general_channel_denied" => {
            "a Slack admin restricted posting to this channel"
        }
        "user_not_found" => "the webhook's user is gone: create a new incoming webhook",
        _ => return None,
    })
}

/// A configured Slack incoming webhook.
pub struct SlackNotifier {
    name: String,
    config: SlackConfig,
    timeout: Duration,
    http: reqwest::Client,
}

impl SlackNotifier {
    /// A Slack notifier named `name`, sending with `http`.
    pub fn new(
        name: &str,
        config: SlackConfig,
        timeout: Duration,
        http: reqwest::Client,
    ) -> SlackNotifier {
        SlackNotifier {
            name: name.to_owned(),
            config,
            timeout,
            http,
        }
    }

    async fn deliver(&self, message: &Message) -> Result<(), NotifyError> {
        let file = &self.config.url_file;
        let secret = read_secret(file, "url_file", &self.name).await?;
        let url = Url::parse(&secret)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                NotifyError::Config(format!(
                    "notifier `{}`: `url_file` {} does not hold an http(s) URL",
                    self.name,
                    file.display()
                ))
            })?;
        // The path is the secret: name the host and the file only.
        let receiver = format!(
            "Slack webhook {}://{} (url_file {})",
            url.scheme(),
            url.host_str().unwrap_or(""),
            file.display()
        );
        let body = serde_json::to_vec(&payload(message))
            .map_err(|e| NotifyError::Config(format!("cannot encode the Slack message: {e}")))?;
        let request = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let answer = http::send(request, &receiver).await?;
        if (200..300).contains(&answer.status) {
            tracing::debug!(notifier = %self.name, "slack delivered");
            return Ok(());
        }
        Err(http::refused(&receiver, &answer, hint(&answer.body)))
    }
}

impl Notifier for SlackNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "slack"
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(self.deliver(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::text::tests::offline_message;

    /// Checks a payload against Slack's documented block limits; returns every text in it.
    pub(crate) fn check_blocks(v: &Value) -> Vec<String> {
        let mut texts = Vec::new();
        let text = v["text"].as_str().expect("text");
        assert!(!text.is_empty() && text.chars().count() <= TEXT_MAX);
        let blocks = v["blocks"].as_array().expect("blocks");
        assert!(!blocks.is_empty() && blocks.len() <= BLOCKS_MAX);
        for b in blocks {
            match b["type"].as_str().expect("type") {
                "header" => {
                    assert_eq!(b["text"]["type"], "plain_text");
                    let t = b["text"]["text"].as_str().expect("header text");
                    assert!(!t.is_empty() && t.chars().count() <= HEADER_MAX, "{t}");
                    texts.push(t.to_owned());
                }
                "section" => {
                    if let Some(t) = b.get("text") {
                        assert_eq!(t["type"], "mrkdwn");
                        let t = t["text"].as_str().expect("section text");
                        assert!(
                            !t.is_empty() && t.chars().count() <= SECTION_MAX,
                            "{}",
                            t.len()
                        );
                        texts.push(t.to_owned());
                    }
                    if let Some(fields) = b.get("fields") {
                        let fields = fields.as_array().expect("fields");
                        assert!(!fields.is_empty() && fields.len() <= 10);
                        for f in fields {
                            let t = f["text"].as_str().expect("field text");
                            assert!(!t.is_empty() && t.chars().count() <= FIELD_MAX);
                            texts.push(t.to_owned());
                        }
                    }
                    assert!(b.get("text").is_some() || b.get("fields").is_some());
                }
                "context" => {
                    let elements = b["elements"].as_array().expect("elements");
                    assert!(!elements.is_empty() && elements.len() <= 10);
                    for e in elements {
                        texts.push(e["text"].as_str().expect("element text").to_owned());
                    }
                }
                other => panic!("unexpected block type {other}"),
            }
        }
        texts
    }

    #[test]
    fn the_payload_has_the_headline_the_devices_and_the_runbook() {
        let m = offline_message();
        let v = payload(&m);
        assert_eq!(
            v["text"],
            "[FIRING critical] DeviceOffline: 40 devices offline (example-fleet)"
        );
        let all = check_blocks(&v).join("\n");
        assert!(
            all.contains("<https://git.example/fleet/runbooks/DeviceOffline.md|DeviceOffline.md>"),
            "{all}"
        );
        assert!(all.contains("`fleetctl alerts ack a-17`"), "{all}");
        assert!(all.contains("`pi-01`, `pi-02`"), "{all}");
        assert!(all.contains("and 20 more"), "{all}");
        assert!(all.contains("*Devices (40)*"), "{all}");
        assert!(
            all.contains("<https://fleet.example/ui/alerts/a-17|open the alert>"),
            "{all}"
        );
    }

    #[test]
    fn text_is_escaped_and_long_text_stays_within_the_limits() {
        let mut m = offline_message();
        m.summary = "<!channel> & <@U123> *bold*".into();
        m.description = "x&<>".repeat(5000);
        m.fleet = "f".repeat(5000);
        m.devices = (0..20).map(|i| format!("{}-{i}", "d".repeat(60))).collect();
        let v = payload(&m);
        let all = check_blocks(&v).join("\n");
        assert!(
            all.contains("&lt;!channel&gt; &amp; &lt;@U123&gt;"),
            "{all}"
        );
        assert!(!all.contains("<!channel>"));
        // An escape is never cut in half.
        for t in check_blocks(&v) {
            for (i, _) in t.match_indices('&') {
                let rest = &t[i..];
                assert!(
                    rest.starts_with("&amp;")
                        || rest.starts_with("&lt;")
                        || rest.starts_with("&gt;"),
                    "cut escape in {rest:.20}"
                );
            }
        }
    }

    #[test]
    fn slack_error_names_get_a_hint() {
        assert!(hint("no_service").expect("hint").contains("url_file"));
        assert!(hint("channel_is_archived")
            .expect("hint")
            .contains("archived"));
        assert!(hint("something_else").is_none());
    }
}
