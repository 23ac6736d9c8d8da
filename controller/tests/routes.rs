//! One route table: the router and the OpenAPI document come from the same list
//! (`fleet_controller::routes::table`), so a route cannot be served undocumented or documented
//! unserved. Checked three ways: the document holds exactly the table; over HTTP, every
//! documented (method, path) is answered by its handler (never the router's "no route"
//! fallback) and a documented path answers no undocumented method; and no source file outside
//! `src/routes.rs` adds routes to a router by itself.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use support::{test_config, TestController};

/// What a path looks like with its `{param}`s filled.
fn filled(path: &str) -> String {
    path.replace("{id}", "x").replace("{action}", "pause")
}

#[test]
fn the_document_holds_exactly_the_table() {
    let doc = fleet_controller::routes::openapi();
    let mut seen = BTreeSet::new();
    for r in fleet_controller::routes::table() {
        assert!(
            seen.insert((r.method, r.path)),
            "{} {} is in the table twice",
            r.method,
            r.path
        );
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from the document",
            r.method,
            r.path
        );
        assert_eq!(op["summary"], r.summary, "{} {}", r.method, r.path);
    }
    let documented: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|ops| ops.as_object().expect("operations").len())
        .sum();
    assert_eq!(
        documented,
        seen.len(),
        "the document has operations the table lacks"
    );
}

#[tokio::test]
async fn every_documented_route_is_served_and_nothing_undocumented_on_its_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let c = TestController::start(test_config(dir.path(), &url, None)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let is_fallback = |status: StatusCode, body: &str| {
        status == StatusCode::NOT_FOUND && body.contains("no route")
    };

    // The check below means something: an unknown path does get the fallback.
    for path in ["/api/v1/no-such-route", "/ui/no-such-route", "/devices/x/y"] {
        let resp = http.get(c.url(path)).send().await.expect("request");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(is_fallback(status, &body), "GET {path}: {status} {body}");
    }

    let mut methods: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in fleet_controller::routes::table() {
        methods.entry(r.path).or_default().insert(r.method);
        let path = filled(r.path);
        let resp = http
            .request(r.method.parse().expect("method"), c.url(&path))
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            !is_fallback(status, &body) && status != StatusCode::METHOD_NOT_ALLOWED,
            "{} {path} is documented but not routed: {status} {body}",
            r.method
        );
    }
    // A documented path answers its documented methods only (HEAD comes with GET).
    for (path, documented) in &methods {
        for m in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            if documented.contains(m.as_str()) {
                continue;
            }
            let resp = http
                .request(m.clone(), c.url(&filled(path)))
                .send()
                .await
                .expect("request");
            assert_eq!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is served but not documented"
            );
        }
    }
    c.stop().await;
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The calls that add routes (or whole routers) to an axum `Router`.
const ROUTING_CALLS: &[&str] = &[
    ".route(",
    ".route_service(",
    ".nest(",
    ".nest_service(",
    ".merge(",
    ".fallback(",
    "Router::new(",
];

/// Every place in `src/` outside `src/routes.rs` that calls one of [`ROUTING_CALLS`].
fn routing_outside_the_table(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let table = src.join("routes.rs");
    let mut found = Vec::new();
    for f in files.iter().filter(|f| **f != table) {
        let text = std::fs::read_to_string(f).expect("read");
        for (n, line) in text.lines().enumerate() {
            for call in ROUTING_CALLS {
                if line.contains(call) {
                    found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn no_route_is_added_outside_the_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = routing_outside_the_table(&src);
    assert!(
        found.is_empty(),
        "routes are added only in src/routes.rs, from the table (so the OpenAPI document \
         has them); found:\n{}",
        found.join("\n")
    );
    // The scan sees what it looks for.
    let table = std::fs::read_to_string(src.join("routes.rs")).expect("routes.rs");
    assert!(table.contains(".route("), "src/routes.rs builds the router");
}

/// Every `$ref` in `v`, as JSON pointers into the document.
fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| refs(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_operation_describes_its_body_its_answers_its_refusals_and_its_security() {
    let doc = fleet_controller::routes::openapi();
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(
        all_refs.len() > 50,
        "the schemas are shared components ({} refs)",
        all_refs.len()
    );
    for r in &all_refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("a remote $ref {r}"));
        assert!(
            doc.pointer(pointer).is_some_and(|s| s.is_object()),
            "$ref {r} names no schema"
        );
    }
    // Every schema is a valid JSON Schema 2020-12.
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        let mut root = serde_json::json!({"components": doc["components"].clone()});
        root["allOf"] = serde_json::json!([schema]);
        jsonschema::draft202012::meta::validate(&root)
            .unwrap_or_else(|e| panic!("schema {name} is not JSON Schema 2020-12: {e}"));
    }
    for r in fleet_controller::routes::table() {
        let what = format!("{} {}", r.method, r.path);
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        let responses = op["responses"].as_object().expect("responses");
        assert!(op["security"].is_array(), "{what}: no security requirement");
        // A success, described with its body (a form's success is a redirect).
        let ok = responses.get("200").or_else(|| responses.get("303"));
        assert!(ok.is_some(), "{what}: no success answer");
        if let Some(ok) = responses.get("200") {
            let content = ok["content"].as_object().expect("200 content");
            assert!(!content.is_empty(), "{what}: 200 without content");
            for (media, c) in content {
                assert!(
                    c["schema"].is_object(),
                    "{what}: 200 {media} without a schema"
                );
            }
        }
        // Every answer but a redirect has a body with a schema.
        for (status, a) in responses {
            if status == "303" {
                continue;
            }
            let content = a["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{what}: {status} without content"));
            assert!(
                content.values().all(|c| c["schema"].is_object()),
                "{what}: {status} without a schema"
            );
        }
        // Every POST reads a body, and says so.
        if r.method == "POST" {
            let body = &op["requestBody"];
            assert!(body.is_object(), "{what}: POST without a request body");
            let content = body["content"].as_object().expect("body content");
            assert_eq!(content.len(), 1, "{what}");
            assert!(
                content.values().all(|c| c["schema"].is_object()),
                "{what}: body without a schema"
            );
            assert!(responses.contains_key("413"), "{what}: no 413");
            if content.contains_key("application/json") && r.auth != "hmac" {
                assert!(responses.contains_key("415"), "{what}: no 415");
                let error = &responses["400"]["content"]["application/json"]["schema"];
                assert!(
                    error["$ref"].is_string(),
                    "{what}: 400 is not the error type"
                );
            }
        } else {
            assert!(op["requestBody"].is_null(), "{what}: GET with a body");
        }
        // The credential's refusals.
        match r.auth {
            "viewer" | "operator" | "admin" | "device" => {
                assert!(responses.contains_key("401"), "{what}: no 401");
                assert_eq!(
                    op["security"].as_array().map(Vec::len),
                    Some(1),
                    "{what}: the credential is required"
                );
            }
            "none" => assert_eq!(op["security"], serde_json::json!([]), "{what}"),
            _ => {}
        }
        if matches!(r.auth, "operator" | "admin" | "session (operator)") {
            assert!(responses.contains_key("403"), "{what}: no 403");
        }
        if r.path.contains('{') {
            assert!(responses.contains_key("404"), "{what}: no 404");
        }
        assert!(responses.contains_key("408"), "{what}: no 408");
    }
    // What the limits and the handlers answer, where they can.
    let statuses = |m: &str, p: &str| -> Vec<String> {
        doc["paths"][p][m]["responses"]
            .as_object()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    };
    for (m, p, want) in [
        ("post", "/api/v1/enroll", &["401", "403", "409", "429"][..]),
        (
            "post",
            "/api/v1/enroll/claim",
            &["404", "409", "410", "429"],
        ),
        (
            "post",
            "/api/v1/devices/approve",
            &["404", "409", "410", "429"],
        ),
        ("post", "/api/v1/checkin", &["401", "403", "413"]),
        ("post", "/login", &["401", "403", "415", "429"]),
    ] {
        let have = statuses(m, p);
        for s in want {
            assert!(have.iter().any(|h| h == s), "{m} {p}: no {s} in {have:?}");
        }
    }
    let retry =
        &doc["paths"]["/api/v1/enroll"]["post"]["responses"]["429"]["headers"]["Retry-After"];
    assert!(retry.is_object(), "429 says Retry-After");
    // The typed answers are the handlers' types, not `{}`.
    let checkin = &doc["paths"]["/api/v1/checkin"]["post"];
    assert_eq!(
        checkin["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CheckinRequest"
    );
    assert_eq!(
        checkin["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CheckinResponse"
    );
    let audit = &doc["paths"]["/api/v1/audit"]["get"];
    assert_eq!(audit["parameters"][0]["name"], "limit", "{audit}");
    assert_eq!(audit["parameters"][0]["in"], "query");
}

/// The schema the document declares for `method path` answering `status` in `media`.
fn declared(
    doc: &serde_json::Value,
    method: &str,
    path: &str,
    status: u16,
    media: &str,
) -> serde_json::Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let answer = &op["responses"][status.to_string()];
    assert!(
        answer.is_object(),
        "{method} {path} answered {status}, which the document does not list"
    );
    let schema = &answer["content"][media]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} answered `{media}`, which the document does not list: {answer}"
    );
    schema.clone()
}

/// Checks a real answer against the document: its status and media type are declared and its
/// body validates against the declared schema. Returns the body.
async fn conforms(
    doc: &serde_json::Value,
    method: &str,
    path: &str,
    resp: reqwest::Response,
) -> serde_json::Value {
    let status = resp.status().as_u16();
    let media = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_owned();
    let text = resp.text().await.expect("body");
    let schema = declared(doc, method, path, status, &media);
    let body: serde_json::Value = if media == "application/json" {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    } else {
        serde_json::Value::String(text)
    };
    let mut root = serde_json::json!({"components": doc["components"].clone()});
    root["allOf"] = serde_json::json!([schema]);
    let validator = jsonschema::draft202012::new(&root).expect("the declared schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the answer breaks its schema:\n{}\nbody: {body}",
        errors.join("\n")
    );
    body
}

#[tokio::test]
async fn real_answers_validate_against_the_declared_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let git =
        support::git_daemon::git_available("real_answers_validate_against_the_declared_schemas");
    let repo = git.then(|| support::fleet_repo::FleetRepo::new(dir.path(), 3, 1, "1s"));
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let source = repo.as_ref().map(|r| fleet_controller::config::GitSource {
        endpoints: vec![r.url()],
        branch: "main".into(),
        poll_interval: Duration::from_millis(300),
        failover_timeout: Duration::from_secs(5),
    });
    let c = TestController::start(test_config(&dir.path().join("c"), &url, source)).await;
    let http = support::client();
    let doc = conforms(
        &fleet_controller::routes::openapi(),
        "GET",
        "/api/openapi.json",
        http.get(c.url("/api/openapi.json"))
            .send()
            .await
            .expect("doc"),
    )
    .await;
    assert_eq!(
        doc,
        fleet_controller::routes::openapi(),
        "the served document is the table's"
    );

    // Devices: enrolled with the bootstrap token, checked in with events.
    let mut tokens = Vec::new();
    for id in support::fleet_repo::device_ids(3) {
        let body = conforms(
            &doc,
            "POST",
            "/api/v1/enroll",
            http.post(c.url("/api/v1/enroll"))
                .bearer_auth(&c.bootstrap)
                .json(&serde_json::json!({"device_id": id, "hostname": "h", "arch": "aarch64", "agent_version": "0.1.0"}))
                .send()
                .await
                .expect("enroll"),
        )
        .await;
        tokens.push((id, body["token"].as_str().expect("token").to_owned()));
    }
    let pending = conforms(
        &doc,
        "POST",
        "/api/v1/enroll",
        http.post(c.url("/api/v1/enroll"))
            .json(&serde_json::json!({"device_id": "pairing-1", "hostname": "h", "arch": "x86_64", "agent_version": "0.1.0"}))
            .send()
            .await
            .expect("enroll"),
    )
    .await;
    assert_eq!(pending["status"], "pending");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    for (i, (id, token)) in tokens.iter().enumerate() {
        let body = serde_json::json!({
            "device_id": id, "agent_version": "0.1.0", "current": sha, "previous": null,
            "phase": "idle", "health": "healthy",
            "last_result": {"result": "succeeded", "release": sha},
            "telemetry": {"cpu_percent": 12.5, "mem_used_bytes": 1000, "temperature_c": 41.0},
            "events": [
                {"seq": 1, "at_ms": 1000, "event": "agent_started", "version": "0.1.0"},
                {"seq": 2, "at_ms": 2000, "event": "phase_changed", "phase": "fetching", "release": sha},
                {"seq": 3, "at_ms": 3000, "event": "problem_raised", "problem": "disk_full", "detail": "d"},
                {"seq": 4, "at_ms": 4000, "event": "update_finished", "result": {"result": "rolled_back", "release": sha, "reason": "r"}},
                {"seq": 5, "at_ms": 5000, "event": "drift_detected", "release": sha, "files": ["stacks/app/app.conf"], "services": ["app/web"]},
            ],
        });
        let answer = conforms(
            &doc,
            "POST",
            "/api/v1/checkin",
            http.post(c.url("/api/v1/checkin"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("checkin"),
        )
        .await;
        assert_eq!(answer["acked_seq"], 5, "device {i}");
    }

    // A release and its rollout, when Git is here.
    if let Some(repo) = &repo {
        repo.release("v1");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while c.db().active_rollouts().await.expect("rollouts").is_empty() {
            assert!(std::time::Instant::now() < deadline, "no rollout started");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let viewer_gets = [
        ("/api/v1/status", "/api/v1/status".to_owned()),
        ("/api/v1/devices", "/api/v1/devices?state=online".to_owned()),
        (
            "/api/v1/devices/{id}",
            format!("/api/v1/devices/{}", tokens[0].0),
        ),
        ("/api/v1/rollouts", "/api/v1/rollouts".to_owned()),
        ("/api/v1/audit", "/api/v1/audit?limit=50".to_owned()),
        ("/api/v1/releases", "/api/v1/releases".to_owned()),
        ("/healthz", "/healthz".to_owned()),
        ("/metrics", "/metrics".to_owned()),
    ];
    for (template, path) in &viewer_gets {
        let r = http
            .get(c.url(path))
            .bearer_auth(&c.viewer)
            .send()
            .await
            .expect("get");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        conforms(&doc, "GET", template, r).await;
    }
    let device = conforms(
        &doc,
        "GET",
        "/api/v1/devices/{id}",
        http.get(c.url(&format!("/api/v1/devices/{}", tokens[0].0)))
            .bearer_auth(&c.viewer)
            .send()
            .await
            .expect("device"),
    )
    .await;
    assert_eq!(
        device["events"].as_array().map(Vec::len),
        Some(5),
        "{device}"
    );
    // The newest first: the drift a device reported, as it reported it.
    assert_eq!(device["events"][0]["event"], "drift_detected", "{device}");
    assert_eq!(
        device["events"][0]["files"],
        serde_json::json!(["stacks/app/app.conf"]),
        "{device}"
    );
    assert_eq!(
        device["events"][0]["services"],
        serde_json::json!(["app/web"]),
        "{device}"
    );
    // Logs on request: asked, sent with a check-in, read back (every field of a tail).
    let (dev, dev_token) = &tokens[0];
    let asked = conforms(
        &doc,
        "POST",
        "/api/v1/devices/{id}/logs",
        http.post(c.url(&format!("/api/v1/devices/{dev}/logs")))
            .bearer_auth(&c.operator)
            .json(&serde_json::json!({"lines": 20, "services": ["agent", "web"]}))
            .send()
            .await
            .expect("request logs"),
    )
    .await;
    let request_id = asked["request"]["id"].as_u64().expect("request id");
    let tailed = conforms(
        &doc,
        "POST",
        "/api/v1/checkin",
        http.post(c.url("/api/v1/checkin"))
            .bearer_auth(dev_token)
            .json(&serde_json::json!({
                "device_id": dev, "agent_version": "0.1.0", "current": sha, "previous": null,
                "phase": "idle", "health": "healthy", "last_result": null,
                "logs": {"request_id": request_id, "collected_ms": 1000, "truncated": true, "sources": [
                    {"name": "agent", "status": "ok", "lines": [{"at_ms": 1, "text": "INFO started"}], "omitted": 4},
                    {"name": "app/web", "container": "c-web", "status": "ok",
                     "lines": [{"at_ms": 2, "stream": "stderr", "text": "oops"}]},
                    {"name": "app/side", "container": "c-side", "status": "unavailable", "detail": "driver none"},
                ]},
            }))
            .send()
            .await
            .expect("checkin with logs"),
    )
    .await;
    assert!(tailed.get("logs").is_none(), "answered: {tailed}");
    let logs = conforms(
        &doc,
        "GET",
        "/api/v1/devices/{id}/logs",
        http.get(c.url(&format!("/api/v1/devices/{dev}/logs")))
            .bearer_auth(&c.viewer)
            .send()
            .await
            .expect("logs"),
    )
    .await;
    assert_eq!(logs["request"]["state"], "answered", "{logs}");
    assert_eq!(logs["tail"]["sources"][1]["lines"][0]["stream"], "stderr");
    if repo.is_some() {
        let r = http
            .get(c.url("/api/v1/rollouts/active"))
            .bearer_auth(&c.viewer)
            .send()
            .await
            .expect("rollout");
        let rollout = conforms(&doc, "GET", "/api/v1/rollouts/{id}", r).await;
        let id = rollout["id"].as_str().expect("id").to_owned();
        let r = http
            .post(c.url(&format!("/api/v1/rollouts/{id}/pause")))
            .bearer_auth(&c.operator)
            .json(&serde_json::json!({"reason": "looking"}))
            .send()
            .await
            .expect("pause");
        let paused = conforms(&doc, "POST", "/api/v1/rollouts/{id}/{action}", r).await;
        assert_eq!(paused["state"], "paused");
    }

    // Operators' and admins' acts.
    let acts = [
        (
            "/api/v1/bootstrap-tokens",
            "/api/v1/bootstrap-tokens".to_owned(),
            &c.admin,
            serde_json::json!({"note": "n", "expires_in": "1h", "max_uses": 3, "selector": {"ring": "canary"}}),
        ),
        (
            "/api/v1/stop",
            "/api/v1/stop".to_owned(),
            &c.operator,
            serde_json::json!({"reason": "test", "rollback": false}),
        ),
        (
            "/api/v1/resume",
            "/api/v1/resume".to_owned(),
            &c.operator,
            serde_json::json!({"reason": "done"}),
        ),
        (
            "/api/v1/devices/{id}/safe-mode",
            format!("/api/v1/devices/{}/safe-mode", tokens[1].0),
            &c.operator,
            serde_json::json!({"on": true, "reason": "r"}),
        ),
        (
            "/api/v1/devices/{id}/revoke",
            format!("/api/v1/devices/{}/revoke", tokens[2].0),
            &c.operator,
            serde_json::json!({"reason": "lost"}),
        ),
    ];
    for (template, path, token, body) in &acts {
        let r = http
            .post(c.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        conforms(&doc, "POST", template, r).await;
    }
    let listed = conforms(
        &doc,
        "GET",
        "/api/v1/bootstrap-tokens",
        http.get(c.url("/api/v1/bootstrap-tokens"))
            .bearer_auth(&c.operator)
            .send()
            .await
            .expect("list"),
    )
    .await;
    let id = listed[0]["id"].as_str().expect("token id").to_owned();
    conforms(
        &doc,
        "POST",
        "/api/v1/bootstrap-tokens/{id}/revoke",
        http.post(c.url(&format!("/api/v1/bootstrap-tokens/{id}/revoke")))
            .bearer_auth(&c.operator)
            .send()
            .await
            .expect("revoke"),
    )
    .await;

    // Refusals, each in its declared form.
    let refusals: Vec<(&str, &str, reqwest::RequestBuilder, u16)> = vec![
        (
            "GET",
            "/api/v1/status",
            http.get(c.url("/api/v1/status")),
            401,
        ),
        (
            "POST",
            "/api/v1/stop",
            http.post(c.url("/api/v1/stop"))
                .bearer_auth(&c.viewer)
                .json(&serde_json::json!({"reason": "x"})),
            403,
        ),
        (
            "GET",
            "/api/v1/devices/{id}",
            http.get(c.url("/api/v1/devices/nobody"))
                .bearer_auth(&c.viewer),
            404,
        ),
        (
            "POST",
            "/api/v1/stop",
            http.post(c.url("/api/v1/stop"))
                .bearer_auth(&c.operator)
                .body("{"),
            400,
        ),
        (
            "POST",
            "/api/v1/stop",
            http.post(c.url("/api/v1/stop"))
                .bearer_auth(&c.operator)
                .header("content-type", "text/plain")
                .body(r#"{"reason":"x"}"#),
            415,
        ),
        (
            "POST",
            "/api/v1/devices/approve",
            http.post(c.url("/api/v1/devices/approve"))
                .bearer_auth(&c.operator)
                .json(&serde_json::json!({"code": "NOPE1234"})),
            404,
        ),
        (
            "POST",
            "/api/v1/checkin",
            http.post(c.url("/api/v1/checkin"))
                .bearer_auth(&tokens[2].1)
                .json(&serde_json::json!({})),
            401,
        ),
        (
            "GET",
            "/api/v1/audit",
            http.get(c.url("/api/v1/audit?limit=many"))
                .bearer_auth(&c.viewer),
            400,
        ),
        // Not UTF-8 once percent-decoded: axum's own refusal would be plain text.
        (
            "GET",
            "/api/v1/devices/{id}",
            http.get(c.url("/api/v1/devices/%FF%FE"))
                .bearer_auth(&c.viewer),
            400,
        ),
    ];
    for (method, template, req, want) in refusals {
        let r = req.send().await.expect("request");
        assert_eq!(r.status().as_u16(), want, "{method} {template}");
        let body = conforms(&doc, method, template, r).await;
        assert!(body["error"].is_string(), "{method} {template}: {body}");
    }
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = no_redirects
        .get(c.url("/devices"))
        .send()
        .await
        .expect("page");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let declared303 = &doc["paths"]["/devices"]["get"]["responses"]["303"];
    assert!(
        declared303.is_object(),
        "a page without a session redirects, as declared"
    );
    c.stop().await;
}
