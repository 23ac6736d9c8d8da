//! Test images built locally from Debian's static busybox (no registry needed), and the
//! Docker-availability check every Docker test starts with.
//!
//! - `fleet-test/app:v1`, `:v2`: `httpd` serving `/healthz` (and `/version` naming the tag) on
//!   port 8080, with a Docker healthcheck (1 s interval) that passes.
//! - `fleet-test/app:broken`: exits with code 1 at once.
//! - `fleet-test/app:unhealthy`: runs, but its healthcheck always fails.
//!
//! The images are built once per test process, and `docker build` reuses its cache, so a
//! second run costs a few hundred milliseconds.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Set to `1` (CI does) to make an unreachable Docker engine a failure instead of a skip.
pub const REQUIRE_ENV: &str = "FLEET_REQUIRE_DOCKER";
/// Where Debian's `busybox-static` installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Port the test app listens on inside its container.
pub const APP_PORT: u16 = 8080;

/// The busybox applets the images link.
const APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "sleep", "echo", "cat", "true", "false", "mkdir", "ls", "env", "nc",
];

/// True when the engine answers. Otherwise prints a loud SKIP line naming `test` and returns
/// false, or panics when [`REQUIRE_ENV`] is `1`.
pub fn docker_available(test: &str) -> bool {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = AVAILABLE.get_or_init(|| {
        let out = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .map_err(|e| format!("cannot run `docker`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the Docker engine does not answer: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if !Path::new(BUSYBOX).exists() {
            return Err(format!(
                "{BUSYBOX} is missing; install Debian's `busybox-static` package"
            ));
        }
        Ok(())
    });
    match result {
        Ok(()) => true,
        Err(why) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: {why} (and {REQUIRE_ENV}=1)");
            }
            // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIP {test}: {why}. Set {REQUIRE_ENV}=1 to make this a failure. ***\n"
            );
            false
        }
    }
}

/// Builds the test images once per process; panics (naming the step) when that fails.
pub fn build_test_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = BUILT.get_or_init(build_all) {
        panic!("building the test images failed: {e}");
    }
}

fn build_all() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let root = dir.path();
    let bin = root.join("rootfs/bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("mkdir: {e}"))?;
    std::fs::copy(BUSYBOX, bin.join("busybox")).map_err(|e| format!("copy busybox: {e}"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(|e| format!("symlink {applet}: {e}"))?;
    }
    let www = root.join("rootfs/www");
    std::fs::create_dir_all(&www).map_err(|e| format!("mkdir www: {e}"))?;
    std::fs::write(www.join("healthz"), "ok\n").map_err(|e| format!("write: {e}"))?;
    // `/tmp` for tools that want it.
    std::fs::create_dir_all(root.join("rootfs/tmp")).map_err(|e| format!("mkdir tmp: {e}"))?;

    let serve = format!(
        r#"CMD ["/bin/httpd", "-f", "-p", "{APP_PORT}", "-h", "/www"]
HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{APP_PORT}/healthz"]"#
    );
    let images = [
        ("v1", serve.clone(), "v1"),
        ("v2", serve, "v2"),
        (
            "broken",
            r#"CMD ["/bin/sh", "-c", "echo broken on purpose; exit 1"]"#.to_owned(),
            "broken",
        ),
        (
            "unhealthy",
            format!(
                r#"CMD ["/bin/httpd", "-f", "-p", "{APP_PORT}", "-h", "/www"]
HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/bin/false"]"#
            ),
            "unhealthy",
        ),
    ];
    for (tag, tail, version) in images {
        let dockerfile = format!(
            "FROM scratch\nCOPY rootfs/ /\nRUN [\"/bin/sh\", \"-c\", \"echo {version} > /www/version\"]\n{tail}\n"
        );
        let file = root.join(format!("Dockerfile.{tag}"));
        std::fs::write(&file, dockerfile).map_err(|e| format!("write Dockerfile: {e}"))?;
        let out = Command::new("docker")
            .arg("build")
            .arg("-q")
            .arg("-f")
            .arg(&file)
            .arg("-t")
            .arg(format!("fleet-test/app:{tag}"))
            .arg(root)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .map_err(|e| format!("run docker build: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "docker build fleet-test/app:{tag}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}
