//! `fleet.yaml`: the fleet's name, release branch, Git endpoints, rollout policy and alert
//! thresholds.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::decode::{Ctx, Fields};
use crate::diag::Pos;
use crate::names::{check_git_url, check_name, check_ref_name};
use crate::units::Percent;
use crate::yaml::{Node, Value};

/// The whole of `fleet.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    /// The fleet's name (lowercase letters, digits and `-`).
    pub name: String,
    /// The branch whose commits are releases. Default `main`.
    pub release_branch: String,
    /// Where devices and the controller fetch the repository from, primary first.
    pub git: GitSpec,
    /// How a release is rolled out.
    pub rollout: RolloutPolicy,
    /// When alerts fire.
    pub alerts: AlertThresholds,
}

/// Git endpoints.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GitSpec {
    /// Primary first, then mirrors. May be empty (devices then use their own configuration).
    pub endpoints: Vec<String>,
}

/// The rollout policy (DESIGN.md, "Rollout policy").
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPolicy {
    /// Waves in order; the first selects the canaries by label.
    pub waves: Vec<Wave>,
    /// How long a healthy wave waits before the next one starts.
    pub bake: Duration,
    /// A device not healthy by then counts as failed.
    pub health_timeout: Duration,
    /// Share of a wave that may fail; above it the rollout halts and the wave rolls back.
    pub max_failure_rate: Percent,
    /// Share of the fleet unhealthy above which the emergency stop is set automatically.
    pub fleet_unhealthy_stop: Percent,
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Wave {
    /// Name shown in the dashboard and fleetctl.
    pub name: String,
    /// Which devices it covers.
    pub target: WaveTarget,
    /// Where the wave is defined (for cross-file diagnostics).
    pub pos: Pos,
}

/// How a wave chooses its devices.
#[derive(Debug, Clone, PartialEq)]
pub enum WaveTarget {
    /// Devices whose labels match (the canary ring).
    Select(Selector),
    /// A cumulative share of the fleet, rounded up.
    Percent(Percent),
}

/// A label selector: every listed label must have the given value. Empty matches every device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selector {
    /// Label name to required value.
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    /// True when every label of the selector is on `labels` with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.labels.is_empty() {
            return f.write_str("{} (every device)");
        }
        let parts: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Alert thresholds for the failure modes the controller watches.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertThresholds {
    /// Consecutive Git fetch failures on a device before alerting.
    pub git_fetch_failures: u32,
    /// Container restarts within `crash_loop_window` that count as a crash loop.
    pub crash_loop_restarts: u32,
    /// The window for `crash_loop_restarts`.
    pub crash_loop_window: Duration,
    /// Free disk on a device below this many bytes alerts.
    pub disk_free_below: u64,
    /// A device silent for this long is offline.
    pub offline_after: Duration,
    /// CPU temperature in °C above which a device alerts.
    pub temperature_above: f64,
    /// An update running longer than this is stuck.
    pub update_stuck_after: Duration,
    /// The controller's own heartbeat missing for this long alerts (monitoring down).
    pub heartbeat_missed_after: Duration,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            git_fetch_failures: 3,
            crash_loop_restarts: 3,
            crash_loop_window: Duration::from_secs(300),
            disk_free_below: 500 << 20,
            offline_after: Duration::from_secs(2 * 60),
            temperature_above: 80.0,
            update_stuck_after: Duration::from_secs(15 * 60),
            heartbeat_missed_after: Duration::from_secs(2 * 60),
        }
    }
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        let mut canary = Selector::default();
        canary.labels.insert("ring".into(), "canary".into());
        let wave = |name: &str, target| Wave {
            name: name.into(),
            target,
            pos: Pos::START,
        };
        RolloutPolicy {
            waves: vec![
                wave("canary", WaveTarget::Select(canary)),
                wave("five-percent", WaveTarget::Percent(Percent::from_whole(5))),
                wave("quarter", WaveTarget::Percent(Percent::from_whole(25))),
                wave("all", WaveTarget::Percent(Percent::FULL)),
            ],
            bake: Duration::from_secs(15 * 60),
            health_timeout: Duration::from_secs(10 * 60),
            max_failure_rate: Percent::from_whole(5),
            fleet_unhealthy_stop: Percent::from_whole(20),
        }
    }
}

/// The default release branch.
pub fn default_release_branch() -> String {
    "main".into()
}

const TOP_KEYS: &[&str] = &["name", "release_branch", "git", "rollout", "alerts"];
const GIT_KEYS: &[&str] = &["endpoints"];
const ROLLOUT_KEYS: &[&str] = &[
    "waves",
    "bake",
    "health_timeout",
    "max_failure_rate",
    "fleet_unhealthy_stop",
];
const WAVE_KEYS: &[&str] = &["name", "select", "percent"];
const ALERT_KEYS: &[&str] = &[
    "git_fetch_failures",
    "crash_loop",
    "disk_free_below",
    "offline_after",
    "temperature_above",
    "update_stuck_after",
    "heartbeat_missed_after",
];
const CRASH_LOOP_KEYS: &[&str] = &["restarts", "within"];

/// Decodes `fleet.yaml`. Returns `None` when something required could not be read; every
/// problem is in `ctx`.
pub fn decode(ctx: &mut Ctx<'_>, root: &Node) -> Option<FleetSpec> {
    if root.is_null() {
        ctx.error(root.pos, "fleet.yaml is empty; it needs at least `name`");
        return None;
    }
    let f = ctx.map(root, "fleet.yaml", TOP_KEYS)?;
    let name = f.required(ctx, "name", "fleet.yaml").and_then(|n| {
        let s = ctx.nonempty_string(n, "`name`")?;
        check_name(&s)
            .map_err(|e| ctx.error(n.pos, format!("fleet `name` {e}")))
            .ok()?;
        Some(s)
    });
    let release_branch = match f.get("release_branch") {
        None => Some(default_release_branch()),
        Some(n) => ctx.nonempty_string(n, "`release_branch`").and_then(|s| {
            check_ref_name(&s)
                .map_err(|e| ctx.error(n.pos, format!("`release_branch` `{s}` {e}")))
                .ok()?;
            Some(s)
        }),
    };
    let git = match f.get("git") {
        None => Some(GitSpec::default()),
        Some(n) => decode_git(ctx, n),
    };
    let rollout = match f.get("rollout") {
        None => Some(RolloutPolicy::default()),
        Some(n) => decode_rollout(ctx, n),
    };
    let alerts = match f.get("alerts") {
        None => Some(AlertThresholds::default()),
        Some(n) => decode_alerts(ctx, n),
    };
    Some(FleetSpec {
        name: name?,
        release_branch: release_branch?,
        git: git?,
        rollout: rollout?,
        alerts: alerts?,
    })
}

fn decode_git(ctx: &mut Ctx<'_>, node: &Node) -> Option<GitSpec> {
    let f = ctx.map(node, "`git`", GIT_KEYS)?;
    let mut spec = GitSpec::default();
    if let Some(n) = f.get("endpoints") {
        let list = ctx.string_list(n, "`git.endpoints`", false)?;
        let mut ok = true;
        for (url, pos) in list {
            if let Err(e) = check_git_url(&url) {
                ctx.error(pos, format!("Git endpoint `{url}` {e}"));
                ok = false;
            } else if spec.endpoints.contains(&url) {
                ctx.error(pos, format!("Git endpoint `{url}` is listed twice"));
                ok = false;
            } else {
                spec.endpoints.push(url);
            }
        }
        if !ok {
            return None;
        }
    }
    Some(spec)
}

fn opt<T>(
    ctx: &mut Ctx<'_>,
    f: &Fields<'_>,
    key: &str,
    default: T,
    read: impl FnOnce(&mut Ctx<'_>, &Node) -> Option<T>,
) -> Option<T> {
    match f.get(key) {
        None => Some(default),
        Some(n) => read(ctx, n),
    }
}

fn decode_rollout(ctx: &mut Ctx<'_>, node: &Node) -> Option<RolloutPolicy> {
    let d = RolloutPolicy::default();
    let f = ctx.map(node, "`rollout`", ROLLOUT_KEYS)?;
    let waves = opt(ctx, &f, "waves", d.waves, decode_waves);
    let bake = opt(ctx, &f, "bake", d.bake, |c, n| {
        c.duration(n, "`rollout.bake`")
    });
    let health_timeout = opt(ctx, &f, "health_timeout", d.health_timeout, |c, n| {
        let t = c.duration(n, "`rollout.health_timeout`")?;
        if t.is_zero() {
            c.error(n.pos, "`rollout.health_timeout` must be longer than 0s");
            return None;
        }
        Some(t)
    });
    let max_failure_rate = opt(ctx, &f, "max_failure_rate", d.max_failure_rate, |c, n| {
        c.percent(n, "`rollout.max_failure_rate`", false)
    });
    let fleet_unhealthy_stop = opt(
        ctx,
        &f,
        "fleet_unhealthy_stop",
        d.fleet_unhealthy_stop,
        |c, n| c.percent(n, "`rollout.fleet_unhealthy_stop`", false),
    );
    Some(RolloutPolicy {
        waves: waves?,
        bake: bake?,
        health_timeout: health_timeout?,
        max_failure_rate: max_failure_rate?,
        fleet_unhealthy_stop: fleet_unhealthy_stop?,
    })
}

/// Decodes a mapping of labels (`{ ring: canary, site: berlin }`): device labels and the
/// selectors that match them share these rules.
pub fn decode_labels(
    ctx: &mut Ctx<'_>,
    node: &Node,
    what: &str,
) -> Option<BTreeMap<String, String>> {
    let Value::Map(entries) = &node.value else {
        ctx.error(
            node.pos,
            format!(
                "{what} must be a mapping of labels, e.g. `{{ ring: canary }}`, found {}",
                node.kind_name()
            ),
        );
        return None;
    };
    let mut labels = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries {
        let (Some(key), Some(value)) = (k.scalar(), v.scalar()) else {
            ctx.error(
                k.pos,
                format!("each label of {what} must be `name: value` with a single value"),
            );
            ok = false;
            continue;
        };
        if let Err(e) = crate::names::check_label(key, value) {
            ctx.error(k.pos, format!("{what}: {e}"));
            ok = false;
            continue;
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    ok.then_some(labels)
}

/// Decodes a label selector mapping (`{ ring: canary }`).
pub fn decode_selector(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Selector> {
    decode_labels(ctx, node, what).map(|labels| Selector { labels })
}

fn decode_waves(ctx: &mut Ctx<'_>, node: &Node) -> Option<Vec<Wave>> {
    let items = ctx.seq(node, "`rollout.waves`")?;
    if items.is_empty() {
        ctx.error(
            node.pos,
            "`rollout.waves` is empty; a rollout needs at least one wave",
        );
        return None;
    }
    let mut waves = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let what = format!("wave {} of `rollout.waves`", i + 1);
        let Some(f) = ctx.map(item, &what, WAVE_KEYS) else {
            ok = false;
            continue;
        };
        let name = f.required(ctx, "name", &what).and_then(|n| {
            let s = ctx.nonempty_string(n, &format!("the name of {what}"))?;
            if let Some(prev) = waves.iter().find(|w: &&Wave| w.name == s) {
                ctx.error(
                    n.pos,
                    format!(
                        "wave name `{s}` is used twice (first at line {})",
                        prev.pos.line
                    ),
                );
                return None;
            }
            Some(s)
        });
        let target = match (f.get("select"), f.get("percent")) {
            (Some(_), Some(p)) => {
                ctx.error(
                    p.pos,
                    format!("{what} has both `select` and `percent`; give one"),
                );
                None
            }
            (None, None) => {
                ctx.error(
                    f.pos,
                    format!("{what} needs `select` (labels, for canaries) or `percent` (a share of the fleet)"),
                );
                None
            }
            (Some(s), None) => {
                decode_selector(ctx, s, &format!("`select` of {what}")).map(WaveTarget::Select)
            }
            (None, Some(p)) => ctx
                .percent(p, &format!("`percent` of {what}"), true)
                .and_then(|pct| {
                    if pct.basis_points() == 0 {
                        ctx.error(p.pos, format!("`percent` of {what} must be more than 0%"));
                        return None;
                    }
                    Some(WaveTarget::Percent(pct))
                }),
        };
        match (name, target) {
            (Some(name), Some(target)) => waves.push(Wave {
                name,
                target,
                pos: item.pos,
            }),
            _ => ok = false,
        }
    }
    if !ok {
        return None;
    }
    // Percentages are cumulative: each must be above the one before, and the last must be 100%.
    let mut last: Option<(&Wave, Percent)> = None;
    for w in &waves {
        if let WaveTarget::Percent(p) = w.target {
            if let Some((prev, prev_p)) = last {
                if p <= prev_p {
                    ctx.error(
                        w.pos,
                        format!(
                            "wave `{}` covers {p} of the fleet, not more than wave `{}` before it ({prev_p}); wave percentages are cumulative and must grow",
                            w.name, prev.name
                        ),
                    );
                    ok = false;
                }
            }
            last = Some((w, p));
        } else if last.is_some() {
            ctx.error(
                w.pos,
                format!(
                    "wave `{}` selects by label after a percentage wave; label waves (canaries) come first",
                    w.name
                ),
            );
            ok = false;
        }
    }
    match waves.last() {
        Some(w) if w.target != WaveTarget::Percent(Percent::FULL) => {
            ctx.error(
                w.pos,
                format!(
                    "the last wave `{}` must be `percent: 100`, or part of the fleet would never get the release",
                    w.name
                ),
            );
            ok = false;
        }
        _ => {}
    }
    ok.then_some(waves)
}

fn decode_alerts(ctx: &mut Ctx<'_>, node: &Node) -> Option<AlertThresholds> {
    let d = AlertThresholds::default();
    let f = ctx.map(node, "`alerts`", ALERT_KEYS)?;
    let git_fetch_failures = opt(
        ctx,
        &f,
        "git_fetch_failures",
        d.git_fetch_failures,
        |c, n| {
            c.uint_in(n, "`alerts.git_fetch_failures`", 1, 1000)
                .map(|v| v as u32)
        },
    );
    let crash = match f.get("crash_loop") {
        None => Some((d.crash_loop_restarts, d.crash_loop_window)),
        Some(n) => (|| {
            let cf = ctx.map(n, "`alerts.crash_loop`", CRASH_LOOP_KEYS)?;
            let r = opt(ctx, &cf, "restarts", d.crash_loop_restarts, |c, n| {
                c.uint_in(n, "`alerts.crash_loop.restarts`", 1, 1000)
                    .map(|v| v as u32)
            });
            let w = opt(ctx, &cf, "within", d.crash_loop_window, |c, n| {
                c.duration(n, "`alerts.crash_loop.within`")
            });
            Some((r?, w?))
        })(),
    };
    let disk_free_below = opt(ctx, &f, "disk_free_below", d.disk_free_below, |c, n| {
        c.size(n, "`alerts.disk_free_below`")
    });
    let offline_after = opt(ctx, &f, "offline_after", d.offline_after, |c, n| {
        c.duration(n, "`alerts.offline_after`")
    });
    let temperature_above = opt(ctx, &f, "temperature_above", d.temperature_above, |c, n| {
        let t = c.number(n, "`alerts.temperature_above` (°C)")?;
        if !(0.0..=150.0).contains(&t) {
            c.error(
                n.pos,
                format!(
                    "`alerts.temperature_above` is in °C and must be between 0 and 150, found {t}"
                ),
            );
            return None;
        }
        Some(t)
    });
    let update_stuck_after = opt(
        ctx,
        &f,
        "update_stuck_after",
        d.update_stuck_after,
        |c, n| c.duration(n, "`alerts.update_stuck_after`"),
    );
    let heartbeat_missed_after = opt(
        ctx,
        &f,
        "heartbeat_missed_after",
        d.heartbeat_missed_after,
        |c, n| c.duration(n, "`alerts.heartbeat_missed_after`"),
    );
    let (crash_loop_restarts, crash_loop_window) = crash?;
    Some(AlertThresholds {
        git_fetch_failures: git_fetch_failures?,
        crash_loop_restarts,
        crash_loop_window,
        disk_free_below: disk_free_below?,
        offline_after: offline_after?,
        temperature_above: temperature_above?,
        update_stuck_after: update_stuck_after?,
        heartbeat_missed_after: heartbeat_missed_after?,
    })
}
