//! What the HTTP notifiers share: reading a secret file at each send, one POST with a deadline
//! whose failures never carry the URL (Slack's and Telegram's URLs hold their secrets), and
//! the mapping of an HTTP status to [`NotifyError`].

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::NotifyError;

/// The `User-Agent` of every request a notifier makes.
pub const USER_AGENT: &str = concat!("fleet-controller/", env!("CARGO_PKG_VERSION"));

/// The longest `Retry-After` honoured; a receiver asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of a receiver's answer goes into an error message.
const ANSWER_EXCERPT: usize = 300;

/// Reads a secret from `path` (`key` names the setting, `notifier` the notifier), trimmed of
/// surrounding whitespace. A missing, unreadable or empty file is a [`NotifyError::Config`]
/// naming the file; the secret itself never appears in an error.
pub async fn read_secret(path: &Path, key: &str, notifier: &str) -> Result<String, NotifyError> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        NotifyError::Config(format!(
            "notifier `{notifier}`: cannot read `{key}` {}: {e}",
            path.display()
        ))
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(NotifyError::Config(format!(
            "notifier `{notifier}`: `{key}` {} is empty",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

/// What a receiver answered.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Its `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// The body, as text (lossy).
    pub body: String,
}

/// Sends `request` (its timeout already set) and reads the answer. `receiver` names the
/// receiver in errors without its secrets; the URL reqwest would print is removed.
pub async fn send(request: reqwest::RequestBuilder, receiver: &str) -> Result<Answer, NotifyError> {
    let unreachable = |e: reqwest::Error| NotifyError::Unreachable {
        receiver: receiver.to_owned(),
        detail: describe(&e),
    };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = response.bytes().await.map_err(unreachable)?;
    Ok(Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A reqwest error as one line, without the URL, with its causes (connection refused, TLS…).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time (the notifier's `timeout`)".to_owned();
    }
    let mut out = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    let mut first = true;
    while let Some(err) = cur {
        let text = if first {
            // reqwest prints "error sending request for url (…)": keep the words, drop the URL.
            let t = err.to_string();
            match t.find(" for url (") {
                Some(i) => t[..i].to_owned(),
                None => t,
            }
        } else {
            err.to_string()
        };
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        first = false;
        cur = err.source();
    }
    out
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110 §10.2.3); capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The error for a non-2xx answer of a generic HTTP receiver: 408, 425, 429 and 5xx may pass
/// (retryable), other codes will not; `hint` adds what to do, when known.
pub fn refused(receiver: &str, answer: &Answer, hint: Option<&str>) -> NotifyError {
    let retryable = matches!(answer.status, 408 | 425 | 429 | 500..=599);
    let mut detail = format!("HTTP {}", answer.status);
    let excerpt = excerpt(&answer.body);
    if !excerpt.is_empty() {
        detail.push_str(": ");
        detail.push_str(&excerpt);
    }
    if (300..400).contains(&answer.status) {
        detail.push_str(" (redirects are not followed: configure the final URL)");
    }
    if let Some(h) = hint {
        detail.push_str(" — ");
        detail.push_str(h);
    }
    NotifyError::Refused {
        receiver: receiver.to_owned(),
        detail,
        retryable,
        retry_after: answer.retry_after,
    }
}

/// The start of an answer, on one line, for an error message.
pub fn excerpt(body: &str) -> String {
    let one_line: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    super::text::truncate_chars(&one_line, ANSWER_EXCERPT)
}

/// `scheme://host[:port]/path` of `url`, without credentials, query or fragment: how a
/// receiver is named in errors and logs.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        // 2015-10-21 07:28:00 GMT is `now`; two minutes later.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_map_to_retryable_or_not() {
        let answer = |status| Answer {
            status,
            retry_after: None,
            body: "x".into(),
        };
        for s in [408, 429, 500, 502, 503] {
            assert!(refused("r", &answer(s), None).retryable(), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 410, 413, 422] {
            assert!(!refused("r", &answer(s), None).retryable(), "{s}");
        }
    }

    #[test]
    fn urls_are_named_without_their_secrets() {
        let u = reqwest::Url::parse("https://user:pw@hooks.example:8443/fleet?token=s3cret#x")
            .expect("url");
        assert_eq!(redact_url(&u), "https://hooks.example:8443/fleet");
    }

    #[tokio::test]
    async fn a_missing_or_empty_secret_file_is_a_config_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let e = read_secret(&missing, "url_file", "oncall")
            .await
            .expect_err("missing");
        assert!(matches!(e, NotifyError::Config(_)));
        let text = e.to_string();
        assert!(
            text.contains("`url_file`") && text.contains(&missing.display().to_string()),
            "{text}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let text = read_secret(&empty, "url_file", "oncall")
            .await
            .expect_err("empty")
            .to_string();
        assert!(text.contains("is empty"), "{text}");
        let good = dir.path().join("good");
        std::fs::write(&good, "  s3cret\n").expect("write");
        assert_eq!(
            read_secret(&good, "url_file", "oncall").await.expect("ok"),
            "s3cret"
        );
    }
}
