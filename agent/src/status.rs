//! `fleet-agent status`: what the device runs and where its update transaction is, read from
//! the journal and the release links (no lock needed, nothing is changed), and the problems the
//! running agent publishes in its `run_dir` (there even when the data directory is full or
//! read-only).

use std::path::Path;

use serde::Serialize;

use fleet_config::protocol::{ReleaseId, UpdatePhase, UpdateResult};

use crate::config::ControllerConfig;
use crate::controller::report::CheckinStatus;
use crate::journal::{now_ms, BadRelease, Journal, JournalError};
use crate::layout::{DataDir, LinkState};
use crate::problems::{Problem, PublishedState};

/// Controller mode: enrollment and the last check-in.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerStatus {
    /// The controller's URL.
    pub url: String,
    /// True once the device token is stored.
    pub enrolled: bool,
    /// The pairing code waiting for an operator's approval.
    pub pairing_code: Option<String>,
    /// Last successful check-in, ms since the epoch.
    pub last_checkin_ms: Option<u64>,
    /// The last failure talking to the controller.
    pub last_error: Option<String>,
    /// When, ms since the epoch.
    pub last_error_ms: Option<u64>,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// What the agent did with the last answer.
    pub last_decision: Option<String>,
}

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
    /// True while the running agent is still starting (waiting out its problems).
    pub starting: bool,
    /// The problems the running agent keeps running with (empty when none, or no agent runs).
    pub problems: Vec<Problem>,
    /// Controller mode only.
    pub controller: Option<ControllerStatus>,
}

fn controller_status(data: &DataDir, cfg: &ControllerConfig) -> ControllerStatus {
    let last = CheckinStatus::load(&data.checkin_status()).unwrap_or_default();
    let pairing_code = std::fs::read_to_string(data.pairing_code())
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .filter(|c| !c.is_empty());
    ControllerStatus {
        url: cfg.url.clone(),
        enrolled: cfg.token_file.exists(),
        pairing_code,
        last_checkin_ms: last.last_checkin_ms,
        last_error: last.last_error,
        last_error_ms: last.last_error_ms,
        consecutive_failures: last.consecutive_failures,
        last_decision: last.last_decision,
    }
}

/// Reads the state of the data directory and what the running agent published in `run_dir`;
/// `controller` is the configured controller, if any.
pub fn read(
    data: &DataDir,
    run_dir: &Path,
    device_id: &str,
    controller: Option<&ControllerConfig>,
) -> Status {
    let published = PublishedState::load(run_dir);
    let standalone = controller.is_none();
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
        starting: published.as_ref().is_some_and(|p| p.starting),
        problems: published.map(|p| p.problems).unwrap_or_default(),
        controller: controller.map(|c| controller_status(data, c)),
    }
}

/// "42 s ago", "3 min ago", "5 h ago" for an instant in ms since the epoch.
fn ago(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
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
        if self.starting {
            writeln!(
                f,
                "agent:      starting: waiting for the problems below to clear"
            )?;
        }
        for p in &self.problems {
            writeln!(f, "problem:    {p} (since {})", ago(p.since_ms))?;
        }
        if let Some(c) = &self.controller {
            let enrolled = if c.enrolled {
                "enrolled"
            } else {
                "not enrolled"
            };
            writeln!(f, "controller: {} ({enrolled})", c.url)?;
            if let Some(code) = &c.pairing_code {
                writeln!(
                    f,
                    "pairing:    {code}: waiting for approval (`fleetctl devices approve {code}`)"
                )?;
            }
            match c.last_checkin_ms {
                Some(ms) => writeln!(f, "check-in:   {}", ago(ms))?,
                None => writeln!(f, "check-in:   never")?,
            }
            if let Some(d) = &c.last_decision {
                writeln!(f, "decision:   {d}")?;
            }
            if let (Some(e), Some(ms)) = (&c.last_error, c.last_error_ms) {
                let failing = if c.consecutive_failures > 0 {
                    format!(", {} failure(s) in a row", c.consecutive_failures)
                } else {
                    String::new()
                };
                writeln!(f, "error:      {e} ({}{failing})", ago(ms))?;
            }
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
        let s = read(&d, &tmp.path().join("run"), "pi-01", None);
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
        assert!(json["controller"].is_null());
        assert_eq!(json["problems"], serde_json::json!([]));
    }

    #[test]
    fn problems_the_running_agent_published_are_shown() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = tmp.path().join("run");
        // The data directory does not even exist: the agent could not create it.
        let d = DataDir::new(tmp.path().join("data"));
        let problems = crate::problems::Problems::new(std::sync::Arc::default(), Some(&run));
        problems.set_starting(true);
        problems.raise(
            crate::problems::ProblemKind::DataDirUnusable,
            None,
            "create data directory /x: Read-only file system (os error 30)",
        );
        let s = read(&d, &run, "pi-01", None);
        assert!(s.starting);
        let text = s.to_string();
        assert!(text.contains("agent:      starting"), "{text}");
        assert!(
            text.contains("problem:    data_dir_unusable: create data directory /x: Read-only file system (os error 30) (since 0 s ago)"),
            "{text}"
        );
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["problems"][0]["problem"], "data_dir_unusable");
    }

    #[test]
    fn controller_mode_shows_pairing_code_and_last_check_in() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = DataDir::new(tmp.path());
        d.create().expect("create");
        let cfg = ControllerConfig {
            url: "https://c:8443".into(),
            token_file: tmp.path().join("device-token"),
            bootstrap_token_file: None,
            request_timeout: std::time::Duration::from_secs(10),
            long_poll: std::time::Duration::ZERO,
            ca_file: None,
        };
        std::fs::write(d.pairing_code(), "K7PQ2MXD\n").expect("code");
        let mut last = CheckinStatus {
            url: cfg.url.clone(),
            ..CheckinStatus::default()
        };
        last.failed(
            now_ms() - 5_000,
            "controller https://c:8443 unreachable: refused".into(),
        );
        last.save(&d.checkin_status()).expect("save");
        let s = read(&d, &tmp.path().join("run"), "pi-01", Some(&cfg));
        let text = s.to_string();
        assert!(
            text.contains("device:     pi-01 (controller mode)"),
            "{text}"
        );
        assert!(
            text.contains("controller: https://c:8443 (not enrolled)"),
            "{text}"
        );
        assert!(
            text.contains(
                "pairing:    K7PQ2MXD: waiting for approval (`fleetctl devices approve K7PQ2MXD`)"
            ),
            "{text}"
        );
        assert!(text.contains("check-in:   never"), "{text}");
        assert!(
            text.contains("error:      controller https://c:8443 unreachable: refused (5 s ago, 1 failure(s) in a row)"),
            "{text}"
        );
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["controller"]["pairing_code"], "K7PQ2MXD");
        assert_eq!(json["controller"]["enrolled"], false);
    }
}
