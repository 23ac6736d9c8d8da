//! The Loki side of the logging against the testkit's receiver, which decodes Loki's real push
//! format: labels and lines arrive; a refusing, rate-limiting or hanging Loki costs dropped
//! (and counted) lines, never a blocked logger or unbounded memory; shutdown flushes within
//! its deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_logging::{Console, LokiAuth, LokiConfig, LokiSetup, ShipOptions, ShipStats};
use fleet_testkit::loki::{Answer, Line, LokiReceiver};

/// Generous: the machine is shared. Timings are measured in benchmarks, not here.
const WAIT: Duration = Duration::from_secs(30);

fn setup(rx: &LokiReceiver, options: ShipOptions) -> LokiSetup {
    LokiSetup {
        config: LokiConfig {
            url: rx.url(),
            labels: BTreeMap::from([("site".to_owned(), "berlin".to_owned())]),
            tenant: None,
            auth: LokiAuth::None,
        },
        component: "agent",
        device: "pi-01".into(),
        options,
    }
}

/// Quick retries, so the failure paths show in seconds.
fn fast() -> ShipOptions {
    ShipOptions {
        batch_wait: Duration::from_millis(50),
        push_timeout: Duration::from_millis(500),
        max_attempts: 2,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        flush_deadline: Duration::from_secs(1),
        ..ShipOptions::default()
    }
}

/// Polls `rx` from an async test (the shipper runs on the same thread) until `pred` holds.
async fn wait_lines(rx: &LokiReceiver, what: &str, pred: impl Fn(&[Line]) -> bool) -> Vec<Line> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let lines = rx.lines();
        if pred(&lines) {
            return lines;
        }
        assert!(rx.malformed().is_empty(), "{:#?}", rx.malformed());
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(line: &Line) -> String {
    serde_json::from_str::<serde_json::Value>(&line.line)
        .ok()
        .and_then(|v| v["fields"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn lines_arrive_with_the_binarys_labels_and_the_configured_ones() {
    let rx = LokiReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("loki-token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let mut s = setup(&rx, fast());
    s.config.tenant = Some("fleet".into());
    s.config.auth = LokiAuth::Bearer {
        token_file: token.clone(),
    };
    let (subscriber, mut logging) = fleet_logging::subscriber(Console::Off, Some(s));
    let _guard = tracing::subscriber::set_default(subscriber);
    let shipping = logging.start();
    tracing::info!(release = "abc123", "release applied");
    tracing::warn!("disk almost full");
    tracing::debug!("not at the default level");
    let lines = wait_lines(&rx, "both lines", |l| l.len() >= 2).await;
    let info = lines
        .iter()
        .find(|l| message(l) == "release applied")
        .expect("the info line");
    assert_eq!(
        info.labels,
        BTreeMap::from([
            ("component".to_owned(), "agent".to_owned()),
            ("device".to_owned(), "pi-01".to_owned()),
            ("level".to_owned(), "info".to_owned()),
            ("site".to_owned(), "berlin".to_owned()),
        ])
    );
    // The line is the console's JSON line: fields included.
    let v: serde_json::Value = serde_json::from_str(&info.line).expect("a JSON line");
    assert_eq!(v["fields"]["release"], "abc123", "{}", info.line);
    assert_eq!(v["level"], "INFO");
    let warn = lines
        .iter()
        .find(|l| message(l) == "disk almost full")
        .expect("the warning");
    assert_eq!(warn.labels["level"], "warn");
    assert!(lines
        .iter()
        .all(|l| !l.line.contains("not at the default level")));
    let push = &rx.pushes()[0];
    assert_eq!(push.headers["content-type"], "application/x-protobuf");
    assert_eq!(push.headers["content-encoding"], "snappy");
    assert_eq!(push.headers["x-scope-orgid"], "fleet");
    assert_eq!(push.headers["authorization"], "Bearer s3cret");
    assert!(push.headers["user-agent"].starts_with("fleet-agent/"));
    let stats = logging.stats().expect("stats");
    wait_until("two sent", || stats.sent_total() == 2).await;
    assert_eq!(stats.dropped_total(), 0);

    // A rotated token is used at the next push, without a restart.
    std::fs::write(&token, "rotated").expect("token");
    tracing::error!("after rotation");
    wait_lines(&rx, "the line after rotation", |l| {
        l.iter()
            .any(|l| message(l) == "after rotation" && l.labels["level"] == "error")
    })
    .await;
    assert_eq!(
        rx.pushes()
            .last()
            .map(|p| p.headers["authorization"].clone()),
        Some("Bearer rotated".to_owned())
    );
    shipping.finish().await;
}

async fn refused_then_recovered(status: u16) {
    let rx = LokiReceiver::start();
    rx.set_answer(Answer::Status(status));
    let (subscriber, mut logging) =
        fleet_logging::subscriber(Console::Off, Some(setup(&rx, fast())));
    let _guard = tracing::subscriber::set_default(subscriber);
    let stats = logging.stats().expect("stats");
    let shipping = logging.start();
    for i in 0..5 {
        tracing::info!(i, "while Loki refuses");
    }
    wait_until("the refused lines counted as dropped", || {
        stats.dropped_total() >= 5
    })
    .await;
    // Retried (max_attempts 2) before being dropped.
    assert!(rx.requests() >= 2, "{} request(s)", rx.requests());
    assert_eq!(stats.sent_total(), 0);
    rx.set_answer(Answer::Accept);
    tracing::info!("Loki is back");
    let lines = wait_lines(&rx, "the line after recovery", |l| {
        l.iter().any(|l| message(l) == "Loki is back")
    })
    .await;
    assert!(
        lines.iter().all(|l| message(l) != "while Loki refuses"),
        "dropped lines are gone, not sent late: {lines:#?}"
    );
    // The warning about the failure was logged (once: the rate limit is a minute), and
    // reached Loki unless it was itself in a dropped batch; the recovery is told.
    wait_lines(&rx, "the recovery notice", |l| {
        l.iter().any(|l| message(l) == "logs reach Loki again")
    })
    .await;
    shipping.finish().await;
}

#[tokio::test]
async fn a_failing_loki_costs_counted_lines_and_shipping_resumes() {
    refused_then_recovered(500).await;
}

#[tokio::test]
async fn a_rate_limiting_loki_is_retried_like_a_failing_one() {
    refused_then_recovered(429).await;
}

#[tokio::test]
async fn a_refused_batch_is_not_retried() {
    let rx = LokiReceiver::start();
    rx.set_answer(Answer::Status(400));
    let mut options = fast();
    options.max_attempts = 5;
    let (subscriber, mut logging) =
        fleet_logging::subscriber(Console::Off, Some(setup(&rx, options)));
    let _guard = tracing::subscriber::set_default(subscriber);
    let stats = logging.stats().expect("stats");
    let shipping = logging.start();
    tracing::info!("a line Loki refuses");
    wait_until("the refused line dropped", || stats.dropped_total() >= 1).await;
    assert_eq!(rx.requests(), 1, "a 400 is not retried");
    shipping.finish().await;
}

#[tokio::test]
async fn a_hanging_loki_never_blocks_the_logger_and_the_queue_stays_bounded() {
    let rx = LokiReceiver::start();
    rx.set_answer(Answer::Hang);
    let options = ShipOptions {
        queue_capacity: 64,
        batch_max: 16,
        ..fast()
    };
    let (subscriber, mut logging) =
        fleet_logging::subscriber(Console::Off, Some(setup(&rx, options)));
    let _guard = tracing::subscriber::set_default(subscriber);
    let stats: Arc<ShipStats> = logging.stats().expect("stats");
    let shipping = logging.start();
    // Let the shipper take a first batch and hang on it.
    tracing::info!("first");
    wait_until("a push held by Loki", || rx.requests() >= 1).await;
    // Logging goes on at full speed (this thread is the shipper's: a logger that waited for the
    // queue would never return); past the queue's 64 lines, lines are dropped and counted.
    for i in 0..1000 {
        tracing::info!(i, "while Loki hangs");
    }
    let dropped = stats.dropped_total();
    assert!(
        dropped >= 1000 - 64,
        "at most the queue's 64 lines wait: {dropped} dropped"
    );
    // The held push times out (500 ms) and is retried: a second request, where a sender
    // without a timeout would wait forever on the first.
    wait_until("the held push timed out and retried", || rx.requests() >= 2).await;
    // Loki answers again: the queued lines go out, and new ones after them.
    rx.set_answer(Answer::Accept);
    wait_lines(&rx, "the queued lines", |l| {
        l.iter().any(|l| message(l) == "while Loki hangs")
    })
    .await;
    tracing::info!("after the hang");
    wait_lines(&rx, "a line after the hang", |l| {
        l.iter().any(|l| message(l) == "after the hang")
    })
    .await;
    let accounted = stats.sent_total() + stats.dropped_total();
    assert!(accounted >= 1002, "every line sent or counted: {accounted}");
    shipping.finish().await;
}

#[tokio::test]
async fn shutdown_pushes_what_is_queued() {
    let rx = LokiReceiver::start();
    let options = ShipOptions {
        // A batch would wait this long for more lines: only the shutdown sends them.
        batch_wait: Duration::from_secs(3600),
        ..fast()
    };
    let (subscriber, mut logging) =
        fleet_logging::subscriber(Console::Off, Some(setup(&rx, options)));
    let _guard = tracing::subscriber::set_default(subscriber);
    let stats = logging.stats().expect("stats");
    let shipping = logging.start();
    for i in 0..10 {
        tracing::info!(i, "before shutdown");
    }
    tracing::info!("stopping");
    tokio::task::yield_now().await;
    assert_eq!(rx.requests(), 0, "nothing sent before the shutdown");
    shipping.finish().await;
    let lines = rx.lines();
    assert_eq!(lines.len(), 11, "{lines:#?}");
    assert_eq!(message(&lines[10]), "stopping");
    assert_eq!(stats.sent_total(), 11);
}

#[tokio::test]
async fn shutdown_with_a_hanging_loki_ends_at_the_deadline_and_counts_the_rest() {
    let rx = LokiReceiver::start();
    rx.set_answer(Answer::Hang);
    let options = ShipOptions {
        push_timeout: Duration::from_secs(3600),
        ..fast()
    };
    let (subscriber, mut logging) =
        fleet_logging::subscriber(Console::Off, Some(setup(&rx, options)));
    let _guard = tracing::subscriber::set_default(subscriber);
    let stats = logging.stats().expect("stats");
    let shipping = logging.start();
    for i in 0..10 {
        tracing::info!(i, "queued");
    }
    wait_until("a push held by Loki", || rx.requests() >= 1).await;
    // The flush deadline is 1 s; an hour-long push timeout does not hold the shutdown.
    tokio::time::timeout(WAIT, shipping.finish())
        .await
        .expect("shutdown ends at its deadline");
    assert_eq!(stats.sent_total(), 0);
    // The 10 lines, and the warning that says so (logged once the queue is closed).
    assert_eq!(stats.dropped_total(), 11);
}

#[test]
fn without_loki_nothing_is_built() {
    let (_subscriber, mut logging) = fleet_logging::subscriber(Console::Off, None);
    assert!(logging.stats().is_none());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let before = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let shipping = logging.start();
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            before,
            "no shipper task"
        );
        shipping.finish().await;
    });
}
