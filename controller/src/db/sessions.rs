//! Browser sessions of the dashboard: a random token in a cookie, stored hashed, with an
//! expiry. Logging out or an expired session means logging in again.

use super::users::{user_from, User};
use super::{now_ms, q, Db, DbError};
use crate::tokens;

/// How long a session lasts without logging in again.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;

impl Db {
    /// A new session for `user`; returns the token for the cookie.
    pub async fn create_session(&self, user: &str) -> Result<String, DbError> {
        let token = tokens::generate(tokens::TokenKind::Session);
        let now = now_ms();
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM sessions WHERE expires_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(q("pruning sessions"))?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_name, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(tokens::hash(&token))
        .bind(user)
        .bind(now)
        .bind(now + SESSION_TTL_MS)
        .execute(&self.pool)
        .await
        .map_err(q("creating a session"))?;
        Ok(token)
    }

    /// The user of a live session.
    pub async fn session_user(&self, token: &str) -> Result<Option<User>, DbError> {
        let row = sqlx::query(
            "SELECT u.name, u.role FROM sessions s JOIN users u ON u.name = s.user_name \
             WHERE s.token_hash = $1 AND s.expires_ms > $2",
        )
        .bind(tokens::hash(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(q("checking a session"))?;
        row.as_ref().map(user_from).transpose()
    }

    /// Ends a session (logout).
    pub async fn delete_session(&self, token: &str) -> Result<(), DbError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(tokens::hash(token))
            .execute(&self.pool)
            .await
            .map_err(q("ending a session"))?;
        Ok(())
    }
}
