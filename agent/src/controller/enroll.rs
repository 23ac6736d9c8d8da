//! Enrollment: how a device without a token gets one (DESIGN.md, "Agent ↔ controller").
//!
//! - With a bootstrap token (bulk provisioning), the agent enrolls at once. An id that is
//!   enrolled or revoked already is refused (409): the agent then asks for a pairing code, which
//!   an operator approves with `--replace` after a re-flash.
//! - Otherwise it asks for a pairing code, shows it (a WARN log line with the command to run,
//!   and `<data_dir>/pairing-code`, which `fleet-agent status` prints), and claims every few
//!   seconds until an operator approves it; an expired code is replaced by a new one.
//!
//! The token is written to `token_file` atomically with mode 0600 before it is used, so a
//! power cut never leaves a half-written token, and the controller (which hands it out once)
//! never has to hand it out again.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_config::protocol::{ClaimRequest, ClaimResponse, EnrollRequest, EnrollResponse};
use tokio::time::Instant;

use super::client::{Client, ControllerError};
use crate::config::ControllerConfig;
use crate::fsutil::{remove_file, write_atomic, write_private, FsError};
use crate::layout::DataDir;

/// How often a device waiting for approval asks whether its code was approved.
pub const CLAIM_INTERVAL: Duration = Duration::from_secs(5);

/// Enrollment could not go on; the loop retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The controller refused or did not answer.
    #[error("enrollment: {0}")]
    Controller(#[from] ControllerError),
    /// The bootstrap token file could not be read.
    #[error("cannot read the bootstrap token {path}: {source}")]
    Bootstrap {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The token could not be stored.
    #[error("cannot store the device token: {0}")]
    Store(#[source] FsError),
}

impl EnrollError {
    /// The controller's error, if that is what failed.
    pub fn controller(&self) -> Option<&ControllerError> {
        match self {
            EnrollError::Controller(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads a token file: `Ok(None)` when it is absent or empty. A token is visible ASCII (it goes
/// into an HTTP header); anything else is `InvalidData`.
pub fn read_token(path: &Path) -> io::Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let token = text.trim();
    if token.is_empty() {
        return Ok(None);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the token has characters other than visible ASCII",
        ));
    }
    Ok(Some(token.to_owned()))
}

/// The host name, shown to the operator who approves the pairing code.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

enum State {
    /// Ask for a pairing code (or enroll with the bootstrap token).
    Start,
    /// Waiting for an operator to approve `code`.
    Pending {
        code: String,
        claim_secret: String,
        expires_at: Instant,
    },
}

/// A device enrolling; call [`Enroller::step`] until it returns the token.
pub struct Enroller {
    device_id: String,
    token_file: PathBuf,
    bootstrap_token_file: Option<PathBuf>,
    pairing_file: PathBuf,
    state: State,
}

impl Enroller {
    /// Enrollment of `device_id` with the controller `cfg`; the pairing code goes to `data`.
    pub fn new(cfg: &ControllerConfig, device_id: &str, data: &DataDir) -> Enroller {
        Enroller {
            device_id: device_id.to_owned(),
            token_file: cfg.token_file.clone(),
            bootstrap_token_file: cfg.bootstrap_token_file.clone(),
            pairing_file: data.pairing_code(),
            state: State::Start,
        }
    }

    /// The pairing code waiting for approval, if any.
    pub fn pairing_code(&self) -> Option<&str> {
        match &self.state {
            State::Pending { code, .. } => Some(code),
            State::Start => None,
        }
    }

    /// One request: `Ok(Some(token))` once enrolled (the token is stored by then), `Ok(None)`
    /// while waiting for approval (ask again after [`CLAIM_INTERVAL`]).
    pub async fn step(&mut self, client: &Client) -> Result<Option<String>, EnrollError> {
        if let State::Pending {
            expires_at, code, ..
        } = &self.state
        {
            if Instant::now() >= *expires_at {
                tracing::warn!(%code, "the pairing code expired before approval; asking for a new one");
                self.state = State::Start;
            }
        }
        let claim_secret = match &self.state {
            State::Start => return self.start(client).await,
            State::Pending { claim_secret, .. } => claim_secret.clone(),
        };
        match client.claim(&ClaimRequest { claim_secret }).await {
            Ok(ClaimResponse::Pending) => Ok(None),
            Ok(ClaimResponse::Enrolled { device_id, token }) => {
                self.enrolled(&device_id, &token).map(Some)
            }
            Err(ControllerError::Gone { message } | ControllerError::NotFound { message }) => {
                tracing::warn!(%message, "the pairing code is no longer valid; asking for a new one");
                self.state = State::Start;
                self.start(client).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn start(&mut self, client: &Client) -> Result<Option<String>, EnrollError> {
        let bootstrap = match &self.bootstrap_token_file {
            None => None,
            Some(path) => match read_token(path) {
                Ok(Some(t)) => Some(t),
                Ok(None) => {
                    return Err(EnrollError::Bootstrap {
                        path: path.clone(),
                        source: io::Error::new(io::ErrorKind::NotFound, "absent or empty"),
                    })
                }
                Err(source) => {
                    return Err(EnrollError::Bootstrap {
                        path: path.clone(),
                        source,
                    })
                }
            },
        };
        let req = EnrollRequest {
            device_id: self.device_id.clone(),
            hostname: hostname(),
            arch: std::env::consts::ARCH.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let answer = match client.enroll(&req, bootstrap.as_deref()).await {
            // The id is enrolled or revoked already (a re-flashed device): a bootstrap token
            // never replaces a device, so ask for a pairing code an operator approves with
            // `--replace` instead of retrying the refusal forever.
            Err(ControllerError::Rejected {
                status: 409,
                message,
            }) if bootstrap.is_some() => {
                tracing::warn!(%message, "the bootstrap token cannot enroll this id; asking for a pairing code instead");
                client.enroll(&req, None).await?
            }
            other => other?,
        };
        match answer {
            EnrollResponse::Enrolled { device_id, token } => {
                self.enrolled(&device_id, &token).map(Some)
            }
            EnrollResponse::Pending {
                pairing_code,
                claim_secret,
                expires_in_secs,
            } => {
                if let Err(e) =
                    write_atomic(&self.pairing_file, format!("{pairing_code}\n").as_bytes())
                {
                    tracing::warn!(error = %e, "cannot write the pairing code for `fleet-agent status`");
                }
                tracing::warn!(
                    device = %self.device_id,
                    code = %pairing_code,
                    expires_in_secs,
                    "this device waits for approval: run `fleetctl devices approve {pairing_code}` (or approve it on the dashboard)"
                );
                self.state = State::Pending {
                    code: pairing_code,
                    claim_secret,
                    expires_at: Instant::now() + Duration::from_secs(expires_in_secs.max(1)),
                };
                Ok(None)
            }
        }
    }

    /// Stores the token (0600, atomically) and forgets the pairing code.
    fn enrolled(&mut self, device_id: &str, token: &str) -> Result<String, EnrollError> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ControllerError::BadAnswer {
                reason: "the device token handed out is empty or not visible ASCII".into(),
            }
            .into());
        }
        if device_id != self.device_id {
            tracing::warn!(
                configured = %self.device_id,
                enrolled_as = %device_id,
                "the controller enrolled this device under another id; check-ins use the configured id"
            );
        }
        if let Some(dir) = self.token_file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(crate::fsutil::ctx("create", dir))
                .map_err(EnrollError::Store)?;
        }
        write_private(&self.token_file, format!("{token}\n").as_bytes())
            .map_err(EnrollError::Store)?;
        if let Err(e) = remove_file(&self.pairing_file) {
            tracing::warn!(error = %e, "cannot remove the pairing code file");
        }
        self.state = State::Start;
        tracing::info!(device = %self.device_id, token_file = %self.token_file.display(), "enrolled: the device token is stored");
        Ok(token.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("device-token");
        assert_eq!(read_token(&p).expect("absent"), None);
        std::fs::write(&p, "\n").expect("write");
        assert_eq!(read_token(&p).expect("empty"), None);
        std::fs::write(&p, "abc123\n").expect("write");
        assert_eq!(read_token(&p).expect("token"), Some("abc123".into()));
        std::fs::write(&p, "abc 123\n").expect("write");
        assert_eq!(
            read_token(&p).expect_err("space").kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn an_enrolled_token_is_stored_private_and_the_code_removed() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(tmp.path().join("data"));
        data.create().expect("create");
        let cfg = ControllerConfig {
            url: "http://c".into(),
            token_file: tmp.path().join("etc/fleet/device-token"),
            bootstrap_token_file: None,
            request_timeout: Duration::from_secs(1),
            long_poll: std::time::Duration::ZERO,
            ca_file: None,
        };
        std::fs::write(data.pairing_code(), "ABCD2345\n").expect("code");
        let mut e = Enroller::new(&cfg, "pi-01", &data);
        assert!(e.enrolled("pi-01", "  \n").is_err(), "empty token refused");
        let token = e.enrolled("pi-01", "f00d\n").expect("stored");
        assert_eq!(token, "f00d");
        assert_eq!(
            read_token(&cfg.token_file).expect("read"),
            Some("f00d".into())
        );
        let mode = std::fs::metadata(&cfg.token_file)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!data.pairing_code().exists());
    }
}
