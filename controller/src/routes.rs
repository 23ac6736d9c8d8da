//! The route table: every route of both faces (the JSON API's [`crate::api::routes`], the
//! dashboard's [`crate::dashboard::routes`]) and the OpenAPI document, listed once. The router
//! and the document are both made from [`table`], so no route can be served undocumented or
//! documented unserved; this is the one place that calls `.route(`.

use axum::extract::DefaultBodyLimit;
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::route::Route;
use crate::state::AppState;

/// Every route: the API's, the document's own, the dashboard's.
pub fn table() -> Vec<Route> {
    let mut routes = crate::api::routes();
    routes.push(Route::get(
        "/api/openapi.json",
        "none",
        "This API's OpenAPI document",
        document,
    ));
    routes.extend(crate::dashboard::routes());
    routes
}

/// The router: every route of [`table`], the API's "no route" fallback, the body limit, and
/// the time limits of `limits` (a stalled body, a whole request).
pub fn router(state: AppState) -> Router {
    let limits = state.cfg.limits.clone();
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for r in table() {
        match by_path.iter_mut().find(|(p, _)| *p == r.path) {
            // Two methods on one path (`GET /login`, `POST /login`): one method router.
            Some((_, m)) => *m = std::mem::take(m).merge(r.handler),
            None => by_path.push((r.path, r.handler)),
        }
    }
    let mut app = Router::new();
    for (path, m) in by_path {
        app = app.route(path, m);
    }
    app.fallback(crate::api::not_found)
        .layer(DefaultBodyLimit::max(crate::api::body::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            crate::api::error::time_limit,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_timeout,
        ))
        .with_state(state)
}

/// `GET /api/openapi.json`.
async fn document() -> Json<Value> {
    Json(openapi())
}

/// The OpenAPI 3.1 document of [`table`].
pub fn openapi() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in table() {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let security = match r.auth {
            "none" | "hmac" | "claim secret in body" => json!([]),
            a if a.starts_with("session") => json!([{"session": []}]),
            _ => json!([{"bearer": []}]),
        };
        let mut responses = json!({
            "200": {"description": "OK"},
            "400": {"description": "Malformed request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        });
        if r.auth != "none" {
            responses["401"] = json!({"description": "Missing, unknown or revoked credentials"});
        }
        if matches!(
            r.auth,
            "operator" | "admin" | "device" | "session (operator)"
        ) {
            responses["403"] = json!({"description": "Not allowed for this role or device"});
        }
        if r.path.contains('{') {
            responses["404"] = json!({"description": "No such object"});
        }
        if r.method == "POST" {
            responses["413"] = json!({"description": "Body larger than 1 MiB"});
        }
        let op = json!({
            "summary": r.summary,
            "description": format!("Authorization: {}.", r.auth),
            "parameters": params,
            "security": security,
            "responses": responses,
        });
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Fleet controller API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": crate::dashboard::session::COOKIE},
            },
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}},
        },
    })
}
