//! The crash-consistency checker of the update transaction, boot recovery and GC (DESIGN.md,
//! "Proof, not hope"), in the manner of ALICE and CrashMonkey.
//!
//! 1. A workload runs for real on a data directory with the file-system seam recording
//!    ([`crate::fsops`]): an update to a healthy release (which commits and prunes an old one),
//!    an update to an unhealthy one (which rolls back), and a boot that finds `current`'s files
//!    drifted and re-stages them from the Git cache (an atomic exchange of directories; the
//!    cache, left out of the states, is copied into each before it is recovered).
//! 2. For every crash point of the trace, and at each point the choices of the operations no
//!    fsync had made durable yet ([`model::crash_states`]), the state a power cut may leave is
//!    built and written to a fresh directory.
//! 3. Boot recovery runs there, recording too; then every crash point of *that* trace is
//!    explored the same way and recovery runs again: a cut during recovery is a crash state too.
//! 4. After each recovery the invariants hold: the journal is readable and at rest, `current`
//!    names a complete release whose tree has its digest and that passed its health window (or
//!    the device is in safe mode with a reason), the runtime runs what `current` names, no
//!    directory under a release's name holds anything but that release, and recovering again
//!    changes nothing.
//!
//! SIGKILL tests cannot find a missing fsync (the page cache survives a killed process); this
//! can. `FLEET_CRASH_CHECK_EXHAUSTIVE=N` explores every subset when at most N operations are
//! pending (default 6).

pub mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use fleet_config::protocol::{ReleaseId, UpdatePhase, UpdateResult};
use fleet_config::TreeDigest;

use crate::fsops::{self, Op};
use crate::journal::Journal;
use crate::layout::{DataDir, LinkState};
use crate::testing::{FaultRuntime, LocalFleet};
use crate::update::{Updater, SAFE_MODE_STACK};
use model::{crash_states, Annotated, Model};

/// Top-level names of the data directory the checker leaves out of crash states: the Git cache
/// (libgit2's own writes, which only hold what can be fetched again) and the lock.
const SKIP: &[&str] = &["git-cache.git", "update.lock"];

/// Trees recovery only deletes (interrupted checkouts and deletions): their contents do not
/// make two crash states different.
const OPAQUE: &[&str] = &[crate::layout::STAGING_PREFIX, crate::layout::TRASH_PREFIX];

/// Inode ids of a recovery trace start here (above any workload op's index).
const RECOVERY_IDS: usize = 1 << 32;

/// What the workload established, against which every recovered state is judged.
struct Truth {
    /// Each release's real digest.
    digests: BTreeMap<ReleaseId, TreeDigest>,
    /// Releases that passed their health window before the trace began.
    healthy_before: BTreeSet<ReleaseId>,
}

impl Truth {
    /// The releases proven healthy when the machine stopped after `k` ops of `trace`.
    fn healthy_at(&self, trace: &[Annotated], k: usize) -> BTreeSet<ReleaseId> {
        let mut out = self.healthy_before.clone();
        for a in &trace[..k] {
            if let Op::Mark(m) = &a.op {
                if let Some(sha) = m.strip_prefix("healthy ") {
                    if let Ok(id) = sha.parse() {
                        out.insert(id);
                    }
                }
            }
        }
        out
    }
}

/// Counts for the report.
#[derive(Default)]
struct Stats {
    workload_ops: usize,
    states: usize,
    distinct: usize,
    recovery_states: usize,
    recovery_distinct: usize,
}

/// What recovery left, as the invariants see it.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    phase: UpdatePhase,
    current: Option<ReleaseId>,
    runs: Option<String>,
}

struct Checker {
    fleet: LocalFleet,
    scratch: tempfile::TempDir,
    truth: Truth,
    exhaustive: usize,
    stats: Stats,
    seen: BTreeSet<u64>,
    seen_recovery: BTreeSet<u64>,
    failures: Vec<String>,
    next_dir: usize,
    /// A Git cache copied into each crash state before it is recovered (the states leave the
    /// cache out: [`SKIP`]), for workloads whose recovery reads it.
    git_cache: Option<std::path::PathBuf>,
}

/// Copies a tree (a bare Git repository) as plain files.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}

fn journal_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("state.json")).unwrap_or_else(|e| format!("<{e}>"))
}

impl Checker {
    fn new_dir(&mut self) -> std::path::PathBuf {
        self.next_dir += 1;
        self.scratch.path().join(format!("s{}", self.next_dir))
    }

    /// Recovers on `dir` (recording when `record`), checks the invariants; returns the trace.
    async fn recover_and_check(
        &mut self,
        dir: &Path,
        healthy: &BTreeSet<ReleaseId>,
        what: &str,
        record: bool,
    ) -> Option<Vec<Op>> {
        if let Some(cache) = &self.git_cache {
            if let Err(e) = copy_tree(cache, &dir.join("git-cache.git")) {
                self.failures
                    .push(format!("{what}: cannot copy the Git cache: {e}"));
                return None;
            }
        }
        let runtime = FaultRuntime::default();
        let open = Updater::open(
            self.fleet.config(dir, false),
            runtime.clone(),
            Arc::default(),
        );
        let mut u = match open {
            Ok(u) => u,
            Err(e) => {
                self.failures
                    .push(format!("{what}: the agent cannot open: {e}"));
                return None;
            }
        };
        if record {
            fsops::start_recording();
        }
        let recovered = u.recover().await;
        let trace = if record {
            Some(fsops::stop_recording())
        } else {
            None
        };
        if let Err(e) = recovered {
            self.failures.push(format!(
                "{what}: recovery failed: {e}\n  journal: {}",
                journal_text(dir)
            ));
            return None;
        }
        let first = self.outcome(dir, &runtime, healthy, what);
        drop(u);
        if !record {
            return trace;
        }
        // Recovering again (another reboot) changes nothing.
        let again = FaultRuntime::default();
        if let Ok(mut u) =
            Updater::open(self.fleet.config(dir, false), again.clone(), Arc::default())
        {
            if u.recover().await.is_ok() {
                let second = self.outcome(dir, &again, healthy, what);
                if first.is_some() && second.is_some() && first != second {
                    self.failures.push(format!(
                        "{what}: a second recovery changed the outcome: {first:?} then {second:?}"
                    ));
                }
            }
        }
        trace
    }

    /// Checks the invariants on a recovered directory; `None` (and a failure) if one breaks.
    fn outcome(
        &mut self,
        dir: &Path,
        runtime: &FaultRuntime,
        healthy: &BTreeSet<ReleaseId>,
        what: &str,
    ) -> Option<Outcome> {
        let mut problems = Vec::new();
        let journal = match Journal::load(&dir.join("state.json")) {
            Ok(Some(j)) => Some(j),
            Ok(None) => {
                problems.push("no journal after recovery".to_string());
                None
            }
            Err(e) => {
                problems.push(format!("journal unreadable after recovery: {e}"));
                None
            }
        };
        let data = DataDir::new(dir);
        let current = data.current();
        let runs = runtime.state().deployed.get("app").cloned();
        let safe = runtime.state().deployed.contains_key(SAFE_MODE_STACK);
        if let Some(j) = &journal {
            match j.phase {
                UpdatePhase::Idle => {
                    if j.to.is_some() {
                        problems.push(format!("idle journal with a release in flight: {:?}", j.to));
                    }
                    match &current {
                        LinkState::Valid(id) => {
                            if !healthy.contains(id) {
                                problems.push(format!(
                                    "adopted {} as good although it never passed its health window",
                                    id.short()
                                ));
                            }
                            let actual = fleet_config::digest_dir(&data.release(id)).ok();
                            if actual != self.truth.digests.get(id).copied() {
                                problems.push(format!(
                                    "current {} is not complete: its tree has digest {actual:?}",
                                    id.short()
                                ));
                            }
                            if j.from.as_ref() != Some(id) {
                                problems.push(format!(
                                    "journal rests on {:?} but current is {}",
                                    j.from,
                                    id.short()
                                ));
                            }
                            if runs.as_deref() != Some(id.as_str()) {
                                problems.push(format!(
                                    "the runtime runs {runs:?}, not current {}",
                                    id.short()
                                ));
                            }
                        }
                        other => problems.push(format!("idle, but current is {other:?}")),
                    }
                }
                UpdatePhase::SafeMode => {
                    if j.safe_mode.as_deref().is_none_or(str::is_empty) {
                        problems.push("safe mode without a reason".into());
                    }
                    if !safe {
                        problems.push("safe mode, but the safe stack does not run".into());
                    }
                }
                other => problems.push(format!("journal not at rest after recovery: {other:?}")),
            }
        }
        for id in data.staged_releases().unwrap_or_default() {
            let actual = fleet_config::digest_dir(&data.release(&id)).ok();
            if let Some(want) = self.truth.digests.get(&id) {
                if actual.as_ref() != Some(want) {
                    problems.push(format!(
                        "releases/{} is not that release (a half-written or half-deleted tree)",
                        id.short()
                    ));
                }
            }
        }
        if problems.is_empty() {
            journal.map(|j| Outcome {
                phase: j.phase,
                current: current.release().cloned(),
                runs: if safe {
                    Some(SAFE_MODE_STACK.into())
                } else {
                    runs
                },
            })
        } else {
            self.failures.push(format!(
                "{what}:\n  - {}\n  journal after recovery: {}",
                problems.join("\n  - "),
                journal_text(dir)
            ));
            None
        }
    }

    /// Explores every crash state of `trace` (annotated against `base`) and, for each distinct
    /// one, recovery and every crash state of recovery.
    async fn explore(&mut self, name: &str, base: &Model, root: &Path, trace: &[Op]) {
        let annotated = base.annotate(root, trace, 0);
        self.stats.workload_ops += annotated.len();
        for k in 0..=annotated.len() {
            let healthy = self.truth.healthy_at(&annotated, k);
            for state in crash_states(base, &annotated, 0, k, self.exhaustive) {
                self.stats.states += 1;
                if !self.seen.insert(state.fingerprint(OPAQUE)) {
                    continue;
                }
                self.stats.distinct += 1;
                if self.stats.distinct % 100 == 0 {
                    eprintln!(
                        "crash-consistency: {} distinct states so far ({} during recovery)",
                        self.stats.distinct, self.stats.recovery_distinct
                    );
                }
                let dir = self.new_dir();
                if let Err(e) = state.materialize(&dir) {
                    self.failures
                        .push(format!("cannot materialize a state: {e}"));
                    continue;
                }
                let what = format!("{name}, crash after op {k} ({})", describe(&annotated, k));
                let Some(rtrace) = self.recover_and_check(&dir, &healthy, &what, true).await else {
                    continue;
                };
                self.explore_recovery(&what, &state, &dir, &rtrace, &healthy)
                    .await;
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }

    /// Cuts during recovery: every crash state of recovery's own trace, recovered again.
    async fn explore_recovery(
        &mut self,
        what: &str,
        base: &Model,
        root: &Path,
        trace: &[Op],
        healthy: &BTreeSet<ReleaseId>,
    ) {
        let annotated = base.annotate(root, trace, RECOVERY_IDS);
        // The crash point at the end is the recovered state itself, checked already.
        for k in 0..annotated.len() {
            for state in crash_states(base, &annotated, RECOVERY_IDS, k, self.exhaustive) {
                self.stats.recovery_states += 1;
                if !self.seen_recovery.insert(state.fingerprint(OPAQUE)) {
                    continue;
                }
                self.stats.recovery_distinct += 1;
                let dir = self.new_dir();
                if let Err(e) = state.materialize(&dir) {
                    self.failures
                        .push(format!("cannot materialize a state: {e}"));
                    continue;
                }
                let what = format!(
                    "{what}, then a cut during recovery after its op {k} ({})",
                    describe(&annotated, k)
                );
                self.recover_and_check(&dir, healthy, &what, false).await;
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// The last op before the crash, for the report.
fn describe(trace: &[Annotated], k: usize) -> String {
    match k.checked_sub(1).and_then(|i| trace.get(i)) {
        None => "before anything".into(),
        Some(a) => format!("{:?}", a.op).chars().take(120).collect(),
    }
}

/// Every release directory's real digest.
fn digests(data: &DataDir) -> BTreeMap<ReleaseId, TreeDigest> {
    data.staged_releases()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| {
            fleet_config::digest_dir(&data.release(&id))
                .ok()
                .map(|d| (id, d))
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn every_crash_state_of_the_update_transaction_recovers() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fleet) = LocalFleet::new(tmp.path(), "crash_consistency") else {
        return;
    };
    let data_dir = tmp.path().join("data");
    let runtime = FaultRuntime::default();
    let mut u = Updater::open(
        fleet.config(&data_dir, false),
        runtime.clone(),
        Arc::default(),
    )
    .expect("open");
    u.recover().await.expect("recover");
    // Before the workloads: three releases installed in turn (keep_releases: 3), so the next
    // healthy update prunes the oldest.
    let mut healthy_before = BTreeSet::new();
    let mut installed = Vec::new();
    for i in 0..3 {
        let id = if i == 0 {
            u.branch_head().await.expect("head")
        } else {
            fleet.release(&format!("release {i}"))
        };
        let r = u.poll_once().await;
        assert!(
            matches!(r, Some(UpdateResult::Succeeded { .. })),
            "setting up: {r:?}"
        );
        healthy_before.insert(id.clone());
        installed.push(id);
    }
    let good = fleet.release("a healthy release");
    let bad = fleet.release("an unhealthy release");
    // Fetch both now, so the workloads' traces hold only the transaction itself.
    drop(u);
    let exhaustive = std::env::var("FLEET_CRASH_CHECK_EXHAUSTIVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut checker = Checker {
        truth: Truth {
            digests: BTreeMap::new(),
            healthy_before,
        },
        fleet,
        scratch: tempfile::tempdir().expect("scratch"),
        exhaustive,
        stats: Stats::default(),
        seen: BTreeSet::new(),
        seen_recovery: BTreeSet::new(),
        failures: Vec::new(),
        next_dir: 0,
        git_cache: None,
    };

    // Workload 1: the healthy release commits; the oldest release is pruned.
    // Workload 2: the unhealthy release fails its window and is rolled back.
    for (name, target, unhealthy) in [
        ("healthy update", &good, false),
        ("unhealthy update", &bad, true),
    ] {
        let base = Model::snapshot(&data_dir, SKIP);
        // Before as well as after: a release the workload deletes must not survive half-deleted.
        checker
            .truth
            .digests
            .extend(digests(&DataDir::new(&data_dir)));
        if unhealthy {
            runtime.state().faults.unhealthy.push(target.to_string());
        }
        let mut u = Updater::open(
            checker.fleet.config(&data_dir, false),
            runtime.clone(),
            Arc::default(),
        )
        .expect("open");
        u.recover().await.expect("recover");
        fsops::start_recording();
        let r = u.update_to(target, None).await;
        let trace = fsops::stop_recording();
        drop(u);
        match (&r, unhealthy) {
            (UpdateResult::Succeeded { .. }, false) | (UpdateResult::RolledBack { .. }, true) => {}
            _ => panic!("{name}: unexpected result {r:?}"),
        }
        let data = DataDir::new(&data_dir);
        checker.truth.digests.extend(digests(&data));
        checker.explore(name, &base, &data_dir, &trace).await;
        // What passed its window in this workload is a good release for the next.
        let annotated = base.annotate(&data_dir, &trace, 0);
        checker.truth.healthy_before = checker.truth.healthy_at(&annotated, annotated.len());
    }

    // Workload 3: a file of `current` changed while the agent was down (by hand, or a bad
    // sector); boot recovery re-stages the release from the Git cache and exchanges the fresh
    // copy for the drifted one. A cut anywhere must leave `current` naming a complete tree.
    {
        use std::os::unix::fs::PermissionsExt;
        let data = DataDir::new(&data_dir);
        let current = data.current().release().cloned().expect("current");
        let dir = data.release(&current);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let notes = dir.join("release-notes");
        std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(&notes, "changed on the device").expect("tamper");
        let base = Model::snapshot(&data_dir, SKIP);
        let mut u = Updater::open(
            checker.fleet.config(&data_dir, false),
            runtime.clone(),
            Arc::default(),
        )
        .expect("open");
        fsops::start_recording();
        u.recover().await.expect("recover");
        let trace = fsops::stop_recording();
        drop(u);
        assert_eq!(
            fleet_config::digest_dir(&dir).ok(),
            checker.truth.digests.get(&current).copied(),
            "the workload restores the release"
        );
        assert!(
            trace.iter().any(|op| matches!(op, Op::Exchange { .. })),
            "the workload exchanges the directories"
        );
        checker.git_cache = Some(data.git_cache());
        checker
            .explore("drift repaired at boot", &base, &data_dir, &trace)
            .await;
    }

    let s = &checker.stats;
    println!(
        "crash-consistency: {} workload ops; {} crash states ({} distinct) recovered and checked; \
         {} states of cuts during recovery ({} distinct) recovered again; {:.1} s",
        s.workload_ops,
        s.states,
        s.distinct,
        s.recovery_states,
        s.recovery_distinct,
        started.elapsed().as_secs_f64()
    );
    assert!(
        checker.failures.is_empty(),
        "{} crash states break an invariant; the first:\n{}",
        checker.failures.len(),
        checker
            .failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    // A checker that explored nothing would pass too.
    assert!(
        s.distinct > 50 && s.recovery_distinct > 50,
        "too few states explored"
    );
}
