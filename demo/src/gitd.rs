//! `git daemon` on loopback serving a directory of bare repositories (the primary and the
//! mirror of the fleet repository).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
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
    /// `git --exec-path` did not say where `git-daemon` is.
    #[error("cannot find git-daemon: `git --exec-path` failed: {0}")]
    ExecPath(String),
    /// Started but never listened.
    #[error("git daemon for {base} did not listen on 127.0.0.1:{port} within 10 s")]
    NotListening {
        /// Its base path.
        base: String,
        /// The port.
        port: u16,
    },
}

/// The `git-daemon` program itself. The demo runs it directly rather than as `git daemon`: the
/// `git` wrapper runs it as a child process, so stopping the wrapper would leave the daemon
/// serving after the demo ended.
fn git_daemon_program() -> Result<PathBuf, GitdError> {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .map_err(GitdError::Spawn)?;
    if !out.status.success() {
        return Err(GitdError::ExecPath(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let daemon = Path::new(&dir).join("git-daemon");
    if daemon.is_file() {
        Ok(daemon)
    } else {
        Err(GitdError::ExecPath(format!("no {}", daemon.display())))
    }
}

impl GitDaemon {
    /// Serves every repository under `base` read-only on a free loopback port.
    pub fn start(base: &Path) -> Result<GitDaemon, GitdError> {
        let port = free_port();
        let child = Command::new(git_daemon_program()?)
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
