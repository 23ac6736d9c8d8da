//! `logging.loki`: the real `fleet-controller serve` process pushes its own log lines to a
//! receiver that decodes Loki's real push format (snappy, protobuf), labelled with its host
//! name, and flushes them on SIGTERM; `check-config` positions every problem of the section.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_testkit::loki::{Line, LokiReceiver};

const WAIT: Duration = Duration::from_secs(60);

fn message(line: &Line) -> String {
    serde_json::from_str::<serde_json::Value>(&line.line)
        .ok()
        .and_then(|v| v["fields"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the kernel's host name")
        .trim()
        .to_owned()
}

#[test]
fn the_servers_own_lines_reach_loki_and_the_last_ones_are_flushed_on_sigterm() {
    let rx = LokiReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = support::process::free_addr();
    let config = dir.path().join("controller.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"{listen}\"\ndata_dir: \"{}\"\nlogging:\n  loki:\n    url: {}\n    labels: {{ site: hq }}\n    tenant: fleet\n",
            dir.path().join("data").display(),
            rx.url()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("controller.log")).expect("log");
    let mut child = Command::new(support::controller_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stderr(log)
        .spawn()
        .expect("spawn fleet-controller");
    let lines = rx.wait_for("the listening line", WAIT, |l| {
        l.iter().any(|l| message(l) == "fleet-controller listening")
    });
    let listening = lines
        .iter()
        .find(|l| message(l) == "fleet-controller listening")
        .expect("listening");
    assert_eq!(
        listening.labels,
        BTreeMap::from([
            ("component".to_owned(), "controller".to_owned()),
            ("device".to_owned(), host_name()),
            ("level".to_owned(), "info".to_owned()),
            ("site".to_owned(), "hq".to_owned()),
        ])
    );
    let v: serde_json::Value = serde_json::from_str(&listening.line).expect("JSON line");
    assert_eq!(
        v["fields"]["local"],
        listen.to_string(),
        "{}",
        listening.line
    );
    assert_eq!(rx.pushes()[0].headers["x-scope-orgid"], "fleet");
    // What was pushed is counted in /metrics.
    let sent = (0..100)
        .find_map(|_| {
            let (_, body) = fleet_testkit::prometheus::http_get(&listen.to_string(), "/metrics")?;
            let n: f64 = body
                .lines()
                .find_map(|l| l.strip_prefix("fleet_controller_loki_sent_total "))?
                .parse()
                .ok()?;
            if n > 0.0 {
                Some(n)
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .expect("fleet_controller_loki_sent_total counts the pushed lines");
    assert!(sent >= 1.0);

    // SIGTERM: the shutdown's own line goes out before the process ends.
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the controller did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        rx.lines().iter().any(|l| message(l) == "shutting down"),
        "the shutdown line was pushed before the exit: {:#?}",
        rx.lines()
    );
    assert!(rx.malformed().is_empty(), "{:#?}", rx.malformed());
}

#[test]
fn check_config_positions_every_problem_of_the_loki_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("controller.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:8080\nlogging:\n  loki:\n    url: http://loki:3100/loki/api/v1/push\n    labels:\n      site-name: hq\n      component: x\n    bearer_token_file: loki-token\n    tennant: fleet\n",
    )
    .expect("config");
    let path = config.display().to_string();
    let out = Command::new(support::controller_bin())
        .args(["--config", &path, "check-config"])
        .output()
        .expect("check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        format!("{path}:4:10: error: `logging.loki.url` `http://loki:3100/loki/api/v1/push` ends with the push path; give Loki's base URL, /loki/api/v1/push is appended"),
        format!("{path}:6:7: error: label name `site-name` in `logging.loki.labels` is not a valid Loki label name"),
        format!("{path}:7:7: error: label name `component` in `logging.loki.labels` is set by Fleet itself"),
        format!("{path}:8:24: error: `logging.loki.bearer_token_file` must be an absolute path, found `loki-token`"),
        format!("{path}:9:5: error: unknown key `tennant` in `logging.loki` (did you mean `tenant`?)"),
    ] {
        assert!(err.contains(&want), "missing `{want}` in\n{err}");
    }
    std::fs::write(
        &config,
        "listen: 127.0.0.1:8080\nlogging:\n  loki:\n    url: https://loki.example.net\n",
    )
    .expect("config");
    let out = Command::new(support::controller_bin())
        .args(["--config", &path, "check-config"])
        .output()
        .expect("check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("logs pushed to Loki at https://loki.example.net/loki/api/v1/push"),
        "{stdout}"
    );
}
