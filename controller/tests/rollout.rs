//! The rollout suite: 100 simulated devices speaking the real HTTP protocol, a real `git
//! daemon` serving the fleet repository, and the controller on SQLite and on PostgreSQL.
//! Waves go canary → 5% → 25% → 100%; failures halt and roll the wave back without touching
//! later waves; the emergency stop holds everything; a restarted controller resumes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_client::sim::SimFleet;
use fleet_config::protocol::{Desired, ReleaseId};
use fleet_controller::config::GitSource;
use serde_json::{json, Value};
use support::fleet_repo::{device_ids, FleetRepo};
use support::process::{free_addr, ControllerProcess};
use support::{client, database_url, test_config, viewer_get, Remote, Store, TestController};

const DEVICES: usize = 100;
const CANARIES: usize = 2;
const LIMIT: Duration = Duration::from_secs(180);

struct Suite {
    dir: tempfile::TempDir,
    url: String,
    repo: FleetRepo,
}

impl Suite {
    async fn new(store: Store, test: &str, bake: &str) -> Option<Suite> {
        if !support::git_daemon::git_available(test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let url = database_url(store, dir.path(), test).await?;
        let repo = FleetRepo::new(dir.path(), DEVICES, CANARIES, bake);
        Some(Suite { dir, url, repo })
    }

    fn git(&self) -> GitSource {
        GitSource {
            endpoints: vec![self.repo.url()],
            branch: "main".into(),
            poll_interval: Duration::from_millis(300),
            failover_timeout: Duration::from_secs(5),
        }
    }

    async fn controller(&self) -> TestController {
        TestController::start(test_config(
            &self.dir.path().join("controller"),
            &self.url,
            Some(self.git()),
        ))
        .await
    }
}

fn on(fleet: &SimFleet, release: &str) -> BTreeSet<String> {
    fleet
        .devices
        .iter()
        .filter(|d| d.current.as_ref().map(ReleaseId::as_str) == Some(release))
        .map(|d| d.id.clone())
        .collect()
}

fn offered(fleet: &SimFleet, release: &str) -> BTreeSet<String> {
    fleet
        .devices
        .iter()
        .filter(|d| d.offered.iter().any(|r| r.as_str() == release))
        .map(|d| d.id.clone())
        .collect()
}

/// Check-in rounds until `done` holds; returns how many rounds ran.
async fn rounds_until(
    fleet: &mut SimFleet,
    what: &str,
    mut done: impl FnMut(&SimFleet) -> bool,
) -> usize {
    let deadline = Instant::now() + LIMIT;
    let mut n = 0;
    while !done(fleet) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let errors = fleet.round(&BTreeSet::new(), 16).await;
        assert!(errors.is_empty(), "check-ins failed: {:?}", errors.first());
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n
}

async fn rollout_of(c: &impl Remote, sha: &str) -> Value {
    let id = format!("r-{}", &sha[..12]);
    viewer_get(c, &format!("/api/v1/rollouts/{id}")).await
}

async fn enrolled_fleet(c: &TestController) -> SimFleet {
    SimFleet::enroll(&c.base, &c.bootstrap, &device_ids(DEVICES))
        .await
        .expect("enroll 100 devices")
}

/// Converges the fleet on a first good release.
async fn first_release(s: &Suite, fleet: &mut SimFleet) -> String {
    let a = s.repo.release("v1");
    rounds_until(fleet, "every device on v1", |f| on(f, &a).len() == DEVICES).await;
    a
}

async fn waves_in_order(store: Store) {
    let test = format!("waves_in_order_{store:?}");
    let Some(s) = Suite::new(store, &test, "1s").await else {
        return;
    };
    let c = s.controller().await;
    let mut fleet = enrolled_fleet(&c).await;
    let a = s.repo.release("v1");
    // Record when each device was first told about v1 and when it ran it.
    let start = Instant::now();
    let mut told: BTreeMap<String, Duration> = BTreeMap::new();
    let mut ran: BTreeMap<String, Duration> = BTreeMap::new();
    rounds_until(&mut fleet, "every device on v1", |f| {
        let t = start.elapsed();
        for d in &f.devices {
            if d.offered.iter().any(|r| r.as_str() == a) {
                told.entry(d.id.clone()).or_insert(t);
            }
            if d.current.as_ref().map(ReleaseId::as_str) == Some(a.as_str()) {
                ran.entry(d.id.clone()).or_insert(t);
            }
        }
        ran.len() == DEVICES
    })
    .await;
    // The last wave still bakes before the rollout completes.
    let r = rounds_until_state(&c, &mut fleet, &a, "completed").await;
    let waves = r["waves"].as_array().expect("waves");
    let names: Vec<&str> = waves.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, ["canary", "five-percent", "quarter", "all"]);
    let sizes: Vec<u64> = waves.iter().filter_map(|w| w["devices"].as_u64()).collect();
    assert_eq!(
        sizes,
        [2, 3, 20, 75],
        "cumulative 5% / 25% / 100% of 100 devices, rounded up"
    );
    // Each wave was told only after every device of the one before ran v1 and it baked (1 s).
    let devices = &r["devices"];
    let wave_of = |id: &str| devices[id]["wave"].as_u64().expect("wave");
    for k in 0..3u64 {
        let last_ran = ran
            .iter()
            .filter(|(id, _)| wave_of(id) == k)
            .map(|(_, t)| *t)
            .max()
            .expect("ran");
        let first_told = told
            .iter()
            .filter(|(id, _)| wave_of(id) == k + 1)
            .map(|(_, t)| *t)
            .min()
            .expect("told");
        assert!(
            first_told >= last_ran + Duration::from_millis(900),
            "wave {} told at {first_told:?}, before wave {k} ran everywhere ({last_ran:?}) and baked",
            k + 1
        );
    }
    let audit = viewer_get(&c, "/api/v1/audit?limit=1000").await;
    let started: Vec<String> = audit
        .as_array()
        .expect("audit")
        .iter()
        .rev()
        .filter(|e| e["action"] == "rollout.wave_started")
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(started.len(), 4, "{started:?}");
    assert!(
        started[0].contains("canary") && started[3].contains("(all)"),
        "{started:?}"
    );
    c.stop().await;
}

/// Check-in rounds until the rollout of `sha` is in `state` (through the API).
async fn rounds_until_state(
    c: &impl Remote,
    fleet: &mut SimFleet,
    sha: &str,
    state: &str,
) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = rollout_of(c, sha).await;
        if r["state"] == state {
            return r;
        }
        assert!(Instant::now() < deadline, "rollout never {state}: {r:#}");
        let errors = fleet.round(&BTreeSet::new(), 16).await;
        assert!(errors.is_empty(), "check-ins failed: {:?}", errors.first());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn more_rounds(fleet: &mut SimFleet, n: usize) {
    for _ in 0..n {
        let errors = fleet.round(&BTreeSet::new(), 16).await;
        assert!(errors.is_empty(), "check-ins failed: {:?}", errors.first());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn failures_halt_and_roll_the_wave_back(store: Store) {
    let test = format!("halt_{store:?}");
    let Some(s) = Suite::new(store, &test, "200ms").await else {
        return;
    };
    let c = s.controller().await;
    let mut fleet = enrolled_fleet(&c).await;
    let a = first_release(&s, &mut fleet).await;
    let bad = s.repo.release("v2-broken");
    let bad_id: ReleaseId = bad.parse().expect("sha");
    fleet.fails = Arc::new(move |_, r| *r == bad_id);
    let r = rounds_until_state(&c, &mut fleet, &bad, "halted").await;
    // The gate may close on the first failed canary (1 of 2 is already over the threshold) or
    // on both, depending on which check-in the controller sees first.
    let failed = r["waves"][0]["failed"].as_u64().expect("failed count");
    assert!((1..=2).contains(&failed), "{r:#}");
    assert!(
        r["detail"]["reason"]
            .as_str()
            .is_some_and(|m| m.contains("of 2 devices of wave 1 (canary) failed")),
        "{r:#}"
    );
    // The canaries are told to go back to v1 (they rolled back on their own already); keep
    // checking in for a while: later waves are never told about the bad release.
    more_rounds(&mut fleet, 15).await;
    let canaries: BTreeSet<String> = device_ids(CANARIES).into_iter().collect();
    assert_eq!(
        offered(&fleet, &bad),
        canaries,
        "only the canaries were ever offered it"
    );
    assert_eq!(on(&fleet, &a).len(), DEVICES, "every device runs v1");
    for id in &canaries {
        let d = viewer_get(&c, &format!("/api/v1/devices/{id}")).await;
        assert_eq!(
            d["device"]["desired_release"],
            a.as_str(),
            "{id} is sent back: {d:#}"
        );
        let answer = fleet
            .device(id)
            .and_then(|d| d.last_answer.clone())
            .expect("answer");
        assert!(
            matches!(&answer.desired, Desired::Release { release, .. } if release.as_str() == a),
            "{answer:?}"
        );
    }
    assert_eq!(
        rollout_of(&c, &bad).await["state"],
        "halted",
        "it stays halted until someone decides"
    );
    // An operator aborts: the halted rollout is over; nothing changes for the devices.
    let r = client()
        .post(c.url(&format!("/api/v1/rollouts/r-{}/abort", &bad[..12])))
        .bearer_auth(&c.operator)
        .json(&json!({"reason": "bad build"}))
        .send()
        .await
        .expect("abort");
    assert_eq!(r.status(), 200);
    more_rounds(&mut fleet, 5).await;
    assert_eq!(on(&fleet, &a).len(), DEVICES);
    c.stop().await;
}

async fn the_emergency_stop_holds_every_device_until_resume(store: Store) {
    let test = format!("stop_{store:?}");
    let Some(s) = Suite::new(store, &test, "1s").await else {
        return;
    };
    let c = s.controller().await;
    let mut fleet = enrolled_fleet(&c).await;
    let a = first_release(&s, &mut fleet).await;
    let b = s.repo.release("v2");
    // Stop in the middle of the second wave.
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = rollout_of(&c, &b).await;
        if r["detail"]["wave"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never reached wave 2: {r:#}");
        fleet.round(&BTreeSet::new(), 16).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client()
        .post(c.url("/api/v1/stop"))
        .bearer_auth(&c.operator)
        .json(&json!({"reason": "test: stop mid-wave"}))
        .send()
        .await
        .expect("stop");
    assert_eq!(r.status(), 200);
    let told_before = offered(&fleet, &b);
    more_rounds(&mut fleet, 30).await;
    for d in &fleet.devices {
        let answer = d.last_answer.as_ref().expect("answer");
        assert_eq!(answer.desired, Desired::Hold, "{}: {answer:?}", d.id);
        assert!(answer.emergency_stop);
    }
    assert_eq!(
        offered(&fleet, &b),
        told_before,
        "no device receives a new release while stopped"
    );
    assert!(on(&fleet, &b).len() < DEVICES);
    assert!(
        rollout_of(&c, &b).await["detail"]["wave"] == 1,
        "no wave started while stopped"
    );
    let r = client()
        .post(c.url("/api/v1/resume"))
        .bearer_auth(&c.operator)
        .json(&json!({"reason": "test: resume"}))
        .send()
        .await
        .expect("resume");
    assert_eq!(r.status(), 200);
    rounds_until(&mut fleet, "every device on v2 after resume", |f| {
        on(f, &b).len() == DEVICES
    })
    .await;
    let _ = a;
    c.stop().await;
}

/// The real binary, killed with SIGKILL in the middle of the third wave and started again on
/// the same store: the stored rollout goes on where it was, it is not started again.
async fn a_killed_controller_resumes_the_rollout(store: Store) {
    let test = format!("restart_{store:?}");
    let Some(s) = Suite::new(store, &test, "500ms").await else {
        return;
    };
    let mut cfg = test_config(&s.dir.path().join("controller"), &s.url, Some(s.git()));
    cfg.listen = free_addr();
    let mut c = ControllerProcess::start(&cfg).await;
    let mut fleet = SimFleet::enroll(&c.base, &c.bootstrap, &device_ids(DEVICES))
        .await
        .expect("enroll 100 devices");
    // Online before the release, so its first wave counts them when it starts (a wave that
    // starts with none online starts again for those that come: a second `wave_started`).
    fleet.round(&BTreeSet::new(), 16).await;
    let a = s.repo.release("v1");
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = rollout_of(&c, &a).await;
        if r["detail"]["wave"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never reached wave 3: {r:#}");
        fleet.round(&BTreeSet::new(), 16).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = on(&fleet, &a).len();
    c.kill();
    // Devices cannot reach it meanwhile; they keep what they run.
    let errors = fleet.round(&BTreeSet::new(), 16).await;
    assert_eq!(errors.len(), DEVICES, "the controller is down");
    assert_eq!(on(&fleet, &a).len(), before);
    // A new process on the same store and address; with PostgreSQL it must win the advisory
    // lock the killed one held, with SQLite the lock file.
    c.restart(1).await;
    let r = rollout_of(&c, &a).await;
    assert_eq!(
        r["detail"]["wave"], 2,
        "the stored rollout is where it was: {r:#}"
    );
    rounds_until(&mut fleet, "every device on v1 after the restart", |f| {
        on(f, &a).len() == DEVICES
    })
    .await;
    assert!(before < DEVICES);
    rounds_until_state(&c, &mut fleet, &a, "completed").await;
    let audit = viewer_get(&c, "/api/v1/audit?limit=1000").await;
    let count = |action: &str| {
        audit
            .as_array()
            .expect("audit")
            .iter()
            .filter(|e| e["action"] == action)
            .count()
    };
    assert_eq!(count("rollout.created"), 1, "resumed, not started again");
    let starts: Vec<String> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| e["action"] == "rollout.wave_started")
        .map(|e| format!("{} {}", e["at_ms"], e["reason"]))
        .collect();
    assert_eq!(starts.len(), 4, "each wave started once: {starts:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_happen_in_order_on_sqlite() {
    waves_in_order(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_happen_in_order_on_postgres() {
    waves_in_order(Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_halt_and_roll_back_the_wave_on_sqlite() {
    failures_halt_and_roll_the_wave_back(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_halt_and_roll_back_the_wave_on_postgres() {
    failures_halt_and_roll_the_wave_back(Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emergency_stop_holds_until_resume_on_sqlite() {
    the_emergency_stop_holds_every_device_until_resume(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emergency_stop_holds_until_resume_on_postgres() {
    the_emergency_stop_holds_every_device_until_resume(Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_resumes_on_sqlite() {
    a_killed_controller_resumes_the_rollout(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_resumes_on_postgres() {
    a_killed_controller_resumes_the_rollout(Store::Postgres).await;
}

/// A pass writes desired releases in batches, and stops after the batch that spends its budget
/// (half of `reconcile_interval`): the rest are the next pass's, woken at once. Here 2,500
/// devices enrolled while the controller was down are all owed the last completed release at
/// its first pass, with a budget of 1 ms: they are told over several passes, every one of them.
async fn a_big_backlog_of_desired_releases(store: Store) {
    const N: usize = 2_500;
    let test = format!("big_backlog_{store:?}");
    if !support::git_daemon::git_available(&test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(url) = database_url(store, dir.path(), &test).await else {
        return;
    };
    let repo = FleetRepo::new(dir.path(), N, 2, "0s");
    let mut cfg = test_config(
        &dir.path().join("controller"),
        &url,
        Some(GitSource {
            endpoints: vec![repo.url()],
            branch: "main".into(),
            poll_interval: Duration::from_millis(300),
            failover_timeout: Duration::from_secs(5),
        }),
    );
    cfg.reconcile_interval = Duration::from_millis(2);
    // No device enrolled yet: the rollout of v1 completes at once.
    let c = TestController::start(cfg.clone()).await;
    let a = repo.release("v1");
    let deadline = Instant::now() + LIMIT;
    while rollout_of(&c, &a).await["state"] != "completed" {
        assert!(Instant::now() < deadline, "v1 never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.stop().await;
    let db = fleet_controller::db::Db::open(&url).await.expect("store");
    for id in device_ids(N) {
        db.enroll_device(&id, &format!("host-{id}"), "aarch64", "test")
            .await
            .expect("enroll");
    }
    let c = TestController::start(cfg).await;
    let told = |c: &TestController| {
        let (db, a) = (c.db().clone(), a.clone());
        async move {
            db.devices()
                .await
                .expect("devices")
                .iter()
                .filter(|d| d.desired_release.as_ref().map(ReleaseId::as_str) == Some(&a))
                .count()
        }
    };
    let deadline = Instant::now() + LIMIT;
    while told(&c).await < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} devices told v1",
            told(&c).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = client()
        .get(c.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let deferred: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fleet_engine_deferred_passes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no deferred-pass counter in:\n{metrics}"));
    assert!(
        deferred >= 2.0,
        "{N} desired releases in batches of 1,000 with a 1 ms budget take three passes or more; {deferred} passes deferred"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_backlog_of_desired_releases_is_written_over_several_passes_on_sqlite() {
    a_big_backlog_of_desired_releases(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_backlog_of_desired_releases_is_written_over_several_passes_on_postgres() {
    a_big_backlog_of_desired_releases(Store::Postgres).await;
}
