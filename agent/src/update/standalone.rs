//! Standalone mode: the device follows its branch's head, never to a release marked bad on it,
//! polling with jitter so a fleet does not poll in lockstep, and never while the device
//! watchers hold updates back (heat, power, disk: [`crate::watch`]).

use std::time::Duration;

use fleet_config::protocol::{ReleaseId, UpdateResult};

use super::{Updater, REQUEST_CHECK};
use crate::runtime::StackRuntime;
use fleet_git::GitError;

impl<R: StackRuntime> Updater<R> {
    /// Standalone mode: the branch head, from the first endpoint that answers (fetched on a
    /// blocking thread).
    pub async fn branch_head(&mut self) -> Result<ReleaseId, String> {
        let (git, endpoints) = (self.git.clone(), self.endpoints.clone());
        let branch = self.cfg.git.branch.clone();
        let silence = self.cfg.git.failover_timeout;
        let fetched = crate::blocking::run("the Git fetch", move || {
            git.fetch(&endpoints, &branch, silence)
        })
        .await
        .map_err(|e| e.to_string())?;
        let outcome = match fetched {
            Ok(outcome) => outcome,
            Err(e) => {
                if let GitError::AllEndpointsFailed { attempts } = &e {
                    self.git_results(attempts, None);
                }
                return Err(e.to_string());
            }
        };
        self.git_results(&outcome.failures, Some(&outcome.endpoint));
        outcome
            .head
            .parse()
            .map_err(|e: fleet_config::protocol::BadReleaseId| e.to_string())
    }

    /// One standalone pass: fetch the branch head and update to it if it is new.
    pub async fn poll_once(&mut self) -> Option<UpdateResult> {
        let head = match self.branch_head().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the branch head; keeping the current release");
                return None;
            }
        };
        let current = self.data.current().release().cloned();
        if current.as_ref() == Some(&head) && self.journal.safe_mode.is_none() {
            return None;
        }
        if self.journal.is_bad(&head) {
            tracing::debug!(release = %head.short(), "branch head is marked bad; waiting for a newer commit");
            return None;
        }
        if current.as_ref() == Some(&head) && self.in_crash_loop_safe_mode() {
            tracing::debug!(release = %head.short(), "in safe mode after this release's crash loop; waiting for a newer commit");
            return None;
        }
        if self.watch.hold_logged(&head).is_some() {
            // Held back by heat, power or disk; tried again once the watchers clear.
            return None;
        }
        Some(match self.prepare(&head, None).await {
            super::Prepare::Done(result) => result,
            super::Prepare::Ready(prepared) => match self.watch.clone().before_swap().await {
                Ok(()) => self.commit(prepared).await,
                Err(why) => self.abandon(prepared, why),
            },
        })
    }

    /// Standalone mode: poll the branch every `poll_interval` (with jitter) until `shutdown`;
    /// a rollback requested by `fleet-agent rollback` is carried out within a second.
    pub async fn run_standalone(&mut self, shutdown: tokio_util::sync::CancellationToken) {
        let mut next_poll = tokio::time::Instant::now();
        loop {
            self.metrics.loop_turn();
            self.handle_rollback_request().await;
            self.watch_turn().await;
            if tokio::time::Instant::now() >= next_poll {
                self.supervise().await;
                self.refresh_endpoints();
                // SIGTERM during a fetch or staging stops at once: nothing running was touched
                // before the swap, and recovery takes up an interrupted update at the next start.
                let polled = tokio::select! {
                    polled = self.poll_once() => polled,
                    _ = shutdown.cancelled() => {
                        tracing::warn!("stopping during the update's fetch or staging; the device stays on its release");
                        break;
                    }
                };
                if let Some(result) = polled {
                    tracing::info!(result = ?result, "update finished");
                }
                next_poll = tokio::time::Instant::now() + jittered(self.cfg.poll_interval);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(REQUEST_CHECK.min(next_poll.saturating_duration_since(tokio::time::Instant::now()))) => {}
            }
        }
        tracing::info!("standalone loop stopped");
    }
}

/// `base` plus up to 10% random jitter, so a fleet does not poll in lockstep.
pub fn jittered(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::journal::now_ms());
    let frac = (h.finish() % 1000) as f64 / 10_000.0;
    base + base.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = super::jittered(std::time::Duration::from_secs(60));
            assert!(
                j >= std::time::Duration::from_secs(60) && j <= std::time::Duration::from_secs(66)
            );
        }
    }
}
