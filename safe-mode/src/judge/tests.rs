use std::path::PathBuf;
use std::time::Duration;

use fleet_config::liveness::Heartbeat;
use fleet_config::protocol::UpdatePhase;

use super::*;

const S: u64 = 1000;
const MIN: u64 = 60 * S;

fn hb(pid: u32, at_ms: u64, due_ms: u64, starts_ms: &[u64]) -> Heartbeat {
    Heartbeat {
        pid,
        boot_id: "boot".into(),
        seq: 1,
        at_ms,
        due_ms,
        phase: UpdatePhase::Idle,
        starts_ms: starts_ms.to_vec(),
        namespace: "fleet".into(),
        safe_mode_compose: PathBuf::from("/usr/share/fleet/safe-mode/compose.yaml"),
        secrets_dir: PathBuf::from("/etc/fleet/secrets"),
        version: "0.1.0".into(),
    }
}

fn obs(now_ms: u64, lock_holder: Option<u32>, heartbeat: Option<Heartbeat>) -> Observation {
    Observation {
        now_ms,
        watching_since_ms: 0,
        lock_holder,
        heartbeat,
    }
}

fn dead(secs: u64) -> Verdict {
    Verdict::Dead {
        quiet: Duration::from_secs(secs),
    }
}

fn looping(restarts: usize, running: bool) -> Verdict {
    Verdict::CrashLooping {
        restarts,
        window: Duration::from_secs(300),
        running,
    }
}

#[test]
fn verdicts() {
    let t = Thresholds::default();
    let boot = 10 * MIN;
    // Four starts, the first the boot's own: three restarts, not more than three.
    let four = [boot, boot + 10 * S, boot + 20 * S, boot + 30 * S];
    let five = [
        boot,
        boot + 10 * S,
        boot + 20 * S,
        boot + 30 * S,
        boot + 40 * S,
    ];
    let cases: Vec<(&str, Observation, Verdict)> = vec![
        (
            "just started watching, nothing heard",
            obs(30 * S, None, None),
            Verdict::Alive,
        ),
        (
            "never heard, longer than dead_after",
            obs(61 * S, None, None),
            dead(61),
        ),
        (
            "beating in time",
            obs(
                boot + 5 * MIN,
                Some(7),
                Some(hb(7, boot + 5 * MIN - S, boot + 8 * MIN, &[boot])),
            ),
            Verdict::Alive,
        ),
        (
            "a new life before its first heartbeat (the old one's pid differs)",
            obs(
                boot + 5 * MIN,
                Some(8),
                Some(hb(7, boot, boot + 3 * MIN, &[boot])),
            ),
            Verdict::Alive,
        ),
        (
            "killed: lock free, last heartbeat 30 s ago (systemd's turn)",
            obs(
                boot + 90 * S,
                None,
                Some(hb(7, boot + 60 * S, boot + 4 * MIN, &[boot])),
            ),
            Verdict::Alive,
        ),
        (
            "killed: lock free, last heartbeat 61 s ago",
            obs(
                boot + 121 * S,
                None,
                Some(hb(7, boot + 60 * S, boot + 4 * MIN, &[boot])),
            ),
            dead(61),
        ),
        (
            "lock held, heartbeat 59 s past due: within grace",
            obs(
                boot + 4 * MIN + 59 * S,
                Some(7),
                Some(hb(7, boot + MIN, boot + 4 * MIN, &[boot])),
            ),
            Verdict::Alive,
        ),
        (
            "lock held, heartbeat 61 s past due: hung",
            obs(
                boot + 4 * MIN + 61 * S,
                Some(7),
                Some(hb(7, boot + MIN, boot + 4 * MIN, &[boot])),
            ),
            Verdict::Hung {
                pid: 7,
                overdue: Duration::from_secs(61),
            },
        ),
        (
            "a long phase: due in 30 minutes, quiet for 20",
            obs(
                boot + 21 * MIN,
                Some(7),
                Some(hb(7, boot + MIN, boot + 31 * MIN, &[boot])),
            ),
            Verdict::Alive,
        ),
        (
            "three restarts in five minutes: not more than three",
            obs(
                boot + 31 * S,
                Some(7),
                Some(hb(7, boot + 30 * S, boot + 4 * MIN, &four)),
            ),
            Verdict::Alive,
        ),
        (
            "four restarts, latest life running but young",
            obs(
                boot + 41 * S,
                Some(7),
                Some(hb(7, boot + 41 * S, boot + 4 * MIN, &five)),
            ),
            looping(4, true),
        ),
        (
            "four restarts, agent dead between restarts",
            obs(
                boot + 45 * S,
                None,
                Some(hb(7, boot + 41 * S, boot + 4 * MIN, &five)),
            ),
            looping(4, false),
        ),
        (
            "four restarts, latest life stable for 60 s: alive",
            obs(
                boot + 101 * S,
                Some(7),
                Some(hb(7, boot + 100 * S, boot + 4 * MIN, &five)),
            ),
            Verdict::Alive,
        ),
        (
            "four restarts, but more than five minutes ago, agent killed: dead, not looping",
            obs(
                boot + 10 * MIN,
                None,
                Some(hb(7, boot + 41 * S, boot + 4 * MIN, &five)),
            ),
            dead(10 * 60 - 41),
        ),
    ];
    for (name, o, want) in cases {
        assert_eq!(judge(&t, &o), want, "{name}");
    }
}

#[test]
fn restarts_do_not_count_the_boots_first_start_unless_it_was_dropped() {
    let w = Duration::from_secs(300);
    assert_eq!(restarts(&[], 1000, w), 0);
    assert_eq!(restarts(&[500], 1000, w), 0);
    assert_eq!(restarts(&[500, 600, 700], 1000, w), 2);
    // The boot's first start is outside the window: all three inside are restarts.
    assert_eq!(restarts(&[0, 400 * S, 401 * S, 402 * S], 410 * S, w), 3);
    // A full list lost the boot's first start: every one counts.
    let full: Vec<u64> = (0..MAX_STARTS as u64).map(|i| 1000 + i).collect();
    assert_eq!(restarts(&full, 2000, w), MAX_STARTS);
}

#[test]
fn actions() {
    let five = [0, 10, 20, 30, 40];
    let running = obs(50, Some(7), Some(hb(7, 45, 100_000, &five)));
    let stopped = obs(50, None, Some(hb(7, 45, 100_000, &five)));
    let acting = |start: Option<u64>| Memory {
        acting: true,
        acted_for_start: start,
    };
    let cases: Vec<(&str, Verdict, &Observation, Memory, Action, Memory)> = vec![
        (
            "alive: watch",
            Verdict::Alive,
            &running,
            Memory::default(),
            Action::Watch,
            Memory::default(),
        ),
        (
            "dead: ensure",
            dead(61),
            &stopped,
            Memory::default(),
            Action::EnsureSafeStack,
            acting(None),
        ),
        (
            "still dead: ensure again (idempotent)",
            dead(63),
            &stopped,
            acting(None),
            Action::EnsureSafeStack,
            acting(None),
        ),
        (
            "hung: ensure",
            Verdict::Hung {
                pid: 7,
                overdue: Duration::from_secs(61),
            },
            &running,
            Memory::default(),
            Action::EnsureSafeStack,
            acting(None),
        ),
        (
            "crash loop, a life running: ensure once for it",
            looping(4, true),
            &running,
            Memory::default(),
            Action::EnsureSafeStack,
            acting(Some(40)),
        ),
        (
            "same life again: do not fight it",
            looping(4, true),
            &running,
            acting(Some(40)),
            Action::Watch,
            acting(Some(40)),
        ),
        (
            "crash loop, agent down: ensure",
            looping(4, false),
            &stopped,
            acting(Some(40)),
            Action::EnsureSafeStack,
            acting(Some(40)),
        ),
        (
            "back and alive: hand back",
            Verdict::Alive,
            &running,
            acting(Some(40)),
            Action::HandBack,
            Memory::default(),
        ),
    ];
    for (name, v, o, m, want, want_m) in cases {
        assert_eq!(decide(&v, o, &m), (want, want_m), "{name}");
    }
}
