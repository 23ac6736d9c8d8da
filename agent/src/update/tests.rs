//! The updater's event record: what controller mode records, and that standalone records nothing.

use std::sync::Arc;

use fleet_config::protocol::{EventKind, UpdatePhase, UpdateResult};

use super::Updater;
use crate::testing::{config, NoRuntime};

fn kinds(u: &Updater<NoRuntime>) -> Vec<(u64, EventKind)> {
    u.events()
        .expect("controller mode keeps events")
        .pending(100)
        .expect("pending")
        .into_iter()
        .map(|e| (e.seq, e.kind))
        .collect()
}

#[tokio::test]
async fn controller_mode_records_what_happens_as_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut u = Updater::open(config(&data, true), NoRuntime, Arc::default()).expect("open");
    u.record(EventKind::AgentStarted {
        version: "0.1.0".into(),
    });
    u.recover().await.expect("recover");
    u.enter_safe_mode(crate::controller::mode::OPERATOR_SAFE_MODE)
        .await;
    let left = u.reapply_current().await;
    assert!(matches!(left, UpdateResult::Skipped { .. }), "{left:?}");
    assert_eq!(
        kinds(&u),
        vec![
            (
                1,
                EventKind::AgentStarted {
                    version: "0.1.0".into()
                }
            ),
            (
                2,
                EventKind::PhaseChanged {
                    phase: UpdatePhase::SafeMode,
                    release: None
                }
            ),
            (
                3,
                EventKind::SafeModeEntered {
                    reason: crate::controller::mode::OPERATOR_SAFE_MODE.into()
                }
            ),
            (4, EventKind::UpdateFinished { result: left }),
        ]
    );
    u.ack_events(3);
    assert_eq!(kinds(&u).first().map(|k| k.0), Some(4));
    // A restart in safe mode announces nothing new: the state did not change.
    drop(u);
    let mut u = Updater::open(config(&data, true), NoRuntime, Arc::default()).expect("reopen");
    u.recover().await.expect("recover");
    assert_eq!(kinds(&u).len(), 1, "{:?}", kinds(&u));
}

#[tokio::test]
async fn standalone_mode_records_no_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut u = Updater::open(
        config(&tmp.path().join("data"), false),
        NoRuntime,
        Arc::default(),
    )
    .expect("open");
    u.record(EventKind::SafeModeExited);
    assert!(u.events().is_none());
}
