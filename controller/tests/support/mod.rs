//! Helpers shared by the controller's integration tests: a controller served in-process on a
//! loopback port over a real SQLite file or a real PostgreSQL database, with users of every
//! role and a bootstrap token.
#![allow(dead_code)]

pub mod browser;
pub mod dashboard;
pub mod fleet_repo;
pub mod postgres;
pub mod process;

#[allow(unused_imports)] // each test binary uses its own subset
pub use fleet_testkit::git_daemon;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleet_controller::config::{ControllerConfig, GitSource};
use fleet_controller::db::{Db, Role};
use fleet_controller::server;
use fleet_controller::service::AppState;
use fleet_controller::tokens;
use tokio_util::sync::CancellationToken;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// A running controller.
pub struct TestController {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The shared state (for the store and for waking the loops).
    pub state: AppState,
    /// API tokens by role.
    pub admin: String,
    pub operator: String,
    pub viewer: String,
    /// A bootstrap token.
    pub bootstrap: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The configuration tests use: fast loops, short thresholds.
pub fn test_config(
    data_dir: &Path,
    database_url: &str,
    git: Option<GitSource>,
) -> ControllerConfig {
    ControllerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.to_owned(),
        database_url: Some(database_url.to_owned()),
        git,
        webhook_secret_file: None,
        offline_after: Duration::from_secs(30),
        checkin_interval: Duration::from_secs(1),
        pairing_ttl: Duration::from_secs(900),
        reconcile_interval: Duration::from_millis(200),
        ..ControllerConfig::default()
    }
}

/// The database URL for `store` (None: PostgreSQL wanted but not available; the test skips).
pub async fn database_url(store: Store, dir: &Path, test: &str) -> Option<String> {
    match store {
        Store::Sqlite => Some(format!(
            "sqlite://{}?mode=rwc",
            dir.join("fleet.db").display()
        )),
        Store::Postgres => postgres::fresh_database(test).await,
    }
}

impl TestController {
    /// Starts a controller with `cfg`, creating users `admin`, `operator`, `viewer`.
    pub async fn start(cfg: ControllerConfig) -> TestController {
        Self::start_with_secret(cfg, None).await
    }

    /// As [`TestController::start`], with a webhook secret.
    pub async fn start_with_secret(
        mut cfg: ControllerConfig,
        secret: Option<&str>,
    ) -> TestController {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        cfg.listen = listener.local_addr().expect("addr");
        Self::serve(listener, cfg, secret).await
    }

    async fn serve(
        listener: tokio::net::TcpListener,
        mut cfg: ControllerConfig,
        secret: Option<&str>,
    ) -> TestController {
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", cfg.listen);
        if let Some(s) = secret {
            let p = cfg.data_dir.join("webhook.secret");
            std::fs::create_dir_all(&cfg.data_dir).expect("data dir");
            std::fs::write(&p, s).expect("secret");
            cfg.webhook_secret_file = Some(p);
        }
        let state = server::prepare(cfg).await.expect("controller starts");
        let db = state.db.clone();
        let admin = user(&db, "admin", Role::Admin).await;
        let operator = user(&db, "operator", Role::Operator).await;
        let viewer = user(&db, "viewer", Role::Viewer).await;
        let (bootstrap, _) = db
            .create_bootstrap_token(
                "test",
                &fleet_controller::db::NewBootstrapToken {
                    note: "tests".into(),
                    ttl_ms: 86_400_000,
                    ..Default::default()
                },
                fleet_controller::db::now_ms(),
            )
            .await
            .expect("bootstrap token");
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let st = state.clone();
        let task = tokio::spawn(async move {
            server::serve_on(listener, st, s).await.expect("serve");
        });
        let t = TestController {
            base,
            state,
            admin,
            operator,
            viewer,
            bootstrap,
            shutdown,
            task,
        };
        t.wait_leader().await;
        t
    }

    /// Waits until this controller leads (it is alone).
    pub async fn wait_leader(&self) {
        for _ in 0..100 {
            if self.state.is_leader() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the controller never became leader");
    }

    /// Stops it and starts it again on the same configuration and store (a new port).
    pub async fn restart(self) -> TestController {
        let cfg = (*self.state.cfg).clone();
        self.stop().await;
        TestController::start(cfg).await
    }

    /// Stops it and waits for its tasks.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// The store.
    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// A transaction of writes on behalf of this controller's leadership (what its watcher
    /// and engine would write), fenced by its lease.
    pub async fn as_leader(&self) -> fleet_controller::db::Fenced {
        let fence = self
            .state
            .leadership
            .fence()
            .expect("this controller leads");
        self.db()
            .fenced(&fence)
            .await
            .expect("a fenced transaction")
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

async fn user(db: &Db, name: &str, role: Role) -> String {
    let hash = tokens::hash_password("a long test password").expect("hash");
    db.upsert_user(name, &hash, role).await.expect("user");
    db.create_api_token(name).await.expect("token")
}

/// A controller the tests talk to over HTTP: in this process or a child process.
pub trait Remote {
    /// `base` + `path`.
    fn url(&self, path: &str) -> String;
    /// A viewer's API token.
    fn viewer_token(&self) -> &str;
}

impl Remote for TestController {
    fn url(&self, path: &str) -> String {
        TestController::url(self, path)
    }
    fn viewer_token(&self) -> &str {
        &self.viewer
    }
}

impl Remote for process::ControllerProcess {
    fn url(&self, path: &str) -> String {
        process::ControllerProcess::url(self, path)
    }
    fn viewer_token(&self) -> &str {
        &self.viewer
    }
}

/// `GET path` with a viewer's token, as JSON.
pub async fn viewer_get(c: &impl Remote, path: &str) -> serde_json::Value {
    client()
        .get(c.url(path))
        .bearer_auth(c.viewer_token())
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

/// The `fleet-controller` binary Cargo built for this test run.
pub fn controller_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_fleet-controller"))
}

/// An HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A check-in of device `id` that has nothing yet: no release, idle, no events, no long poll.
pub fn checkin_request(id: &str) -> fleet_config::protocol::CheckinRequest {
    use fleet_config::protocol::{CheckinRequest, HealthState, Telemetry, UpdatePhase};
    CheckinRequest {
        device_id: id.into(),
        agent_version: "0.1.0".into(),
        current: None,
        previous: None,
        phase: UpdatePhase::Idle,
        health: HealthState::Unknown,
        last_result: None,
        bad_releases: vec![],
        telemetry: Telemetry::default(),
        events: vec![],
        long_poll_secs: 0,
        logs: None,
    }
}
