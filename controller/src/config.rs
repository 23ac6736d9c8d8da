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
    if let Some(n) = f.get("git") {
        match decode_git(ctx, n) {
            Some(g) => cfg.git = Some(g),
            None => ok = false,
        }
    }
    ok.then_some(cfg)
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
             offline_after: 2m\n",
            "c.yaml",
        )
        .expect("valid");
        assert_eq!(c.listen.port(), 9090);
        let g = c.git.expect("git");
        assert_eq!(g.endpoints.len(), 2);
        assert_eq!(g.branch, "release");
        assert_eq!(g.poll_interval, Duration::from_secs(5));
        assert_eq!(c.offline_after, Duration::from_secs(120));
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
