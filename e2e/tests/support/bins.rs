//! The product's binaries for end-to-end tests. Cargo only hands a test the binaries of its own
//! package, so this builds `fleet-agent`, `fleet-controller`, `fleetctl`, `fleet-sim`, `fleet-demo` and `fleet-safe-mode` once per test process with the
//! same cargo, profile and target directory as the test itself (a no-op when they are fresh),
//! and finds them next to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Paths of the built binaries.
pub struct Bins {
    pub agent: PathBuf,
    pub controller: PathBuf,
    pub fleetctl: PathBuf,
    pub sim: PathBuf,
    pub demo: PathBuf,
    pub safe_mode: PathBuf,
}

/// Builds (once) and returns the binaries; panics with cargo's output when the build fails.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(build)
}

fn build() -> Bins {
    // The test runs as target/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_owned();
    let target_dir = profile_dir.parent().expect("target dir").to_owned();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "fleet-agent",
            "-p",
            "fleet-controller",
            "-p",
            "fleetctl",
            "-p",
            "fleet-demo",
            "-p",
            "fleet-safe-mode",
            "--bins",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "building fleet-agent and fleet-controller failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = |name: &str| {
        let p = profile_dir.join(name);
        assert!(p.exists(), "{} was not built", p.display());
        p
    };
    Bins {
        agent: bin("fleet-agent"),
        controller: bin("fleet-controller"),
        fleetctl: bin("fleetctl"),
        sim: bin("fleet-sim"),
        demo: bin("fleet-demo"),
        safe_mode: bin("fleet-safe-mode"),
    }
}
