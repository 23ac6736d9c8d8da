//! What the API reads from a request: JSON bodies, query strings and path parameters, each
//! refused with a JSON error that says what is wrong and where (line and column), never
//! axum's plain-text rejection. Bodies are parsed on demand, after the handler has checked
//! the credential, so nobody's input is parsed before they are known. Each extractor also
//! describes itself for the OpenAPI document ([`crate::openapi::DescribeArg`]).

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::openapi::{DescribeArg, Operation, RequestBody, JSON};

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

/// Deepest nesting of arrays and objects a body may have: the deepest API type nests about
/// six levels (a check-in's event's result), so anything near this is not a client's mistake.
pub const MAX_DEPTH: usize = 64;

/// Whether `text` nests arrays and objects deeper than [`MAX_DEPTH`] (brackets inside
/// strings do not count). serde_json stops at 128 levels of what it reads, but skips an
/// unknown field's value to any depth: a 10,000-deep value under an unknown key was read to
/// its end and accepted.
pub fn too_deep(text: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a body that axum collected under the size limit.
pub fn json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = bytes(body)?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "request body is empty; send JSON".into(),
        ));
    }
    if too_deep(&bytes) {
        return Err(ApiError::BadRequest(format!(
            "the JSON body nests arrays or objects deeper than {MAX_DEPTH} levels"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

/// A body's declared type, when it declares one that is not JSON: a 415. No `Content-Type`
/// at all is read as JSON (what older agents and hand-written scripts send).
fn content_type_refused(headers: &HeaderMap) -> Option<ApiError> {
    let v = headers.get(header::CONTENT_TYPE)?;
    let essence = v
        .to_str()
        .ok()
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    let json = essence
        .as_deref()
        .is_some_and(|t| t == JSON || (t.starts_with("application/") && t.ends_with("+json")));
    (!json).then(|| {
        ApiError::UnsupportedMediaType(format!(
            "the body's Content-Type is `{}`; this route reads `application/json`",
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect::<String>()
        ))
    })
}

/// The body as collected, with the verdict on its `Content-Type`.
struct Collected {
    raw: Result<Bytes, BytesRejection>,
    refused: Option<ApiError>,
}

async fn collect<S: Send + Sync>(req: Request, state: &S) -> Collected {
    let refused = content_type_refused(req.headers());
    Collected {
        raw: Bytes::from_request(req, state).await,
        refused,
    }
}

/// A JSON body of `T`, required: parsed by [`JsonBody::parse`] once the handler knows who
/// asks.
pub struct JsonBody<T> {
    body: Collected,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// The body as `T`: 415 for a body declared as something else, 413 over the limit, 400
    /// when empty or not a `T`.
    pub fn parse(self) -> Result<T, ApiError> {
        if let Some(e) = self.body.refused {
            return Err(e);
        }
        json(self.body.raw)
    }
}

impl<S: Send + Sync, T> FromRequest<S> for JsonBody<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(JsonBody {
            body: collect(req, state).await,
            _t: PhantomData,
        })
    }
}

/// A JSON body of `T` that may be left out (empty: `T::default()`), as the acts that only
/// take an optional reason.
pub struct MaybeJsonBody<T> {
    body: Collected,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Default> MaybeJsonBody<T> {
    /// The body as `T`, or the default for an empty one.
    pub fn parse(self) -> Result<T, ApiError> {
        match &self.body.raw {
            Ok(b) if b.is_empty() => Ok(T::default()),
            _ => JsonBody {
                body: self.body,
                _t: PhantomData,
            }
            .parse(),
        }
    }
}

impl<S: Send + Sync, T> FromRequest<S> for MaybeJsonBody<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeJsonBody {
            body: collect(req, state).await,
            _t: PhantomData,
        })
    }
}

/// The raw bytes of a body that is described as `T` but read by the handler itself (the
/// webhook checks a signature over the exact bytes first). Any `Content-Type` is taken.
pub struct RawBody<T> {
    raw: Result<Bytes, BytesRejection>,
    _t: PhantomData<fn() -> T>,
}

impl<T> RawBody<T> {
    /// The bytes: 413 over the limit, 408 when they stalled.
    pub fn bytes(self) -> Result<Bytes, ApiError> {
        bytes(self.raw)
    }
}

impl<S: Send + Sync, T> FromRequest<S> for RawBody<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(RawBody {
            raw: Bytes::from_request(req, state).await,
            _t: PhantomData,
        })
    }
}

/// A query string of `T`'s fields; one that does not read is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::BadRequest(format!("bad query string: {}", e.body_text())))
    }
}

/// Path parameters; one that does not decode (not UTF-8 once percent-decoded) is a JSON 400.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::BadRequest(format!("bad path parameter: {}", e.body_text())))
    }
}

/// The JSON error body, as the document refers to it.
pub fn error_schema(op: &mut Operation<'_>) -> serde_json::Value {
    op.schemas.output::<fleet_config::protocol::ApiError>()
}

fn describe_json_body<T: JsonSchema>(op: &mut Operation<'_>, required: bool) {
    let schema = op.schemas.input::<T>();
    op.body = Some(RequestBody {
        media: JSON,
        schema,
        required,
        description: if required {
            "JSON (a `Content-Type` other than JSON is refused)"
        } else {
            "JSON, or nothing at all (a `Content-Type` other than JSON is refused)"
        },
    });
    let e = error_schema(op);
    for status in [400, 408, 413, 415] {
        op.respond(status, &[(JSON, e.clone())]);
    }
}

impl<T: JsonSchema> DescribeArg for JsonBody<T> {
    fn describe(op: &mut Operation<'_>) {
        describe_json_body::<T>(op, true);
    }
}

impl<T: JsonSchema> DescribeArg for MaybeJsonBody<T> {
    fn describe(op: &mut Operation<'_>) {
        describe_json_body::<T>(op, false);
    }
}

impl<T: JsonSchema> DescribeArg for RawBody<T> {
    fn describe(op: &mut Operation<'_>) {
        let schema = op.schemas.input::<T>();
        op.body = Some(RequestBody {
            media: JSON,
            schema,
            required: false,
            description: "The sender's JSON payload; only the fields described are read",
        });
        let e = error_schema(op);
        for status in [400, 408, 413] {
            op.respond(status, &[(JSON, e.clone())]);
        }
    }
}

impl<T: JsonSchema> DescribeArg for ApiQuery<T> {
    fn describe(op: &mut Operation<'_>) {
        op.query::<T>();
        let e = error_schema(op);
        op.respond(400, &[(JSON, e)]);
    }
}

impl<T> DescribeArg for ApiPath<T> {
    fn describe(op: &mut Operation<'_>) {
        let e = error_schema(op);
        op.respond(400, &[(JSON, e)]);
        op.error(404);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!too_deep(deep(MAX_DEPTH).as_bytes()));
        assert!(too_deep(deep(MAX_DEPTH + 1).as_bytes()));
        let in_string = format!("{{\"reason\": \"{}\"}}", "[".repeat(1000));
        assert!(!too_deep(in_string.as_bytes()));
        let escaped = format!("{{\"r\": \"\\\"{}\"}}", "{".repeat(1000));
        assert!(!too_deep(escaped.as_bytes()), "{escaped}");
        let under_unknown = format!("{{\"a\":{}1{}}}", "{\"a\":".repeat(100), "}".repeat(100));
        assert!(too_deep(under_unknown.as_bytes()));
    }
}
