//! The journal (`state.json`): where the update transaction is, written atomically before and
//! after every step, so boot recovery knows what an interrupted update was doing.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use fleet_config::protocol::{ReleaseId, UpdatePhase, UpdateResult};
use fleet_config::TreeDigest;
use serde::{Deserialize, Serialize};

use crate::fsutil::{write_atomic, FsError};

/// Version of the journal format.
pub const JOURNAL_VERSION: u32 = 1;

/// A release this device refuses to install again, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRelease {
    /// The release.
    pub release: ReleaseId,
    /// Why it was marked bad.
    pub reason: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// What the journal remembers of a staged release directory: a release directory is trusted
/// only while its tree still has this digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedInfo {
    /// The digest of the tree when it was staged (and verified).
    pub digest: TreeDigest,
    /// Staging order (1, 2, …): garbage collection keeps the newest by this, not by a file's
    /// mtime, which a board without a real-time clock may set to 1970.
    pub seq: u64,
}

/// The journal's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Format version.
    pub version: u32,
    /// Where the transaction is.
    pub phase: UpdatePhase,
    /// The release running before the update started (what a rollback returns to).
    pub from: Option<ReleaseId>,
    /// The release being installed.
    pub to: Option<ReleaseId>,
    /// How many times the swap to [`Journal::attempted`] has been started without reaching a
    /// verdict or a rollback (power cuts, crashes, OOM kills count). Kept across recovery, so
    /// the boot-loop guard can see a release that keeps killing the agent.
    pub attempts: u32,
    /// The release `attempts` counts.
    #[serde(default)]
    pub attempted: Option<ReleaseId>,
    /// When the current update started.
    pub started_at_ms: Option<u64>,
    /// When the journal was last written.
    pub updated_at_ms: u64,
    /// Releases never to retry.
    #[serde(default)]
    pub bad_releases: Vec<BadRelease>,
    /// How the last update ended.
    #[serde(default)]
    pub last_result: Option<UpdateResult>,
    /// Why the device is in safe mode, if it is.
    #[serde(default)]
    pub safe_mode: Option<String>,
    /// Release directories staged and verified, with their digests.
    #[serde(default)]
    pub releases: BTreeMap<ReleaseId, StagedInfo>,
}

/// Reading the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// It could not be read.
    #[error("cannot read journal {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is not a journal (torn, truncated, garbage): recovery rebuilds it from the symlinks.
    #[error("journal {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// It could not be written.
    #[error(transparent)]
    Write(#[from] FsError),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    /// A resting journal for a device running `current`.
    pub fn idle(current: Option<ReleaseId>) -> Journal {
        Journal {
            version: JOURNAL_VERSION,
            phase: UpdatePhase::Idle,
            from: current,
            to: None,
            attempts: 0,
            attempted: None,
            started_at_ms: None,
            updated_at_ms: now_ms(),
            bad_releases: Vec::new(),
            last_result: None,
            safe_mode: None,
            releases: BTreeMap::new(),
        }
    }

    /// Reads the journal; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Journal>, JournalError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let journal: Journal =
            serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if journal.version != JOURNAL_VERSION {
            return Err(JournalError::Corrupt {
                path: path.display().to_string(),
                reason: format!("unknown version {}", journal.version),
            });
        }
        Ok(Some(journal))
    }

    /// Writes the journal atomically and durably, stamping `updated_at_ms`.
    pub fn save(&mut self, path: &Path) -> Result<(), JournalError> {
        self.updated_at_ms = now_ms();
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| JournalError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomic(path, &bytes)?;
        Ok(())
    }

    /// Remembers that `release` was staged with `digest` (the newest staged so far).
    pub fn record_staged(&mut self, release: &ReleaseId, digest: TreeDigest) {
        let seq = self.releases.values().map(|r| r.seq).max().unwrap_or(0) + 1;
        self.releases
            .insert(release.clone(), StagedInfo { digest, seq });
    }

    /// The digest `release` had when it was staged, if it was.
    pub fn staged_digest(&self, release: &ReleaseId) -> Option<TreeDigest> {
        self.releases.get(release).map(|r| r.digest)
    }

    /// True when the device refuses `release`.
    pub fn is_bad(&self, release: &ReleaseId) -> bool {
        self.bad_releases.iter().any(|b| &b.release == release)
    }

    /// Marks `release` bad (once).
    pub fn mark_bad(&mut self, release: &ReleaseId, reason: &str) {
        if !self.is_bad(release) {
            self.bad_releases.push(BadRelease {
                release: release.clone(),
                reason: reason.to_owned(),
                at_ms: now_ms(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> ReleaseId {
        c.to_string().repeat(40).parse().expect("sha")
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        assert!(Journal::load(&p).expect("absent is fine").is_none());
        let mut j = Journal::idle(Some(sha('a')));
        j.mark_bad(&sha('b'), "health");
        j.mark_bad(&sha('b'), "again");
        j.save(&p).expect("save");
        let back = Journal::load(&p).expect("load").expect("present");
        assert_eq!(back, j);
        assert_eq!(back.bad_releases.len(), 1);
        fs::write(&p, b"{\"version\": 1, \"pha").expect("tear it");
        assert!(matches!(
            Journal::load(&p),
            Err(JournalError::Corrupt { .. })
        ));
    }
}
