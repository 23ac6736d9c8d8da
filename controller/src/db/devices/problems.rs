//! What holds on each device now, for the alert engine: the problems the agent raised and has
//! not cleared (`problem_raised` / `problem_cleared`), and findings that alert for a while
//! after they happen (`drift_detected`) or while they last (`safe_mode_entered` until
//! `safe_mode_exited`). Kept up to date from each check-in's new events, in their order
//! ([`Db::record_checkin`]); an `agent_started` clears what the agent raised (it raises again
//! what still holds), so a restart never leaves a problem standing that nobody clears.

use fleet_config::protocol::{DeviceEvent, EventKind};
use sqlx::Row;

use crate::db::{q, Db, DbError};

/// The pseudo-problem a `drift_detected` event leaves (its detail says what differed).
pub const DRIFT_DETECTED: &str = "drift_detected";
/// The pseudo-problem of a device in safe mode (its detail is the reason).
pub const SAFE_MODE: &str = "safe_mode";

/// One thing that holds on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemRow {
    /// The device.
    pub device_id: String,
    /// The agent's problem kind (`crash_loop`, `disk_low`…), or [`DRIFT_DETECTED`], [`SAFE_MODE`].
    pub problem: String,
    /// What it is about when a kind can have several (`app/web`, an endpoint URL); empty if not.
    pub subject: String,
    /// What failed and why, as the agent said.
    pub detail: String,
    /// When the controller stored it (its own clock), ms since the epoch.
    pub raised_ms: i64,
}

/// One change to a device's set.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change<'a> {
    Raise {
        problem: &'a str,
        subject: &'a str,
        detail: String,
        /// A finding seen again moves its time; a standing problem keeps its first.
        renew: bool,
    },
    Clear {
        problem: &'a str,
        subject: &'a str,
    },
    /// The agent started: everything it raised is gone (not the one-shot findings).
    Restart,
}

fn change(kind: &EventKind) -> Option<Change<'_>> {
    Some(match kind {
        EventKind::ProblemRaised {
            problem,
            subject,
            detail,
        } => Change::Raise {
            problem,
            subject: subject.as_deref().unwrap_or(""),
            detail: detail.clone(),
            renew: false,
        },
        EventKind::ProblemCleared { problem, subject } => Change::Clear {
            problem,
            subject: subject.as_deref().unwrap_or(""),
        },
        EventKind::AgentStarted { .. } => Change::Restart,
        EventKind::DriftDetected {
            release,
            files,
            more_files,
            services,
        } => {
            let mut what = Vec::new();
            if !files.is_empty() {
                let more = if *more_files > 0 {
                    format!(" and {more_files} more")
                } else {
                    String::new()
                };
                what.push(format!("files {}{more}", files.join(", ")));
            }
            if !services.is_empty() {
                what.push(format!("containers {}", services.join(", ")));
            }
            Change::Raise {
                problem: DRIFT_DETECTED,
                subject: "",
                detail: format!(
                    "release {} drifted and was put back: {}",
                    release.short(),
                    what.join("; ")
                ),
                renew: true,
            }
        }
        EventKind::SafeModeEntered { reason } => Change::Raise {
            problem: SAFE_MODE,
            subject: "",
            detail: reason.clone(),
            renew: true,
        },
        EventKind::SafeModeExited => Change::Clear {
            problem: SAFE_MODE,
            subject: "",
        },
        _ => return None,
    })
}

impl Db {
    /// Applies the problem events among `events` (new ones, in `seq` order) to `device`'s set.
    /// Most check-ins carry none and cost nothing here.
    pub(crate) async fn apply_problem_events(
        &self,
        device: &str,
        events: &[&DeviceEvent],
        now_ms: i64,
    ) -> Result<(), DbError> {
        for e in events {
            let Some(c) = change(&e.kind) else {
                continue;
            };
            let what = "storing a device's problems";
            match c {
                Change::Raise {
                    problem,
                    subject,
                    detail,
                    renew,
                } => {
                    let on_conflict = if renew {
                        "detail = excluded.detail, raised_ms = excluded.raised_ms"
                    } else {
                        "detail = excluded.detail"
                    };
                    sqlx::query(&format!(
                        "INSERT INTO device_problems (device_id, problem, subject, detail, raised_ms) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (device_id, problem, subject) DO UPDATE SET {on_conflict}"
                    ))
                    .bind(device)
                    .bind(problem)
                    .bind(subject)
                    .bind(detail)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(q(what))?;
                }
                Change::Clear { problem, subject } => {
                    sqlx::query(
                        "DELETE FROM device_problems WHERE device_id = $1 AND problem = $2 AND subject = $3",
                    )
                    .bind(device)
                    .bind(problem)
                    .bind(subject)
                    .execute(&self.pool)
                    .await
                    .map_err(q(what))?;
                }
                Change::Restart => {
                    sqlx::query(
                        "DELETE FROM device_problems WHERE device_id = $1 AND problem <> $2",
                    )
                    .bind(device)
                    .bind(DRIFT_DETECTED)
                    .execute(&self.pool)
                    .await
                    .map_err(q(what))?;
                }
            }
        }
        Ok(())
    }

    /// Everything that holds on every device.
    pub async fn device_problems(&self) -> Result<Vec<ProblemRow>, DbError> {
        let rows = sqlx::query(
            "SELECT device_id, problem, subject, detail, raised_ms FROM device_problems \
             ORDER BY device_id, problem, subject",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the devices' problems"))?;
        rows.iter().map(problem_from).collect()
    }

    /// What holds on one device.
    pub async fn problems_of(&self, device: &str) -> Result<Vec<ProblemRow>, DbError> {
        let rows = sqlx::query(
            "SELECT device_id, problem, subject, detail, raised_ms FROM device_problems \
             WHERE device_id = $1 ORDER BY problem, subject",
        )
        .bind(device)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading a device's problems"))?;
        rows.iter().map(problem_from).collect()
    }
}

fn problem_from(r: &sqlx::any::AnyRow) -> Result<ProblemRow, DbError> {
    let e = || q("reading the devices' problems");
    Ok(ProblemRow {
        device_id: r.try_get("device_id").map_err(e())?,
        problem: r.try_get("problem").map_err(e())?,
        subject: r.try_get("subject").map_err(e())?,
        detail: r.try_get("detail").map_err(e())?,
        raised_ms: r.try_get("raised_ms").map_err(e())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_problem_events_change_the_set() {
        let raised = EventKind::ProblemRaised {
            problem: "crash_loop".into(),
            subject: Some("app/web".into()),
            detail: "5 restarts".into(),
        };
        assert!(matches!(
            change(&raised),
            Some(Change::Raise {
                problem: "crash_loop",
                subject: "app/web",
                renew: false,
                ..
            })
        ));
        assert_eq!(
            change(&EventKind::AgentStarted {
                version: "1".into()
            }),
            Some(Change::Restart)
        );
        assert_eq!(
            change(&EventKind::SafeModeExited),
            Some(Change::Clear {
                problem: SAFE_MODE,
                subject: ""
            })
        );
        assert!(change(&EventKind::UpdateStarted {
            release: "0123456789abcdef0123456789abcdef01234567"
                .parse()
                .expect("sha")
        })
        .is_none());
    }
}
