//! The controller's layout (DESIGN.md, "Layout"): `api/` (JSON) and `dashboard/` (HTML) are two
//! faces over one service layer; neither imports the other, and the service, the engine and the
//! rollout machine import neither face. Dependencies point one way: faces → service → engine,
//! db. Only the composition root (`server.rs`) and the route table (`routes.rs`) know both faces.

use std::path::{Path, PathBuf};

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

/// (files whose path under `src/` starts with one of these, what they must not mention).
const RULES: &[(&[&str], &[&str])] = &[
    (
        &["api/"],
        &[
            "crate::dashboard",
            "super::super::dashboard",
            "crate::routes",
        ],
    ),
    (
        &["dashboard/"],
        &["crate::api", "super::super::api", "crate::routes"],
    ),
    (
        &["service/"],
        &["crate::api", "crate::dashboard", "crate::routes"],
    ),
    (
        &["engine", "rollout/", "watcher.rs", "leader.rs"],
        &[
            "crate::api",
            "crate::dashboard",
            "crate::service",
            "crate::routes",
        ],
    ),
    (
        &["state.rs", "snapshot.rs", "route.rs", "summary.rs"],
        &[
            "crate::api",
            "crate::dashboard",
            "crate::service",
            "crate::routes",
            "crate::engine",
        ],
    ),
];

/// Every mention that breaks a rule, as `file:line: text`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(f).expect("read");
        for (prefixes, banned) in RULES {
            if !prefixes.iter().any(|p| rel.starts_with(p)) {
                continue;
            }
            for (n, line) in text.lines().enumerate() {
                for b in *banned {
                    if line.contains(b) {
                        found.push(format!(
                            "src/{rel}:{}: mentions `{b}`: {}",
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn faces_service_and_engine_import_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "a module imports against the layout (faces → service → engine, db):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_rules_see_the_modules_they_name() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for dir in ["api", "dashboard", "service", "rollout"] {
        assert!(src.join(dir).is_dir(), "src/{dir}/ exists");
    }
    for file in [
        "engine.rs",
        "state.rs",
        "snapshot.rs",
        "route.rs",
        "routes.rs",
        "server.rs",
    ] {
        assert!(src.join(file).is_file(), "src/{file} exists");
    }
}
