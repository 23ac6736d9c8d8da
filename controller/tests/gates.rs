//! Rollout gates as an operator meets them (issue 14), on SQLite and PostgreSQL, with
//! simulated devices speaking the real protocol and a real `git daemon`: pinning a device
//! (by the API fleetctl uses, and by `pin:` in devices.yaml) keeps it out of rollouts, with
//! audit entries and clear refusals; the fleet-wide gate trips after a rollout completed, an
//! operator's resume lets a fix through, and the gate arms again once the fleet recovers.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet_client::sim::SimFleet;
use fleet_config::protocol::{HealthState, ReleaseId};
use fleet_controller::config::GitSource;
use serde_json::{json, Value};
use support::fleet_repo::{device_ids, FleetRepo};
use support::{client, database_url, test_config, viewer_get, Store, TestController};

const DEVICES: usize = 20;
const LIMIT: Duration = Duration::from_secs(180);

struct Suite {
    dir: tempfile::TempDir,
    url: String,
    repo: FleetRepo,
}

impl Suite {
    async fn new(store: Store, test: &str) -> Option<Suite> {
        if !support::git_daemon::git_available(test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let url = database_url(store, dir.path(), test).await?;
        let repo = FleetRepo::new(dir.path(), DEVICES, 2, "0s");
        Some(Suite { dir, url, repo })
    }

    /// A controller, the fleet enrolled, and every device on a first release `v1`.
    async fn on_v1(&self) -> (TestController, SimFleet, String) {
        let c = self.controller().await;
        let mut fleet = SimFleet::enroll(&c.base, &c.bootstrap, &device_ids(DEVICES))
            .await
            .expect("enroll");
        let v1 = self.repo.release("v1");
        rounds_until(&mut fleet, "every device on v1", |f| {
            on(f, &v1).len() == DEVICES
        })
        .await;
        (c, fleet, v1)
    }

    async fn controller(&self) -> TestController {
        let git = GitSource {
            endpoints: vec![self.repo.url()],
            branch: "main".into(),
            poll_interval: Duration::from_millis(300),
            failover_timeout: Duration::from_secs(5),
        };
        TestController::start(test_config(
            &self.dir.path().join("controller"),
            &self.url,
            Some(git),
        ))
        .await
    }
}

fn current(fleet: &SimFleet, id: &str) -> Option<String> {
    fleet
        .device(id)
        .and_then(|d| d.current.as_ref())
        .map(|r| r.as_str().to_owned())
}

fn on(fleet: &SimFleet, release: &str) -> BTreeSet<String> {
    fleet
        .devices
        .iter()
        .filter(|d| d.current.as_ref().map(ReleaseId::as_str) == Some(release))
        .map(|d| d.id.clone())
        .collect()
}

async fn rounds_until(fleet: &mut SimFleet, what: &str, mut done: impl FnMut(&SimFleet) -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done(fleet) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let errors = fleet.round(&BTreeSet::new(), 8).await;
        assert!(errors.is_empty(), "check-ins failed: {:?}", errors.first());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(c: &TestController, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(c.url(path))
        .bearer_auth(&c.operator)
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn audit_has(c: &TestController, actor: &str, action: &str, target: &str) -> bool {
    let log = viewer_get(c, "/api/v1/audit").await;
    log.as_array()
        .into_iter()
        .flatten()
        .any(|e| e["actor"] == actor && e["action"] == action && e["target"] == target)
}

async fn completed(c: &TestController, sha: &str) -> bool {
    viewer_get(c, &format!("/api/v1/rollouts/r-{}", &sha[..12])).await["state"] == "completed"
}

async fn pins_keep_devices_out_of_rollouts(store: Store) {
    let test = format!("pins_{store:?}");
    let Some(s) = Suite::new(store, &test).await else {
        return;
    };
    let (c, mut fleet, v1) = s.on_v1().await;

    // Refusals name the problem and change nothing.
    let (st, body) = post(
        &c,
        "/api/v1/devices/dev-005/pin",
        json!({"release": "deadbeef00", "reason": "x"}),
    )
    .await;
    assert_eq!(st, 404, "{body}");
    assert!(
        body.to_string().contains("no valid release `deadbeef00`"),
        "{body}"
    );
    let (st, body) = post(
        &c,
        "/api/v1/devices/dev-005/pin",
        json!({"release": v1, "reason": "  "}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(body.to_string().contains("reason"), "{body}");
    let (st, body) = post(
        &c,
        "/api/v1/devices/dev-005/pin",
        json!({"release": "v1", "reason": "x"}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(body.to_string().contains("at least 7 hex digits"), "{body}");
    let (st, _) = post(
        &c,
        "/api/v1/devices/nobody/pin",
        json!({"release": v1, "reason": "x"}),
    )
    .await;
    assert_eq!(st, 404);
    assert!(viewer_get(&c, "/api/v1/devices/dev-005").await["device"]["pinned_release"].is_null());

    // An operator pins dev-005 to v1 by a prefix of its sha.
    let (st, body) = post(
        &c,
        "/api/v1/devices/dev-005/pin",
        json!({"release": &v1[..10], "reason": "site visit on Friday"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["pinned"], v1.as_str());
    assert!(audit_has(&c, "operator", "device.pin", "dev-005").await);
    let d = &viewer_get(&c, "/api/v1/devices/dev-005").await["device"];
    assert_eq!(d["pin_reason"], "site visit on Friday", "{d}");
    assert_eq!(d["pin_source"], "operator", "{d}");

    // v2 rolls out to everyone else; dev-005 is never offered it.
    let v2 = s.repo.release("v2");
    rounds_until(&mut fleet, "v2 everywhere but dev-005", |f| {
        on(f, &v2).len() == DEVICES - 1
    })
    .await;
    let dev5 = fleet.device("dev-005").expect("dev-005");
    assert_eq!(current(&fleet, "dev-005").as_deref(), Some(v1.as_str()));
    assert!(
        !dev5.offered.iter().any(|r| r.as_str() == v2),
        "pinned: never told v2"
    );

    // devices.yaml pins dev-006 to v2 in v3: it stays on v2 while v3 goes out.
    let v3 = s
        .repo
        .release_with_pins("v3", &[("dev-006", &v2, "hold for the field test")]);
    rounds_until(&mut fleet, "v3 everywhere but the pinned", |f| {
        on(f, &v3).len() == DEVICES - 2
    })
    .await;
    for _ in 0..5 {
        fleet.round(&BTreeSet::new(), 8).await;
    }
    assert_eq!(current(&fleet, "dev-006").as_deref(), Some(v2.as_str()));
    assert_eq!(current(&fleet, "dev-005").as_deref(), Some(v1.as_str()));
    assert!(audit_has(&c, "devices.yaml", "device.pin", "dev-006").await);
    let d = &viewer_get(&c, "/api/v1/devices/dev-006").await["device"];
    assert_eq!(d["pin_source"], "devices.yaml", "{d}");

    // Unpinned, dev-005 takes the newest release that completed its rollout.
    let (st, body) = post(
        &c,
        "/api/v1/devices/dev-005/unpin",
        json!({"reason": "visit done"}),
    )
    .await;
    assert_eq!((st, body["changed"].as_bool()), (200, Some(true)), "{body}");
    assert!(audit_has(&c, "operator", "device.unpin", "dev-005").await);
    rounds_until(&mut fleet, "dev-005 on v3", |f| {
        current(f, "dev-005").as_deref() == Some(v3.as_str())
    })
    .await;
    let (st, body) = post(&c, "/api/v1/devices/dev-005/unpin", json!({})).await;
    assert_eq!(
        (st, body["changed"].as_bool()),
        (200, Some(false)),
        "{body}"
    );

    // The pin leaves devices.yaml in v4: lifted (audited), and dev-006 follows the rollout.
    let v4 = s.repo.release("v4");
    rounds_until(&mut fleet, "v4 everywhere", |f| on(f, &v4).len() == DEVICES).await;
    assert!(audit_has(&c, "devices.yaml", "device.unpin", "dev-006").await);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_keep_devices_out_of_rollouts_on_sqlite() {
    pins_keep_devices_out_of_rollouts(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_keep_devices_out_of_rollouts_on_postgres() {
    pins_keep_devices_out_of_rollouts(Store::Postgres).await;
}

async fn stop_actor(c: &TestController) -> Option<String> {
    viewer_get(c, "/api/v1/status").await["emergency_stop"]["actor"]
        .as_str()
        .map(str::to_owned)
}

/// Check-in rounds until the emergency stop is set.
async fn rounds_until_stopped(c: &TestController, fleet: &mut SimFleet, what: &str) {
    let deadline = Instant::now() + LIMIT;
    while stop_actor(c).await.is_none() {
        assert!(Instant::now() < deadline, "{what}");
        fleet.round(&BTreeSet::new(), 8).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fleet_gate_holds_after_a_rollout(store: Store) {
    let test = format!("fleet_gate_{store:?}");
    let Some(s) = Suite::new(store, &test).await else {
        return;
    };
    let (c, mut fleet, v1) = s.on_v1().await;
    let deadline = Instant::now() + LIMIT;
    while !completed(&c, &v1).await {
        assert!(Instant::now() < deadline, "v1 never completed");
        fleet.round(&BTreeSet::new(), 8).await;
    }
    assert_eq!(stop_actor(&c).await, None);

    // After the rollout completed, 11 of 20 devices turn degraded (the limit is 50%).
    for d in fleet.devices.iter_mut().take(11) {
        d.health_override = Some(HealthState::Degraded);
    }
    rounds_until_stopped(&c, &mut fleet, "the fleet-wide gate never tripped").await;
    assert_eq!(stop_actor(&c).await.as_deref(), Some("controller"));
    let status = viewer_get(&c, "/api/v1/status").await;
    assert!(
        status["emergency_stop"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("11 of 20")),
        "{status}"
    );

    // The operator resumes to send a fix: the gate does not trip again while the fleet is
    // still unhealthy, and the fix goes out.
    let (st, _) = post(&c, "/api/v1/resume", json!({"reason": "sending the fix"})).await;
    assert_eq!(st, 200);
    let fix = s.repo.release("v2");
    let deadline = Instant::now() + LIMIT;
    while on(&fleet, &fix).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the fix never reached the canaries"
        );
        fleet.round(&BTreeSet::new(), 8).await;
        assert_eq!(stop_actor(&c).await, None, "disarmed after the resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fix works: the fleet recovers, and the gate arms again.
    for d in fleet.devices.iter_mut() {
        d.health_override = None;
    }
    rounds_until(&mut fleet, "the fix everywhere", |f| {
        on(f, &fix).len() == DEVICES
    })
    .await;
    for d in fleet.devices.iter_mut().take(11) {
        d.health_override = Some(HealthState::Unhealthy);
    }
    rounds_until_stopped(&c, &mut fleet, "the gate did not arm again").await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_gate_holds_after_a_rollout_on_sqlite() {
    fleet_gate_holds_after_a_rollout(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_gate_holds_after_a_rollout_on_postgres() {
    fleet_gate_holds_after_a_rollout(Store::Postgres).await;
}

async fn a_corrupt_rollout_is_quarantined(store: Store) {
    let test = format!("quarantine_{store:?}");
    let Some(s) = Suite::new(store, &test).await else {
        return;
    };
    let (c, mut fleet, _) = s.on_v1().await;
    // v2 starts and is paused; then its stored row is damaged (a disk, a hand-edited table,
    // a downgrade: anything outside the controller).
    let v2 = s.repo.release("v2");
    let id2 = format!("r-{}", &v2[..12]);
    let deadline = Instant::now() + LIMIT;
    loop {
        let (st, _) = post(
            &c,
            &format!("/api/v1/rollouts/{id2}/pause"),
            json!({"reason": "look first"}),
        )
        .await;
        if st == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "v2's rollout never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::query("UPDATE rollouts SET data = $1 WHERE id = $2")
        .bind("{\"state\": \"runn")
        .bind(&id2)
        .execute(c.db().pool())
        .await
        .expect("damage the row");
    // The engine quarantines it (audited, listed) and goes on: v3 reaches every device.
    let v3 = s.repo.release("v3");
    rounds_until(&mut fleet, "v3 everywhere", |f| on(f, &v3).len() == DEVICES).await;
    assert!(audit_has(&c, "controller", "rollout.quarantined", &id2).await);
    let list = viewer_get(&c, "/api/v1/rollouts").await;
    let row = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["id"] == id2.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["state"], "quarantined", "{list}");
    assert!(row["unreadable"].is_string(), "{row}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_rollout_is_quarantined_on_sqlite() {
    a_corrupt_rollout_is_quarantined(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_rollout_is_quarantined_on_postgres() {
    a_corrupt_rollout_is_quarantined(Store::Postgres).await;
}

/// The store refuses new rollouts for a while (here a trigger; in production a full disk, a
/// lost connection): the new commit is not recorded as a release until its rollout exists, so
/// once the store works again the watcher's next pass starts it. Before, the release was
/// recorded first and its rollout was lost for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_rollout_could_not_be_created_is_tried_again() {
    let Some(s) = Suite::new(Store::Sqlite, "release_retried").await else {
        return;
    };
    let (c, mut fleet, _) = s.on_v1().await;
    sqlx::query(
        "CREATE TRIGGER refuse_rollouts BEFORE INSERT ON rollouts \
         BEGIN SELECT RAISE(ABORT, 'injected: the store refuses rollouts'); END",
    )
    .execute(c.db().pool())
    .await
    .expect("trigger");
    let v2 = s.repo.release("v2");
    // Several watcher passes fail meanwhile; v2 is not recorded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let releases = viewer_get(&c, "/api/v1/releases").await;
    assert!(
        !releases.to_string().contains(&v2),
        "recorded without its rollout: {releases}"
    );
    sqlx::query("DROP TRIGGER refuse_rollouts")
        .execute(c.db().pool())
        .await
        .expect("drop trigger");
    rounds_until(&mut fleet, "v2 everywhere", |f| on(f, &v2).len() == DEVICES).await;
    assert!(completed_soon(&c, &v2).await, "v2's rollout completes");
    c.stop().await;
}

async fn completed_soon(c: &TestController, sha: &str) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if completed(c, sha).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
