//! Fetching the release branch, or one pinned commit, from the first endpoint that serves it in
//! time.
//!
//! # How the failover timeout is enforced
//!
//! `failover_timeout` bounds silence, not the whole transfer: an endpoint is given up when
//! nothing has come from it for that long (no answer to the connection, no progress of the
//! transfer), however long the transfer has taken so far. A first fetch of a large repository
//! over a slow cellular link that keeps delivering is never cut off; a server that accepts the
//! connection and stops sending is left after `failover_timeout` of silence. Progress is what
//! libgit2 reports through its transfer and sideband callbacks (at most every half second
//! while data arrives, once per complete protocol packet of up to 64 KiB), so the timeout must
//! exceed the time one such packet takes on the slowest link (the default, 30 s, allows down to
//! about 2 KiB/s).
//!
//! The attempt runs on its own worker thread and the caller waits for its answer with
//! [`std::sync::mpsc::Receiver::recv_timeout`], looking at the time of the last progress each
//! time it wakes: when the silence reaches the timeout, the caller records
//! [`GitError::FetchTimedOut`] and moves to the next endpoint at once. That is the only
//! mechanism that bounds every way a fetch can block: libgit2's socket timeouts do not cover
//! name resolution (`getaddrinfo` blocks for as long as the resolver likes) nor SSH (libssh2
//! waits on its socket without a timeout), and progress callbacks are only called when bytes
//! arrive, so they never fire for a server that accepts the connection and stays silent.
//!
//! The abandoned worker is then stopped as soon as libgit2 gives it control: the abandoned mark
//! (and the silence bound) makes the progress and credential callbacks abort the transfer, and
//! the process-wide socket timeouts ([`super::cache::SOCKET_CONNECT_TIMEOUT`],
//! [`super::cache::SOCKET_IO_TIMEOUT`]) end a blocked connect or read. Until it ends it can at
//! most write objects (content-addressed, harmless) and its own endpoint's tracking ref, which
//! then says truthfully what that endpoint served; `FETCH_HEAD` is never written. A failed or
//! abandoned fetch leaves the cache as it was: every commit and tracking ref fetched before stays,
//! so the next attempt downloads only what is still missing. [`abandoned_fetch_workers`] counts
//! the workers still running.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use git2::{AutotagOption, FetchOptions, FetchPrune, Oid, RemoteCallbacks, Repository};

use super::cache::{configure_libgit2, parse_sha, tracking_ref, GitCache};
use super::endpoint::{answer_credentials, CredentialState, Endpoint};
use super::error::{EndpointFailure, GitError};

/// Fetch workers abandoned after their deadline that have not ended yet (process-wide).
static ABANDONED_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// How many fetch workers were abandoned after their deadline and are still blocked in libgit2
/// (a server that stopped answering, a slow name lookup). They end on their own (see the module
/// docs); a number that keeps growing means something blocks them for good. Worth a gauge.
pub fn abandoned_fetch_workers() -> usize {
    ABANDONED_WORKERS.load(Ordering::SeqCst)
}

/// Which endpoint served a fetch, what it said, and which endpoints failed before it.
#[derive(Debug)]
pub struct FetchOutcome {
    /// Position of the serving endpoint in the caller's list (0 is the primary).
    pub endpoint_index: usize,
    /// The serving endpoint's URL, redacted.
    pub endpoint: String,
    /// The branch fetched.
    pub branch: String,
    /// The sha the serving endpoint advertised for the branch; the commit is in the cache.
    pub head: String,
    /// The ref that now records `head` for this endpoint (`refs/fleet/<index>/heads/<branch>`).
    pub tracking_ref: String,
    /// Objects downloaded by this fetch: 0 when the cache was up to date (fetches are
    /// incremental).
    pub received_objects: usize,
    /// Bytes downloaded by this fetch.
    pub received_bytes: usize,
    /// The endpoints tried before, in order, with why each failed: for the
    /// "Git fetch failures by endpoint" metric. Empty when the primary served.
    pub failures: Vec<EndpointFailure>,
}

/// The result of [`GitCache::fetch_commit`].
#[derive(Debug)]
pub struct CommitOutcome {
    /// The commit now in the cache.
    pub sha: String,
    /// `None` when the commit was already in the cache and nothing was fetched.
    pub fetched: Option<FetchOutcome>,
}

impl GitCache {
    /// Fetches `refs/heads/<branch>` from the first endpoint that serves it without falling
    /// silent for `failover_timeout`, trying `endpoints` in order (primary first, then mirrors).
    ///
    /// The fetch is incremental (objects already in the cache are not downloaded again) and
    /// stores the head in that endpoint's own tracking ref, so a mirror never overwrites what
    /// the primary said. An endpoint that refuses, fails, lacks the branch, or does not finish
    /// without a silence of `failover_timeout` (see the module docs) is recorded in [`FetchOutcome::failures`] and the next one
    /// is tried. When all fail: [`GitError::AllEndpointsFailed`] with one entry per endpoint;
    /// no tracking ref has changed then, except by a worker that finished after its deadline.
    #[tracing::instrument(
        skip(self, endpoints),
        fields(cache = %self.path().display(), endpoints = %endpoint_list(endpoints)),
        err
    )]
    pub fn fetch(
        &self,
        endpoints: &[Endpoint],
        branch: &str,
        failover_timeout: Duration,
    ) -> Result<FetchOutcome, GitError> {
        self.fetch_first(endpoints, branch, failover_timeout, |_, _| Ok(()))
    }

    /// Makes sure commit `sha` (a release id: 40 hex digits) is in the cache.
    ///
    /// If it is already there, nothing is fetched. Otherwise `branch` is fetched from the
    /// endpoints in order, as [`GitCache::fetch`] does, until one of them brings the commit
    /// (as the branch head or one of its ancestors). An endpoint whose branch does not contain
    /// it counts as failed ([`GitError::CommitNotOnEndpoint`]) and the next is tried.
    ///
    /// The commit is looked up by its sha only, never by a branch name, so an endpoint whose
    /// branch points elsewhere (a lagging or tampered mirror) cannot change what the sha
    /// names: Git's object ids are hashes of the content.
    #[tracing::instrument(
        skip(self, endpoints),
        fields(cache = %self.path().display(), endpoints = %endpoint_list(endpoints)),
        err
    )]
    pub fn fetch_commit(
        &self,
        endpoints: &[Endpoint],
        sha: &str,
        branch: &str,
        failover_timeout: Duration,
    ) -> Result<CommitOutcome, GitError> {
        let oid = parse_sha(sha)?;
        let repo = self.repo()?;
        if repo.find_commit(oid).is_ok() {
            tracing::debug!("commit already in the cache");
            return Ok(CommitOutcome {
                sha: sha.to_string(),
                fetched: None,
            });
        }
        let outcome = self.fetch_first(endpoints, branch, failover_timeout, |endpoint, head| {
            if repo.find_commit(oid).is_ok() {
                Ok(())
            } else {
                Err(GitError::CommitNotOnEndpoint {
                    endpoint: endpoint.redacted_url(),
                    sha: sha.to_string(),
                    branch: branch.to_string(),
                    head: head.to_string(),
                })
            }
        })?;
        Ok(CommitOutcome {
            sha: sha.to_string(),
            fetched: Some(outcome),
        })
    }

    /// Tries the endpoints in order until one fetches `branch` and `accept` agrees with what it
    /// brought.
    fn fetch_first(
        &self,
        endpoints: &[Endpoint],
        branch: &str,
        failover_timeout: Duration,
        accept: impl Fn(&Endpoint, Oid) -> Result<(), GitError>,
    ) -> Result<FetchOutcome, GitError> {
        configure_libgit2();
        if endpoints.is_empty() {
            return Err(GitError::NoEndpoints);
        }
        check_branch_name(branch)?;
        let mut failures = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let attempt = self
                .fetch_endpoint(index, endpoint, branch, failover_timeout)
                .and_then(|fetched| accept(endpoint, fetched.head).map(|()| fetched));
            match attempt {
                Ok(fetched) => {
                    return Ok(FetchOutcome {
                        endpoint_index: index,
                        endpoint: endpoint.redacted_url(),
                        branch: branch.to_string(),
                        head: fetched.head.to_string(),
                        tracking_ref: tracking_ref(index, branch),
                        received_objects: fetched.received_objects,
                        received_bytes: fetched.received_bytes,
                        failures,
                    });
                }
                Err(error) => {
                    tracing::warn!(
                        endpoint = %endpoint.redacted_url(),
                        index,
                        error = %error.chain(),
                        "Git endpoint failed"
                    );
                    failures.push(EndpointFailure {
                        index,
                        endpoint: endpoint.redacted_url(),
                        error,
                    });
                }
            }
        }
        Err(GitError::AllEndpointsFailed { attempts: failures })
    }

    /// One endpoint, bounded by `timeout` (see the module docs): the branch head it serves.
    #[tracing::instrument(skip(self, endpoint), fields(endpoint = %endpoint.redacted_url()))]
    fn fetch_endpoint(
        &self,
        index: usize,
        endpoint: &Endpoint,
        branch: &str,
        timeout: Duration,
    ) -> Result<Fetched, GitError> {
        let state = Arc::new(WorkerState::new());
        let job = FetchJob {
            repo: self.repo()?,
            endpoint: endpoint.clone(),
            index,
            branch: branch.to_string(),
            state: Arc::clone(&state),
            timeout,
        };
        let (answer, answered) = mpsc::sync_channel(1);
        let span = tracing::Span::current();
        let worker_state = Arc::clone(&state);
        let worker = thread::Builder::new()
            .name(format!("fleet-git-fetch-{index}"))
            .spawn(move || {
                let _entered = span.enter();
                // The receiver is gone when the caller gave up; nothing to tell then.
                let _ = answer.send(job.run());
                worker_state.finish();
            })
            .map_err(|source| GitError::SpawnWorker {
                endpoint: endpoint.redacted_url(),
                source,
            })?;
        let answer = loop {
            let silent = state.silent_for();
            if silent < timeout {
                match answered.recv_timeout(timeout - silent) {
                    // Woken by the deadline of the last progress seen: look again, progress
                    // may have come meanwhile.
                    Err(RecvTimeoutError::Timeout) => continue,
                    Ok(result) => break Some(result),
                    Err(RecvTimeoutError::Disconnected) => break None,
                }
            }
            if state.abandon() {
                tracing::warn!(
                    silent_for = ?silent,
                    still_running = abandoned_fetch_workers(),
                    "abandoned the fetch worker: nothing came from the endpoint within the failover timeout"
                );
                return Err(GitError::FetchTimedOut {
                    endpoint: endpoint.redacted_url(),
                    after: timeout,
                });
            }
            // It finished just as the silence reached the bound: its answer is in the channel.
            break answered.recv().ok();
        };
        // The worker has answered or died; joining only reaps the thread.
        let _ = worker.join();
        answer.unwrap_or_else(|| {
            Err(GitError::WorkerLost {
                endpoint: endpoint.redacted_url(),
            })
        })
    }
}

/// Who gave up first, the caller (abandoned) or the worker (finished), and when the worker last
/// saw progress. Whichever of the two comes second sees the other's mark, so the
/// abandoned-worker count is exact.
#[derive(Debug)]
struct WorkerState {
    outcome: AtomicU8,
    started: Instant,
    /// Milliseconds from `started` to the last sign of life from the endpoint.
    progress_ms: AtomicU64,
}

impl WorkerState {
    const RUNNING: u8 = 0;
    const ABANDONED: u8 = 1;
    const FINISHED: u8 = 2;

    fn new() -> WorkerState {
        WorkerState {
            outcome: AtomicU8::new(Self::RUNNING),
            started: Instant::now(),
            progress_ms: AtomicU64::new(0),
        }
    }

    /// The endpoint sent something: the silence starts again from now.
    fn progressed(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.progress_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// How long since the endpoint last sent anything (or since the attempt began).
    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.progress_ms.load(Ordering::SeqCst));
        self.started.elapsed().saturating_sub(last)
    }

    /// The caller gives up; false if the worker had already finished.
    fn abandon(&self) -> bool {
        let abandoned = self
            .outcome
            .compare_exchange(
                Self::RUNNING,
                Self::ABANDONED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok();
        if abandoned {
            ABANDONED_WORKERS.fetch_add(1, Ordering::SeqCst);
        }
        abandoned
    }

    /// The worker ends (after sending its answer).
    fn finish(&self) {
        if self.outcome.swap(Self::FINISHED, Ordering::SeqCst) == Self::ABANDONED {
            ABANDONED_WORKERS.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn is_abandoned(&self) -> bool {
        self.outcome.load(Ordering::SeqCst) == Self::ABANDONED
    }
}

/// What one endpoint served.
struct Fetched {
    head: Oid,
    received_objects: usize,
    received_bytes: usize,
}

/// Everything a worker thread needs to fetch from one endpoint; owns its repository handle.
struct FetchJob {
    repo: Repository,
    endpoint: Endpoint,
    index: usize,
    branch: String,
    state: Arc<WorkerState>,
    /// The longest silence allowed from the endpoint.
    timeout: Duration,
}

impl FetchJob {
    fn run(self) -> Result<Fetched, GitError> {
        let redacted = self.endpoint.redacted_url();
        let fetch_error = |source| self.fetch_error(&redacted, source);
        let mut remote = self
            .repo
            .remote_anonymous(&self.endpoint.url)
            .map_err(fetch_error)?;
        let refspec = format!(
            "+refs/heads/{}:{}",
            self.branch,
            tracking_ref(self.index, &self.branch)
        );
        let mut credentials = CredentialState::default();
        let mut callbacks = RemoteCallbacks::new();
        callbacks
            .credentials(|_url, username_from_url, allowed| {
                if self.expired() {
                    return Err(git2::Error::from_str(
                        "cancelled: the endpoint was silent for the failover timeout",
                    ));
                }
                answer_credentials(
                    &mut credentials,
                    &self.endpoint.auth,
                    username_from_url,
                    allowed,
                )
            })
            .transfer_progress(|_| self.progressed())
            .sideband_progress(|_| self.progressed());
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false)
            .prune(FetchPrune::Off);
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(fetch_error)?;
        let stats = remote.stats();
        let (received_objects, received_bytes) = (stats.received_objects(), stats.received_bytes());

        // The advertisement stays readable after the fetch disconnected.
        let wanted = format!("refs/heads/{}", self.branch);
        let head = remote
            .list()
            .map_err(fetch_error)?
            .iter()
            .find(|head| head.name() == wanted)
            .map(|head| head.oid())
            .ok_or_else(|| GitError::BranchMissing {
                endpoint: redacted.clone(),
                branch: self.branch.clone(),
            })?;
        self.repo
            .find_commit(head)
            .map_err(|source| GitError::ReadObject {
                sha: head.to_string(),
                what: format!("the head of {wanted} fetched from {redacted}"),
                source,
            })?;
        Ok(Fetched {
            head,
            received_objects,
            received_bytes,
        })
    }

    /// Called when data arrived; false (abort the transfer) once the caller gave up.
    fn progressed(&self) -> bool {
        if self.expired() {
            return false;
        }
        self.state.progressed();
        true
    }

    /// The caller gave up, or the endpoint has been silent for the whole timeout.
    fn expired(&self) -> bool {
        self.state.is_abandoned() || self.state.silent_for() >= self.timeout
    }

    fn fetch_error(&self, endpoint: &str, source: git2::Error) -> GitError {
        if self.expired() {
            GitError::FetchTimedOut {
                endpoint: endpoint.to_string(),
                after: self.timeout,
            }
        } else {
            GitError::Fetch {
                endpoint: endpoint.to_string(),
                source,
            }
        }
    }
}

/// The redacted URLs, comma-separated, for span fields.
fn endpoint_list(endpoints: &[Endpoint]) -> String {
    let urls: Vec<String> = endpoints.iter().map(Endpoint::redacted_url).collect();
    urls.join(", ")
}

/// Refuses branch names Git would refuse, and any that could widen the refspec (`*`).
fn check_branch_name(branch: &str) -> Result<(), GitError> {
    let valid = !branch.is_empty()
        && !branch.contains('*')
        && git2::Reference::is_valid_name(&format!("refs/heads/{branch}"));
    if valid {
        Ok(())
    } else {
        Err(GitError::InvalidBranch {
            branch: branch.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_checked() {
        for good in ["main", "release/2024", "stable-v2"] {
            assert!(check_branch_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "*",
            "rel*",
            "a..b",
            "-x/..",
            "with space",
            "a:b",
            "end.",
        ] {
            assert!(check_branch_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_endpoints_is_an_error_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = GitCache::open_or_init(dir.path().join("c.git")).expect("open");
        let err = cache
            .fetch(&[], "main", Duration::from_secs(1))
            .expect_err("no endpoints");
        assert!(matches!(err, GitError::NoEndpoints), "{err}");
    }
}
