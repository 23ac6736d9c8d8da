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
