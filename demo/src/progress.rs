//! The rollout's waves in the terminal: the newest rollout, each wave's devices and counts, the
//! fleet's versions, and the emergency stop when it holds. Read from the controller's API, as
//! any client would.

use std::collections::BTreeMap;

use serde_json::Value;

/// One look at the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The lines to show.
    pub lines: Vec<String>,
    /// Devices by the release they run (short sha, or `none`).
    pub versions: BTreeMap<String, u64>,
}

/// Reads the controller's API with a viewer's (or better) token.
pub struct Watcher {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Watcher {
    /// A watcher of the controller at `url`, trusting the lab CA in `ca_file`.
    pub fn new(url: &str, token: &str, ca_file: &std::path::Path) -> Watcher {
        Watcher {
            client: crate::stack::client_trusting(ca_file),
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// What to show now (None while the controller does not answer).
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let status = self.get("/api/v1/status").await?;
        let mut out = Vec::new();
        if let Some(stop) = status["emergency_stop"].as_object() {
            out.push(format!(
                "!! EMERGENCY STOP by {}: {} (fleetctl resume to clear)",
                stop.get("actor").and_then(Value::as_str).unwrap_or("?"),
                stop.get("reason").and_then(Value::as_str).unwrap_or("?"),
            ));
        }
        let by_version: BTreeMap<String, u64> = status["versions"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let versions: Vec<String> = by_version
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect();
        out.push(format!(
            "fleet: {} devices, {:.0}% healthy; running {}",
            status["devices"],
            status["healthy_percent"].as_f64().unwrap_or(0.0),
            versions.join(", ")
        ));
        let newest = self.get("/api/v1/rollouts?limit=1").await?;
        if let Some(id) = newest[0]["id"].as_str() {
            let r = self.get(&format!("/api/v1/rollouts/{id}")).await?;
            out.extend(render_rollout(&r));
        } else {
            out.push("no rollout yet".into());
        }
        Some(Snapshot {
            lines: out,
            versions: by_version,
        })
    }
}

/// A rollout (as `GET /api/v1/rollouts/{id}` gives it) as lines.
pub fn render_rollout(r: &Value) -> Vec<String> {
    let release = r["release"].as_str().unwrap_or("?");
    let mut out = vec![format!(
        "rollout {} of {}: {}{}",
        r["id"].as_str().unwrap_or("?"),
        &release[..release.len().min(12)],
        r["state"].as_str().unwrap_or("?"),
        r["detail"]["reason"]
            .as_str()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    )];
    let current = r["detail"]["wave"].as_u64();
    for w in r["waves"].as_array().into_iter().flatten() {
        let n = w["devices"].as_u64().unwrap_or(0);
        let healthy = w["healthy"].as_u64().unwrap_or(0);
        let failed = w["failed"].as_u64().unwrap_or(0);
        let width = 20u64;
        let filled = (healthy * width).checked_div(n).unwrap_or(0);
        let bad = if n == 0 {
            0
        } else {
            (failed * width).div_ceil(n)
        };
        let bar: String = std::iter::repeat_n('#', filled as usize)
            .chain(std::iter::repeat_n('x', bad.min(width - filled) as usize))
            .chain(std::iter::repeat_n(
                '.',
                (width - filled - bad.min(width - filled)) as usize,
            ))
            .collect();
        let here = if current == w["index"].as_u64() {
            "▶"
        } else {
            " "
        };
        out.push(format!(
            " {here} {:<13} [{bar}] {healthy:>3}/{n:<3} healthy, {} pending, {failed} failed",
            w["name"].as_str().unwrap_or("?"),
            w["pending"].as_u64().unwrap_or(0),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rollout_renders_one_line_per_wave_with_its_bar() {
        let r = json!({
            "id": "r-0123456789ab", "release": "0123456789abcdef", "state": "halted",
            "detail": {"state": "halted", "wave": 0, "reason": "2 of 3 devices of wave 1 (canary) failed"},
            "waves": [
                {"index": 0, "name": "canary", "devices": 3, "healthy": 1, "pending": 0, "failed": 2},
                {"index": 1, "name": "five-percent", "devices": 8, "healthy": 0, "pending": 8, "failed": 0}
            ]
        });
        let lines = render_rollout(&r);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("halted (2 of 3 devices"), "{}", lines[0]);
        assert!(lines[1].starts_with(" ▶ canary"), "{}", lines[1]);
        assert!(lines[1].contains("[######xxxxxxxxxxxxxx]"), "{}", lines[1]);
        assert!(
            lines[2].contains("[....................]   0/8"),
            "{}",
            lines[2]
        );
    }
}
