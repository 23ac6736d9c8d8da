//! The device watchers: heat, power, disk and clock, sampled by one cheap task (a few small
//! file reads every `watch.interval`), and what they mean for updates.
//!
//! Thresholds: `watch.temperature_above` and `watch.disk_free_below` in agent.yaml when set
//! (a device-local override, e.g. a board in a hot enclosure); otherwise `alerts:` in the
//! fleet.yaml of the release `current` runs (the fleet's policy, versioned in Git with it);
//! before the first release, the built-in defaults of [`AlertThresholds`].
//!
//! Each condition is a [`ProblemKind`] (logged once, the `fleet_agent_problem` gauge, `fleet-agent
//! status`, a `problem_raised` / `problem_cleared` event for the controller), a gauge of its
//! own, and, while it holds, a reason in `fleet_agent_update_blocked{reason=...}`:
//! - thermal: hotter than `temperature_above`; cleared below it minus `temperature_hysteresis`.
//! - under-voltage: the firmware's throttled bit 0 ([`power`]).
//! - power failing: the `power_fail_file` exists or the `power_fail_command` exits 0; the
//!   data filesystem is synced at once, and an update not yet swapped is abandoned.
//! - disk low: below `disk_free_below`; the update loop prunes ([`DeviceWatch::take_prune`]).
//!
//! A blocked update is never one already past the swap: the loops ask before starting one
//! ([`DeviceWatch::hold_reason`]) and once more, with fresh readings, just before the swap
//! ([`DeviceWatch::before_swap`]); a swap in progress always finishes.
//!
//! The clock ([`clock`]) is reported, never blocks.

pub mod clock;
pub mod disk;
pub mod power;
pub mod thermal;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fleet_config::fleet::AlertThresholds;
use fleet_config::protocol::ReleaseId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::WatchConfig;
use crate::layout::DataDir;
use crate::metrics::Metrics;
use crate::problems::{ProblemKind, Problems};
use power::Throttled;

/// While the disk stays low, pruning is tried again this often (the first time at once).
pub const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);
/// Longest a `power_fail_command` may run; longer counts as "not failing" and is logged.
pub const POWER_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why updates are held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockReason {
    /// Hotter than the threshold.
    Thermal,
    /// The supply is below the board's minimum.
    UnderVoltage,
    /// Mains power is failing (the UPS says so).
    PowerFail,
    /// Free disk below the threshold.
    DiskLow,
}

impl BlockReason {
    /// Every reason, for gauges that start at zero.
    pub const ALL: &'static [BlockReason] = &[
        BlockReason::Thermal,
        BlockReason::UnderVoltage,
        BlockReason::PowerFail,
        BlockReason::DiskLow,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Thermal => "thermal",
            BlockReason::UnderVoltage => "under_voltage",
            BlockReason::PowerFail => "power_fail",
            BlockReason::DiskLow => "disk_low",
        }
    }
}

/// Where the thresholds in force come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdSource {
    /// No release yet (or its fleet.yaml unreadable): the built-in defaults.
    Defaults,
    /// `alerts:` of the running release's fleet.yaml.
    Release,
}

/// The thresholds in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// °C.
    pub temperature_above: f64,
    /// °C.
    pub temperature_hysteresis: f64,
    /// Bytes.
    pub disk_free_below: u64,
    /// Container restarts within `crash_loop_window` that make a crash loop.
    pub crash_loop_restarts: u32,
    /// The window of `crash_loop_restarts`.
    pub crash_loop_window: Duration,
    /// Fetch failures in a row of one Git endpoint that make it failing.
    pub git_fetch_failures: u32,
    /// The bound of an update's work (see `update/stuck.rs`).
    pub update_stuck_after: Duration,
}

impl Thresholds {
    /// `alerts` with the device's overrides from `cfg` on top.
    pub fn resolve(alerts: &AlertThresholds, cfg: &WatchConfig) -> Thresholds {
        Thresholds {
            temperature_above: cfg.temperature_above.unwrap_or(alerts.temperature_above),
            temperature_hysteresis: cfg.temperature_hysteresis,
            disk_free_below: cfg.disk_free_below.unwrap_or(alerts.disk_free_below),
            crash_loop_restarts: alerts.crash_loop_restarts,
            crash_loop_window: alerts.crash_loop_window,
            git_fetch_failures: alerts.git_fetch_failures,
            update_stuck_after: alerts.update_stuck_after,
        }
    }
}

/// The `alerts:` of the release in `dir` (its fleet.yaml), if it can be read.
pub fn release_alerts(dir: &std::path::Path) -> Option<AlertThresholds> {
    let path = dir.join(fleet_config::load::FLEET_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    fleet_config::decode::decode_document(
        &text,
        &path.display().to_string(),
        fleet_config::fleet::decode,
    )
    .ok()
    .map(|f| f.alerts)
}

/// The watchers' gauges, rendered in `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    cpu_celsius: Option<f64>,
    throttled: Option<Throttled>,
    power_failing: bool,
    data_free_bytes: Option<u64>,
    blocked: BTreeSet<BlockReason>,
    clock_skew_seconds: Option<f64>,
    clock_implausible: bool,
    thresholds: Option<Thresholds>,
}

impl Gauges {
    /// Appends the gauges in the text exposition format.
    pub fn render(&self, out: &mut String) {
        let gauge = |out: &mut String, name: &str, help: &str, v: Option<f64>| {
            if let Some(v) = v {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        };
        gauge(
            out,
            "fleet_agent_cpu_temperature_celsius",
            "The hottest thermal zone, as the watcher last read it.",
            self.cpu_celsius,
        );
        if let Some(t) = self.threshold_gauges() {
            gauge(
                out,
                "fleet_agent_temperature_threshold_celsius",
                "Above it no update starts (alerts.temperature_above or watch.temperature_above).",
                Some(t.temperature_above),
            );
            gauge(
                out,
                "fleet_agent_disk_free_threshold_bytes",
                "Below it the agent prunes and starts no update (alerts.disk_free_below or watch.disk_free_below).",
                Some(t.disk_free_below as f64),
            );
        }
        if let Some(t) = self.throttled {
            let _ = writeln!(out, "# HELP fleet_agent_throttled_flags The firmware's throttled flags (vcgencmd get_throttled), as a number.\n# TYPE fleet_agent_throttled_flags gauge\nfleet_agent_throttled_flags {}", t.0);
            let _ = writeln!(out, "# HELP fleet_agent_under_voltage 1 while the supply is below the board's minimum (throttled bit 0).\n# TYPE fleet_agent_under_voltage gauge\nfleet_agent_under_voltage {}", u8::from(t.under_voltage()));
            let _ = writeln!(out, "# HELP fleet_agent_throttled 1 while the CPU is throttled (throttled bit 2).\n# TYPE fleet_agent_throttled gauge\nfleet_agent_throttled {}", u8::from(t.throttled()));
        }
        let _ = writeln!(out, "# HELP fleet_agent_power_failing 1 while the power-fail signal is present.\n# TYPE fleet_agent_power_failing gauge\nfleet_agent_power_failing {}", u8::from(self.power_failing));
        gauge(
            out,
            "fleet_agent_data_free_bytes",
            "Free bytes in the data directory, as the watcher last read them.",
            self.data_free_bytes.map(|b| b as f64),
        );
        let _ = writeln!(out, "# HELP fleet_agent_update_blocked 1 while updates are held back for this reason.\n# TYPE fleet_agent_update_blocked gauge");
        for r in BlockReason::ALL {
            let _ = writeln!(
                out,
                "fleet_agent_update_blocked{{reason=\"{}\"}} {}",
                r.as_str(),
                u8::from(self.blocked.contains(r))
            );
        }
        gauge(
            out,
            "fleet_agent_clock_skew_seconds",
            "How far the device's clock is ahead of the controller's (negative: behind), from the last check-in's Date.",
            self.clock_skew_seconds,
        );
        let _ = writeln!(out, "# HELP fleet_agent_clock_implausible 1 while the device's clock is before 2024 (no real-time clock, no NTP yet).\n# TYPE fleet_agent_clock_implausible gauge\nfleet_agent_clock_implausible {}", u8::from(self.clock_implausible));
    }

    fn threshold_gauges(&self) -> Option<&Thresholds> {
        self.thresholds.as_ref()
    }
}

#[derive(Debug)]
struct State {
    /// The release whose fleet.yaml the thresholds came from (`None`: no release), and when
    /// they were read; re-read when `current` changes.
    thresholds_of: Option<Option<ReleaseId>>,
    thresholds: Thresholds,
    source: ThresholdSource,
    hot: bool,
    under_voltage: bool,
    power_failing: bool,
    disk_low: bool,
    last_prune: Option<Instant>,
    clock_implausible: bool,
    clock_skewed: bool,
    /// The hold reason last logged, so a held update is logged once, not every pass.
    logged_hold: Option<String>,
    /// Bad readings already logged (by file), so each is logged once.
    logged_bad: BTreeSet<String>,
    gauges: Gauges,
}

/// The device watchers' shared state: sampled by [`DeviceWatch::run`], consulted by the update
/// loops.
#[derive(Debug)]
pub struct DeviceWatch {
    cfg: WatchConfig,
    data: DataDir,
    problems: Arc<Problems>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

impl DeviceWatch {
    /// Watchers for the data directory `data`, reporting to `problems` and `metrics`. Nothing is
    /// read until [`DeviceWatch::sample`].
    pub fn new(
        cfg: WatchConfig,
        data: DataDir,
        problems: Arc<Problems>,
        metrics: Arc<Metrics>,
    ) -> DeviceWatch {
        let thresholds = Thresholds::resolve(&AlertThresholds::default(), &cfg);
        DeviceWatch {
            cfg,
            data,
            problems,
            metrics,
            state: Mutex::new(State {
                thresholds_of: None,
                thresholds,
                source: ThresholdSource::Defaults,
                hot: false,
                under_voltage: false,
                power_failing: false,
                disk_low: false,
                last_prune: None,
                clock_implausible: false,
                clock_skewed: false,
                logged_hold: None,
                logged_bad: BTreeSet::new(),
                gauges: Gauges::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The thresholds in force and where they come from.
    pub fn thresholds(&self) -> (Thresholds, ThresholdSource) {
        let st = self.lock();
        (st.thresholds.clone(), st.source)
    }

    /// Samples until `shutdown`, every `watch.interval`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(
            interval_s = self.cfg.interval.as_secs_f64(),
            sysfs_root = %self.cfg.sysfs_root.display(),
            "device watchers running"
        );
        loop {
            self.sample().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.interval) => {}
            }
        }
        tracing::debug!("device watchers stopped");
    }

    /// One pass of every watcher: thresholds (if `current` changed), heat, power, disk, clock.
    pub async fn sample(&self) {
        self.refresh_thresholds();
        let celsius = self.read_logged(|| thermal::read_hottest(&self.cfg.sysfs_root));
        let throttled = self.read_throttled();
        let power_failing = self.power_failing().await;
        let free = crate::gc::available_space(self.data.root()).ok();
        let now = SystemTime::now();
        let mut st = self.lock();
        let t = st.thresholds.clone();

        let hot = thermal::too_hot(
            st.hot,
            celsius,
            t.temperature_above,
            t.temperature_hysteresis,
        );
        if hot != st.hot {
            st.hot = hot;
            if hot {
                self.problems.raise(
                    ProblemKind::Overheating,
                    None,
                    format!(
                        "CPU at {:.1} °C, above {} °C: no update starts until it is below {} °C",
                        celsius.unwrap_or_default(),
                        t.temperature_above,
                        t.temperature_above - t.temperature_hysteresis
                    ),
                );
            } else {
                self.problems.clear(ProblemKind::Overheating, None);
            }
        }
        let uv = throttled.is_some_and(Throttled::under_voltage);
        if uv != st.under_voltage {
            st.under_voltage = uv;
            match throttled {
                Some(flags) if uv => self.problems.raise(
                    ProblemKind::UnderVoltage,
                    None,
                    format!("the supply is below the board's minimum ({flags}): no update starts while it lasts"),
                ),
                _ => self.problems.clear(ProblemKind::UnderVoltage, None),
            }
        }
        if power_failing != st.power_failing {
            st.power_failing = power_failing;
            if power_failing {
                let synced = sync_data(self.data.root());
                self.problems.raise(
                    ProblemKind::PowerFailing,
                    None,
                    format!(
                        "the power-fail signal is present ({}): data synced{}, an update not yet swapped is abandoned and none starts",
                        self.power_signal_name(),
                        synced.err().map(|e| format!(" (sync failed: {e})")).unwrap_or_default()
                    ),
                );
            } else {
                self.problems.clear(ProblemKind::PowerFailing, None);
            }
        }
        let low = disk::low(st.disk_low, free, t.disk_free_below);
        if low != st.disk_low {
            st.disk_low = low;
            if low {
                st.last_prune = None;
                self.problems.raise(
                    ProblemKind::DiskLow,
                    None,
                    format!(
                        "only {} MiB free in {}, below {} MiB (disk_free_below): pruning, and no update starts",
                        disk::mib(free.unwrap_or_default()),
                        self.data.root().display(),
                        disk::mib(t.disk_free_below)
                    ),
                );
            } else {
                self.problems.clear(ProblemKind::DiskLow, None);
            }
        }
        let implausible = clock::implausible(now);
        if implausible != st.clock_implausible {
            st.clock_implausible = implausible;
            if implausible {
                self.problems.raise(
                    ProblemKind::ClockUnset,
                    None,
                    format!(
                        "the clock says {} s after 1970, before 2024: it was never set (no real-time clock, no NTP yet); times the agent records are wrong, its decisions are not affected",
                        now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
                    ),
                );
            } else {
                self.problems.clear(ProblemKind::ClockUnset, None);
            }
        }

        let g = &mut st.gauges;
        g.cpu_celsius = celsius;
        g.throttled = throttled;
        g.power_failing = power_failing;
        g.data_free_bytes = free;
        g.clock_implausible = implausible;
        g.thresholds = Some(t);
        g.blocked = [
            (hot, BlockReason::Thermal),
            (uv, BlockReason::UnderVoltage),
            (power_failing, BlockReason::PowerFail),
            (low, BlockReason::DiskLow),
        ]
        .into_iter()
        .filter_map(|(on, r)| on.then_some(r))
        .collect();
        if st.gauges.blocked.is_empty() && st.logged_hold.take().is_some() {
            tracing::info!("updates may start again: every device watcher is clear");
        }
        self.metrics.set_watch(st.gauges.clone());
    }

    /// Why no update may start now, from the last sample; `None`: it may.
    pub fn hold_reason(&self) -> Option<String> {
        let st = self.lock();
        let t = &st.thresholds;
        let g = &st.gauges;
        let mut why = Vec::new();
        for r in &g.blocked {
            why.push(match r {
                BlockReason::Thermal => format!(
                    "CPU at {:.1} °C (updates resume below {} °C)",
                    g.cpu_celsius.unwrap_or_default(),
                    t.temperature_above - t.temperature_hysteresis
                ),
                BlockReason::UnderVoltage => {
                    format!("under-voltage ({})", g.throttled.unwrap_or_default())
                }
                BlockReason::PowerFail => "power failing".to_owned(),
                BlockReason::DiskLow => format!(
                    "{} MiB free, below {} MiB",
                    disk::mib(g.data_free_bytes.unwrap_or_default()),
                    disk::mib(t.disk_free_below)
                ),
            });
        }
        (!why.is_empty()).then(|| format!("update held back: {}", why.join("; ")))
    }

    /// [`DeviceWatch::hold_reason`], logged when it is new (not on every pass).
    pub fn hold_logged(&self, release: &ReleaseId) -> Option<String> {
        let why = self.hold_reason()?;
        let mut st = self.lock();
        if st.logged_hold.as_deref() != Some(why.as_str()) {
            tracing::warn!(release = %release.short(), reason = %why, "update held back by the device watchers");
            st.logged_hold = Some(why.clone());
        }
        Some(why)
    }

    /// Just before the swap: samples again (a fresh reading, not the last interval's) and
    /// says why the prepared update must be abandoned, if it must.
    pub async fn before_swap(&self) -> Result<(), String> {
        self.sample().await;
        match self.hold_reason() {
            None => Ok(()),
            Some(why) => Err(format!("abandoned before the swap: {why}")),
        }
    }

    /// True (once per [`PRUNE_EVERY`]) while the disk is low: the update loop should prune.
    pub fn take_prune(&self) -> bool {
        let mut st = self.lock();
        if !st.disk_low || st.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return false;
        }
        st.last_prune = Some(Instant::now());
        true
    }

    /// A check-in answer's `Date` (`server`), received at `local`: the skew gauge, and a
    /// `clock_skew` problem beyond `watch.clock_skew_max`.
    pub fn observe_controller_clock(&self, server: SystemTime, local: SystemTime) {
        let skew = clock::skew_seconds(local, server);
        let skewed = clock::skewed(skew, self.cfg.clock_skew_max);
        let mut st = self.lock();
        st.gauges.clock_skew_seconds = Some(skew);
        if skewed != st.clock_skewed {
            st.clock_skewed = skewed;
            if skewed {
                self.problems.raise(
                    ProblemKind::ClockSkew,
                    None,
                    format!(
                        "the clock is {} {} the controller's (more than {} s): times the agent records are wrong, its decisions are not affected",
                        clock::human(skew),
                        if skew > 0.0 { "ahead of" } else { "behind" },
                        self.cfg.clock_skew_max.as_secs()
                    ),
                );
            } else {
                self.problems.clear(ProblemKind::ClockSkew, None);
            }
        }
        self.metrics.set_watch(st.gauges.clone());
    }

    fn refresh_thresholds(&self) {
        let current = self.data.current().release().cloned();
        if self.lock().thresholds_of.as_ref() == Some(&current) {
            return;
        }
        let alerts = current
            .as_ref()
            .and_then(|id| release_alerts(&self.data.release(id)));
        let source = if alerts.is_some() {
            ThresholdSource::Release
        } else {
            ThresholdSource::Defaults
        };
        let thresholds = Thresholds::resolve(&alerts.unwrap_or_default(), &self.cfg);
        tracing::info!(
            release = current.as_ref().map(ReleaseId::short),
            from = ?source,
            temperature_above = thresholds.temperature_above,
            disk_free_below = thresholds.disk_free_below,
            "device watcher thresholds"
        );
        let mut st = self.lock();
        st.thresholds_of = Some(current);
        st.thresholds = thresholds;
        st.source = source;
    }

    fn read_throttled(&self) -> Option<Throttled> {
        let path = self.cfg.throttled_path();
        let text = std::fs::read_to_string(&path).ok()?;
        self.read_logged(|| Throttled::parse(&text, &path.display().to_string()).map(Some))
    }

    /// `read()`'s value; an error is logged once per message and counts as no reading.
    fn read_logged<T, E: std::fmt::Display>(
        &self,
        read: impl FnOnce() -> Result<Option<T>, E>,
    ) -> Option<T> {
        match read() {
            Ok(v) => v,
            Err(e) => {
                let msg = e.to_string();
                if self.lock().logged_bad.insert(msg.clone()) {
                    tracing::warn!(error = %msg, "a device watcher cannot read its sensor; ignored");
                }
                None
            }
        }
    }

    fn power_signal_name(&self) -> String {
        match (&self.cfg.power_fail_file, &self.cfg.power_fail_command) {
            (Some(f), _) if f.exists() => format!("{} exists", f.display()),
            (_, Some(cmd)) => format!("`{}` exited 0", cmd.join(" ")),
            _ => "signal".into(),
        }
    }

    async fn power_failing(&self) -> bool {
        if self
            .cfg
            .power_fail_file
            .as_ref()
            .is_some_and(|f| f.exists())
        {
            return true;
        }
        let Some(argv) = self.cfg.power_fail_command.clone() else {
            return false;
        };
        let ran =
            tokio::task::spawn_blocking(move || run_with_timeout(&argv, POWER_COMMAND_TIMEOUT))
                .await
                .unwrap_or_else(|e| Err(format!("the command's task failed: {e}")));
        match ran {
            Ok(code) => code == Some(0),
            Err(e) => {
                if self.lock().logged_bad.insert(e.clone()) {
                    tracing::warn!(error = %e, "cannot run watch.power_fail_command; taken as power present");
                }
                false
            }
        }
    }
}

/// Runs `argv` (no shell), waiting at most `timeout`; its exit code (`None`: killed by a signal).
fn run_with_timeout(argv: &[String], timeout: Duration) -> Result<Option<i32>, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.code()),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{program}` ran longer than {} s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for `{program}`: {e}")),
        }
    }
}

/// Flushes the data directory's filesystem to storage (`syncfs`): what the journal and the
/// event buffer made durable is, and so is whatever else was written there since.
pub fn sync_data(root: &std::path::Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(root)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests;
