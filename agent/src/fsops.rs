//! The seam of the agent's file-system changes: every mutating primitive of [`crate::fsutil`]
//! reports the operation it just made here, and a recorder installed on the current thread
//! collects them in order. Production installs none (recording costs one thread-local read per
//! operation); the crash-consistency checker installs one to learn exactly which writes, renames,
//! unlinks, symlinks and fsyncs the update transaction, boot recovery and GC make, and then
//! builds every state a power cut may leave from that trace.
//!
//! The recorder is per thread: the code under test must run on the recording thread (a
//! current-thread async runtime), which is how the checker drives it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// One file-system operation, as it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A file was created (or truncated) at this name.
    Create(PathBuf),
    /// A file's whole content was written (after [`Op::Create`] of the same path).
    Write {
        /// The file.
        path: PathBuf,
        /// Its content.
        bytes: Vec<u8>,
    },
    /// A file's content (and metadata) made durable.
    FsyncFile(PathBuf),
    /// A directory created.
    Mkdir(PathBuf),
    /// A directory removed (it was empty).
    Rmdir(PathBuf),
    /// A name renamed (atomic).
    Rename {
        /// The old name.
        from: PathBuf,
        /// The new name (replaced if present).
        to: PathBuf,
    },
    /// Two names exchanged atomically (`renameat2(RENAME_EXCHANGE)`): each names what the
    /// other did, and neither is ever missing.
    Exchange {
        /// One name.
        a: PathBuf,
        /// The other.
        b: PathBuf,
    },
    /// A file or symlink unlinked.
    Unlink(PathBuf),
    /// A symlink created.
    Symlink {
        /// The link's name.
        link: PathBuf,
        /// What it points at.
        target: PathBuf,
    },
    /// Permission bits changed.
    Chmod {
        /// The file or directory.
        path: PathBuf,
        /// The new mode.
        mode: u32,
    },
    /// A directory's entries (creations, renames, removals in it) made durable.
    FsyncDir(PathBuf),
    /// Not an operation: a point the code under test names (e.g. "a release passed its health
    /// window"), so the checker can tell which states a crash after it may lead to.
    Mark(String),
}

thread_local! {
    static RECORDER: RefCell<Option<Vec<Op>>> = const { RefCell::new(None) };
}

/// Reports one operation (kept only while a recorder is installed on this thread).
pub fn record(op: Op) {
    RECORDER.with(|r| {
        if let Some(ops) = r.borrow_mut().as_mut() {
            ops.push(op);
        }
    });
}

/// Names a point in the trace (see [`Op::Mark`]).
pub fn mark(what: impl Into<String>) {
    RECORDER.with(|r| {
        if let Some(ops) = r.borrow_mut().as_mut() {
            ops.push(Op::Mark(what.into()));
        }
    });
}

/// True while a recorder is installed on this thread.
pub fn recording() -> bool {
    RECORDER.with(|r| r.borrow().is_some())
}

/// Records a tree another writer just made (libgit2's checkout into a staging directory): its
/// directories, files (content and mode) and symlinks, in a stable order, as if written here,
/// none of it durable until fsynced. Free unless a recorder is installed.
pub fn record_tree_written(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if !recording() {
        return;
    }
    record(Op::Mkdir(root.to_owned()));
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap_or_default();
                record(Op::Symlink { link: path, target });
            } else if meta.is_dir() {
                record(Op::Mkdir(path.clone()));
                dirs.push(path);
            } else {
                record(Op::Create(path.clone()));
                record(Op::Write {
                    path: path.clone(),
                    bytes: std::fs::read(&path).unwrap_or_default(),
                });
                record(Op::Chmod {
                    path,
                    mode: meta.permissions().mode() & 0o7777,
                });
            }
        }
    }
}

/// Starts recording on this thread, dropping anything recorded before.
pub fn start_recording() {
    RECORDER.with(|r| *r.borrow_mut() = Some(Vec::new()));
}

/// Stops recording on this thread and returns the trace.
pub fn stop_recording() -> Vec<Op> {
    RECORDER.with(|r| r.borrow_mut().take().unwrap_or_default())
}
