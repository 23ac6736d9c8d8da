//! The device's bare Git cache: opening it, repairing it, and process-wide libgit2 settings.

use std::ffi::c_int;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use git2::{Oid, Repository};

use super::error::GitError;
use super::sync::fsync_dir;

/// libgit2's connect timeout for every socket it opens. Process-wide; see [`configure_libgit2`].
pub const SOCKET_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// libgit2's timeout for one read or write on a socket. Process-wide; see [`configure_libgit2`].
pub const SOCKET_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A local bare repository that caches the fleet repository on the device.
///
/// The cache holds objects fetched from every endpoint and one remote-tracking ref per endpoint
/// (`refs/fleet/<index>/heads/<branch>`), so what a mirror says never overwrites what the primary
/// said. It is never garbage-collected by this module. It belongs to one process: the agent,
/// which serialises updates with its update lock.
///
/// `GitCache` holds only the path; every operation opens its own handle, so the value is `Send`
/// and `Sync` and a fetch worker thread can use the repository without sharing a handle.
#[derive(Debug, Clone)]
pub struct GitCache {
    path: PathBuf,
    recovery: Option<CacheRecovery>,
}

/// Why and where an unusable cache was moved aside by [`GitCache::open_or_init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRecovery {
    /// Where the old directory now is (next to the cache, named `<name>.corrupt-<unix time>`).
    pub moved_to: PathBuf,
    /// Why it could not be used.
    pub reason: String,
}

impl GitCache {
    /// Opens the bare repository at `path`, creating it (and its parents) if it does not exist.
    ///
    /// A cache owned by another user is reported ([`GitError::OpenCache`]), never replaced.
    ///
    /// Guarantees, when it returns `Ok`: `path` is a bare repository that opens, whose refs all
    /// name commits that can be read, and that has no stale lock files left by a process killed
    /// mid-write (those would make every later ref update fail). A cache that is not like that
    /// (not a repository, unreadable refs, a regular file in the way) is moved aside and a fresh
    /// one is created: the cache only holds what can be fetched again. The move is logged as a
    /// warning and reported by [`GitCache::recovery`].
    ///
    /// The new directory's entry is fsynced in its parent. libgit2 is told to fsync the objects
    /// and refs it writes (see [`configure_libgit2`]).
    #[tracing::instrument(skip_all, fields(path = %path.as_ref().display()), err)]
    pub fn open_or_init(path: impl AsRef<Path>) -> Result<GitCache, GitError> {
        configure_libgit2();
        let path = path.as_ref().to_path_buf();
        let mut recovery = None;
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => init_bare(&path)?,
            Err(e) => {
                return Err(GitError::CreateCache { path, source: e });
            }
            Ok(meta) if meta.is_dir() && is_empty_dir(&path) => init_bare(&path)?,
            Ok(_) => {
                refuse_foreign_owner(&path)?;
                if let Err(reason) = check_usable(&path) {
                    // Out of descriptors or memory, or an I/O error: that says nothing about
                    // the cache, and moving a good cache aside on every attempt would throw
                    // away what was fetched (and fail to create a new one besides).
                    if let Some(why) = transient(&path, &reason) {
                        return Err(GitError::CacheUnavailable { path, reason: why });
                    }
                    let moved_to = move_aside(&path)?;
                    tracing::warn!(
                        moved_to = %moved_to.display(),
                        %reason,
                        "the Git cache was unusable; moved it aside and created a new one"
                    );
                    init_bare(&path)?;
                    recovery = Some(CacheRecovery { moved_to, reason });
                } else {
                    remove_stale_locks(&path);
                }
            }
        }
        Ok(GitCache { path, recovery })
    }

    /// The directory of the bare repository.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Set when [`GitCache::open_or_init`] found the cache unusable and replaced it.
    pub fn recovery(&self) -> Option<&CacheRecovery> {
        self.recovery.as_ref()
    }

    /// True when the commit `sha` (40 hex digits) is in the cache and readable as a commit.
    pub fn has_commit(&self, sha: &str) -> Result<bool, GitError> {
        let oid = parse_sha(sha)?;
        let repo = self.repo()?;
        let found = repo.find_commit(oid).is_ok();
        Ok(found)
    }

    /// The commit the cache last recorded for `branch` from endpoint number `index`, if any.
    pub fn tracking_head(&self, index: usize, branch: &str) -> Result<Option<String>, GitError> {
        let name = tracking_ref(index, branch);
        let repo = self.repo()?;
        match repo.refname_to_id(&name) {
            Ok(oid) => Ok(Some(oid.to_string())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(source) => Err(GitError::Reference { name, source }),
        }
    }

    /// A fresh handle on the repository.
    pub(crate) fn repo(&self) -> Result<Repository, GitError> {
        Repository::open_bare(&self.path).map_err(|source| GitError::OpenCache {
            path: self.path.clone(),
            source,
        })
    }
}

/// The ref under which the cache keeps what endpoint number `index` said `branch` is.
pub fn tracking_ref(index: usize, branch: &str) -> String {
    format!("refs/fleet/{index}/heads/{branch}")
}

/// Parses a full commit sha. Abbreviations are refused: a release id names exactly one commit.
pub(crate) fn parse_sha(sha: &str) -> Result<Oid, GitError> {
    let invalid = || GitError::InvalidSha {
        sha: sha.to_string(),
    };
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    Oid::from_str(sha).map_err(|_| invalid())
}

/// Process-wide libgit2 settings, applied once before the first cache is opened or fetched:
///
/// - connect timeout [`SOCKET_CONNECT_TIMEOUT`] and per-read/write timeout [`SOCKET_IO_TIMEOUT`]
///   on libgit2's sockets, so a fetch worker abandoned after its deadline still ends on its own
///   (the caller's deadline itself is enforced by the worker's watchdog, see `fetch`);
/// - fsync of the objects and refs libgit2 writes (`GIT_OPT_ENABLE_FSYNC_GITDIR`), so a power
///   cut cannot leave a ref naming an object that never reached the disk.
///
/// These are C globals. They are written inside a [`Once`], and every code path of this module
/// that makes libgit2 read them (opening a cache, fetching) passes through the same `Once`
/// first, so the write happens-before those reads. Other code in the process that uses libgit2
/// without going through this module may race with the first call; call this early in `main`
/// to rule that out.
pub fn configure_libgit2() {
    static CONFIGURE: Once = Once::new();
    CONFIGURE.call_once(|| {
        let connect_ms = millis(SOCKET_CONNECT_TIMEOUT);
        let io_ms = millis(SOCKET_IO_TIMEOUT);
        // SAFETY: see the doc comment: the globals are written once, synchronised by the `Once`.
        // `git_libgit2_opts` with GIT_OPT_ENABLE_FSYNC_GITDIR takes one `int` argument, and
        // libgit2 is initialised first (git2's opts functions call `init` too).
        let results = unsafe {
            libgit2_sys::init();
            let fsync = libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_ENABLE_FSYNC_GITDIR as c_int,
                1 as c_int,
            );
            (
                git2::opts::set_server_connect_timeout_in_milliseconds(connect_ms),
                git2::opts::set_server_timeout_in_milliseconds(io_ms),
                fsync,
            )
        };
        match results {
            (Ok(()), Ok(()), rc) if rc >= 0 => {}
            (connect, io, fsync) => tracing::warn!(
                ?connect,
                ?io,
                fsync,
                "could not apply every libgit2 setting; fetches may hang longer or writes may \
                 be less durable"
            ),
        }
    });
}

fn millis(d: Duration) -> c_int {
    c_int::try_from(d.as_millis()).unwrap_or(c_int::MAX)
}

fn init_bare(path: &Path) -> Result<(), GitError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| GitError::CreateCache {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    Repository::init_bare(path).map_err(|source| GitError::InitCache {
        path: path.to_path_buf(),
        source,
    })?;
    sync_parent(path);
    Ok(())
}

fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path)
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(false)
}

/// A cache owned by another user is not corrupt: libgit2 refuses to open it (as Git does, see
/// `safe.directory`). Replacing it would hide a deployment mistake, so it is an error.
fn refuse_foreign_owner(path: &Path) -> Result<(), GitError> {
    match Repository::open_bare(path) {
        Err(source) if source.code() == git2::ErrorCode::Owner => Err(GitError::OpenCache {
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}

/// Opens the repository and reads every ref's commit; `Err` says why the cache is unusable.
fn check_usable(path: &Path) -> Result<(), String> {
    let repo = Repository::open_bare(path).map_err(|e| format!("cannot open: {e}"))?;
    if !repo.is_bare() {
        return Err("not a bare repository".to_string());
    }
    let refs = repo
        .references()
        .map_err(|e| format!("cannot list refs: {e}"))?;
    for reference in refs {
        let reference = reference.map_err(|e| format!("cannot read a ref: {e}"))?;
        let name = String::from_utf8_lossy(reference.name_bytes()).into_owned();
        let Some(target) = reference.target() else {
            continue; // symbolic refs: their targets are listed too
        };
        repo.find_commit(target)
            .map_err(|e| format!("ref {name} names an unreadable commit {target}: {e}"))?;
    }
    Ok(())
}

/// The OS error messages (strerror, as libgit2 appends them) that say nothing about a
/// repository's contents.
const TRANSIENT: &[&str] = &[
    "Too many open files",
    "Cannot allocate memory",
    "No buffer space available",
    "Permission denied",
    "Input/output error",
    "No space left on device",
];

/// `Some(why)` when `check_usable` failed for a reason of the process or the system rather
/// than of the cache: the message names one of [`TRANSIENT`], or the directory itself cannot
/// be opened right now.
fn transient(path: &Path, reason: &str) -> Option<String> {
    if let Some(t) = TRANSIENT.iter().find(|t| reason.contains(*t)) {
        return Some(format!("{t}: {reason}"));
    }
    match fs::File::open(path) {
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("cannot open the directory: {e}")),
    }
}

/// Renames the unusable cache to `<name>.corrupt-<unix time>[-<n>]` next to it.
fn move_aside(path: &Path) -> Result<PathBuf, GitError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "git-cache".to_string());
    let mut aside = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 1;
    while fs::symlink_metadata(&aside).is_ok() {
        aside = path.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
        n += 1;
    }
    fs::rename(path, &aside).map_err(|source| GitError::MoveCacheAside {
        path: path.to_path_buf(),
        aside: aside.clone(),
        source,
    })?;
    sync_parent(path);
    Ok(aside)
}

/// Removes `*.lock` files that a process killed mid-write left behind. Only called when the
/// cache is opened, before this process writes anything, under the one-process rule above.
fn remove_stale_locks(path: &Path) {
    let mut dirs = vec![path.to_path_buf(), path.join("refs")];
    let mut n = 1;
    while n < dirs.len() {
        // Walk refs/ recursively; the top level is only scanned for files.
        if let Ok(entries) = fs::read_dir(&dirs[n]) {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push(entry.path());
                }
            }
        }
        n += 1;
    }
    for dir in &dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if is_file && entry.file_name().to_string_lossy().ends_with(".lock") {
                let lock = entry.path();
                match fs::remove_file(&lock) {
                    Ok(()) => {
                        tracing::warn!(lock = %lock.display(), "removed a stale Git lock file")
                    }
                    Err(e) => tracing::warn!(
                        lock = %lock.display(),
                        error = %e,
                        "cannot remove a stale Git lock file"
                    ),
                }
            }
        }
    }
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Err(e) = fsync_dir(parent) {
            tracing::warn!(dir = %parent.display(), error = %e, "cannot fsync directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_hex_shas_are_accepted() {
        let good = "0123456789abcdef0123456789ABCDEF01234567";
        assert!(parse_sha(good).is_ok());
        for bad in [
            "",
            "0123456",
            "0123456789abcdef0123456789abcdef0123456",
            "0123456789abcdef0123456789abcdef012345678",
            "g123456789abcdef0123456789abcdef01234567",
            "main",
        ] {
            assert!(
                matches!(parse_sha(bad), Err(GitError::InvalidSha { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_cache_is_created_bare() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/git-cache.git");
        let cache = GitCache::open_or_init(&path).expect("open");
        assert!(cache.recovery().is_none());
        assert!(cache.repo().expect("repo").is_bare());
        // Opening again keeps it.
        let again = GitCache::open_or_init(&path).expect("reopen");
        assert!(again.recovery().is_none());
    }

    #[test]
    fn corrupt_cache_is_moved_aside_and_recreated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("git-cache.git");
        fs::create_dir(&path).expect("mkdir");
        fs::write(path.join("HEAD"), "garbage").expect("write");
        let cache = GitCache::open_or_init(&path).expect("open");
        let recovery = cache.recovery().expect("recovered");
        assert!(recovery.moved_to.join("HEAD").exists());
        assert!(cache.repo().expect("repo").is_bare());
    }

    #[test]
    fn os_trouble_is_not_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(transient(
            dir.path(),
            "cannot open: failed to open 'HEAD': Too many open files"
        )
        .is_some());
        assert!(transient(dir.path(), "cannot open: Permission denied").is_some());
        assert!(transient(
            dir.path(),
            "ref refs/fleet/0/heads/main names an unreadable commit"
        )
        .is_none());
    }

    #[test]
    fn a_file_in_the_way_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("git-cache.git");
        fs::write(&path, "not a repository").expect("write");
        let cache = GitCache::open_or_init(&path).expect("open");
        assert!(cache.recovery().is_some());
        assert!(cache.repo().is_ok());
    }

    #[test]
    fn ref_to_missing_commit_makes_the_cache_unusable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("git-cache.git");
        GitCache::open_or_init(&path).expect("open");
        let ref_dir = path.join("refs/fleet/0/heads");
        fs::create_dir_all(&ref_dir).expect("mkdir");
        fs::write(
            ref_dir.join("main"),
            "1111111111111111111111111111111111111111\n",
        )
        .expect("write ref");
        let cache = GitCache::open_or_init(&path).expect("reopen");
        let recovery = cache.recovery().expect("recovered");
        assert!(
            recovery.reason.contains("refs/fleet/0/heads/main"),
            "{recovery:?}"
        );
    }

    #[test]
    fn stale_lock_files_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("git-cache.git");
        GitCache::open_or_init(&path).expect("open");
        let ref_dir = path.join("refs/fleet/0/heads");
        fs::create_dir_all(&ref_dir).expect("mkdir");
        fs::write(ref_dir.join("main.lock"), "").expect("write lock");
        fs::write(path.join("packed-refs.lock"), "").expect("write lock");
        let cache = GitCache::open_or_init(&path).expect("reopen");
        assert!(cache.recovery().is_none());
        assert!(!ref_dir.join("main.lock").exists());
        assert!(!path.join("packed-refs.lock").exists());
    }
}
