//! Telegram, through a bot: the Bot API's `sendMessage` (`POST <api_url>/bot<token>/sendMessage`,
//! JSON `chat_id`, `text`, `parse_mode: "HTML"`, `disable_web_page_preview`). The text is HTML
//! with every `&`, `<`, `>` and `"` of the message escaped, and at most 4,096 characters after
//! entity parsing (counted in UTF-16 code units, as Telegram does): the description, then the
//! device list, then the summary are shortened first, so the title and what to do next always
//! arrive. The token is part of the URL: it is read from `bot_token_file` at each send, and
//! no error or log line carries the URL.
//!
//! Answers: `{"ok":true,…}` is success; `{"ok":false,"error_code":…,"description":…,
//! "parameters":{"retry_after":…}}` is an error, retryable for 429 (waiting `retry_after`) and
//! 5xx, not for 400/401/403/404.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::json;

use super::config::TelegramConfig;
use super::http::{self, read_secret};
use super::text::{self, StepForm};
use super::{BoxFuture, Message, Notifier, NotifyError};

/// Telegram's limit on a message's text, after entity parsing.
pub const TEXT_MAX: usize = 4096;

/// How a part of the text is shown.
#[derive(Debug, Clone, PartialEq)]
enum Style {
    Plain,
    Bold,
    Code,
    Link(String),
}

/// A piece of the message; `shrink` orders which pieces give way when the text is too long.
struct Part {
    text: String,
    style: Style,
    shrink: Option<u8>,
}

fn part(text: impl Into<String>, style: Style) -> Part {
    Part {
        text: text.into(),
        style,
        shrink: None,
    }
}

fn shrinkable(text: impl Into<String>, order: u8) -> Part {
    Part {
        text: text.into(),
        style: Style::Plain,
        shrink: Some(order),
    }
}

/// Escapes text for Telegram's HTML parse mode.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn parts(m: &Message) -> Vec<Part> {
    let mut p = vec![
        part(text::title(m), Style::Bold),
        part(format!(" · {}\n", text::one_line(&m.fleet)), Style::Plain),
        shrinkable(text::one_line(&m.summary), 3),
        part(format!("\n{}\n", text::status_sentence(m)), Style::Plain),
    ];
    if !m.description.trim().is_empty() {
        p.push(part("\n", Style::Plain));
        p.push(shrinkable(m.description.trim(), 1));
        p.push(part("\n", Style::Plain));
    }
    if let Some(list) = text::devices_list(m, "") {
        p.push(part(
            format!("\n{}: ", text::devices_heading(m)),
            Style::Plain,
        ));
        p.push(shrinkable(list, 2));
        p.push(part("\n", Style::Plain));
    }
    for step in text::next_steps(m) {
        p.push(part(format!("\n{}: ", step.label), Style::Plain));
        p.push(match step.form {
            StepForm::Link if step.label == "Runbook" => {
                part(text::runbook_name(m), Style::Link(step.value))
            }
            StepForm::Link => part("open the alert", Style::Link(step.value)),
            StepForm::Command | StepForm::Text => part(step.value, Style::Code),
        });
    }
    p.push(part(
        format!("\n\nalert {} · message {}", m.alert_id, m.id),
        Style::Plain,
    ));
    p
}

fn visible_len(parts: &[Part]) -> usize {
    parts.iter().map(|p| text::utf16_len(&p.text)).sum()
}

/// The HTML text sent for `message`: at most [`TEXT_MAX`] UTF-16 code units once Telegram has
/// parsed its entities.
pub fn render(message: &Message) -> String {
    let mut parts = parts(message);
    for order in 1..=3 {
        let total = visible_len(&parts);
        if total <= TEXT_MAX {
            break;
        }
        let excess = total - TEXT_MAX;
        for p in parts.iter_mut().filter(|p| p.shrink == Some(order)) {
            let len = text::utf16_len(&p.text);
            p.text = text::truncate_utf16(&p.text, len.saturating_sub(excess));
        }
    }
    if visible_len(&parts) > TEXT_MAX {
        // Only absurd titles, fleet names or URLs get here: plain text, cut.
        let plain: String = parts.iter().map(|p| p.text.as_str()).collect();
        return escape_html(&text::truncate_utf16(&plain, TEXT_MAX));
    }
    parts
        .iter()
        .map(|p| {
            let t = escape_html(&p.text);
            match &p.style {
                Style::Plain => t,
                Style::Bold => format!("<b>{t}</b>"),
                Style::Code => format!("<code>{t}</code>"),
                Style::Link(url) => format!("<a href=\"{}\">{t}</a>", escape_html(url)),
            }
        })
        .collect()
}

/// The JSON body of `sendMessage` for `message` to `chat_id`.
pub fn request_body(message: &Message, chat_id: &str) -> serde_json::Value {
    json!({
        "chat_id": chat_id,
        "text": render(message),
        "parse_mode": "HTML",
        "disable_web_page_preview": true,
    })
}

/// The Bot API's answer.
#[derive(Debug, Deserialize)]
struct Answer {
    ok: bool,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

#[derive(Debug, Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
    migrate_to_chat_id: Option<i64>,
}

/// A configured Telegram chat.
pub struct TelegramNotifier {
    name: String,
    config: TelegramConfig,
    timeout: Duration,
    http: reqwest::Client,
    receiver: String,
}

impl TelegramNotifier {
    /// A Telegram notifier named `name`, sending with `http`.
    pub fn new(
        name: &str,
        config: TelegramConfig,
        timeout: Duration,
        http: reqwest::Client,
    ) -> TelegramNotifier {
        let receiver = format!(
            "Telegram {}/bot…/sendMessage",
            http::redact_url(&config.api_url).trim_end_matches('/')
        );
        TelegramNotifier {
            name: name.to_owned(),
            config,
            timeout,
            http,
            receiver,
        }
    }

    async fn deliver(&self, message: &Message) -> Result<(), NotifyError> {
        let file = &self.config.bot_token_file;
        let token = read_secret(file, "bot_token_file", &self.name).await?;
        if !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
        {
            return Err(NotifyError::Config(format!(
                "notifier `{}`: `bot_token_file` {} does not hold a bot token (digits, `:`, letters)",
                self.name,
                file.display()
            )));
        }
        let base = self.config.api_url.as_str().trim_end_matches('/');
        let url = format!("{base}/bot{token}/sendMessage");
        let body = serde_json::to_vec(&request_body(message, &self.config.chat_id))
            .map_err(|e| NotifyError::Config(format!("cannot encode the Telegram message: {e}")))?;
        let request = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let answer = http::send(request, &self.receiver).await?;
        let parsed: Option<Answer> = serde_json::from_str(&answer.body).ok();
        match parsed {
            Some(a) if a.ok && (200..300).contains(&answer.status) => {
                tracing::debug!(notifier = %self.name, "telegram delivered");
                Ok(())
            }
            Some(a) => Err(self.refused(&a, &answer)),
            None => Err(http::refused(
                &self.receiver,
                &answer,
                Some("the answer is not the Bot API's JSON: check `api_url`"),
            )),
        }
    }

    fn refused(&self, a: &Answer, answer: &http::Answer) -> NotifyError {
        let code = a.error_code.unwrap_or(answer.status);
        let description = a.description.as_deref().unwrap_or("no description");
        let params = a.parameters.as_ref();
        let mut detail = format!("error {code}: {}", http::excerpt(description));
        let hint = match code {
            401 | 404 => Some("the token in bot_token_file is wrong or revoked".to_owned()),
            403 => Some("the bot cannot post to this chat (removed, blocked, or not an admin of the channel)".to_owned()),
            400 => match params.and_then(|p| p.migrate_to_chat_id) {
                Some(id) => Some(format!("the group became a supergroup: set chat_id to {id}")),
                None if description.contains("chat not found") => {
                    Some("check chat_id and that the bot is a member of the chat".to_owned())
                }
                None => None,
            },
            _ => None,
        };
        if let Some(h) = hint {
            detail.push_str(" — ");
            detail.push_str(&h);
        }
        let retry_after = params
            .and_then(|p| p.retry_after)
            .map(|s| Duration::from_secs(s).min(http::MAX_RETRY_AFTER))
            .or(answer.retry_after);
        NotifyError::Refused {
            receiver: self.receiver.clone(),
            detail,
            retryable: code == 429 || code >= 500,
            retry_after,
        }
    }
}

impl Notifier for TelegramNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "telegram"
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(self.deliver(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::text::tests::offline_message;

    /// What Telegram shows for an HTML text: tags removed, the four entities decoded.
    pub(crate) fn visible(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
    }

    #[test]
    fn the_text_reads_like_the_alert() {
        let m = offline_message();
        let html = render(&m);
        assert!(
            html.starts_with(
                "<b>[FIRING critical] DeviceOffline</b> · example-fleet\n40 devices offline\n"
            ),
            "{html}"
        );
        assert!(html.contains("Runbook: <a href=\"https://git.example/fleet/runbooks/DeviceOffline.md\">DeviceOffline.md</a>"), "{html}");
        assert!(
            html.contains("Acknowledge: <code>fleetctl alerts ack a-17</code>"),
            "{html}"
        );
        assert!(html.contains("Devices (40): pi-01, pi-02"), "{html}");
        let body = request_body(&m, "-100123");
        assert_eq!(body["chat_id"], "-100123");
        assert_eq!(body["parse_mode"], "HTML");
        assert_eq!(body["disable_web_page_preview"], true);
    }

    #[test]
    fn html_is_escaped() {
        let mut m = offline_message();
        m.summary = "disk <5% & \"low\"".into();
        m.runbook_url = "https://x.example/a?b=1&c=\"2\"".into();
        let html = render(&m);
        assert!(html.contains("disk &lt;5% &amp; &quot;low&quot;"), "{html}");
        assert!(
            html.contains("href=\"https://x.example/a?b=1&amp;c=&quot;2&quot;\""),
            "{html}"
        );
        assert!(visible(&html).contains("disk <5% & \"low\""));
    }

    #[test]
    fn long_text_is_cut_to_4096_keeping_title_and_next_steps() {
        let mut m = offline_message();
        m.description = "é&😀<".repeat(3000);
        m.devices = (0..20).map(|i| format!("{}-{i}", "d".repeat(60))).collect();
        let html = render(&m);
        let shown = visible(&html);
        assert!(
            text::utf16_len(&shown) <= TEXT_MAX,
            "{}",
            text::utf16_len(&shown)
        );
        assert!(text::utf16_len(&shown) > TEXT_MAX - 10, "cut too much");
        assert!(shown.starts_with("[FIRING critical] DeviceOffline"));
        assert!(
            shown.contains("Acknowledge: fleetctl alerts ack a-17"),
            "{shown}"
        );
        assert!(shown.contains('…'));
        // No entity cut in half: every `&` starts one of the four.
        for (i, _) in html.match_indices('&') {
            let rest = &html[i..];
            assert!(["&amp;", "&lt;", "&gt;", "&quot;"]
                .iter()
                .any(|e| rest.starts_with(e)));
        }
        // Absurd: the summary alone is too long.
        m.summary = "s".repeat(10_000);
        let shown = visible(&render(&m));
        assert!(text::utf16_len(&shown) <= TEXT_MAX);
        assert!(shown.contains("fleetctl alerts ack a-17"));
    }
}
