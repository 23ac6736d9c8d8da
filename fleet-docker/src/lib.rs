//! The Docker runtime: reconciles a stack's Compose subset against the Engine API (bollard over
//! `/var/run/docker.sock`, or the [`DockerHost`] configured), watches its health, and cleans up,
//! never shelling out to `docker`.
//!
//! - [`Runtime::connect_to`] talks to the engine on behalf of one [`Namespace`]; every
//!   object it creates carries the labels of [`labels`], and it only ever touches objects
//!   carrying its namespace, so several agents (or tests) can share one engine.
//! - [`Runtime::ensure_images`] makes the images local before anything running is touched.
//! - [`Runtime::apply`] reconciles one stack to its compose file; unchanged services (same
//!   `fleet.config-hash`, see [`spec`]) keep their running container across releases.
//! - [`Runtime::health`] and [`Runtime::watch_health`] judge the stack, [`Runtime::remove_stack`]
//!   and [`Runtime::remove_all`] take things away.
//! - [`Runtime::container_logs`] reads the containers' newest log lines (a log request).
//!
//! **The release label.** Docker labels cannot change after a container is created, so
//! `fleet.release` names the release whose apply *created* the container, not the release the
//! device runs now (that is the agent's journal and its `current` link). A kept container's
//! relative bind mounts still point into that release's directory, so the release pruner must
//! keep every release some container's `fleet.release` names; [`Runtime::releases_in_use`]
//! answers that.

mod apply;
mod cleanup;
mod containers;
mod env;
mod error;
mod health;
pub mod host;
mod images;
pub mod labels;
pub mod logs;
mod order;
mod plan;
mod probe;
mod restart;
pub mod secrets;
pub mod spec;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;

pub use apply::{ApplyReport, ServiceChange};
pub use cleanup::Removed;
pub use error::{DockerError, MissingSecret};
pub use health::{DockerHealth, ProbeOutcome, ServiceHealth, StackHealth};
pub use host::{DockerHost, DEFAULT_SOCKET, DOCKER_HOST_ENV};
pub use labels::Namespace;

/// Seconds the client waits for one ordinary Engine API request.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Tunables of the runtime; [`RuntimeOptions::default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// How long `apply` waits for a `depends_on` dependency to become healthy or complete.
    pub dependency_timeout: Duration,
    /// How often `apply` looks at a dependency while it waits.
    pub dependency_poll: Duration,
    /// After a container starts, how long a failing HTTP probe counts as "still starting"
    /// (Unknown) rather than Unhealthy, when the service has no Docker healthcheck to say so.
    pub probe_start_grace: Duration,
    /// How long a stack may take to become healthy before its health window starts; a stack
    /// still starting (healthcheck "starting", probe in its grace) after this fails.
    pub startup_timeout: Duration,
    /// An image pull that receives nothing from the engine for this long (no progress: a
    /// registry that stopped sending) fails; one that keeps progressing, however slowly, is
    /// waited for.
    pub pull_stall: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            dependency_timeout: Duration::from_secs(120),
            dependency_poll: Duration::from_millis(500),
            probe_start_grace: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(120),
            pull_stall: Duration::from_secs(120),
        }
    }
}

/// What the runtime remembers about a container between health observations.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The restart count at the last observation; `None` until the first one after a start.
    restart_count: Option<i64>,
    /// When this runtime started it, or first saw it.
    since: Instant,
}

/// A connection to the engine acting for one namespace. Cheap to share behind an `Arc`; every
/// method takes `&self`.
pub struct Runtime {
    docker: Docker,
    namespace: Namespace,
    options: RuntimeOptions,
    seen: Mutex<HashMap<String, Seen>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("namespace", &self.namespace)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Connects to the local engine at [`DEFAULT_SOCKET`]; see [`Runtime::connect_to`].
    pub async fn connect(namespace: Namespace) -> Result<Runtime, DockerError> {
        Runtime::connect_to(&DockerHost::default(), namespace).await
    }

    /// Connects to the engine at `host` as spelt in `DOCKER_HOST` (`unix:///path`,
    /// `tcp://HOST:PORT`); see [`Runtime::connect_to`].
    pub async fn connect_host(host: &str, namespace: Namespace) -> Result<Runtime, DockerError> {
        let parsed: DockerHost = host.parse().map_err(|_| DockerError::UnsupportedHost {
            host: host.to_owned(),
        })?;
        Runtime::connect_to(&parsed, namespace).await
    }

    /// Like [`Runtime::connect`], with another Unix socket.
    pub async fn connect_with_socket(
        socket: &str,
        namespace: Namespace,
    ) -> Result<Runtime, DockerError> {
        Runtime::connect_to(&DockerHost::Unix(socket.into()), namespace).await
    }

    /// Connects to the engine at `host` and agrees an API version with it (so older engines,
    /// e.g. Debian's 20.10, work). Fails when the engine does not answer; the caller retries.
    #[tracing::instrument(skip(namespace), fields(namespace = %namespace, %host), err)]
    pub async fn connect_to(
        host: &DockerHost,
        namespace: Namespace,
    ) -> Result<Runtime, DockerError> {
        let connect_err = |source| DockerError::Connect {
            host: host.to_string(),
            source,
        };
        let version = bollard::API_DEFAULT_VERSION;
        let docker = match host {
            DockerHost::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), REQUEST_TIMEOUT_SECS, version)
            }
            DockerHost::Tcp { addr } => {
                Docker::connect_with_http(addr, REQUEST_TIMEOUT_SECS, version)
            }
        }
        .map_err(connect_err)?;
        let docker = docker.negotiate_version().await.map_err(connect_err)?;
        docker.ping().await.map_err(connect_err)?;
        Ok(Runtime {
            docker,
            namespace,
            options: RuntimeOptions::default(),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the tunables.
    pub fn with_options(mut self, options: RuntimeOptions) -> Runtime {
        self.options = options;
        self
    }

    /// The namespace this runtime acts for.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Records that this runtime (re)started container `id` now: its probe grace starts, and
    /// the next observation takes its restart count as the baseline.
    fn note_started(&self, id: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(
                id.to_owned(),
                Seen {
                    restart_count: None,
                    since: Instant::now(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DockerHost;

    #[test]
    fn docker_host_forms_are_understood_like_dockers_tools() {
        let cases = [
            ("unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),
            ("tcp://127.0.0.1:2375", "tcp://127.0.0.1:2375"),
            ("http://127.0.0.1:2375/", "tcp://127.0.0.1:2375"),
        ];
        for (host, want) in cases {
            let got: DockerHost = host.parse().unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(got.to_string(), want, "{host}");
        }
        for bad in [
            "ssh://pi@device",
            "npipe:////./pipe/docker_engine",
            "tcp://",
            "docker.sock",
            "https://h:2376",
        ] {
            assert!(bad.parse::<DockerHost>().is_err(), "{bad}");
        }
    }
}
