//! The watchers' decisions over a fake sysfs tree in the real formats.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_config::protocol::EventKind;

use super::*;
use crate::config::WatchConfig;
use crate::host::HostStats;

struct Fixture {
    _tmp: tempfile::TempDir,
    sys: std::path::PathBuf,
    data: DataDir,
    problems: Arc<Problems>,
    metrics: Arc<Metrics>,
    watch: DeviceWatch,
}

fn fixture(tweak: impl FnOnce(&mut WatchConfig, &Path)) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sys = tmp.path().join("sys");
    let data = DataDir::new(tmp.path().join("data"));
    std::fs::create_dir_all(data.releases()).expect("mkdir");
    let mut cfg = WatchConfig {
        sysfs_root: sys.clone(),
        ..WatchConfig::default()
    };
    tweak(&mut cfg, tmp.path());
    let metrics = Arc::new(Metrics::default());
    let problems = Arc::new(Problems::new(metrics.clone(), None));
    let watch = DeviceWatch::new(cfg, data.clone(), problems.clone(), metrics.clone());
    Fixture {
        _tmp: tmp,
        sys,
        data,
        problems,
        metrics,
        watch,
    }
}

impl Fixture {
    fn set_temp(&self, millidegrees: &str) {
        let zone = self.sys.join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).expect("mkdir");
        std::fs::write(zone.join("temp"), millidegrees).expect("write temp");
    }

    fn set_throttled(&self, text: &str) {
        let f = self
            .sys
            .join("devices/platform/soc/soc:firmware/get_throttled");
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(f, text).expect("write flags");
    }

    fn metrics(&self) -> String {
        self.metrics.render(&HostStats::default())
    }

    fn has(&self, line: &str) -> bool {
        self.metrics().lines().any(|l| l == line)
    }

    fn events(&self) -> Vec<(String, String)> {
        self.problems
            .take_events()
            .into_iter()
            .map(|e| match e {
                EventKind::ProblemRaised { problem, .. } => ("raised".into(), problem),
                EventKind::ProblemCleared { problem, .. } => ("cleared".into(), problem),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }
}

fn ev(what: &str, problem: &str) -> (String, String) {
    (what.to_owned(), problem.to_owned())
}

#[tokio::test]
async fn heat_holds_updates_until_below_the_hysteresis() {
    let f = fixture(|_, _| {});
    f.set_temp("60000\n");
    f.watch.sample().await;
    assert_eq!(f.watch.hold_reason(), None);
    assert!(f.has("fleet_agent_cpu_temperature_celsius 60"));
    assert!(f.has("fleet_agent_update_blocked{reason=\"thermal\"} 0"));
    f.set_temp("85000\n");
    f.watch.sample().await;
    let why = f.watch.hold_reason().expect("held");
    assert_eq!(
        why,
        "update held back: CPU at 85.0 °C (updates resume below 75 °C)"
    );
    assert!(f.has("fleet_agent_update_blocked{reason=\"thermal\"} 1"));
    assert!(f.has("fleet_agent_problem{problem=\"overheating\"} 1"));
    assert!(
        f.watch.before_swap().await.is_err(),
        "abandoned before the swap"
    );
    // Between the threshold and the hysteresis: still held, and no new event.
    f.set_temp("77000");
    f.watch.sample().await;
    assert!(f.watch.hold_reason().is_some());
    f.set_temp("74000");
    f.watch.sample().await;
    assert_eq!(f.watch.hold_reason(), None);
    assert!(f.watch.before_swap().await.is_ok());
    assert_eq!(
        f.events(),
        [ev("raised", "overheating"), ev("cleared", "overheating")]
    );
    // A zone with garbage is no reading (logged once), not a panic nor a hold.
    f.set_temp("hot");
    f.watch.sample().await;
    assert_eq!(f.watch.hold_reason(), None);
}

#[tokio::test]
async fn under_voltage_now_holds_updates_and_since_boot_does_not() {
    let f = fixture(|_, _| {});
    f.watch.sample().await;
    assert!(
        !f.metrics().contains("fleet_agent_throttled_flags"),
        "not a Pi: no flags"
    );
    f.set_throttled("50005\n");
    f.watch.sample().await;
    let why = f.watch.hold_reason().expect("held");
    assert!(why.contains("under-voltage (throttled=0x50005"), "{why}");
    assert!(f.has("fleet_agent_under_voltage 1"));
    assert!(f.has("fleet_agent_throttled_flags 327685"));
    assert!(f.has("fleet_agent_update_blocked{reason=\"under_voltage\"} 1"));
    // vcgencmd's form: recovered, the since-boot bits stay.
    f.set_throttled("throttled=0x50000\n");
    f.watch.sample().await;
    assert_eq!(f.watch.hold_reason(), None);
    assert!(f.has("fleet_agent_under_voltage 0"));
    assert_eq!(
        f.events(),
        [
            ev("raised", "under_voltage"),
            ev("cleared", "under_voltage")
        ]
    );
}

#[tokio::test]
async fn a_power_fail_file_or_command_holds_updates() {
    let f = fixture(|c, root| c.power_fail_file = Some(root.join("power-failing")));
    f.watch.sample().await;
    assert_eq!(f.watch.hold_reason(), None);
    let flag = f.sys.parent().expect("root").join("power-failing");
    std::fs::write(&flag, "").expect("signal");
    let err = f.watch.before_swap().await.expect_err("abandoned");
    assert_eq!(
        err,
        "abandoned before the swap: update held back: power failing"
    );
    assert!(f.has("fleet_agent_power_failing 1"));
    std::fs::remove_file(&flag).expect("rm");
    f.watch.sample().await;
    assert_eq!(f.watch.hold_reason(), None);
    assert_eq!(
        f.events(),
        [
            ev("raised", "power_failing"),
            ev("cleared", "power_failing")
        ]
    );

    let f = fixture(|c, _| c.power_fail_command = Some(vec!["true".into()]));
    f.watch.sample().await;
    assert!(f.watch.hold_reason().is_some(), "exit 0: failing");
    let f = fixture(|c, _| c.power_fail_command = Some(vec!["false".into()]));
    f.watch.sample().await;
    assert_eq!(f.watch.hold_reason(), None, "exit 1: power present");
    let f = fixture(|c, _| c.power_fail_command = Some(vec!["/nonexistent/ups".into()]));
    f.watch.sample().await;
    assert_eq!(f.watch.hold_reason(), None, "cannot run: power present");
}

#[tokio::test]
async fn thresholds_come_from_the_running_release_and_agent_yaml_overrides_them() {
    let f = fixture(|_, _| {});
    f.watch.sample().await;
    let (t, source) = f.watch.thresholds();
    assert_eq!(source, ThresholdSource::Defaults);
    assert_eq!((t.temperature_above, t.disk_free_below), (80.0, 500 << 20));
    // A release whose fleet.yaml lowers the temperature threshold becomes `current`.
    let id: ReleaseId = "a".repeat(40).parse().expect("sha");
    let dir = f.data.release(&id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("fleet.yaml"),
        "name: lab\nalerts:\n  temperature_above: 70\n  disk_free_below: 1GB\n",
    )
    .expect("write");
    std::os::unix::fs::symlink(DataDir::link_target(&id), f.data.current_link()).expect("link");
    f.set_temp("72000");
    f.watch.sample().await;
    let (t, source) = f.watch.thresholds();
    assert_eq!(source, ThresholdSource::Release);
    assert_eq!(t.temperature_above, 70.0);
    assert_eq!(t.disk_free_below, 1 << 30, "sizes are binary");
    assert!(
        f.watch.hold_reason().is_some(),
        "72 °C is above the fleet's 70"
    );
    assert!(f.has("fleet_agent_temperature_threshold_celsius 70"));

    // agent.yaml wins over the release.
    let f2 = fixture(|c, _| {
        c.temperature_above = Some(90.0);
        c.disk_free_below = Some(1 << 20);
    });
    let dir = f2.data.release(&id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("fleet.yaml"),
        "name: lab\nalerts: { temperature_above: 70 }\n",
    )
    .expect("write");
    std::os::unix::fs::symlink(DataDir::link_target(&id), f2.data.current_link()).expect("link");
    f2.watch.sample().await;
    let (t, _) = f2.watch.thresholds();
    assert_eq!((t.temperature_above, t.disk_free_below), (90.0, 1 << 20));
}

#[tokio::test]
async fn low_disk_asks_for_pruning_once_and_holds_updates() {
    // No filesystem has this much free: the disk counts as low.
    let f = fixture(|c, _| c.disk_free_below = Some(u64::MAX / 2));
    assert!(!f.watch.take_prune(), "nothing sampled yet");
    f.watch.sample().await;
    let why = f.watch.hold_reason().expect("held");
    assert!(why.contains("MiB free, below"), "{why}");
    assert!(f.watch.take_prune(), "prune at once");
    assert!(!f.watch.take_prune(), "not again before PRUNE_EVERY");
    assert!(f.has("fleet_agent_update_blocked{reason=\"disk_low\"} 1"));
    assert_eq!(f.events(), [ev("raised", "disk_low")]);
}

#[tokio::test]
async fn a_clock_far_from_the_controllers_is_reported_both_ways() {
    let f = fixture(|_, _| {});
    let server = SystemTime::now();
    f.watch
        .observe_controller_clock(server, server + Duration::from_secs(2));
    assert!(f.has("fleet_agent_clock_skew_seconds 2"));
    let years = Duration::from_secs(3 * 365 * 86_400);
    f.watch.observe_controller_clock(server, server - years);
    assert!(f.has("fleet_agent_clock_skew_seconds -94608000"));
    let detail = f
        .problems
        .active()
        .into_iter()
        .find(|p| p.problem == ProblemKind::ClockSkew)
        .expect("raised")
        .detail;
    assert!(
        detail.starts_with("the clock is 3y 0d behind the controller's"),
        "{detail}"
    );
    f.watch.observe_controller_clock(server, server + years);
    f.watch.observe_controller_clock(server, server);
    assert_eq!(f.watch.hold_reason(), None, "the clock never holds updates");
    assert_eq!(
        f.events(),
        [ev("raised", "clock_skew"), ev("cleared", "clock_skew")]
    );
}
