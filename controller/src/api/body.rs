//! JSON bodies read by hand, so a malformed or oversized body gets a JSON error that says
//! what is wrong and where (line and column), never axum's plain-text rejection.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted (a check-in with 500 buffered events fits many times).
pub const MAX_BODY: usize = 1024 * 1024;

/// The body axum collected under the size limit: 413 when over it, 408 when it stalled
/// (`limits.body_timeout`), 400 for the rest.
pub fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        // The body-timeout layer's error is deep in the rejection's chain of causes.
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push_str(&s.to_string());
            source = s.source();
        }
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("request body larger than {MAX_BODY} bytes"))
        } else if chain.contains("timeout") || chain.contains("timed out") {
            ApiError::Timeout("the request body stalled (limits.body_timeout)".into())
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })
}

/// Parses a body that axum collected under the size limit.
pub fn json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = bytes(body)?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "request body is empty; send JSON".into(),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}
