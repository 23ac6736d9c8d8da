//! Health of a stack: per service, is its container running, what does Docker's healthcheck
//! say, is its restart count rising, does its `x-fleet` HTTP probe answer; folded into one
//! [`HealthState`] with a reason for every service that is not healthy.
//!
//! The judgement ([`judge`]) is a pure function of one observation, so its rules are tested
//! with tables; [`Runtime::health`] gathers the observation from the engine.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use fleet_config::compose::{ComposeFile, DependsCondition, HttpProbe};
use fleet_config::protocol::HealthState;

use super::containers;
use super::error::DockerError;
use super::labels::LABEL_SERVICE;
use super::probe;
use super::spec::network_keys;
use super::{Runtime, Seen};

/// What Docker's own healthcheck says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerHealth {
    /// Within the start period or before the first result.
    Starting,
    /// The last checks passed.
    Healthy,
    /// `retries` consecutive checks failed.
    Unhealthy,
}

/// The result of one HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The URL probed.
    pub url: String,
    /// The status received, or why there was none.
    pub status: Result<u16, String>,
    /// Whether the status was the expected one.
    pub ok: bool,
}

/// One service's health at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    /// The verdict.
    pub state: HealthState,
    /// Why, when the verdict is not Healthy.
    pub reason: Option<String>,
    /// The container observed, if any.
    pub container_id: Option<String>,
    /// The container is running.
    pub running: bool,
    /// Docker's healthcheck status, where the container has one.
    pub docker_health: Option<DockerHealth>,
    /// How often the engine restarted the container.
    pub restart_count: i64,
    /// The restart count is higher than at this runtime's previous observation.
    pub restarts_rose: bool,
    /// The HTTP probe's outcome, when the service has one and the container runs.
    pub probe: Option<ProbeOutcome>,
}

/// A stack's health at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackHealth {
    /// The stack.
    pub stack: String,
    /// The worst service verdict (Unhealthy, then Degraded, then Unknown, then Healthy).
    pub state: HealthState,
    /// Every service of the compose file.
    pub services: BTreeMap<String, ServiceHealth>,
}

impl StackHealth {
    /// "service `a`: reason; service `b`: reason" for every service not Healthy, or `None`.
    pub fn reason(&self) -> Option<String> {
        let parts: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.state != HealthState::Healthy)
            .map(|(name, s)| {
                format!(
                    "service `{name}`: {}",
                    s.reason.as_deref().unwrap_or("not healthy")
                )
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn rank(s: HealthState) -> u8 {
    match s {
        HealthState::Healthy => 0,
        HealthState::Unknown => 1,
        HealthState::Degraded => 2,
        HealthState::Unhealthy => 3,
    }
}

/// The worst of several verdicts; Healthy for none.
pub(crate) fn worst(states: impl IntoIterator<Item = HealthState>) -> HealthState {
    states
        .into_iter()
        .max_by_key(|s| rank(*s))
        .unwrap_or(HealthState::Healthy)
}

/// Everything [`judge`] needs about one service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observation {
    /// There is a container.
    pub exists: bool,
    /// Engine state: `running`, `exited`, `restarting`, `created`, `paused`, `dead`.
    pub status: String,
    /// Exit code of the last run.
    pub exit_code: i64,
    /// Docker's healthcheck status.
    pub docker_health: Option<DockerHealth>,
    /// Output of the last failed healthcheck, trimmed.
    pub health_output: Option<String>,
    /// The restart count rose since the previous observation.
    pub restarts_rose: bool,
    /// The restart count.
    pub restart_count: i64,
    /// The probe's outcome, when probed.
    pub probe: Option<ProbeOutcome>,
    /// The container started recently enough that a failing probe means "starting".
    pub in_probe_grace: bool,
    /// Another service waits for this one to complete: exiting with 0 is its success.
    pub one_shot: bool,
}

/// The verdict on one service, with a reason when it is not Healthy.
pub(crate) fn judge(o: &Observation) -> (HealthState, Option<String>) {
    use HealthState::*;
    if !o.exists {
        return (Unhealthy, Some("has no container".into()));
    }
    match o.status.as_str() {
        "running" => {}
        "restarting" => {
            return (
                Degraded,
                Some(format!(
                    "is restarting (exit code {}, {} restarts)",
                    o.exit_code, o.restart_count
                )),
            )
        }
        "exited" if o.one_shot && o.exit_code == 0 => return (Healthy, None),
        "exited" => return (Unhealthy, Some(format!("exited with code {}", o.exit_code))),
        other => return (Unhealthy, Some(format!("is {other}, not running"))),
    }
    if o.docker_health == Some(DockerHealth::Unhealthy) {
        let detail = o
            .health_output
            .as_deref()
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        return (
            Unhealthy,
            Some(format!("Docker healthcheck is unhealthy{detail}")),
        );
    }
    if o.restarts_rose {
        return (
            Degraded,
            Some(format!(
                "restarted since the last check ({} restarts)",
                o.restart_count
            )),
        );
    }
    if let Some(p) = o.probe.as_ref().filter(|p| !p.ok) {
        let got = match &p.status {
            Ok(s) => format!("status {s}"),
            Err(e) => e.clone(),
        };
        let msg = format!("HTTP probe GET {}: {got}", p.url);
        return if o.docker_health == Some(DockerHealth::Starting) || o.in_probe_grace {
            (Unknown, Some(format!("starting; {msg}")))
        } else {
            (Unhealthy, Some(msg))
        };
    }
    if o.docker_health == Some(DockerHealth::Starting) {
        return (Unknown, Some("Docker healthcheck is still starting".into()));
    }
    (Healthy, None)
}

fn docker_health(info: &ContainerInspectResponse) -> (Option<DockerHealth>, Option<String>) {
    let Some(health) = info.state.as_ref().and_then(|s| s.health.as_ref()) else {
        return (None, None);
    };
    let status = match health.status {
        Some(HealthStatusEnum::STARTING) => Some(DockerHealth::Starting),
        Some(HealthStatusEnum::HEALTHY) => Some(DockerHealth::Healthy),
        Some(HealthStatusEnum::UNHEALTHY) => Some(DockerHealth::Unhealthy),
        _ => None,
    };
    let output = health
        .log
        .as_ref()
        .and_then(|l| l.last())
        .and_then(|r| r.output.as_deref())
        .map(|s| {
            let s = s.trim();
            let cut: String = s.chars().take(200).collect();
            if cut.is_empty() {
                "no output".to_owned()
            } else {
                cut
            }
        });
    (status, output)
}

/// The container's address on its first stack network that has one.
fn container_ip(info: &ContainerInspectResponse, networks: &[String]) -> Option<IpAddr> {
    let nets = info.network_settings.as_ref()?.networks.as_ref()?;
    let ip_of = |name: &str| {
        nets.get(name)
            .and_then(|e| e.ip_address.as_deref())
            .filter(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse().ok())
    };
    networks
        .iter()
        .find_map(|n| ip_of(n))
        .or_else(|| nets.keys().find_map(|n| ip_of(n)))
}

impl Runtime {
    /// Observes stack `stack` once. Restart counts are compared with this runtime's previous
    /// observation of the same container (the first observation never counts as rising).
    #[tracing::instrument(skip(self, compose), fields(namespace = %self.namespace), err)]
    pub async fn health(
        &self,
        stack: &str,
        compose: &ComposeFile,
    ) -> Result<StackHealth, DockerError> {
        let listed = containers::list(&self.docker, &self.namespace, Some(stack)).await?;
        // By service: the running container if there are several.
        let mut by_service: BTreeMap<String, ContainerInspectResponse> = BTreeMap::new();
        for c in &listed {
            let Some(service) = c.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE)) else {
                continue;
            };
            let Some(id) = c.id.as_deref() else { continue };
            let Some(info) = containers::inspect(&self.docker, id).await? else {
                continue;
            };
            let running = |i: &ContainerInspectResponse| {
                i.state.as_ref().and_then(|s| s.running).unwrap_or(false)
            };
            if by_service.get(service).is_none_or(|prev| !running(prev)) {
                by_service.insert(service.clone(), info);
            }
        }
        let one_shots: Vec<&String> = compose
            .services
            .values()
            .flat_map(|s| s.depends_on.iter())
            .filter(|(_, c)| **c == DependsCondition::CompletedSuccessfully)
            .map(|(d, _)| d)
            .collect();

        let mut services = BTreeMap::new();
        for (name, svc) in &compose.services {
            let info = by_service.get(name);
            let mut obs = Observation {
                exists: info.is_some(),
                one_shot: one_shots.contains(&name),
                ..Default::default()
            };
            let mut id = None;
            if let Some(info) = info {
                let state = info.state.clone().unwrap_or_default();
                obs.status = state.status.map(|s| s.to_string()).unwrap_or_default();
                obs.exit_code = state.exit_code.unwrap_or(0);
                (obs.docker_health, obs.health_output) = docker_health(info);
                obs.restart_count = info.restart_count.unwrap_or(0);
                let cid = info.id.clone().unwrap_or_default();
                let (rose, since) = self.note_observed(&cid, obs.restart_count);
                obs.restarts_rose = rose;
                obs.in_probe_grace = since.elapsed() < self.options.probe_start_grace;
                if let (Some(p), "running") = (&svc.http_probe, obs.status.as_str()) {
                    obs.probe = Some(self.run_probe(stack, name, svc, p, info, &by_service).await);
                }
                id = Some(cid);
            }
            let (state, reason) = judge(&obs);
            services.insert(
                name.clone(),
                ServiceHealth {
                    state,
                    reason,
                    container_id: id,
                    running: obs.status == "running",
                    docker_health: obs.docker_health,
                    restart_count: obs.restart_count,
                    restarts_rose: obs.restarts_rose,
                    probe: obs.probe,
                },
            );
        }
        let state = worst(services.values().map(|s| s.state));
        Ok(StackHealth {
            stack: stack.to_owned(),
            state,
            services,
        })
    }

    /// Watches stack `stack`, observing every `poll`: first until it is Healthy (services
    /// still starting are tolerated for [`RuntimeOptions::startup_timeout`](super::RuntimeOptions)),
    /// then for `window`, during which every observation must be Healthy. The verdict is the
    /// observation that decided it: Healthy at the end of the window, or the first Unhealthy or
    /// Degraded one (a service exited, failed its healthcheck or probe, or is restarting), or
    /// the last Unknown one when the stack never came up. The window thus measures health
    /// *held*, never a healthcheck that simply had not reported yet.
    #[tracing::instrument(skip(self, compose), fields(namespace = %self.namespace), err)]
    pub async fn watch_health(
        &self,
        stack: &str,
        compose: &ComposeFile,
        window: Duration,
        poll: Duration,
    ) -> Result<StackHealth, DockerError> {
        let startup_deadline = Instant::now() + self.options.startup_timeout;
        let mut window_end: Option<Instant> = None;
        loop {
            let h = self.health(stack, compose).await?;
            let now = Instant::now();
            match (h.state, window_end) {
                (HealthState::Unhealthy | HealthState::Degraded, _) => {
                    tracing::warn!(state = ?h.state, reason = h.reason().unwrap_or_default(), "stack failed its health window");
                    return Ok(h);
                }
                (HealthState::Healthy, None) => {
                    tracing::debug!("stack healthy: the health window starts");
                    window_end = Some(now + window);
                }
                (HealthState::Healthy, Some(end)) if now >= end => {
                    tracing::info!("stack healthy for the whole window");
                    return Ok(h);
                }
                (HealthState::Healthy, Some(_)) => {}
                (HealthState::Unknown, Some(_)) => {
                    tracing::warn!(
                        reason = h.reason().unwrap_or_default(),
                        "stack stopped reporting healthy during its window"
                    );
                    return Ok(h);
                }
                (HealthState::Unknown, None) if now >= startup_deadline => {
                    tracing::warn!(
                        reason = h.reason().unwrap_or_default(),
                        "stack did not become healthy in time"
                    );
                    return Ok(h);
                }
                (HealthState::Unknown, None) => {}
            }
            let next = match window_end {
                Some(end) => poll.min(end.saturating_duration_since(now)),
                None => poll,
            };
            tokio::time::sleep(next.max(Duration::from_millis(10))).await;
        }
    }

    /// Updates the memory of container `id`; returns whether its restart count rose and since
    /// when the runtime has known it running.
    fn note_observed(&self, id: &str, restart_count: i64) -> (bool, Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return (false, Instant::now());
        };
        let entry = seen.entry(id.to_owned()).or_insert(Seen {
            restart_count: None,
            since: Instant::now(),
        });
        let rose = entry
            .restart_count
            .is_some_and(|before| restart_count > before);
        entry.restart_count = Some(restart_count);
        (rose, entry.since)
    }

    async fn run_probe(
        &self,
        stack: &str,
        name: &str,
        svc: &fleet_config::compose::Service,
        p: &HttpProbe,
        info: &ContainerInspectResponse,
        by_service: &BTreeMap<String, ContainerInspectResponse>,
    ) -> ProbeOutcome {
        let mode = svc.network_mode.as_deref();
        let ip = match mode {
            Some("host") => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(m) if m.starts_with("service:") => m
                .strip_prefix("service:")
                .and_then(|t| by_service.get(t))
                .and_then(|t| container_ip(t, &[])),
            _ => {
                let nets: Vec<String> = network_keys(svc)
                    .into_iter()
                    .map(|k| self.namespace.network_name(stack, k, None))
                    .collect();
                container_ip(info, &nets)
            }
        };
        let Some(ip) = ip else {
            return ProbeOutcome {
                url: format!("http://?:{}{}", p.port, p.path),
                status: Err("the container has no address to probe".into()),
                ok: false,
            };
        };
        let addr = SocketAddr::new(ip, p.port);
        let url = format!("http://{addr}{}", p.path);
        let status = probe::get_status(addr, &p.path, p.timeout).await;
        let ok = status
            .as_ref()
            .is_ok_and(|s| probe::status_ok(*s, p.expect_status));
        tracing::debug!(service = name, %url, ?status, ok, "HTTP probe");
        ProbeOutcome { url, status, ok }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::*;

    fn running() -> Observation {
        Observation {
            exists: true,
            status: "running".into(),
            ..Default::default()
        }
    }

    fn probe(ok: bool) -> Option<ProbeOutcome> {
        Some(ProbeOutcome {
            url: "http://10.0.0.2:8080/healthz".into(),
            status: Ok(if ok { 200 } else { 404 }),
            ok,
        })
    }

    #[test]
    fn verdicts() {
        let cases: Vec<(&str, Observation, HealthState, Option<&str>)> = vec![
            ("running, nothing else", running(), Healthy, None),
            (
                "no container",
                Observation::default(),
                Unhealthy,
                Some("has no container"),
            ),
            (
                "exited",
                Observation {
                    status: "exited".into(),
                    exit_code: 3,
                    ..running()
                },
                Unhealthy,
                Some("exited with code 3"),
            ),
            (
                "one-shot done",
                Observation {
                    status: "exited".into(),
                    one_shot: true,
                    ..running()
                },
                Healthy,
                None,
            ),
            (
                "restarting",
                Observation {
                    status: "restarting".into(),
                    exit_code: 1,
                    restart_count: 4,
                    ..running()
                },
                Degraded,
                Some("is restarting"),
            ),
            (
                "docker unhealthy",
                Observation {
                    docker_health: Some(DockerHealth::Unhealthy),
                    health_output: Some("wget: server returned error".into()),
                    ..running()
                },
                Unhealthy,
                Some("Docker healthcheck is unhealthy: wget"),
            ),
            (
                "restart count rose",
                Observation {
                    restarts_rose: true,
                    restart_count: 2,
                    ..running()
                },
                Degraded,
                Some("restarted since the last check"),
            ),
            (
                "starting",
                Observation {
                    docker_health: Some(DockerHealth::Starting),
                    ..running()
                },
                Unknown,
                Some("still starting"),
            ),
            (
                "probe fails",
                Observation {
                    probe: probe(false),
                    ..running()
                },
                Unhealthy,
                Some("HTTP probe GET http://10.0.0.2:8080/healthz: status 404"),
            ),
            (
                "probe fails while starting",
                Observation {
                    probe: probe(false),
                    in_probe_grace: true,
                    ..running()
                },
                Unknown,
                Some("starting; HTTP probe"),
            ),
            (
                "probe passes, docker healthy",
                Observation {
                    probe: probe(true),
                    docker_health: Some(DockerHealth::Healthy),
                    ..running()
                },
                Healthy,
                None,
            ),
        ];
        for (name, obs, state, reason) in cases {
            let (got, why) = judge(&obs);
            assert_eq!(got, state, "{name}");
            match reason {
                None => assert_eq!(why, None, "{name}"),
                Some(r) => assert!(
                    why.as_deref()
                        .is_some_and(|w| w.starts_with(r) || w.contains(r)),
                    "{name}: {why:?} should contain {r:?}"
                ),
            }
        }
    }

    #[test]
    fn the_worst_verdict_wins() {
        assert_eq!(worst([]), Healthy);
        assert_eq!(worst([Healthy, Unknown]), Unknown);
        assert_eq!(worst([Unknown, Degraded, Healthy]), Degraded);
        assert_eq!(worst([Degraded, Unhealthy]), Unhealthy);
    }
}
