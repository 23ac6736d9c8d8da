//! The controller's configuration file (YAML), checked like every Fleet file: every problem
//! with its line and column, unknown keys with a suggestion.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_config::decode::Ctx;
use fleet_config::yaml;
use fleet_config::Diagnostic;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read controller configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file has problems, each with line and column.
    #[error("invalid controller configuration:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// Where releases come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// Primary first, then mirrors.
    pub endpoints: Vec<String>,
    /// The release branch.
    pub branch: String,
    /// How often to look for a new commit (a webhook makes it immediate).
    pub poll_interval: Duration,
    /// How long one endpoint may take before the next is tried.
    pub failover_timeout: Duration,
}

/// HTTPS: the certificate chain and key the controller serves (PEM files, read at start and
/// again on SIGHUP, so a renewed certificate needs no restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Bounds on what one client may hold: connections, and how long each part of a request may
/// Long-poll check-ins: a device may ask the controller to hold its check-in until its desired
/// release, the stop or its safe-mode request changes, so a new release reaches it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongPoll {
    /// The longest a check-in is held (`0s`: never; kept below `limits.request_timeout`).
    pub max: Duration,
    /// At most this many check-ins held at once; beyond it devices are answered at once and
    /// check in at the usual interval (each held check-in keeps a connection open).
    pub max_waiting: usize,
}

impl Default for LongPoll {
    fn default() -> Self {
        LongPoll {
            max: Duration::from_secs(50),
            max_waiting: 1024,
        }
    }
}

/// take. The defaults keep an agent's connection (and TLS session) alive between its 60 s
/// check-ins while a client that sends nothing, or sends slowly, is cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; at the cap new ones wait in the kernel's backlog. Also kept
    /// below the process's file-descriptor limit (see `server`).
    pub max_connections: usize,
    /// Connections open at once from one address; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Reading a request's headers, and an idle keep-alive connection waiting for the next
    /// request.
    pub header_timeout: Duration,
    /// Reading a whole request body.
    pub body_timeout: Duration,
    /// Answering a request, body read included (streams such as `/ui/events` only need their
    /// first bytes within it).
    pub request_timeout: Duration,
    /// A response write the client does not read.
    pub write_timeout: Duration,
    /// The TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// Where the API (and dashboard) listens.
    pub listen: SocketAddr,
    /// State: the SQLite file and the Git cache.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: `sqlite://<data_dir>/fleet.db`.
    pub database_url: Option<String>,
    /// The fleet repository; `None`: releases arrive only by webhook-less manual means (tests).
    pub git: Option<GitSource>,
    /// File with the shared secret of push webhooks; `None` disables the webhook.
    pub webhook_secret_file: Option<PathBuf>,
    /// A device silent this long is offline.
    pub offline_after: Duration,
    /// The check-in interval devices are told.
    pub checkin_interval: Duration,
    /// Lifetime of pairing codes.
    pub pairing_ttl: Duration,
    /// How often the rollout engine runs.
    pub reconcile_interval: Duration,
    /// The leader lease: how long a leader that stops renewing (crashed, or cut off from the
    /// database) keeps the lead before another replica takes over. Renewed every third of it;
    /// a leader that cannot renew steps down by itself before it runs out.
    pub leader_lease: Duration,
    /// HTTPS; `None`: plain HTTP, allowed only on a loopback address or with `insecure_http`.
    pub tls: Option<TlsFiles>,
    /// Allow plain HTTP on an address other than loopback (behind a TLS-terminating proxy on
    /// the same host, or a lab). Tokens and passwords then cross the network in clear.
    pub insecure_http: bool,
    /// File with the token Prometheus must send (`Authorization: Bearer …`) for `/metrics`;
    /// `None`: `/metrics` is open.
    pub metrics_token_file: Option<PathBuf>,
    /// Grafana as people reach it (`https://grafana.example`): the dashboard's device page links
    /// to the shipped device dashboard there (`deploy/grafana/`). `None`: no link.
    pub grafana_url: Option<String>,
    /// Connection and timeout bounds.
    pub limits: Limits,
    /// Long-poll check-ins.
    pub long_poll: LongPoll,
    /// Alerts: notifiers, routes, timings (`crate::notify::config`).
    pub alerting: crate::notify::config::Alerting,
    /// Where logs go besides standard error (`logging.loki`: Grafana Loki).
    pub logging: fleet_logging::LoggingConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("/var/lib/fleet-controller"),
            database_url: None,
            git: None,
            webhook_secret_file: None,
            offline_after: Duration::from_secs(180),
            checkin_interval: Duration::from_secs(60),
            pairing_ttl: Duration::from_secs(15 * 60),
            reconcile_interval: Duration::from_secs(1),
            leader_lease: Duration::from_secs(10),
            tls: None,
            insecure_http: false,
            metrics_token_file: None,
            grafana_url: None,
            limits: Limits::default(),
            long_poll: LongPoll::default(),
            alerting: crate::notify::config::Alerting::default(),
            logging: fleet_logging::LoggingConfig::default(),
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "git",
    "webhook_secret_file",
    "offline_after",
    "checkin_interval",
    "pairing_ttl",
    "reconcile_interval",
    "leader_lease",
    "tls",
    "insecure_http",
    "metrics_token_file",
    "grafana_url",
    "limits",
    "long_poll",
    "alerting",
    "logging",
];
const LONG_POLL_KEYS: &[&str] = &["max", "max_waiting"];
const TLS_KEYS: &[&str] = &["cert_file", "key_file"];
const LIMIT_KEYS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "header_timeout",
    "body_timeout",
    "request_timeout",
    "write_timeout",
    "handshake_timeout",
];
const GIT_KEYS: &[&str] = &["endpoints", "branch", "poll_interval", "failover_timeout"];

impl ControllerConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<ControllerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<ControllerConfig, ConfigError> {
        fleet_config::decode::decode_document(text, file, decode).map_err(ConfigError::Invalid)
    }

    /// Plain HTTP is served only on loopback unless `insecure_http` says otherwise: device
    /// tokens, API tokens and passwords must not cross a network in clear by accident.
    pub fn check_transport(&self) -> Result<(), String> {
        if self.tls.is_none() && !self.insecure_http && !self.listen.ip().is_loopback() {
            return Err(format!(
                "`listen` {} is not a loopback address and no `tls` is configured: serve HTTPS \
                 (`tls: {{cert_file, key_file}}`), listen on 127.0.0.1, or set `insecure_http: true` \
                 if a TLS proxy on this host terminates HTTPS",
                self.listen
            ));
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("fleet.db").display()
            )
        })
    }
}

fn decode(ctx: &mut Ctx<'_>, root: &yaml::Node) -> Option<ControllerConfig> {
    let mut cfg = ControllerConfig::default();
    if root.is_null() {
        return Some(cfg);
    }
    let f = ctx.map(root, "the controller configuration", TOP_KEYS)?;
    let mut ok = true;
    if let Some(n) = f.get("listen") {
        match ctx
            .nonempty_string(n, "`listen`")
            .map(|s| (s.parse::<SocketAddr>(), s))
        {
            Some((Ok(a), _)) => cfg.listen = a,
            Some((Err(_), s)) => {
                ctx.error(n.pos, format!("`listen` must be ADDRESS:PORT, found `{s}`"));
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(n) = f.get("data_dir") {
        match path(ctx, n, "`data_dir`") {
            Some(p) => cfg.data_dir = p,
            None => ok = false,
        }
    }
    if let Some(n) = f.get("database_url") {
        match ctx.nonempty_string(n, "`database_url`") {
            Some(u)
                if u.starts_with("sqlite:")
                    || u.starts_with("postgres://")
                    || u.starts_with("postgresql://") =>
            {
                cfg.database_url = Some(u)
            }
            Some(u) => {
                ctx.error(
                    n.pos,
                    format!(
                        "`database_url` must start with sqlite: or postgres://, found `{}`",
                        crate::db::redact(&u)
                    ),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(n) = f.get("webhook_secret_file") {
        match path(ctx, n, "`webhook_secret_file`") {
            Some(p) => cfg.webhook_secret_file = Some(p),
            None => ok = false,
        }
    }
    let mut dur = |ctx: &mut Ctx<'_>, key: &str, slot: &mut Duration, min: Duration| {
        if let Some(n) = f.get(key) {
            match ctx.duration(n, &format!("`{key}`")) {
                Some(d) if d >= min => *slot = d,
                Some(_) => {
                    ctx.error(
                        n.pos,
                        format!(
                            "`{key}` must be at least {}",
                            fleet_config::units::format_duration(min)
                        ),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
    };
    dur(
        ctx,
        "offline_after",
        &mut cfg.offline_after,
        Duration::from_secs(1),
    );
    dur(
        ctx,
        "checkin_interval",
        &mut cfg.checkin_interval,
        Duration::from_secs(1),
    );
    dur(
        ctx,
        "pairing_ttl",
        &mut cfg.pairing_ttl,
        Duration::from_secs(10),
    );
    dur(
        ctx,
        "reconcile_interval",
        &mut cfg.reconcile_interval,
        Duration::from_millis(100),
    );
    dur(
        ctx,
        "leader_lease",
        &mut cfg.leader_lease,
        Duration::from_secs(1),
    );
    if let Some(n) = f.get("git") {
        match decode_git(ctx, n) {
            Some(g) => cfg.git = Some(g),
            None => ok = false,
        }
    }
    if let Some(n) = f.get("tls") {
        match decode_tls(ctx, n) {
            Some(t) => cfg.tls = Some(t),
            None => ok = false,
        }
    }
    if let Some(n) = f.get("insecure_http") {
        match ctx.bool(n, "`insecure_http`") {
            Some(b) => cfg.insecure_http = b,
            None => ok = false,
        }
    }
    if let Some(n) = f.get("grafana_url") {
        match ctx.nonempty_string(n, "`grafana_url`") {
            Some(u)
                if (u.starts_with("http://") || u.starts_with("https://"))
                    && reqwest::Url::parse(&u).is_ok() =>
            {
                cfg.grafana_url = Some(u.trim_end_matches('/').to_owned())
            }
            Some(u) => {
                ctx.error(
                    n.pos,
                    format!("`grafana_url` must be an http:// or https:// URL, found `{u}`"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(n) = f.get("metrics_token_file") {
        match path(ctx, n, "`metrics_token_file`") {
            Some(p) => cfg.metrics_token_file = Some(p),
            None => ok = false,
        }
    }
    if let Some(n) = f.get("limits") {
        match decode_limits(ctx, n) {
            Some(l) => cfg.limits = l,
            None => ok = false,
        }
    }
    if let Some(n) = f.get("long_poll") {
        match decode_long_poll(ctx, n) {
            Some(l)
                if l.max + Duration::from_secs(5) > cfg.limits.request_timeout
                    && !l.max.is_zero() =>
            {
                ctx.error(
                    n.pos,
                    format!(
                        "`long_poll.max` ({}) must be at least 5s below `limits.request_timeout` ({}), or a held check-in is cut off as a slow request",
                        fleet_config::units::format_duration(l.max),
                        fleet_config::units::format_duration(cfg.limits.request_timeout)
                    ),
                );
                ok = false;
            }
            Some(l) => cfg.long_poll = l,
            None => ok = false,
        }
    }
    if let Some(n) = f.get("alerting") {
        match crate::notify::config::decode(ctx, n) {
            Some(a) => cfg.alerting = a,
            None => ok = false,
        }
    }
    if let Some(n) = f.get("logging") {
        match fleet_logging::config::decode(ctx, n) {
            Some(l) => cfg.logging = l,
            None => ok = false,
        }
    }
    if ok {
        if let Err(e) = cfg.check_transport() {
            let pos = f.get("listen").map_or(root.pos, |n| n.pos);
            ctx.error(pos, e);
            ok = false;
        }
    }
    ok.then_some(cfg)
}

fn decode_tls(ctx: &mut Ctx<'_>, n: &yaml::Node) -> Option<TlsFiles> {
    let f = ctx.map(n, "`tls`", TLS_KEYS)?;
    let cert = f
        .required(ctx, "cert_file", "`tls`")
        .and_then(|c| path(ctx, c, "`tls.cert_file`"));
    let key = f
        .required(ctx, "key_file", "`tls`")
        .and_then(|k| path(ctx, k, "`tls.key_file`"));
    Some(TlsFiles {
        cert_file: cert?,
        key_file: key?,
    })
}

fn decode_limits(ctx: &mut Ctx<'_>, n: &yaml::Node) -> Option<Limits> {
    let f = ctx.map(n, "`limits`", LIMIT_KEYS)?;
    let mut l = Limits::default();
    let mut ok = true;
    for (key, slot) in [
        ("max_connections", &mut l.max_connections),
        ("max_connections_per_ip", &mut l.max_connections_per_ip),
    ] {
        if let Some(v) = f.get(key) {
            match ctx.uint(v, &format!("`limits.{key}`")) {
                Some(x) if x >= 1 => *slot = usize::try_from(x).unwrap_or(usize::MAX),
                Some(_) => {
                    ctx.error(v.pos, format!("`limits.{key}` must be at least 1"));
                    ok = false;
                }
                None => ok = false,
            }
        }
    }
    for (key, slot) in [
        ("header_timeout", &mut l.header_timeout),
        ("body_timeout", &mut l.body_timeout),
        ("request_timeout", &mut l.request_timeout),
        ("write_timeout", &mut l.write_timeout),
        ("handshake_timeout", &mut l.handshake_timeout),
    ] {
        if let Some(v) = f.get(key) {
            match ctx.duration(v, &format!("`limits.{key}`")) {
                Some(d) if d >= Duration::from_millis(100) => *slot = d,
                Some(_) => {
                    ctx.error(v.pos, format!("`limits.{key}` must be at least 100ms"));
                    ok = false;
                }
                None => ok = false,
            }
        }
    }
    ok.then_some(l)
}

fn decode_long_poll(ctx: &mut Ctx<'_>, n: &yaml::Node) -> Option<LongPoll> {
    let f = ctx.map(n, "`long_poll`", LONG_POLL_KEYS)?;
    let mut l = LongPoll::default();
    let mut ok = true;
    if let Some(v) = f.get("max") {
        match ctx.duration(v, "`long_poll.max`") {
            Some(d) => l.max = d,
            None => ok = false,
        }
    }
    if let Some(v) = f.get("max_waiting") {
        match ctx.uint(v, "`long_poll.max_waiting`") {
            Some(x) => l.max_waiting = usize::try_from(x).unwrap_or(usize::MAX),
            None => ok = false,
        }
    }
    ok.then_some(l)
}

fn path(ctx: &mut Ctx<'_>, n: &yaml::Node, what: &str) -> Option<PathBuf> {
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

fn decode_git(ctx: &mut Ctx<'_>, n: &yaml::Node) -> Option<GitSource> {
    let f = ctx.map(n, "`git`", GIT_KEYS)?;
    let endpoints = f.required(ctx, "endpoints", "`git`").and_then(|e| {
        let list: Vec<String> = ctx
            .string_list(e, "`git.endpoints`", false)?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        if list.is_empty() {
            ctx.error(
                e.pos,
                "`git.endpoints` is empty; give the primary and, ideally, a mirror",
            );
            return None;
        }
        Some(list)
    });
    let branch = match f.get("branch") {
        Some(b) => ctx.nonempty_string(b, "`git.branch`"),
        None => Some("main".to_owned()),
    };
    let d = |ctx: &mut Ctx<'_>, key: &str, default: u64| match f.get(key) {
        Some(x) => ctx.duration(x, &format!("`git.{key}`")),
        None => Some(Duration::from_secs(default)),
    };
    let poll_interval = d(ctx, "poll_interval", 30);
    let failover_timeout = d(ctx, "failover_timeout", 10);
    Some(GitSource {
        endpoints: endpoints?,
        branch: branch?,
        poll_interval: poll_interval?,
        failover_timeout: failover_timeout?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = ControllerConfig::parse("", "c.yaml").expect("valid");
        assert_eq!(c, ControllerConfig::default());
        assert!(c
            .database_url()
            .starts_with("sqlite:///var/lib/fleet-controller/fleet.db"));
    }

    #[test]
    fn a_full_file() {
        let c = ControllerConfig::parse(
            "listen: 127.0.0.1:9090\ndata_dir: /tmp/x\ndatabase_url: postgres://u:p@h/db\n\
             git:\n  endpoints: [git://a/fleet.git, git://b/fleet.git]\n  branch: release\n  poll_interval: 5s\n\
             offline_after: 2m\nleader_lease: 3s\n",
            "c.yaml",
        )
        .expect("valid");
        assert_eq!(c.listen.port(), 9090);
        let g = c.git.expect("git");
        assert_eq!(g.endpoints.len(), 2);
        assert_eq!(g.branch, "release");
        assert_eq!(g.poll_interval, Duration::from_secs(5));
        assert_eq!(c.offline_after, Duration::from_secs(120));
        assert_eq!(c.leader_lease, Duration::from_secs(3));
    }

    #[test]
    fn grafana_url_must_be_a_web_url() {
        let c = ControllerConfig::parse("grafana_url: https://grafana.example/\n", "c.yaml")
            .expect("valid");
        assert_eq!(c.grafana_url.as_deref(), Some("https://grafana.example"));
        let err = ControllerConfig::parse("grafana_url: grafana.example\n", "c.yaml")
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("c.yaml:1:14") && err.contains("`grafana_url` must be an http"),
            "{err}"
        );
    }

    #[test]
    fn a_lease_under_a_second_is_refused() {
        let err = ControllerConfig::parse("leader_lease: 300ms\n", "c.yaml").expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("c.yaml:1:15") && text.contains("`leader_lease` must be at least 1s"),
            "{text}"
        );
    }

    #[test]
    fn every_problem_is_named_with_its_place() {
        let err = ControllerConfig::parse(
            "listen: nowhere\nofline_after: 3m\ndatabase_url: mysql://x\ngit:\n  endpoints: []\n",
            "c.yaml",
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("c.yaml:1:9: error: `listen` must be ADDRESS:PORT"),
            "{text}"
        );
        assert!(
            text.contains("c.yaml:2:1") && text.contains("offline_after"),
            "{text}"
        );
        assert!(
            text.contains("c.yaml:3:15") && text.contains("mysql"),
            "{text}"
        );
        assert!(
            text.contains("c.yaml:5:14") && text.contains("is empty"),
            "{text}"
        );
    }
}
