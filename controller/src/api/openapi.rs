//! The OpenAPI 3.1 document, generated from the route table.

use axum::Json;
use serde_json::{json, Map, Value};

use super::ROUTES;

/// `GET /api/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(build())
}

/// The document.
pub fn build() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in ROUTES {
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
