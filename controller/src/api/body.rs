//! JSON bodies read by hand, so a malformed or oversized body gets a JSON error that says
//! what is wrong and where (line and column), never axum's plain-text rejection.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted (a check-in with 500 buffered events fits many times).
pub const MAX_BODY: usize = 1024 * 1024;

/// Parses a body that axum collected under the size limit.
pub fn json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("request body larger than {MAX_BODY} bytes"))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
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
