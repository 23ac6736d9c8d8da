//! What the dashboard shows, computed from stored rows: the fleet summary, open alerts and the
//! device list's filter, sort and pagination. Pure functions, tested here.

use std::cmp::Ordering;

use serde::Deserialize;

use crate::db::{DeviceRow, DeviceState, EmergencyStop, RolloutRow};
use crate::summary::FleetSummary;

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Act now.
    Critical,
    /// Look soon.
    Warning,
}

impl Severity {
    /// CSS class and label.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

/// Something on-call should look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// How bad.
    pub severity: Severity,
    /// What, in one line.
    pub text: String,
    /// Where to look.
    pub link: String,
}

/// Below this share of healthy devices the overview raises an alert.
pub const HEALTH_ALERT_PERCENT: f64 = 90.0;

/// The open alerts, worst first: the stop, halted rollouts, failed and safe-mode devices,
/// low fleet health, offline devices.
pub fn alerts(
    summary: &FleetSummary,
    stop: Option<&EmergencyStop>,
    rollouts: &[RolloutRow],
) -> Vec<Alert> {
    let mut out = Vec::new();
    if let Some(s) = stop {
        out.push(Alert {
            severity: Severity::Critical,
            text: format!("Emergency stop set by {}: {}", s.actor, s.reason),
            link: "/audit".into(),
        });
    }
    for r in rollouts.iter().filter(|r| r.state == "halted") {
        out.push(Alert {
            severity: Severity::Critical,
            text: format!(
                "Rollout {} of {} halted: a wave failed",
                r.id,
                short(&r.release)
            ),
            link: format!("/rollouts/{}", r.id),
        });
    }
    let n = |s| summary.count(s);
    if n(DeviceState::Failed) > 0 {
        out.push(Alert {
            severity: Severity::Critical,
            text: format!("{} devices failed", n(DeviceState::Failed)),
            link: "/devices?state=failed".into(),
        });
    }
    if n(DeviceState::SafeMode) > 0 {
        out.push(Alert {
            severity: Severity::Critical,
            text: format!("{} devices in safe mode", n(DeviceState::SafeMode)),
            link: "/devices?state=safe_mode".into(),
        });
    }
    let counted = summary.total - n(DeviceState::Revoked);
    if counted > 0 && summary.healthy_percent < HEALTH_ALERT_PERCENT {
        out.push(Alert {
            severity: Severity::Warning,
            text: format!(
                "Fleet health {:.1} % is below {HEALTH_ALERT_PERCENT:.0} %",
                summary.healthy_percent
            ),
            link: "/devices".into(),
        });
    }
    if n(DeviceState::Offline) > 0 {
        out.push(Alert {
            severity: Severity::Warning,
            text: format!("{} devices offline", n(DeviceState::Offline)),
            link: "/devices?state=offline".into(),
        });
    }
    out
}

pub use crate::snapshot::{newest_rollout, states_of};

/// The first 12 characters of a sha (all of anything shorter).
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The device list's query string.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ListQuery {
    /// Substring of id or hostname.
    pub q: Option<String>,
    /// State wire name.
    pub state: Option<String>,
    /// `key=value` (or just `key`).
    pub label: Option<String>,
    /// Prefix of the current release, or `none`.
    pub release: Option<String>,
    /// `id`, `state`, `release`, `last_seen`, `agent`.
    pub sort: Option<String>,
    /// `asc` or `desc`.
    pub dir: Option<String>,
    /// 1-based.
    pub page: Option<usize>,
    /// Rows per page (10–500, default 50).
    pub per_page: Option<usize>,
}

/// One page of the device list.
#[derive(Debug)]
pub struct DevicePage<'a> {
    /// The rows of this page, with their state.
    pub rows: Vec<(&'a DeviceRow, DeviceState)>,
    /// Devices matching the filter.
    pub matching: usize,
    /// This page (1-based, clamped).
    pub page: usize,
    /// Pages.
    pub pages: usize,
    /// Rows per page.
    pub per_page: usize,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl ListQuery {
    /// The sort key, checked.
    pub fn sort_key(&self) -> &str {
        match nonempty(&self.sort) {
            Some(k @ ("state" | "release" | "last_seen" | "agent")) => k,
            _ => "id",
        }
    }

    /// Descending order asked for.
    pub fn descending(&self) -> bool {
        nonempty(&self.dir) == Some("desc")
    }

    fn matches(&self, d: &DeviceRow, s: DeviceState) -> bool {
        if let Some(q) = nonempty(&self.q) {
            let q = q.to_lowercase();
            if !d.id.to_lowercase().contains(&q) && !d.hostname.to_lowercase().contains(&q) {
                return false;
            }
        }
        if let Some(want) = nonempty(&self.state) {
            if s.as_str() != want {
                return false;
            }
        }
        if let Some(l) = nonempty(&self.label) {
            let ok = match l.split_once('=') {
                Some((k, v)) => d.labels.get(k.trim()).is_some_and(|x| x == v.trim()),
                None => d.labels.contains_key(l),
            };
            if !ok {
                return false;
            }
        }
        if let Some(r) = nonempty(&self.release) {
            let ok = match &d.current {
                Some(c) => c.as_str().starts_with(&r.to_lowercase()),
                None => r == "none",
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// Filters, sorts and pages `devices`.
    pub fn apply<'a>(
        &self,
        devices: &'a [DeviceRow],
        now_ms: i64,
        offline_after_ms: i64,
    ) -> DevicePage<'a> {
        let mut rows: Vec<(&DeviceRow, DeviceState)> = devices
            .iter()
            .map(|d| (d, d.state(now_ms, offline_after_ms)))
            .filter(|(d, s)| self.matches(d, *s))
            .collect();
        let key = self.sort_key();
        let by_key = |a: &(&DeviceRow, DeviceState), b: &(&DeviceRow, DeviceState)| -> Ordering {
            match key {
                "state" => a.1.cmp(&b.1),
                "release" => a.0.current.cmp(&b.0.current),
                "last_seen" => a.0.last_seen_ms.cmp(&b.0.last_seen_ms),
                "agent" => a.0.agent_version.cmp(&b.0.agent_version),
                _ => Ordering::Equal,
            }
        };
        let desc = self.descending();
        rows.sort_by(|a, b| {
            let o = by_key(a, b).then_with(|| a.0.id.cmp(&b.0.id));
            if desc {
                o.reverse()
            } else {
                o
            }
        });
        let per_page = self.per_page.unwrap_or(50).clamp(10, 500);
        let matching = rows.len();
        let pages = matching.div_ceil(per_page).max(1);
        let page = self.page.unwrap_or(1).clamp(1, pages);
        let rows = rows
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        DevicePage {
            rows,
            matching,
            page,
            pages,
            per_page,
        }
    }

    /// This query as a query string with some keys replaced (`None` removes a key).
    pub fn with(&self, changes: &[(&str, Option<String>)]) -> String {
        let mut pairs: Vec<(&str, String)> = [
            ("q", nonempty(&self.q).map(str::to_owned)),
            ("state", nonempty(&self.state).map(str::to_owned)),
            ("label", nonempty(&self.label).map(str::to_owned)),
            ("release", nonempty(&self.release).map(str::to_owned)),
            ("sort", nonempty(&self.sort).map(str::to_owned)),
            ("dir", nonempty(&self.dir).map(str::to_owned)),
            ("page", self.page.map(|p| p.to_string())),
            ("per_page", self.per_page.map(|p| p.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        for (k, v) in changes {
            pairs.retain(|(pk, _)| pk != k);
            if let Some(v) = v {
                pairs.push((k, v.clone()));
            }
        }
        let enc: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("?{}", enc.join("&"))
    }
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::summarize;
    use fleet_config::protocol::{HealthState, ReleaseId, Telemetry, UpdatePhase};

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn dev(id: &str, seen: Option<i64>, release: Option<&str>, role: &str) -> DeviceRow {
        DeviceRow {
            id: id.into(),
            hostname: format!("host-{id}"),
            arch: "aarch64".into(),
            agent_version: "0.1.0".into(),
            revoked_ms: None,
            enrolled_ms: 0,
            last_seen_ms: seen,
            current: release.map(|r| r.parse::<ReleaseId>().expect("sha")),
            previous: None,
            phase: UpdatePhase::Idle,
            health: HealthState::Healthy,
            last_result: None,
            bad_releases: Vec::new(),
            telemetry: Telemetry::default(),
            labels: [("role".to_owned(), role.to_owned())].into_iter().collect(),
            in_inventory: true,
            pinned_release: None,
            pin_reason: String::new(),
            pin_source: String::new(),
            desired_since_ms: None,
            desired_release: None,
            desired_digest: None,
            safe_mode_requested: false,
        }
    }

    fn fleet() -> Vec<DeviceRow> {
        let mut v: Vec<DeviceRow> = (0..120)
            .map(|i| {
                dev(
                    &format!("pi-{i:03}"),
                    Some(1_000),
                    Some(if i % 3 == 0 { B } else { A }),
                    if i % 2 == 0 { "gateway" } else { "sensor" },
                )
            })
            .collect();
        v.push(dev("lost-1", Some(-1_000_000), Some(A), "sensor"));
        v.push(dev("new-1", None, None, "sensor"));
        let mut failing = dev("sick-1", Some(1_000), Some(A), "gateway");
        failing.health = HealthState::Unhealthy;
        v.push(failing);
        v
    }

    #[test]
    fn summary_counts_states_health_and_versions() {
        let s = summarize(&fleet(), 2_000, 30_000);
        assert_eq!(s.total, 123);
        assert_eq!(s.count(DeviceState::Online), 120);
        assert_eq!(s.count(DeviceState::Offline), 2);
        assert_eq!(s.count(DeviceState::Failed), 1);
        assert!((s.healthy_percent - 120.0 * 100.0 / 123.0).abs() < 1e-9);
        assert_eq!(s.versions[0], ("aaaaaaaaaaaa".to_owned(), 82));
        assert_eq!(s.versions[1], ("bbbbbbbbbbbb".to_owned(), 40));
        assert_eq!(s.versions[2], ("none".to_owned(), 1));
    }

    #[test]
    fn alerts_name_the_stop_failures_and_offline_devices() {
        let s = summarize(&fleet(), 2_000, 30_000);
        let stop = EmergencyStop {
            actor: "alice".into(),
            reason: "bad canary".into(),
            at_ms: 1,
            rollback: false,
        };
        let a = alerts(&s, Some(&stop), &[]);
        assert_eq!(a[0].severity, Severity::Critical);
        assert!(a[0].text.contains("bad canary"), "{a:?}");
        assert!(a.iter().any(|x| x.link == "/devices?state=failed"));
        assert!(a.iter().any(|x| x.text == "2 devices offline"));
        assert!(
            !a.iter().any(|x| x.text.contains("below")),
            "97.6 % is fine"
        );
        let healthy = summarize(&fleet()[..120], 2_000, 30_000);
        assert!(alerts(&healthy, None, &[]).is_empty());
    }

    #[test]
    fn list_filters_sorts_and_pages() {
        let f = fleet();
        let all = ListQuery::default().apply(&f, 2_000, 30_000);
        assert_eq!(all.matching, 123);
        assert_eq!(all.pages, 3);
        assert_eq!(all.rows.len(), 50);
        assert_eq!(all.rows[0].0.id, "lost-1");

        let q = ListQuery {
            label: Some("role=gateway".into()),
            release: Some("bbbb".into()),
            ..Default::default()
        };
        let p = q.apply(&f, 2_000, 30_000);
        assert_eq!(p.matching, 20, "i % 6 == 0 for i < 120");
        assert!(p.rows.iter().all(|(d, _)| d.labels["role"] == "gateway"
            && d.current.as_ref().is_some_and(|c| c.as_str() == B)));

        let q = ListQuery {
            state: Some("offline".into()),
            ..Default::default()
        };
        let ids: Vec<&str> = q
            .apply(&f, 2_000, 30_000)
            .rows
            .iter()
            .map(|(d, _)| d.id.as_str())
            .collect();
        assert_eq!(ids, ["lost-1", "new-1"]);

        let q = ListQuery {
            q: Some("PI-11".into()),
            sort: Some("id".into()),
            dir: Some("desc".into()),
            ..Default::default()
        };
        let ids: Vec<&str> = q
            .apply(&f, 2_000, 30_000)
            .rows
            .iter()
            .map(|(d, _)| d.id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "pi-119", "pi-118", "pi-117", "pi-116", "pi-115", "pi-114", "pi-113", "pi-112",
                "pi-111", "pi-110"
            ]
        );

        let q = ListQuery {
            page: Some(99),
            per_page: Some(100),
            ..Default::default()
        };
        let p = q.apply(&f, 2_000, 30_000);
        assert_eq!((p.page, p.pages, p.rows.len()), (2, 2, 23), "page clamped");
    }

    #[test]
    fn query_strings_keep_the_filter_and_encode() {
        let q = ListQuery {
            q: Some("a b&c".into()),
            state: Some("failed".into()),
            page: Some(3),
            ..Default::default()
        };
        assert_eq!(
            q.with(&[("page", Some("4".into()))]),
            "?q=a%20b%26c&state=failed&page=4"
        );
        assert_eq!(q.with(&[("page", None)]), "?q=a%20b%26c&state=failed");
    }
}
