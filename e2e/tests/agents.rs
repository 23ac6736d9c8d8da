//! Three real `fleet-agent` processes in controller mode on the real Docker engine, enrolled
//! with a bootstrap token to the real `fleet-controller` binary, which watches a fleet
//! repository served by two real `git daemon`s (primary and mirror). A commit pushed to the
//! repository reaches every device through the waves: canary first, each wave only after the
//! one before ran it and baked.

mod support;

use std::time::{Duration, Instant};

use fleet_controller::config::GitSource;
use serde_json::Value;
use support::fleet::{Device, Repo};
use support::git_daemon::git_available;
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail};
use support::process::{free_addr, ControllerProcess};

const DEVICES: [&str; 3] = ["dev-1", "dev-2", "dev-3"];
const LIMIT: Duration = Duration::from_secs(120);

const FLEET: &str = "name: e2e\nrelease_branch: main\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: five-percent, percent: 5 }\n    - { name: quarter, percent: 25 }\n    - { name: all, percent: 100 }\n  bake: 2s\n  health_timeout: 90s\n  max_failure_rate: 5%\n  fleet_unhealthy_stop: 50%\n";
const INVENTORY: &str = "devices:\n  - id: dev-1\n    labels: { ring: canary }\n  - id: dev-2\n  - id: dev-3\nstacks:\n  - { name: app, select: {} }\n";

async fn get(c: &ControllerProcess, path: &str) -> Value {
    support::client()
        .get(c.url(path))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

/// Waits until every device is idle on `sha`; returns when each first was (from the start).
async fn wait_all_on(
    c: &ControllerProcess,
    devices: &mut [Device],
    sha: &str,
    what: &str,
) -> Vec<Duration> {
    let start = Instant::now();
    let mut when: Vec<Option<Duration>> = vec![None; devices.len()];
    loop {
        for (i, d) in devices.iter_mut().enumerate() {
            if let Some(status) = d.agent.exited() {
                panic!(
                    "{}'s agent exited ({status}):\n{}",
                    d.id,
                    tail(&d.agent.log_text(), 60)
                );
            }
            if when[i].is_none() && idle_on(&d.status(), sha) {
                when[i] = Some(start.elapsed());
            }
        }
        if when.iter().all(Option::is_some) {
            return when.into_iter().flatten().collect();
        }
        if start.elapsed() > LIMIT {
            let report: Vec<String> = devices
                .iter()
                .map(|d| {
                    format!(
                        "--- {} status {:#}\n{}",
                        d.id,
                        d.status(),
                        tail(&d.agent.log_text(), 30)
                    )
                })
                .collect();
            panic!(
                "timed out waiting for {what}:\n{}\n--- releases {:#}\n--- rollouts {:#}\n--- controller log\n{}",
                report.join("\n"),
                get(c, "/api/v1/releases").await,
                get(c, "/api/v1/rollouts").await,
                tail(&c.log(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_commit_reaches_three_real_agents_through_the_waves() {
    let test = "a_pushed_commit_reaches_three_real_agents_through_the_waves";
    if !git_available(test) || !docker_available(test) {
        return;
    }
    build_test_images();
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), FLEET, INVENTORY);
    let v1 = repo.release("v1");

    let mut cfg = fleet_controller::config::ControllerConfig {
        listen: free_addr(),
        data_dir: root.path().join("controller"),
        database_url: None,
        git: Some(GitSource {
            endpoints: repo.endpoints(),
            branch: "main".into(),
            poll_interval: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(5),
        }),
        ..Default::default()
    };
    cfg.checkin_interval = Duration::from_secs(1);
    cfg.reconcile_interval = Duration::from_millis(200);
    let controller = ControllerProcess::start(&cfg).await;
    let bootstrap = root.path().join("bootstrap-token");
    std::fs::write(&bootstrap, &controller.bootstrap).expect("bootstrap token file");

    let mut devices: Vec<Device> = DEVICES
        .iter()
        .map(|id| Device::start(root.path(), id, &repo, &controller.base, &bootstrap))
        .collect();
    // The first release reaches everyone (enrolled with the bootstrap token, no approval).
    wait_all_on(&controller, &mut devices, &v1, "every device on v1").await;
    let listed = get(&controller, "/api/v1/devices").await;
    let ids: Vec<&str> = listed
        .as_array()
        .expect("device list")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "three devices enrolled: {listed:#}");
    for d in &devices {
        assert!(
            std::fs::metadata(d.config.with_file_name("device-token")).is_ok(),
            "{} keeps its device token",
            d.id
        );
    }

    // Push v2: it goes canary → 5% → 25% (one device each with three devices).
    let v2 = repo.release("v2");
    let when = wait_all_on(&controller, &mut devices, &v2, "every device on v2").await;
    let rollout_id = format!("r-{}", &v2[..12]);
    let mut r = get(&controller, &format!("/api/v1/rollouts/{rollout_id}")).await;
    let deadline = Instant::now() + LIMIT;
    while r["state"] != "completed" {
        assert!(Instant::now() < deadline, "rollout never completed: {r:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        r = get(&controller, &format!("/api/v1/rollouts/{rollout_id}")).await;
    }
    let names: Vec<&str> = r["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["canary", "five-percent", "quarter"], "{r:#}");
    let wave_of = |id: &str| r["devices"][id]["wave"].as_u64().expect("wave of device");
    assert_eq!(
        wave_of("dev-1"),
        0,
        "the canary-labelled device is the canary"
    );
    // Each device ran v2 after every device of an earlier wave had, plus the 2 s bake.
    let mut by_wave: Vec<(u64, Duration, &str)> = devices
        .iter()
        .zip(&when)
        .map(|(d, t)| (wave_of(d.id), *t, d.id))
        .collect();
    by_wave.sort();
    for pair in by_wave.windows(2) {
        let ((wa, ta, a), (wb, tb, b)) = (pair[0], pair[1]);
        assert!(wa < wb, "one device per wave: {by_wave:?}");
        assert!(
            tb >= ta + Duration::from_millis(1500),
            "{b} (wave {wb}) ran v2 at {tb:?}, too soon after {a} (wave {wa}) at {ta:?}: no bake"
        );
    }
    // What runs is what the controller says: v2's web container, and only that.
    for d in &devices {
        let web = d.web();
        assert_eq!(
            web,
            vec![("fleet-test/app:v2".to_owned(), v2.clone(), true)],
            "{}'s web containers",
            d.id
        );
        let s = d.status();
        assert_eq!(s["previous"], v1.as_str(), "{}: {s:#}", d.id);
    }
    // The controller saw the devices report it.
    for id in DEVICES {
        let d = get(&controller, &format!("/api/v1/devices/{id}")).await;
        assert_eq!(d["device"]["current"], v2.as_str(), "{d:#}");
    }
    for d in &mut devices {
        d.agent.stop();
    }
}

/// `X-Hub-Signature-256` of `body` with `secret`, as GitHub (and Gitea's compatible header) sign.
fn hub_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Commit pushed → the canary's new container running, with the push webhook and long-poll
/// check-ins, against real agents: the controller's Git poll is 10 minutes and its check-in
/// interval 60 s, so only the webhook and the held check-in can bring the release in seconds.
/// `FLEET_BENCH_ROUNDS` pushes (default 3); each time printed, and the median (BENCHMARKS.md:
/// "Commit to canary").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_commit_reaches_the_canary_in_seconds_by_webhook_and_long_poll() {
    let test = "a_pushed_commit_reaches_the_canary_in_seconds_by_webhook_and_long_poll";
    if !git_available(test) || !docker_available(test) {
        return;
    }
    build_test_images();
    let rounds: usize = std::env::var("FLEET_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), FLEET, INVENTORY);
    let v1 = repo.release("v1");
    let secret = b"e2e webhook secret".to_vec();
    let secret_file = root.path().join("webhook.secret");
    std::fs::write(&secret_file, &secret).expect("secret");
    let cfg = fleet_controller::config::ControllerConfig {
        listen: free_addr(),
        data_dir: root.path().join("controller"),
        database_url: None,
        git: Some(GitSource {
            endpoints: repo.endpoints(),
            branch: "main".into(),
            poll_interval: Duration::from_secs(600),
            failover_timeout: Duration::from_secs(5),
        }),
        webhook_secret_file: Some(secret_file),
        ..Default::default()
    };
    assert_eq!(cfg.checkin_interval, Duration::from_secs(60));
    let controller = ControllerProcess::start(&cfg).await;
    let bootstrap = root.path().join("bootstrap-token");
    std::fs::write(&bootstrap, &controller.bootstrap).expect("bootstrap token file");
    // The canary alone: the other devices of the inventory never enroll.
    let mut devices = vec![Device::start(
        root.path(),
        "dev-1",
        &repo,
        &controller.base,
        &bootstrap,
    )];
    wait_all_on(&controller, &mut devices, &v1, "the canary on v1").await;

    let mut took = Vec::new();
    for round in 0..rounds {
        let web = if round % 2 == 0 { "v2" } else { "v1" };
        // Let the canary's check-in be held again (it checks in at once after an update).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pushed = Instant::now();
        let sha = repo.release(web);
        let body = format!("{{\"ref\": \"refs/heads/main\", \"after\": \"{sha}\"}}");
        let r = support::client()
            .post(controller.url("/api/v1/webhook"))
            .header(
                "X-Hub-Signature-256",
                hub_signature(&secret, body.as_bytes()),
            )
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("webhook");
        assert!(r.status().is_success(), "webhook: {}", r.status());
        loop {
            let d = &mut devices[0];
            if let Some(status) = d.agent.exited() {
                panic!(
                    "the agent exited ({status}):\n{}",
                    tail(&d.agent.log_text(), 60)
                );
            }
            if d.web()
                .iter()
                .any(|(_, release, running)| *running && release == &sha)
            {
                break;
            }
            assert!(
                pushed.elapsed() < Duration::from_secs(60),
                "round {round}: the canary did not run {sha} before its 60 s check-in interval \
                 would have brought it: the webhook and the long poll did not work:\n{}\n--- controller\n{}",
                tail(&d.agent.log_text(), 40),
                tail(&controller.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = pushed.elapsed();
        println!(
            "round {round}: commit pushed -> canary running {web}: {:.2} s",
            t.as_secs_f64()
        );
        took.push(t);
        wait_all_on(&controller, &mut devices, &sha, "the canary committed").await;
    }
    took.sort();
    println!(
        "commit pushed -> canary running (webhook + long poll, real agent): median {:.2} s, min {:.2} s, max {:.2} s, n={}",
        took[took.len() / 2].as_secs_f64(),
        took[0].as_secs_f64(),
        took[took.len() - 1].as_secs_f64(),
        took.len()
    );
}
