//! Typed calls to the controller's agent routes (enroll, claim, check-in) over HTTP/JSON, and the
//! mapping of every non-2xx answer to a [`ControllerError`] ([`classify`], a pure function).
//!
//! Assumed of the controller (DESIGN.md, "Agent ↔ controller"): 200 with the JSON body of
//! `fleet_config::protocol`, and `{"error": "…"}` ([`ApiError`]) with every other status; 429
//! carries `Retry-After` in seconds.

use std::time::Duration;

use fleet_config::protocol::{
    paths, ApiError, CheckinRequest, CheckinResponse, ClaimRequest, ClaimResponse, EnrollRequest,
    EnrollResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest answer read from the controller; real answers are a few hundred bytes.
pub const MAX_ANSWER: usize = 256 * 1024;
/// Wait after a 429 without a usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest `Retry-After` honoured, so a wrong header cannot park a device for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How long an idle connection is kept for the next check-in. Longer than the default 60 s
/// check-in interval (+10% jitter), so a device reuses its TLS session instead of paying a
/// handshake (several kilobytes) every minute: the control-traffic budget is 1 MB a day.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(90);
/// Longest error message kept from an answer (the rest is cut).
const MAX_MESSAGE: usize = 300;

/// A request to the controller failed. Each variant says what to do about it: the loop keeps
/// the device on its release in every case.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot set up the HTTP client for the controller: {reason}")]
    Setup {
        /// Why.
        reason: String,
    },
    /// No answer: connection refused, DNS, TLS, timeout, or the connection dropped.
    #[error("controller {url} unreachable: {reason}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The transport error, with its causes.
        reason: String,
    },
    /// 401: the token is unknown, wrong or revoked.
    #[error("the controller refused the token (401): {message}")]
    Unauthorized {
        /// The controller's message.
        message: String,
    },
    /// 403: the token belongs to another device.
    #[error("the controller refused this device (403): {message}")]
    Forbidden {
        /// The controller's message.
        message: String,
    },
    /// 404: unknown (a claim secret the controller does not know).
    #[error("unknown to the controller (404): {message}")]
    NotFound {
        /// The controller's message.
        message: String,
    },
    /// 410: expired or already used (a pairing code).
    #[error("gone (410): {message}")]
    Gone {
        /// The controller's message.
        message: String,
    },
    /// 429: too many requests; wait `retry_after`.
    #[error("rate limited by the controller (429), retry after {} s: {message}", retry_after.as_secs())]
    RateLimited {
        /// From `Retry-After`, bounded.
        retry_after: Duration,
        /// The controller's message.
        message: String,
    },
    /// Another 4xx: the request is wrong (400 malformed, 413 too large, …).
    #[error("the controller rejected the request ({status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The controller's message.
        message: String,
    },
    /// 5xx: trouble on the controller's side.
    #[error("controller error ({status}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The controller's message.
        message: String,
    },
    /// A 2xx whose body is not the expected JSON, a redirect, or an oversized answer.
    #[error("unexpected answer from the controller: {reason}")]
    BadAnswer {
        /// What was wrong.
        reason: String,
    },
}

impl ControllerError {
    /// Every [`ControllerError::kind`], for metrics that start at zero.
    pub const KINDS: &'static [&'static str] = &[
        "setup",
        "unreachable",
        "unauthorized",
        "forbidden",
        "not_found",
        "gone",
        "rate_limited",
        "rejected",
        "server",
        "bad_answer",
    ];

    /// A short stable name, the `reason` label of `fleet_agent_checkin_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ControllerError::Setup { .. } => "setup",
            ControllerError::Unreachable { .. } => "unreachable",
            ControllerError::Unauthorized { .. } => "unauthorized",
            ControllerError::Forbidden { .. } => "forbidden",
            ControllerError::NotFound { .. } => "not_found",
            ControllerError::Gone { .. } => "gone",
            ControllerError::RateLimited { .. } => "rate_limited",
            ControllerError::Rejected { .. } => "rejected",
            ControllerError::Server { .. } => "server",
            ControllerError::BadAnswer { .. } => "bad_answer",
        }
    }
}

fn cut(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Maps a non-2xx answer to an error: `status`, the raw `body` (the controller's `ApiError`
/// JSON, or anything a proxy in between sent) and the `Retry-After` header if any.
pub fn classify(status: u16, body: &[u8], retry_after: Option<&str>) -> ControllerError {
    let message = match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => cut(&e.error),
        Err(_) if body.is_empty() => format!("HTTP {status} without a body"),
        Err(_) => cut(&String::from_utf8_lossy(body)),
    };
    match status {
        401 => ControllerError::Unauthorized { message },
        403 => ControllerError::Forbidden { message },
        404 => ControllerError::NotFound { message },
        410 => ControllerError::Gone { message },
        429 => ControllerError::RateLimited {
            retry_after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(DEFAULT_RETRY_AFTER, |s| {
                    Duration::from_secs(s).min(MAX_RETRY_AFTER)
                }),
            message,
        },
        400..=499 => ControllerError::Rejected { status, message },
        500..=599 => ControllerError::Server { status, message },
        _ => ControllerError::BadAnswer {
            reason: format!("HTTP {status}: {message}"),
        },
    }
}

/// A transport error with its causes ("error sending request: connection refused").
fn transport(url: &str, e: reqwest::Error, timeout: Duration) -> ControllerError {
    let reason = if e.is_timeout() {
        format!("no answer within {} s", timeout.as_secs())
    } else {
        // The URL is in the message already.
        let e = e.without_url();
        let mut parts = vec![e.to_string()];
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
            source = s.source();
        }
        parts.join(": ")
    };
    ControllerError::Unreachable {
        url: url.to_owned(),
        reason,
    }
}

/// The controller's agent API. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    /// The `Date` of the last answer (for the clock-skew watcher).
    last_date: std::sync::Arc<std::sync::Mutex<Option<std::time::SystemTime>>>,
}

impl Client {
    /// A client for the controller at `base_url` (no trailing slash); every request must be
    /// answered within `timeout`. Redirects are not followed: the bearer token goes only to
    /// the configured controller.
    ///
    /// With `ca_file`, the controller's certificate must chain to a CA in that PEM file and to
    /// nothing else (the system's roots are not trusted then); without it, to the system's.
    pub fn new(
        base_url: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client, ControllerError> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca_file {
            let setup = |reason: String| ControllerError::Setup {
                reason: format!("CA file {}: {reason}", path.display()),
            };
            let pem = std::fs::read(path).map_err(|e| setup(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| setup(e.to_string()))?;
            if certs.is_empty() {
                return Err(setup("no PEM certificate in it".into()));
            }
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .user_agent(concat!("fleet-agent/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(IDLE_CONNECTION)
            .build()
            .map_err(|e| ControllerError::Setup {
                reason: e.to_string(),
            })?;
        Ok(Client {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            timeout,
            last_date: Default::default(),
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/enroll`: a pairing code, or at once a token with the `bootstrap` token.
    pub async fn enroll(
        &self,
        req: &EnrollRequest,
        bootstrap: Option<&str>,
    ) -> Result<EnrollResponse, ControllerError> {
        self.post(paths::ENROLL, bootstrap, req, Duration::ZERO)
            .await
    }

    /// `POST /api/v1/enroll/claim`: whether an operator approved the pairing code yet.
    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimResponse, ControllerError> {
        self.post(paths::ENROLL_CLAIM, None, req, Duration::ZERO)
            .await
    }

    /// The controller's clock as its last answer's `Date` header gave it, if any.
    pub fn last_date(&self) -> Option<std::time::SystemTime> {
        *self.last_date.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `POST /api/v1/checkin` with the device token. A long poll (`req.long_poll_secs`) may
    /// be held that long by the controller: the request may take that much longer.
    pub async fn checkin(
        &self,
        token: &str,
        req: &CheckinRequest,
    ) -> Result<CheckinResponse, ControllerError> {
        let hold = Duration::from_secs(req.long_poll_secs);
        self.post(paths::CHECKIN, Some(token), req, hold).await
    }

    async fn post<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Q,
        hold: Duration,
    ) -> Result<A, ControllerError> {
        let url = format!("{}{path}", self.base);
        let timeout = self.timeout + hold;
        let mut req = self.http.post(&url).json(body).timeout(timeout);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let mut resp = req.send().await.map_err(|e| transport(&url, e, timeout))?;
        let status = resp.status().as_u16();
        if let Some(date) = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::watch::clock::parse_date)
        {
            *self.last_date.lock().unwrap_or_else(|e| e.into_inner()) = Some(date);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            return Err(ControllerError::BadAnswer {
                reason: format!("HTTP {status} answer larger than {MAX_ANSWER} bytes"),
            });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transport(&url, e, timeout))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                return Err(ControllerError::BadAnswer {
                    reason: format!("HTTP {status} answer larger than {MAX_ANSWER} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !(200..300).contains(&status) {
            return Err(classify(status, &bytes, retry_after.as_deref()));
        }
        serde_json::from_slice(&bytes).map_err(|e| ControllerError::BadAnswer {
            reason: format!("{path}: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(msg: &str) -> Vec<u8> {
        serde_json::to_vec(&ApiError {
            error: msg.to_owned(),
        })
        .expect("json")
    }

    #[test]
    fn every_status_maps_to_what_the_loop_acts_on() {
        use ControllerError as E;
        let cases: &[(u16, Option<&str>, &str)] = &[
            (400, None, "rejected"),
            (401, None, "unauthorized"),
            (403, None, "forbidden"),
            (404, None, "not_found"),
            (409, None, "rejected"),
            (410, None, "gone"),
            (413, None, "rejected"),
            (429, Some("7"), "rate_limited"),
            (500, None, "server"),
            (502, None, "server"),
            (503, None, "server"),
            (302, None, "bad_answer"),
        ];
        for (status, retry, kind) in cases {
            let e = classify(*status, &body("why"), *retry);
            assert_eq!(e.kind(), *kind, "{status}: {e}");
            assert!(ControllerError::KINDS.contains(&e.kind()));
        }
        assert!(matches!(
            classify(401, &body("this device's token was revoked"), None),
            E::Unauthorized { message } if message == "this device's token was revoked"
        ));
        assert!(matches!(
            classify(413, &body("too many"), None),
            E::Rejected { status: 413, .. }
        ));
        assert!(matches!(
            classify(503, &body("db down"), None),
            E::Server { status: 503, message } if message == "db down"
        ));
    }

    #[test]
    fn retry_after_is_read_and_bounded() {
        let wait = |h: Option<&str>| match classify(429, b"", h) {
            ControllerError::RateLimited { retry_after, .. } => retry_after,
            other => panic!("{other}"),
        };
        assert_eq!(wait(Some("7")), Duration::from_secs(7));
        assert_eq!(wait(Some(" 12 ")), Duration::from_secs(12));
        assert_eq!(wait(None), DEFAULT_RETRY_AFTER);
        assert_eq!(
            wait(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            DEFAULT_RETRY_AFTER
        );
        assert_eq!(wait(Some("999999")), MAX_RETRY_AFTER);
    }

    #[test]
    fn messages_come_from_the_body_whatever_it_is() {
        let msg = |b: &[u8]| match classify(502, b, None) {
            ControllerError::Server { message, .. } => message,
            other => panic!("{other}"),
        };
        assert_eq!(
            msg(&body("the database is unavailable")),
            "the database is unavailable"
        );
        assert_eq!(msg(b"<html>Bad Gateway</html>"), "<html>Bad Gateway</html>");
        assert_eq!(msg(b""), "HTTP 502 without a body");
        let long = msg("x".repeat(5000).as_bytes());
        assert_eq!(
            long.chars().count(),
            MAX_MESSAGE + 1,
            "cut with an ellipsis"
        );
    }

    #[tokio::test]
    async fn an_unreachable_controller_is_named_with_the_cause() {
        // A port that was free a moment ago: the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let client =
            Client::new(&format!("{base}/"), Duration::from_secs(2), None).expect("client");
        assert_eq!(client.base_url(), base);
        let req = ClaimRequest {
            claim_secret: "s".into(),
        };
        let err = client.claim(&req).await.expect_err("nothing listens");
        assert_eq!(err.kind(), "unreachable", "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("{base}/api/v1/enroll/claim")),
            "{text}"
        );
    }
}
