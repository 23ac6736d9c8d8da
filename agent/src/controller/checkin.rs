//! Building a check-in: what the device runs and where its transaction is (from the data
//! directory and the journal), its health, a resource summary, and the buffered events.
//!
//! Everything here is cheap: a few symlink reads, the journal already in memory, and one read
//! of /proc for the telemetry. A check-in body stays well under a kilobyte when no events are
//! pending (the control-traffic budget is 1 MB a day, ~700 bytes a minute).

use fleet_config::protocol::{
    CheckinRequest, DeviceEvent, HealthState, ReleaseId, Telemetry, UpdatePhase, UpdateResult,
};

use crate::host::HostStats;
use crate::journal::Journal;
use crate::layout::DataDir;

/// Most buffered events sent in one check-in (the controller takes up to 5,000).
pub const MAX_EVENTS_PER_CHECKIN: usize = 500;
/// Most bad releases reported (the most recent ones); the journal keeps them all.
pub const MAX_BAD_REPORTED: usize = 50;
/// Longest reason sent in `last_result`; the full text is in the journal and the event.
pub const MAX_REASON: usize = 256;

/// The device's health as the controller sees it:
/// - safe mode: `unhealthy` (the app stack is not running);
/// - idle on a committed release whose stacks the agent keeps running: `healthy`;
/// - idle on a committed release it could not keep running (the last supervision failed):
///   `degraded`;
/// - anything else (no release yet, an update in progress): `unknown`.
pub fn health(
    journal: &Journal,
    current: Option<&ReleaseId>,
    supervise_problem: bool,
) -> HealthState {
    if journal.safe_mode.is_some() || journal.phase == UpdatePhase::SafeMode {
        return HealthState::Unhealthy;
    }
    match (journal.phase, current, &journal.to) {
        (UpdatePhase::Idle, Some(_), None) if supervise_problem => HealthState::Degraded,
        (UpdatePhase::Idle, Some(_), None) => HealthState::Healthy,
        _ => HealthState::Unknown,
    }
}

fn cut(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON) {
        Some((i, _)) => format!("{}…", &reason[..i]),
        None => reason.to_owned(),
    }
}

fn short_result(r: &UpdateResult) -> UpdateResult {
    match r {
        UpdateResult::Succeeded { release } => UpdateResult::Succeeded {
            release: release.clone(),
        },
        UpdateResult::RolledBack { release, reason } => UpdateResult::RolledBack {
            release: release.clone(),
            reason: cut(reason),
        },
        UpdateResult::Rejected { release, reason } => UpdateResult::Rejected {
            release: release.clone(),
            reason: cut(reason),
        },
        UpdateResult::Skipped { reason } => UpdateResult::Skipped {
            reason: cut(reason),
        },
    }
}

/// The check-in for the device `device_id` with data directory `data`, its `journal`,
/// whether the last supervision of `current` failed, a resource summary and the events to send.
pub fn build_request(
    device_id: &str,
    data: &DataDir,
    journal: &Journal,
    supervise_problem: bool,
    telemetry: Telemetry,
    events: Vec<DeviceEvent>,
) -> CheckinRequest {
    let current = data.current().release().cloned();
    let previous = data.previous().release().cloned();
    let phase = if journal.safe_mode.is_some() {
        UpdatePhase::SafeMode
    } else {
        journal.phase
    };
    let skip = journal.bad_releases.len().saturating_sub(MAX_BAD_REPORTED);
    CheckinRequest {
        device_id: device_id.to_owned(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        health: health(journal, current.as_ref(), supervise_problem),
        current,
        previous,
        phase,
        last_result: journal.last_result.as_ref().map(short_result),
        bad_releases: journal
            .bad_releases
            .iter()
            .skip(skip)
            .map(|b| b.release.clone())
            .collect(),
        telemetry,
        events,
        long_poll_secs: 0,
        logs: None,
    }
}

/// CPU use between two readings of /proc/stat's counters.
#[derive(Debug, Clone, Default)]
pub struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Takes a reading (total and idle ticks); returns the busy share since the previous one,
    /// 0–100 %, or `None` for the first reading.
    pub fn sample(&mut self, ticks: Option<(u64, u64)>) -> Option<f64> {
        let (total, idle) = ticks?;
        let previous = self.last.replace((total, idle));
        let (t0, i0) = previous?;
        let dt = total.checked_sub(t0)?;
        let di = idle.checked_sub(i0)?;
        if dt == 0 {
            return None;
        }
        Some(100.0 * dt.saturating_sub(di) as f64 / dt as f64)
    }
}

/// The check-in's resource summary from one reading of the host.
pub fn telemetry(host: &HostStats, cpu_percent: Option<f64>) -> Telemetry {
    Telemetry {
        cpu_percent: cpu_percent.map(|c| (c * 10.0).round() / 10.0),
        mem_used_bytes: host
            .memory
            .map(|(total, avail)| total.saturating_sub(avail)),
        mem_total_bytes: host.memory.map(|(total, _)| total),
        disk_free_bytes: host.disk.map(|(free, _)| free),
        temperature_c: host.temperature_c,
        load1: host.load1,
        uptime_secs: host.uptime_secs.map(|s| s as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventLog;
    use crate::fsutil::swap_symlink;
    use fleet_config::protocol::EventKind;

    fn sha(c: char) -> ReleaseId {
        c.to_string().repeat(40).parse().expect("sha")
    }

    fn install(d: &DataDir, id: &ReleaseId) {
        std::fs::create_dir_all(d.release(id)).expect("release dir");
    }

    #[test]
    fn a_check_in_reports_the_data_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = DataDir::new(tmp.path());
        d.create().expect("create");
        let (a, b, x) = (sha('a'), sha('b'), sha('f'));
        install(&d, &a);
        install(&d, &b);
        swap_symlink(&d.current_link(), &DataDir::link_target(&b)).expect("current");
        swap_symlink(&d.previous_link(), &DataDir::link_target(&a)).expect("previous");
        let mut j = Journal::idle(Some(b.clone()));
        j.mark_bad(&x, "health window failed");
        j.last_result = Some(UpdateResult::RolledBack {
            release: x.clone(),
            reason: "r".repeat(5000),
        });
        j.save(&d.journal()).expect("save");
        let mut log = EventLog::open(d.events_dir()).expect("events");
        log.append(EventKind::AgentStarted {
            version: "0.1.0".into(),
        })
        .expect("append");
        log.append(EventKind::SafeModeExited).expect("append");
        let events = log.pending(MAX_EVENTS_PER_CHECKIN).expect("pending");
        let host = HostStats {
            memory: Some((1000, 400)),
            disk: Some((700, 900)),
            temperature_c: Some(51.5),
            load1: Some(0.25),
            uptime_secs: Some(99.7),
            ..HostStats::default()
        };
        let journal = Journal::load(&d.journal()).expect("load").expect("present");
        let req = build_request(
            "pi-01",
            &d,
            &journal,
            false,
            telemetry(&host, Some(12.345)),
            events,
        );
        assert_eq!(req.device_id, "pi-01");
        assert_eq!(req.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(req.current, Some(b.clone()));
        assert_eq!(req.previous, Some(a));
        assert_eq!(req.phase, UpdatePhase::Idle);
        assert_eq!(req.health, HealthState::Healthy);
        assert_eq!(req.bad_releases, vec![x.clone()]);
        match &req.last_result {
            Some(UpdateResult::RolledBack { release, reason }) => {
                assert_eq!(release, &x);
                assert_eq!(
                    reason.chars().count(),
                    MAX_REASON + 1,
                    "cut, with an ellipsis"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            req.telemetry,
            Telemetry {
                cpu_percent: Some(12.3),
                mem_used_bytes: Some(600),
                mem_total_bytes: Some(1000),
                disk_free_bytes: Some(700),
                temperature_c: Some(51.5),
                load1: Some(0.25),
                uptime_secs: Some(99),
            }
        );
        let seqs: Vec<u64> = req.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        // The traffic budget: without events a check-in body stays under a kilobyte.
        let quiet = CheckinRequest {
            events: Vec::new(),
            ..req
        };
        let bytes = serde_json::to_vec(&quiet).expect("json");
        assert!(bytes.len() < 1024, "{} bytes", bytes.len());
    }

    #[test]
    fn health_follows_phase_safe_mode_and_supervision() {
        let a = sha('a');
        let idle = Journal::idle(Some(a.clone()));
        assert_eq!(health(&idle, Some(&a), false), HealthState::Healthy);
        assert_eq!(health(&idle, Some(&a), true), HealthState::Degraded);
        assert_eq!(
            health(&idle, None, false),
            HealthState::Unknown,
            "nothing installed"
        );
        let mut updating = idle.clone();
        updating.phase = UpdatePhase::Verifying;
        updating.to = Some(sha('b'));
        assert_eq!(health(&updating, Some(&a), false), HealthState::Unknown);
        let mut safe = idle.clone();
        safe.safe_mode = Some("rollback failed".into());
        assert_eq!(health(&safe, Some(&a), false), HealthState::Unhealthy);
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = DataDir::new(tmp.path());
        let req = build_request("pi-01", &d, &safe, false, Telemetry::default(), vec![]);
        assert_eq!(
            req.phase,
            UpdatePhase::SafeMode,
            "safe mode is reported as such"
        );
        assert_eq!(req.current, None);
    }

    #[test]
    fn only_the_most_recent_bad_releases_are_reported() {
        let mut j = Journal::idle(None);
        for i in 0..(MAX_BAD_REPORTED + 5) {
            let id: ReleaseId = format!("{i:040x}").parse().expect("sha");
            j.mark_bad(&id, "bad");
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let req = build_request(
            "pi-01",
            &DataDir::new(tmp.path()),
            &j,
            false,
            Telemetry::default(),
            vec![],
        );
        assert_eq!(req.bad_releases.len(), MAX_BAD_REPORTED);
        assert_eq!(req.bad_releases[0].as_str(), format!("{:040x}", 5));
    }

    #[test]
    fn cpu_use_is_the_busy_share_between_readings() {
        let mut s = CpuSampler::default();
        assert_eq!(s.sample(Some((1000, 800))), None, "first reading");
        assert_eq!(s.sample(Some((2000, 1550))), Some(25.0));
        assert_eq!(s.sample(Some((2000, 1550))), None, "no time passed");
        assert_eq!(s.sample(Some((10, 5))), None, "counters went back (reboot)");
        assert_eq!(s.sample(None), None);
    }
}
