//! What the demo needs on the machine, checked before anything starts.

use std::path::Path;

use crate::cmd;

/// Debian's static busybox: the demo's images are built from it (no registry needed).
pub const BUSYBOX: &str = "/bin/busybox";

/// A missing prerequisite, with how to get it.
#[derive(Debug, thiserror::Error)]
pub enum PrereqError {
    /// A program or file is missing.
    #[error("{what} is missing: {fix}")]
    Missing {
        /// What.
        what: String,
        /// How to get it.
        fix: String,
    },
}

/// Checks git, the Docker engine and busybox.
pub fn check() -> Result<(), PrereqError> {
    if cmd::run("git", &["--version"]).is_err() {
        return Err(PrereqError::Missing {
            what: "git".into(),
            fix: "apt-get install git".into(),
        });
    }
    if let Err(e) = cmd::run("docker", &["info", "--format", "{{.ServerVersion}}"]) {
        return Err(PrereqError::Missing {
            what: "a running Docker engine".into(),
            fix: format!("start dockerd (and check `docker info`): {e}"),
        });
    }
    if !Path::new(BUSYBOX).exists() {
        return Err(PrereqError::Missing {
            what: BUSYBOX.into(),
            fix: "apt-get install busybox-static (make demo does it when run as root)".into(),
        });
    }
    Ok(())
}
