//! The fleet simulator over time (`fleet-sim`): N simulated devices, each its own task checking
//! in every interval (with jitter) like a real agent, with a chosen failure rate, network
//! latency and share of devices offline. Failures and offline devices are chosen by a seeded
//! hash, so a run can be repeated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_config::protocol::ReleaseId;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::sim::{FailureRule, SimDevice, SimError};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Controller base URL.
    pub url: String,
    /// Trust only this CA (PEM) for the controller's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// Bootstrap token to enroll with.
    pub bootstrap_token: String,
    /// How many devices.
    pub devices: usize,
    /// Device ids are `<prefix><number>` (`sim-001`, …).
    pub prefix: String,
    /// Check-in interval (each device adds up to ±10% jitter).
    pub interval: Duration,
    /// Share of (device, release) installs whose health window fails, 0.0 to 1.0.
    pub failure_rate: f64,
    /// Added before every request, as a slow network would.
    pub latency: Duration,
    /// Share of devices that never check in after enrolling, 0.0 to 1.0.
    pub offline: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// How often a summary line is printed.
    pub report_every: Duration,
}

/// A share of something, 0.0 to 1.0, from `pick`'s seeded hash.
fn pick(seed: u64, parts: &[&str]) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The ids the simulator uses.
pub fn device_ids(prefix: &str, n: usize) -> Vec<String> {
    let width = n.to_string().len().max(3);
    (1..=n).map(|i| format!("{prefix}{i:0width$}")).collect()
}

/// What the devices run, for the summary line.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Devices by current release (short sha, or `none`).
    pub by_release: BTreeMap<String, usize>,
    /// Devices not checking in.
    pub offline: usize,
    /// Failed check-ins so far.
    pub errors: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let releases: Vec<String> = self
            .by_release
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        write!(
            f,
            "releases {{{}}}, offline {}, failed check-ins {}",
            releases.join(", "),
            self.offline,
            self.errors
        )?;
        if let Some(e) = &self.last_error {
            write!(f, " (last: {e})")?;
        }
        Ok(())
    }
}

/// Enrolls the devices, then runs them until `shutdown`; prints a summary line every
/// `report_every`. Fails only when enrollment fails (check-in failures are counted and
/// retried, like a real agent's).
pub async fn run(opts: SimOptions, shutdown: CancellationToken) -> Result<(), SimError> {
    let client = crate::tls::trust(
        reqwest::Client::builder().timeout(Duration::from_secs(30)),
        opts.ca_file.as_deref(),
    )?
    .build()
    .map_err(|source| SimError::Http {
        url: opts.url.clone(),
        source,
    })?;
    let seed = opts.seed;
    let rate = opts.failure_rate;
    let fails: FailureRule =
        Arc::new(move |id: &str, r: &ReleaseId| pick(seed, &[id, r.as_str()]) < rate);
    let ids = device_ids(&opts.prefix, opts.devices);
    let mut devices = Vec::with_capacity(ids.len());
    for id in &ids {
        devices.push(SimDevice::enroll(&client, &opts.url, &opts.bootstrap_token, id).await?);
    }
    let offline: Vec<bool> = ids
        .iter()
        .map(|id| pick(seed, &["offline", id]) < opts.offline)
        .collect();
    tracing::info!(
        devices = devices.len(),
        offline = offline.iter().filter(|o| **o).count(),
        "fleet-sim: devices enrolled"
    );
    let summary = Arc::new(Mutex::new(Summary::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (mut d, off)) in devices.into_iter().zip(offline).enumerate() {
        let client = client.clone();
        let url = opts.url.clone();
        let fails = fails.clone();
        let shutdown = shutdown.clone();
        let summary = summary.clone();
        let interval = opts.interval;
        let latency = opts.latency;
        tasks.spawn(async move {
            if off {
                if let Ok(mut s) = summary.lock() {
                    s.offline += 1;
                }
                return;
            }
            // Spread the first check-ins over one interval, then ±10% jitter.
            let mut wait = interval.mul_f64(pick(seed, &["start", &i.to_string()]));
            let mut n: u64 = 0;
            let mut last: Option<String> = None;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait + latency) => {}
                }
                let result = d.checkin(&client, &url, &fails).await;
                let now = d
                    .current
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |r| r.short().to_owned());
                if let Ok(mut s) = summary.lock() {
                    if last.as_deref() != Some(now.as_str()) {
                        if let Some(old) = last.take() {
                            if let Some(c) = s.by_release.get_mut(&old) {
                                *c = c.saturating_sub(1);
                            }
                        }
                        *s.by_release.entry(now.clone()).or_default() += 1;
                        s.by_release.retain(|_, c| *c > 0);
                        last = Some(now);
                    }
                    if let Err(e) = &result {
                        s.errors += 1;
                        s.last_error = Some(e.to_string());
                    }
                }
                n += 1;
                let jitter = 0.9 + 0.2 * pick(seed, &[&d.id, &n.to_string()]);
                // Right after an update step, come back soon, as the agent does.
                wait = if d.phase != fleet_config::protocol::UpdatePhase::Idle {
                    Duration::from_millis(500)
                } else {
                    interval.mul_f64(jitter)
                };
            }
        });
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(opts.report_every) => {
                if let Ok(s) = summary.lock() {
                    println!("fleet-sim: {} devices, {s}", opts.devices);
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_zero_padded_and_ordered() {
        assert_eq!(device_ids("sim-", 3), ["sim-001", "sim-002", "sim-003"]);
        let ids = device_ids("d", 1200);
        assert_eq!(ids[0], "d0001");
        assert_eq!(ids[1199], "d1200");
    }

    #[test]
    fn picks_are_seeded_and_spread() {
        assert_eq!(pick(7, &["a", "b"]), pick(7, &["a", "b"]));
        assert_ne!(pick(7, &["a", "b"]), pick(8, &["a", "b"]));
        let n = 10_000;
        let below = (0..n)
            .filter(|i| pick(1, &["x", &i.to_string()]) < 0.25)
            .count();
        // A quarter, give or take a few percent.
        assert!((2_200..2_800).contains(&below), "{below}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&pick(3, &[&i.to_string()]))));
    }
}
