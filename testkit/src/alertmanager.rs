//! A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback, and a webhook receiver
//! that records what Alertmanager delivers to it: the real path from a Prometheus rule to a
//! notification, with nothing in between made up.
//!
//! The receiver runs on a thread of its own, so sync and async tests can both use it; it
//! answers 200 and keeps every request.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::git_daemon::free_port;
use crate::prometheus::http_get;
use crate::receivers::HttpReceiver;

/// Set to `1` (CI does) to make a missing Alertmanager a failure instead of a skip.
pub const REQUIRE_ENV: &str = "FLEET_REQUIRE_ALERTMANAGER";

/// How long a started Alertmanager may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Alertmanager program: Debian names it `prometheus-alertmanager`, upstream `alertmanager`.
pub fn alertmanager_binary() -> Option<&'static str> {
    ["prometheus-alertmanager", "alertmanager"]
        .into_iter()
        .find(|b| runs(b))
}

fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when Alertmanager and `amtool` are installed; else a loud SKIP (or a panic when
/// [`REQUIRE_ENV`] is `1`).
pub fn alertmanager_available(test: &str) -> bool {
    if alertmanager_binary().is_some() && runs("amtool") {
        return true;
    }
    assert!(
        std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
        "{test}: Alertmanager and amtool are required ({REQUIRE_ENV}=1) but missing"
    );
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIP {test}: Alertmanager not installed (apt-get install prometheus-alertmanager) ***\n"
    );
    false
}

/// A running Alertmanager; killed on drop.
pub struct Alertmanager {
    child: Child,
    /// `127.0.0.1:<port>` of its HTTP API.
    pub addr: String,
    /// Its combined output.
    pub log: PathBuf,
}

impl Alertmanager {
    /// Starts Alertmanager in `dir` with the configuration `config` (YAML text), listening on a
    /// free loopback port, without clustering; waits until it is ready.
    pub fn start(dir: &Path, config: &str) -> Alertmanager {
        fs::create_dir_all(dir).expect("mkdir");
        let config_file = dir.join("alertmanager.yml");
        fs::write(&config_file, config).expect("write alertmanager.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("alertmanager.log");
        let out = fs::File::create(&log).expect("log");
        let binary = alertmanager_binary().expect("alertmanager installed");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // No cluster listener: a single Alertmanager, and no port outside loopback.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start alertmanager");
        let mut am = Alertmanager { child, addr, log };
        am.wait_ready();
        am
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some((200, _)) = http_get(&self.addr, "/-/ready") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "alertmanager exited ({status}):\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager not ready after {READY_TIMEOUT:?}:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request's path (`/fleet/warning`): which receiver of the configuration sent it.
    pub path: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its `User-Agent` (`Alertmanager/0.25.0`).
    pub user_agent: String,
    /// The JSON body: Alertmanager's webhook payload (`version`, `status`, `receiver`,
    /// `groupLabels`, `commonLabels`, `commonAnnotations`, `alerts`, ...).
    pub body: Value,
}

impl Received {
    /// The payload's alerts.
    pub fn alerts(&self) -> Vec<Value> {
        self.body["alerts"].as_array().cloned().unwrap_or_default()
    }
}

/// An HTTP server on loopback that records every JSON POST (Alertmanager's webhook): the
/// recording receiver of [`crate::receivers`], read as Alertmanager's payloads; stopped on drop.
pub struct WebhookReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    http: HttpReceiver,
}

impl WebhookReceiver {
    /// Starts the receiver on a free loopback port.
    pub fn start() -> WebhookReceiver {
        let http = HttpReceiver::start();
        WebhookReceiver {
            addr: http.addr(),
            http,
        }
    }

    /// `http://127.0.0.1:PORT` (append a path per receiver).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every JSON POST so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.http
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .filter_map(|r| {
                let body = serde_json::from_slice::<Value>(&r.body).ok()?;
                Some(Received {
                    path: r.path.split('?').next().unwrap_or_default().to_owned(),
                    content_type: r.header("content-type").unwrap_or_default().to_owned(),
                    user_agent: r.header("user-agent").unwrap_or_default().to_owned(),
                    body,
                })
            })
            .collect()
    }

    /// Waits until a request satisfies `pred`; panics after `timeout` with everything received
    /// and `context()` (e.g. Alertmanager's log).
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Received) -> bool,
        context: impl Fn() -> String,
    ) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.received().into_iter().find(|r| pred(r)) {
                return r;
            }
            if Instant::now() >= deadline {
                let got: Vec<String> = self
                    .received()
                    .iter()
                    .map(|r| format!("{} {:#}", r.path, r.body))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received:\n{}\n{}",
                    got.join("\n"),
                    context()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}
