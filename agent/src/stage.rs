//! Step 3 of the update transaction: turn a commit into a complete, verified, validated release
//! directory, or refuse it without touching anything the device runs.
//!
//! The checkout goes to `releases/.staging-<sha>`; only after its digest matches, it validates,
//! it names this device, it is made read-only and every file is fsynced is it renamed to
//! `releases/<sha>` ([`publish`]), after the caller journaled its digest. A release directory
//! therefore exists only complete, and is trusted only while its tree still has the digest the
//! journal recorded ([`verify`] with that digest before every apply and at boot): a copy left
//! half-deleted or changed by hand is never taken for the release.

use std::path::Path;

use fleet_config::diag::Diagnostic;
use fleet_config::protocol::ReleaseId;
use fleet_config::{digest_dir, validate_dir, FleetRepo, Severity, TreeDigest};

use crate::fsutil::{
    exchange, fsync_dir, fsync_tree, make_tree_read_only, remove_dir_aside, remove_tree, rename,
    FsError,
};
use crate::layout::DataDir;

/// A release that passed staging.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The release.
    pub id: ReleaseId,
    /// Its tree digest as computed here.
    pub digest: TreeDigest,
    /// The validated repository.
    pub repo: FleetRepo,
    /// The stacks this device runs in this release.
    pub stacks: Vec<String>,
}

/// Why a release was refused. Nothing running was touched in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The checkout itself failed.
    #[error("checkout of {sha} failed: {reason}")]
    Checkout {
        /// The release.
        sha: ReleaseId,
        /// The underlying error, as text.
        reason: String,
    },
    /// The tree is not what the controller said it is.
    #[error("release {sha} has digest {actual}, expected {expected}: refusing it")]
    DigestMismatch {
        /// The release.
        sha: ReleaseId,
        /// What the controller announced.
        expected: TreeDigest,
        /// What the checkout has.
        actual: TreeDigest,
    },
    /// The fleet repository does not validate.
    #[error("release {sha} is not a valid fleet repository ({} errors); first: {}", errors.len(), errors.first().map(ToString::to_string).unwrap_or_default())]
    Invalid {
        /// The release.
        sha: ReleaseId,
        /// Every error.
        errors: Vec<Diagnostic>,
    },
    /// The release's inventory does not list this device.
    #[error("release {sha} does not list device `{device}` in devices.yaml")]
    UnknownDevice {
        /// The release.
        sha: ReleaseId,
        /// This device.
        device: String,
    },
    /// The tree could not be read or written.
    #[error("staging release {sha}: {source}")]
    Fs {
        /// The release.
        sha: ReleaseId,
        /// The file-system error.
        #[source]
        source: FsError,
    },
}

/// Stages `id` into `releases/.staging-<sha>`: `checkout` writes the commit's tree into the
/// (absent) directory it is given; the tree is verified (against `expected`, the digest the
/// controller announced, if any), made read-only and fsynced. Nothing is published: journal
/// the digest, then [`publish`].
pub fn stage(
    data: &DataDir,
    id: &ReleaseId,
    expected: Option<TreeDigest>,
    device_id: &str,
    checkout: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<Staged, StageError> {
    let staging = data.staging(id);
    let fs_err = |source| StageError::Fs {
        sha: id.clone(),
        source,
    };
    remove_tree(&staging).map_err(fs_err)?;
    let result = (|| {
        checkout(&staging).map_err(|reason| StageError::Checkout {
            sha: id.clone(),
            reason,
        })?;
        // The checkout's writes are libgit2's, not ours: tell the seam what it wrote.
        crate::fsops::record_tree_written(&staging);
        let staged = verify(&staging, id, expected, device_id)?;
        make_tree_read_only(&staging).map_err(fs_err)?;
        fsync_tree(&staging).map_err(fs_err)?;
        Ok(staged)
    })();
    if result.is_err() {
        let _ = remove_tree(&staging);
    }
    result
}

/// Publishes a staged checkout as `releases/<sha>` (atomic rename, then fsync of `releases/`).
/// A directory already there is kept only if its tree has the same digest; anything else under
/// that name (a copy half-deleted by an older agent, changed by hand) is moved aside and
/// replaced by the fresh, verified checkout.
pub fn publish(data: &DataDir, staged: &Staged) -> Result<(), StageError> {
    let id = &staged.id;
    let fs_err = |source| StageError::Fs {
        sha: id.clone(),
        source,
    };
    let staging = data.staging(id);
    let final_dir = data.release(id);
    if final_dir.exists() {
        if digest_dir(&final_dir).ok() == Some(staged.digest) {
            return remove_tree(&staging).map_err(fs_err);
        }
        tracing::warn!(release = %id.short(), "a release directory on disk does not match its release: replacing it");
        let aside = data.trash(id);
        remove_tree(&aside).map_err(fs_err)?;
        remove_dir_aside(&final_dir, &aside).map_err(fs_err)?;
    }
    rename(&staging, &final_dir).map_err(fs_err)?;
    fsync_dir(&data.releases()).map_err(fs_err)
}

/// Puts a fresh checkout staged for a release that is already published in place of the
/// directory under its name (config drift: that copy was changed): the two names are exchanged
/// atomically, so `releases/<sha>` names a complete tree at every instant (the drifted one or
/// the fresh one), then the drifted copy, now under the staging name that boot recovery clears,
/// is removed. Returns after the exchange is durable; a drifted copy that cannot be removed is
/// logged and left to recovery.
pub fn replace(data: &DataDir, staged: &Staged) -> Result<(), StageError> {
    let id = &staged.id;
    let fs_err = |source| StageError::Fs {
        sha: id.clone(),
        source,
    };
    let staging = data.staging(id);
    let final_dir = data.release(id);
    if std::fs::symlink_metadata(&final_dir).is_err() {
        rename(&staging, &final_dir).map_err(fs_err)?;
        return fsync_dir(&data.releases()).map_err(fs_err);
    }
    exchange(&staging, &final_dir).map_err(fs_err)?;
    fsync_dir(&data.releases()).map_err(fs_err)?;
    if let Err(e) = remove_tree(&staging) {
        tracing::warn!(release = %id.short(), error = %e, "cannot remove the drifted copy of a release; boot recovery removes it");
    }
    Ok(())
}

/// Digest, validation and inventory checks on a checked-out tree.
pub fn verify(
    tree: &Path,
    id: &ReleaseId,
    expected: Option<TreeDigest>,
    device_id: &str,
) -> Result<Staged, StageError> {
    let fs_err = |e: fleet_config::RepoError| StageError::Checkout {
        sha: id.clone(),
        reason: e.to_string(),
    };
    let digest = digest_dir(tree).map_err(fs_err)?;
    if let Some(expected) = expected {
        if expected != digest {
            return Err(StageError::DigestMismatch {
                sha: id.clone(),
                expected,
                actual: digest,
            });
        }
    }
    let validation = validate_dir(tree).map_err(fs_err)?;
    let Some(repo) = validation.repo else {
        return Err(StageError::Invalid {
            sha: id.clone(),
            errors: validation
                .diagnostics
                .sorted()
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect(),
        });
    };
    let Some(device) = repo.devices.device(device_id) else {
        return Err(StageError::UnknownDevice {
            sha: id.clone(),
            device: device_id.to_owned(),
        });
    };
    let stacks = repo
        .devices
        .stacks_for(device)
        .into_iter()
        .map(str::to_owned)
        .collect();
    Ok(Staged {
        id: id.clone(),
        digest,
        repo,
        stacks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo")
    }

    fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
        fs::create_dir_all(to).map_err(|e| e.to_string())?;
        for e in fs::read_dir(from).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            let dst = to.join(e.file_name());
            if e.path().is_dir() {
                copy_dir(&e.path(), &dst)?;
            } else {
                fs::copy(e.path(), dst).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn sha(c: char) -> ReleaseId {
        c.to_string().repeat(40).parse().expect("sha")
    }

    fn data() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = DataDir::new(tmp.path());
        d.create().expect("create");
        (tmp, d)
    }

    #[test]
    fn a_good_release_is_published_complete() {
        let (_tmp, d) = data();
        let want = digest_dir(&example()).expect("digest");
        let s = stage(&d, &sha('a'), Some(want), "pi-lab-01", |dst| {
            copy_dir(&example(), dst)
        })
        .expect("staged");
        publish(&d, &s).expect("published");
        assert_eq!(s.stacks, vec!["app".to_string(), "metrics".to_string()]);
        assert!(d.release(&sha('a')).join("fleet.yaml").is_file());
        assert!(!d.staging(&sha('a')).exists());
    }

    #[test]
    fn a_staged_release_is_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, d) = data();
        let s = stage(&d, &sha('a'), None, "pi-lab-01", |dst| {
            copy_dir(&example(), dst)
        })
        .expect("staged");
        publish(&d, &s).expect("published");
        let dir = d.release(&sha('a'));
        for p in [dir.clone(), dir.join("fleet.yaml"), dir.join("stacks")] {
            let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
            assert_eq!(mode & 0o222, 0, "{} is writable ({mode:o})", p.display());
        }
    }

    #[test]
    fn a_broken_copy_under_the_release_name_is_replaced_by_the_verified_checkout() {
        // What a cut in the middle of an in-place delete left behind: the name, half the files.
        let (_tmp, d) = data();
        let dir = d.release(&sha('a'));
        copy_dir(&example(), &dir).expect("copy");
        std::fs::remove_dir_all(dir.join("stacks")).expect("half-delete");
        let s = stage(&d, &sha('a'), None, "pi-lab-01", |dst| {
            copy_dir(&example(), dst)
        })
        .expect("staged");
        publish(&d, &s).expect("published");
        assert_eq!(digest_dir(&dir).expect("digest"), s.digest);
        assert!(dir.join("stacks").is_dir());
        assert!(!d.trash(&sha('a')).exists() && !d.staging(&sha('a')).exists());
    }

    #[test]
    fn a_drifted_release_directory_is_exchanged_for_a_fresh_checkout() {
        let (_tmp, d) = data();
        let s = stage(&d, &sha('a'), None, "pi-lab-01", |dst| {
            copy_dir(&example(), dst)
        })
        .expect("staged");
        publish(&d, &s).expect("published");
        let dir = d.release(&sha('a'));
        crate::fsutil::set_mode(&dir, 0o755).expect("chmod");
        fs::write(dir.join("added.txt"), "not in the release").expect("drift");
        assert_ne!(digest_dir(&dir).expect("digest"), s.digest);
        let fresh = stage(&d, &sha('a'), Some(s.digest), "pi-lab-01", |dst| {
            copy_dir(&example(), dst)
        })
        .expect("re-staged");
        crate::fsops::start_recording();
        replace(&d, &fresh).expect("replaced");
        let ops = crate::fsops::stop_recording();
        assert_eq!(digest_dir(&dir).expect("digest"), s.digest);
        assert!(!dir.join("added.txt").exists());
        assert!(!d.staging(&sha('a')).exists(), "the drifted copy is gone");
        // One exchange, never a rename that leaves the name empty for an instant.
        assert!(
            matches!(ops.first(), Some(crate::fsops::Op::Exchange { .. })),
            "{ops:?}"
        );
        assert!(!ops
            .iter()
            .any(|op| matches!(op, crate::fsops::Op::Rename { to, .. } if *to == dir)));
    }

    #[test]
    fn a_digest_mismatch_leaves_nothing_behind() {
        let (_tmp, d) = data();
        let wrong: TreeDigest = format!("sha256:{}", "0".repeat(64))
            .parse()
            .expect("digest");
        let err = stage(&d, &sha('b'), Some(wrong), "pi-lab-01", |dst| {
            copy_dir(&example(), dst)
        })
        .expect_err("must refuse");
        assert!(matches!(err, StageError::DigestMismatch { .. }), "{err}");
        assert!(!d.release(&sha('b')).exists() && !d.staging(&sha('b')).exists());
    }

    #[test]
    fn an_invalid_release_is_refused_with_its_errors() {
        let (_tmp, d) = data();
        let err = stage(&d, &sha('c'), None, "pi-lab-01", |dst| {
            copy_dir(&example(), dst)?;
            fs::write(dst.join("fleet.yaml"), "name: x\nrollout: { bake: soon }\n")
                .map_err(|e| e.to_string())
        })
        .expect_err("must refuse");
        let msg = err.to_string();
        assert!(
            msg.contains("fleet.yaml:2:18: error: `rollout.bake`: bad duration `soon`"),
            "{msg}"
        );
        assert!(!d.release(&sha('c')).exists() && !d.staging(&sha('c')).exists());
    }

    #[test]
    fn a_release_without_this_device_is_refused() {
        let (_tmp, d) = data();
        let err = stage(&d, &sha('d'), None, "pi-nowhere", |dst| {
            copy_dir(&example(), dst)
        })
        .expect_err("must refuse");
        assert!(matches!(err, StageError::UnknownDevice { .. }), "{err}");
    }
}
