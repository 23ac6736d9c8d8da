//! Pairing codes: an agent asks, an operator approves the code, the agent claims its token
//! once. Codes live 15 minutes and serve once.

use serde::Serialize;
use sqlx::Row;

use super::devices::identity::{enroll_in, Existing};
use super::{now_ms, q, Db, DbError};
use crate::tokens::{self, TokenKind};

/// A pairing waiting for (or past) approval, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Pairing {
    /// The code.
    pub code: String,
    /// The device id asked for.
    pub device_id: String,
    /// Host name.
    pub hostname: String,
    /// Architecture.
    pub arch: String,
    /// Expiry.
    pub expires_ms: i64,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// `enrolled` or `revoked` when a device of that id exists: approving this code would
    /// replace it, which the approver must confirm (`replace`).
    pub replaces: Option<&'static str>,
}

/// What approving a code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveOutcome {
    /// Approved: the device may claim its token.
    Approved {
        /// The device.
        device_id: String,
        /// The host name the agent reported.
        hostname: String,
        /// The device it replaces, when the approver confirmed that.
        replaced: Option<Existing>,
    },
    /// Not approved: a device of that id exists and the approver did not say `replace`.
    WouldReplace {
        /// The device.
        device_id: String,
        /// The host name the agent reported.
        hostname: String,
        /// What is there.
        existing: Existing,
    },
    /// No such code.
    Unknown,
    /// The code is past its 15 minutes.
    Expired,
    /// The code was approved already.
    Used,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Not approved yet.
    Pending,
    /// Approved now: the token, handed out this once.
    Enrolled {
        /// The device.
        device_id: String,
        /// Its token.
        token: String,
    },
    /// No such claim secret.
    Unknown,
    /// Expired before approval.
    Expired,
    /// Already claimed.
    Used,
    /// Approved as a new device, but one of that id was enrolled before the claim: refused
    /// (a pairing never replaces a device unless its approver said so).
    Taken {
        /// The device.
        device_id: String,
    },
}

impl Db {
    /// Creates a pairing; returns the code and the claim secret.
    pub async fn create_pairing(
        &self,
        device_id: &str,
        hostname: &str,
        arch: &str,
        agent_version: &str,
        ttl_ms: i64,
    ) -> Result<(String, String), DbError> {
        let claim = tokens::generate(TokenKind::Claim);
        let now = now_ms();
        // A code collision is possible in principle; try a few fresh codes.
        for _ in 0..5 {
            let code = tokens::pairing_code();
            let r = sqlx::query(
                "INSERT INTO pairings (code, claim_hash, device_id, hostname, arch, agent_version, \
                 created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (code) DO NOTHING",
            )
            .bind(&code)
            .bind(tokens::hash(&claim))
            .bind(device_id)
            .bind(hostname)
            .bind(arch)
            .bind(agent_version)
            .bind(now)
            .bind(now + ttl_ms)
            .execute(&self.pool)
            .await
            .map_err(q("creating a pairing code"))?;
            if r.rows_affected() == 1 {
                return Ok((code, claim));
            }
        }
        Err(DbError::Corrupt {
            what: "pairing codes",
            detail: "five code collisions in a row".into(),
        })
    }

    /// Approves a code (single use, before expiry). A code asked for under an id that is
    /// enrolled or revoked is approved only with `replace`, which the claim then honours.
    pub async fn approve_pairing(
        &self,
        code: &str,
        actor: &str,
        now: i64,
        replace: bool,
    ) -> Result<ApproveOutcome, DbError> {
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("approving a pairing code"))?;
        let row = sqlx::query(
            "SELECT device_id, hostname, expires_ms, approved_ms FROM pairings WHERE code = $1",
        )
        .bind(code)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("reading a pairing code"))?;
        let Some(row) = row else {
            return Ok(ApproveOutcome::Unknown);
        };
        let device_id: String = row.try_get("device_id").map_err(q("reading a pairing"))?;
        let hostname: String = row.try_get("hostname").map_err(q("reading a pairing"))?;
        let expires: i64 = row.try_get("expires_ms").map_err(q("reading a pairing"))?;
        let approved: Option<i64> = row.try_get("approved_ms").map_err(q("reading a pairing"))?;
        if approved.is_some() {
            return Ok(ApproveOutcome::Used);
        }
        if expires <= now {
            return Ok(ApproveOutcome::Expired);
        }
        let existing = Existing::of(&mut tx, &device_id).await?;
        if let (Some(existing), false) = (existing, replace) {
            return Ok(ApproveOutcome::WouldReplace {
                device_id,
                hostname,
                existing,
            });
        }
        let r = sqlx::query(
            "UPDATE pairings SET approved_by = $1, approved_ms = $2, replace_ok = $3 \
             WHERE code = $4 AND approved_ms IS NULL AND expires_ms > $5",
        )
        .bind(actor)
        .bind(now)
        .bind(i64::from(existing.is_some()))
        .bind(code)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(q("approving a pairing code"))?;
        if r.rows_affected() != 1 {
            return Ok(ApproveOutcome::Used);
        }
        tx.commit().await.map_err(q("approving a pairing code"))?;
        Ok(ApproveOutcome::Approved {
            device_id,
            hostname,
            replaced: existing,
        })
    }

    /// An agent claims its token with its claim secret.
    pub async fn claim_pairing(
        &self,
        claim_secret: &str,
        now: i64,
    ) -> Result<ClaimOutcome, DbError> {
        let hash = tokens::hash(claim_secret);
        let row = sqlx::query(
            "SELECT device_id, hostname, arch, agent_version, expires_ms, approved_ms, consumed_ms, \
             replace_ok FROM pairings WHERE claim_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading a pairing"))?;
        let Some(row) = row else {
            return Ok(ClaimOutcome::Unknown);
        };
        let get_s =
            |k: &str| -> Result<String, DbError> { row.try_get(k).map_err(q("reading a pairing")) };
        let approved: Option<i64> = row.try_get("approved_ms").map_err(q("reading a pairing"))?;
        let consumed: Option<i64> = row.try_get("consumed_ms").map_err(q("reading a pairing"))?;
        let expires: i64 = row.try_get("expires_ms").map_err(q("reading a pairing"))?;
        if consumed.is_some() {
            return Ok(ClaimOutcome::Used);
        }
        if approved.is_none() {
            return Ok(if expires <= now {
                ClaimOutcome::Expired
            } else {
                ClaimOutcome::Pending
            });
        }
        let replace: i64 = row.try_get("replace_ok").map_err(q("reading a pairing"))?;
        let device_id = get_s("device_id")?;
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await.map_err(q("claiming a pairing"))?;
        let taken = sqlx::query(
            "UPDATE pairings SET consumed_ms = $1 WHERE claim_hash = $2 AND consumed_ms IS NULL",
        )
        .bind(now)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .map_err(q("claiming a pairing"))?;
        if taken.rows_affected() != 1 {
            return Ok(ClaimOutcome::Used);
        }
        let token = enroll_in(
            &mut tx,
            &device_id,
            &get_s("hostname")?,
            &get_s("arch")?,
            &get_s("agent_version")?,
            replace != 0,
        )
        .await?;
        // Consumed either way: a refused claim is not tried again with the same secret.
        tx.commit().await.map_err(q("claiming a pairing"))?;
        Ok(match token {
            Some(token) => ClaimOutcome::Enrolled { device_id, token },
            None => ClaimOutcome::Taken { device_id },
        })
    }

    /// Pairings not yet approved and not expired, for operators.
    pub async fn pending_pairings(&self, now: i64) -> Result<Vec<Pairing>, DbError> {
        let rows = sqlx::query(
            "SELECT p.code, p.device_id, p.hostname, p.arch, p.expires_ms, p.approved_by, \
             d.id AS existing, d.revoked_ms FROM pairings p LEFT JOIN devices d ON d.id = p.device_id \
             WHERE p.approved_ms IS NULL AND p.expires_ms > $1 ORDER BY p.created_ms",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing pairings"))?;
        rows.iter()
            .map(|r| {
                let g = |k: &str| -> Result<String, DbError> {
                    r.try_get(k).map_err(q("reading a pairing"))
                };
                Ok(Pairing {
                    code: g("code")?,
                    device_id: g("device_id")?,
                    hostname: g("hostname")?,
                    arch: g("arch")?,
                    expires_ms: r.try_get("expires_ms").map_err(q("reading a pairing"))?,
                    approved_by: r.try_get("approved_by").map_err(q("reading a pairing"))?,
                    replaces: match (
                        r.try_get::<Option<String>, _>("existing")
                            .map_err(q("reading a pairing"))?,
                        r.try_get::<Option<i64>, _>("revoked_ms")
                            .map_err(q("reading a pairing"))?,
                    ) {
                        (None, _) => None,
                        (Some(_), None) => Some("enrolled"),
                        (Some(_), Some(_)) => Some("revoked"),
                    },
                })
            })
            .collect()
    }
}
