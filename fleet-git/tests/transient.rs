//! A good cache opened while the process is out of file descriptors (EMFILE, as under a flood
//! of connections to the controller) is reported, never taken for corrupt and moved aside. One
//! test in its own binary: it exhausts this process's descriptors.

use std::fs::File;
use std::path::Path;

use fleet_git::GitCache;

/// A bare cache with one commit under `refs/fleet/0/heads/main`.
fn good_cache(path: &Path) -> git2::Oid {
    GitCache::open_or_init(path).expect("create");
    let repo = git2::Repository::open_bare(path).expect("open");
    let sig = git2::Signature::now("t", "t@example.invalid").expect("sig");
    let tree = repo
        .treebuilder(None)
        .and_then(|b| b.write())
        .expect("tree");
    let tree = repo.find_tree(tree).expect("tree");
    repo.commit(
        Some("refs/fleet/0/heads/main"),
        &sig,
        &sig,
        "v1",
        &tree,
        &[],
    )
    .expect("commit")
}

fn corrupt_copies(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect()
}

#[test]
fn a_cache_opened_without_descriptors_is_not_taken_for_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("git-cache");
    let head = good_cache(&path);

    // Take every descriptor this process may open.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    rlimit::setrlimit(rlimit::Resource::NOFILE, 256, hard).expect("setrlimit");
    let mut held = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        held.push(f);
    }
    let result = GitCache::open_or_init(&path);
    drop(held);

    let copies = corrupt_copies(dir.path());
    assert!(
        copies.is_empty(),
        "a good cache was moved aside: {copies:?} ({result:?})"
    );
    let err = result.expect_err("the open fails while descriptors are exhausted");
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        text.contains("descriptor") || text.contains("Too many open files"),
        "{text}"
    );

    // Descriptors back: the same cache, untouched.
    let cache = GitCache::open_or_init(&path).expect("open");
    assert!(cache.recovery().is_none());
    assert_eq!(
        cache.tracking_head(0, "main").expect("head"),
        Some(head.to_string())
    );
}
