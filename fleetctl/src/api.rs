//! `fleetctl`, the on-call CLI: a thin client of the controller's API. Every listing prints a
//! table, or the API's JSON with `--output json`. Exit codes: 0 ok, 1 failure, 2 usage.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Where to reach the controller and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL.
    pub url: String,
    /// API token.
    pub token: String,
    /// Trust only this CA (PEM) for the controller's certificate; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// Errors of fleetctl.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No URL or token from flags, environment or the config file.
    #[error("no controller {0} given: use --{0}, FLEET_{1}, or `{0}:` in {2}")]
    Missing(&'static str, &'static str, String),
    /// The config file is unreadable.
    #[error("cannot read {path}: {reason}")]
    Config {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The controller could not be reached.
    #[error("cannot reach the controller at {url}: {reason}")]
    Unreachable {
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The controller refused.
    #[error("{status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The controller's message.
        message: String,
    },
    /// A local check failed (validate).
    #[error("{0}")]
    Local(String),
    /// Something to show, and still a failure (logs older than asked for: printed, exit 1).
    #[error("{message}")]
    Partial {
        /// What to print on stdout before the message.
        output: String,
        /// Why it is a failure.
        message: String,
    },
}

impl CtlError {
    /// The exit code: 2 for usage problems, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Missing(..) | CtlError::Config { .. } => 2,
            _ => 1,
        }
    }
}

/// The default config file: `$XDG_CONFIG_HOME/fleet/fleetctl.yaml` or `~/.config/…`.
pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("fleet").join("fleetctl.yaml"))
}

/// What the config file says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// `url:`.
    pub url: Option<String>,
    /// `token:`.
    pub token: Option<String>,
    /// `ca_file:`.
    pub ca_file: Option<String>,
}

/// Reads `url:`, `token:` and `ca_file:` from a small YAML file (absent file: nothing).
pub fn read_config(path: &Path) -> Result<FileConfig, CtlError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => {
            return Err(CtlError::Config {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let doc = fleet_config::yaml::parse(&text).map_err(|e| CtlError::Config {
        path: path.to_owned(),
        reason: format!("{}:{}: {}", e.pos.line, e.pos.col, e.message),
    })?;
    let get = |k: &str| match &doc.root.value {
        fleet_config::yaml::Value::Map(entries) => entries
            .iter()
            .find(|(key, _)| key.scalar() == Some(k))
            .and_then(|(_, v)| v.scalar())
            .map(str::to_owned),
        _ => None,
    };
    Ok(FileConfig {
        url: get("url"),
        token: get("token"),
        ca_file: get("ca_file"),
    })
}

/// Picks URL and token: flag, then environment (clap fills both), then the config file.
pub fn resolve(
    url: Option<String>,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    config: Option<&Path>,
) -> Result<Target, CtlError> {
    let path = config.map(Path::to_owned).or_else(default_config_path);
    let file = match &path {
        Some(p) => read_config(p)?,
        None => FileConfig::default(),
    };
    let (file_url, file_token) = (file.url, file.token);
    let shown = path
        .as_ref()
        .map_or("the config file".to_owned(), |p| p.display().to_string());
    Ok(Target {
        url: url
            .or(file_url)
            .ok_or_else(|| CtlError::Missing("url", "URL", shown.clone()))?,
        token: token
            .or(file_token)
            .ok_or(CtlError::Missing("token", "TOKEN", shown))?,
        ca_file: ca_file.or(file.ca_file.map(PathBuf::from)),
    })
}

/// The header of a page of a list naming where the next page starts (the controller's
/// `GET /api/v1/devices?limit=N`).
pub const NEXT_AFTER: &str = "fleet-next-after";

/// The API client.
pub struct Api {
    target: Target,
    http: reqwest::Client,
}

impl Api {
    /// A client for `target`.
    pub fn new(target: Target) -> Result<Api, CtlError> {
        let builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            // The token goes to the configured controller only.
            .redirect(reqwest::redirect::Policy::none());
        let builder = crate::tls::trust(builder, target.ca_file.as_deref()).map_err(|e| {
            CtlError::Config {
                path: target.ca_file.clone().unwrap_or_default(),
                reason: e.to_string(),
            }
        })?;
        let http = builder.build().map_err(|e| CtlError::Unreachable {
            url: target.url.clone(),
            reason: crate::tls::describe(&e),
        })?;
        Ok(Api { target, http })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, CtlError> {
        Ok(self.send_paged(req).await?.0)
    }

    /// Sends `req`; the answer and the `fleet-next-after` header of a page, if any.
    async fn send_paged(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(Value, Option<String>), CtlError> {
        let resp = req
            .bearer_auth(&self.target.token)
            .send()
            .await
            .map_err(|e| CtlError::Unreachable {
                url: self.target.url.clone(),
                reason: crate::tls::describe(&e),
            })?;
        let status = resp.status();
        let next = resp
            .headers()
            .get(NEXT_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(CtlError::Refused {
                status: status.as_u16(),
                message: body["error"].as_str().unwrap_or("no message").to_owned(),
            });
        }
        Ok((body, next))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.target.url.trim_end_matches('/'), path)
    }

    /// `GET path` of a paged list (`path` has a query already), page after page of `limit`
    /// (the controller's `fleet-next-after` header says where the next one starts): every
    /// item, however large the fleet, without one answer holding it all.
    pub async fn get_all(&self, path: &str, limit: u32) -> Result<Value, CtlError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url =
                reqwest::Url::parse(&self.url(path)).map_err(|e| CtlError::Unreachable {
                    url: self.target.url.clone(),
                    reason: e.to_string(),
                })?;
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
            if let Some(a) = &after {
                url.query_pairs_mut().append_pair("after", a);
            }
            let (page, next) = self.send_paged(self.http.get(url)).await?;
            if let Value::Array(items) = page {
                all.extend(items);
            }
            match next {
                Some(n) if Some(&n) != after.as_ref() => after = Some(n),
                _ => return Ok(Value::Array(all)),
            }
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.send(self.http.get(self.url(path))).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, CtlError> {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    /// `POST /api/v1/devices/{id}/logs`: asks device `id` for a fresh tail of its logs
    /// (`lines` per source, only `services` if any); the request and the device's last
    /// check-in. An unknown device is named.
    pub async fn request_logs(
        &self,
        id: &str,
        lines: Option<u32>,
        services: &[String],
    ) -> Result<Value, CtlError> {
        let mut body = json!({"services": services});
        if let Some(n) = lines {
            body["lines"] = json!(n);
        }
        self.post(&format!("/api/v1/devices/{}/logs", path_segment(id)), body)
            .await
            .map_err(|e| unknown_device(e, id))
    }

    /// `GET /api/v1/devices/{id}/logs`: device `id`'s newest tail and where its newest request
    /// stands.
    pub async fn device_logs(&self, id: &str) -> Result<Value, CtlError> {
        self.get(&format!("/api/v1/devices/{}/logs", path_segment(id)))
            .await
            .map_err(|e| unknown_device(e, id))
    }
}

/// A device id as one path segment (percent-encoded beyond letters, digits, `-`, `_`, `.`).
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A 404 of a device route as a message that says what to do.
fn unknown_device(e: CtlError, id: &str) -> CtlError {
    match e {
        CtlError::Refused { status: 404, .. } => CtlError::Local(format!(
            "no device `{id}`: `fleetctl devices list` shows the devices the controller knows"
        )),
        other => other,
    }
}

/// A plain table: a header row and aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// A JSON value as a short cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            s[..12].to_owned()
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as "N s ago".
pub fn ago(v: &Value, now_ms: i64) -> String {
    match v.as_i64() {
        Some(t) => {
            let s = (now_ms - t).max(0) / 1000;
            if s < 120 {
                format!("{s}s ago")
            } else if s < 7200 {
                format!("{}m ago", s / 60)
            } else {
                format!("{}h ago", s / 3600)
            }
        }
        None => "never".into(),
    }
}

/// A reason body.
pub fn reason(r: &Option<String>) -> Value {
    json!({"reason": r.clone().unwrap_or_default()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["a".into(), "online".into()],
                vec!["long-id".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID       STATE\na        online\nlong-id  x\n");
    }

    #[test]
    fn flags_win_over_the_file_and_missing_values_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("fleetctl.yaml");
        std::fs::write(&p, "url: http://file\ntoken: filetoken\n").expect("write");
        let t = resolve(Some("http://flag".into()), None, None, Some(&p)).expect("ok");
        assert_eq!(
            t,
            Target {
                url: "http://flag".into(),
                token: "filetoken".into(),
                ca_file: None,
            }
        );
        let missing = dir.path().join("none.yaml");
        let e = resolve(None, Some("t".into()), None, Some(&missing)).expect_err("no url");
        assert!(
            e.to_string().contains("--url") && e.to_string().contains("FLEET_URL"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }
}
