//! Config drift, apart from the updater: which files of a release directory differ from a fresh
//! checkout of the same commit, and which services an apply had to put back.
//!
//! The updater (`update/drift.rs`) decides when to look and what to do; this module only
//! compares. Files compare as the release digest sees them ([`fleet_config::digest`]): path,
//! kind (file, executable, symlink) and content; owners, timestamps and other permission bits
//! are not part of a release, so they are not drift either.

use std::collections::BTreeSet;
use std::path::Path;

use fleet_config::protocol::DRIFT_FILES_LISTED;
use fleet_config::repo::{Entry, EntryKind, RepoError, RepoTree};

use crate::docker::ServiceChange;

/// The files that differ between two trees, sorted, at most [`DRIFT_FILES_LISTED`] named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDiff {
    /// Relative paths (`/`-separated) added, removed or changed, the first ones in path order.
    pub listed: Vec<String>,
    /// How many more differ than `listed` names.
    pub more: u64,
}

impl FileDiff {
    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }
}

/// The files of `drifted` that differ from `pristine`: present in one only, of another kind, or
/// with other content.
pub fn differing_files(drifted: &Path, pristine: &Path) -> Result<FileDiff, RepoError> {
    let a = RepoTree::from_dir(drifted)?;
    let b = RepoTree::from_dir(pristine)?;
    let paths: BTreeSet<&str> = a
        .entries()
        .iter()
        .chain(b.entries())
        .map(|e| e.path.as_str())
        .collect();
    let mut out = FileDiff::default();
    for path in paths {
        if !same(&a, a.get(path), &b, b.get(path))? {
            if out.listed.len() < DRIFT_FILES_LISTED {
                out.listed.push(path.to_owned());
            } else {
                out.more += 1;
            }
        }
    }
    Ok(out)
}

fn same(
    ta: &RepoTree,
    a: Option<&Entry>,
    tb: &RepoTree,
    b: Option<&Entry>,
) -> Result<bool, RepoError> {
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(false);
    };
    match (&a.kind, &b.kind) {
        (EntryKind::File { executable: x }, EntryKind::File { executable: y }) => {
            Ok(x == y && a.size == b.size && ta.read(a)? == tb.read(b)?)
        }
        (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) => Ok(x == y),
        _ => Ok(false),
    }
}

/// The services (`stack/service`) an apply of a release that already ran had to put back: a
/// container replaced because its `fleet.config-hash` no longer matched the release (changed or
/// re-created by hand), or created because it was missing (removed by hand). A container merely
/// started again after it stopped or crashed is kept, not drift: crash loops count those.
pub fn drifted_services<'a>(
    stack: &str,
    changes: impl IntoIterator<Item = (&'a String, &'a ServiceChange)>,
) -> Vec<String> {
    changes
        .into_iter()
        .filter(|(_, c)| match c {
            ServiceChange::Kept { .. } => false,
            ServiceChange::Created { .. } | ServiceChange::Replaced { .. } => true,
        })
        .map(|(service, _)| format!("{stack}/{service}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        for (p, c) in files {
            let path = t.path().join(p);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, c).expect("write");
        }
        t
    }

    #[test]
    fn added_removed_and_changed_files_are_named_and_nothing_else() {
        let pristine = tree(&[("a.yaml", "1"), ("stacks/app/app.conf", "x"), ("gone", "g")]);
        let drifted = tree(&[("a.yaml", "1"), ("stacks/app/app.conf", "y"), ("new", "n")]);
        let d = differing_files(drifted.path(), pristine.path()).expect("diff");
        assert_eq!(d.listed, ["gone", "new", "stacks/app/app.conf"]);
        assert_eq!(d.more, 0);
        let same = differing_files(pristine.path(), pristine.path()).expect("diff");
        assert!(same.is_empty(), "{same:?}");
    }

    #[test]
    fn a_mode_change_that_the_digest_sees_is_drift() {
        use std::os::unix::fs::PermissionsExt;
        let pristine = tree(&[("run.sh", "echo")]);
        let drifted = tree(&[("run.sh", "echo")]);
        fs::set_permissions(
            drifted.path().join("run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        let d = differing_files(drifted.path(), pristine.path()).expect("diff");
        assert_eq!(d.listed, ["run.sh"]);
    }

    #[test]
    fn the_list_is_bounded_and_counts_the_rest() {
        let names: Vec<String> = (0..DRIFT_FILES_LISTED + 7)
            .map(|i| format!("f{i:03}"))
            .collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        let drifted = tree(&files);
        let pristine = tree(&[]);
        let d = differing_files(drifted.path(), pristine.path()).expect("diff");
        assert_eq!(d.listed.len(), DRIFT_FILES_LISTED);
        assert_eq!(d.listed[0], "f000");
        assert_eq!(d.more, 7);
    }

    #[test]
    fn only_replaced_and_created_containers_are_drift() {
        let mut changes = BTreeMap::new();
        changes.insert(
            "kept".to_string(),
            ServiceChange::Kept {
                container_id: "1".into(),
            },
        );
        changes.insert(
            "made".to_string(),
            ServiceChange::Created {
                container_id: "2".into(),
            },
        );
        changes.insert(
            "swapped".to_string(),
            ServiceChange::Replaced {
                old_container_id: "3".into(),
                container_id: "4".into(),
            },
        );
        assert_eq!(
            drifted_services("app", &changes),
            ["app/made", "app/swapped"]
        );
    }
}
