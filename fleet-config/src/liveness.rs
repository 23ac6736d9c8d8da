//! The agent's liveness as the safe-mode watchdog (`fleet-safe-mode`) sees it, shared so the
//! two cannot drift apart: the heartbeat file the agent's main loop writes, the status file the
//! watchdog writes for the agent to report, and the clock both measure time with.
//!
//! **The clock.** Every time in these files is the *boot clock*: milliseconds since the device
//! booted (`/proc/uptime`, CLOCK_BOOTTIME), the same for every process and immune to the wall
//! clock jumping when NTP first answers on a board without a real-time clock. A file written
//! before a reboot carries another `boot_id` and its times mean nothing.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::UpdatePhase;

/// The heartbeat, in the agent's data directory.
pub const HEARTBEAT_FILE: &str = "heartbeat.json";
/// The watchdog's status, in the agent's data directory.
pub const WATCHDOG_STATUS_FILE: &str = "safe-mode-watchdog.json";
/// The agent's lock file, in its data directory: held (flock) for the agent's whole life.
pub const AGENT_LOCK_FILE: &str = "update.lock";
/// At most this many starts are kept in the heartbeat (more than any crash-loop window needs).
pub const MAX_STARTS: usize = 32;

/// What the agent's main loop writes every few seconds (and at every update phase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent's process id.
    pub pid: u32,
    /// The kernel's boot id when it was written; times are only comparable within one boot.
    pub boot_id: String,
    /// Bumped on every write.
    pub seq: u64,
    /// Boot clock (ms) of this write.
    pub at_ms: u64,
    /// Boot clock (ms) by which the next write is due at the latest: a loop turn's bound, or,
    /// while an update phase runs, that phase's deadline. Past it the agent is hung.
    pub due_ms: u64,
    /// The update phase when it was written.
    pub phase: UpdatePhase,
    /// Boot clock (ms) of this boot's recent agent starts, oldest first, at most
    /// [`MAX_STARTS`]: the crash-loop evidence.
    pub starts_ms: Vec<u64>,
    /// The agent's Docker label namespace.
    pub namespace: String,
    /// The safe-mode compose file the agent would apply.
    pub safe_mode_compose: PathBuf,
    /// The agent's secrets directory (`safe-mode.env` fills the safe stack's `${NAME}`s).
    pub secrets_dir: PathBuf,
    /// The agent's version.
    pub version: String,
}

/// What the watchdog thinks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchdogState {
    /// The agent is alive (or has not had time to be judged): the watchdog only watches.
    Watching,
    /// The agent is dead, hung or crash-looping: the watchdog keeps the safe stack running.
    SafeMode,
    /// The agent came back healthy after the watchdog started safe mode; what runs is the
    /// agent's decision again.
    HandedBack,
}

/// The watchdog's status file: what it decided last, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogStatus {
    /// Its state.
    pub state: WatchdogState,
    /// Why it started safe mode, in words (the last time it did).
    pub reason: Option<String>,
    /// How many times (since the file was created) it started safe mode; the agent reports
    /// each episode once.
    pub episode: u64,
    /// Wall clock (Unix ms) when it last started safe mode, for people.
    pub acted_at_unix_ms: Option<u64>,
    /// The last error starting the safe stack, if it failed (it retries).
    pub error: Option<String>,
    /// Wall clock (Unix ms) of this write.
    pub updated_at_unix_ms: u64,
}

/// Milliseconds on the boot clock (`/proc/uptime`), or `None` where it cannot be read.
pub fn boot_clock_ms() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    parse_uptime(&text).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first field of `/proc/uptime` ("12345.67 4567.89").
fn parse_uptime(text: &str) -> Option<Duration> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The kernel's id of this boot, or an empty string where it cannot be read.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_read_from_its_first_field() {
        assert_eq!(
            parse_uptime("350735.47 234388.90\n"),
            Some(Duration::from_millis(350_735_470))
        );
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1 0"), None);
        assert_eq!(parse_uptime("garbage"), None);
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let (Some(a), Some(b)) = (boot_clock_ms(), {
            std::thread::sleep(Duration::from_millis(20));
            boot_clock_ms()
        }) else {
            panic!("/proc/uptime is readable on Linux");
        };
        assert!(b >= a + 10, "{a} then {b}");
    }
}
