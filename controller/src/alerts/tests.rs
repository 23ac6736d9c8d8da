//! The alert engine's decision table: each test is a row, driven pass by pass the way the
//! controller drives it (facts in, messages out, the open alerts carried between passes).

use std::collections::BTreeMap;

use fleet_config::alerts::AlertName;

use super::*;
use crate::alerts::model::{Ack, Silence};

const S: i64 = 1_000;
const MIN: i64 = 60 * S;

fn t() -> Timing {
    Timing::default()
}

fn fact(alert: AlertName, member: &str) -> Fact {
    Fact {
        alert,
        member: member.into(),
        detail: format!("{member} is wrong"),
        hold_ms: 0,
    }
}

/// Drives passes; keeps the open alerts and every message.
#[derive(Default)]
struct Run {
    open: BTreeMap<AlertName, Alert>,
    silences: Vec<Silence>,
    sent: Vec<Outgoing>,
    stored: BTreeMap<String, Alert>,
}

impl Run {
    fn pass(&mut self, facts: &[Fact], now: i64) -> Vec<Outgoing> {
        let out = evaluate(&mut self.open, facts, &self.silences, &t(), now);
        for a in out.changed {
            self.stored.insert(a.id.clone(), a);
        }
        for id in out.dropped {
            self.stored.remove(&id);
        }
        self.sent.extend(out.messages.iter().cloned());
        out.messages
    }

    /// Passes every 5 s from `from` to `to` (inclusive) with the same facts.
    fn hold(&mut self, facts: &[Fact], from: i64, to: i64) -> Vec<Outgoing> {
        let mut all = Vec::new();
        let mut now = from;
        while now <= to {
            all.extend(self.pass(facts, now));
            now += 5 * S;
        }
        all
    }

    fn kinds(&self) -> Vec<MessageKind> {
        self.sent.iter().map(|m| m.kind).collect()
    }
}

#[test]
fn a_fault_that_holds_fires_once_for_all_its_devices_after_group_wait() {
    let mut r = Run::default();
    let forty: Vec<Fact> = (0..40)
        .map(|i| fact(AlertName::DeviceOffline, &format!("pi-{i:02}")))
        .collect();
    // Within group_wait: firing, not said yet.
    assert!(r.pass(&forty[..10], 0).is_empty());
    assert_eq!(r.open[&AlertName::DeviceOffline].phase, Phase::Firing);
    assert!(r.pass(&forty, 5 * S).is_empty());
    // At group_wait: one message naming all forty.
    let m = r.pass(&forty, 10 * S);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, MessageKind::Firing);
    assert_eq!(m[0].members.len(), 40);
    assert_eq!(m[0].route, Route::Normal);
    // Held for an hour: a warning is not said again.
    assert!(r.hold(&forty, 15 * S, 60 * MIN).is_empty());
    assert_eq!(r.kinds(), vec![MessageKind::Firing]);
}

#[test]
fn a_member_must_hold_for_its_rule_and_a_pending_one_that_clears_is_forgotten() {
    let mut r = Run::default();
    let stuck = Fact {
        hold_ms: 15 * MIN,
        ..fact(AlertName::DeviceUpdateStuck, "pi-01")
    };
    assert!(r.hold(std::slice::from_ref(&stuck), 0, 10 * MIN).is_empty());
    let id = r.open[&AlertName::DeviceUpdateStuck].id.clone();
    assert_eq!(r.open[&AlertName::DeviceUpdateStuck].phase, Phase::Pending);
    // It clears before 15 minutes: dropped, no message, nothing stored.
    assert!(r.pass(&[], 10 * MIN + 5 * S).is_empty());
    assert!(r.open.is_empty());
    assert!(!r.stored.contains_key(&id));
    // It holds 15 minutes the next time: fires (after group_wait).
    let fired = r.hold(&[stuck], 20 * MIN, 35 * MIN + 10 * S);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].kind, MessageKind::Firing);
    assert!(fired[0].alert.fired_ms.is_some_and(|f| f >= 35 * MIN));
}

#[test]
fn a_flapping_member_neither_resolves_nor_fires_again_within_resolve_after() {
    let mut r = Run::default();
    let off = [fact(AlertName::DeviceOffline, "pi-01")];
    r.hold(&off, 0, 30 * S);
    assert_eq!(r.kinds(), vec![MessageKind::Firing]);
    // Back for 90 s, gone again, back for 90 s…: under resolve_after (2 min) each time.
    let mut now = 35 * S;
    for _ in 0..5 {
        r.hold(&[], now, now + 90 * S);
        now += 95 * S;
        r.hold(&off, now, now + 30 * S);
        now += 35 * S;
    }
    assert_eq!(
        r.kinds(),
        vec![MessageKind::Firing],
        "one message for the whole flap"
    );
    assert_eq!(r.open[&AlertName::DeviceOffline].phase, Phase::Firing);
}

#[test]
fn a_member_clear_for_resolve_after_resolves_the_alert_once() {
    let mut r = Run::default();
    let off = [fact(AlertName::DeviceOffline, "pi-01")];
    r.hold(&off, 0, 30 * S);
    let id = r.open[&AlertName::DeviceOffline].id.clone();
    // Last seen at 30 s; clear for less than resolve_after (2 min): still firing, nothing said.
    assert!(r.hold(&[], 35 * S, 30 * S + 2 * MIN - 5 * S).is_empty());
    assert_eq!(r.open[&AlertName::DeviceOffline].phase, Phase::Firing);
    let m = r.hold(&[], 30 * S + 2 * MIN, 30 * S + 2 * MIN);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, MessageKind::Resolved);
    assert_eq!(m[0].members, vec!["pi-01".to_owned()]);
    assert!(r.open.is_empty());
    assert_eq!(r.stored[&id].phase, Phase::Resolved);
    assert!(r.hold(&[], 5 * MIN, 10 * MIN).is_empty());
    // The next fault is a new alert, said again.
    let again = r.hold(&off, 11 * MIN, 11 * MIN + 10 * S);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].kind, MessageKind::Firing);
    assert_ne!(again[0].alert.id, id);
}

#[test]
fn a_silenced_member_is_not_said_until_the_silence_ends() {
    let mut r = Run::default();
    r.silences.push(Silence {
        id: "s1".into(),
        alert: Some(AlertName::DeviceDiskLow),
        member: Some("pi-01".into()),
        created_by: "alice".into(),
        created_ms: 0,
        until_ms: 10 * MIN,
        reason: "replacing the card".into(),
    });
    let disk = [fact(AlertName::DeviceDiskLow, "pi-01")];
    assert!(r.hold(&disk, 0, 10 * MIN - 5 * S).is_empty());
    assert_eq!(r.open[&AlertName::DeviceDiskLow].phase, Phase::Firing);
    // Another device is not silenced: said, naming only it.
    let two = [disk[0].clone(), fact(AlertName::DeviceDiskLow, "pi-02")];
    let m = r.hold(&two, 10 * MIN - 4 * S, 10 * MIN - 4 * S);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].members, vec!["pi-02".to_owned()]);
    // The silence ends: pi-01 joins at the next group_interval.
    let m = r.hold(&two, 10 * MIN, 16 * MIN);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, MessageKind::Updated);
    assert_eq!(m[0].members, vec!["pi-01".to_owned(), "pi-02".to_owned()]);
}

#[test]
fn an_alert_silenced_throughout_resolves_without_a_word() {
    let mut r = Run::default();
    r.silences.push(Silence {
        id: "s1".into(),
        alert: None,
        member: None,
        created_by: "alice".into(),
        created_ms: 0,
        until_ms: 60 * MIN,
        reason: "maintenance".into(),
    });
    r.hold(&[fact(AlertName::DeviceOverheating, "pi-01")], 0, 5 * MIN);
    r.hold(&[], 5 * MIN + 5 * S, 10 * MIN);
    assert!(r.sent.is_empty(), "{:?}", r.kinds());
    assert!(r.open.is_empty());
}

#[test]
fn an_unacknowledged_critical_alert_is_repeated_and_escalated_once() {
    let mut r = Run::default();
    let crash = [fact(AlertName::DeviceCrashLooping, "pi-01")];
    r.hold(&crash, 0, 2 * 60 * MIN);
    let kinds = r.kinds();
    assert_eq!(kinds[0], MessageKind::Firing);
    let escalations: Vec<&Outgoing> = r
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Escalation)
        .collect();
    assert_eq!(escalations.len(), 1);
    assert_eq!(escalations[0].route, Route::Escalation);
    let at = escalations[0].alert.said.escalated_ms.expect("escalated");
    assert!((30 * MIN..30 * MIN + 5 * S).contains(&at), "{at}");
    // Reminders every hour after the last message: the escalation at 30 min, then 1:30.
    let reminders = kinds
        .iter()
        .filter(|k| **k == MessageKind::Reminder)
        .count();
    assert_eq!(reminders, 1, "{kinds:?}");
    // A warning is never repeated nor escalated.
    let mut w = Run::default();
    w.hold(&[fact(AlertName::DeviceDiskLow, "pi-01")], 0, 2 * 60 * MIN);
    assert_eq!(w.kinds(), vec![MessageKind::Firing]);
}

#[test]
fn an_acknowledged_alert_gets_no_reminder_nor_escalation_but_hears_of_new_devices() {
    let mut r = Run::default();
    let one = [fact(AlertName::DeviceCrashLooping, "pi-01")];
    r.hold(&one, 0, 20 * S);
    if let Some(a) = r.open.get_mut(&AlertName::DeviceCrashLooping) {
        a.ack = Some(Ack {
            by: "alice".into(),
            at_ms: 20 * S,
            reason: "on it".into(),
        });
    }
    r.hold(&one, 25 * S, 2 * 60 * MIN);
    assert_eq!(r.kinds(), vec![MessageKind::Firing]);
    // A second device starts crash-looping: the acknowledged alert still says so.
    let two = [one[0].clone(), fact(AlertName::DeviceCrashLooping, "pi-02")];
    let m = r.hold(&two, 2 * 60 * MIN + 5 * S, 2 * 60 * MIN + 10 * S);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, MessageKind::Updated);
    // And it resolves with a message.
    let m = r.hold(&[], 2 * 60 * MIN + 15 * S, 2 * 60 * MIN + 3 * MIN);
    assert_eq!(m.last().map(|m| m.kind), Some(MessageKind::Resolved));
}

#[test]
fn devices_joining_and_leaving_are_said_at_most_once_per_group_interval() {
    let mut r = Run::default();
    let a = fact(AlertName::DeviceOffline, "pi-01");
    let b = fact(AlertName::DeviceOffline, "pi-02");
    let c = fact(AlertName::DeviceOffline, "pi-03");
    r.hold(std::slice::from_ref(&a), 0, 10 * S);
    // pi-02 and pi-03 join one after the other within the interval: one update.
    r.hold(&[a.clone(), b.clone()], 15 * S, 2 * MIN);
    r.hold(&[a.clone(), b.clone(), c.clone()], 2 * MIN + 5 * S, 6 * MIN);
    let updates: Vec<&Outgoing> = r
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Updated)
        .collect();
    assert_eq!(updates.len(), 1, "{:?}", r.kinds());
    assert_eq!(updates[0].members.len(), 3);
}

#[test]
fn a_restart_between_passes_says_nothing_twice() {
    let mut r = Run::default();
    let off = [fact(AlertName::DeviceOffline, "pi-01")];
    r.hold(&off, 0, 10 * S);
    assert_eq!(r.kinds(), vec![MessageKind::Firing]);
    // The controller restarts: the open alerts come back from their stored form.
    let text = serde_json::to_string(&r.open).expect("store");
    r.open = serde_json::from_str(&text).expect("load");
    r.hold(&off, 15 * S, 30 * MIN);
    assert_eq!(r.kinds(), vec![MessageKind::Firing]);
    // Its resolution is said once.
    r.hold(&[], 30 * MIN + 5 * S, 40 * MIN);
    assert_eq!(r.kinds(), vec![MessageKind::Firing, MessageKind::Resolved]);
}

#[test]
fn members_still_pending_when_an_alert_resolves_begin_the_next_one() {
    let mut r = Run::default();
    let now_failing = fact(AlertName::DeviceOffline, "pi-01");
    r.hold(&[now_failing], 0, 10 * S);
    let slow = Fact {
        hold_ms: 10 * MIN,
        ..fact(AlertName::DeviceOffline, "pi-02")
    };
    r.hold(
        std::slice::from_ref(&slow),
        15 * S,
        15 * S + 2 * MIN + 5 * S,
    );
    assert_eq!(r.kinds(), vec![MessageKind::Firing, MessageKind::Resolved]);
    let next = &r.open[&AlertName::DeviceOffline];
    assert_eq!(next.phase, Phase::Pending);
    assert!(next.members.contains_key("pi-02"));
    // It keeps the time it has held: it fires 10 minutes after it first held.
    let m = r.hold(&[slow], 2 * MIN + 25 * S, 10 * MIN + 30 * S);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, MessageKind::Firing);
}

#[test]
fn message_ids_are_unique_per_alert() {
    let mut r = Run::default();
    let crash = [fact(AlertName::DeviceCrashLooping, "pi-01")];
    r.hold(&crash, 0, 3 * 60 * MIN);
    r.hold(&[], 3 * 60 * MIN + 5 * S, 3 * 60 * MIN + 3 * MIN);
    let ids: std::collections::BTreeSet<String> = r.sent.iter().map(Outgoing::message_id).collect();
    assert_eq!(ids.len(), r.sent.len());
}

#[test]
fn a_member_merely_seen_again_is_not_stored_again() {
    let mut r = Run::default();
    let off = [fact(AlertName::DeviceOffline, "pi-01")];
    r.hold(&off, 0, 10 * S);
    // Held for minutes: nothing changes but the time it was last seen.
    let mut open = r.open.clone();
    for now in (15..300).step_by(5) {
        let out = evaluate(&mut open, &off, &[], &t(), now * S);
        assert!(
            out.changed.is_empty(),
            "stored again at {now} s: {:?}",
            out.changed
        );
    }
    // Its detail changes: stored.
    let changed = [Fact {
        detail: "no check-in for 5m".into(),
        ..off[0].clone()
    }];
    let out = evaluate(&mut open, &changed, &[], &t(), 300 * S);
    assert_eq!(out.changed.len(), 1);
}
