//! Long-poll check-ins (issue 14), against the real controller: a check-in with nothing new
//! is held and answered "come back at once" at its bound; it is answered as soon as the stop
//! or the device's desired release changes, also when the change is made on another replica
//! (PostgreSQL); beyond `long_poll.max_waiting` check-ins are answered at once with the usual
//! interval; a plain check-in (an older agent) is never held.

mod support;

use std::time::{Duration, Instant};

use fleet_config::protocol::{CheckinRequest, CheckinResponse, Desired, EnrollResponse};
use fleet_controller::config::ControllerConfig;
use serde_json::json;
use support::fleet_repo::FleetRepo;
use support::process::{free_addr, ControllerProcess};
use support::{client, database_url, test_config, Store, TestController};

fn request(id: &str, long_poll_secs: u64) -> CheckinRequest {
    CheckinRequest {
        long_poll_secs,
        ..support::checkin_request(id)
    }
}

async fn enroll(base: &str, bootstrap: &str, id: &str) -> String {
    let r: EnrollResponse = client()
        .post(format!("{base}/api/v1/enroll"))
        .bearer_auth(bootstrap)
        .json(
            &json!({"device_id": id, "hostname": id, "arch": "aarch64", "agent_version": "0.1.0"}),
        )
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    match r {
        EnrollResponse::Enrolled { token, .. } => token,
        other => panic!("{other:?}"),
    }
}

/// One check-in; its answer and how long it took.
async fn checkin(base: &str, token: &str, req: &CheckinRequest) -> (CheckinResponse, Duration) {
    let t = Instant::now();
    let r = client()
        .post(format!("{base}/api/v1/checkin"))
        .bearer_auth(token)
        .json(req)
        .send()
        .await
        .expect("check-in");
    assert!(r.status().is_success(), "{}", r.status());
    (r.json().await.expect("answer"), t.elapsed())
}

async fn stop(base: &str, operator: &str) {
    let r = client()
        .post(format!("{base}/api/v1/stop"))
        .bearer_auth(operator)
        .json(&json!({"reason": "long-poll test"}))
        .send()
        .await
        .expect("stop");
    assert!(r.status().is_success(), "{}", r.status());
}

fn config(dir: &std::path::Path, url: &str, max: Duration, waiting: usize) -> ControllerConfig {
    let mut cfg = test_config(dir, url, None);
    cfg.checkin_interval = Duration::from_secs(60);
    cfg.long_poll.max = max;
    cfg.long_poll.max_waiting = waiting;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_with_nothing_new_is_held_until_its_bound_and_a_plain_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(Store::Sqlite, dir.path(), "long_poll_bound").await else {
        return;
    };
    let c = TestController::start(config(dir.path(), &url, Duration::from_secs(3), 8)).await;
    let token = enroll(&c.base, &c.bootstrap, "lp-1").await;
    // Asks for 30 s; the controller's bound is 3 s.
    let (a, took) = checkin(&c.base, &token, &request("lp-1", 30)).await;
    assert_eq!(a.desired, Desired::Hold);
    assert_eq!(
        a.next_checkin_secs, 0,
        "come back at once: the poll is the wait"
    );
    assert!(
        took >= Duration::from_millis(2_900),
        "held to the bound: {took:?}"
    );
    assert!(
        took < Duration::from_secs(25),
        "not past it by much: {took:?}"
    );
    // An agent that does not long-poll is answered at once with the interval.
    let (a, took) = checkin(&c.base, &token, &request("lp-1", 0)).await;
    assert_eq!(a.next_checkin_secs, 60);
    assert!(took < Duration::from_secs(2), "{took:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_check_in_is_answered_when_the_stop_is_set_and_the_cap_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(Store::Sqlite, dir.path(), "long_poll_stop").await else {
        return;
    };
    let c = TestController::start(config(dir.path(), &url, Duration::from_secs(40), 1)).await;
    let t1 = enroll(&c.base, &c.bootstrap, "lp-1").await;
    let t2 = enroll(&c.base, &c.bootstrap, "lp-2").await;
    let base = c.base.clone();
    let held = tokio::spawn(async move { checkin(&base, &t1, &request("lp-1", 40)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The one place is taken: another long poll is answered at once, with the interval.
    let (a, took) = checkin(&c.base, &t2, &request("lp-2", 40)).await;
    assert_eq!(a.next_checkin_secs, 60, "over the cap: a plain answer");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!held.is_finished(), "the first is still held");
    let set = Instant::now();
    stop(&c.base, &c.operator).await;
    let (a, took) = held.await.expect("held check-in");
    assert!(a.emergency_stop, "{a:?}");
    assert!(
        set.elapsed() < Duration::from_secs(10) && took < Duration::from_secs(30),
        "answered when the stop was set, not at the 40 s bound: {took:?}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_answers_the_canarys_held_check_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    if !support::git_daemon::git_available("long_poll_release") {
        return;
    }
    let Some(url) = database_url(Store::Sqlite, dir.path(), "long_poll_release").await else {
        return;
    };
    let repo = FleetRepo::new(dir.path(), 3, 1, "0s");
    let mut cfg = config(&dir.path().join("c"), &url, Duration::from_secs(40), 8);
    cfg.git = Some(fleet_controller::config::GitSource {
        endpoints: vec![repo.url()],
        branch: "main".into(),
        poll_interval: Duration::from_millis(300),
        failover_timeout: Duration::from_secs(5),
    });
    let c = TestController::start(cfg).await;
    let token = enroll(&c.base, &c.bootstrap, "dev-000").await;
    let base = c.base.clone();
    let t = token.clone();
    let held = tokio::spawn(async move { checkin(&base, &t, &request("dev-000", 40)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!held.is_finished(), "nothing to tell yet: held");
    let pushed = Instant::now();
    let sha = repo.release("v1");
    let (a, _) = held.await.expect("held check-in");
    let waited = pushed.elapsed();
    match &a.desired {
        Desired::Release { release, .. } => assert_eq!(release.as_str(), sha),
        other => panic!("expected the new release, got {other:?}"),
    }
    assert!(
        waited < Duration::from_secs(20),
        "at once, not at the bound: {waited:?}"
    );
    println!("commit pushed -> canary's held check-in answered: {waited:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_held_on_a_follower_is_answered_by_a_change_on_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(Store::Postgres, dir.path(), "long_poll_follower").await else {
        return;
    };
    let mut a_cfg = config(&dir.path().join("a"), &url, Duration::from_secs(40), 8);
    a_cfg.listen = free_addr();
    let leader = ControllerProcess::start(&a_cfg).await;
    let mut b_cfg = config(&dir.path().join("b"), &url, Duration::from_secs(40), 8);
    b_cfg.listen = free_addr();
    let follower = ControllerProcess::start_replica(&b_cfg, &leader).await;
    let token = enroll(&leader.base, &leader.bootstrap, "lp-f").await;
    let base = follower.base.clone();
    let held = tokio::spawn(async move { checkin(&base, &token, &request("lp-f", 40)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!held.is_finished());
    stop(&leader.base, &leader.operator).await;
    let (a, took) = held.await.expect("held check-in");
    assert!(a.emergency_stop, "{a:?}");
    assert!(
        took < Duration::from_secs(30),
        "answered on the change: {took:?}"
    );
}
