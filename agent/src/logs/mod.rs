//! The device's answer to a log request (`fleet_config::protocol::logs`): the agent's own recent
//! lines ([`ring`]) and each of its containers' (the runtime's), read when the controller asks
//! and sent with the next check-in. The controller never connects to the device.
//!
//! Bounded in time and size: the containers are read within [`COLLECT_TIMEOUT`] (an engine that
//! does not answer gives a source saying so, never a failed check-in), and the tail is cut to
//! the protocol's bounds ([`LogTail::bounded`]) before it leaves.

pub mod ring;

use std::time::Duration;

use fleet_config::protocol::logs::{
    selector_matches, LogRequest, LogSource, LogStatus, LogTail, AGENT_SOURCE,
};

use crate::journal::now_ms;
use crate::runtime::StackRuntime;

/// Longest the containers' logs are read for; what the engine has not given by then is
/// reported as unavailable.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The source that stands for the containers when they cannot be listed.
pub const CONTAINERS_SOURCE: &str = "containers";

/// The tail answering `req`: the newest lines of the agent's own log (`agent`, from `agent`:
/// its lines and how many older ones it holds) and of each container of `runtime` the
/// request selects, within the protocol's bounds. A selector that names nothing on the device
/// gives a `not_found` source.
pub async fn collect<R: StackRuntime>(
    req: &LogRequest,
    runtime: &R,
    agent: (Vec<fleet_config::protocol::logs::LogLine>, u64),
) -> LogTail {
    let lines = req.lines();
    let mut sources = Vec::new();
    if req.selects(AGENT_SOURCE) {
        let (mut tail, older) = agent;
        let extra = tail.len().saturating_sub(lines as usize);
        tail.drain(..extra);
        sources.push(LogSource {
            name: AGENT_SOURCE.to_owned(),
            container: None,
            status: if tail.is_empty() {
                LogStatus::NoLogs
            } else {
                LogStatus::Ok
            },
            detail: None,
            lines: tail,
            omitted: older + extra as u64,
        });
    }
    let select = |name: &str| name != AGENT_SOURCE && req.selects(name);
    let listed =
        match tokio::time::timeout(COLLECT_TIMEOUT, runtime.container_logs(lines, &select)).await {
            Ok(Ok(containers)) => {
                sources.extend(containers);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the containers' logs for the controller");
                sources.push(LogSource::empty(
                    CONTAINERS_SOURCE,
                    LogStatus::Unavailable,
                    Some(format!("cannot list the containers: {e}")),
                ));
                false
            }
            Err(_) => {
                tracing::warn!("the Docker engine did not give the containers' logs in time");
                sources.push(LogSource::empty(
                    CONTAINERS_SOURCE,
                    LogStatus::Unavailable,
                    Some(format!(
                        "the Docker engine did not give the containers' logs within {} s",
                        COLLECT_TIMEOUT.as_secs()
                    )),
                ));
                false
            }
        };
    let mut missing = Vec::new();
    for s in req.selectors() {
        let is_agent = s == AGENT_SOURCE;
        let found = sources.iter().any(|src| selector_matches(s, &src.name));
        if !found && (listed || is_agent) && !missing.iter().any(|m: &LogSource| m.name == s) {
            missing.push(LogSource::empty(
                s,
                LogStatus::NotFound,
                Some(format!(
                    "no container of a stack or service `{s}` on this device (`agent` is the agent's own log)"
                )),
            ));
        }
    }
    sources.extend(missing);
    LogTail {
        request_id: req.id,
        collected_ms: now_ms(),
        sources,
        truncated: false,
    }
    .bounded()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;
    use fleet_config::protocol::logs::{LogLine, LogStream};

    /// A runtime with two containers whose logs are known, or one that fails or hangs.
    enum Fake {
        Two,
        Fails,
        Hangs,
    }

    impl StackRuntime for Fake {
        async fn ensure_images(
            &self,
            _: &[fleet_config::compose::ImageRef],
        ) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn apply(
            &self,
            _: &crate::runtime::StackSpec<'_>,
        ) -> Result<crate::runtime::ApplyReport, RuntimeError> {
            Ok(Default::default())
        }
        async fn remove_stack(&self, _: &str) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn deployed_stacks(&self) -> Result<Vec<String>, RuntimeError> {
            Ok(Vec::new())
        }
        async fn watch_health(
            &self,
            _: &[crate::runtime::StackSpec<'_>],
            _: Duration,
        ) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn remove_images(&self, _: &[fleet_config::compose::ImageRef]) -> usize {
            0
        }
        async fn releases_in_use(&self) -> Result<Vec<String>, RuntimeError> {
            Ok(Vec::new())
        }
        async fn container_logs(
            &self,
            lines: u32,
            select: &dyn Fn(&str) -> bool,
        ) -> Result<Vec<LogSource>, RuntimeError> {
            match self {
                Fake::Two => Ok(["app/web", "safe-mode/sshd"]
                    .iter()
                    .filter(|n| select(n))
                    .map(|n| LogSource {
                        name: (*n).to_owned(),
                        container: Some(format!("c-{n}")),
                        status: LogStatus::Ok,
                        detail: None,
                        lines: (0..lines)
                            .map(|i| LogLine {
                                at_ms: Some(u64::from(i)),
                                stream: Some(LogStream::Stdout),
                                text: format!("{n} {i}"),
                            })
                            .collect(),
                        omitted: 0,
                    })
                    .collect()),
                Fake::Fails => Err(RuntimeError::unavailable("engine down")),
                Fake::Hangs => {
                    std::future::pending::<()>().await;
                    Ok(Vec::new())
                }
            }
        }
    }

    fn agent_lines(n: usize) -> (Vec<LogLine>, u64) {
        let lines = (0..n)
            .map(|i| LogLine {
                at_ms: Some(i as u64),
                stream: None,
                text: format!("agent {i}"),
            })
            .collect();
        (lines, 7)
    }

    fn req(lines: u32, services: &[&str]) -> LogRequest {
        LogRequest {
            id: 42,
            lines,
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn summary(t: &LogTail) -> Vec<(String, LogStatus, usize)> {
        t.sources
            .iter()
            .map(|s| (s.name.clone(), s.status, s.lines.len()))
            .collect()
    }

    #[tokio::test]
    async fn every_source_by_default_the_agent_first_with_the_lines_asked_for() {
        let t = collect(&req(3, &[]), &Fake::Two, agent_lines(10)).await;
        assert_eq!(t.request_id, 42);
        assert_eq!(
            summary(&t),
            [
                ("agent".to_owned(), LogStatus::Ok, 3),
                ("app/web".to_owned(), LogStatus::Ok, 3),
                ("safe-mode/sshd".to_owned(), LogStatus::Ok, 3)
            ]
        );
        let agent = &t.sources[0];
        assert_eq!(agent.lines[2].text, "agent 9", "the newest");
        assert_eq!(
            agent.omitted,
            7 + 7,
            "held beyond the ten, and cut from them"
        );
        assert!(t.collected_ms > 0);
    }

    #[tokio::test]
    async fn selectors_choose_sources_and_name_what_is_not_there() {
        let t = collect(&req(2, &["web", "nope"]), &Fake::Two, agent_lines(5)).await;
        assert_eq!(
            summary(&t),
            [
                ("app/web".to_owned(), LogStatus::Ok, 2),
                ("nope".to_owned(), LogStatus::NotFound, 0)
            ]
        );
        let t = collect(&req(2, &["agent", "safe-mode"]), &Fake::Two, agent_lines(0)).await;
        assert_eq!(
            summary(&t),
            [
                ("agent".to_owned(), LogStatus::NoLogs, 0),
                ("safe-mode/sshd".to_owned(), LogStatus::Ok, 2)
            ]
        );
    }

    #[tokio::test]
    async fn an_engine_that_fails_gives_a_source_saying_so_and_the_agent_still_answers() {
        let t = collect(&req(2, &[]), &Fake::Fails, agent_lines(5)).await;
        assert_eq!(
            summary(&t),
            [
                ("agent".to_owned(), LogStatus::Ok, 2),
                ("containers".to_owned(), LogStatus::Unavailable, 0)
            ]
        );
        let detail = t.sources[1].detail.as_deref().unwrap_or("");
        assert!(detail.contains("engine down"), "{detail}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_that_does_not_answer_is_left_after_the_time_bound() {
        let t = collect(&req(2, &["agent", "web"]), &Fake::Hangs, agent_lines(5)).await;
        assert_eq!(
            summary(&t),
            [
                ("agent".to_owned(), LogStatus::Ok, 2),
                ("containers".to_owned(), LogStatus::Unavailable, 0)
            ],
            "no `not_found` for `web`: the containers could not be listed"
        );
    }
}
