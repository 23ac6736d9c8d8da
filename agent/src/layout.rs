//! Where everything lives in the agent's data directory (DESIGN.md, "Agent: the update
//! transaction"):
//!
//! ```text
//! releases/<sha>/            staged release trees, complete and verified once named so
//! releases/.staging-<sha>/   a checkout in progress (deleted on recovery)
//! releases/.trash-<sha>/     a release being deleted, renamed aside first (deleted on recovery)
//! current -> releases/<sha>
//! previous -> releases/<sha>
//! state.json                 the journal
//! update.lock                one update at a time
//! events/                    events not yet acknowledged by the controller
//! pairing-code               controller mode: the code waiting for an operator's approval
//! checkin.json               controller mode: last check-in and last error, for `status`
//! git-cache.git/             bare Git cache
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fleet_config::protocol::ReleaseId;

/// Prefix of a checkout in progress inside `releases/`.
pub const STAGING_PREFIX: &str = ".staging-";

/// Prefix of a release directory being deleted (renamed aside first) inside `releases/`.
pub const TRASH_PREFIX: &str = ".trash-";

/// The agent's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// What a release symlink points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// No link.
    Absent,
    /// A link to a complete release directory.
    Valid(ReleaseId),
    /// A link to something that is not a complete release (deleted, garbage, staging).
    Invalid(PathBuf),
}

impl LinkState {
    /// The release, when valid.
    pub fn release(&self) -> Option<&ReleaseId> {
        match self {
            LinkState::Valid(r) => Some(r),
            _ => None,
        }
    }
}

impl DataDir {
    /// A data directory rooted at `root` (not created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// Creates the directories the agent needs.
    pub fn create(&self) -> Result<(), crate::fsutil::FsError> {
        crate::fsutil::create_dir_all(&self.releases())?;
        crate::fsutil::create_dir_all(&self.events_dir())
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `releases/`.
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }
    /// `releases/<sha>`.
    pub fn release(&self, id: &ReleaseId) -> PathBuf {
        self.releases().join(id.as_str())
    }
    /// `releases/.staging-<sha>`.
    pub fn staging(&self, id: &ReleaseId) -> PathBuf {
        self.releases()
            .join(format!("{STAGING_PREFIX}{}", id.as_str()))
    }
    /// `releases/.trash-<sha>`: where a release directory is renamed before it is deleted.
    pub fn trash(&self, id: &ReleaseId) -> PathBuf {
        self.releases()
            .join(format!("{TRASH_PREFIX}{}", id.as_str()))
    }
    /// The `current` symlink.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }
    /// The `previous` symlink.
    pub fn previous_link(&self) -> PathBuf {
        self.root.join("previous")
    }
    /// The journal.
    pub fn journal(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// The update lock.
    pub fn lock(&self) -> PathBuf {
        self.root.join(fleet_config::liveness::AGENT_LOCK_FILE)
    }
    /// Buffered events.
    pub fn events_dir(&self) -> PathBuf {
        self.root.join("events")
    }
    /// A manual rollback request for the running agent (`fleet-agent rollback`).
    pub fn rollback_request(&self) -> PathBuf {
        self.root.join("rollback.request")
    }
    /// Controller mode: the pairing code an operator must approve (present only while waiting).
    pub fn pairing_code(&self) -> PathBuf {
        self.root.join("pairing-code")
    }
    /// Controller mode: the last check-in and its error, for `fleet-agent status`.
    pub fn checkin_status(&self) -> PathBuf {
        self.root.join("checkin.json")
    }
    /// The bare Git cache.
    pub fn git_cache(&self) -> PathBuf {
        self.root.join("git-cache.git")
    }

    /// The relative target a release link should have (relative, so the data directory can move).
    pub fn link_target(id: &ReleaseId) -> PathBuf {
        Path::new("releases").join(id.as_str())
    }

    /// Reads a release symlink and checks it names a complete release.
    pub fn read_link(&self, link: &Path) -> LinkState {
        let target = match fs::read_link(link) {
            Ok(t) => t,
            Err(_) => {
                // Not a symlink at all (absent, or a stray file or directory).
                return if fs::symlink_metadata(link).is_ok() {
                    LinkState::Invalid(link.to_owned())
                } else {
                    LinkState::Absent
                };
            }
        };
        let id = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<ReleaseId>().ok());
        match id {
            Some(id) if target == Self::link_target(&id) && self.release(&id).is_dir() => {
                LinkState::Valid(id)
            }
            _ => LinkState::Invalid(target),
        }
    }

    /// `current`.
    pub fn current(&self) -> LinkState {
        self.read_link(&self.current_link())
    }

    /// `previous`.
    pub fn previous(&self) -> LinkState {
        self.read_link(&self.previous_link())
    }

    /// Complete releases on disk (not staging), in no particular order.
    pub fn staged_releases(&self) -> io::Result<Vec<ReleaseId>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.releases())? {
            let entry = entry?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<ReleaseId>().ok())
            {
                if entry.file_type()?.is_dir() {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Leftovers of interrupted work: staging directories (checkouts) and trash (deletions).
    pub fn staging_leftovers(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.releases())? {
            let entry = entry?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(STAGING_PREFIX) || n.starts_with(TRASH_PREFIX))
            {
                out.push(entry.path());
            }
        }
        Ok(out)
    }
}
