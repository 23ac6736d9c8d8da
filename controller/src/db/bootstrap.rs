//! Bootstrap tokens: bulk provisioning without an operator approving each device. A bootstrap
//! token sits on every device provisioned with it, so it is treated as semi-public: it
//! expires, may be limited to a number of uses and to the devices a label selector matches,
//! can be revoked, and only ever enrolls an id that has never been enrolled. It never replaces
//! the token of an enrolled device and never brings a revoked one back (that takes an operator
//! approving a pairing code with `replace`, see `enroll`).

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::devices::identity::{enroll_in, inventory_labels, Existing};
use super::{q, Db, DbError};
use crate::tokens::{self, TokenKind};

/// A bootstrap token as operators see it (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct BootstrapToken {
    /// Public id: the first 12 hex digits of the token's hash.
    pub id: String,
    /// What it is for, as given at creation.
    pub note: String,
    /// Who made it.
    pub created_by: String,
    /// When, ms since the epoch.
    pub created_ms: i64,
    /// After this it enrolls nothing.
    pub expires_ms: i64,
    /// At most this many enrollments (`None`: no limit but the expiry).
    pub max_uses: Option<i64>,
    /// Enrollments so far.
    pub uses: i64,
    /// Only ids whose labels in the newest release's devices.yaml match every one of these
    /// (empty: any id that was never enrolled).
    pub selector: BTreeMap<String, String>,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
}

/// Why a known bootstrap token enrolls nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// Revoked at this time.
    Revoked(i64),
    /// Expired at this time.
    Expired(i64),
    /// Used its `max_uses` enrollments.
    UsedUp(i64),
}

impl BootstrapToken {
    /// Why it cannot enroll at `now_ms`, if it cannot.
    pub fn unusable(&self, now_ms: i64) -> Option<Unusable> {
        if let Some(at) = self.revoked_ms {
            return Some(Unusable::Revoked(at));
        }
        if self.expires_ms <= now_ms {
            return Some(Unusable::Expired(self.expires_ms));
        }
        match self.max_uses {
            Some(max) if self.uses >= max => Some(Unusable::UsedUp(max)),
            _ => None,
        }
    }

    /// The selector as `key=value,…` (`any device` when empty).
    pub fn selector_text(&self) -> String {
        if self.selector.is_empty() {
            return "any device".into();
        }
        self.selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What a new bootstrap token may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewBootstrapToken {
    /// What it is for (shown in listings).
    pub note: String,
    /// How long it lives, ms.
    pub ttl_ms: i64,
    /// At most this many enrollments.
    pub max_uses: Option<i64>,
    /// Only devices whose inventory labels match.
    pub selector: BTreeMap<String, String>,
}

/// What an enrollment with a bootstrap token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapEnrollment {
    /// A new device: its token, shown this once.
    Enrolled {
        /// The device token.
        token: String,
        /// The bootstrap token used.
        via: BootstrapToken,
    },
    /// No such bootstrap token.
    UnknownToken,
    /// Known, but revoked, expired or used up.
    Unusable {
        /// The bootstrap token.
        via: BootstrapToken,
        /// Why.
        why: Unusable,
    },
    /// The id is outside the token's selector.
    NotSelected {
        /// The bootstrap token.
        via: BootstrapToken,
        /// The id's labels in the newest release's devices.yaml (`None`: not listed).
        labels: Option<BTreeMap<String, String>>,
    },
    /// The id is enrolled or revoked: a bootstrap token never replaces a device.
    Exists {
        /// The bootstrap token.
        via: BootstrapToken,
        /// What is there.
        existing: Existing,
    },
}

const COLUMNS: &str =
    "id, note, created_by, created_ms, expires_ms, max_uses, uses, selector, revoked_ms";

fn token_from(r: &sqlx::any::AnyRow) -> Result<BootstrapToken, DbError> {
    let e = q("reading a bootstrap token");
    let selector: String = r.try_get("selector").map_err(e)?;
    let e = || q("reading a bootstrap token");
    Ok(BootstrapToken {
        id: r.try_get("id").map_err(e())?,
        note: r.try_get("note").map_err(e())?,
        created_by: r.try_get("created_by").map_err(e())?,
        created_ms: r.try_get("created_ms").map_err(e())?,
        // Every row has one (the migration gave old tokens one); a missing one enrolls nothing.
        expires_ms: r
            .try_get::<Option<i64>, _>("expires_ms")
            .map_err(e())?
            .unwrap_or(0),
        max_uses: r.try_get("max_uses").map_err(e())?,
        uses: r.try_get("uses").map_err(e())?,
        selector: serde_json::from_str(&selector).map_err(|err| DbError::Corrupt {
            what: "bootstrap token selector",
            detail: err.to_string(),
        })?,
        revoked_ms: r.try_get("revoked_ms").map_err(e())?,
    })
}

/// The public id of a token: the first 12 hex digits of its stored hash.
fn public_id(hash: &str) -> String {
    hash.chars().take(12).collect()
}

impl Db {
    /// A new bootstrap token; returns the secret (shown once) and what is stored.
    pub async fn create_bootstrap_token(
        &self,
        created_by: &str,
        new: &NewBootstrapToken,
        now_ms: i64,
    ) -> Result<(String, BootstrapToken), DbError> {
        let token = tokens::generate(TokenKind::Bootstrap);
        let hash = tokens::hash(&token);
        let stored = BootstrapToken {
            id: public_id(&hash),
            note: new.note.clone(),
            created_by: created_by.to_owned(),
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(new.ttl_ms),
            max_uses: new.max_uses,
            uses: 0,
            selector: new.selector.clone(),
            revoked_ms: None,
        };
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO bootstrap_tokens (token_hash, id, note, created_by, created_ms, expires_ms, \
             max_uses, selector) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&hash)
        .bind(&stored.id)
        .bind(&stored.note)
        .bind(created_by)
        .bind(now_ms)
        .bind(stored.expires_ms)
        .bind(stored.max_uses)
        .bind(serde_json::to_string(&stored.selector).unwrap_or_else(|_| "{}".into()))
        .execute(&self.pool)
        .await
        .map_err(q("creating a bootstrap token"))?;
        Ok((token, stored))
    }

    /// Every bootstrap token, newest first.
    pub async fn bootstrap_tokens(&self) -> Result<Vec<BootstrapToken>, DbError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bootstrap_tokens ORDER BY created_ms DESC, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing bootstrap tokens"))?
        .iter()
        .map(token_from)
        .collect()
    }

    /// Revokes the bootstrap token `id`; `None` if there is none, else whether it was live.
    pub async fn revoke_bootstrap_token(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<bool>, DbError> {
        let _turn = self.write_turn().await;
        let r = sqlx::query(
            "UPDATE bootstrap_tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("revoking a bootstrap token"))?;
        if r.rows_affected() == 1 {
            return Ok(Some(true));
        }
        let known = sqlx::query("SELECT 1 AS one FROM bootstrap_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a bootstrap token"))?;
        Ok(known.map(|_| false))
    }

    /// Enrolls a new device `id` with the bootstrap token `secret`, in one transaction: the
    /// token must be live and select the id, the id must never have been enrolled, and the
    /// use is counted only if the device is created.
    pub async fn enroll_with_bootstrap(
        &self,
        secret: &str,
        id: &str,
        hostname: &str,
        arch: &str,
        agent_version: &str,
        now_ms: i64,
    ) -> Result<BootstrapEnrollment, DbError> {
        let hash = tokens::hash(secret);
        let _turn = self.write_turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting an enrollment"))?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bootstrap_tokens WHERE token_hash = $1"
        ))
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("checking a bootstrap token"))?;
        let Some(row) = row else {
            return Ok(BootstrapEnrollment::UnknownToken);
        };
        let via = token_from(&row)?;
        if let Some(why) = via.unusable(now_ms) {
            return Ok(BootstrapEnrollment::Unusable { via, why });
        }
        if let Some(existing) = Existing::of(&mut tx, id).await? {
            return Ok(BootstrapEnrollment::Exists { via, existing });
        }
        let labels = inventory_labels(&mut tx, id).await?;
        let selected = via.selector.is_empty()
            || labels
                .as_ref()
                .is_some_and(|l| via.selector.iter().all(|(k, v)| l.get(k) == Some(v)));
        if !selected {
            return Ok(BootstrapEnrollment::NotSelected { via, labels });
        }
        // Counted only while it is still live (a concurrent enrollment may have used it up).
        let counted = sqlx::query(
            "UPDATE bootstrap_tokens SET uses = uses + 1 WHERE token_hash = $1 \
             AND revoked_ms IS NULL AND expires_ms > $2 AND (max_uses IS NULL OR uses < max_uses)",
        )
        .bind(&hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("counting a bootstrap token's use"))?;
        if counted.rows_affected() != 1 {
            let why = Unusable::UsedUp(via.max_uses.unwrap_or(via.uses));
            return Ok(BootstrapEnrollment::Unusable { via, why });
        }
        let Some(token) = enroll_in(&mut tx, id, hostname, arch, agent_version, false).await?
        else {
            // Enrolled by someone else a moment ago.
            return Ok(BootstrapEnrollment::Exists {
                via,
                existing: Existing::Enrolled { last_seen_ms: None },
            });
        };
        tx.commit().await.map_err(q("committing an enrollment"))?;
        let via = BootstrapToken {
            uses: via.uses + 1,
            ..via
        };
        Ok(BootstrapEnrollment::Enrolled { token, via })
    }
}
