//! `checkin.json` in the data directory: the last successful check-in and the last error, so
//! `fleet-agent status` (another process) can show them. Informational only: rewritten after
//! every check-in without fsync, and an unreadable file just shows nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::{write_replace, FsError};

/// What the controller loop last saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinStatus {
    /// The controller's URL.
    pub url: String,
    /// Last successful check-in, ms since the epoch.
    pub last_checkin_ms: Option<u64>,
    /// The last failure (enrollment or check-in), for people.
    pub last_error: Option<String>,
    /// When it happened, ms since the epoch.
    pub last_error_ms: Option<u64>,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// What the device did with the last answer, for people ("holding: emergency stop").
    pub last_decision: Option<String>,
}

impl CheckinStatus {
    /// Reads the file; `None` if absent or unreadable.
    pub fn load(path: &Path) -> Option<CheckinStatus> {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Writes the file (atomic rename, no fsync).
    pub fn save(&self, path: &Path) -> Result<(), FsError> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_replace(path, &bytes)
    }

    /// Records a success at `now_ms`.
    pub fn succeeded(&mut self, now_ms: u64) {
        self.last_checkin_ms = Some(now_ms);
        self.consecutive_failures = 0;
    }

    /// Records a failure at `now_ms`; the last error stays visible after recovery, with its time.
    pub fn failed(&mut self, now_ms: u64, error: String) {
        self.last_error = Some(error);
        self.last_error_ms = Some(now_ms);
        self.consecutive_failures += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tolerance() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("checkin.json");
        assert_eq!(CheckinStatus::load(&p), None);
        let mut s = CheckinStatus {
            url: "http://c".into(),
            ..CheckinStatus::default()
        };
        s.failed(5, "unreachable".into());
        s.failed(6, "unreachable".into());
        assert_eq!(s.consecutive_failures, 2);
        s.succeeded(7);
        assert_eq!(s.consecutive_failures, 0);
        s.save(&p).expect("save");
        assert_eq!(CheckinStatus::load(&p), Some(s));
        std::fs::write(&p, b"{torn").expect("write");
        assert_eq!(CheckinStatus::load(&p), None);
    }
}
