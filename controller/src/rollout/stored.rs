//! A rollout as the store keeps it: the state, policy and waves as one JSON text, and each
//! device's record apart, one row each, written only when it changes and not at all while
//! the device waits for its wave. So a pass that moves 50 devices of a 100,000-device rollout
//! writes 50 small rows, and creating that rollout writes the canaries' rows, not 100,000.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{DeviceRecord, Policy, Rollout, State, WavePlan};

/// The rollout of a stored JSON value (records put back under `devices` by the store), with
/// a waiting record for every device of the plan that has none.
pub fn decode(v: serde_json::Value) -> Result<Rollout, serde_json::Error> {
    let mut r: Rollout = serde_json::from_value(v)?;
    r.fill_waiting();
    Ok(r)
}

/// What the text holds: a [`Rollout`] but its `devices` (kept in step with it: the tests
/// read a rollout back from the text and its records).
#[derive(Serialize)]
struct Text<'a> {
    id: &'a str,
    release: &'a str,
    digest: &'a str,
    created_ms: u64,
    policy: &'a Policy,
    waves: &'a [WavePlan],
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    sent_back: &'a BTreeSet<usize>,
    state: &'a State,
}

/// The rollout's stored text: everything but the device records.
pub fn encode_data(r: &Rollout) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Text {
        id: &r.id,
        release: &r.release,
        digest: &r.digest,
        created_ms: r.created_ms,
        policy: &r.policy,
        waves: &r.waves,
        sent_back: &r.sent_back,
        state: &r.state,
    })
}

/// The records of `r` that differ from `before` (what is stored), as (device, JSON) rows.
pub fn changed_records(
    r: &Rollout,
    before: &BTreeMap<String, DeviceRecord>,
) -> Result<Vec<(String, String)>, serde_json::Error> {
    r.devices
        .iter()
        .filter(|(id, rec)| before.get(*id) != Some(*rec))
        .map(|(id, rec)| Ok((id.clone(), serde_json::to_string(rec)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::tests::{device_view, NEW};
    use crate::rollout::{Outcome, Policy};

    fn rollout(n: usize) -> Rollout {
        let views: Vec<_> = (0..n)
            .map(|i| {
                let mut labels = BTreeMap::new();
                if i < n / 10 {
                    labels.insert("ring".to_owned(), "canary".to_owned());
                }
                device_view(format!("d{i:05}"), labels)
            })
            .collect();
        let rid = NEW.parse().expect("sha");
        let policy = Policy::from(&fleet_config::fleet::RolloutPolicy::default());
        Rollout::start("r-1", &rid, "sha256:x", &views, policy, 1).0
    }

    #[test]
    fn a_new_rollout_stores_only_the_records_of_its_first_wave_and_reads_back_whole() {
        let r = rollout(1000);
        let first = r.waves[0].devices.len();
        assert!(first > 0 && first < 1000, "{first}");
        let rows = changed_records(&r, &BTreeMap::new())
            .expect("encode")
            .into_iter()
            .filter(|(id, _)| r.devices[id].outcome != Outcome::Waiting)
            .count();
        assert_eq!(rows, first);
        // What the store hands back: the text and the rows that left `waiting`.
        let mut v: serde_json::Value =
            serde_json::from_str(&encode_data(&r).expect("encode")).expect("json");
        assert!(v.get("devices").is_none(), "records are not in the text");
        let mut devices = serde_json::Map::new();
        for (id, rec) in &r.devices {
            if rec.outcome != Outcome::Waiting {
                devices.insert(id.clone(), serde_json::to_value(rec).expect("json"));
            }
        }
        v["devices"] = serde_json::Value::Object(devices);
        assert_eq!(decode(v).expect("decode"), r);
    }

    #[test]
    fn a_step_writes_only_the_records_it_changed() {
        let r = rollout(1000);
        let before = r.devices.clone();
        let mut after = r.clone();
        let mut some: Vec<String> = after.waves[0].devices.iter().take(3).cloned().collect();
        some.sort();
        for id in &some {
            if let Some(rec) = after.devices.get_mut(id) {
                rec.outcome = Outcome::Healthy;
            }
        }
        let rows = changed_records(&after, &before).expect("encode");
        let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, some.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            encode_data(&after).ok(),
            encode_data(&r).ok(),
            "the text is unchanged"
        );
    }

    #[test]
    fn a_rollout_stored_whole_before_the_split_still_reads() {
        let r = rollout(50);
        let whole = serde_json::to_value(&r).expect("json");
        assert_eq!(decode(whole).expect("decode"), r);
    }
}
