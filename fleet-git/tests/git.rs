//! The Git layer against real `git daemon` servers on loopback: failover, timeouts, pinned
//! commits and exact checkouts.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_git::{abandoned_fetch_workers, Endpoint, GitCache, GitError, MAX_TREE_DEPTH};
use fleet_testkit::git_daemon::{
    git, git_available, git_with_input, init_bare, Entry, GitDaemon, HangingServer, WorkRepo,
};
use fleet_testkit::slow_link::{LinkShape, SlowLink};
use tempfile::TempDir;

/// Short, so the tests are quick; the agent's default is 30 s.
const FAILOVER: Duration = Duration::from_secs(3);

/// Generous slack on top of [`FAILOVER`] for a noisy 2-core machine.
const MARGIN: Duration = Duration::from_secs(20);

const REPO: &str = "fleet.git";

/// A primary and a mirror daemon, each serving its own `fleet.git`, a working repository to
/// build releases in, and a device cache.
struct Lab {
    root: TempDir,
    primary: GitDaemon,
    mirror: GitDaemon,
    primary_repo: PathBuf,
    mirror_repo: PathBuf,
    work: WorkRepo,
    cache: GitCache,
}

impl Lab {
    fn new() -> Lab {
        let root = tempfile::tempdir().expect("tempdir");
        let primary_base = root.path().join("primary");
        let mirror_base = root.path().join("mirror");
        fs::create_dir_all(&primary_base).expect("mkdir");
        fs::create_dir_all(&mirror_base).expect("mkdir");
        let primary_repo = init_bare(&primary_base, REPO);
        let mirror_repo = init_bare(&mirror_base, REPO);
        let work = WorkRepo::init(&root.path().join("work"));
        let cache =
            GitCache::open_or_init(root.path().join("device/git-cache.git")).expect("open cache");
        Lab {
            primary: GitDaemon::start(&primary_base),
            mirror: GitDaemon::start(&mirror_base),
            root,
            primary_repo,
            mirror_repo,
            work,
            cache,
        }
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        vec![
            Endpoint::new(self.primary.url(REPO)),
            Endpoint::new(self.mirror.url(REPO)),
        ]
    }

    /// Commits `entries` and pushes the commit to `main` on both servers.
    fn release(&self, message: &str, entries: &[(&str, Entry<'_>)]) -> String {
        let sha = self.work.commit(message, entries);
        self.work.push(&self.primary_repo, "main");
        self.work.push(&self.mirror_repo, "main");
        sha
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.root.path().join("releases").join(name)
    }
}

/// Every file under `dir` with its content: equal snapshots mean nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let content = fs::read(&path).expect("read file");
                files.insert(path, content);
            }
        }
    }
    files
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn fetch_from_primary_then_incremental_fetch_gets_new_head() {
    if !git_available("fetch_from_primary_then_incremental_fetch_gets_new_head") {
        return;
    }
    let lab = Lab::new();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|n| {
            (
                format!("stacks/s{n}/compose.yaml"),
                format!("n: {n}\n").into_bytes(),
            )
        })
        .collect();
    let entries: Vec<(&str, Entry<'_>)> = files
        .iter()
        .map(|(path, content)| (path.as_str(), Entry::File(content)))
        .collect();
    let first = lab.release("first release", &entries);

    let outcome = lab
        .cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("fetch");
    assert_eq!(outcome.endpoint_index, 0);
    assert_eq!(outcome.endpoint, lab.primary.url(REPO));
    assert_eq!(outcome.head, first);
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.tracking_ref, "refs/fleet/0/heads/main");
    assert_eq!(
        lab.cache.tracking_head(0, "main").expect("ref"),
        Some(first.clone())
    );
    assert!(lab.cache.has_commit(&first).expect("lookup"));
    let first_objects = outcome.received_objects;
    assert!(first_objects > 20, "received {first_objects}");

    let second = lab.release(
        "second release",
        &[("stacks/s3/compose.yaml", Entry::File(b"n: changed\n"))],
    );
    let outcome = lab
        .cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("second fetch");
    assert_eq!(outcome.endpoint_index, 0);
    assert_eq!(outcome.head, second);
    // Incremental: one commit, the trees on the changed path and one blob, not the 20 files.
    assert!(
        outcome.received_objects > 0 && outcome.received_objects < 10,
        "second fetch received {} objects (first: {first_objects})",
        outcome.received_objects
    );
    assert!(lab.cache.has_commit(&first).expect("lookup"));

    let outcome = lab
        .cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("third fetch");
    assert_eq!(outcome.head, second);
    assert_eq!(outcome.received_objects, 0, "nothing new to fetch");
}

#[test]
fn primary_killed_fails_over_to_mirror() {
    if !git_available("primary_killed_fails_over_to_mirror") {
        return;
    }
    let mut lab = Lab::new();
    let first = lab.release("first", &[("compose.yaml", Entry::File(b"v: 1\n"))]);
    let outcome = lab
        .cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("fetch");
    assert_eq!(
        (outcome.endpoint_index, outcome.head.as_str()),
        (0, first.as_str())
    );

    lab.primary.stop();
    assert!(!lab.primary.is_running());
    let second = lab.release("second", &[("compose.yaml", Entry::File(b"v: 2\n"))]);

    let started = Instant::now();
    let outcome = lab
        .cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("fetch from mirror");
    let elapsed = started.elapsed();
    assert!(elapsed < FAILOVER + MARGIN, "took {elapsed:?}");
    assert_eq!(outcome.endpoint_index, 1);
    assert_eq!(outcome.endpoint, lab.mirror.url(REPO));
    assert_eq!(outcome.head, second);
    assert_eq!(outcome.tracking_ref, "refs/fleet/1/heads/main");
    assert_eq!(outcome.failures.len(), 1, "{:?}", outcome.failures);
    let failure = &outcome.failures[0];
    assert_eq!(failure.index, 0);
    assert_eq!(failure.endpoint, lab.primary.url(REPO));
    assert!(
        matches!(failure.error, GitError::Fetch { .. }),
        "a refused connection is a fetch error: {:?}",
        failure.error
    );
    // What the primary said is kept apart from what the mirror said.
    assert_eq!(
        lab.cache.tracking_head(0, "main").expect("ref"),
        Some(first)
    );
    assert_eq!(
        lab.cache.tracking_head(1, "main").expect("ref"),
        Some(second)
    );

    // The primary comes back: it is preferred again.
    lab.primary.restart();
    let outcome = lab
        .cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("fetch");
    assert_eq!(outcome.endpoint_index, 0);
    assert!(outcome.failures.is_empty());
}

#[test]
fn hanging_endpoint_is_abandoned_after_failover_timeout() {
    if !git_available("hanging_endpoint_is_abandoned_after_failover_timeout") {
        return;
    }
    let lab = Lab::new();
    let sha = lab.release("release", &[("compose.yaml", Entry::File(b"v: 1\n"))]);
    let hanging = HangingServer::start();
    let endpoints = vec![
        Endpoint::new(hanging.url(REPO)),
        Endpoint::new(lab.mirror.url(REPO)),
    ];

    let started = Instant::now();
    let outcome = lab
        .cache
        .fetch(&endpoints, "main", FAILOVER)
        .expect("fetch from mirror");
    let elapsed = started.elapsed();
    assert!(elapsed >= FAILOVER, "gave up early: {elapsed:?}");
    assert!(elapsed < FAILOVER + MARGIN, "took {elapsed:?}");
    assert_eq!(outcome.endpoint_index, 1);
    assert_eq!(outcome.head, sha);
    assert_eq!(outcome.failures.len(), 1);
    assert_eq!(outcome.failures[0].endpoint, hanging.url(REPO));
    match &outcome.failures[0].error {
        GitError::FetchTimedOut { after, .. } => assert_eq!(*after, FAILOVER),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Its worker is still blocked on the silent server, counted until it ends.
    assert!(abandoned_fetch_workers() >= 1);
    assert_eq!(lab.cache.tracking_head(0, "main").expect("ref"), None);
}

/// Incompressible bytes (xorshift64), so a pack holding them is as large as they are.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The failover timeout of the slow-link tests: shorter than their transfers take.
const SLOW_FAILOVER: Duration = Duration::from_secs(2);

#[test]
fn slow_transfer_that_keeps_coming_is_not_cut_off_by_the_failover_timeout() {
    if !git_available("slow_transfer_that_keeps_coming_is_not_cut_off_by_the_failover_timeout") {
        return;
    }
    let lab = Lab::new();
    let big = noise(1_500_000, 7);
    let sha = lab.release("a large release", &[("blob.bin", Entry::File(&big))]);
    // 256 KiB/s: the 1.5 MB pack takes about six seconds, three failover timeouts.
    let link = SlowLink::start(
        ([127, 0, 0, 1], lab.primary.port()).into(),
        LinkShape {
            bytes_per_second: 256 * 1024,
            stall_after: None,
        },
    );
    let started = Instant::now();
    let outcome = lab
        .cache
        .fetch_commit(
            &[Endpoint::new(link.url(REPO))],
            &sha,
            "main",
            SLOW_FAILOVER,
        )
        .expect("a slow transfer that keeps coming is waited for");
    let elapsed = started.elapsed();
    assert!(
        elapsed > SLOW_FAILOVER * 2,
        "the transfer should have outlasted the failover timeout: {elapsed:?}"
    );
    assert!(link.passed() > 1_500_000, "passed {}", link.passed());
    let fetched = outcome.fetched.expect("it was fetched");
    assert_eq!(fetched.endpoint_index, 0);
    assert!(fetched.failures.is_empty(), "{:?}", fetched.failures);
    assert!(lab.cache.has_commit(&sha).expect("lookup"));
}

#[test]
fn transfer_that_stalls_half_way_is_given_up_after_the_silence_and_the_cache_is_kept() {
    if !git_available(
        "transfer_that_stalls_half_way_is_given_up_after_the_silence_and_the_cache_is_kept",
    ) {
        return;
    }
    let lab = Lab::new();
    let first = lab.release("first", &[("compose.yaml", Entry::File(b"v: 1\n"))]);
    lab.cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("first fetch");
    let big = noise(1_500_000, 11);
    let second = lab.release("a large release", &[("blob.bin", Entry::File(&big))]);
    // The primary's answer stops after 300 kB: the link is up, nothing more comes.
    let link = SlowLink::start(
        ([127, 0, 0, 1], lab.primary.port()).into(),
        LinkShape {
            bytes_per_second: 1024 * 1024,
            stall_after: Some(300_000),
        },
    );
    let endpoints = vec![
        Endpoint::new(link.url(REPO)),
        Endpoint::new(lab.mirror.url(REPO)),
    ];
    let started = Instant::now();
    let outcome = lab
        .cache
        .fetch_commit(&endpoints, &second, "main", SLOW_FAILOVER)
        .expect("the mirror serves it");
    let elapsed = started.elapsed();
    assert!(elapsed >= SLOW_FAILOVER, "gave up early: {elapsed:?}");
    assert!(elapsed < SLOW_FAILOVER + MARGIN, "took {elapsed:?}");
    assert_eq!(link.passed(), 300_000, "the link passed part of the pack");
    let fetched = outcome.fetched.expect("fetched");
    assert_eq!(fetched.endpoint_index, 1);
    assert_eq!(fetched.failures.len(), 1);
    assert!(
        matches!(fetched.failures[0].error, GitError::FetchTimedOut { after, .. } if after == SLOW_FAILOVER),
        "{:?}",
        fetched.failures[0].error
    );
    assert!(
        fetched.failures[0]
            .error
            .to_string()
            .contains("nothing received for 2s"),
        "{}",
        fetched.failures[0].error
    );
    // What was fetched before the stall is still there, and so is the new release.
    assert!(lab.cache.has_commit(&first).expect("lookup"));
    assert!(lab.cache.has_commit(&second).expect("lookup"));
    assert_eq!(
        lab.cache.tracking_head(0, "main").expect("ref"),
        Some(first),
        "the stalled endpoint's ref still says what it served last"
    );
}

#[test]
fn mirror_branch_elsewhere_cannot_change_pinned_commit() {
    if !git_available("mirror_branch_elsewhere_cannot_change_pinned_commit") {
        return;
    }
    let mut lab = Lab::new();
    let pinned = lab.work.commit(
        "release v1",
        &[("compose.yaml", Entry::File(b"image: app:v1\n"))],
    );
    lab.work.push(&lab.primary_repo, "main");
    // The mirror's branch is ahead of the pinned release, with other content.
    let other = lab.work.commit(
        "not the release",
        &[("compose.yaml", Entry::File(b"image: evil:latest\n"))],
    );
    lab.work.push(&lab.mirror_repo, "main");
    lab.primary.stop();

    let outcome = lab
        .cache
        .fetch_commit(&lab.endpoints(), &pinned, "main", FAILOVER)
        .expect("pinned commit from the mirror");
    let fetched = outcome.fetched.expect("it was fetched");
    assert_eq!(fetched.endpoint_index, 1);
    assert_eq!(fetched.head, other, "the mirror's branch is elsewhere");
    assert_eq!(fetched.failures.len(), 1);

    let dest = lab.dest(&pinned);
    lab.cache.checkout(&pinned, &dest).expect("checkout");
    assert_eq!(
        fs::read(dest.join("compose.yaml")).expect("read"),
        b"image: app:v1\n"
    );

    // A commit only the (stopped) primary has: a mirror whose branch is unrelated cannot
    // stand in for it, and nothing is staged.
    let unrelated = WorkRepo::init(&lab.root.path().join("unrelated"));
    unrelated.commit("unrelated", &[("compose.yaml", Entry::File(b"x\n"))]);
    unrelated.push(&lab.mirror_repo, "main");
    lab.primary.restart();
    let only_on_primary = lab.work.commit(
        "release v2",
        &[("compose.yaml", Entry::File(b"image: app:v2\n"))],
    );
    lab.work.push(&lab.primary_repo, "main");
    lab.primary.stop();
    let err = lab
        .cache
        .fetch_commit(&lab.endpoints(), &only_on_primary, "main", FAILOVER)
        .expect_err("no endpoint serves it");
    let GitError::AllEndpointsFailed { attempts } = &err else {
        panic!("expected AllEndpointsFailed, got {err}");
    };
    assert_eq!(attempts.len(), 2, "{err}");
    assert!(
        matches!(&attempts[1].error, GitError::CommitNotOnEndpoint { sha, .. } if *sha == only_on_primary),
        "{err}"
    );
    let dest = lab.dest(&only_on_primary);
    assert!(matches!(
        lab.cache.checkout(&only_on_primary, &dest),
        Err(GitError::UnknownCommit { .. })
    ));
    assert!(!dest.exists());
}

#[test]
fn fetch_commit_already_cached_needs_no_endpoint() {
    if !git_available("fetch_commit_already_cached_needs_no_endpoint") {
        return;
    }
    let mut lab = Lab::new();
    let sha = lab.release("release", &[("compose.yaml", Entry::File(b"v: 1\n"))]);
    lab.cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("fetch");
    lab.primary.stop();
    lab.mirror.stop();
    let outcome = lab
        .cache
        .fetch_commit(&lab.endpoints(), &sha, "main", FAILOVER)
        .expect("cached");
    assert_eq!(outcome.sha, sha);
    assert!(outcome.fetched.is_none());
}

#[test]
fn missing_branch_on_primary_fails_over_to_mirror() {
    if !git_available("missing_branch_on_primary_fails_over_to_mirror") {
        return;
    }
    let lab = Lab::new();
    let sha = lab.work.commit("release", &[("a", Entry::File(b"a\n"))]);
    lab.work.push(&lab.primary_repo, "other");
    lab.work.push(&lab.mirror_repo, "main");
    let outcome = lab
        .cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("fetch");
    assert_eq!(outcome.endpoint_index, 1);
    assert_eq!(outcome.head, sha);
    assert!(matches!(
        &outcome.failures[0].error,
        GitError::BranchMissing { branch, .. } if branch == "main"
    ));
}

#[test]
fn all_endpoints_down_reports_each_and_leaves_cache_unchanged() {
    if !git_available("all_endpoints_down_reports_each_and_leaves_cache_unchanged") {
        return;
    }
    let mut lab = Lab::new();
    let first = lab.release("first", &[("compose.yaml", Entry::File(b"v: 1\n"))]);
    lab.cache
        .fetch(&lab.endpoints(), "main", FAILOVER)
        .expect("fetch");
    lab.release("second", &[("compose.yaml", Entry::File(b"v: 2\n"))]);
    lab.primary.stop();
    lab.mirror.stop();
    let hanging = HangingServer::start();
    let mut endpoints = lab.endpoints();
    endpoints.push(Endpoint::new(hanging.url(REPO)));

    let before = snapshot(lab.cache.path());
    let started = Instant::now();
    let err = lab
        .cache
        .fetch(&endpoints, "main", FAILOVER)
        .expect_err("everything is down");
    let elapsed = started.elapsed();
    assert!(elapsed < FAILOVER + MARGIN, "took {elapsed:?}");
    let GitError::AllEndpointsFailed { attempts } = &err else {
        panic!("expected AllEndpointsFailed, got {err}");
    };
    let tried: Vec<(usize, &str)> = attempts
        .iter()
        .map(|a| (a.index, a.endpoint.as_str()))
        .collect();
    let primary_url = lab.primary.url(REPO);
    let mirror_url = lab.mirror.url(REPO);
    let hanging_url = hanging.url(REPO);
    assert_eq!(
        tried,
        vec![
            (0, primary_url.as_str()),
            (1, mirror_url.as_str()),
            (2, hanging_url.as_str())
        ]
    );
    assert!(matches!(attempts[2].error, GitError::FetchTimedOut { .. }));
    let message = err.to_string();
    for url in [&primary_url, &mirror_url, &hanging_url] {
        assert!(message.contains(url.as_str()), "{message}");
    }
    assert_eq!(snapshot(lab.cache.path()), before, "the cache changed");
    assert_eq!(
        lab.cache.tracking_head(0, "main").expect("ref"),
        Some(first)
    );
}

#[test]
fn checkout_writes_exact_contents_exec_bits_and_symlinks() {
    if !git_available("checkout_writes_exact_contents_exec_bits_and_symlinks") {
        return;
    }
    let lab = Lab::new();
    let binary: &[u8] = b"\x00\x01\xff\xfe binary\n";
    let sha = lab.release(
        "release",
        &[
            ("compose.yaml", Entry::File(b"services: {}\n")),
            ("bin/start.sh", Entry::Executable(b"#!/bin/sh\necho hi\n")),
            ("stacks/app/config/app.bin", Entry::File(binary)),
            ("empty", Entry::File(b"")),
            ("current.yaml", Entry::Symlink("compose.yaml")),
            ("stacks/app/tools", Entry::Symlink("../../bin")),
        ],
    );
    lab.cache
        .fetch_commit(&lab.endpoints(), &sha, "main", FAILOVER)
        .expect("fetch");
    let dest = lab.dest(&format!(".staging-{sha}"));
    let summary = lab.cache.checkout(&sha, &dest).expect("checkout");
    assert_eq!(
        (summary.files, summary.symlinks, summary.directories),
        (4, 2, 4)
    );

    assert_eq!(
        fs::read(dest.join("compose.yaml")).expect("read"),
        b"services: {}\n"
    );
    assert_eq!(mode(&dest.join("compose.yaml")), 0o644);
    assert_eq!(
        fs::read(dest.join("bin/start.sh")).expect("read"),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode(&dest.join("bin/start.sh")), 0o755);
    assert_eq!(
        fs::read(dest.join("stacks/app/config/app.bin")).expect("read"),
        binary
    );
    assert_eq!(fs::read(dest.join("empty")).expect("read"), b"");
    assert_eq!(
        fs::read_link(dest.join("current.yaml")).expect("link"),
        Path::new("compose.yaml")
    );
    assert_eq!(
        fs::read_link(dest.join("stacks/app/tools")).expect("link"),
        Path::new("../../bin")
    );
    assert!(dest.join("stacks/app/tools/start.sh").is_file());
    assert_eq!(mode(&dest.join("stacks")), 0o755);
    assert!(!dest.join(".git").exists());
    let mut top: Vec<String> = fs::read_dir(&dest)
        .expect("read dest")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["bin", "compose.yaml", "current.yaml", "empty", "stacks"]
    );

    // The destination must be new.
    assert!(matches!(
        lab.cache.checkout(&sha, &dest),
        Err(GitError::DestinationExists { .. })
    ));
    // Only exact, known commits.
    let unknown = "1234567890123456789012345678901234567890";
    assert!(matches!(
        lab.cache.checkout(unknown, &lab.dest("unknown")),
        Err(GitError::UnknownCommit { .. })
    ));
    assert!(matches!(
        lab.cache.checkout("main", &lab.dest("by-name")),
        Err(GitError::InvalidSha { .. })
    ));
    assert!(!lab.dest("unknown").exists());
}

/// Writes a raw tree object into the cache with `git hash-object --literally`, which, unlike
/// `git mktree`, lets a test build the hostile trees a compromised server could send.
fn raw_tree(cache: &Path, entries: &[(&str, &str, &str)]) -> String {
    let mut bytes = Vec::new();
    for (mode, name, sha) in entries {
        bytes.extend_from_slice(format!("{mode} {name}\0").as_bytes());
        bytes.extend(
            (0..20).map(|i| u8::from_str_radix(&sha[2 * i..2 * i + 2], 16).expect("hex sha")),
        );
    }
    let git_dir = format!("--git-dir={}", cache.display());
    git_with_input(
        cache,
        &[
            &git_dir,
            "hash-object",
            "-t",
            "tree",
            "--literally",
            "-w",
            "--stdin",
        ],
        Some(&bytes),
    )
}

fn raw_commit(cache: &Path, tree: &str) -> String {
    let git_dir = format!("--git-dir={}", cache.display());
    git(cache, &[&git_dir, "commit-tree", tree, "-m", "hostile"])
}

#[test]
fn checkout_refuses_escaping_paths_and_submodules() {
    if !git_available("checkout_refuses_escaping_paths_and_submodules") {
        return;
    }
    let lab = Lab::new();
    let cache = lab.cache.path();
    let git_dir = format!("--git-dir={}", cache.display());
    let blob = git_with_input(
        cache,
        &[&git_dir, "hash-object", "-w", "--stdin"],
        Some(b"escaped\n"),
    );
    let inner = raw_tree(cache, &[("100644", "escaped", &blob)]);
    let fine = ("100644", "compose.yaml", blob.as_str());
    let mut deep = inner.clone();
    for _ in 0..=MAX_TREE_DEPTH {
        deep = raw_tree(cache, &[("40000", "d", &deep)]);
    }

    let cases: Vec<(&str, String)> = vec![
        (
            "dot-dot tree",
            raw_tree(cache, &[fine, ("40000", "..", &inner)]),
        ),
        (
            "multi-component name",
            raw_tree(cache, &[fine, ("100644", "../../escaped", &blob)]),
        ),
        (
            "absolute name",
            raw_tree(cache, &[("100644", "/tmp/fleet-escaped", &blob)]),
        ),
        (
            ".git directory",
            raw_tree(cache, &[("40000", ".git", &inner)]),
        ),
        (
            "duplicate names",
            raw_tree(cache, &[("100644", "a", &blob), ("120000", "a", &blob)]),
        ),
        ("too deep", deep),
        (
            "submodule",
            raw_tree(cache, &[fine, ("160000", "vendor", &blob)]),
        ),
    ];
    for (case, tree) in cases {
        let commit = raw_commit(cache, &tree);
        let dest = lab.root.path().join("out").join("stage");
        let err = lab
            .cache
            .checkout(&commit, &dest)
            .expect_err(&format!("{case} must be refused"));
        if case == "submodule" {
            assert!(
                matches!(&err, GitError::Submodule { path, .. } if path == "vendor"),
                "{case}: {err}"
            );
        } else {
            assert!(matches!(err, GitError::UnsafePath { .. }), "{case}: {err}");
        }
        assert!(!dest.exists(), "{case}: the partial checkout was left");
        assert!(!lab.root.path().join("out/escaped").exists(), "{case}");
        assert!(!lab.root.path().join("escaped").exists(), "{case}");
        assert!(!Path::new("/tmp/fleet-escaped").exists(), "{case}");
    }
}
