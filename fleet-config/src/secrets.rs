//! Secrets committed in plain text: private keys, cloud access keys and tokens anywhere in the
//! repository, and literal values for secret-looking environment variables.
//!
//! A secret in Git is on every clone and in history forever; the fix is always the same: rotate
//! it, remove it, and provision it on the device outside Git. The agent reads
//! `/etc/fleet/secrets/<stack>.env` on the device and substitutes `${NAME}` references from it.

use crate::diag::Pos;
use crate::interpolate::{self, Piece};

/// Where the agent looks for a stack's secrets on the device.
pub const DEVICE_SECRETS_DIR: &str = "/etc/fleet/secrets";

/// Variable-name endings that mean "this holds a secret".
const SECRET_NAME_ENDINGS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "SECRET_KEY",
    "TOKEN",
    "API_KEY",
    "APIKEY",
    "ACCESS_KEY",
    "PRIVATE_KEY",
    "CREDENTIALS",
    "CLIENT_SECRET",
];

/// True when an environment variable's name says it holds a secret (`DB_PASSWORD`,
/// `GITHUB_TOKEN`), not a reference to one (`DB_PASSWORD_FILE`).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_ENDINGS
        .iter()
        .any(|end| upper == *end || upper.ends_with(&format!("_{end}")))
}

/// What is wrong with a value that must come from the device, judged by the rule the agent
/// substitutes with ([`crate::interpolate`]).
enum NotAReference {
    /// Text of its own, e.g. `hunter2` or `x${A}`.
    Literal,
    /// A reference with a committed default, e.g. `${DB_PASSWORD:-changeme}`.
    Default(String),
}

/// `None` when `value` takes all of its content from the device (references without defaults,
/// or nothing at all). A malformed value is not judged here: the validator reports its syntax.
fn not_a_reference(value: &str) -> Option<NotAReference> {
    let pieces = interpolate::parse(value.trim()).ok()?;
    for p in &pieces {
        match p {
            Piece::Text(t) if !t.trim().is_empty() => return Some(NotAReference::Literal),
            p => {
                if let Some(d) = p.default_value().filter(|d| !d.is_empty()) {
                    return Some(NotAReference::Default(d.to_owned()));
                }
            }
        }
    }
    None
}

/// A command-line option in `text` that carries a literal secret, e.g. `-Dkeystore.password=x`,
/// `--password=x` or `--db-password x`: (the option as written, the variable name to use).
/// Option names are judged like variable names, with `.` and `-` read as `_`.
fn literal_secret_option(text: &str) -> Option<(String, String)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let unquote = |w: &str| w.trim_matches(|c| c == '"' || c == '\'').to_owned();
    for (i, word) in words.iter().enumerate() {
        let word = unquote(word);
        let (dashes, rest) = if let Some(r) = word.strip_prefix("--") {
            ("--", r)
        } else if let Some(r) = word.strip_prefix("-D") {
            ("-D", r)
        } else if let Some(r) = word.strip_prefix('-') {
            ("-", r)
        } else {
            continue;
        };
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (rest, None),
        };
        let var = key.replace(['.', '-'], "_").to_ascii_uppercase();
        if !is_secret_name(&var) || var.starts_with("NO_") {
            continue;
        }
        let value = match value {
            Some(v) => v,
            None => match words.get(i + 1).map(|w| unquote(w)) {
                Some(next) if !next.starts_with('-') => next,
                _ => continue,
            },
        };
        if not_a_reference(&value).is_some() {
            return Some((format!("{dashes}{key}"), var));
        }
    }
    None
}

/// A message when `name=value` in a stack's `environment` commits a secret, else `None`: a
/// secret-looking variable set to anything but a reference without a default, or a literal
/// password in an option string (`JAVA_OPTS: -Dkeystore.password=...`).
pub fn check_env(service: &str, stack: &str, name: &str, value: &str) -> Option<String> {
    if is_secret_name(name) {
        match not_a_reference(value) {
            Some(NotAReference::Literal) => {
                return Some(format!(
                    "service `{service}` sets `{name}` to a literal value; secrets must not be committed to Git. \
                     Write `{name}: ${{{name}}}` instead and put `{name}=...` in {DEVICE_SECRETS_DIR}/{stack}.env on the device"
                ))
            }
            Some(NotAReference::Default(d)) => {
                return Some(format!(
                    "service `{service}` gives `{name}` the default `{d}`, which commits a secret to Git. \
                     Write `{name}: ${{{name}}}` (or `${{{name}:?message}}`) and put `{name}=...` in {DEVICE_SECRETS_DIR}/{stack}.env on the device"
                ))
            }
            None => {}
        }
    }
    let (option, var) = literal_secret_option(value)?;
    Some(format!(
        "service `{service}` passes a literal secret in `{name}` (`{option}`); secrets must not be committed to Git. \
         Write `{option}=${{{var}}}` instead and put `{var}=...` in {DEVICE_SECRETS_DIR}/{stack}.env on the device"
    ))
}

/// A message when a service's `command` or `entrypoint` (`key`) passes a literal secret as an
/// option (`--password=...`), else `None`. The agent does not substitute in commands, so the
/// fix is the environment.
pub fn check_command(service: &str, stack: &str, key: &str, words: &[String]) -> Option<String> {
    let (option, var) = literal_secret_option(&words.join(" "))?;
    Some(format!(
        "`{key}` of service `{service}` passes a literal secret (`{option}`); secrets must not be committed to Git. \
         Give the service `{var}: ${{{var}}}` in `environment`, put `{var}=...` in {DEVICE_SECRETS_DIR}/{stack}.env \
         on the device, and have the program read it from its environment"
    ))
}

/// A recognised secret in some text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where it starts.
    pub pos: Pos,
    /// What it is, e.g. "an AWS access key id".
    pub what: &'static str,
}

impl Finding {
    /// The operator-facing message.
    pub fn message(&self) -> String {
        format!(
            "{} is committed in plain text; remove it from the repository and its history, rotate it, \
             and provision it on the device instead (the agent reads {DEVICE_SECRETS_DIR}/<stack>.env)",
            self.what
        )
    }
}

fn is_upper_alnum(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Length of the run of bytes from `start` satisfying `f`.
fn run(bytes: &[u8], start: usize, f: impl Fn(u8) -> bool) -> usize {
    bytes[start..].iter().take_while(|b| f(**b)).count()
}

/// Finds private keys, cloud access keys and API tokens in `text`.
pub fn scan(text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let mut found = |at: usize, what| {
            let col = line[..at].chars().count() + 1;
            out.push(Finding {
                pos: Pos {
                    line: line_no + 1,
                    col,
                },
                what,
            });
        };
        if let Some(at) = line.find("-----BEGIN ") {
            let rest = &line[at..];
            if rest.contains("PRIVATE KEY") {
                found(at, "a private key");
                continue;
            }
        }
        let lower = line.to_ascii_lowercase();
        if let Some(at) = lower.find("aws_secret_access_key") {
            let after = lower[at + "aws_secret_access_key".len()..].trim_start();
            if let Some(v) = after.strip_prefix('=').or_else(|| after.strip_prefix(':')) {
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                if v.len() >= 40 && !v.starts_with("${") {
                    found(at, "an AWS secret access key");
                    continue;
                }
            }
        }
        let mut i = 0;
        while i < bytes.len() {
            // Only look at the start of a word, so `XAKIA...` inside a longer token is skipped.
            if i > 0 && is_token_char(bytes[i - 1]) {
                i += 1;
                continue;
            }
            let rest = &bytes[i..];
            let hit: Option<(&'static str, usize)> = if (rest.starts_with(b"AKIA")
                || rest.starts_with(b"ASIA"))
                && run(bytes, i + 4, is_upper_alnum) == 16
            {
                Some(("an AWS access key id", 20))
            } else if let Some(p) = [&b"ghp_"[..], b"gho_", b"ghu_", b"ghs_", b"ghr_"]
                .iter()
                .find(|p| rest.starts_with(p))
            {
                let n = run(bytes, i + p.len(), |b| b.is_ascii_alphanumeric());
                (n >= 30).then_some(("a GitHub token", p.len() + n))
            } else if rest.starts_with(b"github_pat_") {
                let n = run(bytes, i + 11, is_token_char);
                (n >= 30).then_some(("a GitHub token", 11 + n))
            } else if rest.starts_with(b"glpat-") {
                let n = run(bytes, i + 6, is_token_char);
                (n >= 20).then_some(("a GitLab token", 6 + n))
            } else if rest.len() > 5
                && rest.starts_with(b"xox")
                && matches!(rest[3], b'a' | b'b' | b'p' | b'r' | b's')
                && rest[4] == b'-'
            {
                let n = run(bytes, i + 5, is_token_char);
                (n >= 20).then_some(("a Slack token", 5 + n))
            } else if rest.starts_with(b"AIza") {
                let n = run(bytes, i + 4, is_token_char);
                (n == 35).then_some(("a Google API key", 39))
            } else if rest.starts_with(b"sk_live_") || rest.starts_with(b"rk_live_") {
                let n = run(bytes, i + 8, |b| b.is_ascii_alphanumeric());
                (n >= 20).then_some(("a Stripe secret key", 8 + n))
            } else {
                None
            };
            match hit {
                Some((what, len)) => {
                    found(i, what);
                    i += len;
                }
                None => i += 1,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for n in [
            "DB_PASSWORD",
            "password",
            "GITHUB_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "API_KEY",
            "OAUTH_CLIENT_SECRET",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "DB_PASSWORD_FILE",
            "TOKEN_TTL",
            "LOG_LEVEL",
            "PASSWORDLESS",
            "MONKEY",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn env_references_are_fine() {
        assert!(check_env("app", "app", "DB_PASSWORD", "${DB_PASSWORD}").is_none());
        assert!(check_env("app", "app", "DB_PASSWORD", "").is_none());
        assert!(check_env("app", "app", "LOG_LEVEL", "debug").is_none());
        let msg = check_env("app", "web", "DB_PASSWORD", "hunter2").expect("flagged");
        assert!(msg.contains("/etc/fleet/secrets/web.env"), "{msg}");
        assert!(check_env("app", "app", "DB_PASSWORD", "x${A}").is_some());
    }

    #[test]
    fn env_follows_the_agents_substitution_rule() {
        // What the agent fills in from the device is a reference, in every spelling.
        for v in [
            "$DB_PASSWORD",
            "${DB_PASSWORD:?set it}",
            "${DB_PASSWORD:-}",
            "${A}${B}",
        ] {
            assert!(check_env("app", "app", "DB_PASSWORD", v).is_none(), "{v}");
        }
        // `$$` is a literal dollar sign, and a default is committed text.
        assert!(check_env("app", "app", "DB_PASSWORD", "$$DB_PASSWORD").is_some());
        let msg =
            check_env("app", "app", "DB_PASSWORD", "${DB_PASSWORD:-changeme}").unwrap_or_default();
        assert!(msg.contains("default `changeme`"), "{msg}");
        assert!(check_env("app", "app", "API_TOKEN", "${API_TOKEN-x}").is_some());
    }

    #[test]
    fn passwords_inside_option_strings_are_found() {
        let flagged = [
            "-Xmx1g -Dkeystore.password=hunter2",
            "--password=hunter2",
            "--db-password hunter2 --verbose",
            "'--password=hunter2'",
        ];
        for v in flagged {
            assert!(check_env("app", "app", "JAVA_OPTS", v).is_some(), "{v}");
        }
        let fine = [
            "-Xmx1g -Dkeystore.password=${KEYSTORE_PASSWORD}",
            "--password=$PW",
            "--password-file /run/secrets/pw",
            "--no-password serve",
            "--password --verbose",
            "--token-ttl=5m",
        ];
        for v in fine {
            assert!(check_env("app", "app", "JAVA_OPTS", v).is_none(), "{v}");
        }
        let msg = check_env("app", "web", "JAVA_OPTS", "-Dkeystore.password=x").unwrap_or_default();
        assert!(
            msg.contains("`-Dkeystore.password=${KEYSTORE_PASSWORD}`"),
            "{msg}"
        );
        let words = ["redis-server".to_owned(), "--requirepass".to_owned()];
        assert!(check_command("db", "s", "command", &words).is_none());
        let words = ["app".to_owned(), "--api-key=abc".to_owned()];
        let msg = check_command("db", "s", "command", &words).unwrap_or_default();
        assert!(msg.contains("`API_KEY: ${API_KEY}`"), "{msg}");
    }

    #[test]
    fn finds_keys_and_tokens() {
        let text = concat!(
            "ok line\n",
            "key: AKIAIOSFODNN7EXAMPLE\n",
            "  -----BEGIN OPENSSH PRIVATE KEY-----\n",
            "t=ghp_",
            "abcdefghijklmnopqrstuvwxyz0123456789\n",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
            "slack: xoxb-",
            "1234567890-abcdefghijklmn\n",
        );
        let f = scan(text);
        let whats: Vec<_> = f.iter().map(|x| (x.pos.line, x.pos.col, x.what)).collect();
        assert_eq!(
            whats,
            vec![
                (2, 6, "an AWS access key id"),
                (3, 3, "a private key"),
                (4, 3, "a GitHub token"),
                (5, 1, "an AWS secret access key"),
                (6, 8, "a Slack token"),
            ]
        );
    }

    #[test]
    fn public_keys_and_lookalikes_are_not_secrets() {
        let text = "-----BEGIN PUBLIC KEY-----\nAKIASHORT\nXAKIAIOSFODNN7EXAMPLE\nghp_short\n";
        assert!(scan(text).is_empty());
    }
}
