//! `fleet-agent status`: what the device runs and where its update transaction is, read from
//! the journal and the release links (no lock needed, nothing is changed).

use serde::Serialize;

use fleet_config::protocol::{ReleaseId, UpdatePhase, UpdateResult};

use crate::journal::{BadRelease, Journal, JournalError};
use crate::layout::{DataDir, LinkState};

/// The device's state as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Device id from the configuration.
    pub device_id: String,
    /// `standalone` or `controller`.
    pub mode: &'static str,
    /// The running release.
    pub current: Option<ReleaseId>,
    /// The rollback target.
    pub previous: Option<ReleaseId>,
    /// Problems with the links, if any.
    pub link_problems: Vec<String>,
    /// Transaction phase.
    pub phase: UpdatePhase,
    /// Release being installed, if any.
    pub installing: Option<ReleaseId>,
    /// How the last update ended.
    pub last_result: Option<UpdateResult>,
    /// Releases this device refuses.
    pub bad_releases: Vec<BadRelease>,
    /// Why the device is in safe mode.
    pub safe_mode: Option<String>,
    /// The journal could not be read: why.
    pub journal_problem: Option<String>,
}

/// Reads the state of the data directory.
pub fn read(data: &DataDir, device_id: &str, standalone: bool) -> Status {
    let mut link_problems = Vec::new();
    let mut link = |name: &str, state: LinkState| match state {
        LinkState::Valid(r) => Some(r),
        LinkState::Absent => None,
        LinkState::Invalid(target) => {
            link_problems.push(format!(
                "`{name}` points at {}, which is not a complete release",
                target.display()
            ));
            None
        }
    };
    let current = link("current", data.current());
    let previous = link("previous", data.previous());
    let (journal, journal_problem) = match Journal::load(&data.journal()) {
        Ok(Some(j)) => (j, None),
        Ok(None) => (Journal::idle(current.clone()), None),
        Err(
            e @ (JournalError::Corrupt { .. } | JournalError::Read { .. } | JournalError::Write(_)),
        ) => (Journal::idle(current.clone()), Some(e.to_string())),
    };
    Status {
        device_id: device_id.to_owned(),
        mode: if standalone {
            "standalone"
        } else {
            "controller"
        },
        current,
        previous,
        link_problems,
        phase: journal.phase,
        installing: journal.to,
        last_result: journal.last_result,
        bad_releases: journal.bad_releases,
        safe_mode: journal.safe_mode,
        journal_problem,
    }
}

fn short(r: &Option<ReleaseId>) -> String {
    r.as_ref()
        .map_or_else(|| "-".to_owned(), |r| r.short().to_owned())
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "device:     {} ({} mode)", self.device_id, self.mode)?;
        writeln!(f, "current:    {}", short(&self.current))?;
        writeln!(f, "previous:   {}", short(&self.previous))?;
        let phase = serde_json::to_value(self.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match &self.installing {
            Some(r) => writeln!(f, "phase:      {phase} (installing {})", r.short())?,
            None => writeln!(f, "phase:      {phase}")?,
        }
        let last = match &self.last_result {
            None => "-".to_owned(),
            Some(UpdateResult::Succeeded { release }) => format!("succeeded: {}", release.short()),
            Some(UpdateResult::RolledBack { release, reason }) => {
                format!("rolled back {}: {reason}", release.short())
            }
            Some(UpdateResult::Rejected { release, reason }) => {
                format!("rejected {}: {reason}", release.short())
            }
            Some(UpdateResult::Skipped { reason }) => format!("skipped: {reason}"),
        };
        writeln!(f, "last:       {last}")?;
        writeln!(
            f,
            "safe mode:  {}",
            self.safe_mode.as_deref().unwrap_or("no")
        )?;
        for b in &self.bad_releases {
            writeln!(f, "bad:        {} ({})", b.release.short(), b.reason)?;
        }
        for p in &self.link_problems {
            writeln!(f, "problem:    {p}")?;
        }
        if let Some(p) = &self.journal_problem {
            writeln!(f, "problem:    {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::swap_symlink;

    #[test]
    fn reports_links_journal_and_problems() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = DataDir::new(tmp.path());
        d.create().expect("create");
        let a: ReleaseId = "a".repeat(40).parse().expect("sha");
        std::fs::create_dir(d.release(&a)).expect("release dir");
        swap_symlink(&d.current_link(), &DataDir::link_target(&a)).expect("link");
        swap_symlink(&d.previous_link(), std::path::Path::new("releases/gone")).expect("link");
        let mut j = Journal::idle(Some(a.clone()));
        j.last_result = Some(UpdateResult::Succeeded { release: a.clone() });
        j.save(&d.journal()).expect("save");
        let s = read(&d, "pi-01", true);
        assert_eq!(s.current, Some(a.clone()));
        assert_eq!(s.previous, None);
        assert_eq!(s.link_problems.len(), 1);
        let text = s.to_string();
        assert!(text.contains("current:    aaaaaaaaaaaa"), "{text}");
        assert!(
            text.contains("last:       succeeded: aaaaaaaaaaaa"),
            "{text}"
        );
        assert!(
            text.contains("problem:    `previous` points at releases/gone"),
            "{text}"
        );
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["phase"], "idle");
        assert_eq!(json["current"], a.as_str());
    }
}
