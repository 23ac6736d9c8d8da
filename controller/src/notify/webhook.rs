//! The generic JSON webhook: POSTs the message as a documented, versioned JSON body (the
//! [`Message`] fields plus `"version": 1`), optionally with `Authorization: Bearer` and an
//! HMAC-SHA256 signature of the body in `X-Fleet-Signature-256: sha256=HEX`: the scheme the
//! controller checks on GitHub's push webhooks, in the other direction. Any 2xx is success.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Serialize;
use sha2::Sha256;

use super::config::WebhookConfig;
use super::http::{self, read_secret};
use super::{BoxFuture, Message, Notifier, NotifyError};

/// The body's version: a receiver checks it; a change that breaks receivers raises it.
pub const BODY_VERSION: u32 = 1;
/// The header carrying `sha256=` and the hex HMAC-SHA256 of the body, when `secret_file` is set.
pub const SIGNATURE_HEADER: &str = "X-Fleet-Signature-256";

/// The JSON body: `version`, then every field of [`Message`] under its own name.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    /// [`BODY_VERSION`].
    pub version: u32,
    /// The message.
    #[serde(flatten)]
    pub message: &'a Message,
}

/// The exact bytes POSTed for `message`.
pub fn body(message: &Message) -> Result<Vec<u8>, NotifyError> {
    serde_json::to_vec(&Body {
        version: BODY_VERSION,
        message,
    })
    .map_err(|e| NotifyError::Config(format!("cannot encode the message as JSON: {e}")))
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`: the value of
/// [`SIGNATURE_HEADER`]. A receiver recomputes it over the raw body it received and compares
/// in constant time.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A configured webhook.
pub struct WebhookNotifier {
    name: String,
    config: WebhookConfig,
    timeout: Duration,
    http: reqwest::Client,
    receiver: String,
}

impl WebhookNotifier {
    /// A webhook notifier named `name`, sending with `http` (which sets the `User-Agent`).
    pub fn new(
        name: &str,
        config: WebhookConfig,
        timeout: Duration,
        http: reqwest::Client,
    ) -> WebhookNotifier {
        let receiver = http::redact_url(&config.url);
        WebhookNotifier {
            name: name.to_owned(),
            config,
            timeout,
            http,
            receiver,
        }
    }

    async fn deliver(&self, message: &Message) -> Result<(), NotifyError> {
        let body = body(message)?;
        let mut request = self
            .http
            .post(self.config.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json");
        if let Some(file) = &self.config.bearer_token_file {
            let token = read_secret(file, "bearer_token_file", &self.name).await?;
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                NotifyError::Config(format!(
                    "notifier `{}`: the token in `bearer_token_file` {} cannot be sent in a header (control characters?)",
                    self.name,
                    file.display()
                ))
            })?;
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(file) = &self.config.secret_file {
            let secret = read_secret(file, "secret_file", &self.name).await?;
            request = request.header(SIGNATURE_HEADER, signature(secret.as_bytes(), &body));
        }
        let answer = http::send(request.body(body), &self.receiver).await?;
        if (200..300).contains(&answer.status) {
            tracing::debug!(notifier = %self.name, status = answer.status, "webhook delivered");
            return Ok(());
        }
        Err(http::refused(&self.receiver, &answer, None))
    }
}

impl Notifier for WebhookNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(self.deliver(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::text::tests::offline_message;

    #[test]
    fn the_body_is_the_message_and_its_version() {
        let m = offline_message();
        let v: serde_json::Value = serde_json::from_slice(&body(&m).expect("body")).expect("json");
        assert_eq!(v["version"], 1);
        assert_eq!(v["alert"], "DeviceOffline");
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["kind"], "firing");
        assert_eq!(v["alert_id"], "a-17");
        assert_eq!(v["devices_total"], 40);
        assert_eq!(v["devices"].as_array().map(Vec::len), Some(20));
        assert_eq!(v["runbook_url"], m.runbook_url);
        assert_eq!(v["resolved_ms"], serde_json::Value::Null);
        // Every field of Message, and nothing else but `version`.
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "alert",
            "alert_id",
            "dashboard_url",
            "description",
            "devices",
            "devices_total",
            "fleet",
            "id",
            "kind",
            "resolved_ms",
            "runbook_url",
            "severity",
            "started_ms",
            "summary",
            "version",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn the_signature_is_what_the_push_webhook_verifies() {
        let body = br#"{"version":1}"#;
        let sig = signature(b"s3cret", body);
        let hex = sig.strip_prefix("sha256=").expect("prefix");
        assert!(crate::api::webhook::signature_valid(b"s3cret", body, hex));
        assert!(!crate::api::webhook::signature_valid(b"other", body, hex));
        // RFC 4231 test case 2: key "Jefe".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
