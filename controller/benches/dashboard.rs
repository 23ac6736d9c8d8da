//! Dashboard benchmark (BENCHMARKS.md, issue 5): page times with 10,000 devices.
//!
//! A controller served in-process on SQLite; `FLEET_BENCH_DEVICES` (default 10,000) simulated
//! devices enroll with a bootstrap token and check in once over the real protocol (a few are
//! updating or in safe mode, so filters have something to find); an operator logs in through
//! the login form; then each page is fetched `FLEET_BENCH_RUNS` times (default 30, after 3
//! warm-ups) with the session cookie, one request at a time. Reported per page: median, p90
//! and max of the whole request as the browser would see it (HTML fully read), and the size.
//! Nothing is asserted about speed; a failed request fails the benchmark.
//!
//! `cargo bench -p fleet-controller --bench dashboard`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use fleet_client::sim::{FailureRule, SimDevice};
use fleet_config::protocol::UpdatePhase;
use futures_util::stream::{self, StreamExt};
use support::{test_config, TestController};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name}={s} is not a number"))
        })
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let devices = knob("FLEET_BENCH_DEVICES", 10_000);
    let runs = knob("FLEET_BENCH_RUNS", 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let mut cfg = test_config(&dir.path().join("controller"), &url, None);
    cfg.offline_after = Duration::from_secs(3600);
    let c = TestController::start(cfg).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let t0 = Instant::now();
    let ids: Vec<String> = (0..devices).map(|i| format!("dev-{i:05}")).collect();
    let fails: FailureRule = std::sync::Arc::new(|_, _| false);
    let results: Vec<Result<(), String>> = stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let (client, base, boot, fails) = (&client, &c.base, &c.bootstrap, &fails);
            async move {
                let mut d = SimDevice::enroll(client, base, boot, id)
                    .await
                    .map_err(|e| e.to_string())?;
                if i % 53 == 0 {
                    d.phase = UpdatePhase::Fetching;
                } else if i % 97 == 0 {
                    d.phase = UpdatePhase::SafeMode;
                }
                d.checkin(client, base, fails)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        panic!("enrollment failed: {e}");
    }
    println!(
        "{devices} devices enrolled and checked in once in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let cookie =
        support::dashboard::session_cookie(&c.base, "operator", "a long test password").await;

    let mid = format!("/devices/dev-{:05}", devices / 2);
    let last_page = format!("/devices?page={}", devices / 50);
    let pages: Vec<(&str, String)> = vec![
        ("overview", "/".into()),
        ("device list, first page", "/devices".into()),
        ("device list, last page", last_page),
        ("filter state=updating", "/devices?state=updating".into()),
        (
            "search + sort by last seen",
            "/devices?q=dev-01&sort=last_seen&dir=desc".into(),
        ),
        ("device detail", mid),
        ("rollouts", "/rollouts".into()),
        ("audit log", "/audit".into()),
    ];
    println!(
        "\n{:<30} {:>9} {:>9} {:>9} {:>9}",
        "page", "p50 ms", "p90 ms", "max ms", "KB"
    );
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(runs);
        let mut size = 0;
        for i in 0..runs + 3 {
            let t = Instant::now();
            let resp = client
                .get(c.url(path))
                .header("cookie", &cookie)
                .send()
                .await
                .expect("request");
            let status = resp.status();
            let body = resp.bytes().await.expect("body");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert!(status.is_success(), "{path}: {status}");
            size = body.len();
            if i >= 3 {
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<30} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            pct(&times, 0.5),
            pct(&times, 0.9),
            times[times.len() - 1],
            size as f64 / 1024.0
        );
    }
    println!("({runs} requests each after 3 warm-ups, one at a time; {devices} devices, SQLite)");
    // Where the list pages' time goes: reading every device row from the store.
    let mut reads = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let n = c.db().devices().await.expect("devices").len();
        assert_eq!(n, devices);
        reads.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    reads.sort_by(f64::total_cmp);
    println!(
        "reading all {devices} device rows from the store: {:.1} ms median of 10",
        pct(&reads, 0.5)
    );
    c.stop().await;
}
