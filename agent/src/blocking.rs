//! Blocking work (Git fetches and checkouts, digests of release trees, fsync) off the agent's
//! one async thread, so `/metrics`, the health checks and SIGTERM are answered while an update
//! fetches a large release over a slow link.

/// The blocking work ended without an answer: it panicked, or the runtime is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("{what} did not complete on its worker thread: {source}")]
pub struct BlockingError {
    /// What was running.
    pub what: &'static str,
    #[source]
    source: tokio::task::JoinError,
}

/// Runs `work` on tokio's blocking pool and waits for it without holding the async thread.
///
/// While the crash-consistency checker records this thread's file-system operations
/// ([`crate::fsops`]), `work` runs right here instead, so the recorder sees it in order.
pub async fn run<T, F>(what: &'static str, work: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if crate::fsops::recording() {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| BlockingError { what, source })
}
