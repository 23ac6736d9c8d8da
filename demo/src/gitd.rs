//! `git daemon` on loopback serving a directory of bare repositories (the primary and the
//! mirror of the fleet repository).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stack::free_port;

/// A running `git daemon`; stopped on drop.
pub struct GitDaemon {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// It did not start.
#[derive(Debug, thiserror::Error)]
pub enum GitdError {
    /// Could not start the process.
    #[error("cannot start git daemon: {0}")]
    Spawn(#[source] std::io::Error),
    /// Started but never listened.
    #[error("git daemon for {base} did not listen on 127.0.0.1:{port} within 10 s")]
    NotListening {
        /// Its base path.
        base: String,
        /// The port.
        port: u16,
    },
}

impl GitDaemon {
    /// Serves every repository under `base` read-only on a free loopback port.
    pub fn start(base: &Path) -> Result<GitDaemon, GitdError> {
        let port = free_port();
        let child = Command::new("git")
            .arg("daemon")
            .arg("--export-all")
            .arg("--reuseaddr")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(GitdError::Spawn)?;
        let mut d = GitDaemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || d.child.try_wait().ok().flatten().is_some() {
                return Err(GitdError::NotListening {
                    base: base.display().to_string(),
                    port,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        d.port = port;
        Ok(d)
    }

    /// `git://127.0.0.1:PORT/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
