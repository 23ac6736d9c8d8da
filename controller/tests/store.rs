//! Every store operation on both engines: a SQLite file and a real PostgreSQL database.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_config::protocol::{
    CheckinRequest, DeviceEvent, EventKind, HealthState, UpdatePhase, UpdateResult,
};
use fleet_controller::db::{
    ApproveOutcome, ClaimOutcome, Db, DbError, EmergencyStop, Fence, Role, RolloutWrite, Tenure,
};
use support::{database_url, Store};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Takes the leader lease as `holder` for `lease_ms` (unless someone holds it: `None`) on a
/// connection of its own, and its fence, live by this process's clock for `lease_ms`.
async fn lead(
    db: &Db,
    holder: &str,
    lease_ms: i64,
    force: bool,
) -> Option<(Fence, sqlx::AnyConnection, i64)> {
    let mut c = db.pool().acquire().await.expect("connection").detach();
    let session = db.session_id(&mut c).await.expect("session id");
    let epoch = db
        .take_lease(&mut c, holder, lease_ms, session, force)
        .await
        .expect("take the lease")?;
    let tenure = Arc::new(Tenure::default());
    tenure.hold(
        epoch,
        Instant::now() + Duration::from_millis(lease_ms as u64),
    );
    Some((Fence::new(holder.into(), epoch, tenure), c, session))
}

fn write<'a>(id: &'a str, state: &'a str, data: &'a str) -> RolloutWrite<'a> {
    RolloutWrite {
        id,
        release: SHA,
        state,
        active: state == "running",
        data: Some(data),
        records: &[],
    }
}

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
        logs: None,
    };
    assert_eq!(
        db.record_checkin(&who, &req, now, true)
            .await
            .expect("checkin"),
        2
    );
    let d = db.device("pi-1").await.expect("q").expect("row");
    assert_eq!(d.phase, UpdatePhase::Verifying);
    assert_eq!(d.health, HealthState::Degraded);
    assert_eq!(d.bad_releases.len(), 1);
    assert_eq!(d.agent_version, "v2");
    assert_eq!(d.last_seen_ms, Some(now));
    // What the engine reads of it: the whole row after a check-in that changed what it sees;
    // after one that changed nothing but the time, the time alone.
    let stamp = fleet_controller::db::now_ms();
    let changed = |rows: Vec<fleet_controller::db::DeviceRow>| rows.iter().any(|d| d.id == "pi-1");
    assert!(changed(
        db.devices_changed_since(stamp - 60_000).await.expect("q")
    ));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let later = fleet_controller::db::now_ms();
    db.record_checkin(&who, &req, now + 1, false)
        .await
        .expect("checkin");
    assert!(
        !changed(db.devices_changed_since(later).await.expect("q")),
        "a check-in that changed nothing the engine sees leaves the row unchanged for it"
    );
    assert!(db
        .checkins_since(now + 1)
        .await
        .expect("q")
        .contains(&("pi-1".to_owned(), now + 1)));

    let mut inv = BTreeMap::new();
    inv.insert(
        "pi-1".to_owned(),
        BTreeMap::from([("ring".to_owned(), "canary".to_owned())]),
    );
    let (fence, _lease_conn, _) = lead(&db, "replica-a", 60_000, true)
        .await
        .expect("the lease");
    let mut tx = db.fenced(&fence).await.expect("fenced");
    tx.sync_inventory(&inv, &BTreeMap::new())
        .await
        .expect("inventory");
    tx.set_desired(&[("pi-1".into(), Some((SHA.into(), "sha256:x".into())))])
        .await
        .expect("desired");
    tx.commit().await.expect("commit");
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
    let mut tx = db.fenced(&fence).await.expect("fenced");
    tx.sync_inventory(&inv, &BTreeMap::new())
        .await
        .expect("inventory");
    tx.commit().await.expect("commit");
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

    let mut tx = db.fenced(&fence).await.expect("fenced");
    assert!(tx
        .record_release(SHA, Some("sha256:x"), None, "poll")
        .await
        .expect("release"));
    assert!(!tx
        .record_release(SHA, Some("sha256:x"), None, "poll")
        .await
        .expect("again"));
    tx.commit().await.expect("commit");
    assert_eq!(
        db.release(SHA).await.expect("q").map(|r| r.status),
        Some("valid".into())
    );

    let mut tx = db.fenced(&fence).await.expect("fenced");
    assert_eq!(
        tx.insert_rollout(&write("r1", "running", "{\"a\":1}"))
            .await
            .expect("insert"),
        1
    );
    tx.commit().await.expect("commit");
    assert!(db.active_rollouts().await.expect("q")[0].active);
    let mut tx = db.fenced(&fence).await.expect("fenced");
    assert_eq!(
        tx.update_rollout(&write("r1", "completed", "{\"a\":2}"), 1)
            .await
            .expect("update"),
        2
    );
    tx.commit().await.expect("commit");
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

/// The leader lease and fencing: a lease is taken only when free, renewed only by its holder
/// before it expires, and once another replica takes it every write of the old epoch is
/// refused, in the database, even while the old holder's own clock still says it leads.
/// Rollout writes are compare-and-swaps on their version.
async fn lease_and_fencing(store: Store) {
    let dir = tempfile::tempdir().expect("dir");
    let test = format!("lease_{store:?}");
    let Some(url) = database_url(store, dir.path(), &test).await else {
        return;
    };
    let db = Db::open(&url).await.expect("open");
    let before = db.lease().await.expect("lease");
    assert_eq!(
        (before.holder.as_str(), before.epoch),
        ("", 0),
        "{before:?}"
    );

    // A takes it for 1.5 s; B cannot while it holds.
    let (a, mut a_conn, a_session) = lead(&db, "replica-a", 1_500, false)
        .await
        .expect("a free lease is taken");
    assert_eq!(a.epoch(), 1);
    assert!(
        lead(&db, "replica-b", 1_500, false).await.is_none(),
        "A holds it"
    );
    assert!(db
        .renew_lease(&mut a_conn, "replica-a", 1, 1_500, a_session)
        .await
        .expect("renew"));
    assert!(
        !db.renew_lease(&mut a_conn, "replica-b", 1, 1_500, a_session)
            .await
            .expect("renew"),
        "only the holder renews"
    );
    let mut tx = db.fenced(&a).await.expect("A leads");
    tx.insert_rollout(&write("r1", "running", "{}"))
        .await
        .expect("insert");
    assert!(
        matches!(
            tx.insert_rollout(&write("r1", "running", "{}")).await,
            Err(DbError::Conflict { .. })
        ),
        "an id is inserted once"
    );
    tx.commit().await.expect("commit");

    // A stops renewing (its connection hangs): once the lease expires, B takes it.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let (b, b_conn, _) = lead(&db, "replica-b", 5_000, false)
        .await
        .expect("an expired lease is taken");
    assert_eq!(b.epoch(), 2, "a new holder, a new epoch");
    let l = db.lease().await.expect("lease");
    assert_eq!((l.holder.as_str(), l.epoch), ("replica-b", 2));
    assert!(
        l.expires_ms > l.now_ms && l.acquired_ms <= l.now_ms,
        "{l:?}"
    );
    // A, healed, can neither renew nor write, even with its own clock made to say it leads.
    assert!(!db
        .renew_lease(&mut a_conn, "replica-a", 1, 1_500, a_session)
        .await
        .expect("renew"));
    let stale = Arc::new(Tenure::default());
    stale.hold(1, Instant::now() + Duration::from_secs(60));
    let a_stale = Fence::new("replica-a".into(), 1, stale);
    match db.fenced(&a_stale).await {
        Err(DbError::Fenced { holder, epoch }) => {
            assert_eq!((holder.as_str(), epoch), ("replica-a", 1))
        }
        Err(e) => panic!("expected Fenced, got {e}"),
        Ok(_) => panic!("a stale epoch must not write"),
    }
    // Nor does an expired fence by this process's own clock get as far as the database.
    let expired = Arc::new(Tenure::default());
    expired.hold(2, Instant::now());
    assert!(matches!(
        db.fenced(&Fence::new("replica-b".into(), 2, expired)).await,
        Err(DbError::Fenced { .. })
    ));

    // Rollout writes are compare-and-swaps: an operator's change (any replica) at version 1
    // wins once; the leader's write of the version it read before is refused.
    assert_eq!(
        db.update_rollout(&write("r1", "paused", "{}"), 1, "replica-c")
            .await
            .expect("operator"),
        2
    );
    assert!(matches!(
        db.update_rollout(&write("r1", "aborted", "{}"), 1, "replica-c")
            .await,
        Err(DbError::Conflict { version: 1, .. })
    ));
    let mut tx = db.fenced(&b).await.expect("B leads");
    assert!(matches!(
        tx.update_rollout(&write("r1", "running", "{}"), 1).await,
        Err(DbError::Conflict { .. })
    ));
    drop(tx);
    let mut tx = db.fenced(&b).await.expect("B leads");
    assert!(matches!(
        tx.rollout_unchanged("r1", 1).await,
        Err(DbError::Conflict { .. })
    ));
    tx.rollout_unchanged("r1", 2).await.expect("at version 2");
    assert_eq!(
        tx.update_rollout(&write("r1", "running", "{}"), 2)
            .await
            .expect("leader"),
        3
    );
    tx.commit().await.expect("commit");
    let r = db.rollout("r1").await.expect("q").expect("row");
    assert_eq!(
        (r.version, r.updated_by.as_str(), r.epoch, r.state.as_str()),
        (3, "replica-b", Some(2), "running")
    );

    // Device records are rows of their own: written with the change that made them, read
    // back under `devices`, left alone by a write that does not name them, and not written at
    // all by a write that loses its compare-and-swap.
    let rec = |n: u32| (format!("dev-{n:04}"), format!("{{\"wave\":0,\"n\":{n}}}"));
    let many: Vec<(String, String)> = (0..1_234).map(rec).collect();
    let mut tx = db.fenced(&b).await.expect("B leads");
    let v = tx
        .update_rollout(
            &RolloutWrite {
                data: None,
                records: &many,
                ..write("r1", "running", "")
            },
            3,
        )
        .await
        .expect("records in statements of a few hundred rows");
    tx.commit().await.expect("commit");
    let r = db.rollout("r1").await.expect("q").expect("row");
    assert_eq!(r.data["devices"].as_object().map(|d| d.len()), Some(1_234));
    assert_eq!(r.data["devices"]["dev-0007"]["n"], 7);
    assert_eq!(r.data.get("a"), None, "`data: None` kept the stored text");
    let one = vec![("dev-0007".to_owned(), "{\"wave\":0,\"n\":77}".to_owned())];
    let mut tx = db.fenced(&b).await.expect("B leads");
    assert!(matches!(
        tx.update_rollout(
            &RolloutWrite {
                records: &one,
                ..write("r1", "running", "{}")
            },
            v - 1,
        )
        .await,
        Err(DbError::Conflict { .. })
    ));
    drop(tx);
    let r = db.rollout("r1").await.expect("q").expect("row");
    assert_eq!(
        r.data["devices"]["dev-0007"]["n"], 7,
        "a lost swap wrote nothing"
    );
    db.update_rollout(
        &RolloutWrite {
            records: &one,
            ..write("r1", "paused", "{}")
        },
        v,
        "replica-c",
    )
    .await
    .expect("operator");
    let r = db.rollout("r1").await.expect("q").expect("row");
    assert_eq!(r.data["devices"]["dev-0007"]["n"], 77);
    assert_eq!(r.data["devices"]["dev-0008"]["n"], 8, "the others stay");
    assert_eq!(
        db.rollout_list(10).await.expect("list")[0]
            .data
            .get("devices"),
        None,
        "a list reads no records"
    );

    if store == Store::Postgres {
        // A holder whose session is gone (a crashed replica) is replaced at once, long before
        // its lease expires.
        drop(b_conn);
        let deadline = Instant::now() + Duration::from_secs(5);
        let c = loop {
            if let Some(c) = lead(&db, "replica-c", 5_000, false).await {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "B's session is gone, yet its lease holds"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(c.0.epoch(), 3);
        assert!(db.lease().await.expect("lease").expires_ms > 0);
        assert!(matches!(db.fenced(&b).await, Err(DbError::Fenced { .. })));
    }
}

#[tokio::test]
async fn the_lease_fences_a_replaced_leader_on_sqlite() {
    lease_and_fencing(Store::Sqlite).await;
}

#[tokio::test]
async fn the_lease_fences_a_replaced_leader_on_postgres() {
    lease_and_fencing(Store::Postgres).await;
}

#[tokio::test]
async fn every_store_operation_on_sqlite() {
    exercise(Store::Sqlite).await;
}

#[tokio::test]
async fn every_store_operation_on_postgres() {
    exercise(Store::Postgres).await;
}

/// Desired releases for more devices than one statement names, several targets and holds in
/// one call: every row told its own, the `desired_since_ms` stamp kept when only the digest
/// changes and moved when the release does.
async fn desired_in_batches(store: Store) {
    let dir = tempfile::tempdir().expect("dir");
    let test = format!("desired_{store:?}");
    let Some(url) = database_url(store, dir.path(), &test).await else {
        return;
    };
    let db = Db::open(&url).await.expect("open");
    const OTHER: &str = "89abcdef0123456789abcdef0123456789abcdef";
    let ids: Vec<String> = (0..1_203).map(|i| format!("pi-{i:04}")).collect();
    for id in &ids {
        db.enroll_device(id, &format!("h-{id}"), "aarch64", "v1")
            .await
            .expect("enroll");
    }
    let target = |i: usize, digest: &str| match i % 3 {
        0 => Some((SHA.to_owned(), format!("sha256:{digest}"))),
        1 => Some((OTHER.to_owned(), "sha256:other".to_owned())),
        _ => None,
    };
    let (fence, _lease_conn, _) = lead(&db, "replica-a", 60_000, true)
        .await
        .expect("the lease");
    let told = |digest: &str| -> Vec<(String, Option<(String, String)>)> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), target(i, digest)))
            .collect()
    };
    let mut tx = db.fenced(&fence).await.expect("fenced");
    tx.set_desired(&told("a")).await.expect("desired");
    tx.commit().await.expect("commit");
    let rows: BTreeMap<String, fleet_controller::db::DeviceRow> = db
        .devices()
        .await
        .expect("list")
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let d = &rows[id];
        let got = d
            .desired_release
            .as_ref()
            .map(|r| (r.to_string(), d.desired_digest.clone().unwrap_or_default()));
        assert_eq!(got, target(i, "a"), "{id}");
        assert_eq!(d.desired_since_ms.is_some(), got.is_some(), "{id}: {d:?}");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The same releases with another digest for SHA, and device 1 moved from OTHER to SHA.
    let mut again = told("b");
    again[1].1 = Some((SHA.to_owned(), "sha256:b".to_owned()));
    let mut tx = db.fenced(&fence).await.expect("fenced");
    tx.set_desired(&again).await.expect("desired");
    tx.commit().await.expect("commit");
    let d0 = db.device(&ids[0]).await.expect("q").expect("row");
    assert_eq!(d0.desired_digest.as_deref(), Some("sha256:b"));
    assert_eq!(
        d0.desired_since_ms, rows[&ids[0]].desired_since_ms,
        "a new digest of the same release keeps the stamp"
    );
    let d1 = db.device(&ids[1]).await.expect("q").expect("row");
    assert_eq!(d1.desired_release.map(|r| r.to_string()), Some(SHA.into()));
    assert!(
        d1.desired_since_ms > rows[&ids[1]].desired_since_ms,
        "another release moves the stamp: {:?} then {:?}",
        rows[&ids[1]].desired_since_ms,
        d1.desired_since_ms
    );
    let d2 = db.device(&ids[2]).await.expect("q").expect("row");
    assert!(d2.desired_release.is_none() && d2.desired_since_ms.is_none());
}

#[tokio::test]
async fn desired_releases_in_batches_on_sqlite() {
    desired_in_batches(Store::Sqlite).await;
}

#[tokio::test]
async fn desired_releases_in_batches_on_postgres() {
    desired_in_batches(Store::Postgres).await;
}
