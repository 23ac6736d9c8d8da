//! Durable file-system primitives: every state change on a device goes through these, so that
//! a power cut at any instant leaves either the old or the new content, never a torn mix.
//!
//! The pattern is always: write a temporary file in the same directory, fsync it, rename it
//! over the target (atomic on POSIX), fsync the directory so the rename itself is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A file-system operation failed; names the path and the operation.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    /// What was being done ("write", "rename", "fsync", ...).
    pub op: &'static str,
    /// On which path.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

/// Wraps an `io::Error` with the operation and path.
pub fn ctx<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError {
        op,
        path: path.to_owned(),
        source,
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!(".{name}.tmp-{}", std::process::id()))
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx("fsync directory", dir))
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_with(path, bytes, None, true)
}

/// [`write_atomic`] for secrets: the file is created with mode 0600 (owner only) before any
/// byte is written, so the content is never readable by others, not even for an instant.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_with(path, bytes, Some(0o600), true)
}

/// Replaces `path` with `bytes` atomically but without fsync: for informational files
/// rewritten often (the check-in status), where losing the last write to a power cut is fine
/// and a flash card should not pay for two syncs a minute.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_with(path, bytes, None, false)
}

fn write_with(path: &Path, bytes: &[u8], mode: Option<u32>, durable: bool) -> Result<(), FsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temp_name(path);
    let result = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            // A leftover temp file keeps its old mode: start from a fresh one.
            let _ = fs::remove_file(&tmp);
            opts.mode(mode);
        }
        let mut f = opts.open(&tmp).map_err(ctx("create", &tmp))?;
        f.write_all(bytes).map_err(ctx("write", &tmp))?;
        if durable {
            f.sync_all().map_err(ctx("fsync", &tmp))?;
        }
        fs::rename(&tmp, path).map_err(ctx("rename", path))?;
        if durable {
            fsync_dir(parent_of(path))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file durably; absent is fine.
pub fn remove_file(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx("remove", path)(e)),
    }
}

/// Points the symlink `link` at `target` atomically: a new link is created beside it and renamed
/// over the old one, so `link` always names either the old or the new target.
pub fn swap_symlink(link: &Path, target: &Path) -> Result<(), FsError> {
    let tmp = temp_name(link);
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).map_err(ctx("symlink", &tmp))?;
    if let Err(e) = fs::rename(&tmp, link).map_err(ctx("rename", link)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(parent_of(link))
}

/// Removes a symlink durably; absent is fine.
pub fn remove_symlink(link: &Path) -> Result<(), FsError> {
    match fs::remove_file(link) {
        Ok(()) => fsync_dir(parent_of(link)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx("remove", link)(e)),
    }
}

/// fsyncs every file and directory under `root` (after a checkout, before it is published).
pub fn fsync_tree(root: &Path) -> Result<(), FsError> {
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(ctx("read directory", &dir))? {
            let entry = entry.map_err(ctx("read directory", &dir))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(ctx("stat", &path))?;
            if ft.is_dir() {
                dirs.push(path);
            } else if ft.is_file() {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(ctx("fsync", &path))?;
            }
        }
        fsync_dir(&dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn private_files_are_owner_only_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("device-token");
        write_private(&p, b"secret\n").expect("write");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&p).expect("read"), b"secret\n");
        write_replace(&p, b"x").expect("replace");
        assert_eq!(fs::read(&p).expect("read"), b"x");
        remove_file(&p).expect("remove");
        remove_file(&p).expect("absent is fine");
    }

    #[test]
    fn symlink_swap_is_a_replacement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("current");
        swap_symlink(&link, Path::new("releases/a")).expect("first");
        swap_symlink(&link, Path::new("releases/b")).expect("second");
        assert_eq!(fs::read_link(&link).expect("link"), Path::new("releases/b"));
        remove_symlink(&link).expect("remove");
        remove_symlink(&link).expect("absent is fine");
        assert!(fs::symlink_metadata(&link).is_err());
    }
}
