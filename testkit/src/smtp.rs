//! A real SMTP server on loopback: aiosmtpd from PyPI, in the venv `scripts/aiosmtpd-venv`
//! makes (`~/.cache/fleet/aiosmtpd-venv`, or `$FLEET_AIOSMTPD_VENV`), started as a process on a
//! free port with STARTTLS, implicit TLS or none, and optionally a login. Each message it
//! accepts is read back as parsed by Python's RFC 5322 parser, with the envelope, the TLS
//! version of the session and the login (`python/fleet_smtpd.py`).
//!
//! Without the venv, tests skip loudly, or fail under `FLEET_REQUIRE_SMTP=1`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::receivers::closed_port;

/// Set to `1` (CI does) to make a missing aiosmtpd a failure instead of a skip.
pub const REQUIRE_ENV: &str = "FLEET_REQUIRE_SMTP";

/// The launcher around aiosmtpd's server.
const LAUNCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/fleet_smtpd.py");

/// The venv's directory.
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("FLEET_AIOSMTPD_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/fleet/aiosmtpd-venv")
}

fn python() -> PathBuf {
    venv().join("bin/python")
}

/// True when aiosmtpd can be started; else a loud SKIP (or a panic under [`REQUIRE_ENV`]).
pub fn smtp_available(test: &str) -> bool {
    let ok = Command::new(python())
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
            "{test}: aiosmtpd is required ({REQUIRE_ENV}=1) but {} has none (scripts/aiosmtpd-venv install)",
            venv().display()
        );
        eprintln!(
            "\n*** SKIP {test}: no aiosmtpd in {} (scripts/aiosmtpd-venv install) ***\n",
            venv().display()
        );
    }
    ok
}

/// How the server protects connections.
#[derive(Debug, Clone)]
pub enum SmtpTls {
    /// Plain SMTP.
    None,
    /// STARTTLS offered and required before MAIL, with this certificate chain and key (PEM).
    StartTls {
        /// Certificate chain.
        cert: PathBuf,
        /// Key.
        key: PathBuf,
    },
    /// TLS from the first byte (SMTPS).
    Implicit {
        /// Certificate chain.
        cert: PathBuf,
        /// Key.
        key: PathBuf,
    },
}

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`).
    pub mail_from: String,
    /// The envelope recipients (`RCPT TO`).
    pub rcpt_tos: Vec<String>,
    /// Every header, in order, decoded (RFC 2047 words resolved).
    pub headers: Vec<(String, String)>,
    /// The top-level content type (`text/plain`).
    pub content_type: String,
    /// The text/plain body, transfer encoding undone.
    pub body: String,
    /// The TLS version of the session (`TLSv1.3`), `None` for a clear session.
    pub tls: Option<String>,
    /// The login used, when the client authenticated.
    pub auth_user: Option<String>,
    /// The message as received.
    pub raw: String,
}

impl ReceivedMail {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn from_json(v: &serde_json::Value) -> ReceivedMail {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        ReceivedMail {
            mail_from: s("mail_from").unwrap_or_default(),
            rcpt_tos: v["rcpt_tos"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            headers: v["headers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|h| {
                            Some((h[0].as_str()?.to_owned(), h[1].as_str()?.to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            content_type: s("content_type").unwrap_or_default(),
            body: s("body").unwrap_or_default(),
            tls: s("tls"),
            auth_user: s("auth_user"),
            raw: s("raw").unwrap_or_default(),
        }
    }
}

/// A running aiosmtpd, killed when dropped.
pub struct SmtpServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts aiosmtpd on a free loopback port with `tls` and, when given, a required login
    /// (`user`, `password`). Check [`smtp_available`] first.
    pub fn start(tls: SmtpTls, login: Option<(&str, &str)>) -> SmtpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = closed_port();
            let mut cmd = Command::new(python());
            cmd.arg(LAUNCHER)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--dir")
                .arg(dir.path());
            match &tls {
                SmtpTls::None => {}
                SmtpTls::StartTls { cert, key } => {
                    cmd.arg("--starttls").arg(cert).arg(key);
                }
                SmtpTls::Implicit { cert, key } => {
                    cmd.arg("--smtps").arg(cert).arg(key);
                }
            }
            if let Some((user, password)) = login {
                cmd.arg("--auth").arg(user).arg(password);
            }
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start aiosmtpd");
            if wait_listening(&mut child, port) {
                return SmtpServer { child, port, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("aiosmtpd did not start on a loopback port (five tries)");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Maildir aiosmtpd's `Mailbox` handler writes.
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        read_messages(&self.dir.path().join("json"))
    }

    /// Waits up to `timeout` for at least `n` messages.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read_messages(dir: &Path) -> Vec<ReceivedMail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| ReceivedMail::from_json(&v))
        .collect()
}

/// Waits for the launcher's `listening` line and a connection that is accepted.
fn wait_listening(child: &mut Child, port: u16) -> bool {
    let Some(out) = child.stdout.take() else {
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let ok = BufReader::new(out).read_line(&mut line).is_ok() && line.trim() == "listening";
        let _ = tx.send(ok);
    });
    let ready = rx.recv_timeout(Duration::from_secs(20)).unwrap_or(false);
    ready && TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
