//! `logging.loki`: the real `fleet-agent` binary in standalone mode (real `git daemon`s, the
//! real Docker engine) pushes its own log lines to a receiver that decodes Loki's real push
//! format (snappy, protobuf), labelled with its device id; a Loki that refuses costs counted
//! log lines, never an update.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_testkit::loki::{Answer, Line, LokiReceiver};
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, listen_metrics, AgentProc, Lab, DEVICE};

/// Generous: the machine is shared and noisy. Timings are measured in benchmarks, not here.
const SETTLE: Duration = Duration::from_secs(90);

fn ready(test: &str) -> bool {
    if !support::git_daemon::git_available(test) || !docker_available(test) {
        return false;
    }
    build_test_images();
    true
}

fn loki_section(rx: &LokiReceiver) -> String {
    format!(
        "logging:\n  loki:\n    url: {}\n    labels: {{ site: lab }}\n",
        rx.url()
    )
}

fn json(line: &Line) -> serde_json::Value {
    serde_json::from_str(&line.line).unwrap_or_default()
}

fn message(line: &Line) -> String {
    json(line)["fields"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn labels(level: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("component".to_owned(), "agent".to_owned()),
        ("device".to_owned(), DEVICE.to_owned()),
        ("level".to_owned(), level.to_owned()),
        ("site".to_owned(), "lab".to_owned()),
    ])
}

#[test]
fn the_agents_own_lines_reach_loki_labelled_with_its_device() {
    if !ready("the_agents_own_lines_reach_loki_labelled_with_its_device") {
        return;
    }
    let rx = LokiReceiver::start();
    let lab = Lab::new("loki-lines");
    let r1 = lab.release("v1");
    let eps = [lab.primary.url("fleet.git"), lab.mirror.url("fleet.git")];
    let config = lab.config_with("agent", &eps, &lab.data_dir(), &loki_section(&rx));
    let mut agent = AgentProc::start(&config);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));

    let lines = rx.wait_for("the start-up and update lines", SETTLE, |l| {
        let has = |m: &str| l.iter().any(|l| message(l) == m);
        has("fleet-agent starting") && has("release is running and healthy")
    });
    let start = lines
        .iter()
        .find(|l| message(l) == "fleet-agent starting")
        .expect("start-up line");
    assert_eq!(start.labels, labels("info"));
    // The agent's own event, with its fields, as on its standard output.
    assert_eq!(json(start)["fields"]["device"], DEVICE, "{}", start.line);
    assert_eq!(
        json(start)["fields"]["mode"],
        "standalone",
        "{}",
        start.line
    );
    // The pushed line is the stdout line (each formatted on its own: their timestamps differ
    // by microseconds).
    let without_time = |mut v: serde_json::Value| {
        v.as_object_mut().map(|o| o.remove("timestamp"));
        v
    };
    let stdout = agent.log_text();
    assert!(
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| without_time(v) == without_time(json(start))),
        "{} not on stdout",
        start.line
    );
    let healthy = lines
        .iter()
        .find(|l| message(l) == "release is running and healthy")
        .expect("update line");
    assert_eq!(
        json(healthy)["fields"]["release"],
        &r1[..12],
        "{}",
        healthy.line
    );
    let push = &rx.pushes()[0];
    assert_eq!(push.headers["content-type"], "application/x-protobuf");
    assert_eq!(push.headers["content-encoding"], "snappy");

    // SIGTERM: the lines of the stop are pushed before the process ends (the test harness
    // runs the agent at `fleet_agent=debug`: a `level="debug"` stream too).
    agent.stop();
    let lines = rx.wait_for("the stop line", Duration::from_secs(10), |l| {
        l.iter().any(|l| message(l) == "fleet-agent stopped")
    });
    assert!(
        lines.iter().any(|l| l.labels == labels("debug")),
        "no debug line in {} lines",
        lines.len()
    );
    assert!(rx.malformed().is_empty(), "{:#?}", rx.malformed());
}

/// `fleet_agent_loki_<name>` in the agent's `/metrics`, if there.
fn loki_metric(addr: &str, name: &str) -> Option<u64> {
    let (status, body) = support::prometheus::http_get(addr, "/metrics")?;
    assert_eq!(status, 200);
    let prefix = format!("fleet_agent_loki_{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_refusing_loki_costs_counted_log_lines_never_an_update() {
    if !ready("a_refusing_loki_costs_counted_log_lines_never_an_update") {
        return;
    }
    let rx = LokiReceiver::start();
    rx.set_answer(Answer::Status(500));
    let lab = Lab::new("loki-refusing");
    let r1 = lab.release("v1");
    let eps = [lab.primary.url("fleet.git"), lab.mirror.url("fleet.git")];
    let config = lab.config_with("agent", &eps, &lab.data_dir(), &loki_section(&rx));
    let addr = format!("127.0.0.1:{}", support::git_daemon::free_port());
    listen_metrics(&config, &addr);
    let agent = AgentProc::start(&config);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    let r2 = lab.release("v2");
    agent.wait_for("release 2 running", SETTLE, |s| idle_on(s, &r2));

    // A batch is pushed 5 times (backoff 0.5 s, 1 s, 2 s, 4 s) before it is dropped.
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let dropped = loki_metric(&addr, "dropped_total").expect("the drop counter");
        if dropped > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no drop counted");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(loki_metric(&addr, "sent_total"), Some(0));
    assert!(rx.requests() >= 5, "retried: {} request(s)", rx.requests());
    assert!(rx.lines().is_empty());
    assert!(
        agent.log_text().contains("cannot push logs to Loki"),
        "the failure is told on stdout"
    );

    // Loki answers again: shipping resumes by itself.
    rx.set_answer(Answer::Accept);
    let r3 = lab.release("v1");
    agent.wait_for("release 3 running", SETTLE, |s| idle_on(s, &r3));
    rx.wait_for("lines after Loki's recovery", SETTLE, |l| {
        l.iter().any(|l| message(l) == "logs reach Loki again")
    });
    assert!(loki_metric(&addr, "sent_total").is_some_and(|n| n > 0));
    assert!(rx.malformed().is_empty(), "{:#?}", rx.malformed());
}
