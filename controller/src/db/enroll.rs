//! Pairing codes: an agent asks, an operator approves the code, the agent claims its token
//! once. Codes live 15 minutes and serve once.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, q, Db, DbError};
use crate::tokens::{self, TokenKind};

/// A pairing waiting for (or past) approval, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// What approving a code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveOutcome {
    /// Approved: the device may claim its token.
    Approved {
        /// The device.
        device_id: String,
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

    /// Approves a code (single use, before expiry).
    pub async fn approve_pairing(
        &self,
        code: &str,
        actor: &str,
        now: i64,
    ) -> Result<ApproveOutcome, DbError> {
        let r = sqlx::query(
            "UPDATE pairings SET approved_by = $1, approved_ms = $2 \
             WHERE code = $3 AND approved_ms IS NULL AND expires_ms > $4",
        )
        .bind(actor)
        .bind(now)
        .bind(code)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("approving a pairing code"))?;
        let row =
            sqlx::query("SELECT device_id, expires_ms, approved_ms FROM pairings WHERE code = $1")
                .bind(code)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("reading a pairing code"))?;
        let Some(row) = row else {
            return Ok(ApproveOutcome::Unknown);
        };
        let device_id: String = row.try_get("device_id").map_err(q("reading a pairing"))?;
        let expires: i64 = row.try_get("expires_ms").map_err(q("reading a pairing"))?;
        Ok(if r.rows_affected() == 1 {
            ApproveOutcome::Approved { device_id }
        } else if expires <= now {
            ApproveOutcome::Expired
        } else {
            ApproveOutcome::Used
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
            "SELECT device_id, hostname, arch, agent_version, expires_ms, approved_ms, consumed_ms \
             FROM pairings WHERE claim_hash = $1",
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
        let taken = sqlx::query(
            "UPDATE pairings SET consumed_ms = $1 WHERE claim_hash = $2 AND consumed_ms IS NULL",
        )
        .bind(now)
        .bind(&hash)
        .execute(&self.pool)
        .await
        .map_err(q("claiming a pairing"))?;
        if taken.rows_affected() != 1 {
            return Ok(ClaimOutcome::Used);
        }
        let device_id = get_s("device_id")?;
        let token = self
            .enroll_device(
                &device_id,
                &get_s("hostname")?,
                &get_s("arch")?,
                &get_s("agent_version")?,
            )
            .await?;
        Ok(ClaimOutcome::Enrolled { device_id, token })
    }

    /// Pairings not yet approved and not expired, for operators.
    pub async fn pending_pairings(&self, now: i64) -> Result<Vec<Pairing>, DbError> {
        let rows = sqlx::query(
            "SELECT code, device_id, hostname, arch, expires_ms, approved_by FROM pairings \
             WHERE approved_ms IS NULL AND expires_ms > $1 ORDER BY created_ms",
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
                })
            })
            .collect()
    }
}
