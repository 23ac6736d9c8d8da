//! Durable file-system primitives, and the one seam every state change of the update
//! transaction, boot recovery and garbage collection goes through: a power cut at any instant
//! leaves either the old or the new content, never a torn mix.
//!
//! The pattern is always: write a temporary file in the same directory, fsync it, rename it
//! over the target (atomic on POSIX), fsync the directory so the rename itself is durable.
//! Directories are deleted by renaming them aside first ([`remove_dir_aside`]), so a cut in
//! the middle never leaves a half-deleted tree under its old name.
//!
//! Every mutating primitive reports itself to [`crate::fsops`] (the seam), which a
//! crash-consistency checker can record to build every state a crash may leave. Nothing in
//! the transaction, recovery or GC calls `std::fs` to change the disk directly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::fsops::{self, Op};

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

/// Marks the temporary names [`write_atomic`] and [`swap_symlink`] use: `.<name>.tmp-<pid>-<n>`.
pub const TEMP_MARK: &str = ".tmp-";

/// A temporary name beside `path`, unique in this process and across restarts (a leftover of
/// a killed process is never reused, so no half-made temp file can be renamed into place).
fn temp_name(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    parent_of(path).join(format!(".{name}{TEMP_MARK}{}-{n}", std::process::id()))
}

/// True for a name [`temp_name`] makes: garbage once the process that made it is gone.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARK)
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx("fsync directory", dir))?;
    fsops::record(Op::FsyncDir(dir.to_owned()));
    Ok(())
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
    let tmp = temp_name(path);
    let result = (|| {
        if mode.is_some() {
            // A leftover temp file keeps its old mode: start from a fresh one.
            let _ = remove_file_quietly(&tmp);
        }
        create_and_write(&tmp, bytes, mode)?;
        if durable {
            fsync_file(&tmp)?;
        }
        rename(&tmp, path)?;
        if durable {
            fsync_dir(parent_of(path))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = remove_file_quietly(&tmp);
    }
    result
}

/// Creates (or truncates) `path` and writes `bytes`, with no fsync: the content is durable only
/// after [`fsync_file`], the name only after [`fsync_dir`] of its directory.
pub fn create_and_write(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), FsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if let Some(mode) = mode {
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(ctx("create", path))?;
    fsops::record(Op::Create(path.to_owned()));
    f.write_all(bytes).map_err(ctx("write", path))?;
    fsops::record(Op::Write {
        path: path.to_owned(),
        bytes: bytes.to_vec(),
    });
    Ok(())
}

/// Makes a file's content durable.
pub fn fsync_file(path: &Path) -> Result<(), FsError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(ctx("fsync", path))?;
    fsops::record(Op::FsyncFile(path.to_owned()));
    Ok(())
}

/// Renames `from` to `to` (atomic; durable after [`fsync_dir`] of the directory).
pub fn rename(from: &Path, to: &Path) -> Result<(), FsError> {
    fs::rename(from, to).map_err(ctx("rename", to))?;
    fsops::record(Op::Rename {
        from: from.to_owned(),
        to: to.to_owned(),
    });
    Ok(())
}

/// Exchanges two existing names atomically (`renameat2(RENAME_EXCHANGE)`, Linux 3.15+): at
/// every instant each name holds one complete tree, the old or the new (durable after
/// [`fsync_dir`] of their parents).
pub fn exchange(a: &Path, b: &Path) -> Result<(), FsError> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| ctx("exchange", b)(io::Error::from(e)))?;
    fsops::record(Op::Exchange {
        a: a.to_owned(),
        b: b.to_owned(),
    });
    Ok(())
}

/// Creates a directory and its missing parents (durable after [`fsync_dir`] of each parent).
pub fn create_dir_all(dir: &Path) -> Result<(), FsError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || fs::symlink_metadata(d).is_ok() {
            break;
        }
        missing.push(d.to_owned());
        at = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => fsops::record(Op::Mkdir(d.clone())),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ctx("create directory", d)(e)),
        }
    }
    Ok(())
}

/// Sets a file's or directory's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), FsError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(ctx("chmod", path))?;
    fsops::record(Op::Chmod {
        path: path.to_owned(),
        mode,
    });
    Ok(())
}

/// Makes a staged tree read-only (DESIGN: "read-only once staged"): files keep only their read
/// and execute bits, directories become `r-x`. Symlinks are left as they are.
pub fn make_tree_read_only(root: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = Vec::new();
    walk_tree(root, |path, ft| {
        if ft.is_dir() {
            dirs.push(path.to_owned());
        } else if ft.is_file() {
            let mode = fs::symlink_metadata(path)
                .map_err(ctx("stat", path))?
                .permissions()
                .mode();
            set_mode(path, mode & 0o555)?;
        }
        Ok(())
    })?;
    // Directories last, deepest first.
    for dir in dirs.iter().rev() {
        set_mode(dir, 0o555)?;
    }
    Ok(())
}

/// Calls `visit` for every directory (the root first, each before its entries), file and
/// symlink under `root`.
fn walk_tree(
    root: &Path,
    mut visit: impl FnMut(&Path, fs::FileType) -> Result<(), FsError>,
) -> Result<(), FsError> {
    let root_type = fs::symlink_metadata(root)
        .map_err(ctx("stat", root))?
        .file_type();
    visit(root, root_type)?;
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(ctx("read directory", &dir))? {
            let entry = entry.map_err(ctx("read directory", &dir))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(ctx("stat", &path))?;
            visit(&path, ft)?;
            if ft.is_dir() {
                dirs.push(path);
            }
        }
    }
    Ok(())
}

/// Deletes the directory tree `dir` so that a cut at any instant leaves either the whole tree
/// under its name or no tree under its name: it is first renamed to `aside` (durably), then
/// removed there. A leftover `aside` is only ever garbage. Absent is fine.
pub fn remove_dir_aside(dir: &Path, aside: &Path) -> Result<(), FsError> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    rename(dir, aside)?;
    fsync_dir(parent_of(dir))?;
    remove_tree(aside)
}

/// Removes a tree that is garbage already (a staging leftover, a tree renamed aside), making
/// read-only directories writable first. Each unlink goes through the seam.
pub fn remove_tree(root: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ctx("stat", root)(e)),
    };
    if !meta.is_dir() {
        return remove_file_quietly(root).map_err(ctx("remove", root));
    }
    if meta.permissions().mode() & 0o200 == 0 {
        set_mode(root, 0o755)?;
    }
    for entry in fs::read_dir(root).map_err(ctx("read directory", root))? {
        let entry = entry.map_err(ctx("read directory", root))?;
        let path = entry.path();
        if entry.file_type().map_err(ctx("stat", &path))?.is_dir() {
            remove_tree(&path)?;
        } else {
            remove_file_quietly(&path).map_err(ctx("remove", &path))?;
        }
    }
    fs::remove_dir(root).map_err(ctx("remove directory", root))?;
    fsops::record(Op::Rmdir(root.to_owned()));
    Ok(())
}

/// Unlinks a file or symlink (absent is fine), through the seam, without fsync.
fn remove_file_quietly(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            fsops::record(Op::Unlink(path.to_owned()));
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a file durably; absent is fine.
pub fn remove_file(path: &Path) -> Result<(), FsError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    remove_file_quietly(path).map_err(ctx("remove", path))?;
    fsync_dir(parent_of(path))
}

/// Points the symlink `link` at `target` atomically: a new link is created beside it and renamed
/// over the old one, so `link` always names either the old or the new target.
pub fn swap_symlink(link: &Path, target: &Path) -> Result<(), FsError> {
    let tmp = temp_name(link);
    let _ = remove_file_quietly(&tmp);
    symlink(target, &tmp).map_err(ctx("symlink", &tmp))?;
    fsops::record(Op::Symlink {
        link: tmp.clone(),
        target: target.to_owned(),
    });
    if let Err(e) = rename(&tmp, link) {
        let _ = remove_file_quietly(&tmp);
        return Err(e);
    }
    fsync_dir(parent_of(link))
}

/// Removes a symlink durably; absent is fine.
pub fn remove_symlink(link: &Path) -> Result<(), FsError> {
    remove_file(link)
}

/// fsyncs every file and directory under `root` (after a checkout, before it is published).
pub fn fsync_tree(root: &Path) -> Result<(), FsError> {
    walk_tree(root, |path, ft| {
        if ft.is_dir() {
            fsync_dir(path)
        } else if ft.is_file() {
            fsync_file(path)
        } else {
            Ok(())
        }
    })
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
