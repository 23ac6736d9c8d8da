//! Errors as HTTP answers: a status and `{"error": "…"}`. Client mistakes get 4xx with a
//! message naming the problem; only the store failing gives a 5xx.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_config::protocol::ApiError as Body;

use crate::db::DbError;
use crate::openapi::{DescribeAnswer, Operation, JSON, TEXT};
use crate::service::ServiceError;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials fine, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Not in this state.
    #[error("{0}")]
    Conflict(String),
    /// Gone for good (expired or used pairing code).
    #[error("{0}")]
    Gone(String),
    /// Body too large.
    #[error("{0}")]
    TooLarge(String),
    /// A body of a type the route does not read.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request took too long (a slow body, or a handler past `limits.request_timeout`).
    #[error("{0}")]
    Timeout(String),
    /// Too many attempts.
    #[error("{message}")]
    RateLimited {
        /// For people.
        message: String,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The store failed.
    #[error("{0}")]
    Db(#[from] DbError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<ServiceError> for ApiError {
    /// The service's failures with the statuses the API has always given them; the message is
    /// the service's.
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Db(d) => ApiError::Db(d),
            ServiceError::ReasonRequired => ApiError::BadRequest(e.to_string()),
            ServiceError::NoDevice(_)
            | ServiceError::NoPairing(_)
            | ServiceError::NoRollout(_)
            | ServiceError::NoAlert(_)
            | ServiceError::NoSilence(_) => ApiError::NotFound(e.to_string()),
            ServiceError::PairingExpired(_) | ServiceError::PairingUsed(_) => {
                ApiError::Gone(e.to_string())
            }
            ServiceError::Refused(_)
            | ServiceError::Busy(_)
            | ServiceError::Corrupt { .. }
            | ServiceError::WouldReplace { .. }
            | ServiceError::DeviceExists { .. } => ApiError::Conflict(e.to_string()),
            ServiceError::BootstrapUnknown | ServiceError::BootstrapUnusable { .. } => {
                ApiError::Unauthorized(e.to_string())
            }
            ServiceError::NotSelected { .. } => ApiError::Forbidden(e.to_string()),
            ServiceError::NoBootstrapToken(_) => ApiError::NotFound(e.to_string()),
            ServiceError::Invalid(_) | ServiceError::AmbiguousRelease { .. } => {
                ApiError::BadRequest(e.to_string())
            }
            ServiceError::NoRelease(_) => ApiError::NotFound(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Db(e) = &self {
            tracing::error!(error = %e, "store failure while answering a request");
        }
        let message = match &self {
            ApiError::Db(_) => "the controller's database is unavailable; try again".to_owned(),
            other => other.to_string(),
        };
        let mut resp = (status, Json(Body { error: message })).into_response();
        if let ApiError::RateLimited { retry_after, .. } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

/// Middleware: a request not answered within `limit` (its body read included) gets 408 and its
/// handler is dropped. A stream (`/ui/events`) needs only its head within it.
pub async fn time_limit(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(format!(
            "the request was not complete and answered within {} s (limits.request_timeout)",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// Plain text with its own `Content-Type` (`/metrics`).
#[derive(Debug)]
pub struct PlainText {
    /// `text/plain; …`.
    pub content_type: &'static str,
    /// The text.
    pub text: String,
}

impl IntoResponse for PlainText {
    fn into_response(self) -> Response {
        (
            [(axum::http::header::CONTENT_TYPE, self.content_type)],
            self.text,
        )
            .into_response()
    }
}

/// The API's errors: `{"error": …}`, and 503 when the store fails.
fn api_errors(op: &mut Operation<'_>) {
    let e = super::body::error_schema(op);
    op.error_content.insert(JSON, e);
    op.error(503);
}

/// A JSON answer of `T`, or an [`ApiError`].
impl<T: schemars::JsonSchema> DescribeAnswer for Result<Json<T>, ApiError> {
    fn describe(op: &mut Operation<'_>) {
        let schema = op.schemas.output::<T>();
        op.respond(200, &[(JSON, schema)]);
        api_errors(op);
    }
}

/// Plain text, or an [`ApiError`].
impl DescribeAnswer for Result<PlainText, ApiError> {
    fn describe(op: &mut Operation<'_>) {
        op.respond(200, &[(TEXT, crate::openapi::text())]);
        api_errors(op);
    }
}

/// A fixed text (`ok`), or an [`ApiError`].
impl DescribeAnswer for Result<&'static str, ApiError> {
    fn describe(op: &mut Operation<'_>) {
        op.respond(200, &[(TEXT, crate::openapi::text())]);
        api_errors(op);
    }
}
