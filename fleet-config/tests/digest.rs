//! The release digest: fixed vectors (computed by an independent implementation of the
//! encoding documented in `src/digest.rs`), properties, and Git checkout vs plain copy.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use fleet_config::{digest_dir, digest_tree, DigestBuilder, FileMode, RepoTree, TreeDigest};
use proptest::prelude::*;

fn mem(files: &[(&str, &[u8], bool)]) -> RepoTree {
    RepoTree::from_memory(
        files
            .iter()
            .map(|(p, c, x)| (p.to_string(), c.to_vec(), *x)),
    )
    .expect("valid tree")
}

fn hex(d: TreeDigest) -> String {
    d.to_string()
}

#[test]
fn fixed_vectors() {
    assert_eq!(
        hex(digest_tree(&mem(&[])).expect("digest")),
        "sha256:4ea6456c596e7407020e6c956281231532af38add02008041acf5165ec5c8533"
    );
    assert_eq!(
        hex(digest_tree(&mem(&[("a.txt", b"hello\n", false)])).expect("digest")),
        "sha256:722c7bf9b136f8399fc6c638d8e90b8a12320038572deaf9c708246a40415ed5"
    );
    let tree = mem(&[
        ("stacks/app/compose.yaml", b"services: {}\n", false),
        ("bin/run.sh", b"#!/bin/sh\necho hi\n", true),
        ("a.txt", b"hello\n", false),
    ])
    .with_symlink("link", "a.txt")
    .expect("symlink");
    let expected = "sha256:09e714e077d0ae172f5bbe25251d7d3d618495ec34bd51a700619ef24292e10b";
    assert_eq!(hex(digest_tree(&tree).expect("digest")), expected);

    // The same through the builder, as a Git-tree walker would feed it.
    let mut b = DigestBuilder::new();
    b.add("a.txt", FileMode::Regular, b"hello\n")
        .expect("order");
    b.add("bin/run.sh", FileMode::Executable, b"#!/bin/sh\necho hi\n")
        .expect("order");
    b.add("link", FileMode::Symlink, b"a.txt").expect("order");
    b.add(
        "stacks/app/compose.yaml",
        FileMode::Regular,
        b"services: {}\n",
    )
    .expect("order");
    assert_eq!(hex(b.finish()), expected);
}

#[test]
fn builder_refuses_out_of_order_entries() {
    let mut b = DigestBuilder::new();
    b.add("b", FileMode::Regular, b"").expect("first");
    assert!(b.add("a", FileMode::Regular, b"").is_err());
    assert!(
        b.add("b", FileMode::Regular, b"").is_err(),
        "duplicates refused"
    );
}

#[test]
fn digest_round_trips_as_text() {
    let d = digest_tree(&mem(&[("x", b"1", false)])).expect("digest");
    let parsed: TreeDigest = d.to_string().parse().expect("parses");
    assert_eq!(parsed, d);
    assert!("sha256:xyz".parse::<TreeDigest>().is_err());
    assert!("md5:00".parse::<TreeDigest>().is_err());
}

fn write_tree(root: &Path, files: &[(String, Vec<u8>, bool)]) {
    for (p, c, x) in files {
        let full = root.join(p);
        fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        fs::write(&full, c).expect("write");
        let mode = if *x { 0o755 } else { 0o644 };
        fs::set_permissions(&full, fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

fn git(dir: &Path, args: &[&str]) -> bool {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn git_checkout_and_plain_copy_agree() {
    if Command::new("git").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("FLEET_REQUIRE_GIT").is_none(),
            "git is required (FLEET_REQUIRE_GIT is set) but not installed"
        );
        eprintln!("SKIP git_checkout_and_plain_copy_agree: `git` is not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo");
    let files: Vec<(String, Vec<u8>, bool)> = RepoTree::from_dir(&example)
        .expect("example")
        .entries()
        .iter()
        .map(|e| {
            (
                e.path.clone(),
                fs::read(example.join(&e.path)).expect("read"),
                false,
            )
        })
        .chain([("hooks/run.sh".to_string(), b"#!/bin/sh\n".to_vec(), true)])
        .collect();
    write_tree(&src, &files);
    std::os::unix::fs::symlink("../stacks/app/www/healthz", src.join("hooks/health-link"))
        .expect("symlink");
    assert!(git(&src, &["init", "-q", "-b", "main"]));
    assert!(git(&src, &["add", "-A"]));
    assert!(git(&src, &["commit", "-q", "-m", "release"]));
    let clone = tmp.path().join("clone");
    assert!(git(tmp.path(), &["clone", "-q", "src", "clone"]));
    // A plain copy made with a different umask and timestamps, without .git.
    let copy = tmp.path().join("copy");
    write_tree(&copy, &files);
    for (p, _, x) in &files {
        let mode = if *x { 0o700 } else { 0o600 };
        fs::set_permissions(copy.join(p), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::os::unix::fs::symlink("../stacks/app/www/healthz", copy.join("hooks/health-link"))
        .expect("symlink");
    fs::create_dir_all(copy.join("empty-dir")).expect("empty dir is ignored like git does");

    let a = digest_dir(&src).expect("src");
    let b = digest_dir(&clone).expect("clone");
    let c = digest_dir(&copy).expect("copy");
    assert_eq!(a, b, "the .git directory must not count");
    assert_eq!(b, c, "a checkout and a plain copy must agree");
}

fn arb_tree() -> impl Strategy<Value = Vec<(String, Vec<u8>, bool)>> {
    let path = "[a-c]{1,2}(/[a-c]{1,2}){0,2}";
    prop::collection::btree_map(
        path,
        (prop::collection::vec(any::<u8>(), 0..40), any::<bool>()),
        1..8,
    )
    .prop_filter("no path may be both a file and a directory", |m| {
        m.keys()
            .all(|a| m.keys().all(|b| !b.starts_with(&format!("{a}/"))))
    })
    .prop_map(|m| m.into_iter().map(|(p, (c, x))| (p, c, x)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn stable_under_file_order(files in arb_tree(), seed in any::<u64>()) {
        let mut shuffled = files.clone();
        // A deterministic shuffle from the seed.
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        let a = digest_tree(&RepoTree::from_memory(files).expect("tree")).expect("digest");
        let b = digest_tree(&RepoTree::from_memory(shuffled).expect("tree")).expect("digest");
        prop_assert_eq!(a, b);
    }

    #[test]
    fn changes_with_any_byte(files in arb_tree(), which in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let before = digest_tree(&RepoTree::from_memory(files.clone()).expect("tree")).expect("digest");
        let mut changed = files;
        let i = which.index(changed.len());
        if changed[i].1.is_empty() {
            changed[i].1.push(flip);
        } else {
            let p = pos.index(changed[i].1.len());
            changed[i].1[p] ^= flip;
        }
        let after = digest_tree(&RepoTree::from_memory(changed).expect("tree")).expect("digest");
        prop_assert_ne!(before, after);
    }

    #[test]
    fn changes_with_mode(files in arb_tree(), which in any::<prop::sample::Index>()) {
        let before = digest_tree(&RepoTree::from_memory(files.clone()).expect("tree")).expect("digest");
        let mut changed = files;
        let i = which.index(changed.len());
        changed[i].2 = !changed[i].2;
        let after = digest_tree(&RepoTree::from_memory(changed).expect("tree")).expect("digest");
        prop_assert_ne!(before, after);
    }

    #[test]
    fn changes_with_path(files in arb_tree(), which in any::<prop::sample::Index>()) {
        let before = digest_tree(&RepoTree::from_memory(files.clone()).expect("tree")).expect("digest");
        let mut changed = files;
        let i = which.index(changed.len());
        // Rename to a path no generated path can have (they use only a-c).
        changed[i].0 = format!("{}z", changed[i].0);
        let after = digest_tree(&RepoTree::from_memory(changed).expect("tree")).expect("digest");
        prop_assert_ne!(before, after);
    }

    #[test]
    fn moving_bytes_between_files_changes_it(a in prop::collection::vec(any::<u8>(), 1..20), b in prop::collection::vec(any::<u8>(), 1..20)) {
        // "ab" + "" must differ from "a" + "b": lengths are part of the encoding.
        let mut joined = a.clone();
        joined.extend(&b);
        let one = RepoTree::from_memory(vec![("x".into(), joined, false), ("y".into(), vec![], false)]).expect("tree");
        let two = RepoTree::from_memory(vec![("x".into(), a, false), ("y".into(), b, false)]).expect("tree");
        prop_assert_ne!(digest_tree(&one).expect("d"), digest_tree(&two).expect("d"));
    }
}
