//! Wave membership. Canary waves take the devices their selector matches; percentage waves are
//! cumulative shares of the eligible fleet, rounded up, each adding at least one device while
//! any remain. The others are ordered by a stable hash of (rollout id, device id), so the plan
//! is deterministic for a rollout and differs between rollouts.

use std::collections::{BTreeMap, BTreeSet};

use fleet_config::fleet::{RolloutPolicy, WaveTarget};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A wave as the policy describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WaveSpec {
    /// Its name (`canary`, `five-percent`, …).
    pub name: String,
    /// Label selector (canary waves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<BTreeMap<String, String>>,
    /// Cumulative share of the fleet in hundredths of a percent (500 = 5%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis_points: Option<u32>,
}

/// The rollout policy of the release being rolled out, kept with the rollout so a later
/// commit cannot change the rules of a rollout in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Policy {
    /// Waves in order.
    pub waves: Vec<WaveSpec>,
    /// Wait after a wave is healthy, ms.
    pub bake_ms: u64,
    /// A device not healthy this long after its wave started counts as failed, ms.
    pub health_timeout_ms: u64,
    /// Above this share of a wave failing, the rollout halts (basis points).
    pub max_failure_bp: u32,
    /// Above this share of the online fleet unhealthy, the emergency stop (basis points).
    pub fleet_unhealthy_stop_bp: u32,
}

impl From<&RolloutPolicy> for Policy {
    fn from(p: &RolloutPolicy) -> Policy {
        Policy {
            waves: p
                .waves
                .iter()
                .map(|w| match &w.target {
                    WaveTarget::Select(sel) => WaveSpec {
                        name: w.name.clone(),
                        select: Some(sel.labels.clone()),
                        basis_points: None,
                    },
                    WaveTarget::Percent(pct) => WaveSpec {
                        name: w.name.clone(),
                        select: None,
                        basis_points: Some(pct.basis_points()),
                    },
                })
                .collect(),
            bake_ms: p.bake.as_millis() as u64,
            health_timeout_ms: p.health_timeout.as_millis() as u64,
            max_failure_bp: p.max_failure_rate.basis_points(),
            fleet_unhealthy_stop_bp: p.fleet_unhealthy_stop.basis_points(),
        }
    }
}

/// One wave of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WavePlan {
    /// The policy's name for it.
    pub name: String,
    /// Its devices, in hash order.
    pub devices: Vec<String>,
}

/// A device's place in line for `rollout_id`.
fn rank(rollout_id: &str, device: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(rollout_id.as_bytes());
    h.update([0]);
    h.update(device.as_bytes());
    h.finalize().into()
}

/// Splits `eligible` (id, labels) into waves. Empty percentage waves are left out, an empty
/// canary wave is kept (unless the fleet is empty); devices that no wave reaches (a policy not
/// growing to 100%, which validation refuses) join the last wave.
pub fn plan_waves(
    rollout_id: &str,
    eligible: &[(String, BTreeMap<String, String>)],
    policy: &Policy,
) -> Vec<WavePlan> {
    let mut order: Vec<&(String, BTreeMap<String, String>)> = eligible.iter().collect();
    order.sort_by_cached_key(|(id, _)| (rank(rollout_id, id), id.clone()));
    order.dedup_by(|a, b| a.0 == b.0);
    let total = order.len() as u64;
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut waves: Vec<WavePlan> = Vec::new();
    for spec in &policy.waves {
        let mut devices: Vec<&str> = Vec::new();
        if let Some(sel) = &spec.select {
            for (id, labels) in &order {
                if !taken.contains(id.as_str()) && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                {
                    devices.push(id.as_str());
                }
            }
            taken.extend(devices.iter().copied());
        }
        if let Some(bp) = spec.basis_points {
            // Cumulative target, rounded up; at least one new device while any remain.
            let target = (total * u64::from(bp)).div_ceil(10_000);
            let want = target.saturating_sub(taken.len() as u64).max(1);
            let mut added = 0u64;
            for (id, _) in &order {
                if added >= want {
                    break;
                }
                if taken.insert(id.as_str()) {
                    devices.push(id.as_str());
                    added += 1;
                }
            }
        }
        // A canary wave that matches no device stays in the plan (its gate waits and says
        // so): dropping it would send the release to a percentage of the fleet untested.
        if !devices.is_empty() || (spec.select.is_some() && total > 0) {
            waves.push(WavePlan {
                name: spec.name.clone(),
                devices: devices.into_iter().map(str::to_owned).collect(),
            });
        }
    }
    let rest: Vec<String> = order
        .iter()
        .filter(|(id, _)| !taken.contains(id.as_str()))
        .map(|(id, _)| id.clone())
        .collect();
    if !rest.is_empty() {
        match waves.last_mut() {
            Some(last) => last.devices.extend(rest),
            None => waves.push(WavePlan {
                name: "all".into(),
                devices: rest,
            }),
        }
    }
    waves
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn default_policy() -> Policy {
        Policy {
            waves: vec![
                WaveSpec {
                    name: "canary".into(),
                    select: Some(BTreeMap::from([("ring".into(), "canary".into())])),
                    basis_points: None,
                },
                WaveSpec {
                    name: "five-percent".into(),
                    select: None,
                    basis_points: Some(500),
                },
                WaveSpec {
                    name: "quarter".into(),
                    select: None,
                    basis_points: Some(2_500),
                },
                WaveSpec {
                    name: "all".into(),
                    select: None,
                    basis_points: Some(10_000),
                },
            ],
            bake_ms: 1_000,
            health_timeout_ms: 10_000,
            max_failure_bp: 500,
            fleet_unhealthy_stop_bp: 2_000,
        }
    }

    pub(crate) fn fleet(n: usize, canaries: usize) -> Vec<(String, BTreeMap<String, String>)> {
        (0..n)
            .map(|i| {
                let mut labels = BTreeMap::new();
                if i < canaries {
                    labels.insert("ring".to_owned(), "canary".to_owned());
                }
                (format!("dev-{i:05}"), labels)
            })
            .collect()
    }

    fn sizes(n: usize, canaries: usize) -> Vec<usize> {
        plan_waves("r1", &fleet(n, canaries), &default_policy())
            .iter()
            .map(|w| w.devices.len())
            .collect()
    }

    #[test]
    fn wave_sizes() {
        // (devices, canaries, sizes): cumulative 5% / 25% / 100% rounded up, each wave >= 1.
        let cases: &[(usize, usize, &[usize])] = &[
            (0, 0, &[]),
            (1, 0, &[0, 1]),
            (1, 1, &[1]),
            (2, 0, &[0, 1, 1]),
            (3, 1, &[1, 1, 1]),
            (10, 2, &[2, 1, 1, 6]),
            // No canary enrolled: the canary wave is kept, empty, and waits (machine.rs).
            (10, 0, &[0, 1, 2, 7]),
            (20, 2, &[2, 1, 2, 15]),
            (100, 2, &[2, 3, 20, 75]),
            (1000, 10, &[10, 40, 200, 750]),
        ];
        for (n, c, want) in cases {
            assert_eq!(sizes(*n, *c), want.to_vec(), "{n} devices, {c} canaries");
        }
    }

    #[test]
    fn deterministic_per_rollout_and_different_between_rollouts() {
        let f = fleet(100, 2);
        let a = plan_waves("r1", &f, &default_policy());
        assert_eq!(a, plan_waves("r1", &f, &default_policy()));
        let mut shuffled = f.clone();
        shuffled.reverse();
        assert_eq!(
            a,
            plan_waves("r1", &shuffled, &default_policy()),
            "input order does not matter"
        );
        let b = plan_waves("r2", &f, &default_policy());
        assert_ne!(a[1].devices, b[1].devices, "another rollout, another order");
        assert_eq!(a[0].devices, b[0].devices, "canaries are chosen by label");
    }

    proptest! {
        #[test]
        fn every_device_in_exactly_one_wave_and_waves_cumulative(
            n in 0usize..400,
            canaries in 0usize..10,
            bps in proptest::collection::vec(1u32..=10_000, 1..5),
            id in "[a-z0-9]{1,8}",
        ) {
            let canaries = canaries.min(n);
            let mut policy = default_policy();
            let mut sorted = bps.clone();
            sorted.sort_unstable();
            policy.waves.truncate(1);
            for (i, bp) in sorted.iter().enumerate() {
                policy.waves.push(WaveSpec { name: format!("w{i}"), select: None, basis_points: Some(*bp) });
            }
            let f = fleet(n, canaries);
            let waves = plan_waves(&id, &f, &policy);
            let mut seen = BTreeSet::new();
            for (i, w) in waves.iter().enumerate() {
                prop_assert!(!w.devices.is_empty() || (i == 0 && canaries == 0), "wave {} empty", i);
                for d in &w.devices {
                    prop_assert!(seen.insert(d.clone()), "{} twice", d);
                }
            }
            prop_assert_eq!(seen.len(), n);
            // Cumulative: after the wave for `bp`, at least ceil(n * bp) devices are in.
            let mut cum = 0usize;
            let offset = usize::from(n > 0);
            if canaries > 0 {
                prop_assert_eq!(waves[0].devices.len(), canaries);
            }
            for (i, w) in waves.iter().enumerate() {
                cum += w.devices.len();
                if i >= offset && i - offset < sorted.len() && i + 1 < waves.len() {
                    let target = (n as u64 * u64::from(sorted[i - offset])).div_ceil(10_000) as usize;
                    prop_assert!(cum >= target.min(n));
                }
            }
        }
    }
}
