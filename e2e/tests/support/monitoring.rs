//! The shipped monitoring files (`deploy/`) as the monitoring tests read them: the Prometheus
//! rules and their alert names, the Grafana dashboards' queries, the metric names both use,
//! and the few substitutions a fast test makes to the shipped configurations (each one
//! asserted, so a change to a shipped file cannot silently make a substitution miss).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// Set to `1` (CI does) to make a missing `docker compose` / `docker-compose` a failure.
pub const REQUIRE_COMPOSE_ENV: &str = "FLEET_REQUIRE_COMPOSE";

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Where a test leaves what it saw: `$FLEET_ARTIFACTS_DIR/NAME`, else
/// `target/test-artifacts/NAME` (as the dashboard tests do).
pub fn artifacts_dir(name: &str) -> PathBuf {
    std::env::var_os("FLEET_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target").join("test-artifacts"))
        .join(name)
}

/// A file under `deploy/`.
pub fn deploy(rel: &str) -> PathBuf {
    repo_root().join("deploy").join(rel)
}

/// A shipped text file.
pub fn read(rel: &str) -> String {
    let p = deploy(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A shipped YAML file's (first) document.
pub fn yaml(rel: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("deploy/{rel} is not YAML: {e}"));
    docs.into_iter()
        .next()
        .unwrap_or_else(|| panic!("deploy/{rel} is empty"))
}

/// `text` with every occurrence of `from` replaced by `to`; panics when there is none.
pub fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the shipped file no longer contains `{from}`: update the test's substitution"
    );
    text.replace(from, to)
}

/// One alerting rule of `fleet-rules.yml`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub group: String,
    pub alert: String,
    pub expr: String,
    pub for_: Option<String>,
    /// Its static labels (`severity`, `cause`).
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

impl Rule {
    /// A static label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// An annotation's template.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn pairs(y: &Yaml) -> Vec<(String, String)> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Every alerting rule of `deploy/prometheus/fleet-rules.yml`, in order.
pub fn rules() -> Vec<Rule> {
    let doc = yaml("prometheus/fleet-rules.yml");
    let mut out = Vec::new();
    for g in doc["groups"].as_vec().expect("groups") {
        let group = g["name"].as_str().expect("group name").to_owned();
        for r in g["rules"].as_vec().expect("rules") {
            out.push(Rule {
                group: group.clone(),
                alert: r["alert"].as_str().expect("only alerting rules").to_owned(),
                expr: r["expr"].as_str().expect("expr").to_owned(),
                for_: r["for"].as_str().map(str::to_owned),
                labels: pairs(&r["labels"]),
                annotations: pairs(&r["annotations"]),
            });
        }
    }
    out
}

/// The shipped rules with every `for:` set to `for_` (a fast test cannot wait 15 minutes):
/// the only change made to them before a real Prometheus loads them.
pub fn rules_with_for(for_: &str) -> String {
    let text = read("prometheus/fleet-rules.yml");
    let mut n = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            if trimmed.starts_with("for: ") {
                n += 1;
                format!("{}for: {for_}", &l[..l.len() - trimmed.len()])
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(n >= 10, "expected the rules' `for:` lines, found {n}");
    out.join("\n") + "\n"
}

/// The shipped Alertmanager configuration for a test: every receiver's URL pointed at the
/// local webhook receiver `receiver_base` (keeping each URL's path, so the path says which
/// receiver delivered), and its waits shortened to a second. Routes, grouping and inhibitions
/// are the shipped ones.
pub fn alertmanager_test_config(receiver_base: &str) -> String {
    let mut text = read("alertmanager/alertmanager.yml");
    text = replace(&text, "https://alerts.example.com", receiver_base);
    text = replace(&text, "https://hc-ping.com", receiver_base);
    for (from, to) in [
        ("group_wait: 30s", "group_wait: 1s"),
        ("group_wait: 10s", "group_wait: 1s"),
        ("group_wait: 0s", "group_wait: 1s"),
        ("group_interval: 5m", "group_interval: 1s"),
        ("group_interval: 1m", "group_interval: 1s"),
    ] {
        text = replace(&text, from, to);
    }
    text
}

/// The path of the dead man's switch receiver's URL in the shipped configuration.
pub const DEADMANS_PATH: &str = "/REPLACE-WITH-YOUR-CHECK-UUID";

/// The receiver the shipped Alertmanager configuration routes `alert` to.
pub fn expected_receiver(alert: fleet_config::alerts::AlertName) -> &'static str {
    use fleet_config::alerts::{AlertName, Severity};
    if alert == AlertName::Watchdog {
        return "deadmansswitch";
    }
    match alert.severity() {
        Severity::Critical => "fleet-critical",
        Severity::Warning => "fleet-warning",
        Severity::Info => "fleet-info",
    }
}

/// One query of a Grafana dashboard.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    /// The datasource uid (`fleet-prometheus`, `fleet-loki`).
    pub datasource: String,
    pub expr: String,
}

/// The shipped dashboards: (file name, JSON).
pub fn dashboards() -> Vec<(String, Value)> {
    let dir = deploy("grafana/dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read dashboard");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                v,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel of a dashboard, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        for nested in p["panels"].as_array().cloned().unwrap_or_default() {
            out.push(nested);
        }
        out.push(p);
    }
    out
}

/// Every query of every panel of the shipped dashboards.
pub fn panel_queries() -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in panels(&d) {
            let panel_ds = p["datasource"]["uid"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                out.push(PanelQuery {
                    dashboard: file.clone(),
                    panel: p["title"].as_str().unwrap_or_default().to_owned(),
                    ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                    datasource: t["datasource"]["uid"]
                        .as_str()
                        .unwrap_or(panel_ds)
                        .to_owned(),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    out
}

/// Every template variable's query (the PromQL of `label_values(...)` and the like).
pub fn variable_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for v in d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if v["type"] != "query" {
                continue;
            }
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .or_else(|| v["definition"].as_str())
                .unwrap_or_default();
            out.push((
                file.clone(),
                v["name"].as_str().unwrap_or_default().to_owned(),
                q.to_owned(),
            ));
        }
    }
    out
}

/// `expr` with Grafana's variables put in as Grafana would: `$device` (and `${device}`) the
/// device given, the interval variables a minute, `$__range` five minutes.
pub fn substitute_variables(expr: &str, device: &str) -> String {
    let mut e = expr.to_owned();
    for (from, to) in [
        ("${__rate_interval}", "1m"),
        ("$__rate_interval", "1m"),
        ("${__interval}", "15s"),
        ("$__interval", "15s"),
        ("${__range}", "5m"),
        ("$__range", "5m"),
        ("${device}", device),
        ("$device", device),
    ] {
        e = e.replace(from, to);
    }
    assert!(
        !e.contains('$'),
        "a Grafana variable the test does not know is left in `{e}`"
    );
    e
}

/// The metric names (`fleet_…`) a PromQL expression or template text names. A name right
/// after a `.` is a configuration key (`rollout.fleet_unhealthy_stop`), not a metric.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("fleet_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && ident(b[end]) {
            end += 1;
        }
        let before = start.checked_sub(1).map(|j| b[j]);
        if !before.is_some_and(|c| ident(c) || c == b'.') {
            out.insert(text[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

/// Every metric name the shipped rules (expressions and annotation queries) and dashboards
/// (panel and variable queries) use, with where each is used.
pub fn used_metrics() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in rules() {
        let mut text = r.expr.clone();
        for (_, a) in &r.annotations {
            text.push('\n');
            text.push_str(a);
        }
        for m in metric_names(&text) {
            out.push((m, format!("rule {}", r.alert)));
        }
    }
    for q in panel_queries() {
        for m in metric_names(&q.expr) {
            out.push((m, format!("{} / {}", q.dashboard, q.panel)));
        }
    }
    for (file, name, q) in variable_queries() {
        for m in metric_names(&q) {
            out.push((m, format!("{file} / variable {name}")));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The compose command: `docker compose` (v2) when present, else `docker-compose` (Debian's
/// 1.29). `None` (after a loud SKIP) when neither is, unless [`REQUIRE_COMPOSE_ENV`] is `1`.
pub fn compose_command(test: &str) -> Option<Vec<String>> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("docker", &["compose", "version"]) {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    if works("docker-compose", &["version"]) {
        return Some(vec!["docker-compose".into()]);
    }
    assert!(
        std::env::var(REQUIRE_COMPOSE_ENV).as_deref() != Ok("1"),
        "{test}: docker compose / docker-compose is required ({REQUIRE_COMPOSE_ENV}=1) but missing"
    );
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIP {test}: neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose) ***\n"
    );
    None
}

/// Runs a command; its stdout, or a panic with everything it said.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{stdout}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
