//! Failure paths of the transaction, recovery, GC and safe mode, driven the way production gets
//! there: real releases fetched from a local Git repository, a runtime that fails where the
//! test says ([`FaultRuntime`]), and "the agent dies" as it does on a device: the future is
//! dropped mid-step and a new [`Updater`] opens the same data directory and recovers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_config::protocol::{ReleaseId, UpdatePhase, UpdateResult};

use super::{Prepare, Updater, SAFE_MODE_STACK};
use crate::journal::Journal;
use crate::recovery::MAX_ATTEMPTS;
use crate::testing::{FaultRuntime, LocalFleet};

/// Long enough for a step to reach a hang the test injected.
const DIE_AFTER: Duration = Duration::from_secs(5);

struct Device {
    _tmp: tempfile::TempDir,
    fleet: LocalFleet,
    data: std::path::PathBuf,
    runtime: FaultRuntime,
    controller: bool,
}

impl Device {
    /// A device whose first release (the fleet's first commit) is installed and healthy.
    async fn installed(test: &str, controller: bool) -> Option<(Device, ReleaseId)> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fleet = LocalFleet::new(tmp.path(), test)?;
        let data = tmp.path().join("data");
        let d = Device {
            data,
            fleet,
            _tmp: tmp,
            runtime: FaultRuntime::default(),
            controller,
        };
        let mut u = d.boot().await;
        let first = u.branch_head().await.expect("head");
        let r = d.update(&mut u, &first).await;
        assert!(matches!(r, UpdateResult::Succeeded { .. }), "{r:?}");
        Some((d, first))
    }

    /// Starts an agent on the data directory: open, then boot recovery.
    async fn boot(&self) -> Updater<FaultRuntime> {
        let mut u = Updater::open(
            self.fleet.config(&self.data, self.controller),
            self.runtime.clone(),
            Arc::default(),
        )
        .expect("open");
        u.recover().await.expect("recover");
        u
    }

    /// An update as the mode would make it: standalone follows the branch head; controller
    /// mode prepares then commits the release the controller names.
    async fn update(&self, u: &mut Updater<FaultRuntime>, target: &ReleaseId) -> UpdateResult {
        if self.controller {
            match u.prepare(target, None).await {
                Prepare::Ready(p) => u.commit(p).await,
                Prepare::Done(r) => r,
            }
        } else {
            match u.poll_once().await {
                Some(r) => r,
                None => UpdateResult::Skipped {
                    reason: "nothing to do".into(),
                },
            }
        }
    }

    /// The update, killed (dropped) if it has not finished after [`DIE_AFTER`]; `None` if it
    /// was killed.
    async fn update_or_die(
        &self,
        mut u: Updater<FaultRuntime>,
        target: &ReleaseId,
    ) -> Option<UpdateResult> {
        let r = tokio::time::timeout(DIE_AFTER, self.update(&mut u, target)).await;
        drop(u);
        r.ok()
    }

    fn journal(&self) -> Journal {
        Journal::load(&self.data.join("state.json"))
            .expect("journal readable")
            .expect("journal present")
    }
}

async fn boot_loop_guard(controller: bool) {
    let test = if controller {
        "boot_loop_guard_controller"
    } else {
        "boot_loop_guard_standalone"
    };
    let Some((d, first)) = Device::installed(test, controller).await else {
        return;
    };
    let bad = d
        .fleet
        .release("a release that kills the agent in its health window");
    d.runtime
        .state()
        .faults
        .hang_in_window
        .push(bad.to_string());
    for attempt in 1..=MAX_ATTEMPTS {
        let u = d.boot().await;
        assert!(
            !u.journal().is_bad(&bad),
            "marked bad after only {} deaths",
            attempt - 1
        );
        let r = d.update_or_die(u, &bad).await;
        assert!(r.is_none(), "attempt {attempt} was to die, got {r:?}");
        assert_eq!(d.journal().phase, UpdatePhase::Verifying);
    }
    // The third death is recovered from like the others, and the release is marked bad.
    let mut u = d.boot().await;
    assert!(
        u.journal().is_bad(&bad),
        "not marked bad after {MAX_ATTEMPTS} deaths: {:?}",
        u.journal()
    );
    assert_eq!(u.data().current().release(), Some(&first));
    // Never tried again on this device.
    let applies = d.runtime.applies_of(bad.as_str());
    let r = d.update(&mut u, &bad).await;
    assert!(matches!(r, UpdateResult::Skipped { .. }), "{r:?}");
    assert_eq!(
        d.runtime.applies_of(bad.as_str()),
        applies,
        "it was applied again"
    );
    assert_eq!(u.data().current().release(), Some(&first));
}

#[tokio::test]
async fn a_release_that_kills_the_agent_three_times_is_marked_bad_standalone() {
    boot_loop_guard(false).await;
}

#[tokio::test]
async fn a_release_that_kills_the_agent_three_times_is_marked_bad_controller_mode() {
    boot_loop_guard(true).await;
}

#[tokio::test]
async fn a_release_whose_rollback_is_cut_stays_marked_bad() {
    let Some((d, first)) = Device::installed("bad_mark_before_rollback", false).await else {
        return;
    };
    let bad = d.fleet.release("unhealthy");
    let u = d.boot().await;
    {
        let mut st = d.runtime.state();
        st.faults.unhealthy.push(bad.to_string());
        // The rollback re-applies the first release: the agent dies right there.
        st.faults.hang_in_apply.push(first.to_string());
    }
    let r = d.update_or_die(u, &bad).await;
    assert!(r.is_none(), "the rollback was to be cut, got {r:?}");
    assert_eq!(d.journal().phase, UpdatePhase::RollingBack);
    assert!(
        d.journal().is_bad(&bad),
        "the bad mark was not durable when the rollback started"
    );
    d.runtime.state().faults.hang_in_apply.clear();
    let mut u = d.boot().await;
    assert_eq!(u.data().current().release(), Some(&first));
    let r = d.update(&mut u, &bad).await;
    assert!(matches!(r, UpdateResult::Skipped { .. }), "{r:?}");
}

#[tokio::test]
async fn the_safe_stack_starts_before_anything_is_removed_and_is_retried_until_it_runs() {
    let Some((d, first)) = Device::installed("safe_mode_first", false).await else {
        return;
    };
    d.runtime
        .state()
        .faults
        .apply_fails
        .push("safe-mode".into());
    let mut u = d.boot().await;
    u.enter_safe_mode("test: operator asked").await;
    {
        let st = d.runtime.state();
        assert_eq!(
            st.deployed.get("app").map(String::as_str),
            Some(first.as_str()),
            "the app stacks were removed although the safe stack did not start: {:?}",
            st.deployed
        );
        assert!(!st.deployed.contains_key(SAFE_MODE_STACK));
    }
    assert!(
        u.supervise_problem()
            .is_some_and(|p| p.contains("safe-mode stack does not run")),
        "{:?}",
        u.supervise_problem()
    );
    // Still failing: supervision keeps trying, nothing removed.
    u.supervise().await;
    assert!(d.runtime.state().deployed.contains_key("app"));
    // The cause goes away: the next pass starts it, and only then are the others removed.
    d.runtime.state().faults.apply_fails.clear();
    u.supervise().await;
    let deployed: Vec<String> = d.runtime.state().deployed.keys().cloned().collect();
    assert_eq!(deployed, vec![SAFE_MODE_STACK.to_string()]);
    assert!(u.supervise_problem().is_none());
}

/// A device on its second release (the first is `previous`), the agent stopped, and a file of
/// the running release changed on disk (someone, or a bad sector).
async fn drifted_while_down(test: &str) -> Option<(Device, ReleaseId, ReleaseId)> {
    let (d, first) = Device::installed(test, true).await?;
    let second = d.fleet.release("second");
    let mut u = d.boot().await;
    let r = d.update(&mut u, &second).await;
    assert!(matches!(r, UpdateResult::Succeeded { .. }), "{r:?}");
    assert_eq!(u.data().previous().release(), Some(&first));
    let dir = u.data().release(&second);
    drop(u);
    make_writable(&dir);
    std::fs::write(dir.join("release-notes"), "changed on the device").expect("tamper");
    Some((d, first, second))
}

fn drift_events(u: &Updater<FaultRuntime>) -> Vec<fleet_config::protocol::EventKind> {
    u.events()
        .expect("controller mode")
        .pending(10_000)
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| matches!(k, fleet_config::protocol::EventKind::DriftDetected { .. }))
        .collect()
}

#[tokio::test]
async fn a_damaged_current_release_is_restored_from_the_git_cache_at_boot() {
    let Some((d, _first, second)) = drifted_while_down("damaged_current").await else {
        return;
    };
    let u = d.boot().await;
    assert_eq!(u.journal().phase, UpdatePhase::Idle, "{:?}", u.journal());
    assert_eq!(u.data().current().release(), Some(&second));
    let dir = u.data().release(&second);
    assert_eq!(
        std::fs::read_to_string(dir.join("release-notes")).expect("read"),
        "second"
    );
    assert_eq!(
        fleet_config::digest_dir(&dir).ok(),
        u.journal().staged_digest(&second)
    );
    assert_eq!(
        d.runtime.state().deployed.get("app").map(String::as_str),
        Some(second.as_str())
    );
    assert_eq!(
        drift_events(&u),
        [fleet_config::protocol::EventKind::DriftDetected {
            release: second.clone(),
            files: vec!["release-notes".into()],
            more_files: 0,
            services: vec![],
        }]
    );
    let metrics = u.metrics().render(&crate::host::HostStats::default());
    assert!(
        metrics.contains("fleet_agent_drift_detected_total{kind=\"files\"} 1\n"),
        "{metrics}"
    );
    assert!(!d.data.join("releases").read_dir().expect("ls").any(|e| e
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
}

#[tokio::test]
async fn a_damaged_current_release_not_in_the_git_cache_falls_back_to_previous_not_safe_mode() {
    let Some((d, first, second)) = drifted_while_down("damaged_uncached").await else {
        return;
    };
    // The cache lost the commit (rebuilt empty): nothing to restore the release from.
    std::fs::remove_dir_all(d.data.join("git-cache.git")).expect("drop the cache");
    let mut u = d.boot().await;
    assert_eq!(u.journal().phase, UpdatePhase::Idle, "{:?}", u.journal());
    assert!(u.journal().safe_mode.is_none(), "{:?}", u.journal());
    assert_eq!(u.data().current().release(), Some(&first));
    assert_eq!(
        d.runtime.state().deployed.get("app").map(String::as_str),
        Some(first.as_str())
    );
    let problems = u.problems().active();
    assert!(
        problems.iter().any(
            |p| p.problem == crate::problems::ProblemKind::DriftUnrepaired
                && p.subject.as_deref() == Some(second.as_str())
                && p.detail.contains("not in the Git cache")
        ),
        "{problems:?}"
    );
    assert!(drift_events(&u).is_empty());
    // The next drift check finds the release that runs now as staged: nothing is left drifted.
    u.next_drift_check = None;
    u.supervise().await;
    let problems = u.problems().active();
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn files_changed_while_idle_are_restored_by_supervision_and_reported() {
    let Some((d, _first)) = Device::installed("drift_idle", true).await else {
        return;
    };
    let mut u = d.boot().await;
    let current = u.data().current().release().cloned().expect("current");
    let dir = u.data().release(&current);
    let notes_before = std::fs::read(dir.join("release-notes")).expect("read");
    make_writable(&dir);
    std::fs::write(dir.join("release-notes"), "edited by hand").expect("tamper");
    std::fs::write(dir.join("stray.txt"), "added by hand").expect("add");
    // The boot check scheduled the next one `drift_check_every` (10 min) later: not yet.
    u.supervise().await;
    assert!(dir.join("stray.txt").exists(), "checked before it was due");
    u.next_drift_check = None;
    u.supervise().await;
    assert_eq!(
        std::fs::read(dir.join("release-notes")).expect("read"),
        notes_before
    );
    assert!(!dir.join("stray.txt").exists());
    assert_eq!(u.data().current().release(), Some(&current));
    assert_eq!(
        drift_events(&u),
        [fleet_config::protocol::EventKind::DriftDetected {
            release: current.clone(),
            files: vec!["release-notes".into(), "stray.txt".into()],
            more_files: 0,
            services: vec![],
        }]
    );
    // Checked again at the next due pass: clean now, nothing more reported.
    u.next_drift_check = None;
    u.supervise().await;
    assert_eq!(drift_events(&u).len(), 1);
}

#[tokio::test]
async fn drift_that_cannot_be_repaired_keeps_the_release_running_is_raised_and_retried() {
    let Some((d, _first)) = Device::installed("drift_unrepaired", true).await else {
        return;
    };
    let mut u = d.boot().await;
    let current = u.data().current().release().cloned().expect("current");
    let dir = u.data().release(&current);
    make_writable(&dir);
    std::fs::write(dir.join("release-notes"), "edited by hand").expect("tamper");
    // The cache rebuilt empty (as after corruption): the commit is not in it.
    std::fs::remove_dir_all(d.data.join("git-cache.git")).expect("drop the cache");
    fleet_git::GitCache::open_or_init(d.data.join("git-cache.git")).expect("an empty cache");
    u.next_drift_check = None;
    u.supervise().await;
    assert_eq!(u.data().current().release(), Some(&current));
    assert_eq!(
        d.runtime.state().deployed.get("app").map(String::as_str),
        Some(current.as_str())
    );
    assert!(u.journal().safe_mode.is_none());
    let problems = u.problems().active();
    assert!(
        problems.iter().any(
            |p| p.problem == crate::problems::ProblemKind::DriftUnrepaired
                && p.detail.contains("not in the Git cache")
        ),
        "{problems:?}"
    );
    assert!(drift_events(&u).is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.join("release-notes")).expect("read"),
        "edited by hand",
        "nothing touched"
    );
    // Retried at the next check: once a fetch has brought the commit back, it is put back.
    u.branch_head().await.expect("fetch");
    u.supervise().await;
    assert!(
        dir.join("release-notes").exists() && drift_events(&u).is_empty(),
        "not before the next check is due"
    );
    u.next_drift_check = None;
    u.supervise().await;
    assert_eq!(
        fleet_config::digest_dir(&dir).ok(),
        u.journal().staged_digest(&current)
    );
    assert_eq!(drift_events(&u).len(), 1);
    assert!(
        u.problems().active().is_empty(),
        "{:?}",
        u.problems().active()
    );
}

#[tokio::test]
async fn docker_not_answering_at_boot_is_waited_for_not_safe_mode() {
    let Some((d, first)) = Device::installed("docker_late", false).await else {
        return;
    };
    d.runtime.state().deployed.clear();
    d.runtime.state().faults.docker_gone = true;
    let mut u = d.boot().await;
    assert!(u.journal().safe_mode.is_none(), "{:?}", u.journal());
    assert!(u.supervise_problem().is_some());
    d.runtime.state().faults.docker_gone = false;
    u.supervise().await;
    assert_eq!(
        d.runtime.state().deployed.get("app").map(String::as_str),
        Some(first.as_str())
    );
}

#[tokio::test]
async fn a_cut_first_install_leaves_nothing_running_unsupervised() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fleet) = LocalFleet::new(tmp.path(), "cut_first_install") else {
        return;
    };
    let runtime = FaultRuntime::default();
    let data = tmp.path().join("data");
    let open = || {
        Updater::open(fleet.config(&data, false), runtime.clone(), Arc::default()).expect("open")
    };
    let mut u = open();
    u.recover().await.expect("recover");
    let first = u.branch_head().await.expect("head");
    runtime
        .state()
        .faults
        .hang_in_window
        .push(first.to_string());
    let cut = tokio::time::timeout(DIE_AFTER, u.poll_once()).await;
    assert!(cut.is_err(), "the first install was to be cut");
    drop(u);
    assert!(runtime.state().deployed.contains_key("app"));
    let mut u = open();
    u.recover().await.expect("recover");
    assert!(
        runtime.state().deployed.is_empty(),
        "containers of the cut install still run: {:?}",
        runtime.state().deployed
    );
    assert_eq!(u.data().current(), crate::layout::LinkState::Absent);
}

#[tokio::test]
async fn old_releases_are_pruned_by_staging_order_not_by_the_clock() {
    let Some((d, first)) = Device::installed("gc_order", false).await else {
        return;
    };
    let mut u = d.boot().await;
    let second = d.fleet.release("second");
    assert!(matches!(
        d.update(&mut u, &second).await,
        UpdateResult::Succeeded { .. }
    ));
    let third = d.fleet.release("third");
    assert!(matches!(
        d.update(&mut u, &third).await,
        UpdateResult::Succeeded { .. }
    ));
    // The second was staged on a board without a real-time clock: its directory says 1970.
    set_mtime_to_epoch(&u.data().release(&second));
    let fourth = d.fleet.release("fourth");
    assert!(matches!(
        d.update(&mut u, &fourth).await,
        UpdateResult::Succeeded { .. }
    ));
    // keep_releases: 3 — current (fourth), previous (third) and the newest other: second
    // (staged after first, whatever its directory's mtime says).
    let mut on_disk = u.data().staged_releases().expect("list");
    on_disk.sort();
    let mut want = vec![second.clone(), third.clone(), fourth.clone()];
    want.sort();
    assert_eq!(on_disk, want, "first {first} should have gone");
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for e in std::fs::read_dir(dir).expect("ls").flatten() {
        let mode = if e.path().is_dir() { 0o755 } else { 0o644 };
        let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode));
    }
}

fn set_mtime_to_epoch(path: &Path) {
    let f = std::fs::File::open(path).expect("open dir");
    f.set_modified(std::time::UNIX_EPOCH).expect("set mtime");
}

/// Where an update hangs, in [`stuck_phase`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hang {
    /// Applying the new release never returns (an engine that stopped answering mid-apply).
    Apply,
    /// The health window never ends.
    Window,
    /// Applying the new release hangs, and so does re-applying the old one in the rollback.
    ApplyAndRollback,
}

/// The update to a new release hangs where `hang` says; time is paused once it is prepared,
/// so the phase deadlines (minutes) pass at once.
async fn stuck_phase(hang: Hang) -> Option<Stuck> {
    let (d, first) = Device::installed(&format!("stuck_{hang:?}"), true).await?;
    let next = d.fleet.release("hangs");
    // Booted first: boot recovery re-applies `current`.
    let mut u = d.boot().await;
    {
        let mut st = d.runtime.state();
        match hang {
            Hang::Apply => st.faults.hang_in_apply.push(next.to_string()),
            Hang::Window => st.faults.hang_in_window.push(next.to_string()),
            Hang::ApplyAndRollback => {
                st.faults.hang_in_apply.push(next.to_string());
                st.faults.hang_in_apply.push(first.to_string());
            }
        }
    }
    let prepared = match u.prepare(&next, None).await {
        Prepare::Ready(p) => p,
        Prepare::Done(r) => panic!("not prepared: {r:?}"),
    };
    // Nothing but the deadlines' timers is left to wait for.
    tokio::time::pause();
    let r = u.commit(prepared).await;
    tokio::time::resume();
    Some(Stuck {
        r,
        u,
        d,
        first,
        next,
    })
}

/// What [`stuck_phase`] came to.
struct Stuck {
    r: UpdateResult,
    u: Updater<FaultRuntime>,
    d: Device,
    first: ReleaseId,
    next: ReleaseId,
}

fn metric(u: &Updater<FaultRuntime>, line: &str) -> bool {
    u.metrics()
        .render(&crate::host::HostStats::default())
        .lines()
        .any(|l| l == line)
}

#[tokio::test]
async fn an_apply_that_never_returns_is_cut_at_the_switching_deadline_and_rolled_back() {
    // `_d` keeps the data directory (a temporary directory) to the end.
    let Some(Stuck {
        r,
        u,
        d: _d,
        first,
        next,
    }) = stuck_phase(Hang::Apply).await
    else {
        return;
    };
    let UpdateResult::RolledBack { release, reason } = &r else {
        panic!("{r:?}");
    };
    assert_eq!(release, &next);
    assert_eq!(
        reason, "stuck: applying the release took longer than 5m",
        "{r:?}"
    );
    assert!(u.journal().is_bad(&next));
    assert_eq!(u.journal().phase, UpdatePhase::Idle);
    assert_eq!(u.data().current().release(), Some(&first));
    assert!(metric(
        &u,
        "fleet_agent_updates_stuck_total{phase=\"switching\"} 1"
    ));
    assert!(metric(
        &u,
        "fleet_agent_problem{problem=\"update_stuck\"} 1"
    ));
}

#[tokio::test]
async fn a_health_window_that_never_ends_is_cut_at_its_deadline_and_rolled_back() {
    let Some(Stuck {
        r,
        mut u,
        d,
        first,
        next,
    }) = stuck_phase(Hang::Window).await
    else {
        return;
    };
    // The window is 60 s (the default): its deadline a minute more.
    assert_eq!(
        r,
        UpdateResult::RolledBack {
            release: next.clone(),
            reason: "stuck: the health window took longer than 2m".into()
        }
    );
    assert_eq!(u.data().current().release(), Some(&first));
    assert!(metric(
        &u,
        "fleet_agent_updates_stuck_total{phase=\"verifying\"} 1"
    ));
    assert!(metric(
        &u,
        "fleet_agent_problem{problem=\"update_stuck\"} 1"
    ));
    // The next release that goes through clears the problem.
    let good = d.fleet.release("good");
    let r = d.update(&mut u, &good).await;
    assert!(matches!(r, UpdateResult::Succeeded { .. }), "{r:?}");
    assert!(metric(
        &u,
        "fleet_agent_problem{problem=\"update_stuck\"} 0"
    ));
    assert!(metric(
        &u,
        "fleet_agent_updates_stuck_total{phase=\"verifying\"} 1"
    ));
}

#[tokio::test]
async fn a_rollback_that_hangs_too_ends_in_safe_mode() {
    let Some(Stuck {
        r, u, d: _d, next, ..
    }) = stuck_phase(Hang::ApplyAndRollback).await
    else {
        return;
    };
    assert!(
        matches!(&r, UpdateResult::RolledBack { release, .. } if release == &next),
        "{r:?}"
    );
    let reason = u.journal().safe_mode.clone().unwrap_or_default();
    assert_eq!(
        reason,
        "rollback failed: re-applying the previous release took longer than 5m"
    );
    assert!(metric(
        &u,
        "fleet_agent_updates_stuck_total{phase=\"rolling_back\"} 1"
    ));
    assert!(u.journal().is_bad(&next));
}
