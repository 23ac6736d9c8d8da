//! The supported Compose subset as types: what the agent reconciles against Docker.
//!
//! Everything here derives `Serialize` so the agent can hash a service's definition into the
//! `fleet.config-hash` label and leave unchanged services running. Fields added after the first
//! release are skipped when they hold their default, so a service that does not use them keeps
//! its hash (and its container) when the agent is upgraded.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::image::ImageRef;

/// One `stacks/<name>/compose.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ComposeFile {
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Named volumes declared at the top level.
    pub volumes: BTreeMap<String, VolumeDef>,
    /// Networks declared at the top level.
    pub networks: BTreeMap<String, NetworkDef>,
    /// Services with `profiles`, by name, with their profiles: validated but not started, as
    /// `docker compose up` without `--profile` does. They are not in `services`.
    pub not_started: BTreeMap<String, Vec<String>>,
}

/// One service (container).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// The image to run; pulled before anything running is touched.
    pub image: ImageRef,
    /// Overrides the image's command.
    pub command: Option<Vec<String>>,
    /// Overrides the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Environment; `None` means "take it from the device" (`${NAME}` or a bare `NAME`).
    pub environment: BTreeMap<String, Option<String>>,
    /// Files of `NAME=value` lines, relative to the stack directory or absolute on the device;
    /// later files win.
    pub env_file: Vec<EnvFile>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Ports the container exposes to other containers without publishing them (`expose`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<ExposedPort>,
    /// Mounts.
    pub volumes: Vec<Mount>,
    /// tmpfs mounts, `path[:options]`.
    pub tmpfs: Vec<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Docker healthcheck.
    pub healthcheck: Option<Healthcheck>,
    /// Container labels (never starting with `fleet.`, which the agent owns).
    pub labels: BTreeMap<String, String>,
    /// Start order and readiness conditions.
    pub depends_on: BTreeMap<String, DependsCondition>,
    /// Dependencies with `restart: true`: when one of them is replaced, so is this service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_with: Vec<String>,
    /// Networks to join, with aliases.
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// `host`, `none`, `bridge`, `service:NAME` or `container:NAME`.
    pub network_mode: Option<String>,
    /// Hostname inside the container.
    pub hostname: Option<String>,
    /// Fixed container name.
    pub container_name: Option<String>,
    /// `user[:group]`.
    pub user: Option<String>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Devices, `host[:container[:permissions]]`.
    pub devices: Vec<String>,
    /// Capabilities added.
    pub cap_add: Vec<String>,
    /// Capabilities dropped.
    pub cap_drop: Vec<String>,
    /// Security options, e.g. `no-new-privileges:true`.
    pub security_opt: Vec<String>,
    /// Privileged mode.
    pub privileged: bool,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// Run an init process as PID 1.
    pub init: bool,
    /// Extra `/etc/hosts` lines, `host:ip`.
    pub extra_hosts: Vec<String>,
    /// Log driver and options.
    pub logging: Option<Logging>,
    /// How long to wait after the stop signal before killing.
    pub stop_grace_period: Option<Duration>,
    /// The stop signal, e.g. `SIGINT`.
    pub stop_signal: Option<String>,
    /// Resource limits by name (`nofile`, `nproc`, ...).
    pub ulimits: BTreeMap<String, Ulimit>,
    /// Memory limit in bytes (`mem_limit` or `deploy.resources.limits.memory`).
    pub mem_limit: Option<u64>,
    /// CPU limit in cores (`cpus` or `deploy.resources.limits.cpus`).
    pub cpus: Option<f64>,
    /// Most processes the container may run; `-1` is unlimited (`pids_limit` or
    /// `deploy.resources.limits.pids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// Memory soft limit in bytes, enforced when the device runs short
    /// (`mem_reservation` or `deploy.resources.reservations.memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_reservation: Option<u64>,
    /// PID namespace (`host`), as monitoring stacks such as Netdata use.
    pub pid: Option<String>,
    /// The `x-fleet` extension: an HTTP health probe the agent runs itself.
    pub http_probe: Option<HttpProbe>,
}

/// A published port or port range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    /// Host address to bind, e.g. `127.0.0.1`.
    pub host_ip: Option<String>,
    /// Host port(s); `None` lets Docker choose.
    pub published: Option<PortRange>,
    /// Container port(s).
    pub target: PortRange,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// One `env_file` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// Relative to the stack directory, or absolute on the device.
    pub path: String,
    /// When false (`required: false`), a file that does not exist is skipped.
    pub required: bool,
}

impl Serialize for EnvFile {
    /// A required file serializes as its bare path, as before the long form existed, so
    /// existing services keep their config hash.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        if self.required {
            return s.serialize_str(&self.path);
        }
        let mut st = s.serialize_struct("EnvFile", 2)?;
        st.serialize_field("path", &self.path)?;
        st.serialize_field("required", &self.required)?;
        st.end()
    }
}

/// A port or range from `expose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExposedPort {
    /// The container port(s).
    pub ports: PortRange,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// An inclusive port range; a single port has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port.
    pub end: u16,
}

/// A mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Mount {
    /// A host path; a relative `source` is relative to the stack directory of the release.
    Bind {
        /// Host path.
        source: String,
        /// Container path.
        target: String,
        /// Mounted read-only.
        read_only: bool,
        /// Create a missing host path as a directory (Docker's `-v` behaviour, the default);
        /// when false a missing source fails the container's creation.
        #[serde(skip_serializing_if = "is_true")]
        create_host_path: bool,
        /// Mount propagation: `rprivate`, `private`, `rshared`, `shared`, `rslave`, `slave`.
        #[serde(skip_serializing_if = "Option::is_none")]
        propagation: Option<String>,
        /// SELinux relabelling: `z` (shared) or `Z` (private).
        #[serde(skip_serializing_if = "Option::is_none")]
        selinux: Option<String>,
        /// `consistent`, `cached` or `delegated`: passed to Docker (which ignores them on Linux).
        #[serde(skip_serializing_if = "Option::is_none")]
        consistency: Option<String>,
    },
    /// A named volume declared at the top level.
    Volume {
        /// Volume name.
        source: String,
        /// Container path.
        target: String,
        /// Mounted read-only.
        read_only: bool,
        /// Do not copy the image's files at the target into a new, empty volume.
        #[serde(skip_serializing_if = "is_false")]
        nocopy: bool,
    },
    /// An anonymous volume.
    Anonymous {
        /// Container path.
        target: String,
        /// Mounted read-only.
        #[serde(skip_serializing_if = "is_false")]
        read_only: bool,
        /// Do not copy the image's files at the target into the new volume.
        #[serde(skip_serializing_if = "is_false")]
        nocopy: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Container path.
        target: String,
        /// Size limit in bytes.
        size: Option<u64>,
        /// File mode of the mount point, e.g. `0o1777`.
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
}

impl Mount {
    /// The container path.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. }
            | Mount::Volume { target, .. }
            | Mount::Anonymous { target, .. }
            | Mount::Tmpfs { target, .. } => target,
        }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// When Docker restarts the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum RestartPolicy {
    /// Never (`"no"`, the default).
    #[default]
    No,
    /// Always.
    Always,
    /// On a non-zero exit, at most this many times if given.
    OnFailure(Option<u32>),
    /// Unless stopped by hand.
    UnlessStopped,
}

/// A Docker healthcheck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    /// Docker's form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval: Option<Duration>,
    /// Time one check may take.
    pub timeout: Option<Duration>,
    /// Consecutive failures before unhealthy.
    pub retries: Option<u32>,
    /// Grace period after start.
    pub start_period: Option<Duration>,
    /// Time between checks during the start period.
    pub start_interval: Option<Duration>,
}

/// What `depends_on` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DependsCondition {
    /// The dependency has started.
    Started,
    /// The dependency is healthy.
    Healthy,
    /// The dependency ran to completion with status 0.
    CompletedSuccessfully,
}

/// A service's attachment to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ServiceNetwork {
    /// Extra DNS names on that network.
    pub aliases: Vec<String>,
    /// Fixed IPv4 address.
    pub ipv4_address: Option<String>,
}

/// Log driver settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logging {
    /// Driver, e.g. `json-file` or `local`.
    pub driver: Option<String>,
    /// Driver options, e.g. `max-size: 10m`.
    pub options: BTreeMap<String, String>,
}

/// A soft and hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    /// Soft limit.
    pub soft: i64,
    /// Hard limit.
    pub hard: i64,
}

/// A top-level named volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct VolumeDef {
    /// Volume driver.
    pub driver: Option<String>,
    /// Driver options.
    pub driver_opts: BTreeMap<String, String>,
    /// Created outside the stack; never created or removed by the agent.
    pub external: bool,
    /// Volume labels.
    pub labels: BTreeMap<String, String>,
    /// Actual volume name, when not derived from the stack.
    pub name: Option<String>,
}

/// A top-level network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct NetworkDef {
    /// Network driver.
    pub driver: Option<String>,
    /// Driver options.
    pub driver_opts: BTreeMap<String, String>,
    /// Created outside the stack.
    pub external: bool,
    /// No outside connectivity.
    pub internal: bool,
    /// Containers outside the stack may attach to it.
    #[serde(skip_serializing_if = "is_false")]
    pub attachable: bool,
    /// Network labels.
    pub labels: BTreeMap<String, String>,
    /// Actual network name, when not derived from the stack.
    pub name: Option<String>,
    /// IPv6 enabled.
    pub enable_ipv6: bool,
    /// Subnets.
    pub ipam: Vec<IpamPool>,
    /// IPAM driver, when not Docker's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam_driver: Option<String>,
}

/// One IPAM pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct IpamPool {
    /// e.g. `172.28.0.0/16`.
    pub subnet: Option<String>,
    /// Gateway address.
    pub gateway: Option<String>,
    /// Allocation range.
    pub ip_range: Option<String>,
}

/// `x-fleet: { health: { http: ... } }`: an HTTP GET the agent sends to the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpProbe {
    /// Container port to probe; the agent connects to the container's own address, so the port
    /// need not be published.
    pub port: u16,
    /// Path, starting with `/`.
    pub path: String,
    /// Expected status; any 2xx when absent.
    pub expect_status: Option<u16>,
    /// Per-request timeout.
    pub timeout: Duration,
}
