//! The agent's configuration file (YAML). Every problem is reported with its line and column,
//! and an unknown key names what is allowed, like the fleet repository validator.
//!
//! ```yaml
//! device_id: pi-lab-01              # required: the id in devices.yaml
//! data_dir: /var/lib/fleet          # releases, journal, lock, Git cache
//! git:
//!   endpoints:                      # primary first, then mirrors; a plain URL or a mapping
//!     - git://git.fleet.internal/fleet.git
//!     - url: https://mirror.fleet.internal/fleet.git
//!       token_file: /etc/fleet/git-token          # HTTPS token (password), optional username
//!     - url: ssh://git@backup.fleet.internal/fleet.git
//!       ssh_key: /etc/fleet/id_ed25519
//!   branch: main
//!   failover_timeout: 30s           # give up on an endpoint silent this long (a slow transfer that keeps coming is waited for)
//! poll_interval: 60s                # standalone mode: how often to look for a new commit
//! health_window: 60s                # a new release must stay healthy this long
//! pull_stall_timeout: 2m            # an image pull that receives nothing this long fails (a slow one is waited for)
//! min_free_disk: 500MB              # below it: prune, else skip the update
//! keep_releases: 3                  # staged releases kept on disk (current and previous always)
//! metrics_listen: 127.0.0.1:9101    # Prometheus /metrics (loopback)
//! docker_namespace: fleet           # label namespace of this agent's containers
//! docker_host: unix:///var/run/docker.sock   # else $DOCKER_HOST, else this socket
//! run_dir: /run/fleet               # live state for `status` (tmpfs: works on a full disk)
//! secrets_dir: /etc/fleet/secrets   # <stack>.env files with ${NAME} values
//! safe_mode_compose: /usr/share/fleet/safe-mode/compose.yaml
//! controller:                       # absent: standalone mode (follow the branch head)
//!   url: https://controller.fleet.internal:8443
//!   token_file: /etc/fleet/device-token       # written at enrollment (mode 0600)
//!   bootstrap_token_file: /etc/fleet/bootstrap-token   # optional: enroll at once, no pairing code
//!   request_timeout: 10s            # one HTTP request to the controller, connect to answer
//!   long_poll: 25s                  # ask the controller to hold check-ins this long (0s: off)
//!   ca_file: /etc/fleet/controller-ca.pem     # optional: trust only this CA (default: system roots)
//! watch:                            # the device watchers (heat, power, disk, clock); all optional
//!   interval: 15s                   # how often they sample (a few small file reads)
//!   sysfs_root: /sys                # thermal zones: <root>/class/thermal/thermal_zone*/temp
//!   throttled_file: /sys/devices/platform/soc/soc:firmware/get_throttled  # default under sysfs_root
//!   power_fail_file: /run/ups/power-failing    # optional: present while power is failing
//!   power_fail_command: [/usr/local/bin/ups-on-battery]   # optional: exit 0 = power failing
//!   temperature_above: 80           # °C; overrides fleet.yaml `alerts.temperature_above`
//!   temperature_hysteresis: 5       # °C below the threshold before updates resume
//!   disk_free_below: 500MB          # overrides fleet.yaml `alerts.disk_free_below` (0: off)
//!   clock_skew_max: 5m              # farther from the controller's clock is reported
//!   crash_loop_rollback_within: 1h  # a crash loop this soon after an update rolls back, later: safe mode
//!   drift_check_every: 2m           # re-digest `current` against the journal (1s..24h; 0s: boot only)
//! logging:                          # optional: push the logs to Grafana Loki as well (see fleet_logging::config)
//!   loki:
//!     url: http://loki.fleet.internal:3100   # Loki's base URL; /loki/api/v1/push is appended
//!     labels: { site: berlin }      # static labels, besides device, component and level
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_config::decode::Ctx;
use fleet_config::diag::Diagnostic;
use fleet_config::names::{check_git_url, check_name, check_ref_name};
use fleet_config::yaml;

/// How an endpoint authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitAuth {
    /// Anonymous (git://, public https, file://).
    None,
    /// An HTTPS token read from a file, sent as the password.
    TokenFile {
        /// File holding the token.
        path: PathBuf,
        /// Username sent with it.
        username: String,
    },
    /// An SSH private key.
    SshKey {
        /// The key file.
        path: PathBuf,
        /// File holding its passphrase, if any.
        passphrase_file: Option<PathBuf>,
    },
}

/// One Git endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitEndpointConfig {
    /// Remote URL.
    pub url: String,
    /// Credentials.
    pub auth: GitAuth,
}

/// Where releases come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitConfig {
    /// Primary first, then mirrors.
    pub endpoints: Vec<GitEndpointConfig>,
    /// The release branch.
    pub branch: String,
    /// How long one endpoint may take before the next is tried.
    pub failover_timeout: Duration,
}

/// The controller, in controller mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Base URL, without a trailing slash.
    pub url: String,
    /// File holding the device token. Absent: the agent enrolls (with the bootstrap token, or
    /// with a pairing code an operator approves) and writes it here, mode 0600.
    pub token_file: PathBuf,
    /// File holding the fleet's bootstrap token (bulk provisioning): with it the agent enrolls at
    /// once instead of waiting for an operator to approve a pairing code.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Longest one request to the controller may take, from connecting to the last byte.
    pub request_timeout: Duration,
    /// Ask the controller to hold each check-in up to this long while it has nothing new for
    /// this device (a new release then arrives in seconds); zero: plain check-ins.
    pub long_poll: Duration,
    /// Trust only the CA certificates in this PEM file for the controller's certificate (the
    /// fleet's own CA); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

pub use fleet_docker::DockerHost;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// This device's id in devices.yaml.
    pub device_id: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Git endpoints and branch.
    pub git: GitConfig,
    /// Standalone mode: how often to look for a new commit.
    pub poll_interval: Duration,
    /// How long a new release must stay healthy.
    pub health_window: Duration,
    /// An image pull that receives nothing for this long fails (see `update/stuck.rs`).
    pub pull_stall_timeout: Duration,
    /// Free disk needed to start an update, bytes.
    pub min_free_disk: u64,
    /// Staged releases kept on disk.
    pub keep_releases: usize,
    /// Where `/metrics` listens.
    pub metrics_listen: Option<SocketAddr>,
    /// Label namespace for this agent's Docker objects.
    pub docker_namespace: String,
    /// Where the Docker engine listens: `docker_host` in the file, else `DOCKER_HOST` (read by
    /// [`AgentConfig::load`]), else `None`, meaning [`DockerHost::default`].
    pub docker_host: Option<DockerHost>,
    /// Where the running agent publishes its live state (its problems) for `fleet-agent status`.
    /// Outside the data directory, on tmpfs, so a full or read-only data filesystem can still be
    /// reported.
    pub run_dir: PathBuf,
    /// Directory of `<stack>.env` secret files.
    pub secrets_dir: PathBuf,
    /// The safe-mode compose file, installed with the agent.
    pub safe_mode_compose: PathBuf,
    /// `None`: standalone mode.
    pub controller: Option<ControllerConfig>,
    /// The device watchers (heat, power, disk, clock): see [`crate::watch`].
    pub watch: WatchConfig,
    /// Where logs go besides standard output (`logging.loki`: Grafana Loki).
    pub logging: fleet_logging::LoggingConfig,
}

/// `watch:` in agent.yaml: what the device watchers read and, for this device only, thresholds
/// that override the fleet's (`alerts:` in the running release's fleet.yaml, or the built-in
/// defaults before the first release).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// How often the watchers sample.
    pub interval: Duration,
    /// The sysfs root: thermal zones are `<root>/class/thermal/thermal_zone*/temp`.
    pub sysfs_root: PathBuf,
    /// The Raspberry Pi firmware's throttled flags (`0x50005`, `50005` or `vcgencmd`'s
    /// `throttled=0x50005`); `None`: `<sysfs_root>/devices/platform/soc/soc:firmware/get_throttled`.
    /// A missing file means "not a Pi": nothing is reported.
    pub throttled_file: Option<PathBuf>,
    /// A file whose presence means "power is failing" (a UPS HAT daemon creates it).
    pub power_fail_file: Option<PathBuf>,
    /// A command (program and arguments) whose exit status 0 means "power is failing".
    pub power_fail_command: Option<Vec<String>>,
    /// °C above which no update starts; `None`: the fleet's `alerts.temperature_above`.
    pub temperature_above: Option<f64>,
    /// °C below the threshold the temperature must fall before updates resume.
    pub temperature_hysteresis: f64,
    /// Free bytes in the data directory below which the agent prunes and starts no update;
    /// `None`: the fleet's `alerts.disk_free_below`.
    pub disk_free_below: Option<u64>,
    /// A clock farther than this from the controller's (its answers' `Date`) is reported.
    pub clock_skew_max: Duration,
    /// A crash loop this soon after an update this agent made rolls back (the release marked
    /// bad); later, or with no previous release, it enters safe mode.
    pub crash_loop_rollback_within: Duration,
    /// How often, while idle, `current`'s tree is digested again and compared with the digest
    /// the journal recorded (config drift); zero: only at boot.
    pub drift_check_every: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            interval: defaults::WATCH_INTERVAL,
            sysfs_root: PathBuf::from(defaults::sysfs_root()),
            throttled_file: None,
            power_fail_file: None,
            power_fail_command: None,
            temperature_above: None,
            temperature_hysteresis: defaults::TEMPERATURE_HYSTERESIS,
            disk_free_below: None,
            clock_skew_max: defaults::CLOCK_SKEW_MAX,
            crash_loop_rollback_within: defaults::CRASH_LOOP_ROLLBACK_WITHIN,
            drift_check_every: defaults::DRIFT_CHECK_EVERY,
        }
    }
}

impl WatchConfig {
    /// The throttled-flags file to read.
    pub fn throttled_path(&self) -> PathBuf {
        self.throttled_file.clone().unwrap_or_else(|| {
            self.sysfs_root
                .join("devices/platform/soc/soc:firmware/get_throttled")
        })
    }
}

/// Defaults, as named functions so the documentation and the code agree.
pub mod defaults {
    use std::time::Duration;
    /// `/var/lib/fleet`.
    pub fn data_dir() -> &'static str {
        "/var/lib/fleet"
    }
    /// `main`.
    pub fn branch() -> &'static str {
        "main"
    }
    /// 30 s.
    pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
    /// 60 s.
    pub const POLL_INTERVAL: Duration = Duration::from_secs(60);
    /// 60 s.
    pub const HEALTH_WINDOW: Duration = Duration::from_secs(60);
    /// 2 min.
    pub const PULL_STALL_TIMEOUT: Duration = Duration::from_secs(120);
    /// 500 MB.
    pub const MIN_FREE_DISK: u64 = 500 << 20;
    /// 3.
    pub const KEEP_RELEASES: usize = 3;
    /// `127.0.0.1:9101`.
    pub fn metrics_listen() -> &'static str {
        "127.0.0.1:9101"
    }
    /// `fleet`.
    pub fn docker_namespace() -> &'static str {
        "fleet"
    }
    /// The engine's socket on Linux: `/var/run/docker.sock`.
    pub const DOCKER_SOCKET: &str = fleet_docker::DEFAULT_SOCKET;
    /// `/run/fleet`.
    pub fn run_dir() -> &'static str {
        "/run/fleet"
    }
    /// `/etc/fleet/secrets`.
    pub fn secrets_dir() -> &'static str {
        "/etc/fleet/secrets"
    }
    /// `/usr/share/fleet/safe-mode/compose.yaml`.
    pub fn safe_mode_compose() -> &'static str {
        "/usr/share/fleet/safe-mode/compose.yaml"
    }
    /// 10 s.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// `controller.long_poll`: within the controller's default bound (50 s), and short enough
    /// that the running release is still supervised about every 30 s.
    pub const LONG_POLL: Duration = Duration::from_secs(25);
    /// `watch.interval`: 15 s, a few file reads each (cheap on a Pi).
    pub const WATCH_INTERVAL: Duration = Duration::from_secs(15);
    /// `/sys`.
    pub fn sysfs_root() -> &'static str {
        "/sys"
    }
    /// 5 °C.
    pub const TEMPERATURE_HYSTERESIS: f64 = 5.0;
    /// 5 minutes.
    pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(5 * 60);
    /// 1 hour.
    pub const CRASH_LOOP_ROLLBACK_WITHIN: Duration = Duration::from_secs(3600);
    /// `watch.drift_check_every`.
    pub const DRIFT_CHECK_EVERY: Duration = Duration::from_secs(120);
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read agent configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file has problems, each with line and column.
    #[error("invalid agent configuration:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    /// An environment variable the configuration takes from the environment is malformed.
    #[error("invalid environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// The environment variable naming the Docker engine, as for Docker's own tools.
pub const DOCKER_HOST_ENV: &str = "DOCKER_HOST";

const TOP_KEYS: &[&str] = &[
    "device_id",
    "data_dir",
    "git",
    "poll_interval",
    "health_window",
    "pull_stall_timeout",
    "min_free_disk",
    "keep_releases",
    "metrics_listen",
    "docker_namespace",
    "docker_host",
    "run_dir",
    "secrets_dir",
    "safe_mode_compose",
    "controller",
    "watch",
    "logging",
];
const WATCH_KEYS: &[&str] = &[
    "interval",
    "sysfs_root",
    "throttled_file",
    "power_fail_file",
    "power_fail_command",
    "temperature_above",
    "temperature_hysteresis",
    "disk_free_below",
    "clock_skew_max",
    "crash_loop_rollback_within",
    "drift_check_every",
];
/// Bounds of a non-zero `watch.drift_check_every`.
const DRIFT_CHECK_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));
/// Bounds of `watch.interval`.
const WATCH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(300));
const GIT_KEYS: &[&str] = &["endpoints", "branch", "failover_timeout"];
const ENDPOINT_KEYS: &[&str] = &[
    "url",
    "token_file",
    "username",
    "ssh_key",
    "passphrase_file",
];
const CONTROLLER_KEYS: &[&str] = &[
    "url",
    "token_file",
    "bootstrap_token_file",
    "ca_file",
    "request_timeout",
    "long_poll",
];
/// Bound of `controller.long_poll` (zero turns it off): a held check-in keeps the main loop
/// waiting, so it stays well inside the loop's watchdog bound (3 min) and near the 30 s at
/// which the running release is supervised.
const LONG_POLL_MAX: Duration = Duration::from_secs(120);
/// Bounds of `controller.request_timeout`.
const REQUEST_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(300));

impl AgentConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        cfg.docker_host_from_env(std::env::var(DOCKER_HOST_ENV).ok().as_deref())?;
        Ok(cfg)
    }

    /// Precedence of the engine's address: `docker_host` in the file, then `env` (the value of
    /// `DOCKER_HOST`; empty counts as unset, as for Docker's CLI), then the default socket.
    pub fn docker_host_from_env(&mut self, env: Option<&str>) -> Result<(), ConfigError> {
        if self.docker_host.is_some() {
            return Ok(());
        }
        if let Some(value) = env.filter(|v| !v.trim().is_empty()) {
            let host = value.trim().parse().map_err(|reason| ConfigError::Env {
                var: DOCKER_HOST_ENV,
                reason,
            })?;
            self.docker_host = Some(host);
        }
        Ok(())
    }

    /// The engine's address to connect to.
    pub fn docker_host(&self) -> DockerHost {
        self.docker_host.clone().unwrap_or_default()
    }

    /// Parses configuration text; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<AgentConfig, ConfigError> {
        fleet_config::decode::decode_document(text, file, decode).map_err(ConfigError::Invalid)
    }

    /// True without a controller.
    pub fn standalone(&self) -> bool {
        self.controller.is_none()
    }
}

fn path_field(ctx: &mut Ctx<'_>, n: &yaml::Node, what: &str) -> Option<PathBuf> {
    let s = ctx.nonempty_string(n, what)?;
    if !s.starts_with('/') {
        ctx.error(
            n.pos,
            format!("{what} must be an absolute path, found `{s}`"),
        );
        return None;
    }
    Some(PathBuf::from(s))
}

fn decode(ctx: &mut Ctx<'_>, root: &yaml::Node) -> Option<AgentConfig> {
    if root.is_null() {
        ctx.error(
            root.pos,
            "the configuration is empty; it needs at least `device_id` and `git.endpoints`",
        );
        return None;
    }
    let f = ctx.map(root, "the agent configuration", TOP_KEYS)?;
    let device_id = f
        .required(ctx, "device_id", "the agent configuration")
        .and_then(|n| {
            let s = ctx.nonempty_string(n, "`device_id`")?;
            check_name(&s)
                .map_err(|e| ctx.error(n.pos, format!("`device_id` {e}")))
                .ok()?;
            Some(s)
        });
    let data_dir = match f.get("data_dir") {
        None => Some(PathBuf::from(defaults::data_dir())),
        Some(n) => path_field(ctx, n, "`data_dir`"),
    };
    let git = f
        .required(ctx, "git", "the agent configuration")
        .and_then(|n| decode_git(ctx, n));
    let dur = |ctx: &mut Ctx<'_>, key: &str, default: Duration, min: Duration| match f.get(key) {
        None => Some(default),
        Some(n) => {
            let d = ctx.duration(n, &format!("`{key}`"))?;
            if d < min {
                ctx.error(
                    n.pos,
                    format!(
                        "`{key}` must be at least {}",
                        fleet_config::units::format_duration(min)
                    ),
                );
                return None;
            }
            Some(d)
        }
    };
    let poll_interval = dur(
        ctx,
        "poll_interval",
        defaults::POLL_INTERVAL,
        Duration::from_secs(1),
    );
    let health_window = dur(
        ctx,
        "health_window",
        defaults::HEALTH_WINDOW,
        Duration::from_secs(1),
    );
    let pull_stall_timeout = dur(
        ctx,
        "pull_stall_timeout",
        defaults::PULL_STALL_TIMEOUT,
        Duration::from_secs(1),
    );
    let min_free_disk = match f.get("min_free_disk") {
        None => Some(defaults::MIN_FREE_DISK),
        Some(n) => ctx.size(n, "`min_free_disk`"),
    };
    let keep_releases = match f.get("keep_releases") {
        None => Some(defaults::KEEP_RELEASES),
        Some(n) => ctx
            .uint_in(n, "`keep_releases`", 2, 100)
            .map(|v| v as usize),
    };
    let metrics_listen = match f.get("metrics_listen") {
        None => Some(defaults::metrics_listen().parse().ok()),
        Some(n) if n.is_null() => Some(None),
        Some(n) => ctx.string(n, "`metrics_listen`").and_then(|s| match s.parse::<SocketAddr>() {
            Ok(a) => Some(Some(a)),
            Err(_) => {
                ctx.error(n.pos, format!("`metrics_listen` must be an address and port such as 127.0.0.1:9101, found `{s}`"));
                None
            }
        }),
    };
    let docker_namespace = match f.get("docker_namespace") {
        None => Some(defaults::docker_namespace().to_owned()),
        Some(n) => ctx.nonempty_string(n, "`docker_namespace`").and_then(|s| {
            check_name(&s)
                .map_err(|e| ctx.error(n.pos, format!("`docker_namespace` {e}")))
                .ok()?;
            Some(s)
        }),
    };
    let docker_host = match f.get("docker_host") {
        None => Some(None),
        Some(n) => ctx.nonempty_string(n, "`docker_host`").and_then(|s| {
            s.trim()
                .parse::<DockerHost>()
                .map_err(|e| ctx.error(n.pos, format!("`docker_host` {e}")))
                .ok()
                .map(Some)
        }),
    };
    let run_dir = match f.get("run_dir") {
        None => Some(PathBuf::from(defaults::run_dir())),
        Some(n) => path_field(ctx, n, "`run_dir`"),
    };
    let secrets_dir = match f.get("secrets_dir") {
        None => Some(PathBuf::from(defaults::secrets_dir())),
        Some(n) => path_field(ctx, n, "`secrets_dir`"),
    };
    let safe_mode_compose = match f.get("safe_mode_compose") {
        None => Some(PathBuf::from(defaults::safe_mode_compose())),
        Some(n) => path_field(ctx, n, "`safe_mode_compose`"),
    };
    let controller = match f.get("controller") {
        None => Some(None),
        Some(n) => (|| {
            let cf = ctx.map(n, "`controller`", CONTROLLER_KEYS)?;
            let url = cf.required(ctx, "url", "`controller`").and_then(|u| {
                let s = ctx.nonempty_string(u, "`controller.url`")?;
                if !(s.starts_with("https://") || s.starts_with("http://")) {
                    ctx.error(u.pos, format!("`controller.url` must start with https:// (or http:// on a trusted network), found `{s}`"));
                    return None;
                }
                Some(s.trim_end_matches('/').to_owned())
            });
            let token_file = cf
                .required(ctx, "token_file", "`controller`")
                .and_then(|t| path_field(ctx, t, "`controller.token_file`"));
            let bootstrap_token_file = match cf.get("bootstrap_token_file") {
                None => Some(None),
                Some(t) => path_field(ctx, t, "`controller.bootstrap_token_file`").map(Some),
            };
            let ca_file = match cf.get("ca_file") {
                None => Some(None),
                Some(t) => path_field(ctx, t, "`controller.ca_file`").map(Some),
            };
            let request_timeout = match cf.get("request_timeout") {
                None => Some(defaults::REQUEST_TIMEOUT),
                Some(t) => ctx
                    .duration(t, "`controller.request_timeout`")
                    .and_then(|d| {
                        let (min, max) = REQUEST_TIMEOUT_RANGE;
                        if d < min || d > max {
                            ctx.error(
                                t.pos,
                                format!(
                                    "`controller.request_timeout` must be between {} and {}",
                                    fleet_config::units::format_duration(min),
                                    fleet_config::units::format_duration(max)
                                ),
                            );
                            return None;
                        }
                        Some(d)
                    }),
            };
            let long_poll = match cf.get("long_poll") {
                None => Some(defaults::LONG_POLL),
                Some(t) => ctx.duration(t, "`controller.long_poll`").and_then(|d| {
                    if d > LONG_POLL_MAX {
                        ctx.error(
                            t.pos,
                            format!(
                                "`controller.long_poll` must be at most {} (0s turns it off)",
                                fleet_config::units::format_duration(LONG_POLL_MAX)
                            ),
                        );
                        return None;
                    }
                    Some(d)
                }),
            };
            Some(Some(ControllerConfig {
                url: url?,
                token_file: token_file?,
                bootstrap_token_file: bootstrap_token_file?,
                request_timeout: request_timeout?,
                long_poll: long_poll?,
                ca_file: ca_file?,
            }))
        })(),
    };
    let watch = match f.get("watch") {
        None => Some(WatchConfig::default()),
        Some(n) => decode_watch(ctx, n),
    };
    let logging = match f.get("logging") {
        None => Some(fleet_logging::LoggingConfig::default()),
        Some(n) => fleet_logging::config::decode(ctx, n),
    };
    Some(AgentConfig {
        device_id: device_id?,
        data_dir: data_dir?,
        git: git?,
        poll_interval: poll_interval?,
        health_window: health_window?,
        pull_stall_timeout: pull_stall_timeout?,
        min_free_disk: min_free_disk?,
        keep_releases: keep_releases?,
        metrics_listen: metrics_listen?,
        docker_namespace: docker_namespace?,
        docker_host: docker_host?,
        run_dir: run_dir?,
        secrets_dir: secrets_dir?,
        safe_mode_compose: safe_mode_compose?,
        controller: controller?,
        watch: watch?,
        logging: logging?,
    })
}

fn decode_watch(ctx: &mut Ctx<'_>, node: &yaml::Node) -> Option<WatchConfig> {
    let f = ctx.map(node, "`watch`", WATCH_KEYS)?;
    let d = WatchConfig::default();
    let interval = match f.get("interval") {
        None => Some(d.interval),
        Some(n) => ctx.duration(n, "`watch.interval`").and_then(|v| {
            let (min, max) = WATCH_INTERVAL_RANGE;
            if v < min || v > max {
                ctx.error(
                    n.pos,
                    format!(
                        "`watch.interval` must be between {} and {}",
                        fleet_config::units::format_duration(min),
                        fleet_config::units::format_duration(max)
                    ),
                );
                return None;
            }
            Some(v)
        }),
    };
    let path = |ctx: &mut Ctx<'_>, key: &str| match f.get(key) {
        None => Some(None),
        Some(n) => path_field(ctx, n, &format!("`watch.{key}`")).map(Some),
    };
    let sysfs_root = path(ctx, "sysfs_root").map(|p| p.unwrap_or(d.sysfs_root.clone()));
    let throttled_file = path(ctx, "throttled_file");
    let power_fail_file = path(ctx, "power_fail_file");
    let power_fail_command = match f.get("power_fail_command") {
        None => Some(None),
        Some(n) => ctx
            .string_list(n, "`watch.power_fail_command`", false)
            .and_then(|argv| {
                let argv: Vec<String> = argv.into_iter().map(|(s, _)| s).collect();
                if argv.is_empty() || argv[0].is_empty() {
                    ctx.error(
                        n.pos,
                        "`watch.power_fail_command` needs a program, e.g. [/usr/local/bin/ups-on-battery]",
                    );
                    return None;
                }
                Some(Some(argv))
            }),
    };
    let celsius = |ctx: &mut Ctx<'_>, key: &str, lo: f64, hi: f64| match f.get(key) {
        None => Some(None),
        Some(n) => ctx.number(n, &format!("`watch.{key}`")).and_then(|v| {
            if !(lo..=hi).contains(&v) {
                ctx.error(
                    n.pos,
                    format!("`watch.{key}` must be between {lo} and {hi} (°C), found {v}"),
                );
                return None;
            }
            Some(Some(v))
        }),
    };
    let temperature_above = celsius(ctx, "temperature_above", 20.0, 150.0);
    let temperature_hysteresis = celsius(ctx, "temperature_hysteresis", 0.0, 30.0)
        .map(|v| v.unwrap_or(d.temperature_hysteresis));
    let disk_free_below = match f.get("disk_free_below") {
        None => Some(None),
        Some(n) => ctx.size(n, "`watch.disk_free_below`").map(Some),
    };
    let clock_skew_max = match f.get("clock_skew_max") {
        None => Some(d.clock_skew_max),
        Some(n) => ctx.duration(n, "`watch.clock_skew_max`").and_then(|v| {
            if v < Duration::from_secs(1) {
                ctx.error(n.pos, "`watch.clock_skew_max` must be at least 1s");
                return None;
            }
            Some(v)
        }),
    };
    let crash_loop_rollback_within = match f.get("crash_loop_rollback_within") {
        None => Some(d.crash_loop_rollback_within),
        Some(n) => ctx.duration(n, "`watch.crash_loop_rollback_within`"),
    };
    let drift_check_every = match f.get("drift_check_every") {
        None => Some(d.drift_check_every),
        Some(n) => ctx.duration(n, "`watch.drift_check_every`").and_then(|v| {
            let (lo, hi) = DRIFT_CHECK_RANGE;
            if !v.is_zero() && !(lo..=hi).contains(&v) {
                ctx.error(
                    n.pos,
                    "`watch.drift_check_every` must be 0s (boot only) or between 1s and 24h",
                );
                return None;
            }
            Some(v)
        }),
    };
    Some(WatchConfig {
        crash_loop_rollback_within: crash_loop_rollback_within?,
        drift_check_every: drift_check_every?,
        interval: interval?,
        sysfs_root: sysfs_root?,
        throttled_file: throttled_file?,
        power_fail_file: power_fail_file?,
        power_fail_command: power_fail_command?,
        temperature_above: temperature_above?,
        temperature_hysteresis: temperature_hysteresis?,
        disk_free_below: disk_free_below?,
        clock_skew_max: clock_skew_max?,
    })
}

fn decode_git(ctx: &mut Ctx<'_>, node: &yaml::Node) -> Option<GitConfig> {
    let f = ctx.map(node, "`git`", GIT_KEYS)?;
    let endpoints = f.required(ctx, "endpoints", "`git`").and_then(|n| {
        let items = ctx.seq(n, "`git.endpoints`")?;
        if items.is_empty() {
            ctx.error(
                n.pos,
                "`git.endpoints` is empty; give the primary and, ideally, a mirror",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let what = format!("endpoint {} of `git.endpoints`", i + 1);
            // A plain URL, as `fleet.yaml` and `controller.yaml` write endpoints: no credentials.
            if let yaml::Value::Scalar(_) = &item.value {
                let url = ctx.nonempty_string(item, &what).and_then(|s| {
                    check_git_url(&s)
                        .map_err(|e| ctx.error(item.pos, format!("{what}: `{s}` {e}")))
                        .ok()?;
                    Some(s)
                });
                match url {
                    Some(url) => out.push(GitEndpointConfig {
                        url,
                        auth: GitAuth::None,
                    }),
                    None => ok = false,
                }
                continue;
            }
            let Some(ef) = ctx.map(item, &what, ENDPOINT_KEYS) else {
                ok = false;
                continue;
            };
            let url = ef.required(ctx, "url", &what).and_then(|u| {
                let s = ctx.nonempty_string(u, &format!("`url` of {what}"))?;
                check_git_url(&s)
                    .map_err(|e| ctx.error(u.pos, format!("`url` of {what}: `{s}` {e}")))
                    .ok()?;
                Some(s)
            });
            let token = ef
                .get("token_file")
                .and_then(|t| path_field(ctx, t, &format!("`token_file` of {what}")));
            let key = ef
                .get("ssh_key")
                .and_then(|k| path_field(ctx, k, &format!("`ssh_key` of {what}")));
            let passphrase = ef
                .get("passphrase_file")
                .and_then(|k| path_field(ctx, k, &format!("`passphrase_file` of {what}")));
            let username = ef
                .get("username")
                .and_then(|u| ctx.nonempty_string(u, &format!("`username` of {what}")));
            let auth = match (token, key) {
                (Some(_), Some(_)) => {
                    ctx.error(
                        ef.pos,
                        format!("{what} has both `token_file` and `ssh_key`; give one"),
                    );
                    None
                }
                (Some(path), None) => Some(GitAuth::TokenFile {
                    path,
                    username: username.unwrap_or_else(|| "x-access-token".into()),
                }),
                (None, Some(path)) => Some(GitAuth::SshKey {
                    path,
                    passphrase_file: passphrase,
                }),
                (None, None) => Some(GitAuth::None),
            };
            match (url, auth) {
                (Some(url), Some(auth)) => out.push(GitEndpointConfig { url, auth }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    });
    let branch = match f.get("branch") {
        None => Some(defaults::branch().to_owned()),
        Some(n) => ctx.nonempty_string(n, "`git.branch`").and_then(|s| {
            check_ref_name(&s)
                .map_err(|e| ctx.error(n.pos, format!("`git.branch` `{s}` {e}")))
                .ok()?;
            Some(s)
        }),
    };
    let failover_timeout = match f.get("failover_timeout") {
        None => Some(defaults::FAILOVER_TIMEOUT),
        Some(n) => ctx.duration(n, "`git.failover_timeout`"),
    };
    Some(GitConfig {
        endpoints: endpoints?,
        branch: branch?,
        failover_timeout: failover_timeout?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_the_defaults() {
        let c = AgentConfig::parse(
            "device_id: pi-01\ngit:\n  endpoints:\n    - url: git://127.0.0.1:9418/fleet.git\n",
            "agent.yaml",
        )
        .expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/fleet"));
        assert_eq!(c.git.branch, "main");
        assert_eq!(c.git.failover_timeout, Duration::from_secs(30));
        assert_eq!(c.keep_releases, 3);
        assert!(c.standalone());
    }

    #[test]
    fn every_problem_is_named_with_its_place() {
        let text = "device_id: pi-01\ndata_dir: relative/dir\ngit:\n  endpoints:\n    - url: ftp://x/y\n  brnch: main\npoll_interval: 5\n";
        let err = AgentConfig::parse(text, "agent.yaml").expect_err("invalid");
        let ConfigError::Invalid(d) = err else {
            panic!("wrong error")
        };
        let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with("agent.yaml:2:11: error: `data_dir` must be an absolute path"),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with("agent.yaml:5:12: error: `url` of endpoint 1"),
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with(
                "agent.yaml:6:3: error: unknown key `brnch` in `git` (did you mean `branch`?)"
            ),
            "{lines:#?}"
        );
        assert!(
            lines[3].starts_with("agent.yaml:7:16: error: `poll_interval`: bad duration"),
            "{lines:#?}"
        );
    }

    #[test]
    fn the_watch_section_has_defaults_overrides_and_checked_bounds() {
        let base = "device_id: pi-01\ngit:\n  endpoints: [git://a/f.git]\n";
        let c = AgentConfig::parse(base, "agent.yaml").expect("valid");
        assert_eq!(c.watch, WatchConfig::default());
        assert_eq!(c.watch.interval, Duration::from_secs(15));
        assert_eq!(
            c.watch.throttled_path(),
            PathBuf::from("/sys/devices/platform/soc/soc:firmware/get_throttled")
        );
        let text = format!("{base}watch:\n  interval: 2s\n  sysfs_root: /tmp/sys\n  power_fail_file: /run/ups/failing\n  power_fail_command: [/usr/bin/ups, --on-battery]\n  temperature_above: 70\n  temperature_hysteresis: 3\n  disk_free_below: 200MB\n  clock_skew_max: 1m\n  drift_check_every: 30s\n");
        let c = AgentConfig::parse(&text, "agent.yaml").unwrap_or_else(|e| panic!("{e}"));
        let w = &c.watch;
        assert_eq!(w.interval, Duration::from_secs(2));
        assert_eq!(
            w.throttled_path(),
            PathBuf::from("/tmp/sys/devices/platform/soc/soc:firmware/get_throttled")
        );
        assert_eq!(w.power_fail_file, Some(PathBuf::from("/run/ups/failing")));
        assert_eq!(
            w.power_fail_command,
            Some(vec!["/usr/bin/ups".to_string(), "--on-battery".to_string()])
        );
        assert_eq!(w.temperature_above, Some(70.0));
        assert_eq!(w.temperature_hysteresis, 3.0);
        assert_eq!(w.disk_free_below, Some(200 << 20));
        assert_eq!(w.clock_skew_max, Duration::from_secs(60));
        assert_eq!(w.drift_check_every, Duration::from_secs(30));
        assert_eq!(c.watch.drift_check_every, Duration::from_secs(30));
        assert_eq!(
            WatchConfig::default().drift_check_every,
            Duration::from_secs(120)
        );
        let boot_only = format!("{base}watch:\n  drift_check_every: 0s\n");
        let c = AgentConfig::parse(&boot_only, "agent.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.watch.drift_check_every, Duration::ZERO);
        let bad = format!("{base}watch:\n  interval: 0s\n  sysfs_root: sys\n  temperature_above: 500\n  power_fail_command: []\n  tempreature_above: 1\n  drift_check_every: 2d\n");
        let ConfigError::Invalid(d) = AgentConfig::parse(&bad, "agent.yaml").expect_err("invalid")
        else {
            panic!("wrong error")
        };
        let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
        let text = lines.join("\n");
        for want in [
            "agent.yaml:9:3: error: unknown key `tempreature_above` in `watch` (did you mean `temperature_above`?)",
            "agent.yaml:5:13: error: `watch.interval` must be between 1s and 5m",
            "agent.yaml:6:15: error: `watch.sysfs_root` must be an absolute path",
            "agent.yaml:7:22: error: `watch.temperature_above` must be between 20 and 150",
            "agent.yaml:8:23: error: `watch.power_fail_command` needs a program",
            "agent.yaml:10:22: error: `watch.drift_check_every` must be 0s (boot only) or between 1s and 24h",
        ] {
            assert!(lines.iter().any(|l| l.starts_with(want)), "missing `{want}` in\n{text}");
        }
    }

    #[test]
    fn controller_and_credentials() {
        let text = "device_id: pi-01\ngit:\n  endpoints:\n    - url: https://h/f.git\n      token_file: /etc/fleet/t\n    - url: ssh://git@h/f.git\n      ssh_key: /etc/fleet/k\ncontroller:\n  url: https://c:8443/\n  token_file: /etc/fleet/device-token\n";
        let c = AgentConfig::parse(text, "agent.yaml").expect("valid");
        assert!(
            matches!(&c.git.endpoints[0].auth, GitAuth::TokenFile { username, .. } if username == "x-access-token")
        );
        assert!(matches!(&c.git.endpoints[1].auth, GitAuth::SshKey { .. }));
        assert_eq!(
            c.controller.as_ref().map(|c| c.url.as_str()),
            Some("https://c:8443")
        );
        let ctl = c.controller.as_ref().expect("controller");
        assert_eq!(ctl.bootstrap_token_file, None);
        assert_eq!(ctl.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn an_endpoint_may_be_a_plain_url_as_in_fleet_yaml() {
        let text = "device_id: pi-01\ngit:\n  endpoints:\n    - git://primary/fleet.git\n    - url: https://mirror/fleet.git\n      token_file: /etc/fleet/t\n";
        let c = AgentConfig::parse(text, "agent.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.git.endpoints,
            [
                GitEndpointConfig {
                    url: "git://primary/fleet.git".into(),
                    auth: GitAuth::None,
                },
                GitEndpointConfig {
                    url: "https://mirror/fleet.git".into(),
                    auth: GitAuth::TokenFile {
                        path: PathBuf::from("/etc/fleet/t"),
                        username: "x-access-token".into(),
                    },
                },
            ]
        );
        // The flow form of fleet.yaml and controller.yaml works too.
        let text = "device_id: pi-01\ngit:\n  endpoints: [git://a/f.git, git://b/f.git]\n";
        let c = AgentConfig::parse(text, "agent.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.git.endpoints.len(), 2);
        // A plain URL is checked like the `url` of a mapping.
        let text = "device_id: pi-01\ngit:\n  endpoints:\n    - ftp://x/y\n";
        let err = AgentConfig::parse(text, "agent.yaml").expect_err("invalid");
        let ConfigError::Invalid(d) = err else {
            panic!("wrong error")
        };
        let first = d.first().map(ToString::to_string).unwrap_or_default();
        assert!(
            first.starts_with("agent.yaml:4:7: error: endpoint 1 of `git.endpoints`: `ftp://x/y`"),
            "{first}"
        );
    }

    #[test]
    fn docker_host_forms_and_precedence() {
        let parse = |extra: &str| AgentConfig::parse(&format!("{GIT}{extra}"), "agent.yaml");
        let c = parse("").expect("valid");
        assert_eq!(c.docker_host, None);
        assert_eq!(c.docker_host().to_string(), "unix:///var/run/docker.sock");
        assert_eq!(c.run_dir, PathBuf::from("/run/fleet"));
        let c = parse("docker_host: unix:///run/user/1000/docker.sock\n").expect("valid");
        assert_eq!(
            c.docker_host,
            Some(DockerHost::Unix("/run/user/1000/docker.sock".into()))
        );
        for (text, addr) in [
            ("tcp://127.0.0.1:2375", "127.0.0.1:2375"),
            ("http://localhost:2375/", "localhost:2375"),
            ("tcp://[::1]:2375", "[::1]:2375"),
        ] {
            let c = parse(&format!("docker_host: {text}\n")).expect("valid");
            assert_eq!(
                c.docker_host,
                Some(DockerHost::Tcp { addr: addr.into() }),
                "{text}"
            );
        }
        // The file wins over the environment; the environment over the default.
        let mut c = parse("docker_host: tcp://127.0.0.1:1\n").expect("valid");
        c.docker_host_from_env(Some("unix:///env.sock"))
            .expect("env");
        assert_eq!(c.docker_host().to_string(), "tcp://127.0.0.1:1");
        let mut c = parse("").expect("valid");
        c.docker_host_from_env(Some("unix:///env.sock"))
            .expect("env");
        assert_eq!(c.docker_host().to_string(), "unix:///env.sock");
        let mut c = parse("").expect("valid");
        c.docker_host_from_env(Some("")).expect("empty is unset");
        assert_eq!(c.docker_host, None);
        let err = parse("")
            .expect("valid")
            .docker_host_from_env(Some("ssh://pi@host"))
            .expect_err("malformed");
        assert!(
            err.to_string().starts_with(
                "invalid environment variable DOCKER_HOST: `ssh://pi@host`: the scheme `ssh://` is not supported"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_docker_host_is_positioned() {
        for (value, says) in [
            ("unix://docker.sock", "a unix socket needs an absolute path"),
            ("/var/run/docker.sock", "it has no scheme"),
            ("tcp://127.0.0.1", "expected host:port"),
            ("tcp://:2375", "expected host:port"),
            ("https://h:2376", "TLS to the engine is not supported"),
        ] {
            let err = AgentConfig::parse(&format!("{GIT}docker_host: {value}\n"), "agent.yaml")
                .expect_err(value);
            let text = err.to_string();
            assert!(
                text.contains(&format!(
                    "agent.yaml:5:14: error: `docker_host` `{value}`: {says}"
                )),
                "{value}: {text}"
            );
        }
        let err = AgentConfig::parse(&format!("{GIT}docker_hots: unix:///x\n"), "agent.yaml")
            .expect_err("unknown key");
        assert!(
            err.to_string()
                .contains("unknown key `docker_hots` in the agent configuration (did you mean `docker_host`?)"),
            "{err}"
        );
    }

    const GIT: &str = "device_id: pi-01\ngit:\n  endpoints:\n    - url: git://h/f.git\n";

    #[test]
    fn controller_long_poll_defaults_on_turns_off_and_is_bounded() {
        let base = format!(
            "{GIT}controller:\n  url: http://c:8080\n  token_file: /etc/fleet/device-token\n"
        );
        let c = AgentConfig::parse(&base, "agent.yaml").expect("valid");
        assert_eq!(
            c.controller.expect("controller").long_poll,
            Duration::from_secs(25)
        );
        let off =
            AgentConfig::parse(&format!("{base}  long_poll: 0s\n"), "agent.yaml").expect("valid");
        assert_eq!(
            off.controller.expect("controller").long_poll,
            Duration::ZERO
        );
        let err = AgentConfig::parse(&format!("{base}  long_poll: 10m\n"), "agent.yaml")
            .expect_err("too long");
        assert!(
            err.to_string()
                .contains("`controller.long_poll` must be at most 2m"),
            "{err}"
        );
    }

    #[test]
    fn controller_bootstrap_token_and_request_timeout() {
        let text = format!("{GIT}controller:\n  url: http://c:8080\n  token_file: /etc/fleet/device-token\n  bootstrap_token_file: /etc/fleet/bootstrap-token\n  request_timeout: 30s\n");
        let c = AgentConfig::parse(&text, "agent.yaml").expect("valid");
        let ctl = c.controller.expect("controller");
        assert_eq!(
            ctl.bootstrap_token_file,
            Some(PathBuf::from("/etc/fleet/bootstrap-token"))
        );
        assert_eq!(ctl.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn controller_key_errors_are_positioned() {
        let text = format!("{GIT}controller:\n  url: ftp://c\n  token_file: device-token\n  bootstrap_token_file: ''\n  request_timeout: 0s\n  request_timout: 5s\n");
        let err = AgentConfig::parse(&text, "agent.yaml").expect_err("invalid");
        let ConfigError::Invalid(d) = err else {
            panic!("wrong error")
        };
        let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(
            lines[0]
                .starts_with("agent.yaml:6:8: error: `controller.url` must start with https://"),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with(
                "agent.yaml:7:15: error: `controller.token_file` must be an absolute path"
            ),
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with("agent.yaml:8:25: error: `controller.bootstrap_token_file`"),
            "{lines:#?}"
        );
        assert!(
            lines[3].starts_with(
                "agent.yaml:9:20: error: `controller.request_timeout` must be between 1s and 5m"
            ),
            "{lines:#?}"
        );
        assert!(
            lines[4].starts_with("agent.yaml:10:3: error: unknown key `request_timout` in `controller` (did you mean `request_timeout`?)"),
            "{lines:#?}"
        );
        let text = format!(
            "{GIT}controller:\n  url: http://c\n  token_file: /t\n  request_timeout: soon\n"
        );
        let err = AgentConfig::parse(&text, "agent.yaml").expect_err("invalid");
        assert!(
            err.to_string()
                .contains("agent.yaml:8:20: error: `controller.request_timeout`: bad duration"),
            "{err}"
        );
    }
}
