//! The test PostgreSQL server: `FLEET_TEST_POSTGRES_URL` (a superuser URL; `.ci/run` starts a
//! private cluster and sets it). Each test gets a database of its own.

use sqlx::{Connection, Executor};

/// A new empty database; `None` (with a loud message) when no server is configured, or a
/// panic when `FLEET_REQUIRE_POSTGRES=1`.
pub async fn fresh_database(test: &str) -> Option<String> {
    let Some(url) = std::env::var("FLEET_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        if std::env::var("FLEET_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("{test}: FLEET_REQUIRE_POSTGRES=1 but FLEET_TEST_POSTGRES_URL is not set");
        }
        eprintln!("\n*** SKIP {test} on PostgreSQL: set FLEET_TEST_POSTGRES_URL (scripts/test-postgres start) ***\n");
        return None;
    };
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{test}: cannot reach the test PostgreSQL at {url}: {e}"));
    let name = format!(
        "fleet_{}_{}",
        test.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(30)
            .collect::<String>()
            .to_lowercase(),
        std::process::id() as u64 * 1000 + (fleet_controller::db::now_ms() as u64 % 1000)
    );
    conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await
        .expect("drop database");
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let base = match url.rfind('/') {
        Some(i) if i > "postgres://".len() => &url[..i],
        _ => url.as_str(),
    };
    Some(format!("{base}/{name}"))
}
