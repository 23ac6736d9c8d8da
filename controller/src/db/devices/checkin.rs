//! A check-in stored: the device's report and its events (each `seq` once), and whether it
//! changes what the rollout engine sees.

use fleet_config::protocol::{CheckinRequest, DeviceEvent, ReleaseId};

use super::{to_json, wire_name};
use crate::db::{q, Db, DbError};

/// What a check-in needs from the device's row.
#[derive(Debug, Clone)]
pub struct CheckinIdentity {
    /// The device the token belongs to.
    pub id: String,
    /// Its token was revoked.
    pub revoked: bool,
    /// What it should run.
    pub desired_release: Option<String>,
    /// The digest of that release.
    pub desired_digest: Option<String>,
    /// Events stored up to here.
    pub acked_seq: i64,
    /// Safe mode requested.
    pub safe_mode_requested: bool,
    /// Its last check-in as stored (`None`: it never checked in).
    pub last_report: Option<LastReport>,
    /// The emergency stop, read in the same query (every check-in sees the store's).
    pub emergency_stop: Option<crate::db::EmergencyStop>,
    /// When its telemetry was last kept as a sample (see [`crate::db::telemetry`]).
    pub telemetry_sampled_ms: Option<i64>,
    /// An operator's request for its logs, pending (see [`crate::db::device_logs`]).
    pub logs_request: Option<fleet_config::protocol::LogRequest>,
}

/// What a device's last check-in stored of what the rollout engine looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReport {
    /// When.
    pub last_seen_ms: i64,
    /// `current_release`.
    pub current: Option<String>,
    /// Phase, wire name.
    pub phase: String,
    /// Health, wire name.
    pub health: String,
    /// Last result, JSON.
    pub last_result: Option<String>,
    /// Bad releases, JSON.
    pub bad_releases: String,
}

impl CheckinIdentity {
    /// Whether storing `req` at `now_ms` changes what the rollout engine sees of the device:
    /// its first check-in, back from offline, or a new release, phase, health, last result or
    /// list of bad releases. Routine check-ins change none of these, so they need not wake
    /// the engine (its periodic pass still runs).
    pub fn changes_rollout_view(
        &self,
        req: &CheckinRequest,
        now_ms: i64,
        offline_after_ms: i64,
    ) -> bool {
        let Some(last) = &self.last_report else {
            return true;
        };
        now_ms.saturating_sub(last.last_seen_ms) > offline_after_ms
            || last.current.as_deref() != req.current.as_ref().map(ReleaseId::as_str)
            || last.phase != wire_name(&req.phase)
            || last.health != wire_name(&req.health)
            || last.last_result != req.last_result.as_ref().map(to_json)
            || last.bad_releases != to_json(&req.bad_releases)
    }
}

impl Db {
    /// Stores a check-in: the report, and its events (each `seq` once). Returns the highest
    /// event sequence number stored for the device. `view_changed`: it changes what the
    /// rollout engine sees ([`CheckinIdentity::changes_rollout_view`]), so the row is stamped
    /// changed; a check-in that changes nothing else moves only `last_seen_ms`.
    ///
    /// One statement for the events (if any), then one for the report, each its own
    /// transaction: on SQLite every statement is a round trip to the connection's thread made
    /// while holding the one write lock, so fewer statements is more check-ins per second. The
    /// order keeps it safe without a transaction: events are stored before `acked_seq` says so,
    /// and a device whose check-in failed half-way sends them again (stored once by `seq`).
    pub async fn record_checkin(
        &self,
        who: &CheckinIdentity,
        req: &CheckinRequest,
        now_ms: i64,
        view_changed: bool,
    ) -> Result<i64, DbError> {
        let _turn = self.write_turn().await;
        let mut acked = who.acked_seq;
        let mut events: Vec<(i64, &DeviceEvent)> = req
            .events
            .iter()
            .filter_map(|e| i64::try_from(e.seq).ok().map(|seq| (seq, e)))
            .collect();
        events.sort_by_key(|(seq, _)| *seq);
        events.dedup_by_key(|(seq, _)| *seq);
        // 6 parameters a row; 500 rows stay far below both engines' parameter limits.
        for chunk in events.chunks(500) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = i * 6;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO device_events (device_id, seq, at_ms, kind, body, stored_ms) \
                 VALUES {} ON CONFLICT (device_id, seq) DO NOTHING",
                rows.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (seq, e) in chunk {
                let body = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
                let kind = body["event"].as_str().unwrap_or("unknown").to_owned();
                query = query
                    .bind(&who.id)
                    .bind(*seq)
                    .bind(i64::try_from(e.at_ms).unwrap_or(i64::MAX))
                    .bind(kind)
                    .bind(body.to_string())
                    .bind(now_ms);
                acked = acked.max(*seq);
            }
            query
                .execute(&self.pool)
                .await
                .map_err(q("storing device events"))?;
        }
        // What holds on the device now, from its new events in order (replays change nothing).
        let fresh: Vec<&DeviceEvent> = events
            .iter()
            .filter(|(seq, _)| *seq > who.acked_seq)
            .map(|(_, e)| *e)
            .collect();
        self.apply_problem_events(&who.id, &fresh, now_ms).await?;
        let sampled_ms = if crate::db::telemetry::sample_due(who.telemetry_sampled_ms, now_ms) {
            self.insert_telemetry_sample(&who.id, now_ms, &req.telemetry)
                .await?;
            Some(now_ms)
        } else {
            who.telemetry_sampled_ms
        };
        // `changed_ms` is indexed: set only when the engine's view changed (a statement that
        // names it rewrites its index entry, one more page per check-in).
        let stamp = if view_changed {
            ", changed_ms = $13"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE devices SET last_seen_ms = $1, agent_version = $2, current_release = $3, \
             previous_release = $4, phase = $5, health = $6, last_result = $7, bad_releases = $8, \
             telemetry = $9, acked_seq = $10, telemetry_sampled_ms = $11{stamp} WHERE id = $12"
        );
        let query = sqlx::query(&sql)
            .bind(now_ms)
            .bind(&req.agent_version)
            .bind(req.current.as_ref().map(|r| r.as_str().to_owned()))
            .bind(req.previous.as_ref().map(|r| r.as_str().to_owned()))
            .bind(wire_name(&req.phase))
            .bind(wire_name(&req.health))
            .bind(req.last_result.as_ref().map(to_json))
            .bind(to_json(&req.bad_releases))
            .bind(to_json(&req.telemetry))
            .bind(acked)
            .bind(sampled_ms)
            .bind(&who.id);
        // Stamped now, with the write lock held (not when the request came in, which may be
        // a while behind under load): the engine reads rows changed since its last pass.
        let query = if view_changed {
            query.bind(crate::db::now_ms())
        } else {
            query
        };
        query
            .execute(&self.pool)
            .await
            .map_err(q("storing a check-in"))?;
        Ok(acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_config::protocol::{HealthState, Telemetry, UpdatePhase, UpdateResult};

    const A: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn only_check_ins_that_change_the_rollout_view_wake_the_engine() {
        let a: ReleaseId = A.parse().expect("sha");
        let req = CheckinRequest {
            device_id: "d".into(),
            agent_version: "1".into(),
            current: Some(a.clone()),
            previous: None,
            phase: UpdatePhase::Idle,
            health: HealthState::Healthy,
            last_result: Some(UpdateResult::Succeeded { release: a.clone() }),
            bad_releases: Vec::new(),
            telemetry: Telemetry::default(),
            events: Vec::new(),
            long_poll_secs: 0,
            logs: None,
        };
        let stored = LastReport {
            last_seen_ms: 1_000,
            current: Some(A.into()),
            phase: "idle".into(),
            health: "healthy".into(),
            last_result: req.last_result.as_ref().map(to_json),
            bad_releases: "[]".into(),
        };
        let who = |last: Option<LastReport>| CheckinIdentity {
            id: "d".into(),
            revoked: false,
            desired_release: None,
            desired_digest: None,
            acked_seq: 0,
            safe_mode_requested: false,
            last_report: last,
            emergency_stop: None,
            telemetry_sampled_ms: None,
            logs_request: None,
        };
        let off = 180_000;
        let same = who(Some(stored.clone()));
        assert!(
            !same.changes_rollout_view(&req, 61_000, off),
            "routine check-in"
        );
        assert!(
            who(None).changes_rollout_view(&req, 61_000, off),
            "first check-in"
        );
        assert!(
            same.changes_rollout_view(&req, 1_000 + off + 1, off),
            "back from offline"
        );
        let mut r = req.clone();
        r.phase = UpdatePhase::Fetching;
        assert!(same.changes_rollout_view(&r, 61_000, off), "phase");
        let mut r = req.clone();
        r.health = HealthState::Unhealthy;
        assert!(same.changes_rollout_view(&r, 61_000, off), "health");
        let mut r = req.clone();
        r.current = None;
        assert!(same.changes_rollout_view(&r, 61_000, off), "release");
        let mut r = req.clone();
        r.bad_releases = vec![a.clone()];
        assert!(same.changes_rollout_view(&r, 61_000, off), "bad releases");
        let mut r = req.clone();
        r.last_result = None;
        assert!(same.changes_rollout_view(&r, 61_000, off), "last result");
        let mut r = req.clone();
        r.telemetry.cpu_percent = Some(99.0);
        assert!(
            !same.changes_rollout_view(&r, 61_000, off),
            "telemetry only"
        );
    }
}
