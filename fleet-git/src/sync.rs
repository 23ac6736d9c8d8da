//! Durability helpers: fsync of directories, whose entries survive a power cut only once synced.

use std::fs::File;
use std::io;
use std::path::Path;

/// Flushes a directory's entries (files created, renamed or removed in it) to disk.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
