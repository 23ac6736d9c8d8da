//! Where the Docker engine's API listens, spelt as Docker's own tools spell it in `DOCKER_HOST`:
//! one parser for the agent's `docker_host` key, its `DOCKER_HOST` and the watchdog's.

use std::path::PathBuf;

/// The engine's socket on Linux.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The variable Docker's own tools read the engine's address from.
pub const DOCKER_HOST_ENV: &str = "DOCKER_HOST";

/// Where the Docker engine's API listens, as Docker's own tools spell it in `DOCKER_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    /// `unix:///path/to/docker.sock`.
    Unix(PathBuf),
    /// `tcp://host:port` or `http://host:port`: plain HTTP (no TLS).
    Tcp {
        /// `host:port`.
        addr: String,
    },
}

impl Default for DockerHost {
    /// The engine's socket on Linux, `unix:///var/run/docker.sock`.
    fn default() -> Self {
        DockerHost::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DockerHost::Unix(p) => write!(f, "unix://{}", p.display()),
            DockerHost::Tcp { addr } => write!(f, "tcp://{addr}"),
        }
    }
}

impl std::str::FromStr for DockerHost {
    type Err = String;

    /// Parses `unix:///path`, `tcp://host:port` or `http://host:port`; the error says what is
    /// accepted.
    fn from_str(s: &str) -> Result<DockerHost, String> {
        const ACCEPTED: &str = "unix:///path/to/docker.sock, tcp://host:port or http://host:port";
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(format!(
                    "`{s}`: a unix socket needs an absolute path, as in unix:///var/run/docker.sock"
                ));
            }
            return Ok(DockerHost::Unix(PathBuf::from(path)));
        }
        let Some(rest) = s
            .strip_prefix("tcp://")
            .or_else(|| s.strip_prefix("http://"))
        else {
            let why = match s.split_once("://") {
                Some(("https", _)) => {
                    "TLS to the engine is not supported; use a unix socket or plain tcp:// on a trusted network".to_owned()
                }
                Some((scheme, _)) => format!("the scheme `{scheme}://` is not supported"),
                None => "it has no scheme".to_owned(),
            };
            return Err(format!("`{s}`: {why}; use {ACCEPTED}"));
        };
        let addr = rest.strip_suffix('/').unwrap_or(rest);
        let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok || addr.contains('/') {
            return Err(format!(
                "`{s}`: expected host:port after the scheme, as in tcp://127.0.0.1:2375"
            ));
        }
        Ok(DockerHost::Tcp {
            addr: addr.to_owned(),
        })
    }
}

impl DockerHost {
    /// The address as Docker's tools find it: `DOCKER_HOST` when set and not empty (an error
    /// naming the variable when malformed), else [`DockerHost::default`].
    pub fn from_env() -> Result<DockerHost, String> {
        match std::env::var(DOCKER_HOST_ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map_err(|e| format!("invalid environment variable {DOCKER_HOST_ENV}: {e}")),
            _ => Ok(DockerHost::default()),
        }
    }
}
