//! The release digest: a sha256 over a canonical encoding of a repository tree.
//!
//! The agent computes it over what it checked out, the controller over what it fetched; both
//! must agree byte for byte, so the encoding depends only on what Git itself records:
//!
//! ```text
//! "fleet-tree-digest-v1\n"
//! for each file or symlink, sorted by path (bytes, `/`-separated, relative to the root):
//!     mode   "100644" | "100755" | "120000"   (6 ASCII bytes; any execute bit means 100755)
//!     " "    path   "\0"
//!     length of the content as a big-endian u64
//!     content (for a symlink: its target)
//! ```
//!
//! `.git` and empty directories are not part of it, nor are owners, timestamps or permission
//! bits other than execute, so a Git checkout and a plain copy of the same tree agree.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::repo::{EntryKind, RepoError, RepoTree};

const HEADER: &[u8] = b"fleet-tree-digest-v1\n";

/// A tree digest, shown as `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreeDigest(pub [u8; 32]);

impl fmt::Display for TreeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for TreeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text that is not `sha256:` and 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad digest `{0}`: expected `sha256:` followed by 64 hex digits")]
pub struct BadDigest(pub String);

impl FromStr for TreeDigest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s
            .strip_prefix("sha256:")
            .ok_or_else(|| BadDigest(s.into()))?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(BadDigest(s.into()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| BadDigest(s.into()))?;
        Ok(TreeDigest(out))
    }
}

impl serde::Serialize for TreeDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for TreeDigest {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TreeDigest".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A release's tree digest: `sha256:` and 64 lowercase hex digits.",
            "pattern": "^sha256:[0-9a-f]{64}$",
        })
    }
}

impl<'de> serde::Deserialize<'de> for TreeDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The mode of an entry as Git records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// 100644
    Regular,
    /// 100755
    Executable,
    /// 120000
    Symlink,
}

impl FileMode {
    fn as_bytes(self) -> &'static [u8; 6] {
        match self {
            FileMode::Regular => b"100644",
            FileMode::Executable => b"100755",
            FileMode::Symlink => b"120000",
        }
    }
}

/// Entries fed to a [`DigestBuilder`] out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest entries out of order: `{later}` after `{earlier}`")]
pub struct OutOfOrder {
    /// The entry given first.
    pub earlier: String,
    /// The entry that should have come before it.
    pub later: String,
}

/// Builds a digest entry by entry, for callers that walk a tree themselves (a Git tree object,
/// say). Entries must come sorted by path bytes, each path once.
pub struct DigestBuilder {
    hasher: Sha256,
    last: Option<String>,
}

impl Default for DigestBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DigestBuilder {
    /// Starts a digest.
    pub fn new() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(HEADER);
        DigestBuilder { hasher, last: None }
    }

    fn begin(&mut self, path: &str, mode: FileMode, len: u64) -> Result<(), OutOfOrder> {
        if let Some(last) = &self.last {
            if last.as_bytes() >= path.as_bytes() {
                return Err(OutOfOrder {
                    earlier: last.clone(),
                    later: path.to_owned(),
                });
            }
        }
        self.last = Some(path.to_owned());
        self.hasher.update(mode.as_bytes());
        self.hasher.update(b" ");
        self.hasher.update(path.as_bytes());
        self.hasher.update([0u8]);
        self.hasher.update(len.to_be_bytes());
        Ok(())
    }

    /// Adds one entry with its whole content.
    pub fn add(&mut self, path: &str, mode: FileMode, content: &[u8]) -> Result<(), OutOfOrder> {
        self.begin(path, mode, content.len() as u64)?;
        self.hasher.update(content);
        Ok(())
    }

    /// The digest of everything added.
    pub fn finish(self) -> TreeDigest {
        TreeDigest(self.hasher.finalize().into())
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The digest of a tree, streaming file contents.
pub fn digest_tree(tree: &RepoTree) -> Result<TreeDigest, RepoError> {
    let mut b = DigestBuilder::new();
    for entry in tree.entries() {
        let mode = match &entry.kind {
            EntryKind::File { executable: true } => FileMode::Executable,
            EntryKind::File { executable: false } => FileMode::Regular,
            EntryKind::Symlink { .. } => FileMode::Symlink,
        };
        // `RepoTree` keeps its entries sorted and unique, so this cannot be out of order.
        b.begin(&entry.path, mode, entry.size)
            .map_err(|e| RepoError::BadPath {
                path: e.later,
                reason: "out of order",
            })?;
        tree.copy_to(entry, &mut HashWriter(&mut b.hasher))?;
    }
    Ok(b.finish())
}

/// The digest of the tree under `root` (a Git checkout or a plain copy).
pub fn digest_dir(root: &Path) -> Result<TreeDigest, RepoError> {
    digest_tree(&RepoTree::from_dir(root)?)
}
