//! Alerts as stored: the alerts (written by the leader's alert engine, in fenced
//! transactions with the messages they make), operators' acknowledgements (any replica; the
//! leader's writes never touch them), silences, the outbox of messages to deliver, and the
//! fleet's alert settings.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, q, Db, DbError, Fenced};
use crate::alerts::facts::FleetSettings;
use crate::alerts::model::{Ack, Alert, Phase, Said, Silence};

const SETTINGS_KEY: &str = "fleet_alert_settings";
const EVALUATED_KEY: &str = "alerts_evaluated";

/// An alert as listed: what the engine stored, and who acknowledged it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct AlertRow {
    /// The alert with its members.
    #[serde(flatten)]
    pub alert: Alert,
    /// Its severity.
    pub severity: String,
    /// The summary of its last message (or of its members, before any).
    pub summary: String,
    /// When it last changed.
    pub updated_ms: i64,
}

/// A message waiting for delivery (or delivered: its record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The message's id.
    pub message_id: String,
    /// Its alert.
    pub alert_id: String,
    /// To which notifier.
    pub notifier: String,
    /// Its kind (`firing`…).
    pub kind: String,
    /// The message, JSON.
    pub body: String,
    /// Attempts so far.
    pub attempts: i64,
    /// When it was made.
    pub created_ms: i64,
    /// When its next attempt is due.
    pub next_ms: i64,
}

/// A message to put in the outbox.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The message's id.
    pub message_id: &'a str,
    /// Its alert.
    pub alert_id: &'a str,
    /// The notifier.
    pub notifier: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// The message, JSON.
    pub body: &'a str,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Acknowledged now.
    Acked,
    /// Acknowledged before, by this one.
    Already(Ack),
    /// No such alert.
    Unknown,
    /// It resolved already.
    Resolved,
}

fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> DbError {
    move |e| DbError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

/// The stored part of an alert that is not in its own columns.
#[derive(serde::Serialize, serde::Deserialize)]
struct Data {
    members: std::collections::BTreeMap<String, crate::alerts::model::Member>,
    said: Said,
}

const ALERT_COLUMNS: &str =
    "id, name, severity, phase, started_ms, fired_ms, resolved_ms, summary, data, \
     updated_ms, acked_by, acked_ms, ack_reason";

fn alert_from(r: &sqlx::any::AnyRow) -> Result<AlertRow, DbError> {
    let e = || q("reading an alert");
    let name: String = r.try_get("name").map_err(e())?;
    let phase: String = r.try_get("phase").map_err(e())?;
    let data: String = r.try_get("data").map_err(e())?;
    let data: Data = serde_json::from_str(&data).map_err(corrupt("alert"))?;
    let acked_by: Option<String> = r.try_get("acked_by").map_err(e())?;
    let ack = match acked_by {
        Some(by) => Some(Ack {
            by,
            at_ms: r
                .try_get::<Option<i64>, _>("acked_ms")
                .map_err(e())?
                .unwrap_or(0),
            reason: r
                .try_get::<Option<String>, _>("ack_reason")
                .map_err(e())?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(AlertRow {
        alert: Alert {
            id: r.try_get("id").map_err(e())?,
            name: name.parse().map_err(|detail| DbError::Corrupt {
                what: "alert name",
                detail,
            })?,
            phase: Phase::parse(&phase).ok_or_else(|| DbError::Corrupt {
                what: "alert phase",
                detail: phase.clone(),
            })?,
            started_ms: r.try_get("started_ms").map_err(e())?,
            fired_ms: r.try_get("fired_ms").map_err(e())?,
            resolved_ms: r.try_get("resolved_ms").map_err(e())?,
            members: data.members,
            said: data.said,
            ack,
        },
        severity: r.try_get("severity").map_err(e())?,
        summary: r.try_get("summary").map_err(e())?,
        updated_ms: r.try_get("updated_ms").map_err(e())?,
    })
}

impl Fenced {
    /// Stores what a pass of the alert engine changed, forgets the pending alerts it dropped
    /// and queues its messages, all in this (fenced) transaction. `summaries`: each changed
    /// alert's summary, by id.
    pub async fn save_alerts(
        &mut self,
        changed: &[(&Alert, &str)],
        dropped: &[String],
        messages: &[NewMessage<'_>],
    ) -> Result<(), DbError> {
        let now = now_ms();
        for (a, summary) in changed {
            let data = serde_json::to_string(&Data {
                members: a.members.clone(),
                said: a.said.clone(),
            })
            .map_err(corrupt("alert"))?;
            sqlx::query(
                "INSERT INTO alerts (id, name, severity, phase, started_ms, fired_ms, resolved_ms, \
                 members, summary, data, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (id) DO UPDATE SET phase = excluded.phase, fired_ms = excluded.fired_ms, \
                 resolved_ms = excluded.resolved_ms, members = excluded.members, summary = excluded.summary, \
                 data = excluded.data, updated_ms = excluded.updated_ms",
            )
            .bind(&a.id)
            .bind(a.name.as_str())
            .bind(a.name.severity().as_str())
            .bind(a.phase.as_str())
            .bind(a.started_ms)
            .bind(a.fired_ms)
            .bind(a.resolved_ms)
            .bind(i64::try_from(a.members.len()).unwrap_or(i64::MAX))
            .bind(*summary)
            .bind(data)
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .map_err(q("storing an alert"))?;
        }
        for id in dropped {
            sqlx::query("DELETE FROM alerts WHERE id = $1 AND phase = 'pending'")
                .bind(id)
                .execute(&mut *self.tx)
                .await
                .map_err(q("forgetting a pending alert"))?;
        }
        for m in messages {
            sqlx::query(
                "INSERT INTO alert_outbox (message_id, alert_id, notifier, kind, body, created_ms, next_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (message_id, notifier) DO NOTHING",
            )
            .bind(m.message_id)
            .bind(m.alert_id)
            .bind(m.notifier)
            .bind(m.kind)
            .bind(m.body)
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .map_err(q("queueing an alert message"))?;
        }
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(EVALUATED_KEY)
        .bind(now.to_string())
        .execute(&mut *self.tx)
        .await
        .map_err(q("recording an alert evaluation"))?;
        Ok(())
    }

    /// Stores the fleet's alert settings (with the release that brings them).
    pub async fn set_fleet_alert_settings(&mut self, s: &FleetSettings) -> Result<(), DbError> {
        let text = serde_json::to_string(s).map_err(corrupt("alert settings"))?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(SETTINGS_KEY)
        .bind(text)
        .execute(&mut *self.tx)
        .await
        .map_err(q("storing the fleet's alert settings"))?;
        Ok(())
    }
}

impl Db {
    /// The fleet's alert settings (the defaults before the first release).
    pub async fn fleet_alert_settings(&self) -> Result<FleetSettings, DbError> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(SETTINGS_KEY)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the fleet's alert settings"))?;
        match row {
            Some(r) => {
                let v: String = r
                    .try_get("value")
                    .map_err(q("reading the fleet's alert settings"))?;
                serde_json::from_str(&v).map_err(corrupt("alert settings"))
            }
            None => Ok(FleetSettings::default()),
        }
    }

    /// When the leader's alert engine last stored a pass, if ever.
    pub async fn alerts_evaluated_ms(&self) -> Result<Option<i64>, DbError> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(EVALUATED_KEY)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the alert engine's last pass"))?;
        let v: Option<String> = row
            .map(|r| r.try_get("value"))
            .transpose()
            .map_err(q("reading the alert engine's last pass"))?;
        Ok(v.and_then(|v| v.parse().ok()))
    }

    /// The pending and firing alerts, with their acknowledgements.
    pub async fn open_alerts(&self) -> Result<Vec<AlertRow>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE phase <> 'resolved' ORDER BY started_ms, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the open alerts"))?;
        rows.iter().map(alert_from).collect()
    }

    /// The acknowledgements of the open alerts, by id.
    pub async fn open_alert_acks(&self) -> Result<Vec<(String, Ack)>, DbError> {
        let rows = sqlx::query(
            "SELECT id, acked_by, acked_ms, ack_reason FROM alerts \
             WHERE phase <> 'resolved' AND acked_by IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading acknowledgements"))?;
        let e = || q("reading acknowledgements");
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id").map_err(e())?,
                    Ack {
                        by: r.try_get("acked_by").map_err(e())?,
                        at_ms: r
                            .try_get::<Option<i64>, _>("acked_ms")
                            .map_err(e())?
                            .unwrap_or(0),
                        reason: r
                            .try_get::<Option<String>, _>("ack_reason")
                            .map_err(e())?
                            .unwrap_or_default(),
                    },
                ))
            })
            .collect()
    }

    /// Alerts, open ones first then the newest resolved, at most `limit`.
    pub async fn alerts(
        &self,
        limit: i64,
        include_resolved: bool,
    ) -> Result<Vec<AlertRow>, DbError> {
        let filter = if include_resolved {
            ""
        } else {
            "WHERE phase <> 'resolved'"
        };
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts {filter} \
             ORDER BY CASE phase WHEN 'firing' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, \
             COALESCE(resolved_ms, started_ms) DESC, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading alerts"))?;
        rows.iter().map(alert_from).collect()
    }

    /// One alert.
    pub async fn alert(&self, id: &str) -> Result<Option<AlertRow>, DbError> {
        sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading an alert"))?
            .as_ref()
            .map(alert_from)
            .transpose()
    }

    /// Acknowledges an open alert (the first acknowledgement stands), with the audit entry.
    pub async fn ack_alert(&self, id: &str, by: &str, reason: &str) -> Result<AckOutcome, DbError> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE alerts SET acked_by = $1, acked_ms = $2, ack_reason = $3 \
             WHERE id = $4 AND phase <> 'resolved' AND acked_by IS NULL",
        )
        .bind(by)
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("acknowledging an alert"))?;
        if r.rows_affected() == 1 {
            drop(_turn);
            self.audit(by, "alert.ack", id, reason, "").await?;
            return Ok(AckOutcome::Acked);
        }
        drop(_turn);
        Ok(match self.alert(id).await? {
            None => AckOutcome::Unknown,
            Some(a) if a.alert.phase == Phase::Resolved => AckOutcome::Resolved,
            Some(a) => match a.alert.ack {
                Some(ack) => AckOutcome::Already(ack),
                None => AckOutcome::Unknown,
            },
        })
    }

    /// Adds a silence, with its audit entry.
    pub async fn add_silence(&self, s: &Silence) -> Result<(), DbError> {
        {
            let _turn = self.write_turn().await;
            sqlx::query(
                "INSERT INTO alert_silences (id, alert, member, created_by, created_ms, until_ms, reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&s.id)
            .bind(s.alert.map(|a| a.as_str().to_owned()))
            .bind(&s.member)
            .bind(&s.created_by)
            .bind(s.created_ms)
            .bind(s.until_ms)
            .bind(&s.reason)
            .execute(&self.pool)
            .await
            .map_err(q("adding a silence"))?;
        }
        let what = format!(
            "{} {} until {}",
            s.alert.map_or("every alert", |a| a.as_str()),
            s.member
                .as_deref()
                .map(|m| format!("for {m}"))
                .unwrap_or_default(),
            crate::timefmt::utc(s.until_ms)
        );
        self.audit(&s.created_by, "alert.silence", &s.id, &s.reason, &what)
            .await
    }

    /// Ends a silence early; false if it is unknown or over already.
    pub async fn end_silence(&self, id: &str, by: &str, reason: &str) -> Result<bool, DbError> {
        let now = now_ms();
        let ended = {
            let _turn = self.write_turn().await;
            sqlx::query(
                "UPDATE alert_silences SET ended_by = $1, ended_ms = $2 \
                 WHERE id = $3 AND ended_ms IS NULL AND until_ms > $2",
            )
            .bind(by)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("ending a silence"))?
            .rows_affected()
                == 1
        };
        if ended {
            self.audit(by, "alert.unsilence", id, reason, "").await?;
        }
        Ok(ended)
    }

    /// The silences in force at `now`.
    pub async fn active_silences(&self, now: i64) -> Result<Vec<Silence>, DbError> {
        self.silences_where("WHERE ended_ms IS NULL AND until_ms > $1", now)
            .await
    }

    /// Every silence, newest first (at most 200).
    pub async fn silences(&self) -> Result<Vec<Silence>, DbError> {
        self.silences_where("WHERE $1 = $1", 0).await
    }

    async fn silences_where(&self, filter: &str, now: i64) -> Result<Vec<Silence>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT id, alert, member, created_by, created_ms, \
             CASE WHEN ended_ms IS NOT NULL AND ended_ms < until_ms THEN ended_ms ELSE until_ms END AS until_ms, \
             reason FROM alert_silences {filter} ORDER BY created_ms DESC LIMIT 200"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading silences"))?;
        let e = || q("reading silences");
        rows.iter()
            .map(|r| {
                let alert: Option<String> = r.try_get("alert").map_err(e())?;
                Ok(Silence {
                    id: r.try_get("id").map_err(e())?,
                    alert: alert.map(|a| a.parse()).transpose().map_err(|detail| {
                        DbError::Corrupt {
                            what: "silence",
                            detail,
                        }
                    })?,
                    member: r.try_get("member").map_err(e())?,
                    created_by: r.try_get("created_by").map_err(e())?,
                    created_ms: r.try_get("created_ms").map_err(e())?,
                    until_ms: r.try_get("until_ms").map_err(e())?,
                    reason: r.try_get("reason").map_err(e())?,
                })
            })
            .collect()
    }

    /// Messages due for an attempt at `now` (`i64::MAX`: every undelivered one), oldest
    /// first, at most `limit`.
    pub async fn due_messages(&self, now: i64, limit: i64) -> Result<Vec<OutboxRow>, DbError> {
        let rows = sqlx::query(
            "SELECT id, message_id, alert_id, notifier, kind, body, attempts, created_ms, next_ms FROM alert_outbox \
             WHERE delivered_ms IS NULL AND dropped_ms IS NULL AND next_ms <= $1 ORDER BY id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the alert outbox"))?;
        let e = || q("reading the alert outbox");
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id").map_err(e())?,
                    message_id: r.try_get("message_id").map_err(e())?,
                    alert_id: r.try_get("alert_id").map_err(e())?,
                    notifier: r.try_get("notifier").map_err(e())?,
                    kind: r.try_get("kind").map_err(e())?,
                    body: r.try_get("body").map_err(e())?,
                    attempts: r.try_get("attempts").map_err(e())?,
                    created_ms: r.try_get("created_ms").map_err(e())?,
                    next_ms: r.try_get("next_ms").map_err(e())?,
                })
            })
            .collect()
    }

    /// Messages not delivered nor given up.
    pub async fn undelivered_messages(&self) -> Result<i64, DbError> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n FROM alert_outbox WHERE delivered_ms IS NULL AND dropped_ms IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting the alert outbox"))?;
        r.try_get("n").map_err(q("counting the alert outbox"))
    }

    /// Records an attempt: delivered, or failed with `error` and the next attempt at
    /// `next_ms` (`None`: given up).
    pub async fn message_attempted(
        &self,
        id: i64,
        outcome: Result<(), (&str, Option<i64>)>,
    ) -> Result<(), DbError> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        let query = match outcome {
            Ok(()) => sqlx::query(
                "UPDATE alert_outbox SET attempts = attempts + 1, delivered_ms = $1, last_error = NULL WHERE id = $2",
            )
            .bind(now)
            .bind(id),
            Err((error, Some(next))) => sqlx::query(
                "UPDATE alert_outbox SET attempts = attempts + 1, next_ms = $1, last_error = $2 WHERE id = $3",
            )
            .bind(next)
            .bind(error.to_owned())
            .bind(id),
            Err((error, None)) => sqlx::query(
                "UPDATE alert_outbox SET attempts = attempts + 1, dropped_ms = $1, last_error = $2 WHERE id = $3",
            )
            .bind(now)
            .bind(error.to_owned())
            .bind(id),
        };
        query
            .execute(&self.pool)
            .await
            .map_err(q("recording a delivery attempt"))?;
        Ok(())
    }

    /// The messages of one alert, oldest first: (notifier, kind, delivered_ms, dropped_ms,
    /// attempts, last error).
    pub async fn alert_messages(&self, alert_id: &str) -> Result<Vec<MessageRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT message_id, notifier, kind, created_ms, delivered_ms, dropped_ms, attempts, last_error \
             FROM alert_outbox WHERE alert_id = $1 ORDER BY id",
        )
        .bind(alert_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading an alert's messages"))?;
        let e = || q("reading an alert's messages");
        rows.iter()
            .map(|r| {
                Ok(MessageRecord {
                    message_id: r.try_get("message_id").map_err(e())?,
                    notifier: r.try_get("notifier").map_err(e())?,
                    kind: r.try_get("kind").map_err(e())?,
                    created_ms: r.try_get("created_ms").map_err(e())?,
                    delivered_ms: r.try_get("delivered_ms").map_err(e())?,
                    dropped_ms: r.try_get("dropped_ms").map_err(e())?,
                    attempts: r.try_get("attempts").map_err(e())?,
                    last_error: r.try_get("last_error").map_err(e())?,
                })
            })
            .collect()
    }
}

/// What became of one message to one notifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MessageRecord {
    /// The message's id.
    pub message_id: String,
    /// The notifier.
    pub notifier: String,
    /// Its kind.
    pub kind: String,
    /// When it was made.
    pub created_ms: i64,
    /// When it was delivered.
    pub delivered_ms: Option<i64>,
    /// When it was given up.
    pub dropped_ms: Option<i64>,
    /// Attempts made.
    pub attempts: i64,
    /// The last attempt's error.
    pub last_error: Option<String>,
}
