//! A real Prometheus server (Debian's `prometheus` package) scraping a target on loopback, for
//! tests that check what a component exports is what Prometheus reads.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::git_daemon::free_port;

/// Set to `1` (CI does) to make a missing Prometheus a failure instead of a skip.
pub const REQUIRE_ENV: &str = "FLEET_REQUIRE_PROMETHEUS";

/// True when `prometheus` and `promtool` are installed; else a loud SKIP (or a panic when
/// [`REQUIRE_ENV`] is `1`).
pub fn prometheus_available(test: &str) -> bool {
    let ok = ["prometheus", "promtool"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        assert!(
            std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
            "{test}: prometheus/promtool are required ({REQUIRE_ENV}=1) but missing"
        );
        eprintln!("\n*** SKIP {test}: prometheus/promtool not installed (apt-get install prometheus) ***\n");
    }
    ok
}

/// A plain HTTP GET on loopback; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// `promtool check metrics` on an exposition; `Err` with its complaints.
pub fn promtool_check(body: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A Prometheus server scraping one target every second; killed on drop.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:<port>` of its HTTP API.
    pub addr: String,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping `target` (`host:port`) at `/metrics`.
    pub fn start(dir: &Path, target: &str) -> Prometheus {
        fs::create_dir_all(dir).expect("mkdir");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fleet\n    static_configs:\n      - targets: ['{target}']\n"),
        )
        .expect("write prometheus.yml");
        Prometheus::start_config(dir, &config, free_port(), &[])
    }

    /// Starts Prometheus in `dir` (its data and log) with the configuration file `config`
    /// (whose rule files and file_sd paths are relative to its own directory), listening on
    /// `127.0.0.1:<port>`, with more command-line flags `extra`.
    pub fn start_config(dir: &Path, config: &Path, port: u16, extra: &[&str]) -> Prometheus {
        fs::create_dir_all(dir).expect("mkdir");
        let addr = format!("127.0.0.1:{port}");
        let log = fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(extra)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            log: dir.join("prometheus.log"),
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until an instant query returns at least one sample; returns the JSON result.
    pub fn wait_for_query(&self, query: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let path = format!(
            "/api/v1/query?query={}",
            query
                .replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        );
        loop {
            if let Some((200, body)) = http_get(&self.addr, &path) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                    if v["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty())
                    {
                        return v["data"]["result"].clone();
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never returned `{query}`"
            );
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
