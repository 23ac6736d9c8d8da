//! Writing the tree of one exact commit into a new directory, durably and without escaping it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use git2::{Repository, Tree};

use super::cache::{parse_sha, GitCache};
use super::error::GitError;
use super::sync::fsync_dir;

/// Git tree entry modes (the high bits say the kind, the low bits the permissions).
const MODE_TREE: i32 = 0o040000;
const MODE_BLOB: i32 = 0o100644;
/// Group-writable blob mode written by very old Git versions; treated as a regular file.
const MODE_BLOB_GROUP_WRITABLE: i32 = 0o100664;
const MODE_BLOB_EXECUTABLE: i32 = 0o100755;
const MODE_LINK: i32 = 0o120000;
const MODE_COMMIT: i32 = 0o160000;

/// Permissions of what a checkout writes: exactly these, whatever the process umask.
const FILE_PERMISSIONS: u32 = 0o644;
const EXECUTABLE_PERMISSIONS: u32 = 0o755;
const DIR_PERMISSIONS: u32 = 0o755;

/// Deepest directory nesting a release may have. Deeper trees are refused rather than walked:
/// the walk recurses, and a hostile tree could otherwise exhaust the stack.
pub const MAX_TREE_DEPTH: usize = 64;

/// What a checkout wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckoutSummary {
    /// Regular files written (executable or not).
    pub files: usize,
    /// Symbolic links created.
    pub symlinks: usize,
    /// Directories created below the destination.
    pub directories: usize,
    /// Bytes of file content written.
    pub bytes: u64,
}

impl GitCache {
    /// Writes the tree of commit `sha` into `dest`, which must not exist yet.
    ///
    /// Guarantees, when it returns `Ok`:
    /// - `dest` holds exactly the commit's tree: regular files with mode 0644, or 0755 when Git
    ///   records them executable; symlinks as symlinks (their targets are written as recorded,
    ///   unchecked); directories 0755; no `.git` directory. Permissions do not depend on umask.
    /// - every file and directory written, `dest` itself and its entry in its parent are fsynced.
    ///
    /// Nothing is written outside `dest`: an entry named `..`, `.`, containing `/` (an absolute
    /// or multi-component path) or NUL, an entry named `.git`, and duplicate names in one tree
    /// are refused ([`GitError::UnsafePath`]), as are trees nested deeper than
    /// [`MAX_TREE_DEPTH`]; so are submodules ([`GitError::Submodule`]). The
    /// commit is looked up by its sha only, never through a branch. On any error the partly
    /// written `dest` is removed (best effort), so the caller can retry.
    #[tracing::instrument(skip(self, dest), fields(dest = %dest.display()), err)]
    pub fn checkout(&self, sha: &str, dest: &Path) -> Result<CheckoutSummary, GitError> {
        let oid = parse_sha(sha)?;
        let repo = self.repo()?;
        let object = repo.find_object(oid, None).map_err(|e| match e.code() {
            git2::ErrorCode::NotFound => GitError::UnknownCommit {
                sha: sha.to_string(),
            },
            _ => GitError::ReadObject {
                sha: sha.to_string(),
                what: "the commit".to_string(),
                source: e,
            },
        })?;
        let commit = object
            .into_commit()
            .map_err(|object| GitError::NotACommit {
                sha: sha.to_string(),
                kind: object
                    .kind()
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "unknown object".to_string()),
            })?;
        let tree = commit.tree().map_err(|source| GitError::ReadObject {
            sha: sha.to_string(),
            what: "the root tree".to_string(),
            source,
        })?;

        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| write_error(sha, parent, source))?;
        }
        create_dir(dest).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => GitError::DestinationExists {
                path: dest.to_path_buf(),
            },
            _ => write_error(sha, dest, source),
        })?;

        let mut writer = TreeWriter {
            repo: &repo,
            sha,
            summary: CheckoutSummary::default(),
        };
        let written = writer.write_tree(&tree, dest, "", 0).and_then(|()| {
            let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
            match parent {
                Some(parent) => fsync_dir(parent).map_err(|e| write_error(sha, parent, e)),
                None => Ok(()),
            }
        });
        match written {
            Ok(()) => Ok(writer.summary),
            Err(e) => {
                if let Err(cleanup) = fs::remove_dir_all(dest) {
                    tracing::warn!(
                        dest = %dest.display(),
                        error = %cleanup,
                        "cannot remove a partly written checkout"
                    );
                }
                Err(e)
            }
        }
    }
}

struct TreeWriter<'r> {
    repo: &'r Repository,
    sha: &'r str,
    summary: CheckoutSummary,
}

impl TreeWriter<'_> {
    /// Writes `tree` into the existing directory `dir` (`rel` is its path in the commit, for
    /// messages), then fsyncs `dir`. Subdirectories are synced before their parent.
    fn write_tree(
        &mut self,
        tree: &Tree<'_>,
        dir: &Path,
        rel: &str,
        depth: usize,
    ) -> Result<(), GitError> {
        if depth > MAX_TREE_DEPTH {
            return Err(self.unsafe_path(rel.to_string(), "directories nested too deeply"));
        }
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for entry in tree.iter() {
            let name = entry.name_bytes();
            let rel_path = join_rel(rel, name);
            if let Err(reason) = check_entry_name(name) {
                return Err(self.unsafe_path(rel_path, reason));
            }
            if !seen.insert(name.to_vec()) {
                return Err(self.unsafe_path(rel_path, "appears twice in its tree"));
            }
            let target = dir.join(OsStr::from_bytes(name));
            match entry.filemode() {
                MODE_TREE => {
                    let subtree = self
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| self.read_error(&rel_path, e))?;
                    create_dir(&target).map_err(|e| write_error(self.sha, &target, e))?;
                    self.summary.directories += 1;
                    self.write_tree(&subtree, &target, &rel_path, depth + 1)?;
                }
                MODE_BLOB | MODE_BLOB_GROUP_WRITABLE => {
                    self.write_file(entry.id(), &target, &rel_path, FILE_PERMISSIONS)?;
                }
                MODE_BLOB_EXECUTABLE => {
                    self.write_file(entry.id(), &target, &rel_path, EXECUTABLE_PERMISSIONS)?;
                }
                MODE_LINK => {
                    let blob = self
                        .repo
                        .find_blob(entry.id())
                        .map_err(|e| self.read_error(&rel_path, e))?;
                    std::os::unix::fs::symlink(OsStr::from_bytes(blob.content()), &target)
                        .map_err(|e| write_error(self.sha, &target, e))?;
                    self.summary.symlinks += 1;
                }
                MODE_COMMIT => {
                    return Err(GitError::Submodule {
                        sha: self.sha.to_string(),
                        path: rel_path,
                    });
                }
                mode => {
                    return Err(GitError::UnsupportedEntry {
                        sha: self.sha.to_string(),
                        path: rel_path,
                        mode,
                    });
                }
            }
        }
        fsync_dir(dir).map_err(|e| write_error(self.sha, dir, e))
    }

    fn write_file(
        &mut self,
        id: git2::Oid,
        target: &Path,
        rel_path: &str,
        permissions: u32,
    ) -> Result<(), GitError> {
        let blob = self
            .repo
            .find_blob(id)
            .map_err(|e| self.read_error(rel_path, e))?;
        let content = blob.content();
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(permissions)
                .open(target)?;
            file.write_all(content)?;
            file.set_permissions(Permissions::from_mode(permissions))?;
            file.sync_all()
        };
        write().map_err(|e| write_error(self.sha, target, e))?;
        self.summary.files += 1;
        self.summary.bytes += content.len() as u64;
        Ok(())
    }

    fn unsafe_path(&self, path: String, reason: &'static str) -> GitError {
        GitError::UnsafePath {
            sha: self.sha.to_string(),
            path,
            reason,
        }
    }

    fn read_error(&self, rel_path: &str, source: git2::Error) -> GitError {
        GitError::ReadObject {
            sha: self.sha.to_string(),
            what: format!("{rel_path:?}"),
            source,
        }
    }
}

/// Why a tree entry name cannot be written inside the destination, if it cannot.
///
/// A name is one path component: Git never records `/` inside a name, so one that has it was
/// crafted to reach elsewhere (`/etc/passwd`, `a/../../x`).
fn check_entry_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name == b"." || name == b".." {
        Err("relative path component")
    } else if name.contains(&b'/') {
        Err("name contains '/' (absolute or multi-component path)")
    } else if name.contains(&0) {
        Err("name contains NUL")
    } else if name.eq_ignore_ascii_case(b".git") {
        Err("a .git entry")
    } else {
        Ok(())
    }
}

fn join_rel(rel: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if rel.is_empty() {
        name.into_owned()
    } else {
        format!("{rel}/{name}")
    }
}

/// Creates one directory (never its parents, never over something that exists) with
/// [`DIR_PERMISSIONS`] whatever the umask.
fn create_dir(path: &Path) -> io::Result<()> {
    fs::create_dir(path)?;
    fs::set_permissions(path, Permissions::from_mode(DIR_PERMISSIONS))
}

fn write_error(sha: &str, path: &Path, source: io::Error) -> GitError {
    GitError::WriteCheckout {
        sha: sha.to_string(),
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_that_escape_or_hide_are_refused() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"/etc",
            b"a/../../x",
            b"../x",
            b"a\0b",
            b".git",
            b".GIT",
        ] {
            assert!(
                check_entry_name(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"compose.yaml"[..],
            b"..hidden",
            b".gitignore",
            b"a\\b",
            b"\xff",
        ] {
            assert!(
                check_entry_name(good).is_ok(),
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
    }
}
