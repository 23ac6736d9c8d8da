//! The agent says it is alive, from its main loop: to systemd through `sd_notify` (`READY=1`
//! once recovered, `WATCHDOG=1` at half of `WATCHDOG_USEC`) and to the safe-mode watchdog
//! (`fleet-safe-mode`) through the heartbeat file ([`fleet_config::liveness::Heartbeat`]).
//!
//! Guarantees:
//! - Pings come only from the main loop's turns ([`Liveness::beat`], through
//!   [`crate::metrics::Metrics::loop_turn`]) and from the update transaction's phase changes
//!   ([`Liveness::phase`], through `Metrics::set_phase`). No timer pings on its own, so a hung
//!   loop goes quiet, and systemd (`WatchdogSec=`) and the watchdog both see it.
//! - A phase that may keep the loop away longer than one turn (pulling may take 30 minutes)
//!   announces its deadline ([`UpdatePhase::deadline`]): systemd's watchdog timeout is raised
//!   to it for that phase (`WATCHDOG_USEC=`) and the heartbeat's `due_ms` says so; once the
//!   phase is over or past its deadline the normal timeout is back. A transaction stuck past
//!   its phase's deadline goes quiet like a hung loop.
//! - Every start of the agent is recorded in the heartbeat at once (before recovery), so a
//!   crash loop is visible even when no life gets as far as its main loop.
//! - Nothing here can stop the agent: a heartbeat or notification that cannot be written is
//!   logged once and tried again at the next turn.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_config::liveness::{
    boot_clock_ms, boot_id, Heartbeat, WatchdogStatus, HEARTBEAT_FILE, MAX_STARTS,
    WATCHDOG_STATUS_FILE,
};
use fleet_config::protocol::UpdatePhase;

use crate::config::AgentConfig;

/// The heartbeat file is rewritten at most this often by the loop's turns (phase changes
/// write it at once). It is not fsynced: it describes this boot only.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// The longest one loop turn may take outside an update phase (a check-in, re-applying the
/// current release) when systemd sets no `WATCHDOG_USEC`; with it, `WATCHDOG_USEC` itself.
pub const DEFAULT_TURN_BOUND: Duration = Duration::from_secs(180);
/// Where the agent acknowledges the watchdog episodes it has reported, in its data directory.
pub const WATCHDOG_ACK_FILE: &str = "safe-mode-watchdog.ack";

/// The `sd_notify` datagram socket systemd names in `NOTIFY_SOCKET`.
struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    name: String,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), if set.
    fn from_env() -> Option<Notifier> {
        let name = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())?;
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())
            }
            None => SocketAddr::from_pathname(&name),
        };
        let made = addr.and_then(|addr| UnixDatagram::unbound().map(|s| (s, addr)));
        match made {
            Ok((socket, addr)) => Some(Notifier { socket, addr, name }),
            Err(e) => {
                tracing::error!(socket = %name, error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from the agent");
                None
            }
        }
    }

    fn send(&self, message: &str) -> std::io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(|_| ())
    }
}

/// systemd's watchdog timeout for this process: `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset
/// or names this process.
fn watchdog_from_env() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn micros(d: Duration) -> u128 {
    d.as_micros()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The agent's liveness signals; see the module docs.
pub struct Liveness {
    path: PathBuf,
    heartbeat: Heartbeat,
    notifier: Option<Notifier>,
    /// systemd's watchdog timeout, when it runs one for us.
    watchdog: Option<Duration>,
    turn_bound: Duration,
    health_window: Duration,
    /// Boot clock (ms) by which the current phase must be over, when it has a deadline.
    phase_due_ms: Option<u64>,
    /// systemd's timeout is raised for a phase.
    extended: bool,
    last_ping: Option<Instant>,
    last_write: Option<Instant>,
    /// A write or send failed and was logged; do not log every turn.
    failing: bool,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("path", &self.path)
            .field("notify_socket", &self.notifier.as_ref().map(|n| &n.name))
            .field("watchdog", &self.watchdog)
            .finish_non_exhaustive()
    }
}

impl Liveness {
    /// Records this start in the heartbeat (keeping this boot's earlier starts) and writes it.
    /// Call with the update lock held, so no other agent writes the same file.
    pub fn start(cfg: &AgentConfig) -> Liveness {
        let path = cfg.data_dir.join(HEARTBEAT_FILE);
        let boot = boot_id();
        let now = boot_clock_ms().unwrap_or(0);
        let earlier = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Heartbeat>(&b).ok())
            .filter(|h| h.boot_id == boot);
        let (seq, mut starts) = earlier.map(|h| (h.seq, h.starts_ms)).unwrap_or_default();
        starts.push(now);
        let excess = starts.len().saturating_sub(MAX_STARTS);
        starts.drain(..excess);
        let watchdog = watchdog_from_env();
        let turn_bound = watchdog.unwrap_or(DEFAULT_TURN_BOUND);
        let mut l = Liveness {
            path,
            heartbeat: Heartbeat {
                pid: std::process::id(),
                boot_id: boot,
                seq,
                at_ms: now,
                due_ms: now,
                phase: UpdatePhase::Idle,
                starts_ms: starts,
                namespace: cfg.docker_namespace.clone(),
                safe_mode_compose: cfg.safe_mode_compose.clone(),
                secrets_dir: cfg.secrets_dir.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            notifier: Notifier::from_env(),
            watchdog,
            turn_bound,
            health_window: cfg.health_window,
            phase_due_ms: None,
            extended: false,
            last_ping: None,
            last_write: None,
            failing: false,
        };
        tracing::info!(
            heartbeat = %l.path.display(),
            notify_socket = l.notifier.as_ref().map(|n| n.name.as_str()),
            watchdog_ms = l.watchdog.map(millis),
            starts_this_boot = l.heartbeat.starts_ms.len(),
            "liveness: recording this start"
        );
        l.write();
        l
    }

    /// Start-up is over (recovered, about to enter the main loop): `READY=1`.
    pub fn ready(&mut self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
        self.beat();
    }

    /// The agent is stopping on purpose: `STOPPING=1`.
    pub fn stopping(&mut self) {
        self.notify("STOPPING=1");
    }

    /// One turn of the main loop: pings systemd's watchdog when half its timeout has passed,
    /// rewrites the heartbeat every [`HEARTBEAT_EVERY`].
    pub fn beat(&mut self) {
        let now_ms = boot_clock_ms().unwrap_or(0);
        if self.phase_due_ms.is_some_and(|due| now_ms >= due) {
            // The phase outlived its deadline: no more allowance.
            self.phase_due_ms = None;
        }
        if let Some(timeout) = self.watchdog {
            let due = self.last_ping.is_none_or(|t| t.elapsed() >= timeout / 2);
            if self.extended && self.phase_due_ms.is_none() {
                self.extended = false;
                self.notify(&format!("WATCHDOG_USEC={}\nWATCHDOG=1", micros(timeout)));
                self.last_ping = Some(Instant::now());
            } else if due {
                self.notify("WATCHDOG=1");
                self.last_ping = Some(Instant::now());
            }
        }
        if self
            .last_write
            .is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY)
        {
            self.write();
        }
    }

    /// The update transaction entered `phase`. A phase with a deadline extends the time the
    /// agent may stay quiet to that deadline; one without ends the extension.
    pub fn phase(&mut self, phase: UpdatePhase) {
        if phase == self.heartbeat.phase && self.last_write.is_some() {
            return;
        }
        self.heartbeat.phase = phase;
        let now_ms = boot_clock_ms().unwrap_or(0);
        match phase.deadline(self.health_window) {
            Some(deadline) => {
                let allowance = deadline + self.turn_bound;
                self.phase_due_ms = Some(now_ms.saturating_add(millis(allowance)));
                if self.watchdog.is_some() {
                    self.extended = true;
                    self.notify(&format!("WATCHDOG_USEC={}\nWATCHDOG=1", micros(allowance)));
                    self.last_ping = Some(Instant::now());
                }
            }
            None => {
                self.phase_due_ms = None;
                if let (true, Some(timeout)) = (self.extended, self.watchdog) {
                    self.extended = false;
                    self.notify(&format!("WATCHDOG_USEC={}\nWATCHDOG=1", micros(timeout)));
                    self.last_ping = Some(Instant::now());
                }
            }
        }
        self.write();
    }

    fn notify(&mut self, message: &str) {
        let Some(n) = &self.notifier else {
            return;
        };
        match n.send(message) {
            Ok(()) => tracing::debug!(message, "sd_notify"),
            Err(e) => {
                if !self.failing {
                    tracing::warn!(socket = %n.name, error = %e, "cannot notify systemd");
                }
                self.failing = true;
            }
        }
    }

    fn write(&mut self) {
        let Some(now_ms) = boot_clock_ms() else {
            return;
        };
        self.heartbeat.seq += 1;
        self.heartbeat.at_ms = now_ms;
        self.heartbeat.due_ms = now_ms
            .saturating_add(millis(self.turn_bound))
            .max(self.phase_due_ms.unwrap_or(0));
        self.last_write = Some(Instant::now());
        let bytes = match serde_json::to_vec_pretty(&self.heartbeat) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the heartbeat");
                return;
            }
        };
        match crate::fsutil::write_replace(&self.path, &bytes) {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write the heartbeat");
                }
                self.failing = true;
            }
        }
    }
}

/// A safe-mode episode the watchdog started while the agent was down, not reported yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogEpisode {
    /// The watchdog's episode number.
    pub episode: u64,
    /// Why it acted.
    pub reason: String,
}

/// The watchdog's latest episode, if the agent has not reported it yet.
pub fn unreported_watchdog_episode(data_dir: &Path) -> Option<WatchdogEpisode> {
    let status: WatchdogStatus = std::fs::read(data_dir.join(WATCHDOG_STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())?;
    let acked: u64 = std::fs::read_to_string(data_dir.join(WATCHDOG_ACK_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    (status.episode > acked).then(|| WatchdogEpisode {
        episode: status.episode,
        reason: status
            .reason
            .unwrap_or_else(|| "no reason recorded".to_owned()),
    })
}

/// Records that `episode` was reported, so the next start does not report it again.
pub fn acknowledge_watchdog_episode(
    data_dir: &Path,
    episode: u64,
) -> Result<(), crate::fsutil::FsError> {
    crate::fsutil::write_atomic(
        &data_dir.join(WATCHDOG_ACK_FILE),
        format!("{episode}\n").as_bytes(),
    )
}
