//! [`DockerError`]: what failed, with the stack, service, image or container it failed on.

use std::path::PathBuf;
use std::time::Duration;

/// A variable an `environment` or `env_file` entry needs and the device's secrets do not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSecret {
    /// The service whose environment names it.
    pub service: String,
    /// The variable, e.g. `DB_PASSWORD`.
    pub variable: String,
}

fn list_missing(missing: &[MissingSecret]) -> String {
    missing
        .iter()
        .map(|m| format!("`{}` (service `{}`)", m.variable, m.service))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything the Docker runtime can fail at. The message says what failed and on which object;
/// `source`, where present, says why (usually the engine's own answer).
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine did not answer, or its API version could not be agreed.
    #[error("cannot reach the Docker engine at {host}")]
    Connect {
        /// Where it was asked (`unix:///var/run/docker.sock`, `tcp://host:port`).
        host: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// `DOCKER_HOST` (or the address given) names a transport this client does not speak.
    #[error(
        "unsupported Docker host `{host}`: use unix:///path/to/docker.sock or tcp://HOST:PORT"
    )]
    UnsupportedHost {
        /// The refused address.
        host: String,
    },
    /// A namespace that cannot be used in Docker names and labels.
    #[error("namespace `{namespace}` {reason}")]
    InvalidNamespace {
        /// The refused value.
        namespace: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Looking up an image in the engine's local store failed (other than "not there").
    #[error("cannot inspect image `{image}`")]
    InspectImage {
        /// The image reference.
        image: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// Pulling a missing image failed.
    #[error("cannot pull image `{image}`")]
    Pull {
        /// The image reference.
        image: String,
        /// Why (the registry's or the engine's message).
        #[source]
        source: bollard::errors::Error,
    },
    /// A pull stopped progressing: the engine sent nothing for `after`.
    #[error("pulling image `{image}` stalled: no progress for {}", fleet_config::units::format_duration(*.after))]
    PullStalled {
        /// The image reference.
        image: String,
        /// The silence.
        after: std::time::Duration,
    },
    /// Secrets the stack needs are not provisioned on the device; nothing was touched.
    #[error("stack `{stack}` needs secrets the device does not have: {}; provision them and retry", list_missing(.missing))]
    MissingSecrets {
        /// The stack.
        stack: String,
        /// Every missing variable, by service.
        missing: Vec<MissingSecret>,
    },
    /// An `environment` value with a malformed `${...}` reference.
    #[error("service `{service}` of stack `{stack}`: environment `{variable}`: {reason}")]
    Interpolation {
        /// The stack.
        stack: String,
        /// The service.
        service: String,
        /// The environment variable whose value is malformed.
        variable: String,
        /// What is wrong.
        reason: String,
    },
    /// A file the stack needs from the release (an `env_file`, a bind-mount source, the release
    /// directory itself) could not be read.
    #[error("stack `{stack}`, service `{service}`: cannot read {what} {}", path.display())]
    ReleaseFile {
        /// The stack.
        stack: String,
        /// The service (empty for the release directory itself).
        service: String,
        /// `env_file`, `bind-mount source`, ...
        what: &'static str,
        /// The path on the device.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A service field that cannot be turned into an Engine API setting (e.g. a malformed device).
    #[error("service `{service}` of stack `{stack}`: {reason}")]
    InvalidService {
        /// The stack.
        stack: String,
        /// The service.
        service: String,
        /// What is wrong.
        reason: String,
    },
    /// `depends_on` (with `network_mode: service:...`) forms a cycle.
    #[error("stack `{stack}`: services {services} depend on each other in a cycle")]
    DependencyCycle {
        /// The stack.
        stack: String,
        /// The services on the cycle.
        services: String,
    },
    /// A dependency did not reach its `depends_on` condition in time.
    #[error("service `{service}` of stack `{stack}` waited {waited:?} for `{dependency}` to be {condition}")]
    DependencyTimeout {
        /// The stack.
        stack: String,
        /// The waiting service.
        service: String,
        /// The dependency.
        dependency: String,
        /// `healthy` or `completed successfully`.
        condition: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// A dependency failed its `depends_on` condition (exited, unhealthy, no healthcheck).
    #[error(
        "service `{service}` of stack `{stack}` cannot start: dependency `{dependency}` {reason}"
    )]
    DependencyFailed {
        /// The stack.
        stack: String,
        /// The waiting service.
        service: String,
        /// The dependency.
        dependency: String,
        /// What happened to it.
        reason: String,
    },
    /// An Engine API call on a container failed.
    #[error("cannot {action} container `{container}`")]
    Container {
        /// `create`, `start`, `stop`, `remove`, `inspect`, `connect to network X` ...
        action: String,
        /// Container name or id.
        container: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// An Engine API call on a network failed.
    #[error("cannot {action} network `{network}`")]
    Network {
        /// `create`, `remove`, `inspect`.
        action: &'static str,
        /// Network name.
        network: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// An Engine API call on a volume failed.
    #[error("cannot {action} volume `{volume}`")]
    Volume {
        /// `create`, `remove`, `inspect`.
        action: &'static str,
        /// Volume name.
        volume: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// Listing the objects of a namespace or stack failed.
    #[error("cannot list {what} of {scope}")]
    List {
        /// `containers`, `networks` or `volumes`.
        what: &'static str,
        /// e.g. "namespace `dev1`, stack `web`".
        scope: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
}

impl DockerError {
    /// True when the engine itself did not answer (socket missing or refusing, a timeout, the
    /// connection dropped): worth retrying as it is, unlike an answer that refused the request.
    pub fn engine_unavailable(&self) -> bool {
        if matches!(self, DockerError::Connect { .. }) {
            return true;
        }
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            if let Some(b) = e.downcast_ref::<bollard::errors::Error>() {
                if matches!(
                    b,
                    bollard::errors::Error::RequestTimeoutError
                        | bollard::errors::Error::IOError { .. }
                        | bollard::errors::Error::HyperLegacyError { .. }
                        | bollard::errors::Error::HyperResponseError { .. }
                        | bollard::errors::Error::SocketNotFoundError(_)
                ) {
                    return true;
                }
            }
            if e.downcast_ref::<std::io::Error>().is_some() {
                return true;
            }
            source = e.source();
        }
        false
    }
}

/// True when the engine answered 404 (no such container, image, network or volume).
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// True when the engine answered 304 (already started or stopped).
pub(crate) fn is_not_modified(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}
