//! The push webhook: GitHub (`X-Hub-Signature-256: sha256=HEX`) and Gitea
//! (`X-Gitea-Signature: HEX`) HMAC-SHA256 signatures over the raw body. A valid push to the
//! release branch wakes the watcher, which fetches and checks the commit itself: the webhook's
//! body is never trusted for what to roll out.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::body::RawBody;
use super::error::ApiError;
use super::AppState;

/// What the webhook reads of a push event (GitHub's and Gitea's payloads are much larger; the
/// rest is ignored, and so is a payload that is not JSON: the watcher fetches and checks the
/// commit itself).
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PushEvent {
    /// The ref pushed (`refs/heads/main`): a push to another branch is ignored.
    #[serde(rename = "ref", default)]
    pub git_ref: Option<String>,
}

/// The answer to a push with a good signature.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum WebhookAnswer {
    /// A push to the release branch (or one that names no ref): the watcher fetches now.
    Accepted {
        /// Always true.
        accepted: bool,
    },
    /// A push to another branch.
    Ignored {
        /// Why.
        ignored: String,
    },
}

/// Whether `signature_hex` is the HMAC-SHA256 of `body` under `secret` (constant time).
pub fn signature_valid(secret: &[u8], body: &[u8], signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The signature a request carries, from either header style.
fn signature(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("sha256=").map(str::to_owned);
    }
    headers
        .get("x-gitea-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /api/v1/webhook`.
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: RawBody<PushEvent>,
) -> Result<Json<WebhookAnswer>, ApiError> {
    let Some(secret) = state.webhook_secret.clone() else {
        return Err(ApiError::NotFound(
            "the webhook is not enabled (set `webhook_secret_file`)".into(),
        ));
    };
    let body = raw.bytes()?;
    let Some(sig) = signature(&headers) else {
        state.metrics.webhook_rejected();
        return Err(ApiError::Unauthorized(
            "missing X-Hub-Signature-256 or X-Gitea-Signature header".into(),
        ));
    };
    if !signature_valid(&secret, &body, &sig) {
        state.metrics.webhook_rejected();
        tracing::warn!("webhook with a bad signature refused");
        return Err(ApiError::Unauthorized("bad webhook signature".into()));
    }
    let payload: PushEvent = serde_json::from_slice(&body).unwrap_or_default();
    let branch = state
        .cfg
        .git
        .as_ref()
        .map(|g| g.branch.clone())
        .unwrap_or_default();
    let pushed = payload.git_ref.unwrap_or_default();
    if !pushed.is_empty() && pushed != format!("refs/heads/{branch}") {
        return Ok(Json(WebhookAnswer::Ignored {
            ignored: format!("push to {pushed}, not refs/heads/{branch}"),
        }));
    }
    state.watch.notify_one();
    if !state.is_leader() {
        // Only the leader watches Git: ask it through the store.
        state.db.request_watch().await?;
    }
    Ok(Json(WebhookAnswer::Accepted { accepted: true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        // HMAC-SHA256("It's a Secret to Everybody", "Hello, World!") from GitHub's documentation.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_valid(secret, body, good));
        assert!(!signature_valid(secret, b"Hello, World?", good));
        assert!(!signature_valid(b"other", body, good));
        assert!(!signature_valid(secret, body, "zz"));
        assert!(!signature_valid(secret, body, ""));
    }
}
