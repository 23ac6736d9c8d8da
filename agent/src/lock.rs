//! The update lock: one agent, and one update, per data directory.
//!
//! An exclusive `fs2` lock on `update.lock`, held for the agent's whole life. The holder writes
//! its pid into the file so a second agent can say who holds it. The kernel releases the lock
//! when the process dies, so a power cut or SIGKILL never leaves it stuck.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;

/// Taking the lock failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another fleet-agent{} is already running on data directory {dir} (it holds {lock}); stop it first", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid, when it wrote one.
        holder: Option<u32>,
    },
    /// The lock file could not be opened.
    #[error("cannot open lock file {path}: {source}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct UpdateLock {
    file: File,
}

impl UpdateLock {
    /// Takes the lock at `path` without waiting.
    pub fn acquire(path: &Path) -> Result<UpdateLock, LockError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| LockError::Open {
                path: path.to_owned(),
                source,
            })?;
        if file.try_lock_exclusive().is_err() {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held {
                dir: path.parent().map(Path::to_owned).unwrap_or_default(),
                lock: path.to_owned(),
                holder: text.trim().parse().ok(),
            });
        }
        // Best effort: the pid is only for the message above.
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "{}", std::process::id());
        let _ = file.sync_all();
        Ok(UpdateLock { file })
    }
}

impl Drop for UpdateLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("update.lock");
        let held = UpdateLock::acquire(&p).expect("first");
        let err = UpdateLock::acquire(&p).expect_err("second must fail");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("already running"), "{msg}");
        drop(held);
        UpdateLock::acquire(&p).expect("free again");
    }
}
