//! The `alerting:` section of controller.yaml: the notifiers, the routes that pick them by
//! severity, the dead man's switch and the alert engine's timings. Decoded like the rest of
//! the file: every problem with its line and column, unknown keys with a suggestion, a key
//! of another notifier kind named as such, all problems at once.
//!
//! Routing rule (documented in README.md): **every** route whose severities include an
//! alert's severity sends it, to the union of their `notifiers` (each notifier once, in the
//! order the routes and their lists give). Routes match on severity alone, so "first match
//! wins" would only make later routes for the same severity dead configuration; a catch-all
//! route (no `severity`) adds a receiver to everything. A severity no route takes is kept and
//! shown on the dashboard, not sent.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use fleet_config::alerts::{AlertName, Severity};
use fleet_config::decode::{suggest, Ctx, KeyRules};
use fleet_config::units::format_duration;
use fleet_config::yaml::{Node, Value};
use fleet_config::Pos;
use lettre::message::Mailbox;
use reqwest::Url;

/// The whole `alerting:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerting {
    /// The receivers; none: alerts are kept and shown, not sent.
    pub notifiers: Vec<NotifierConfig>,
    /// Which notifiers each severity goes to (every matching route; see the module's doc).
    pub routes: Vec<Route>,
    /// A message's runbook link is this followed by `<AlertName>.md`.
    pub runbook_url_base: String,
    /// The controller as people reach it (`https://fleet.example`, no trailing `/`): dashboard
    /// links in messages. `None`: messages carry no dashboard link.
    pub external_url: Option<String>,
    /// The dead man's switch the controller pings; `None`: no heartbeat.
    pub heartbeat: Option<Heartbeat>,
    /// How often the alert engine runs.
    pub evaluate_every: Duration,
    /// How long after an alert first fires its siblings are gathered into one message.
    pub group_wait: Duration,
    /// At most one "updated" message per alert this often.
    pub group_interval: Duration,
    /// An unacknowledged critical alert is sent again this often.
    pub repeat_interval: Duration,
    /// An unacknowledged critical alert also goes to its routes' `escalate_to` after this.
    pub escalate_after: Duration,
    /// A condition must stay clear this long before the alert resolves (flap damping).
    pub resolve_after: Duration,
}

/// The default `runbook_url_base`: the runbooks' directory in the Fleet repository.
pub const DEFAULT_RUNBOOK_URL_BASE: &str = "runbooks/";
/// The default per-notifier request timeout.
pub const DEFAULT_NOTIFIER_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `evaluate_every`.
pub const DEFAULT_EVALUATE_EVERY: Duration = Duration::from_secs(5);
/// The default `group_wait`.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(10);
/// The default `group_interval`.
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The default `repeat_interval`.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// The default `escalate_after`.
pub const DEFAULT_ESCALATE_AFTER: Duration = Duration::from_secs(30 * 60);
/// The default `resolve_after`.
pub const DEFAULT_RESOLVE_AFTER: Duration = Duration::from_secs(2 * 60);
/// Telegram's Bot API, the default `api_url`.
pub const DEFAULT_TELEGRAM_API_URL: &str = "https://api.telegram.org";

impl Default for Alerting {
    fn default() -> Self {
        Alerting {
            notifiers: Vec::new(),
            routes: Vec::new(),
            runbook_url_base: DEFAULT_RUNBOOK_URL_BASE.to_owned(),
            external_url: None,
            heartbeat: None,
            evaluate_every: DEFAULT_EVALUATE_EVERY,
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            escalate_after: DEFAULT_ESCALATE_AFTER,
            resolve_after: DEFAULT_RESOLVE_AFTER,
        }
    }
}

impl Alerting {
    /// The runbook link of `alert`: `runbook_url_base` + `<AlertName>.md`.
    pub fn runbook_url(&self, alert: AlertName) -> String {
        format!("{}{}.md", self.runbook_url_base, alert.as_str())
    }

    /// The names of the notifiers alerts of `severity` go to: every matching route's
    /// `notifiers`, in order, each once. Empty: the alert is kept and shown, not sent.
    pub fn notifiers_for(&self, severity: Severity) -> Vec<&str> {
        collect(&self.routes, severity, |r| &r.notifiers)
    }

    /// The names of the notifiers an unacknowledged alert of `severity` escalates to (every
    /// matching route's `escalate_to`, each once).
    pub fn escalation_for(&self, severity: Severity) -> Vec<&str> {
        collect(&self.routes, severity, |r| &r.escalate_to)
    }

    /// The notifier named `name`.
    pub fn notifier(&self, name: &str) -> Option<&NotifierConfig> {
        self.notifiers.iter().find(|n| n.name == name)
    }
}

fn collect<'a>(
    routes: &'a [Route],
    severity: Severity,
    pick: impl Fn(&'a Route) -> &'a Vec<String>,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for r in routes.iter().filter(|r| r.severities.contains(&severity)) {
        for n in pick(r) {
            if !out.contains(&n.as_str()) {
                out.push(n);
            }
        }
    }
    out
}

/// One receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifierConfig {
    /// Its name, unique, used by routes and `notifiers test --name`.
    pub name: String,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// What it is and its settings.
    pub kind: NotifierKind,
}

/// A notifier's kind and the settings of that kind.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifierKind {
    /// A generic JSON webhook.
    Webhook(WebhookConfig),
    /// A Slack incoming webhook.
    Slack(SlackConfig),
    /// A Telegram chat, through a bot.
    Telegram(TelegramConfig),
    /// E-mail over SMTP.
    Email(EmailConfig),
}

impl NotifierKind {
    /// Its `kind:` in controller.yaml.
    pub fn name(&self) -> &'static str {
        match self {
            NotifierKind::Webhook(_) => "webhook",
            NotifierKind::Slack(_) => "slack",
            NotifierKind::Telegram(_) => "telegram",
            NotifierKind::Email(_) => "email",
        }
    }
}

/// `kind: webhook`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// Where the message is POSTed (http or https).
    pub url: Url,
    /// A file holding a token sent as `Authorization: Bearer …`.
    pub bearer_token_file: Option<PathBuf>,
    /// A file holding the key of the body's HMAC-SHA256 signature (`X-Fleet-Signature-256`).
    pub secret_file: Option<PathBuf>,
}

/// `kind: slack`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackConfig {
    /// The file holding the incoming webhook's URL (the URL is the secret).
    pub url_file: PathBuf,
}

/// `kind: telegram`.
#[derive(Debug, Clone, PartialEq)]
pub struct TelegramConfig {
    /// The file holding the bot's token.
    pub bot_token_file: PathBuf,
    /// The chat: its number (`-100…` for groups and channels) or a public channel's `@name`.
    pub chat_id: String,
    /// The Bot API's base URL.
    pub api_url: Url,
}

/// `kind: email`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailConfig {
    /// The relay.
    pub smtp: SmtpAddress,
    /// How the connection is protected.
    pub security: SmtpSecurity,
    /// The login, with `password_file`.
    pub username: Option<String>,
    /// The file holding the password.
    pub password_file: Option<PathBuf>,
    /// Trust only this CA (PEM) for the relay's certificate, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The sender.
    pub from: Mailbox,
    /// The recipients (at least one).
    pub to: Vec<Mailbox>,
}

/// `host:port` of an SMTP relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpAddress {
    /// A host name or an IP address (without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl SmtpAddress {
    /// Whether the host is this machine (where `security: none` is allowed).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for SmtpAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How an SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587 or 25).
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No encryption: only to a relay on loopback.
    None,
}

impl SmtpSecurity {
    /// Its name in controller.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpSecurity::StartTls => "starttls",
            SmtpSecurity::Tls => "tls",
            SmtpSecurity::None => "none",
        }
    }
}

/// One route: alerts of these severities go to these notifiers.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The severities it takes (all, when `severity` is not given).
    pub severities: Vec<Severity>,
    /// Where the alerts go.
    pub notifiers: Vec<String>,
    /// Where an unacknowledged critical alert also goes after `escalate_after`.
    pub escalate_to: Vec<String>,
}

/// The dead man's switch: a URL pinged every `interval` while the alerting works (the
/// healthchecks.io pattern), so a controller that stops is noticed from outside.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// What is pinged (GET).
    pub url: Url,
    /// How often.
    pub interval: Duration,
    /// How long one ping may take.
    pub timeout: Duration,
}

/// A duration setting with its default and sane bounds.
struct Timing {
    key: &'static str,
    default: Duration,
    min: Duration,
    max: Duration,
    /// Why the bound, said when it is crossed.
    why: &'static str,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const TIMINGS: &[Timing] = &[
    Timing {
        key: "evaluate_every",
        default: DEFAULT_EVALUATE_EVERY,
        min: secs(1),
        max: secs(60),
        why: "alerts must be detected within 3 minutes",
    },
    Timing {
        key: "group_wait",
        default: DEFAULT_GROUP_WAIT,
        min: secs(0),
        max: secs(300),
        why: "a longer wait delays every first message",
    },
    Timing {
        key: "group_interval",
        default: DEFAULT_GROUP_INTERVAL,
        min: secs(10),
        max: secs(86_400),
        why: "more often is a message storm",
    },
    Timing {
        key: "repeat_interval",
        default: DEFAULT_REPEAT_INTERVAL,
        min: secs(60),
        max: secs(7 * 86_400),
        why: "more often is a message storm",
    },
    Timing {
        key: "escalate_after",
        default: DEFAULT_ESCALATE_AFTER,
        min: secs(60),
        max: secs(7 * 86_400),
        why: "give the first receivers a chance",
    },
    Timing {
        key: "resolve_after",
        default: DEFAULT_RESOLVE_AFTER,
        min: secs(0),
        max: secs(3600),
        why: "a longer hold hides real recoveries",
    },
];

const NOTIFIER_TIMEOUT: Timing = Timing {
    key: "timeout",
    default: DEFAULT_NOTIFIER_TIMEOUT,
    min: secs(1),
    max: secs(120),
    why: "one attempt must not hold the delivery worker",
};
const HEARTBEAT_INTERVAL: Timing = Timing {
    key: "interval",
    default: secs(60),
    min: secs(10),
    max: secs(3600),
    why: "the switch must notice a silent controller within the hour",
};
const HEARTBEAT_TIMEOUT: Timing = Timing {
    key: "timeout",
    default: secs(10),
    min: secs(1),
    max: secs(60),
    why: "a ping is one small request",
};

const KEYS: &[&str] = &[
    "notifiers",
    "routes",
    "runbook_url_base",
    "external_url",
    "heartbeat",
    "evaluate_every",
    "group_wait",
    "group_interval",
    "repeat_interval",
    "escalate_after",
    "resolve_after",
];
const COMMON_KEYS: &[&str] = &["name", "kind", "timeout"];
/// Each kind and the keys it takes besides [`COMMON_KEYS`].
const KINDS: &[(&str, &[&str])] = &[
    ("webhook", &["url", "bearer_token_file", "secret_file"]),
    ("slack", &["url_file"]),
    ("telegram", &["bot_token_file", "chat_id", "api_url"]),
    (
        "email",
        &[
            "smtp",
            "security",
            "username",
            "password_file",
            "ca_file",
            "from",
            "to",
        ],
    ),
];
const ROUTE_KEYS: &[&str] = &["severity", "notifiers", "escalate_to"];
const HEARTBEAT_KEYS: &[&str] = &["url", "interval", "timeout"];
const SECURITIES: &[&str] = &["starttls", "tls", "none"];

/// Decodes the `alerting:` node (null: the defaults). `None` after reporting every problem.
pub fn decode(ctx: &mut Ctx<'_>, node: &Node) -> Option<Alerting> {
    let mut a = Alerting::default();
    if node.is_null() {
        return Some(a);
    }
    let f = ctx.map(node, "`alerting`", KEYS)?;
    let mut ok = true;

    // Names declared by notifiers, even those with other problems, so a route naming one is
    // not also reported; `None` when the list itself is broken (then routes are not checked).
    let mut declared: Option<Vec<(String, Pos)>> = Some(Vec::new());
    if let Some(n) = present(f.get("notifiers")) {
        match ctx.seq(n, "`alerting.notifiers`") {
            Some(items) => {
                let mut seen = Vec::new();
                for item in items {
                    let (name, cfg) = decode_notifier(ctx, item, &seen);
                    if let Some(name) = name {
                        seen.push(name);
                    }
                    match cfg {
                        Some(c) => a.notifiers.push(c),
                        None => ok = false,
                    }
                }
                declared = Some(seen);
            }
            None => {
                declared = None;
                ok = false;
            }
        }
    }
    if let Some(n) = present(f.get("routes")) {
        match ctx.seq(n, "`alerting.routes`") {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    match decode_route(ctx, item, i + 1, declared.as_deref()) {
                        Some(r) => a.routes.push(r),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    if let Some(n) = present(f.get("runbook_url_base")) {
        match ctx.nonempty_string(n, "`alerting.runbook_url_base`") {
            Some(s) if s.contains("://") && web_url_text(&s).is_err() => {
                let e = web_url_text(&s).err().unwrap_or_default();
                ctx.error(n.pos, format!("`alerting.runbook_url_base` {e}"));
                ok = false;
            }
            Some(s) => a.runbook_url_base = s,
            None => ok = false,
        }
    }
    if let Some(n) = present(f.get("external_url")) {
        match web_url(ctx, n, "`alerting.external_url`") {
            Some(u) => a.external_url = Some(u.as_str().trim_end_matches('/').to_owned()),
            None => ok = false,
        }
    }
    if let Some(n) = present(f.get("heartbeat")) {
        match decode_heartbeat(ctx, n) {
            Some(h) => a.heartbeat = Some(h),
            None => ok = false,
        }
    }
    for t in TIMINGS {
        let slot = match t.key {
            "evaluate_every" => &mut a.evaluate_every,
            "group_wait" => &mut a.group_wait,
            "group_interval" => &mut a.group_interval,
            "repeat_interval" => &mut a.repeat_interval,
            "escalate_after" => &mut a.escalate_after,
            _ => &mut a.resolve_after,
        };
        if let Some(n) = f.get(t.key) {
            match bounded(ctx, n, &format!("`alerting.{}`", t.key), t) {
                Some(d) => *slot = d,
                None => ok = false,
            }
        }
    }
    ok.then_some(a)
}

/// A value that is there and not `null` (`null` means "not set", as the defaults show).
fn present(n: Option<&Node>) -> Option<&Node> {
    n.filter(|n| !n.is_null())
}

/// A duration within a timing's bounds, the bound named when crossed.
fn bounded(ctx: &mut Ctx<'_>, n: &Node, what: &str, t: &Timing) -> Option<Duration> {
    let d = ctx.duration(n, what)?;
    if d < t.min {
        ctx.error(
            n.pos,
            format!(
                "{what} must be at least {} ({}), found {}",
                format_duration(t.min),
                t.why,
                format_duration(d)
            ),
        );
        return None;
    }
    if d > t.max {
        ctx.error(
            n.pos,
            format!(
                "{what} must be at most {} ({}), found {}",
                format_duration(t.max),
                t.why,
                format_duration(d)
            ),
        );
        return None;
    }
    Some(d)
}

/// The value under `key` of a mapping node, before its keys are checked.
fn peek<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn kind_keys(kind: &str) -> &'static [&'static str] {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&[], |(_, keys)| keys)
}

/// Decodes one notifier; returns its name (when it has a usable one, for the routes' check)
/// and the notifier (when it has no problem at all).
fn decode_notifier(
    ctx: &mut Ctx<'_>,
    node: &Node,
    seen: &[(String, Pos)],
) -> (Option<(String, Pos)>, Option<NotifierConfig>) {
    let kind_names: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
    let kind = peek(node, "kind")
        .and_then(|k| k.scalar())
        .filter(|k| kind_names.contains(k));
    let label = peek(node, "name")
        .and_then(|n| n.scalar())
        .map_or_else(|| "a notifier".to_owned(), |n| format!("notifier `{n}`"));

    // Keys of this kind are allowed; keys of another kind get a message naming that kind.
    let mut allowed: Vec<&str> = COMMON_KEYS.to_vec();
    let mut special: Vec<(&str, String)> = Vec::new();
    match kind {
        Some(kind) => {
            allowed.extend(kind_keys(kind));
            for (other, keys) in KINDS.iter().filter(|(k, _)| *k != kind) {
                for key in keys.iter().filter(|key| !allowed.contains(key)) {
                    special.push((
                        key,
                        format!(
                            "`{key}` is a key of `{other}` notifiers; a `{kind}` notifier takes {} (and name, kind, timeout)",
                            kind_keys(kind).join(", ")
                        ),
                    ));
                }
            }
        }
        None => {
            for (_, keys) in KINDS {
                for key in keys.iter() {
                    if !allowed.contains(key) {
                        allowed.push(key);
                    }
                }
            }
        }
    }
    let special_refs: Vec<(&str, &str)> = special.iter().map(|(k, m)| (*k, m.as_str())).collect();
    let rules = KeyRules {
        allowed: &allowed,
        special: &special_refs,
        extensions: false,
    };
    let Some(f) = ctx.map_with(node, &label, &rules) else {
        return (None, None);
    };
    let mut ok = true;

    let mut name = None;
    match f.get("name") {
        None => {
            ctx.error(f.pos, format!("{label} is missing the required key `name`"));
            ok = false;
        }
        Some(n) => match ctx.nonempty_string(n, "a notifier's `name`") {
            Some(s) => {
                if let Err(e) = fleet_config::names::check_name(&s) {
                    ctx.error(n.pos, format!("notifier name {e}"));
                    ok = false;
                } else if let Some((_, first)) = seen.iter().find(|(other, _)| *other == s) {
                    ctx.error(
                        n.pos,
                        format!(
                            "notifier name `{s}` is used twice (first at line {}); names must be unique",
                            first.line
                        ),
                    );
                    ok = false;
                }
                name = Some((s, n.pos));
            }
            None => ok = false,
        },
    }
    match f.get("kind") {
        None => {
            ctx.error(
                f.pos,
                format!(
                    "{label} is missing the required key `kind` ({})",
                    kind_names.join(", ")
                ),
            );
            ok = false;
        }
        Some(k) if kind.is_none() => {
            let text = k.scalar().unwrap_or("");
            let hint = suggest(text, &kind_names)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            ctx.error(
                k.pos,
                format!(
                    "unknown notifier kind `{text}`{hint}; the kinds are {}",
                    kind_names.join(", ")
                ),
            );
            ok = false;
        }
        Some(_) => {}
    }
    let mut timeout = NOTIFIER_TIMEOUT.default;
    if let Some(n) = f.get("timeout") {
        match bounded(ctx, n, &format!("`timeout` of {label}"), &NOTIFIER_TIMEOUT) {
            Some(d) => timeout = d,
            None => ok = false,
        }
    }
    let settings = match kind {
        Some("webhook") => decode_webhook(ctx, &f, &label).map(NotifierKind::Webhook),
        Some("slack") => decode_slack(ctx, &f, &label).map(NotifierKind::Slack),
        Some("telegram") => decode_telegram(ctx, &f, &label).map(NotifierKind::Telegram),
        Some(_) => decode_email(ctx, &f, &label).map(NotifierKind::Email),
        None => None,
    };
    let cfg = match (ok, settings, &name) {
        (true, Some(kind), Some((name, _))) => Some(NotifierConfig {
            name: name.clone(),
            timeout,
            kind,
        }),
        _ => None,
    };
    (name, cfg)
}

type Fields<'n> = fleet_config::decode::Fields<'n>;

fn required<'n>(ctx: &mut Ctx<'_>, f: &Fields<'n>, key: &str, label: &str) -> Option<&'n Node> {
    match present(f.get(key)) {
        Some(n) => Some(n),
        None => {
            ctx.error(
                f.pos,
                format!("{label} is missing the required key `{key}`"),
            );
            None
        }
    }
}

fn optional_path(
    ctx: &mut Ctx<'_>,
    f: &Fields<'_>,
    key: &str,
    label: &str,
) -> Result<Option<PathBuf>, ()> {
    match present(f.get(key)) {
        None => Ok(None),
        Some(n) => abs_path(ctx, n, &format!("`{key}` of {label}"))
            .map(Some)
            .ok_or(()),
    }
}

fn decode_webhook(ctx: &mut Ctx<'_>, f: &Fields<'_>, label: &str) -> Option<WebhookConfig> {
    let url =
        required(ctx, f, "url", label).and_then(|n| web_url(ctx, n, &format!("`url` of {label}")));
    let bearer = optional_path(ctx, f, "bearer_token_file", label);
    let secret = optional_path(ctx, f, "secret_file", label);
    Some(WebhookConfig {
        url: url?,
        bearer_token_file: bearer.ok()?,
        secret_file: secret.ok()?,
    })
}

fn decode_slack(ctx: &mut Ctx<'_>, f: &Fields<'_>, label: &str) -> Option<SlackConfig> {
    let url_file = required(ctx, f, "url_file", label)
        .and_then(|n| abs_path(ctx, n, &format!("`url_file` of {label}")));
    Some(SlackConfig {
        url_file: url_file?,
    })
}

fn decode_telegram(ctx: &mut Ctx<'_>, f: &Fields<'_>, label: &str) -> Option<TelegramConfig> {
    let token = required(ctx, f, "bot_token_file", label)
        .and_then(|n| abs_path(ctx, n, &format!("`bot_token_file` of {label}")));
    let chat_id = required(ctx, f, "chat_id", label).and_then(|n| {
        let what = format!("`chat_id` of {label}");
        let s = ctx.nonempty_string(n, &what)?;
        if valid_chat_id(&s) {
            Some(s)
        } else {
            ctx.error(
                n.pos,
                format!(
                    "{what} must be a chat's number (`-100…` for a group or channel) or a public channel's `@name`, found `{s}`"
                ),
            );
            None
        }
    });
    let api_url = match present(f.get("api_url")) {
        Some(n) => web_url(ctx, n, &format!("`api_url` of {label}")),
        None => Url::parse(DEFAULT_TELEGRAM_API_URL).ok(),
    };
    Some(TelegramConfig {
        bot_token_file: token?,
        chat_id: chat_id?,
        api_url: api_url?,
    })
}

/// A Telegram `chat_id`: an integer (negative for groups and channels) or `@channelusername`.
fn valid_chat_id(s: &str) -> bool {
    if let Some(user) = s.strip_prefix('@') {
        return (5..=32).contains(&user.len())
            && user.starts_with(|c: char| c.is_ascii_alphabetic())
            && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.len() <= 20 && digits.chars().all(|c| c.is_ascii_digit())
}

fn decode_email(ctx: &mut Ctx<'_>, f: &Fields<'_>, label: &str) -> Option<EmailConfig> {
    let mut ok = true;
    let smtp = required(ctx, f, "smtp", label).and_then(|n| {
        let what = format!("`smtp` of {label}");
        let s = ctx.nonempty_string(n, &what)?;
        match parse_smtp(&s) {
            Ok(a) => Some(a),
            Err(e) => {
                ctx.error(n.pos, format!("{what} {e}"));
                None
            }
        }
    });
    let security = match present(f.get("security")) {
        None => Some(SmtpSecurity::StartTls),
        Some(n) => {
            let what = format!("`security` of {label}");
            match ctx.nonempty_string(n, &what).as_deref() {
                Some("starttls") => Some(SmtpSecurity::StartTls),
                Some("tls") => Some(SmtpSecurity::Tls),
                Some("none") => Some(SmtpSecurity::None),
                Some(other) => {
                    let hint = suggest(other, SECURITIES)
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    ctx.error(
                        n.pos,
                        format!("{what} must be starttls, tls or none, found `{other}`{hint}"),
                    );
                    None
                }
                None => None,
            }
        }
    };
    if let (Some(SmtpSecurity::None), Some(addr)) = (security, &smtp) {
        if !addr.is_loopback() {
            let pos = f.get("security").map_or(f.pos, |n| n.pos);
            ctx.error(
                pos,
                format!(
                    "`security: none` of {label} would send messages (and any password) in clear to `{addr}`: \
                     it is allowed only for a relay on loopback (127.0.0.1, ::1, localhost); use starttls or tls"
                ),
            );
            ok = false;
        }
    }
    let username = match present(f.get("username")) {
        Some(n) => match ctx.nonempty_string(n, &format!("`username` of {label}")) {
            Some(u) => Some(u),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let password_file = optional_path(ctx, f, "password_file", label);
    let ca_file = optional_path(ctx, f, "ca_file", label);
    if let Ok(p) = &password_file {
        match (&username, p) {
            (Some(_), None) => {
                let pos = f.get("username").map_or(f.pos, |n| n.pos);
                ctx.error(pos, format!("`username` of {label} needs `password_file`"));
                ok = false;
            }
            (None, Some(_)) => {
                let pos = f.get("password_file").map_or(f.pos, |n| n.pos);
                ctx.error(pos, format!("`password_file` of {label} needs `username`"));
                ok = false;
            }
            _ => {}
        }
    }
    if let (Some(SmtpSecurity::None), Ok(Some(_))) = (security, &ca_file) {
        let pos = f.get("ca_file").map_or(f.pos, |n| n.pos);
        ctx.error(
            pos,
            format!("`ca_file` of {label} has no use with `security: none` (no TLS)"),
        );
        ok = false;
    }
    let from = required(ctx, f, "from", label)
        .and_then(|n| mailbox(ctx, n, &format!("`from` of {label}")));
    let to = required(ctx, f, "to", label).and_then(|n| {
        let what = format!("`to` of {label}");
        let list = ctx.string_list(n, &what, true)?;
        if list.is_empty() {
            ctx.error(
                n.pos,
                format!("{what} is empty; give at least one recipient"),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut good = true;
        for (s, pos) in list {
            match parse_mailbox(&s) {
                Ok(m) => out.push(m),
                Err(e) => {
                    ctx.error(pos, format!("each entry of {what}: {e}"));
                    good = false;
                }
            }
        }
        good.then_some(out)
    });
    let cfg = EmailConfig {
        smtp: smtp?,
        security: security?,
        username,
        password_file: password_file.ok()?,
        ca_file: ca_file.ok()?,
        from: from?,
        to: to?,
    };
    ok.then_some(cfg)
}

/// `host:port`, `[v6]:port`.
fn parse_smtp(s: &str) -> Result<SmtpAddress, String> {
    let bad = || format!("must be HOST:PORT (e.g. `smtp.example.com:587`), found `{s}`");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty()
            || host.contains(':')
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(bad());
        }
        (host, port)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok(SmtpAddress {
        host: host.to_owned(),
        port,
    })
}

fn parse_mailbox(s: &str) -> Result<Mailbox, String> {
    Mailbox::from_str(s.trim()).map_err(|e| {
        format!("`{s}` is not an e-mail address ({e}); write `name@example.com` or `Name <name@example.com>`")
    })
}

fn mailbox(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<Mailbox> {
    let s = ctx.nonempty_string(n, what)?;
    match parse_mailbox(&s) {
        Ok(m) => Some(m),
        Err(e) => {
            ctx.error(n.pos, format!("{what}: {e}"));
            None
        }
    }
}

fn decode_route(
    ctx: &mut Ctx<'_>,
    node: &Node,
    index: usize,
    declared: Option<&[(String, Pos)]>,
) -> Option<Route> {
    let label = format!("route {index}");
    let f = ctx.map(node, &format!("`alerting.routes` ({label})"), ROUTE_KEYS)?;
    let mut ok = true;
    let severities = match present(f.get("severity")) {
        None => Some(Severity::ALL.to_vec()),
        Some(n) => {
            let what = format!("`severity` of {label}");
            ctx.string_list(n, &what, true).and_then(|list| {
                if list.is_empty() {
                    ctx.error(
                        n.pos,
                        format!("{what} is empty; leave it out to take every severity"),
                    );
                    return None;
                }
                let names: Vec<&str> = Severity::ALL.iter().map(|s| s.as_str()).collect();
                let mut out = Vec::new();
                let mut good = true;
                for (s, pos) in list {
                    match s.parse::<Severity>() {
                        Ok(v) if !out.contains(&v) => out.push(v),
                        Ok(_) => {}
                        Err(e) => {
                            let hint = suggest(&s, &names)
                                .map(|x| format!(" (did you mean `{x}`?)"))
                                .unwrap_or_default();
                            ctx.error(pos, format!("{what}: {e}{hint}"));
                            good = false;
                        }
                    }
                }
                good.then_some(out)
            })
        }
    };
    let names_of = |ctx: &mut Ctx<'_>, key: &str| -> Option<Vec<String>> {
        let Some(n) = present(f.get(key)) else {
            return Some(Vec::new());
        };
        let what = format!("`{key}` of {label}");
        let list = ctx.string_list(n, &what, true)?;
        let mut out: Vec<String> = Vec::new();
        let mut good = true;
        for (s, pos) in list {
            if let Some(declared) = declared {
                if !declared.iter().any(|(d, _)| *d == s) {
                    let names: Vec<&str> = declared.iter().map(|(d, _)| d.as_str()).collect();
                    let hint = suggest(&s, &names)
                        .map(|x| format!(" (did you mean `{x}`?)"))
                        .unwrap_or_default();
                    let known = if names.is_empty() {
                        "`alerting.notifiers` is empty".to_owned()
                    } else {
                        format!("the notifiers are {}", names.join(", "))
                    };
                    ctx.error(
                        pos,
                        format!("{what} names `{s}`, which is not a notifier{hint}; {known}"),
                    );
                    good = false;
                    continue;
                }
            }
            if !out.contains(&s) {
                out.push(s);
            }
        }
        good.then_some(out)
    };
    let notifiers = names_of(ctx, "notifiers");
    let escalate_to = names_of(ctx, "escalate_to");
    if let (Some(n), Some(e)) = (&notifiers, &escalate_to) {
        if n.is_empty() && e.is_empty() {
            ctx.error(
                f.pos,
                format!("{label} sends nowhere: give it `notifiers` (and, for critical alerts, `escalate_to`)"),
            );
            ok = false;
        }
    }
    if let (Some(sev), Some(e), Some(pos)) = (
        &severities,
        &escalate_to,
        f.get("escalate_to").map(|n| n.pos),
    ) {
        if !e.is_empty() && !sev.contains(&Severity::Critical) {
            let taken: Vec<&str> = sev.iter().map(|s| s.as_str()).collect();
            ctx.error(
                pos,
                format!(
                    "`escalate_to` of {label} would never be used: only critical alerts escalate (after `escalate_after`), and this route takes {}",
                    taken.join(", ")
                ),
            );
            ok = false;
        }
    }
    let route = Route {
        severities: severities?,
        notifiers: notifiers?,
        escalate_to: escalate_to?,
    };
    ok.then_some(route)
}

fn decode_heartbeat(ctx: &mut Ctx<'_>, n: &Node) -> Option<Heartbeat> {
    let f = ctx.map(n, "`alerting.heartbeat`", HEARTBEAT_KEYS)?;
    let url = required(ctx, &f, "url", "`alerting.heartbeat`")
        .and_then(|u| web_url(ctx, u, "`alerting.heartbeat.url`"));
    let interval = match f.get("interval") {
        Some(v) => bounded(ctx, v, "`alerting.heartbeat.interval`", &HEARTBEAT_INTERVAL),
        None => Some(HEARTBEAT_INTERVAL.default),
    };
    let timeout = match f.get("timeout") {
        Some(v) => bounded(ctx, v, "`alerting.heartbeat.timeout`", &HEARTBEAT_TIMEOUT),
        None => Some(HEARTBEAT_TIMEOUT.default),
    };
    if let (Some(i), Some(t)) = (interval, timeout) {
        if t >= i {
            let pos = f.get("timeout").map_or(f.pos, |v| v.pos);
            ctx.error(
                pos,
                format!(
                    "`alerting.heartbeat.timeout` ({}) must be shorter than its `interval` ({})",
                    format_duration(t),
                    format_duration(i)
                ),
            );
            return None;
        }
    }
    Some(Heartbeat {
        url: url?,
        interval: interval?,
        timeout: timeout?,
    })
}

fn abs_path(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<PathBuf> {
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

/// An absolute http(s) URL with a host, or why not.
fn web_url_text(s: &str) -> Result<Url, String> {
    let url = Url::parse(s)
        .map_err(|e| format!("must be an http:// or https:// URL, found `{s}` ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http:// or https:// URL, found `{}:` in `{s}`",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("must name a host, found `{s}`"));
    }
    Ok(url)
}

fn web_url(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<Url> {
    let s = ctx.nonempty_string(n, what)?;
    match web_url_text(s.trim()) {
        Ok(u) => Some(u),
        Err(e) => {
            ctx.error(n.pos, format!("{what} {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests;
