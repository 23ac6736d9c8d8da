//! The demo's fleet repository: a working copy made from `examples/fleet-repo` (its stacks,
//! with an inventory of the demo's devices and a quick rollout policy), pushed to a primary and
//! a mirror bare repository, and the releases the demo commits.

use std::path::{Path, PathBuf};

use crate::cmd::{self, CmdError};

/// Something went wrong with the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] CmdError),
    /// `fleet-demo release` without a demo.
    #[error("no demo fleet repository under {0}; start the demo first (make demo)")]
    NoDemo(String),
}

/// What a release changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseKind {
    /// A new page in the app: healthy everywhere.
    Good,
    /// The app's health checks ask for a page that does not exist: every device that installs
    /// it fails its health window and rolls back.
    BadHealthCheck,
}

/// Who is in the fleet, for devices.yaml.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The real agents (the canary ring).
    pub real: Vec<String>,
    /// The simulated devices.
    pub simulated: Vec<String>,
}

/// The repository: working copy, primary and mirror.
pub struct DemoRepo {
    /// The working copy (where releases are committed).
    pub work: PathBuf,
    /// Bare repository served as the primary.
    pub primary: PathBuf,
    /// Bare repository served as the mirror.
    pub mirror: PathBuf,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.display().to_string();
    move |source| RepoError::Io { what, path, source }
}

fn write(path: &Path, text: &str) -> Result<(), RepoError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    std::fs::write(path, text).map_err(io("writing", path))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), RepoError> {
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
        }
    }
    Ok(())
}

/// The demo's fleet.yaml: the example's waves, with a bake short enough to watch.
fn fleet_yaml(bake: &str) -> String {
    format!(
        "# The demo fleet (made by fleet-demo from examples/fleet-repo).\nname: demo-fleet\nrelease_branch: main\n\nrollout:\n  waves:\n    - {{ name: canary, select: {{ ring: canary }} }}\n    - {{ name: five-percent, percent: 5 }}\n    - {{ name: quarter, percent: 25 }}\n    - {{ name: all, percent: 100 }}\n  bake: {bake}\n  health_timeout: 2m\n  max_failure_rate: 5%\n  fleet_unhealthy_stop: 20%\n"
    )
}

fn devices_yaml(inv: &Inventory) -> String {
    let mut y =
        String::from("# The demo's devices: real agents on Docker are the canaries.\ndevices:\n");
    for (i, id) in inv.real.iter().enumerate() {
        let role = if i == 0 { "gateway" } else { "sensor" };
        y.push_str(&format!(
            "  - id: {id}\n    labels: {{ ring: canary, site: lab, role: {role} }}\n"
        ));
    }
    for (i, id) in inv.simulated.iter().enumerate() {
        let site = if i % 2 == 0 { "berlin" } else { "paris" };
        y.push_str(&format!(
            "  - id: {id}\n    labels: {{ ring: main, site: {site}, role: sensor, simulated: \"true\" }}\n"
        ));
    }
    y.push_str("\nstacks:\n  - name: app\n    select: {}\n  - name: metrics\n    select: { role: gateway }\n");
    y
}

fn git(dir: &Path, args: &[&str]) -> Result<String, RepoError> {
    Ok(cmd::run_with("git", args, Some(dir), None)?)
}

impl DemoRepo {
    /// The repository of a demo rooted at `root` (it must exist).
    pub fn open(root: &Path) -> Result<DemoRepo, RepoError> {
        let r = Self::paths(root);
        if !r.work.join(".git").exists() {
            return Err(RepoError::NoDemo(root.display().to_string()));
        }
        Ok(r)
    }

    fn paths(root: &Path) -> DemoRepo {
        DemoRepo {
            work: root.join("fleet-repo"),
            primary: root.join("git/primary/fleet.git"),
            mirror: root.join("git/mirror/fleet.git"),
        }
    }

    /// Makes the repository from `examples` and commits the first release.
    pub fn create(
        root: &Path,
        examples: &Path,
        inv: &Inventory,
        bake: &str,
    ) -> Result<(DemoRepo, String), RepoError> {
        let r = Self::paths(root);
        for bare in [&r.primary, &r.mirror] {
            std::fs::create_dir_all(bare).map_err(io("creating", bare))?;
            git(bare, &["init", "-q", "--bare", "-b", "main"])?;
        }
        std::fs::create_dir_all(&r.work).map_err(io("creating", &r.work))?;
        git(&r.work, &["init", "-q", "-b", "main"])?;
        git(&r.work, &["config", "user.name", "Fleet demo"])?;
        git(&r.work, &["config", "user.email", "demo@fleet.invalid"])?;
        git(&r.work, &["config", "commit.gpgsign", "false"])?;
        copy_dir(&examples.join("stacks"), &r.work.join("stacks"))?;
        // The pristine app compose, so every release starts from it.
        let compose = r.work.join("stacks/app/compose.yaml");
        let original = std::fs::read_to_string(&compose).map_err(io("reading", &compose))?;
        write(&root.join("app-compose.orig.yaml"), &original)?;
        write(&r.work.join("fleet.yaml"), &fleet_yaml(bake))?;
        write(&r.work.join("devices.yaml"), &devices_yaml(inv))?;
        let sha = r.commit_release(root, 1, ReleaseKind::Good)?;
        Ok((r, sha))
    }

    /// Commits release number `n` of `kind` and pushes it to the primary and the mirror.
    fn commit_release(&self, root: &Path, n: u32, kind: ReleaseKind) -> Result<String, RepoError> {
        let orig = root.join("app-compose.orig.yaml");
        let mut compose = std::fs::read_to_string(&orig).map_err(io("reading", &orig))?;
        let page = self.work.join("stacks/app/www/index.html");
        let note = match kind {
            ReleaseKind::Good => "healthy",
            ReleaseKind::BadHealthCheck => {
                compose = compose.replace("/healthz", "/this-page-does-not-exist");
                "BAD: its health check fails"
            }
        };
        write(&self.work.join("stacks/app/compose.yaml"), &compose)?;
        write(
            &page,
            &format!(
                "<!doctype html>\n<title>Fleet demo</title>\n<h1>Release {n}</h1>\n<p>{note}</p>\n"
            ),
        )?;
        git(&self.work, &["add", "-A"])?;
        git(
            &self.work,
            &["commit", "-q", "-m", &format!("release {n} ({note})")],
        )?;
        let sha = git(&self.work, &["rev-parse", "HEAD"])?.trim().to_owned();
        for bare in [&self.primary, &self.mirror] {
            let target = bare.display().to_string();
            git(&self.work, &["push", "-q", "-f", &target, "main:main"])?;
        }
        Ok(sha)
    }

    /// Commits the next release; returns its sha.
    pub fn release(&self, root: &Path, kind: ReleaseKind) -> Result<(u32, String), RepoError> {
        let count = git(&self.work, &["rev-list", "--count", "HEAD"])?;
        let n = count.trim().parse::<u32>().unwrap_or(0) + 1;
        Ok((n, self.commit_release(root, n, kind)?))
    }
}
