//! Every store operation on both engines: a SQLite file and a real PostgreSQL database.

mod support;

use std::collections::BTreeMap;

use fleet_config::protocol::{
    CheckinRequest, DeviceEvent, EventKind, HealthState, UpdatePhase, UpdateResult,
};
use fleet_controller::db::{ApproveOutcome, ClaimOutcome, Db, EmergencyStop, Role};
use support::{database_url, Store};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

async fn exercise(store: Store) {
    let dir = tempfile::tempdir().expect("dir");
    let test = format!("store_{store:?}");
    let Some(url) = database_url(store, dir.path(), &test).await else {
        return;
    };
    let db = Db::open(&url).await.expect("open");
    // Opening again runs no migration twice.
    let db2 = Db::open(&url).await.expect("reopen");
    drop(db2);

    db.upsert_user("ann", "hash", Role::Operator)
        .await
        .expect("user");
    db.upsert_user("ann", "hash2", Role::Admin)
        .await
        .expect("user again");
    let (u, h) = db.user_with_password("ann").await.expect("q").expect("ann");
    assert_eq!((u.role, h.as_str()), (Role::Admin, "hash2"));
    let t = db.create_api_token("ann").await.expect("token");
    assert_eq!(
        db.user_for_token(&t).await.expect("q").map(|u| u.name),
        Some("ann".into())
    );
    assert_eq!(db.revoke_api_tokens("ann").await.expect("revoke"), 1);
    assert!(db.user_for_token(&t).await.expect("q").is_none());
    let new = fleet_controller::db::NewBootstrapToken {
        note: "batch 1".into(),
        ttl_ms: 60_000,
        max_uses: Some(2),
        selector: BTreeMap::from([("site".to_owned(), "north".to_owned())]),
    };
    let (_, boot) = db
        .create_bootstrap_token("ann", &new, 1_000)
        .await
        .expect("boot");
    let listed = db.bootstrap_tokens().await.expect("list");
    assert_eq!(listed, vec![boot.clone()], "stored as created");
    assert_eq!(boot.expires_ms, 61_000);
    assert!(boot.unusable(60_999).is_none());
    assert!(boot.unusable(61_000).is_some());
    assert_eq!(
        db.revoke_bootstrap_token(&boot.id, 2_000)
            .await
            .expect("revoke"),
        Some(true)
    );
    assert_eq!(
        db.revoke_bootstrap_token(&boot.id, 3_000)
            .await
            .expect("again"),
        Some(false)
    );
    assert_eq!(
        db.revoke_bootstrap_token("nope", 3_000)
            .await
            .expect("none"),
        None
    );

    let (code, claim) = db
        .create_pairing("pi-1", "h", "aarch64", "v", 60_000)
        .await
        .expect("pairing");
    let now = fleet_controller::db::now_ms();
    assert_eq!(
        db.claim_pairing(&claim, now).await.expect("claim"),
        ClaimOutcome::Pending
    );
    assert_eq!(db.pending_pairings(now).await.expect("pending").len(), 1);
    assert_eq!(
        db.approve_pairing(&code, "ann", now, false)
            .await
            .expect("approve"),
        ApproveOutcome::Approved {
            device_id: "pi-1".into(),
            hostname: "h".into(),
            replaced: None,
        }
    );
    assert_eq!(
        db.approve_pairing(&code, "ann", now, false)
            .await
            .expect("approve"),
        ApproveOutcome::Used
    );
    let ClaimOutcome::Enrolled { token, .. } = db.claim_pairing(&claim, now).await.expect("claim")
    else {
        panic!("expected a token");
    };
    assert_eq!(
        db.claim_pairing(&claim, now).await.expect("claim"),
        ClaimOutcome::Used
    );

    let who = db
        .device_for_token(&token)
        .await
        .expect("q")
        .expect("device");
    let req = CheckinRequest {
        device_id: "pi-1".into(),
        agent_version: "v2".into(),
        current: Some(SHA.parse().expect("sha")),
        previous: None,
        phase: UpdatePhase::Verifying,
        health: HealthState::Degraded,
        last_result: Some(UpdateResult::Skipped {
            reason: "disk".into(),
        }),
        bad_releases: vec![SHA.parse().expect("sha")],
        telemetry: Default::default(),
        events: vec![DeviceEvent {
            seq: 2,
            at_ms: 5,
            kind: EventKind::SafeModeExited,
        }],
        long_poll_secs: 0,
    };
    assert_eq!(
        db.record_checkin(&who, &req, now).await.expect("checkin"),
        2
    );
    let d = db.device("pi-1").await.expect("q").expect("row");
    assert_eq!(d.phase, UpdatePhase::Verifying);
    assert_eq!(d.health, HealthState::Degraded);
    assert_eq!(d.bad_releases.len(), 1);
    assert_eq!(d.agent_version, "v2");
    assert_eq!(d.last_seen_ms, Some(now));

    let mut inv = BTreeMap::new();
    inv.insert(
        "pi-1".to_owned(),
        BTreeMap::from([("ring".to_owned(), "canary".to_owned())]),
    );
    db.sync_inventory(&inv, &BTreeMap::new())
        .await
        .expect("inventory");
    db.set_desired(&[("pi-1".into(), Some((SHA.into(), "sha256:x".into())))])
        .await
        .expect("desired");
    db.pin_device(
        "pi-1",
        Some((&SHA.parse().expect("sha"), "testing")),
        fleet_controller::db::PIN_BY_OPERATOR,
    )
    .await
    .expect("pin");
    assert!(db.request_safe_mode("pi-1", true).await.expect("safe"));
    let d = db.device("pi-1").await.expect("q").expect("row");
    assert!(d.in_inventory && d.safe_mode_requested);
    assert_eq!(d.labels["ring"], "canary");
    assert_eq!(d.desired_release.map(|r| r.to_string()), Some(SHA.into()));
    assert!(d.pinned_release.is_some());
    assert_eq!(db.devices().await.expect("list").len(), 1);
    // A device enrolling after the release takes its labels from that release's inventory;
    // one the inventory does not list stays out of rollouts.
    inv.insert(
        "pi-2".to_owned(),
        BTreeMap::from([("site".to_owned(), "north".to_owned())]),
    );
    db.sync_inventory(&inv, &BTreeMap::new())
        .await
        .expect("inventory");
    db.enroll_device("pi-2", "h2", "aarch64", "v1")
        .await
        .expect("late enrollment");
    db.enroll_device("pi-9", "h9", "aarch64", "v1")
        .await
        .expect("enrollment outside the inventory");
    let late = db.device("pi-2").await.expect("q").expect("row");
    assert!(late.in_inventory, "{late:?}");
    assert_eq!(late.labels["site"], "north");
    let outside = db.device("pi-9").await.expect("q").expect("row");
    assert!(!outside.in_inventory && outside.labels.is_empty());
    assert_eq!(db.devices().await.expect("list").len(), 3);
    assert!(db.revoke_device("pi-1").await.expect("revoke"));
    assert!(
        db.device_for_token(&token).await.expect("q").is_none(),
        "token forgotten"
    );

    let stop = EmergencyStop {
        actor: "ann".into(),
        reason: "r".into(),
        at_ms: 1,
        rollback: false,
    };
    assert!(db.set_emergency_stop(&stop).await.expect("stop"));
    assert!(!db.set_emergency_stop(&stop).await.expect("stop again"));
    assert_eq!(db.emergency_stop().await.expect("q"), Some(stop));
    assert!(db.clear_emergency_stop().await.expect("clear"));
    assert!(db.emergency_stop().await.expect("q").is_none());

    assert!(db
        .record_release(SHA, Some("sha256:x"), None, "poll")
        .await
        .expect("release"));
    assert!(!db
        .record_release(SHA, Some("sha256:x"), None, "poll")
        .await
        .expect("again"));
    assert_eq!(
        db.release(SHA).await.expect("q").map(|r| r.status),
        Some("valid".into())
    );

    db.save_rollout("r1", SHA, "running", true, "{\"a\":1}")
        .await
        .expect("save");
    db.save_rollout("r1", SHA, "completed", false, "{\"a\":2}")
        .await
        .expect("update");
    assert!(db.active_rollouts().await.expect("q").is_empty());
    assert_eq!(
        db.rollout("r1")
            .await
            .expect("q")
            .map(|r| r.data["a"].clone()),
        Some(2.into())
    );

    db.audit("ann", "x.y", "t", "why", "").await.expect("audit");
    db.audit("ann", "x.z", "t", "why", "").await.expect("audit");
    let log = db.audit_log(10).await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].action, "x.z", "newest first");
}

#[tokio::test]
async fn every_store_operation_on_sqlite() {
    exercise(Store::Sqlite).await;
}

#[tokio::test]
async fn every_store_operation_on_postgres() {
    exercise(Store::Postgres).await;
}
