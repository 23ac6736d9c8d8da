//! Users, their roles and API tokens.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{now_ms, q, Db, DbError};
use crate::tokens::{self, TokenKind};

/// What a user may do. Ordered: each role can do what the ones below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything, change nothing.
    Viewer,
    /// Also run rollouts, approve devices, stop and resume.
    Operator,
    /// Also manage users and tokens.
    Admin,
}

impl Role {
    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: expected admin, operator or viewer"
            )),
        }
    }
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
}

pub(super) fn user_from(row: &sqlx::any::AnyRow) -> Result<User, DbError> {
    let role: String = row.try_get("role").map_err(q("reading a user"))?;
    Ok(User {
        name: row.try_get("name").map_err(q("reading a user"))?,
        role: role.parse().map_err(|detail| DbError::Corrupt {
            what: "user role",
            detail,
        })?,
    })
}

impl Db {
    /// Adds a user (or replaces the password and role of an existing one).
    pub async fn upsert_user(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role",
        )
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(q("adding a user"))?;
        Ok(())
    }

    /// The user and their password hash.
    pub async fn user_with_password(&self, name: &str) -> Result<Option<(User, String)>, DbError> {
        let row = sqlx::query("SELECT name, role, password_hash FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("looking up a user"))?;
        match row {
            Some(r) => {
                let hash: String = r.try_get("password_hash").map_err(q("reading a user"))?;
                Ok(Some((user_from(&r)?, hash)))
            }
            None => Ok(None),
        }
    }

    /// Every user.
    pub async fn users(&self) -> Result<Vec<User>, DbError> {
        sqlx::query("SELECT name, role FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing users"))?
            .iter()
            .map(user_from)
            .collect()
    }

    /// A new API token for `user`; returns the token (shown once).
    pub async fn create_api_token(&self, user: &str) -> Result<String, DbError> {
        let token = tokens::generate(TokenKind::Api);
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_name, created_ms) VALUES ($1, $2, $3)",
        )
        .bind(tokens::hash(&token))
        .bind(user)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(q("creating an API token"))?;
        Ok(token)
    }

    /// The user an API token belongs to, unless unknown or revoked.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<User>, DbError> {
        let row = sqlx::query(
            "SELECT u.name, u.role FROM api_tokens t JOIN users u ON u.name = t.user_name \
             WHERE t.token_hash = $1 AND t.revoked_ms IS NULL",
        )
        .bind(tokens::hash(token))
        .fetch_optional(&self.pool)
        .await
        .map_err(q("checking an API token"))?;
        row.as_ref().map(user_from).transpose()
    }

    /// Revokes every API token of `user`; returns how many.
    pub async fn revoke_api_tokens(&self, user: &str) -> Result<u64, DbError> {
        let r = sqlx::query(
            "UPDATE api_tokens SET revoked_ms = $1 WHERE user_name = $2 AND revoked_ms IS NULL",
        )
        .bind(now_ms())
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(q("revoking API tokens"))?;
        Ok(r.rows_affected())
    }
}
