//! The route table: every route of both faces (the JSON API's [`crate::api::routes`], the
//! dashboard's [`crate::dashboard::routes`]) and the OpenAPI document, listed once. The router
//! and the document are both made from [`table`], so no route can be served undocumented or
//! documented unserved; this is the one place that calls `.route(`.

use axum::extract::DefaultBodyLimit;
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::openapi::{rename_refs, Operation, Schemas, JSON};
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

/// The OpenAPI document, as served.
#[derive(Debug, serde::Serialize)]
pub struct Document(pub Value);

impl schemars::JsonSchema for Document {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpenApiDocument".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "An OpenAPI 3.1 document",
            "required": ["openapi", "info", "paths", "components"],
            "properties": {"openapi": {"type": "string", "pattern": "^3\\.1\\."}},
        })
    }
}

/// `GET /api/openapi.json`.
async fn document() -> Json<Document> {
    Json(Document(openapi()))
}

/// The security schemes a route's `auth` names: `[]` for none; several entries when any one
/// will do (an empty one: none at all).
fn security(auth: &str) -> Value {
    match auth {
        "none" | "hmac" | "claim secret in body" => json!([]),
        "none (pairing code) or bootstrap token" => json!([{}, {"bootstrapToken": []}]),
        "metrics token (if configured)" => json!([{}, {"metricsToken": []}]),
        "device" => json!([{"deviceToken": []}]),
        a if a.starts_with("session") => json!([{"session": []}]),
        _ => json!([{"apiToken": []}]),
    }
}

/// The OpenAPI 3.1 document of [`table`]: every operation with its parameters, request body,
/// answers (schemas from the handlers' own types, see [`crate::openapi`]), refusals and
/// security.
pub fn openapi() -> Value {
    let mut schemas = Schemas::default();
    let mut paths: Map<String, Value> = Map::new();
    // Request parts refer to input schemas, renamed when they differ from the answers' ones.
    let mut operations: Vec<(&'static str, String)> = Vec::new();
    for r in table() {
        let mut op = Operation::new(r.method, r.produces, &mut schemas);
        (r.describe)(&mut op);
        // Who may call it.
        match r.auth {
            "viewer" => op.error(401),
            "operator" | "admin" | "device" => {
                op.error(401);
                op.error(403);
            }
            "session (operator)" => op.error(403),
            _ => {}
        }
        for &status in r.errors {
            op.error(status);
        }
        // The router's limit on a whole request, for every route.
        let e = crate::api::body::error_schema(&mut op);
        op.respond(408, &[(JSON, e)]);
        let mut parameters: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.append(&mut op.parameters);
        if r.auth == "hmac" {
            for (name, what) in [
                (
                    "X-Hub-Signature-256",
                    "GitHub: `sha256=` and the hex HMAC-SHA256 of the body",
                ),
                (
                    "X-Gitea-Signature",
                    "Gitea: the hex HMAC-SHA256 of the body",
                ),
            ] {
                parameters.push(json!({"name": name, "in": "header", "required": false,
                    "description": what, "schema": {"type": "string"}}));
            }
        }
        let mut o = json!({
            "operationId": format!("{} {}", r.method, r.path),
            "summary": r.summary,
            "description": format!("Authorization: {}.", r.auth),
            "parameters": parameters,
            "security": security(r.auth),
            "responses": op.responses(),
        });
        if let Some(b) = op.body.take() {
            o["requestBody"] = json!({
                "description": b.description,
                "required": b.required,
                "content": {b.media: {"schema": b.schema}},
            });
        }
        operations.push((r.path, r.method.to_lowercase()));
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method.to_lowercase()] = o;
    }
    let (mut components, renamed) = schemas.finish();
    for (path, method) in operations {
        let op = &mut paths[path][&method];
        if let Some(b) = op.get_mut("requestBody") {
            rename_refs(b, &renamed);
        }
        if let Some(p) = op.get_mut("parameters") {
            rename_refs(p, &renamed);
        }
    }
    components.insert(
        "Error".into(),
        json!({"$ref": "#/components/schemas/ApiError"}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Fleet controller API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every route of the controller: the agents', the operators', the webhook, \
                /metrics, /healthz and the dashboard's pages and forms. Errors of the API are \
                `{\"error\": \"…\"}`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer", "description": "A user's API token (`fleet-controller users add`)"},
                "deviceToken": {"type": "http", "scheme": "bearer", "description": "A device's token, from enrollment"},
                "bootstrapToken": {"type": "http", "scheme": "bearer", "description": "A bootstrap token (`fleet-controller bootstrap-token create`)"},
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "The token of `metrics_token_file`, when configured"},
                "session": {"type": "apiKey", "in": "cookie", "name": crate::dashboard::session::COOKIE, "description": "The dashboard's session cookie"},
            },
            "schemas": components,
        },
    })
}
