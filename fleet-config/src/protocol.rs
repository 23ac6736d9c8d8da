//! The vocabulary agent and controller share: release ids, update phases, health states and the
//! check-in messages (DESIGN.md, "Agent ↔ controller"). Both sides use these types, so a field
//! renamed on one side is renamed on the other.
//!
//! Messages tolerate unknown fields (a newer agent may talk to an older controller); enums are
//! `snake_case` on the wire.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::digest::TreeDigest;

pub mod logs;
pub use logs::{LogRequest, LogTail, Tolerant};

/// A release: the full hex sha of a commit on the release branch (40 digits for SHA-1
/// repositories, 64 for SHA-256 ones), lowercase.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseId(String);

/// Text that is not a full commit sha.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad release id `{0}`: expected a full commit sha (40 or 64 lowercase hex digits)")]
pub struct BadReleaseId(pub String);

impl ReleaseId {
    /// The sha as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for people.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl FromStr for ReleaseId {
    type Err = BadReleaseId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok =
            matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(ReleaseId(s.to_owned()))
        } else {
            Err(BadReleaseId(s.chars().take(80).collect()))
        }
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleaseId({})", self.short())
    }
}

impl Serialize for ReleaseId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for ReleaseId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ReleaseId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A full commit sha: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.",
            "pattern": "^([0-9a-f]{40}|[0-9a-f]{64})$",
        })
    }
}

impl<'de> Deserialize<'de> for ReleaseId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a device is in the update transaction (DESIGN.md steps 1–7). Each phase knows its
/// successor on success and on failure, and how long it may take before it counts as stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    /// Running `current`, nothing in progress.
    Idle,
    /// Fetching the release from Git.
    Fetching,
    /// Checking out, verifying the digest and validating into `releases/.staging-<sha>`.
    Staging,
    /// Staged: `releases/<sha>` is complete and verified.
    Staged,
    /// Pulling the images the release needs.
    Pulling,
    /// Swapping `current` and applying the stack.
    Switching,
    /// Watching health for the health window.
    Verifying,
    /// Swapping back to `previous` after a failure.
    RollingBack,
    /// Running the safe-mode stack.
    SafeMode,
}

impl UpdatePhase {
    /// The phase after this one completes.
    pub fn next_on_success(self) -> UpdatePhase {
        use UpdatePhase::*;
        match self {
            Idle => Fetching,
            Fetching => Staging,
            Staging => Staged,
            Staged => Pulling,
            Pulling => Switching,
            Switching => Verifying,
            Verifying => Idle,
            RollingBack => Idle,
            SafeMode => SafeMode,
        }
    }

    /// The phase after this one fails. Before the swap nothing running was touched, so a
    /// failure goes back to `Idle`; after it, the device rolls back.
    pub fn next_on_failure(self) -> UpdatePhase {
        use UpdatePhase::*;
        match self {
            Idle | Fetching | Staging | Staged | Pulling => Idle,
            Switching | Verifying => RollingBack,
            RollingBack => SafeMode,
            SafeMode => SafeMode,
        }
    }

    /// True once `current` may already name the new release (power loss must roll back).
    pub fn is_past_swap(self) -> bool {
        matches!(
            self,
            UpdatePhase::Switching | UpdatePhase::Verifying | UpdatePhase::RollingBack
        )
    }

    /// How long the phase may last before the update counts as stuck; `health_window` is the
    /// device's configured window. `None` for resting phases.
    pub fn deadline(self, health_window: Duration) -> Option<Duration> {
        use UpdatePhase::*;
        match self {
            Idle | SafeMode | Staged => None,
            Fetching | Staging => Some(Duration::from_secs(10 * 60)),
            Pulling => Some(Duration::from_secs(30 * 60)),
            Switching | RollingBack => Some(Duration::from_secs(5 * 60)),
            Verifying => Some(health_window + Duration::from_secs(60)),
        }
    }
}

/// A device's (or service's) health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Every service running, healthy and not restarting.
    Healthy,
    /// Running, with a problem that does not stop it (e.g. a service restarting).
    Degraded,
    /// A service down or failing its checks.
    Unhealthy,
    /// Not known yet (starting, or no report).
    Unknown,
}

/// The outcome of the last update attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum UpdateResult {
    /// The release is running and passed its health window.
    Succeeded {
        /// The release now running.
        release: ReleaseId,
    },
    /// The release failed after the swap; the device is back on its previous release.
    RolledBack {
        /// The bad release.
        release: ReleaseId,
        /// Why it was rolled back.
        reason: String,
    },
    /// The release was refused before the swap (digest, validation, pull failure).
    Rejected {
        /// The refused release.
        release: ReleaseId,
        /// Why.
        reason: String,
    },
    /// No attempt was made (disk full, lock held, emergency stop).
    Skipped {
        /// Why.
        reason: String,
    },
}

/// Something that happened on a device, numbered so the controller stores each once and in
/// order even when the agent replays its buffer after being offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceEvent {
    /// Per-device sequence number, starting at 1, never reused.
    pub seq: u64,
    /// When it happened, milliseconds since the Unix epoch (device clock).
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of device events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// An update transaction started.
    UpdateStarted {
        /// Release being installed.
        release: ReleaseId,
    },
    /// The transaction moved to a new phase.
    PhaseChanged {
        /// The new phase.
        phase: UpdatePhase,
        /// Release concerned, if any.
        release: Option<ReleaseId>,
    },
    /// An update finished, one way or another.
    UpdateFinished {
        /// How.
        result: UpdateResult,
    },
    /// A Git endpoint failed to serve a fetch.
    GitFetchFailed {
        /// The endpoint URL.
        endpoint: String,
        /// The error.
        error: String,
    },
    /// The device entered safe mode.
    SafeModeEntered {
        /// Why.
        reason: String,
    },
    /// The device left safe mode.
    SafeModeExited,
    /// The agent started (after boot or a crash).
    AgentStarted {
        /// Agent version.
        version: String,
    },
    /// The agent met a problem it keeps running with (full or read-only disk, Docker not
    /// answering, an unreadable credential), retrying what can recover.
    ProblemRaised {
        /// Its kind, as in the agent's `fleet_agent_problem{problem=...}` gauge.
        problem: String,
        /// What it concerns when there can be several (a Git endpoint's URL), else absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// What failed, and why.
        detail: String,
    },
    /// A problem raised earlier went away.
    ProblemCleared {
        /// Its kind.
        problem: String,
        /// As when it was raised.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
    /// Config drift: the running release no longer matched what was staged (files under
    /// `current` changed, or containers whose configuration differed or were missing), and the
    /// agent put it back (files re-staged from the Git cache, the stack re-applied).
    DriftDetected {
        /// The release that drifted (still the one running).
        release: ReleaseId,
        /// Files that differed, relative to the release directory (added, removed or changed),
        /// at most [`DRIFT_FILES_LISTED`] of them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<String>,
        /// How many more files differed than `files` lists.
        #[serde(default, skip_serializing_if = "is_zero")]
        more_files: u64,
        /// Services (`stack/service`) whose container was replaced because its configuration
        /// differed from the release's, or created because it was missing.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<String>,
    },
}

/// At most this many file names in a [`EventKind::DriftDetected`] event.
pub const DRIFT_FILES_LISTED: usize = 50;

/// A summary of the device's resources at check-in.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Telemetry {
    /// CPU use, 0–100 % of all cores.
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes.
    pub mem_used_bytes: Option<u64>,
    /// Total memory, bytes.
    pub mem_total_bytes: Option<u64>,
    /// Free disk on the data directory's filesystem, bytes.
    pub disk_free_bytes: Option<u64>,
    /// CPU temperature, °C.
    pub temperature_c: Option<f64>,
    /// One-minute load average.
    pub load1: Option<f64>,
    /// Seconds since boot.
    pub uptime_secs: Option<u64>,
}

/// What a device sends at every check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CheckinRequest {
    /// The device's id (must match its token).
    pub device_id: String,
    /// Agent version.
    pub agent_version: String,
    /// Release `current` points at.
    pub current: Option<ReleaseId>,
    /// Release `previous` points at.
    pub previous: Option<ReleaseId>,
    /// Where the update transaction is.
    pub phase: UpdatePhase,
    /// Overall health.
    pub health: HealthState,
    /// Outcome of the last update.
    pub last_result: Option<UpdateResult>,
    /// Releases this device marked bad (it will not retry them).
    #[serde(default)]
    pub bad_releases: Vec<ReleaseId>,
    /// Resource summary.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Events not yet acknowledged, oldest first.
    #[serde(default)]
    pub events: Vec<DeviceEvent>,
    /// Long poll: hold the answer up to this many seconds (bounded by the controller's
    /// `long_poll.max`) while it would tell the device nothing new; answer as soon as its
    /// desired release, the emergency stop or its safe-mode request changes. 0: answer now.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub long_poll_secs: u64,
    /// The tail of the device's logs answering the controller's last [`LogRequest`] (see
    /// [`logs`]); absent when none was asked for. One the controller cannot read is dropped,
    /// the check-in kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Tolerant<LogTail>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the controller wants the device to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Desired {
    /// Stay as you are: start no update.
    Hold,
    /// Run this release (no-op if already running it).
    Release {
        /// The release.
        release: ReleaseId,
        /// Its tree digest, which the agent verifies after checkout.
        digest: TreeDigest,
    },
}

/// The controller's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CheckinResponse {
    /// What to run.
    pub desired: Desired,
    /// The emergency stop is set: start nothing new.
    pub emergency_stop: bool,
    /// Safe mode requested by an operator.
    #[serde(default)]
    pub safe_mode: bool,
    /// Highest event sequence number stored; the agent may drop events up to it.
    pub acked_seq: u64,
    /// Seconds until the next check-in (the agent adds jitter). 0 answers a long poll the
    /// controller accepts: check in again at once, with the long poll (that is the wait).
    pub next_checkin_secs: u64,
    /// An operator asked for the device's logs: send a tail with the next check-in, at once
    /// (see [`logs`]). Absent when nothing is asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogRequest>,
}

/// The agent-facing routes, relative to the controller's base URL.
pub mod paths {
    /// `POST` [`super::EnrollRequest`] → [`super::EnrollResponse`].
    pub const ENROLL: &str = "/api/v1/enroll";
    /// `POST` [`super::ClaimRequest`] → [`super::ClaimResponse`].
    pub const ENROLL_CLAIM: &str = "/api/v1/enroll/claim";
    /// `POST` [`super::CheckinRequest`] → [`super::CheckinResponse`], device bearer token.
    pub const CHECKIN: &str = "/api/v1/checkin";
}

/// An agent asking to join the fleet. Without a token it gets a pairing code that an operator
/// approves; with the bootstrap token (`Authorization: Bearer …`) it is enrolled at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnrollRequest {
    /// The id the device wants (its entry in devices.yaml).
    pub device_id: String,
    /// Host name, shown to the operator who approves.
    pub hostname: String,
    /// CPU architecture (`aarch64`, `x86_64`, …).
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
}

/// The controller's answer to an enrollment request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EnrollResponse {
    /// Waiting for an operator: show `pairing_code` to them, then claim with `claim_secret`.
    Pending {
        /// 8 characters, single use, for the operator (`fleetctl devices approve CODE`).
        pairing_code: String,
        /// Secret the agent presents when it claims its token; never shown to people.
        claim_secret: String,
        /// Seconds until the code expires.
        expires_in_secs: u64,
    },
    /// Enrolled (bootstrap token): the device token, shown once.
    Enrolled {
        /// The device id.
        device_id: String,
        /// The device's bearer token (256-bit, hex).
        token: String,
    },
}

/// An agent asking whether its pairing code was approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClaimRequest {
    /// The secret from [`EnrollResponse::Pending`].
    pub claim_secret: String,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ClaimResponse {
    /// Not approved yet: ask again later.
    Pending,
    /// Approved: the device token, handed out exactly once.
    Enrolled {
        /// The device id.
        device_id: String,
        /// The device's bearer token (256-bit, hex).
        token: String,
    },
}

/// The body of every error answer from the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ApiError {
    /// What went wrong, for people.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_drift_event_reads_as_the_controller_stores_it() {
        let e = DeviceEvent {
            seq: 7,
            at_ms: 1,
            kind: EventKind::DriftDetected {
                release: SHA.parse().expect("sha"),
                files: vec!["stacks/app/app.conf".into()],
                more_files: 0,
                services: vec!["app/web".into()],
            },
        };
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"seq": 7, "at_ms": 1, "event": "drift_detected", "release": SHA,
                "files": ["stacks/app/app.conf"], "services": ["app/web"]})
        );
        let back: DeviceEvent = serde_json::from_value(v).expect("parse");
        assert_eq!(back, e);
        let only_services: DeviceEvent = serde_json::from_value(serde_json::json!({
            "seq": 8, "at_ms": 2, "event": "drift_detected", "release": SHA, "services": ["app/side"]
        }))
        .expect("parse");
        assert!(
            matches!(only_services.kind, EventKind::DriftDetected { ref files, more_files: 0, .. } if files.is_empty())
        );
    }

    #[test]
    fn release_ids() {
        assert!(SHA.parse::<ReleaseId>().is_ok());
        assert!("0123".parse::<ReleaseId>().is_err());
        assert!(SHA.to_uppercase().parse::<ReleaseId>().is_err());
        let bad: Result<ReleaseId, _> = serde_json::from_str("\"main\"");
        assert!(bad.is_err());
    }

    #[test]
    fn phases_know_their_successors() {
        let mut p = UpdatePhase::Idle;
        let mut path = vec![p];
        while {
            p = p.next_on_success();
            p != UpdatePhase::Idle
        } {
            path.push(p);
        }
        assert_eq!(path.len(), 7, "{path:?}");
        assert_eq!(
            UpdatePhase::Verifying.next_on_failure(),
            UpdatePhase::RollingBack
        );
        assert_eq!(UpdatePhase::Pulling.next_on_failure(), UpdatePhase::Idle);
        assert!(UpdatePhase::Switching.is_past_swap());
        assert!(!UpdatePhase::Staged.is_past_swap());
    }

    #[test]
    fn wire_format_is_stable() {
        let resp = CheckinResponse {
            desired: Desired::Hold,
            emergency_stop: true,
            safe_mode: false,
            acked_seq: 7,
            next_checkin_secs: 60,
            logs: None,
        };
        let json = serde_json::to_string(&resp).expect("serializes");
        assert_eq!(
            json,
            r#"{"desired":{"action":"hold"},"emergency_stop":true,"safe_mode":false,"acked_seq":7,"next_checkin_secs":60}"#
        );
        let ev = DeviceEvent {
            seq: 3,
            at_ms: 1000,
            kind: EventKind::UpdateFinished {
                result: UpdateResult::RolledBack {
                    release: SHA.parse().expect("sha"),
                    reason: "health".into(),
                },
            },
        };
        let json = serde_json::to_string(&ev).expect("serializes");
        assert_eq!(
            json,
            format!(
                r#"{{"seq":3,"at_ms":1000,"event":"update_finished","result":{{"result":"rolled_back","release":"{SHA}","reason":"health"}}}}"#
            )
        );
        let back: DeviceEvent = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, ev);
    }
}
