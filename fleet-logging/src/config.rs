//! `logging:` in agent.yaml and controller.yaml, decoded like the rest of each file: every
//! problem with its line and column, unknown keys refused with a suggestion.
//!
//! ```yaml
//! logging:
//!   loki:                                  # absent: logs go to the console only
//!     url: https://loki.example.net:3100   # Loki's base URL; /loki/api/v1/push is appended
//!     labels: { site: berlin }             # static labels of every stream (besides device, component, level)
//!     tenant: fleet                        # optional: X-Scope-OrgID (multi-tenant Loki)
//!     bearer_token_file: /etc/fleet/loki-token   # optional: Authorization: Bearer <file's content>
//!     basic_auth:                          # optional, instead of the bearer token
//!       username: fleet
//!       password_file: /etc/fleet/loki-password
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use fleet_config::decode::Ctx;
use fleet_config::yaml::{self, Value};

/// The path Loki takes pushes on, appended to [`LokiConfig::url`].
pub const PUSH_PATH: &str = "/loki/api/v1/push";

/// Labels the binaries set themselves; a static label may not take their names.
pub const RESERVED_LABELS: [(&str, &str); 3] = [
    (
        "device",
        "the agent's device id, the controller's host name",
    ),
    ("component", "`agent` or `controller`"),
    ("level", "the event's level"),
];

/// Longest tenant id Loki accepts.
const TENANT_MAX: usize = 150;

/// `logging:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoggingConfig {
    /// Push the logs to Loki as well; `None`: the console only.
    pub loki: Option<LokiConfig>,
}

/// `logging.loki:`: where and how logs are pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LokiConfig {
    /// Loki's base URL (`http` or `https`, host, port, an optional path prefix when Loki sits
    /// behind a proxy), without a trailing slash.
    pub url: String,
    /// Static labels added to every stream, besides `device`, `component` and `level`.
    pub labels: BTreeMap<String, String>,
    /// `X-Scope-OrgID`: the tenant, for a multi-tenant Loki.
    pub tenant: Option<String>,
    /// How requests authenticate.
    pub auth: LokiAuth,
}

impl LokiConfig {
    /// Where pushes go: the base URL with [`PUSH_PATH`].
    pub fn push_url(&self) -> String {
        format!("{}{PUSH_PATH}", self.url)
    }
}

/// How pushes authenticate. Secrets are read from their file at every push, so a rotated
/// token needs no restart, and an unreadable file fails pushes (counted, warned) rather than
/// the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LokiAuth {
    /// No credentials (Loki on a trusted network, or a proxy on the same host).
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The file holding the token.
        token_file: PathBuf,
    },
    /// HTTP basic authentication (Grafana Cloud, a proxy with a password file).
    Basic {
        /// The user name.
        username: String,
        /// The file holding the password.
        password_file: PathBuf,
    },
}

const LOGGING_KEYS: &[&str] = &["loki"];
const LOKI_KEYS: &[&str] = &["url", "labels", "tenant", "bearer_token_file", "basic_auth"];
const BASIC_AUTH_KEYS: &[&str] = &["username", "password_file"];

/// Decodes `logging:` (the node under the key); `None` after reporting every problem.
pub fn decode(ctx: &mut Ctx<'_>, node: &yaml::Node) -> Option<LoggingConfig> {
    if node.is_null() {
        return Some(LoggingConfig::default());
    }
    let f = ctx.map(node, "`logging`", LOGGING_KEYS)?;
    let loki = match f.get("loki") {
        None => None,
        Some(n) if n.is_null() => None,
        Some(n) => Some(decode_loki(ctx, n)?),
    };
    Some(LoggingConfig { loki })
}

fn decode_loki(ctx: &mut Ctx<'_>, node: &yaml::Node) -> Option<LokiConfig> {
    let f = ctx.map(node, "`logging.loki`", LOKI_KEYS)?;
    let url = f
        .required(ctx, "url", "`logging.loki`")
        .and_then(|n| decode_url(ctx, n));
    let labels = match f.get("labels") {
        None => Some(BTreeMap::new()),
        Some(n) => decode_labels(ctx, n),
    };
    let tenant = match f.get("tenant") {
        None => Some(None),
        Some(n) => {
            ctx.nonempty_string(n, "`logging.loki.tenant`")
                .and_then(|t| match check_tenant(&t) {
                    Ok(()) => Some(Some(t)),
                    Err(why) => {
                        ctx.error(n.pos, format!("`logging.loki.tenant` `{t}` {why}"));
                        None
                    }
                })
        }
    };
    let bearer = f
        .get("bearer_token_file")
        .map(|n| path(ctx, n, "`logging.loki.bearer_token_file`"));
    let basic = f.get("basic_auth").map(|n| decode_basic(ctx, n));
    let auth = match (bearer, basic) {
        (Some(_), Some(_)) => {
            ctx.error(
                f.pos,
                "`logging.loki` has both `bearer_token_file` and `basic_auth`; give one",
            );
            None
        }
        (Some(token_file), None) => token_file.map(|token_file| LokiAuth::Bearer { token_file }),
        (None, Some(basic)) => basic,
        (None, None) => Some(LokiAuth::None),
    };
    Some(LokiConfig {
        url: url?,
        labels: labels?,
        tenant: tenant?,
        auth: auth?,
    })
}

fn decode_url(ctx: &mut Ctx<'_>, n: &yaml::Node) -> Option<String> {
    let s = ctx.nonempty_string(n, "`logging.loki.url`")?;
    match check_url(s.trim()) {
        Ok(url) => Some(url),
        Err(why) => {
            ctx.error(n.pos, format!("`logging.loki.url` `{s}` {why}"));
            None
        }
    }
}

/// Loki's base URL: http(s), a host, no credentials, query or fragment, and not already the
/// push path. Returns it without a trailing slash.
fn check_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s).map_err(|e| {
        format!("is not a URL ({e}); give Loki's base URL such as http://127.0.0.1:3100")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must start with http:// or https://, not {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "carries credentials: put them in `basic_auth` (with a `password_file`) instead".into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    let base = url.as_str().trim_end_matches('/');
    if base.ends_with(PUSH_PATH) {
        return Err(format!(
            "ends with the push path; give Loki's base URL, {PUSH_PATH} is appended"
        ));
    }
    Ok(base.to_owned())
}

fn decode_labels(ctx: &mut Ctx<'_>, n: &yaml::Node) -> Option<BTreeMap<String, String>> {
    let Value::Map(entries) = &n.value else {
        ctx.error(
            n.pos,
            format!(
                "`logging.loki.labels` must be a mapping of label names to values, such as {{ site: berlin }}, found {}",
                n.kind_name()
            ),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries {
        let Some(name) = k.scalar() else {
            ctx.error(
                k.pos,
                "label names in `logging.loki.labels` must be plain names",
            );
            ok = false;
            continue;
        };
        if let Err(why) = check_label_name(name) {
            ctx.error(
                k.pos,
                format!("label name `{name}` in `logging.loki.labels` {why}"),
            );
            ok = false;
            continue;
        }
        let what = format!("the value of label `{name}` in `logging.loki.labels`");
        match ctx.nonempty_string(v, &what) {
            Some(value) => {
                out.insert(name.to_owned(), value);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A Loki label name: `[A-Za-z_][A-Za-z0-9_]*`, not `__`-prefixed (Loki's own), not one the
/// binaries set.
fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(
            "is not a valid Loki label name: letters, digits and `_`, not starting with a digit"
                .into(),
        );
    }
    if name.starts_with("__") {
        return Err("starts with `__`, which Loki reserves for itself".into());
    }
    if let Some((_, what)) = RESERVED_LABELS.iter().find(|(n, _)| *n == name) {
        return Err(format!(
            "is set by Fleet itself ({what}); choose another name"
        ));
    }
    Ok(())
}

/// A tenant id as Loki accepts it: at most 150 of letters, digits and `!-_.*'()`, not `.` or
/// `..`.
fn check_tenant(t: &str) -> Result<(), String> {
    let ok_chars = t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c));
    if !ok_chars || t.len() > TENANT_MAX || t == "." || t == ".." {
        return Err(format!(
            "is not a Loki tenant id: at most {TENANT_MAX} of letters, digits and !-_.*'()"
        ));
    }
    Ok(())
}

fn decode_basic(ctx: &mut Ctx<'_>, n: &yaml::Node) -> Option<LokiAuth> {
    let f = ctx.map(n, "`logging.loki.basic_auth`", BASIC_AUTH_KEYS)?;
    let username = f
        .required(ctx, "username", "`logging.loki.basic_auth`")
        .and_then(|n| {
            let u = ctx.nonempty_string(n, "`logging.loki.basic_auth.username`")?;
            if u.contains(':') {
                ctx.error(
                    n.pos,
                    "`logging.loki.basic_auth.username` must not contain `:`",
                );
                return None;
            }
            Some(u)
        });
    let password_file = f
        .required(ctx, "password_file", "`logging.loki.basic_auth`")
        .and_then(|p| path(ctx, p, "`logging.loki.basic_auth.password_file`"));
    Some(LokiAuth::Basic {
        username: username?,
        password_file: password_file?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &[&str] = &["logging"];

    fn parse(text: &str) -> Result<LoggingConfig, Vec<String>> {
        fleet_config::decode::decode_document(text, "c.yaml", |ctx, root| {
            let f = ctx.map(root, "the file", ROOT)?;
            match f.get("logging") {
                Some(n) => decode(ctx, n),
                None => Some(LoggingConfig::default()),
            }
        })
        .map_err(|d| d.iter().map(ToString::to_string).collect())
    }

    fn errors(text: &str) -> String {
        parse(text).expect_err("invalid").join("\n")
    }

    #[test]
    fn absent_or_empty_means_the_console_only() {
        assert_eq!(
            parse("logging:\n").expect("valid"),
            LoggingConfig::default()
        );
        assert_eq!(
            parse("logging:\n  loki:\n").expect("valid"),
            LoggingConfig::default()
        );
    }

    #[test]
    fn a_full_section() {
        let c = parse(
            "logging:\n  loki:\n    url: https://loki.example.net:3100/\n    labels: { site: berlin, rack_2: b }\n    tenant: fleet-prod\n    basic_auth:\n      username: fleet\n      password_file: /etc/fleet/loki-password\n",
        )
        .expect("valid");
        let loki = c.loki.expect("loki");
        assert_eq!(loki.url, "https://loki.example.net:3100");
        assert_eq!(
            loki.push_url(),
            "https://loki.example.net:3100/loki/api/v1/push"
        );
        assert_eq!(
            loki.labels.iter().collect::<Vec<_>>(),
            [
                (&"rack_2".to_owned(), &"b".to_owned()),
                (&"site".to_owned(), &"berlin".to_owned())
            ]
        );
        assert_eq!(loki.tenant.as_deref(), Some("fleet-prod"));
        assert_eq!(
            loki.auth,
            LokiAuth::Basic {
                username: "fleet".into(),
                password_file: "/etc/fleet/loki-password".into()
            }
        );
        let c = parse("logging:\n  loki:\n    url: http://127.0.0.1:3100/prefix\n    bearer_token_file: /etc/fleet/t\n")
            .expect("valid");
        let loki = c.loki.expect("loki");
        assert_eq!(
            loki.push_url(),
            "http://127.0.0.1:3100/prefix/loki/api/v1/push"
        );
        assert_eq!(
            loki.auth,
            LokiAuth::Bearer {
                token_file: "/etc/fleet/t".into()
            }
        );
        assert!(loki.labels.is_empty());
    }

    #[test]
    fn bad_urls_are_positioned() {
        for (url, says) in [
            (
                "ftp://loki:3100",
                "must start with http:// or https://, not ftp://",
            ),
            ("loki:3100", "must start with http:// or https://"),
            ("not a url", "is not a URL"),
            ("http://u:p@loki:3100", "carries credentials"),
            ("http://loki:3100/?x=1", "must not have a query"),
            (
                "http://loki:3100/loki/api/v1/push",
                "ends with the push path; give Loki's base URL",
            ),
        ] {
            let text = errors(&format!("logging:\n  loki:\n    url: \"{url}\"\n"));
            assert!(
                text.contains(&format!(
                    "c.yaml:3:10: error: `logging.loki.url` `{url}` {says}"
                )),
                "{url}: {text}"
            );
        }
        let text = errors("logging:\n  loki:\n    labels: { a: b }\n");
        assert!(
            text.contains("c.yaml:3:5: error: `logging.loki` is missing the required key `url`"),
            "{text}"
        );
    }

    #[test]
    fn every_label_problem_is_reported() {
        let text = errors(
            "logging:\n  loki:\n    url: http://127.0.0.1:3100\n    labels:\n      site: berlin\n      9lives: x\n      rack-2: y\n      __name: z\n      device: pi\n      empty: ''\n",
        );
        for want in [
            "c.yaml:6:7: error: label name `9lives` in `logging.loki.labels` is not a valid Loki label name",
            "c.yaml:7:7: error: label name `rack-2` in `logging.loki.labels` is not a valid Loki label name",
            "c.yaml:8:7: error: label name `__name` in `logging.loki.labels` starts with `__`",
            "c.yaml:9:7: error: label name `device` in `logging.loki.labels` is set by Fleet itself",
            "c.yaml:10:14: error: the value of label `empty` in `logging.loki.labels` must not be empty",
        ] {
            assert!(text.contains(want), "missing `{want}` in\n{text}");
        }
        assert_eq!(text.lines().count(), 5, "{text}");
        let text = errors(
            "logging:\n  loki:\n    url: http://127.0.0.1:3100\n    labels: [site=berlin]\n",
        );
        assert!(
            text.contains("c.yaml:4:13: error: `logging.loki.labels` must be a mapping"),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_and_auth_conflicts() {
        let text = errors("logging:\n  lokki: {}\n");
        assert!(
            text.contains(
                "c.yaml:2:3: error: unknown key `lokki` in `logging` (did you mean `loki`?)"
            ),
            "{text}"
        );
        let text = errors(
            "logging:\n  loki:\n    url: http://127.0.0.1:3100\n    lables: { a: b }\n    tenant: 'a b'\n    bearer_token_file: token\n    basic_auth: { username: 'a:b', password_fle: /x }\n",
        );
        for want in [
            "c.yaml:4:5: error: unknown key `lables` in `logging.loki` (did you mean `labels`?)",
            "c.yaml:5:13: error: `logging.loki.tenant` `a b` is not a Loki tenant id",
            "c.yaml:6:24: error: `logging.loki.bearer_token_file` must be an absolute path, found `token`",
            "c.yaml:7:36: error: unknown key `password_fle` in `logging.loki.basic_auth` (did you mean `password_file`?)",
            "c.yaml:7:29: error: `logging.loki.basic_auth.username` must not contain `:`",
            "c.yaml:7:17: error: `logging.loki.basic_auth` is missing the required key `password_file`",
            "c.yaml:3:5: error: `logging.loki` has both `bearer_token_file` and `basic_auth`; give one",
        ] {
            assert!(text.contains(want), "missing `{want}` in\n{text}");
        }
    }
}
