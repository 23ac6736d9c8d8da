//! Simulated devices that speak the real HTTP protocol: they enroll with a bootstrap token,
//! check in with real `CheckinRequest`s, buffer and replay events, and "install" what the
//! controller names by walking the update phases over a few check-ins. A release can be
//! made to fail on chosen devices. Used by the tests, the benchmark and the demo.

use std::collections::BTreeSet;
use std::sync::Arc;

use fleet_config::protocol::{
    paths, CheckinRequest, CheckinResponse, Desired, DeviceEvent, EnrollRequest, EnrollResponse,
    EventKind, HealthState, ReleaseId, Telemetry, UpdatePhase, UpdateResult,
};

/// Errors of a simulated device.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The request failed (controller down, connection refused).
    #[error("request to {url} failed: {}", crate::tls::describe(source))]
    Http {
        /// URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The CA file.
    #[error("{0}")]
    Trust(#[from] crate::tls::TrustError),
    /// The controller answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// URL.
        url: String,
        /// Status code.
        status: u16,
        /// Body.
        body: String,
    },
    /// The answer was not what the protocol says.
    #[error("unexpected answer from {url}: {detail}")]
    Answer {
        /// URL.
        url: String,
        /// What.
        detail: String,
    },
}

/// Decides whether installing `release` fails on `device` (its health window fails).
pub type FailureRule = Arc<dyn Fn(&str, &ReleaseId) -> bool + Send + Sync>;

/// One simulated device.
#[derive(Clone)]
pub struct SimDevice {
    /// Its id.
    pub id: String,
    /// Its device token.
    pub token: String,
    /// Running release.
    pub current: Option<ReleaseId>,
    /// Previous release.
    pub previous: Option<ReleaseId>,
    /// Update phase.
    pub phase: UpdatePhase,
    /// Last result.
    pub last_result: Option<UpdateResult>,
    /// Releases marked bad.
    pub bad: Vec<ReleaseId>,
    /// Every release the controller ever named to this device.
    pub offered: BTreeSet<ReleaseId>,
    /// Every release this device ever swapped in (ran, even briefly).
    pub installed: BTreeSet<ReleaseId>,
    /// In-flight update: target and check-ins left.
    updating: Option<(ReleaseId, u32)>,
    next_seq: u64,
    events: Vec<DeviceEvent>,
    /// The last answer.
    pub last_answer: Option<CheckinResponse>,
    /// Check-ins an update takes.
    pub update_steps: u32,
    /// The health it reports while idle on a release, when set (a release that runs but
    /// is `degraded` or `unhealthy`); otherwise healthy.
    pub health_override: Option<HealthState>,
}

fn url(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

async fn post<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: &impl serde::Serialize,
) -> Result<T, SimError> {
    let mut req = client.post(&url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|source| SimError::Http {
        url: url.clone(),
        source,
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(SimError::Status {
            url,
            status: status.as_u16(),
            body,
        });
    }
    resp.json().await.map_err(|e| SimError::Answer {
        url,
        detail: e.to_string(),
    })
}

impl SimDevice {
    /// Enrolls with the bootstrap token.
    pub async fn enroll(
        client: &reqwest::Client,
        base: &str,
        bootstrap_token: &str,
        id: &str,
    ) -> Result<SimDevice, SimError> {
        let req = EnrollRequest {
            device_id: id.to_owned(),
            hostname: format!("sim-{id}"),
            arch: "x86_64".into(),
            agent_version: "sim".into(),
        };
        let u = url(base, paths::ENROLL);
        match post::<EnrollResponse>(client, u.clone(), Some(bootstrap_token), &req).await? {
            EnrollResponse::Enrolled { token, .. } => Ok(SimDevice::with_token(id, &token)),
            EnrollResponse::Pending { .. } => Err(SimError::Answer {
                url: u,
                detail: "a pairing code instead of a token for a bootstrap enrollment".into(),
            }),
        }
    }

    /// A device that already holds a token.
    pub fn with_token(id: &str, token: &str) -> SimDevice {
        let mut d = SimDevice {
            id: id.to_owned(),
            token: token.to_owned(),
            current: None,
            previous: None,
            phase: UpdatePhase::Idle,
            last_result: None,
            bad: Vec::new(),
            offered: BTreeSet::new(),
            installed: BTreeSet::new(),
            updating: None,
            next_seq: 1,
            events: Vec::new(),
            last_answer: None,
            update_steps: 2,
            health_override: None,
        };
        d.event(EventKind::AgentStarted {
            version: "sim".into(),
        });
        d
    }

    fn event(&mut self, kind: EventKind) {
        self.events.push(DeviceEvent {
            seq: self.next_seq,
            at_ms: crate::now_ms().max(0) as u64,
            kind,
        });
        self.next_seq += 1;
    }

    /// Queues an event for the next check-in (the benchmark's occasional events).
    pub fn push_event(&mut self, kind: EventKind) {
        self.event(kind);
    }

    /// Events not yet acknowledged.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    fn health(&self) -> HealthState {
        match self.phase {
            UpdatePhase::Idle if self.current.is_some() => {
                self.health_override.unwrap_or(HealthState::Healthy)
            }
            UpdatePhase::SafeMode => HealthState::Unhealthy,
            _ => HealthState::Unknown,
        }
    }

    /// The request this device would send now.
    pub fn request(&self) -> CheckinRequest {
        CheckinRequest {
            device_id: self.id.clone(),
            agent_version: "sim".into(),
            current: self.current.clone(),
            previous: self.previous.clone(),
            phase: self.phase,
            health: self.health(),
            last_result: self.last_result.clone(),
            bad_releases: self.bad.clone(),
            telemetry: Telemetry {
                cpu_percent: Some(3.0),
                mem_used_bytes: Some(200 << 20),
                mem_total_bytes: Some(1 << 30),
                disk_free_bytes: Some(8 << 30),
                temperature_c: Some(48.0),
                load1: Some(0.2),
                uptime_secs: Some(3600),
            },
            events: self.events.clone(),
            long_poll_secs: 0,
            logs: None,
        }
    }

    /// Advances an update in flight by one step.
    fn advance(&mut self, fails: &FailureRule) {
        let Some((target, left)) = self.updating.take() else {
            return;
        };
        if left > 1 {
            self.phase = UpdatePhase::Verifying;
            self.installed.insert(target.clone());
            self.updating = Some((target, left - 1));
            return;
        }
        self.phase = UpdatePhase::Idle;
        let result = if fails(&self.id, &target) {
            self.bad.push(target.clone());
            UpdateResult::RolledBack {
                release: target,
                reason: "health window failed (simulated)".into(),
            }
        } else {
            self.previous = self.current.replace(target.clone());
            UpdateResult::Succeeded { release: target }
        };
        self.event(EventKind::UpdateFinished {
            result: result.clone(),
        });
        self.last_result = Some(result);
    }

    /// One check-in: report, read the answer, start an update it names.
    pub async fn checkin(
        &mut self,
        client: &reqwest::Client,
        base: &str,
        fails: &FailureRule,
    ) -> Result<CheckinResponse, SimError> {
        self.advance(fails);
        let req = self.request();
        let answer: CheckinResponse =
            post(client, url(base, paths::CHECKIN), Some(&self.token), &req).await?;
        self.events.retain(|e| e.seq > answer.acked_seq);
        if let Desired::Release { release, .. } = &answer.desired {
            self.offered.insert(release.clone());
            let wanted = Some(release) != self.current.as_ref();
            if wanted
                && self.updating.is_none()
                && !answer.emergency_stop
                && !self.bad.contains(release)
            {
                self.phase = UpdatePhase::Fetching;
                self.event(EventKind::UpdateStarted {
                    release: release.clone(),
                });
                self.updating = Some((release.clone(), self.update_steps.max(1)));
            }
        }
        self.last_answer = Some(answer.clone());
        Ok(answer)
    }
}

/// A fleet of simulated devices.
pub struct SimFleet {
    /// Controller base URL.
    pub base: String,
    /// The devices.
    pub devices: Vec<SimDevice>,
    /// Which installs fail.
    pub fails: FailureRule,
    client: reqwest::Client,
}

impl SimFleet {
    /// Enrolls `ids` with the bootstrap token.
    pub async fn enroll(
        base: &str,
        bootstrap_token: &str,
        ids: &[String],
    ) -> Result<SimFleet, SimError> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|source| SimError::Http {
                url: base.to_owned(),
                source,
            })?;
        let mut devices = Vec::with_capacity(ids.len());
        for id in ids {
            devices.push(SimDevice::enroll(&client, base, bootstrap_token, id).await?);
        }
        Ok(SimFleet {
            base: base.to_owned(),
            devices,
            fails: Arc::new(|_, _| false),
            client,
        })
    }

    /// Every device (except those in `offline`) checks in once, `parallel` at a time.
    pub async fn round(&mut self, offline: &BTreeSet<String>, parallel: usize) -> Vec<SimError> {
        use futures_util::stream::{self, StreamExt};
        let client = self.client.clone();
        let base = self.base.clone();
        let fails = self.fails.clone();
        let devices = std::mem::take(&mut self.devices);
        let results: Vec<(SimDevice, Option<SimError>)> =
            stream::iter(devices.into_iter().map(|mut d| {
                let client = client.clone();
                let base = base.clone();
                let fails = fails.clone();
                let skip = offline.contains(&d.id);
                async move {
                    if skip {
                        return (d, None);
                    }
                    let err = d.checkin(&client, &base, &fails).await.err();
                    (d, err)
                }
            }))
            .buffered(parallel.max(1))
            .collect()
            .await;
        let mut errors = Vec::new();
        for (d, e) in results {
            self.devices.push(d);
            if let Some(e) = e {
                errors.push(e);
            }
        }
        errors
    }

    /// A device by id.
    pub fn device(&self, id: &str) -> Option<&SimDevice> {
        self.devices.iter().find(|d| d.id == id)
    }
}
