//! Fuzzes the repository loader: arbitrary bytes become a repository's files, and validation
//! and the digest must return (errors are fine) without panicking, hanging or exhausting memory.
#![no_main]

use fleet_config::{digest_tree, validate_tree, RepoTree};
use libfuzzer_sys::fuzz_target;

/// The input is split on NUL bytes into these files, in order.
const FILES: &[&str] = &[
    "fleet.yaml",
    "devices.yaml",
    "stacks/app/compose.yaml",
    "stacks/metrics/compose.yaml",
    "stacks/app/www/healthz",
];

fuzz_target!(|data: &[u8]| {
    let files: Vec<(String, Vec<u8>, bool)> = data
        .split(|b| *b == 0)
        .zip(FILES)
        .map(|(content, path)| (path.to_string(), content.to_vec(), false))
        .collect();
    let Ok(tree) = RepoTree::from_memory(files) else {
        return;
    };
    let validation = validate_tree(&tree);
    // Whatever the input, a repository is either valid or has at least one error.
    assert_eq!(validation.repo.is_some(), !validation.diagnostics.has_errors());
    for d in validation.diagnostics.sorted() {
        assert!(d.pos.line >= 1 && d.pos.col >= 1);
        let _ = d.to_string();
    }
    let _ = digest_tree(&tree);
});
