//! The controller-mode loop: enroll if needed, then check in every interval (±10% jitter),
//! drop the events the controller stored, and carry out what [`decide`] says.
//!
//! Guarantees:
//! - The device keeps running what it has whenever the controller is unreachable, answers an
//!   error or refuses the token; requests are retried with exponential backoff and full jitter
//!   (1 s doubling to 5 min), and a recurring failure is logged once per kind and then every
//!   5 minutes, not on every retry.
//! - The release only changes through the update transaction ([`Updater::prepare`], then
//!   [`Updater::commit`]) with the controller's digest, or by the operator (`fleet-agent
//!   rollback`, safe mode); never by following the branch.
//! - After any action the agent checks in again at once, so the controller learns the result
//!   without waiting an interval; after an answer that asks for its logs too, with the tail
//!   (the agent's own lines and its containers', see [`crate::logs`]), so an operator waits
//!   seconds, not an interval.
//! - Before the swap the agent checks in once more and abandons the update if the controller no
//!   longer asks for it (emergency stop, halt, a newer release): stop and halt act before the
//!   swap, never in the middle of it.
//! - Shutdown interrupts waiting and requests, and stops an update at that last check-in before
//!   the swap; it never interrupts a swap or a health window in progress.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::{self, Backoff, Rng};
use super::checkin::{build_request, telemetry, CpuSampler, MAX_EVENTS_PER_CHECKIN};
use super::client::{Client, ControllerError};
use super::decide::{decide, may_swap, Action, Local, SafeMode, Stay};
use super::enroll::{read_token, EnrollError, Enroller, CLAIM_INTERVAL};
use super::report::CheckinStatus;
use crate::config::ControllerConfig;
use crate::fsutil::remove_file;
use crate::host::HostStats;
use crate::journal::{now_ms, Journal};
use crate::runtime::StackRuntime;
use crate::update::{AgentError, Prepare, Updater, REQUEST_CHECK};
use fleet_config::protocol::{CheckinResponse, LogRequest, LogTail, ReleaseId, Tolerant};

/// Interval until the controller names one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Bounds on the interval the controller names.
pub const INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// `current` is re-applied (supervised) at most this often, however often the agent checks in.
pub const SUPERVISE_EVERY: Duration = Duration::from_secs(30);
/// A recurring failure of the same kind is logged again after this long.
pub const LOG_EVERY: Duration = Duration::from_secs(5 * 60);
/// A problem raised or cleared is reported at once (the alert engine's detection time), not at
/// the next check-in; at most once per this long, so a flapping one cannot flood the
/// controller. A held long poll is cut for it too, once it was held this long.
pub const PROMPT_REPORT_EVERY: Duration = Duration::from_secs(5);
/// A long poll is held at least this long before a problem cuts it: by then the controller
/// has stored the check-in it holds.
pub const HELD_BEFORE_CUT: Duration = Duration::from_secs(1);
/// Next check-in after one that sent a full batch of events: the rest of the buffer follows
/// soon, not an interval later.
pub const DRAIN_DELAY: Duration = Duration::from_secs(2);
/// The journal's safe-mode reason when an operator asked for it; any other reason is the
/// agent's own.
pub const OPERATOR_SAFE_MODE: &str = "requested by an operator (fleetctl safe-mode DEVICE on)";

/// Why the device is in safe mode, from the journal.
pub fn safe_mode_of(journal: &Journal) -> SafeMode {
    match journal.safe_mode.as_deref() {
        None if journal.phase != fleet_config::protocol::UpdatePhase::SafeMode => SafeMode::Off,
        Some(OPERATOR_SAFE_MODE) => SafeMode::Operator,
        _ => SafeMode::Automatic,
    }
}

/// Logs a recurring failure once per kind and then every [`LOG_EVERY`], not on every retry.
#[derive(Debug, Default)]
pub struct FailureLog {
    kind: Option<&'static str>,
    logged_at: Option<Instant>,
    count: u64,
}

impl FailureLog {
    /// Counts a failure of `kind` at `now`; true when it should be logged.
    pub fn failed(&mut self, kind: &'static str, now: Instant) -> bool {
        self.count += 1;
        let due = self.kind != Some(kind)
            || self
                .logged_at
                .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        if due {
            self.kind = Some(kind);
            self.logged_at = Some(now);
        }
        due
    }

    /// A success: returns how many failures came before it, and starts over.
    pub fn recovered(&mut self) -> u64 {
        std::mem::take(self).count
    }
}

/// The outcome of one check-in request.
enum Exchange {
    /// The controller answered; `usize` events were sent.
    Answer(CheckinResponse, usize),
    /// It failed; retry after this long.
    Failed(Duration),
    /// Shutdown interrupted it.
    Shutdown,
    /// A held long poll was cut to report a problem at once: check in again now.
    Cut,
}

/// What the device runs, read for a decision.
struct Seen {
    current: Option<ReleaseId>,
    previous: Option<ReleaseId>,
    safe_mode: SafeMode,
    bad: Vec<ReleaseId>,
}

impl Seen {
    fn read<R: StackRuntime>(u: &Updater<R>) -> Seen {
        Seen {
            current: u.data().current().release().cloned(),
            previous: u.data().previous().release().cloned(),
            safe_mode: safe_mode_of(u.journal()),
            bad: u
                .journal()
                .bad_releases
                .iter()
                .map(|b| b.release.clone())
                .collect(),
        }
    }

    fn local<'a>(&'a self, just_attempted: Option<&'a ReleaseId>) -> Local<'a> {
        Local {
            current: self.current.as_ref(),
            previous: self.previous.as_ref(),
            safe_mode: self.safe_mode,
            bad: &self.bad,
            just_attempted,
        }
    }
}

/// Why a request failed, in the loop's terms.
enum Failure<'a> {
    Controller(&'a ControllerError),
    Enroll(&'a EnrollError),
    Token(&'a std::io::Error),
}

struct ControllerLoop {
    cfg: ControllerConfig,
    device_id: String,
    client: Client,
    token: Option<String>,
    enroller: Enroller,
    backoff: Backoff,
    rng: Rng,
    failures: FailureLog,
    cpu: CpuSampler,
    /// Events per check-in; halved after a 413.
    batch: usize,
    interval: Duration,
    last_supervise: Option<Instant>,
    /// The release the last action tried, until a check-in reported its result.
    just_attempted: Option<ReleaseId>,
    last_action: Option<Action>,
    status: CheckinStatus,
    saved_status: Option<CheckinStatus>,
    /// When a problem last made the agent report early (see [`PROMPT_REPORT_EVERY`]).
    last_prompt: Option<Instant>,
    /// The last check-in went through (no backoff pending): a problem may bring the next one
    /// forward.
    reachable: bool,
    /// A log tail collected for the controller, to go with the next check-in.
    tail: Option<LogTail>,
    /// The id of the last log request whose tail the controller received.
    answered: Option<u64>,
}

impl ControllerLoop {
    /// The earliest a problem may bring a report forward to.
    fn prompt_at(&self, now: Instant) -> Instant {
        self.last_prompt
            .map_or(now, |t| (t + PROMPT_REPORT_EVERY).max(now))
    }
}

/// Runs controller mode until `shutdown`. Errors only when the HTTP client cannot be set up;
/// everything else is retried.
pub async fn run<R: StackRuntime>(
    updater: &mut Updater<R>,
    cfg: ControllerConfig,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let client = Client::new(&cfg.url, cfg.request_timeout, cfg.ca_file.as_deref())?;
    let device_id = updater.config().device_id.clone();
    let data = updater.data().clone();
    let mut l = ControllerLoop {
        enroller: Enroller::new(&cfg, &device_id, &data),
        status: CheckinStatus {
            url: cfg.url.clone(),
            ..CheckinStatus::load(&data.checkin_status()).unwrap_or_default()
        },
        cfg,
        device_id,
        client,
        token: None,
        backoff: Backoff::new(backoff::BASE, backoff::CAP, Rng::from_entropy()),
        rng: Rng::from_entropy(),
        failures: FailureLog::default(),
        cpu: CpuSampler::default(),
        batch: MAX_EVENTS_PER_CHECKIN,
        interval: DEFAULT_INTERVAL,
        last_supervise: None,
        just_attempted: None,
        last_action: None,
        saved_status: None,
        last_prompt: None,
        reachable: false,
        tail: None,
        answered: None,
    };
    let problems = updater.problems().clone();
    tracing::info!(controller = %l.cfg.url, "controller mode: the device runs only the releases the controller names");
    let mut next = Instant::now();
    loop {
        updater.metrics().loop_turn();
        if updater.handle_rollback_request().await.is_some() {
            next = Instant::now();
        }
        updater.watch_turn().await;
        if Instant::now() >= next {
            // Credentials fixed or rotated take effect; problems met since go out with this
            // check-in.
            updater.refresh_endpoints();
            let wait = l.tick(updater, &shutdown).await;
            l.save_status(&data);
            next = Instant::now() + wait;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(REQUEST_CHECK.min(next.saturating_duration_since(Instant::now()))) => {}
            // A problem raised or cleared goes to the controller now, not at the next check-in
            // (a minute away): the alert engine's detection time. Not while backing off from a
            // controller that does not answer.
            _ = problems.event_queued() => {
                updater.flush_problem_events();
                if l.reachable {
                    let at = l.prompt_at(Instant::now());
                    if at < next {
                        next = at;
                        l.last_prompt = Some(at);
                    }
                }
            }
        }
    }
    tracing::info!("controller loop stopped");
    Ok(())
}

impl ControllerLoop {
    /// One step: enroll, or check in and act. Returns how long to wait before the next.
    async fn tick<R: StackRuntime>(
        &mut self,
        u: &mut Updater<R>,
        shutdown: &CancellationToken,
    ) -> Duration {
        // Keep `current` running whatever the controller does, also while enrolling.
        if self
            .last_supervise
            .is_none_or(|t| t.elapsed() >= SUPERVISE_EVERY)
        {
            u.supervise().await;
            self.last_supervise = Some(Instant::now());
        }
        if self.token.is_none() {
            match read_token(&self.cfg.token_file) {
                Ok(Some(t)) => {
                    self.token = Some(t);
                    if let Err(e) = remove_file(&u.data().pairing_code()) {
                        tracing::debug!(error = %e, "cannot remove a stale pairing code");
                    }
                }
                Ok(None) => {}
                Err(e) => return self.failed(u, "reading the device token", Failure::Token(&e)),
            }
        }
        match self.token.clone() {
            None => self.enroll(u, shutdown).await,
            Some(token) => self.check_in(u, &token, shutdown).await,
        }
    }

    async fn enroll<R: StackRuntime>(
        &mut self,
        u: &mut Updater<R>,
        shutdown: &CancellationToken,
    ) -> Duration {
        let step = tokio::select! {
            s = self.enroller.step(&self.client) => s,
            _ = shutdown.cancelled() => return Duration::ZERO,
        };
        match step {
            Ok(Some(token)) => {
                self.token = Some(token);
                self.succeeded();
                Duration::ZERO
            }
            Ok(None) => {
                self.succeeded();
                backoff::jitter(CLAIM_INTERVAL, backoff::INTERVAL_JITTER, &mut self.rng)
            }
            Err(e) => self.failed(u, "enrollment", Failure::Enroll(&e)),
        }
    }

    async fn check_in<R: StackRuntime>(
        &mut self,
        u: &mut Updater<R>,
        token: &str,
        shutdown: &CancellationToken,
    ) -> Duration {
        let (resp, sent) = match self.exchange(u, token, shutdown).await {
            Exchange::Answer(resp, sent) => (resp, sent),
            Exchange::Failed(wait) => return wait,
            Exchange::Shutdown | Exchange::Cut => return Duration::ZERO,
        };
        if let Some(request) = &resp.logs {
            self.collect_logs(u, request, shutdown).await;
        }
        let seen = Seen::read(u);
        let just_attempted = self.just_attempted.take();
        let action = decide(&resp, &seen.local(just_attempted.as_ref()));
        self.status.last_decision = Some(action.to_string());
        let wait = self.act(u, action, seen.current, token, shutdown).await;
        if self.tail.is_some() {
            // The operator who asked for the logs is waiting for them.
            Duration::ZERO
        } else if sent >= self.batch && wait > DRAIN_DELAY {
            DRAIN_DELAY
        } else {
            wait
        }
    }

    /// Reads the tail `request` asks for (unless it was answered already, or is read and
    /// waiting to go), for the next check-in.
    async fn collect_logs<R: StackRuntime>(
        &mut self,
        u: &Updater<R>,
        request: &LogRequest,
        shutdown: &CancellationToken,
    ) {
        let waiting = self.tail.as_ref().map(|t| t.request_id);
        if self.answered == Some(request.id) || waiting == Some(request.id) {
            return;
        }
        tracing::info!(
            request = request.id,
            lines = request.lines(),
            services = ?request.services,
            "the controller asks for the device's logs"
        );
        let agent = crate::logs::ring::tail(request.lines() as usize);
        let tail = tokio::select! {
            t = crate::logs::collect(request, u.runtime(), agent) => t,
            _ = shutdown.cancelled() => return,
        };
        self.tail = Some(tail);
    }

    /// Sends a check-in with the device's state and buffered events; on an answer, drops the
    /// events the controller stored and takes its interval.
    async fn exchange<R: StackRuntime>(
        &mut self,
        u: &mut Updater<R>,
        token: &str,
        shutdown: &CancellationToken,
    ) -> Exchange {
        let events = match u.events().map(|log| log.pending(self.batch)) {
            Some(Ok(events)) => events,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the buffered events; checking in without them");
                Vec::new()
            }
            None => Vec::new(),
        };
        let sent = events.len();
        let host = HostStats::read(u.data().root());
        let cpu = self.cpu.sample(host.cpu_ticks);
        let mut req = build_request(
            &self.device_id,
            u.data(),
            u.journal(),
            u.supervise_problem().is_some(),
            telemetry(&host, cpu),
            events,
        );
        // A long poll: the controller answers as soon as it has something new for this
        // device (a new release reaches it in seconds), else after this long.
        req.long_poll_secs = self.cfg.long_poll.as_secs();
        // A log tail the controller asked for goes now; it stays for the next try if this
        // one fails.
        req.logs = self.tail.take().map(Tolerant::Read);
        // While the request is out (up to `request_timeout` on a dead link), what the
        // watchers raise or clear still goes to the buffer on disk as it happens: a power cut
        // during a hanging check-in does not take those events with it. They follow with the
        // next check-in.
        let problems = u.problems().clone();
        let held = req.long_poll_secs > 0;
        let sent_at = Instant::now();
        let mut cut_at: Option<Instant> = None;
        let answer = {
            let checkin = self.client.checkin(token, &req);
            tokio::pin!(checkin);
            loop {
                let cut = async {
                    match cut_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    a = &mut checkin => break a,
                    _ = shutdown.cancelled() => return Exchange::Shutdown,
                    _ = problems.event_queued() => {
                        u.flush_problem_events();
                        // A held long poll would keep the problem until it is answered (up to
                        // `long_poll`): cut it and report now. The controller stored the held
                        // check-in on arrival; its events come again and are stored once.
                        if held && cut_at.is_none() {
                            cut_at = Some(self.prompt_at(sent_at + HELD_BEFORE_CUT));
                        }
                    }
                    _ = cut => {
                        self.last_prompt = cut_at;
                        tracing::debug!("long poll cut short to report a problem at once");
                        return Exchange::Cut;
                    }
                }
            }
        };
        let sent_tail = req.logs.take().and_then(|t| t.read().ok());
        let resp = match answer {
            Ok(resp) => resp,
            Err(e) => {
                self.tail = sent_tail;
                match &e {
                    // Read the token file again before the next try: an operator may have
                    // replaced it, or deleted it to enroll again.
                    ControllerError::Unauthorized { .. } => self.token = None,
                    ControllerError::Rejected { status: 413, .. } if self.batch > 1 => {
                        self.batch /= 2;
                        tracing::warn!(
                            batch = self.batch,
                            "check-in too large; sending fewer events at a time"
                        );
                    }
                    _ => {}
                }
                return Exchange::Failed(self.failed(u, "check-in", Failure::Controller(&e)));
            }
        };
        self.succeeded();
        if let Some(t) = sent_tail {
            tracing::info!(
                request = t.request_id,
                bytes = t.cost(),
                "sent the device's logs to the controller"
            );
            self.answered = Some(t.request_id);
        }
        if let Some(server) = self.client.last_date() {
            u.watchers()
                .observe_controller_clock(server, std::time::SystemTime::now());
        }
        let now = now_ms();
        u.metrics().set_last_checkin_ms(now);
        self.status.succeeded(now);
        if sent > 0 {
            u.ack_events(resp.acked_seq);
        }
        let (min, max) = INTERVAL_RANGE;
        self.interval = Duration::from_secs(resp.next_checkin_secs).clamp(min, max);
        Exchange::Answer(resp, sent)
    }

    /// Carries out `action`; returns the wait before the next check-in.
    async fn act<R: StackRuntime>(
        &mut self,
        u: &mut Updater<R>,
        action: Action,
        current: Option<ReleaseId>,
        token: &str,
        shutdown: &CancellationToken,
    ) -> Duration {
        let changed = self.last_action.as_ref() != Some(&action);
        self.last_action = Some(action.clone());
        match action {
            Action::Stay(stay) => {
                if changed {
                    match &stay {
                        Stay::MarkedBad(_) => tracing::warn!("{}", Action::Stay(stay.clone())),
                        Stay::JustAttempted(_) => {}
                        _ => tracing::info!("{}", Action::Stay(stay.clone())),
                    }
                }
                backoff::jitter(self.interval, backoff::INTERVAL_JITTER, &mut self.rng)
            }
            Action::Update { release, digest } => {
                if current.as_ref() == Some(&release) && u.in_crash_loop_safe_mode() {
                    // Re-applying it would only loop again: another release, or an operator
                    // (safe mode on, then off), takes the device out.
                    self.status.last_decision = Some(format!(
                        "in safe mode after a crash loop of {}: waiting for another release or an operator",
                        release.short()
                    ));
                    return backoff::jitter(self.interval, backoff::INTERVAL_JITTER, &mut self.rng);
                }
                if let Some(why) = u.watchers().hold_logged(&release) {
                    // Heat, power or disk: asked again at the next check-in.
                    self.status.last_decision = Some(why);
                    return backoff::jitter(self.interval, backoff::INTERVAL_JITTER, &mut self.rng);
                }
                tracing::info!(release = %release.short(), "updating to the release the controller names");
                // SIGTERM during the fetch or staging: stop at once. Nothing running was
                // touched yet; the next start's recovery finds the interrupted update as it
                // would after a power cut and leaves the device on its release. A download
                // over a slow link may take longer than the controller waits before it calls a
                // device offline: the device keeps checking in meanwhile (its phase, no events).
                let data = u.data().clone();
                let metrics = u.metrics().clone();
                let prepared = {
                    let prepare = u.prepare(&release, Some(digest));
                    tokio::pin!(prepare);
                    let period = self.interval;
                    let mut beat = tokio::time::interval_at(Instant::now() + period, period);
                    loop {
                        tokio::select! {
                            p = &mut prepare => break p,
                            _ = shutdown.cancelled() => {
                                tracing::warn!(release = %release.short(), "stopping during the update's fetch or staging; the device stays on its release");
                                return Duration::ZERO;
                            }
                            _ = beat.tick() => self.heartbeat(&data, &metrics, token, shutdown).await,
                        }
                    }
                };
                let result = match prepared {
                    Prepare::Done(result) => result,
                    Prepare::Ready(prepared) => {
                        let watch = u.watchers().clone();
                        let gate = match watch.before_swap().await {
                            Ok(()) => self.gate(u, &release, token, shutdown).await,
                            Err(why) => Err(why),
                        };
                        match gate {
                            Ok(()) => u.commit(prepared).await,
                            Err(why) => u.abandon(prepared, why),
                        }
                    }
                };
                tracing::info!(result = ?result, "update finished");
                self.just_attempted = Some(release);
                Duration::ZERO
            }
            Action::EnterSafeMode => {
                u.enter_safe_mode(OPERATOR_SAFE_MODE).await;
                Duration::ZERO
            }
            Action::LeaveSafeMode => {
                let result = u.reapply_current().await;
                tracing::info!(result = ?result, "leaving safe mode finished");
                self.just_attempted = current;
                Duration::ZERO
            }
        }
    }

    /// A check-in while an update downloads: the device's state read from disk (the journal is
    /// written at every phase), no events (the updater owns their buffer; they go with the
    /// next full check-in) and no long poll. The answer is not acted on here: a stop or another
    /// release is obeyed at the check-in before the swap.
    async fn heartbeat(
        &mut self,
        data: &crate::layout::DataDir,
        metrics: &crate::metrics::Metrics,
        token: &str,
        shutdown: &CancellationToken,
    ) {
        let journal = match Journal::load(&data.journal()) {
            Ok(Some(j)) => j,
            Ok(None) | Err(_) => return,
        };
        let host = HostStats::read(data.root());
        let cpu = self.cpu.sample(host.cpu_ticks);
        let req = build_request(
            &self.device_id,
            data,
            &journal,
            false,
            telemetry(&host, cpu),
            Vec::new(),
        );
        let answer = tokio::select! {
            a = self.client.checkin(token, &req) => a,
            _ = shutdown.cancelled() => return,
        };
        match answer {
            Ok(_) => {
                self.succeeded();
                let now = now_ms();
                metrics.set_last_checkin_ms(now);
                self.status.succeeded(now);
                tracing::debug!(phase = ?journal.phase, "checked in during the update's download");
            }
            Err(e) => {
                metrics.count_checkin_failure(e.kind());
                tracing::debug!(error = %e, "check-in during the update's download failed");
            }
        }
    }

    /// Asks the controller once more just before the swap (DESIGN.md: stop and halt act before
    /// the swap). An unreachable controller does not hold the update back: the device was told
    /// to go, and a stop it cannot hear it cannot obey.
    async fn gate<R: StackRuntime>(
        &mut self,
        u: &mut Updater<R>,
        release: &ReleaseId,
        token: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let resp = loop {
            match self.exchange(u, token, shutdown).await {
                Exchange::Answer(resp, _) => break resp,
                Exchange::Failed(_) => {
                    tracing::warn!(release = %release.short(), "cannot ask the controller before the swap; going ahead as it last said");
                    return Ok(());
                }
                Exchange::Shutdown => return Err("the agent is stopping".into()),
                // Cut to report a problem: ask again (not cut again for a while).
                Exchange::Cut => {}
            }
        };
        let seen = Seen::read(u);
        may_swap(&resp, &seen.local(None), release).map_err(|now| {
            self.status.last_decision = Some(now.to_string());
            format!("stopped before the swap: the controller now says: {now}")
        })
    }

    fn succeeded(&mut self) {
        self.reachable = true;
        self.backoff.reset();
        let failures = self.failures.recovered();
        if failures > 0 {
            tracing::info!(failures, "the controller answers again");
        }
    }

    /// Counts, records and (not too often) logs a failure; returns the wait before retrying.
    fn failed<R: StackRuntime>(
        &mut self,
        u: &Updater<R>,
        what: &'static str,
        failure: Failure<'_>,
    ) -> Duration {
        self.reachable = false;
        let controller = match &failure {
            Failure::Controller(e) => Some(*e),
            Failure::Enroll(e) => e.controller(),
            Failure::Token(_) => None,
        };
        let kind = match (&failure, controller) {
            (_, Some(e)) => e.kind(),
            (Failure::Token(_), None) => "token_file",
            (_, None) => "local",
        };
        if let Some(e) = controller {
            u.metrics().count_checkin_failure(e.kind());
        }
        let wait = match controller {
            Some(ControllerError::RateLimited { retry_after, .. }) => {
                // As the controller asks, plus up to 10% so the limited devices spread out.
                retry_after.mul_f64(1.0 + backoff::INTERVAL_JITTER * self.rng.unit())
            }
            _ => self.backoff.next_delay(),
        };
        let message = match &failure {
            Failure::Controller(e) => e.to_string(),
            Failure::Enroll(e) => e.to_string(),
            Failure::Token(e) => format!(
                "cannot read the device token {}: {e}",
                self.cfg.token_file.display()
            ),
        };
        self.status.failed(now_ms(), message.clone());
        if !self.failures.failed(kind, Instant::now()) {
            tracing::debug!(what, error = %message, retry_in_ms = wait.as_millis() as u64, "still failing");
            return wait;
        }
        let retry_in_s = wait.as_secs();
        let token_file = self.cfg.token_file.display();
        match (controller, what) {
            (Some(ControllerError::Unauthorized { .. }), "check-in") => tracing::error!(
                error = %message, retry_in_s,
                "the controller refused the device token: it was revoked or is wrong. The device keeps its release; put a valid token in {token_file}, or delete that file to enroll again"
            ),
            (Some(ControllerError::Unauthorized { .. }), _) => tracing::error!(
                error = %message, retry_in_s,
                "the controller refused the bootstrap token; fix the `bootstrap_token_file`, or remove that key to enroll with a pairing code"
            ),
            (Some(ControllerError::Forbidden { .. }), _) => tracing::error!(
                error = %message, retry_in_s,
                "the device token belongs to another device: check `device_id` and {token_file}"
            ),
            (None, _) => tracing::error!(error = %message, retry_in_s, "{what} failed"),
            (Some(_), _) => tracing::warn!(
                error = %message, retry_in_s,
                "{what} failed; the device keeps its release and retries"
            ),
        }
        wait
    }

    /// Writes `checkin.json` when it changed.
    fn save_status(&mut self, data: &crate::layout::DataDir) {
        if self.saved_status.as_ref() == Some(&self.status) {
            return;
        }
        match self.status.save(&data.checkin_status()) {
            Ok(()) => self.saved_status = Some(self.status.clone()),
            Err(e) => tracing::debug!(error = %e, "cannot write the check-in status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, NoRuntime};
    use fleet_config::protocol::EventKind;

    /// Runs the loop against the configured (unreachable) controller for `ms`.
    async fn run_for(u: &mut Updater<NoRuntime>, ms: u64) {
        let ctl = u.config().controller.clone().expect("controller mode");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            stop.cancel();
        });
        let started = Instant::now();
        run(u, ctl, shutdown).await.expect("runs until shutdown");
        assert!(
            started.elapsed() < Duration::from_millis(ms + 1500),
            "stops promptly"
        );
    }

    #[tokio::test]
    async fn an_unreachable_controller_is_retried_reported_and_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mut u =
            Updater::open(config(&data, true), NoRuntime, Default::default()).expect("open");
        u.record(EventKind::AgentStarted {
            version: "test".into(),
        });
        u.recover().await.expect("recover");
        // No token: enrollment is tried and fails.
        run_for(&mut u, 1200).await;
        let status = CheckinStatus::load(&data.join("checkin.json")).expect("status written");
        assert_eq!(status.url, "http://127.0.0.1:1");
        let error = status.last_error.clone().expect("an error");
        assert!(
            error
                .starts_with("enrollment: controller http://127.0.0.1:1/api/v1/enroll unreachable"),
            "{error}"
        );
        assert!(status.consecutive_failures >= 1);
        assert_eq!(status.last_checkin_ms, None);
        assert!(!data.join("token").exists());
        assert!(!u.data().pairing_code().exists());
        // With a token: check-ins are tried and fail; the events stay buffered.
        std::fs::write(data.join("token"), "f00d\n").expect("token");
        run_for(&mut u, 1200).await;
        let status = CheckinStatus::load(&data.join("checkin.json")).expect("status written");
        let error = status.last_error.clone().expect("an error");
        assert!(
            error.starts_with("controller http://127.0.0.1:1/api/v1/checkin unreachable"),
            "{error}"
        );
        let text = u.metrics().render(&HostStats::default());
        let failures: u64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("fleet_agent_checkin_failures_total{reason=\"unreachable\"} ")
            })
            .and_then(|n| n.parse().ok())
            .expect("counted");
        assert!(failures >= 2, "{text}");
        let pending = u.events().expect("events").pending(10).expect("pending");
        assert!(
            matches!(pending[0].kind, EventKind::AgentStarted { .. }),
            "{pending:?}"
        );
        assert_eq!(u.journal().phase, fleet_config::protocol::UpdatePhase::Idle);
    }

    #[test]
    fn safe_mode_owner_comes_from_the_journal_reason() {
        let mut j = Journal::idle(None);
        assert_eq!(safe_mode_of(&j), SafeMode::Off);
        j.safe_mode = Some(OPERATOR_SAFE_MODE.into());
        j.phase = fleet_config::protocol::UpdatePhase::SafeMode;
        assert_eq!(safe_mode_of(&j), SafeMode::Operator);
        j.safe_mode = Some("rollback failed".into());
        assert_eq!(safe_mode_of(&j), SafeMode::Automatic);
        j.safe_mode = None;
        assert_eq!(safe_mode_of(&j), SafeMode::Automatic, "phase alone says so");
    }

    #[test]
    fn a_recurring_failure_is_logged_once_per_kind_and_then_every_five_minutes() {
        let t0 = Instant::now();
        let mut log = FailureLog::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(log.failed("unreachable", at(0)), "first failure");
        assert!(!log.failed("unreachable", at(1)));
        assert!(!log.failed("unreachable", at(299)));
        assert!(log.failed("server", at(300)), "another kind");
        assert!(!log.failed("server", at(301)));
        assert!(log.failed("server", at(600)), "five minutes later");
        assert_eq!(log.recovered(), 6);
        assert_eq!(log.recovered(), 0);
        assert!(
            log.failed("server", at(601)),
            "after a success, logged again"
        );
    }
}
