//! An in-memory file system that replays a recorded trace of [`Op`]s, with the durability rules
//! of a POSIX file system that promises nothing beyond fsync: a file's content (and mode) is
//! durable once the file (or directory) was fsynced after the write; a name (create, mkdir, rmdir, unlink,
//! symlink, rename) once its directory was fsynced after the change. Anything else may or may
//! not have reached the disk at a crash, in any combination.
//!
//! Nodes are inodes named by the index of the operation that created them, so any subset of a
//! trace replays onto the same identities, and a write whose file creation was lost simply lands
//! on an inode no name reaches.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::fsops::Op;

/// An inode id.
pub type Ino = usize;

/// Ids of the nodes found on disk before the trace (above any op index).
const INITIAL_BASE: Ino = 1 << 40;

/// A file-system node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// A regular file.
    File {
        /// Content.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A symlink.
    Symlink(PathBuf),
}

/// A trace operation with the inodes it touched when it was made.
#[derive(Debug, Clone)]
pub struct Annotated {
    /// The operation, paths relative to the root.
    pub op: Op,
    /// The inode whose content or mode it changes, or that it fsyncs.
    pub ino: Option<Ino>,
    /// The inodes of the directories whose entries it changes.
    pub dirs: Vec<Ino>,
}

/// A tree: names (relative paths) to inodes, and the inodes.
#[derive(Debug, Clone, Default)]
pub struct Model {
    names: BTreeMap<PathBuf, Ino>,
    nodes: BTreeMap<Ino, Node>,
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Model {
    /// Reads the tree under `root` (skipping top-level names in `skip`).
    pub fn snapshot(root: &Path, skip: &[&str]) -> Model {
        let mut m = Model::default();
        m.names.insert(PathBuf::new(), INITIAL_BASE);
        m.nodes.insert(INITIAL_BASE, Node::Dir { mode: 0o755 });
        let mut next = INITIAL_BASE + 1;
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let Ok(entries) = fs::read_dir(root.join(&rel)) else {
                continue;
            };
            for e in entries.flatten() {
                let name = rel.join(e.file_name());
                if rel.as_os_str().is_empty()
                    && skip.iter().any(|s| e.file_name().to_str() == Some(s))
                {
                    continue;
                }
                let Ok(meta) = fs::symlink_metadata(e.path()) else {
                    continue;
                };
                let mode = meta.permissions().mode() & 0o7777;
                let node = if meta.file_type().is_symlink() {
                    Node::Symlink(fs::read_link(e.path()).unwrap_or_default())
                } else if meta.is_dir() {
                    stack.push(name.clone());
                    Node::Dir { mode }
                } else {
                    Node::File {
                        data: fs::read(e.path()).unwrap_or_default(),
                        mode,
                    }
                };
                m.names.insert(name, next);
                m.nodes.insert(next, node);
                next += 1;
            }
        }
        m
    }

    fn ino(&self, p: &Path) -> Option<Ino> {
        self.names.get(p).copied()
    }

    fn is_dir(&self, p: &Path) -> bool {
        self.ino(p)
            .and_then(|i| self.nodes.get(&i))
            .is_some_and(|n| matches!(n, Node::Dir { .. }))
    }

    /// Annotates a trace (paths made relative to `root`) with the inodes each op touched, by
    /// replaying it in full on a copy of this model.
    pub fn annotate(&self, root: &Path, trace: &[Op], id_base: Ino) -> Vec<Annotated> {
        let mut m = self.clone();
        let mut out = Vec::with_capacity(trace.len());
        for (i, op) in trace.iter().enumerate() {
            let op = relative(op, root);
            let (ino, dirs) = match &op {
                Op::Write { path, .. } | Op::Chmod { path, .. } | Op::FsyncFile(path) => {
                    (m.ino(path), Vec::new())
                }
                Op::FsyncDir(path) => (m.ino(path), Vec::new()),
                Op::Create(p) | Op::Mkdir(p) | Op::Rmdir(p) | Op::Unlink(p) => {
                    (None, m.ino(&parent(p)).into_iter().collect())
                }
                Op::Symlink { link, .. } => (None, m.ino(&parent(link)).into_iter().collect()),
                Op::Rename { from, to } => {
                    let mut d: Vec<Ino> = m.ino(&parent(from)).into_iter().collect();
                    d.extend(m.ino(&parent(to)));
                    d.dedup();
                    (None, d)
                }
                Op::Exchange { a, b } => {
                    let mut d: Vec<Ino> = m.ino(&parent(a)).into_iter().collect();
                    d.extend(m.ino(&parent(b)));
                    d.dedup();
                    (None, d)
                }
                Op::Mark(_) => (None, Vec::new()),
            };
            let a = Annotated { op, ino, dirs };
            m.apply(id_base + i, &a);
            out.push(a);
        }
        out
    }

    /// Applies one annotated op (made as op number `i`), leniently: an op whose precondition a
    /// lost earlier op removed does nothing, as on a real disk.
    pub fn apply(&mut self, i: Ino, a: &Annotated) {
        match &a.op {
            Op::Create(p) => {
                if self.is_dir(&parent(p)) && !self.is_dir(p) {
                    self.names.insert(p.clone(), i);
                    self.nodes.insert(
                        i,
                        Node::File {
                            data: Vec::new(),
                            mode: 0o644,
                        },
                    );
                }
            }
            Op::Write { bytes, .. } => {
                if let Some(Node::File { data, .. }) = a.ino.and_then(|n| self.nodes.get_mut(&n)) {
                    *data = bytes.clone();
                }
            }
            Op::Chmod { mode, .. } => match a.ino.and_then(|n| self.nodes.get_mut(&n)) {
                Some(Node::File { mode: m, .. }) | Some(Node::Dir { mode: m }) => *m = *mode,
                _ => {}
            },
            Op::Mkdir(p) => {
                if self.is_dir(&parent(p)) && self.ino(p).is_none() {
                    self.names.insert(p.clone(), i);
                    self.nodes.insert(i, Node::Dir { mode: 0o755 });
                }
            }
            Op::Rmdir(p) => {
                let has_children = self.names.keys().any(|k| k != p && k.starts_with(p));
                if self.is_dir(p) && !has_children {
                    self.names.remove(p);
                }
            }
            Op::Unlink(p) => {
                if !self.is_dir(p) {
                    self.names.remove(p);
                }
            }
            Op::Symlink { link, target } => {
                if self.is_dir(&parent(link)) && self.ino(link).is_none() {
                    self.names.insert(link.clone(), i);
                    self.nodes.insert(i, Node::Symlink(target.clone()));
                }
            }
            Op::Rename { from, to } => {
                if self.ino(from).is_none() || !self.is_dir(&parent(to)) || from == to {
                    return;
                }
                // Whatever `to` named goes (with its subtree), then `from`'s subtree moves.
                let gone: Vec<PathBuf> = self
                    .names
                    .keys()
                    .filter(|k| k.starts_with(to))
                    .cloned()
                    .collect();
                for k in gone {
                    self.names.remove(&k);
                }
                let moved: Vec<(PathBuf, Ino)> = self
                    .names
                    .iter()
                    .filter(|(k, _)| k.starts_with(from))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                for (k, v) in moved {
                    self.names.remove(&k);
                    let rest = k.strip_prefix(from).unwrap_or(Path::new(""));
                    let new = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                    self.names.insert(new, v);
                }
            }
            Op::Exchange { a: x, b: y } => {
                if self.ino(x).is_none() || self.ino(y).is_none() || x == y {
                    return;
                }
                // Every name under `x` moves under `y` and the other way round, at once.
                let under = |k: &Path, p: &Path| k.starts_with(p);
                let moved: Vec<(PathBuf, Ino)> = self
                    .names
                    .iter()
                    .filter(|(k, _)| under(k, x) || under(k, y))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                for (k, _) in &moved {
                    self.names.remove(k);
                }
                for (k, v) in moved {
                    let (from, to) = if under(&k, x) { (x, y) } else { (y, x) };
                    let rest = k.strip_prefix(from).unwrap_or(Path::new(""));
                    let new = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                    self.names.insert(new, v);
                }
            }
            Op::FsyncFile(_) | Op::FsyncDir(_) | Op::Mark(_) => {}
        }
    }

    /// A hash of what the tree holds (names, kinds, contents, modes). Below a name whose last
    /// component starts with one of `opaque` (garbage directories such as an interrupted
    /// checkout), only the name counts: two states that differ only inside such a tree are one
    /// state to recovery, which never reads them.
    pub fn fingerprint(&self, opaque: &[&str]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut inside: Option<&Path> = None;
        for (name, ino) in &self.names {
            if let Some(o) = inside {
                if name.starts_with(o) && name != o {
                    continue;
                }
                inside = None;
            }
            name.hash(&mut h);
            let garbage = name
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| opaque.iter().any(|p| n.starts_with(p)));
            if garbage {
                inside = Some(name);
            } else {
                self.nodes.get(ino).hash(&mut h);
            }
        }
        h.finish()
    }

    /// Writes the tree into the (empty or absent) directory `dir`.
    pub fn materialize(&self, dir: &Path) -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let mut modes = Vec::new();
        for (name, ino) in &self.names {
            if name.as_os_str().is_empty() {
                continue;
            }
            let path = dir.join(name);
            match self.nodes.get(ino) {
                Some(Node::Dir { mode }) => {
                    fs::create_dir_all(&path)?;
                    modes.push((path, *mode));
                }
                Some(Node::File { data, mode }) => {
                    fs::write(&path, data)?;
                    modes.push((path, *mode));
                }
                Some(Node::Symlink(target)) => std::os::unix::fs::symlink(target, &path)?,
                None => {}
            }
        }
        // Modes last (and deepest first), so read-only directories were still writable above.
        for (path, mode) in modes.into_iter().rev() {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}

fn rel(p: &Path, root: &Path) -> PathBuf {
    p.strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf())
}

fn relative(op: &Op, root: &Path) -> Op {
    match op {
        Op::Create(p) => Op::Create(rel(p, root)),
        Op::Write { path, bytes } => Op::Write {
            path: rel(path, root),
            bytes: bytes.clone(),
        },
        Op::FsyncFile(p) => Op::FsyncFile(rel(p, root)),
        Op::Mkdir(p) => Op::Mkdir(rel(p, root)),
        Op::Rmdir(p) => Op::Rmdir(rel(p, root)),
        Op::Rename { from, to } => Op::Rename {
            from: rel(from, root),
            to: rel(to, root),
        },
        Op::Exchange { a, b } => Op::Exchange {
            a: rel(a, root),
            b: rel(b, root),
        },
        Op::Unlink(p) => Op::Unlink(rel(p, root)),
        Op::Symlink { link, target } => Op::Symlink {
            link: rel(link, root),
            target: target.clone(),
        },
        Op::Chmod { path, mode } => Op::Chmod {
            path: rel(path, root),
            mode: *mode,
        },
        Op::FsyncDir(p) => Op::FsyncDir(rel(p, root)),
        Op::Mark(m) => Op::Mark(m.clone()),
    }
}

/// Whether op `i` of `trace` is durable when the machine stops after `k` ops: a later fsync
/// (before `k`) of the file it changed, or of every directory whose entries it changed.
pub fn durable(trace: &[Annotated], i: usize, k: usize) -> bool {
    let a = &trace[i];
    let later = &trace[i + 1..k];
    match &a.op {
        // fsync of a file or a directory makes its own content and metadata durable.
        Op::Write { .. } | Op::Chmod { .. } => a.ino.is_some_and(|ino| {
            later
                .iter()
                .any(|b| matches!(b.op, Op::FsyncFile(_) | Op::FsyncDir(_)) && b.ino == Some(ino))
        }),
        Op::Create(_)
        | Op::Mkdir(_)
        | Op::Rmdir(_)
        | Op::Unlink(_)
        | Op::Symlink { .. }
        | Op::Rename { .. }
        | Op::Exchange { .. } => {
            !a.dirs.is_empty()
                && a.dirs.iter().all(|d| {
                    later
                        .iter()
                        .any(|b| matches!(b.op, Op::FsyncDir(_)) && b.ino == Some(*d))
                })
        }
        Op::FsyncFile(_) | Op::FsyncDir(_) | Op::Mark(_) => true,
    }
}

/// The states a crash after `k` ops may leave: every op before `k` that is durable, plus a
/// choice of the others. All choices when at most `exhaustive` are pending; otherwise the ones
/// a real disk most plausibly leaves and that find ordering bugs: each prefix of the pending ops
/// (written in order), all of them but one, and none of them but one.
pub fn crash_states(
    base: &Model,
    trace: &[Annotated],
    id_base: Ino,
    k: usize,
    exhaustive: usize,
) -> Vec<Model> {
    let pending: Vec<usize> = (0..k).filter(|&i| !durable(trace, i, k)).collect();
    let mut choices: Vec<Vec<bool>> = Vec::new();
    let n = pending.len();
    if n <= exhaustive {
        for bits in 0u32..(1u32 << n) {
            choices.push((0..n).map(|j| bits & (1 << j) != 0).collect());
        }
    } else {
        for p in 0..=n {
            choices.push((0..n).map(|j| j < p).collect());
        }
        for skip in 0..n {
            choices.push((0..n).map(|j| j != skip).collect());
            choices.push((0..n).map(|j| j == skip).collect());
        }
    }
    choices
        .into_iter()
        .map(|keep| {
            let mut m = base.clone();
            let mut next_pending = 0;
            for (i, a) in trace.iter().enumerate().take(k) {
                let applied = if next_pending < n && pending[next_pending] == i {
                    next_pending += 1;
                    keep[next_pending - 1]
                } else {
                    true
                };
                if applied {
                    m.apply(id_base + i, a);
                }
            }
            m
        })
        .collect()
}
