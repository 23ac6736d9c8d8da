//! What can go wrong in the Git layer, each variant named after what failed.

use std::fmt::{self, Write as _};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// An error of the Git layer. The message says what failed; `source()` says why.
///
/// Endpoint URLs in these errors are always redacted (no password or token), so they are safe to
/// log and to use as a metric label.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitError {
    /// The directory that should hold the cache could not be created.
    #[error("cannot create the Git cache directory {path}")]
    CreateCache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A new bare repository could not be initialised.
    #[error("cannot initialise a bare Git cache at {path}")]
    InitCache {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },

    /// The cache was unusable and could not be moved out of the way.
    #[error("the Git cache at {path} is unusable and cannot be moved aside to {aside}")]
    MoveCacheAside {
        path: PathBuf,
        aside: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The cache could not be checked for a reason that says nothing about its contents (the
    /// process is out of file descriptors or memory, permission denied, an I/O error): it is
    /// left as it is, and the caller tries again later.
    #[error("cannot check the Git cache at {path} for now ({reason}); it is left as it is")]
    CacheUnavailable { path: PathBuf, reason: String },

    /// The cache could not be opened (after `open_or_init` succeeded, e.g. it was removed).
    #[error("cannot open the Git cache at {path}")]
    OpenCache {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },

    /// The caller passed no endpoint at all.
    #[error("no Git endpoint is configured")]
    NoEndpoints,

    /// The branch name is not a valid Git branch name.
    #[error("invalid branch name {branch:?}")]
    InvalidBranch { branch: String },

    /// The release id is not a full commit sha.
    #[error("invalid commit sha {sha:?}: expected 40 hexadecimal digits")]
    InvalidSha { sha: String },

    /// The transfer from an endpoint failed (refused, reset, protocol or authentication error).
    #[error("fetch from {endpoint} failed")]
    Fetch {
        endpoint: String,
        #[source]
        source: git2::Error,
    },

    /// Nothing came from the endpoint for the failover timeout (no answer, or a transfer that
    /// stopped making progress).
    #[error("fetch from {endpoint} stalled: nothing received for {after:?}")]
    FetchTimedOut { endpoint: String, after: Duration },

    /// The endpoint answered but does not have the branch.
    #[error("{endpoint} has no branch {branch:?}")]
    BranchMissing { endpoint: String, branch: String },

    /// The endpoint's branch was fetched but the pinned commit is not part of it.
    #[error("{endpoint} does not serve commit {sha}: its branch {branch:?} is at {head}")]
    CommitNotOnEndpoint {
        endpoint: String,
        sha: String,
        branch: String,
        head: String,
    },

    /// Every endpoint was tried and failed; one entry per endpoint, in the order tried.
    #[error("all {} Git endpoints failed: {}", .attempts.len(), AttemptList(.attempts))]
    AllEndpointsFailed { attempts: Vec<EndpointFailure> },

    /// The fetch worker thread could not be started.
    #[error("cannot start the fetch worker for {endpoint}")]
    SpawnWorker {
        endpoint: String,
        #[source]
        source: io::Error,
    },

    /// The fetch worker ended without reporting a result (it panicked).
    #[error("the fetch worker for {endpoint} ended without a result")]
    WorkerLost { endpoint: String },

    /// The commit is not in the cache.
    #[error("commit {sha} is not in the Git cache")]
    UnknownCommit { sha: String },

    /// The object named by the sha exists but is not a commit.
    #[error("object {sha} is a {kind}, not a commit")]
    NotACommit { sha: String, kind: String },

    /// An object of a commit could not be read from the cache (missing or corrupt).
    #[error("cannot read {what} of commit {sha} from the Git cache")]
    ReadObject {
        sha: String,
        what: String,
        #[source]
        source: git2::Error,
    },

    /// A reference in the cache could not be read or written.
    #[error("cannot access reference {name} in the Git cache")]
    Reference {
        name: String,
        #[source]
        source: git2::Error,
    },

    /// The checkout destination already exists; checkouts only ever create a new directory.
    #[error("checkout destination {path} already exists")]
    DestinationExists { path: PathBuf },

    /// A tree entry would be written outside the destination, or under a `.git` directory.
    #[error("commit {sha} has an unsafe path {path:?}: {reason}")]
    UnsafePath {
        sha: String,
        path: String,
        reason: &'static str,
    },

    /// The commit contains a submodule (a gitlink), which a release must not.
    #[error("commit {sha} contains a submodule at {path:?}; releases cannot use submodules")]
    Submodule { sha: String, path: String },

    /// A tree entry has a mode that is neither file, executable, symlink, directory nor gitlink.
    #[error("commit {sha} has entry {path:?} with unsupported mode {mode:o}")]
    UnsupportedEntry {
        sha: String,
        path: String,
        mode: i32,
    },

    /// Writing the checkout failed (disk full, permissions, I/O error).
    #[error("cannot write {path} while checking out commit {sha}")]
    WriteCheckout {
        sha: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl GitError {
    /// The error followed by its chain of causes, joined with `": "`.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let _ = write!(out, ": {cause}");
            source = cause.source();
        }
        out
    }

    /// True when the endpoint went silent for the failover timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, GitError::FetchTimedOut { .. })
    }
}

/// One endpoint that failed during a fetch, for failover reports and the
/// "Git fetch failures by endpoint" metric.
#[derive(Debug)]
pub struct EndpointFailure {
    /// Position of the endpoint in the list the caller passed (0 is the primary).
    pub index: usize,
    /// The endpoint's URL, redacted (see [`super::Endpoint::redacted_url`]).
    pub endpoint: String,
    /// Why it failed.
    pub error: GitError,
}

/// Formats every attempt with its whole cause chain: an aggregate error has only one `source()`,
/// so the causes of each attempt would otherwise be lost.
struct AttemptList<'a>(&'a [EndpointFailure]);

impl fmt::Display for AttemptList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, attempt) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "[{}] {}", attempt.index, attempt.error.chain())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_endpoints_failed_lists_every_attempt_with_its_cause() {
        let err = GitError::AllEndpointsFailed {
            attempts: vec![
                EndpointFailure {
                    index: 0,
                    endpoint: "git://primary/fleet.git".into(),
                    error: GitError::Fetch {
                        endpoint: "git://primary/fleet.git".into(),
                        source: git2::Error::from_str("connection refused"),
                    },
                },
                EndpointFailure {
                    index: 1,
                    endpoint: "git://mirror/fleet.git".into(),
                    error: GitError::FetchTimedOut {
                        endpoint: "git://mirror/fleet.git".into(),
                        after: Duration::from_secs(30),
                    },
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "all 2 Git endpoints failed: \
             [0] fetch from git://primary/fleet.git failed: connection refused; \
             [1] fetch from git://mirror/fleet.git stalled: nothing received for 30s"
        );
    }
}
