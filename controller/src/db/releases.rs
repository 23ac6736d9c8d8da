//! Releases the watcher (on the leader, fenced) has seen: valid ones (with their digest) and rejected ones (with the
//! validation errors), so a bad commit is recorded once and never rolled out.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, q, Db, DbError, Fenced};

/// A commit the controller looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ReleaseRow {
    /// Commit sha.
    pub sha: String,
    /// Tree digest, for valid releases.
    pub digest: Option<String>,
    /// When it was seen.
    pub seen_ms: i64,
    /// `valid` or `rejected`.
    pub status: String,
    /// Validation errors of a rejected commit, one per line.
    pub errors: String,
    /// Where it came from (`poll`, `webhook`).
    pub source: String,
}

fn release_from(r: &sqlx::any::AnyRow) -> Result<ReleaseRow, DbError> {
    let e = || q("reading a release");
    Ok(ReleaseRow {
        sha: r.try_get("sha").map_err(e())?,
        digest: r.try_get("digest").map_err(e())?,
        seen_ms: r.try_get("seen_ms").map_err(e())?,
        status: r.try_get("status").map_err(e())?,
        errors: r.try_get("errors").map_err(e())?,
        source: r.try_get("source").map_err(e())?,
    })
}

impl Db {
    /// One release.
    pub async fn release(&self, sha: &str) -> Result<Option<ReleaseRow>, DbError> {
        sqlx::query(
            "SELECT sha, digest, seen_ms, status, errors, source FROM releases WHERE sha = $1",
        )
        .bind(sha)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading a release"))?
        .as_ref()
        .map(release_from)
        .transpose()
    }

    /// The newest releases, newest first.
    pub async fn releases(&self, limit: i64) -> Result<Vec<ReleaseRow>, DbError> {
        sqlx::query(
            "SELECT sha, digest, seen_ms, status, errors, source FROM releases ORDER BY seen_ms DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing releases"))?
        .iter()
        .map(release_from)
        .collect()
    }

    /// What tells whether the releases changed: how many there are and the newest's time
    /// (releases are only ever added).
    pub async fn releases_fingerprint(&self) -> Result<(i64, i64), DbError> {
        let r = sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(seen_ms), 0) AS m FROM releases")
            .fetch_one(&self.pool)
            .await
            .map_err(q("counting releases"))?;
        let e = || q("counting releases");
        Ok((r.try_get("n").map_err(e())?, r.try_get("m").map_err(e())?))
    }

    /// Valid releases whose sha starts with `prefix` (lower-case hex), at most `limit`.
    pub async fn valid_releases_starting(
        &self,
        prefix: &str,
        limit: i64,
    ) -> Result<Vec<ReleaseRow>, DbError> {
        sqlx::query(
            "SELECT sha, digest, seen_ms, status, errors, source FROM releases \
             WHERE status = 'valid' AND substr(sha, 1, length($1)) = $1 ORDER BY sha LIMIT $2",
        )
        .bind(prefix)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("finding a release"))?
        .iter()
        .map(release_from)
        .collect()
    }
}

impl Fenced {
    /// Records a commit; false if it was recorded before.
    pub async fn record_release(
        &mut self,
        sha: &str,
        digest: Option<&str>,
        errors: Option<&str>,
        source: &str,
    ) -> Result<bool, DbError> {
        let r = sqlx::query(
            "INSERT INTO releases (sha, digest, seen_ms, status, errors, source) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha) DO NOTHING",
        )
        .bind(sha)
        .bind(digest)
        .bind(now_ms())
        .bind(if errors.is_some() {
            "rejected"
        } else {
            "valid"
        })
        .bind(errors.unwrap_or(""))
        .bind(source)
        .execute(&mut *self.tx)
        .await
        .map_err(q("recording a release"))?;
        Ok(r.rows_affected() == 1)
    }
}
