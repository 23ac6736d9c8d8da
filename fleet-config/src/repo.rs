//! A fleet repository's files as a flat, sorted list, read from a directory or built in memory.
//!
//! The same list feeds validation and the digest, so what is validated is what is digested.
//! `.git` is never part of it, nor are empty directories (Git does not track them either).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Largest file validation reads into memory (YAML and secret scanning); bigger files are
/// digested by streaming and otherwise left alone.
pub const MAX_READ: u64 = 4 << 20;

/// What a path in the tree is, in Git's terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file; `executable` when any execute bit is set (Git mode 100755).
    File {
        /// Git tracks only this one bit of the mode.
        executable: bool,
    },
    /// A symbolic link and the path it points to (Git mode 120000).
    Symlink {
        /// The link's target as stored, not resolved.
        target: String,
    },
}

#[derive(Debug, Clone)]
enum Content {
    Memory(Vec<u8>),
    Disk(PathBuf),
}

/// One file or symlink of the tree.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path relative to the repository root, `/`-separated, never starting with `/`.
    pub path: String,
    /// File or symlink.
    pub kind: EntryKind,
    /// Size in bytes of the content (for a symlink, of its target).
    pub size: u64,
    content: Content,
}

/// Reading the tree failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The repository path itself is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// What was given.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Something Git cannot hold: a device node, a socket, a FIFO.
    #[error("{path}: not a regular file, directory or symlink; Git cannot hold it")]
    UnsupportedFileType {
        /// The offending path.
        path: PathBuf,
    },
    /// A path that is not UTF-8.
    #[error("{path}: file names must be UTF-8")]
    NonUtf8Path {
        /// The path, lossily shown.
        path: PathBuf,
    },
    /// A file changed while it was being read.
    #[error("{path}: changed while being read")]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// An in-memory tree was given a bad path.
    #[error("`{path}`: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The files of a repository, sorted by path (byte order).
#[derive(Debug, Clone, Default)]
pub struct RepoTree {
    entries: Vec<Entry>,
}

impl RepoTree {
    /// Walks `root`, skipping `.git` anywhere, recording files and symlinks (not followed).
    pub fn from_dir(root: &Path) -> Result<RepoTree, RepoError> {
        let meta = fs::metadata(root).map_err(io_err(root))?;
        if !meta.is_dir() {
            return Err(RepoError::NotADirectory {
                path: root.to_owned(),
            });
        }
        let mut entries = Vec::new();
        let mut dirs = vec![(root.to_owned(), String::new())];
        while let Some((dir, rel)) = dirs.pop() {
            for item in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let item = item.map_err(io_err(&dir))?;
                let full = item.path();
                let name = item.file_name();
                let Some(name) = name.to_str() else {
                    return Err(RepoError::NonUtf8Path { path: full });
                };
                if name == ".git" {
                    continue;
                }
                let rel_path = if rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = item.file_type().map_err(io_err(&full))?;
                if ft.is_dir() {
                    dirs.push((full, rel_path));
                } else if ft.is_symlink() {
                    let target = fs::read_link(&full).map_err(io_err(&full))?;
                    let Some(target) = target.to_str() else {
                        return Err(RepoError::NonUtf8Path { path: full });
                    };
                    entries.push(Entry {
                        path: rel_path,
                        size: target.len() as u64,
                        kind: EntryKind::Symlink {
                            target: target.to_owned(),
                        },
                        content: Content::Memory(Vec::new()),
                    });
                } else if ft.is_file() {
                    let meta = item.metadata().map_err(io_err(&full))?;
                    entries.push(Entry {
                        path: rel_path,
                        size: meta.len(),
                        kind: EntryKind::File {
                            executable: is_executable(&meta),
                        },
                        content: Content::Disk(full),
                    });
                } else {
                    return Err(RepoError::UnsupportedFileType { path: full });
                }
            }
        }
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Ok(RepoTree { entries })
    }

    /// A tree held in memory: `(path, content, executable)` per file. Used by tests and the
    /// fuzzer. Paths must be relative, `/`-separated, without `.`/`..`/empty components.
    pub fn from_memory(
        files: impl IntoIterator<Item = (String, Vec<u8>, bool)>,
    ) -> Result<RepoTree, RepoError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (path, content, executable) in files {
            check_rel_path(&path)?;
            entries.push(Entry {
                size: content.len() as u64,
                path,
                kind: EntryKind::File { executable },
                content: Content::Memory(content),
            });
        }
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(RepoError::BadPath {
                path: w[0].path.clone(),
                reason: "appears twice",
            });
        }
        Ok(RepoTree { entries })
    }

    /// Adds a symlink to an in-memory tree (tests).
    pub fn with_symlink(mut self, path: &str, target: &str) -> Result<RepoTree, RepoError> {
        check_rel_path(path)?;
        self.entries.retain(|e| e.path != path);
        self.entries.push(Entry {
            path: path.to_owned(),
            size: target.len() as u64,
            kind: EntryKind::Symlink {
                target: target.to_owned(),
            },
            content: Content::Memory(Vec::new()),
        });
        self.entries
            .sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Ok(self)
    }

    /// The same tree moved under `prefix` (`stacks/safe-mode`), e.g. to validate a stack
    /// directory that lives outside a fleet repository.
    pub fn prefixed(mut self, prefix: &str) -> RepoTree {
        let prefix = prefix.trim_end_matches('/');
        for e in &mut self.entries {
            e.path = format!("{prefix}/{}", e.path);
        }
        self.entries
            .sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        self
    }

    /// Every entry, sorted by path bytes.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// True when some entry lies under directory `dir` (no trailing slash).
    pub fn has_dir(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.entries.iter().any(|e| e.path.starts_with(&prefix))
    }

    /// The content of a regular file (for a symlink, its target's bytes).
    pub fn read(&self, entry: &Entry) -> Result<Vec<u8>, RepoError> {
        match (&entry.kind, &entry.content) {
            (EntryKind::Symlink { target }, _) => Ok(target.as_bytes().to_vec()),
            (_, Content::Memory(bytes)) => Ok(bytes.clone()),
            (_, Content::Disk(path)) => {
                let bytes = fs::read(path).map_err(io_err(path))?;
                if bytes.len() as u64 != entry.size {
                    return Err(RepoError::Changed { path: path.clone() });
                }
                Ok(bytes)
            }
        }
    }

    /// Streams the content into `sink`, checking it has the recorded size.
    pub(crate) fn copy_to(&self, entry: &Entry, sink: &mut dyn io::Write) -> Result<(), RepoError> {
        match (&entry.kind, &entry.content) {
            (EntryKind::Symlink { target }, _) => sink
                .write_all(target.as_bytes())
                .map_err(io_err(Path::new(&entry.path))),
            (_, Content::Memory(bytes)) => sink
                .write_all(bytes)
                .map_err(io_err(Path::new(&entry.path))),
            (_, Content::Disk(path)) => {
                let file = fs::File::open(path).map_err(io_err(path))?;
                let mut limited = io::Read::take(file, entry.size + 1);
                let copied = io::copy(&mut limited, sink).map_err(io_err(path))?;
                if copied != entry.size {
                    return Err(RepoError::Changed { path: path.clone() });
                }
                Ok(())
            }
        }
    }
}

fn check_rel_path(path: &str) -> Result<(), RepoError> {
    let bad = |reason| RepoError::BadPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() || path.starts_with('/') {
        return Err(bad("must be a relative path"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c == ".git")
    {
        return Err(bad(
            "must not contain empty, `.`, `..` or `.git` components",
        ));
    }
    if path.contains('\0') {
        return Err(bad("must not contain NUL"));
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}
