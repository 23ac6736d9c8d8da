//! Disk space: the free-space check before an update and the choice of what to prune.
//!
//! `current` and `previous` are never pruned (they are what the device runs and what it rolls
//! back to), nor is the release being installed. Beyond those, the newest `keep_releases`
//! releases stay; the rest go, oldest first. "Newest" is by staging order as the journal
//! records it, not by a directory's mtime: a board without a real-time clock may boot in 1970.

use std::path::Path;

use fleet_config::protocol::ReleaseId;

/// Free bytes available to the agent on the filesystem holding `path`.
pub fn available_space(path: &Path) -> std::io::Result<u64> {
    fs2::available_space(path)
}

/// A staged release and its place in staging order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRelease {
    /// The release.
    pub id: ReleaseId,
    /// Its staging sequence number (higher is newer; 0 when unknown).
    pub order: u64,
}

/// The releases to delete, oldest first, so that at most `keep` remain (never fewer than the
/// protected ones).
pub fn releases_to_prune(
    staged: &[StagedRelease],
    keep: usize,
    protected: &[&ReleaseId],
) -> Vec<ReleaseId> {
    let mut candidates: Vec<&StagedRelease> = staged
        .iter()
        .filter(|s| !protected.contains(&&s.id))
        .collect();
    // Newest first; ties broken by id so the choice is deterministic.
    candidates.sort_by(|a, b| b.order.cmp(&a.order).then(a.id.cmp(&b.id)));
    let kept_protected = staged.iter().filter(|s| protected.contains(&&s.id)).count();
    let room = keep.saturating_sub(kept_protected);
    let mut out: Vec<ReleaseId> = candidates
        .into_iter()
        .skip(room)
        .map(|s| s.id.clone())
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> ReleaseId {
        c.to_string().repeat(40).parse().expect("sha")
    }

    fn staged(list: &[(char, u64)]) -> Vec<StagedRelease> {
        list.iter()
            .map(|(c, t)| StagedRelease {
                id: sha(*c),
                order: *t,
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_and_never_the_protected() {
        let s = staged(&[('a', 1), ('b', 2), ('c', 3), ('d', 4), ('e', 5)]);
        let (cur, prev) = (sha('e'), sha('a'));
        // keep 3: e and a protected, one more: d (newest of the rest); prune b, c oldest first.
        assert_eq!(
            releases_to_prune(&s, 3, &[&cur, &prev]),
            vec![sha('b'), sha('c')]
        );
        // keep 2: only the protected remain.
        assert_eq!(
            releases_to_prune(&s, 2, &[&cur, &prev]),
            vec![sha('b'), sha('c'), sha('d')]
        );
        // keep below the protected count never prunes a protected one.
        let pruned = releases_to_prune(&s, 0, &[&cur, &prev]);
        assert!(!pruned.contains(&cur) && !pruned.contains(&prev));
        assert_eq!(pruned.len(), 3);
        // nothing to prune
        assert!(releases_to_prune(&s, 10, &[&cur]).is_empty());
    }
}
