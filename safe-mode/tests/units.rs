//! The shipped systemd units (`deploy/systemd/*.service`) pass `systemd-analyze verify`, with
//! their `ExecStart=` pointed at the binaries this build made (verify checks they exist) and no
//! warning about them either (an unknown key is only a warning to systemd, a failure here).
//!
//! Without `systemd-analyze` the test prints a SKIP line, or fails with
//! `FLEET_REQUIRE_SYSTEMD=1` (CI and `make test` set it; Debian's `systemd` package has it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const REQUIRE_ENV: &str = "FLEET_REQUIRE_SYSTEMD";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn systemd_analyze_available(test: &str) -> bool {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{test}: systemd-analyze is missing (and {REQUIRE_ENV}=1); install Debian's `systemd` package");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIP {test}: systemd-analyze is missing; install Debian's `systemd` package. Set {REQUIRE_ENV}=1 to make this a failure. ***\n"
        );
    }
    ok
}

/// `fleet-agent` of this build: next to `fleet-safe-mode` when `cargo test --workspace` built
/// it, else built now with the same cargo, profile and target directory.
fn agent_bin() -> PathBuf {
    let safe = PathBuf::from(env!("CARGO_BIN_EXE_fleet-safe-mode"));
    let dir = safe.parent().expect("bin dir").to_owned();
    let agent = dir.join("fleet-agent");
    if agent.exists() {
        return agent;
    }
    let target = dir.parent().expect("target dir").to_owned();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace())
        .args([
            "build",
            "--quiet",
            "-p",
            "fleet-agent",
            "--bin",
            "fleet-agent",
        ])
        .arg("--target-dir")
        .arg(&target);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "building fleet-agent failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    if !systemd_analyze_available("the_systemd_units_pass_systemd_analyze_verify") {
        return;
    }
    let units = workspace().join("deploy/systemd");
    let bins = [
        ("/usr/bin/fleet-agent", agent_bin()),
        (
            "/usr/bin/fleet-safe-mode",
            PathBuf::from(env!("CARGO_BIN_EXE_fleet-safe-mode")),
        ),
    ];
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut copied = Vec::new();
    for name in ["fleet-agent.service", "fleet-safe-mode.service"] {
        let text = std::fs::read_to_string(units.join(name))
            .unwrap_or_else(|e| panic!("read deploy/systemd/{name}: {e}"));
        let mut rewritten = text.clone();
        for (shipped, built) in &bins {
            rewritten = rewritten.replace(
                &format!("ExecStart={shipped} "),
                &format!("ExecStart={} ", built.display()),
            );
        }
        assert_ne!(
            rewritten, text,
            "{name} starts a Fleet binary from /usr/bin"
        );
        let path = tmp.path().join(name);
        std::fs::write(&path, rewritten).expect("write unit");
        copied.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copied)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Warnings about our units (unknown keys, bad values) are failures too; what it says about
    // the machine it runs on (no systemd as PID 1, units it depends on) is not ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("fleet-agent.service") || l.contains("fleet-safe-mode.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze warns about the units:\n{}",
        ours.join("\n")
    );

    // And the checks can fail: a typo is caught.
    let typo = tmp.path().join("fleet-agent.service");
    let text = std::fs::read_to_string(&typo).expect("read");
    std::fs::write(&typo, text.replace("WatchdogSec=", "WatchdogSek=")).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&typo)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WatchdogSek"),
        "a typo goes unnoticed: {stderr}"
    );
}

#[test]
fn the_agent_unit_is_a_watched_notify_service_and_the_watchdog_always_restarts() {
    let read = |name: &str| {
        std::fs::read_to_string(workspace().join("deploy/systemd").join(name))
            .unwrap_or_else(|e| panic!("read {name}: {e}"))
    };
    let agent = read("fleet-agent.service");
    for line in [
        "Type=notify",
        "Restart=always",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            agent.lines().any(|l| l == line),
            "fleet-agent.service lacks {line}"
        );
    }
    for key in ["WatchdogSec=", "StartLimitIntervalSec=", "StartLimitBurst="] {
        assert!(
            agent.lines().any(|l| l.starts_with(key)),
            "fleet-agent.service lacks {key}"
        );
    }
    assert!(
        agent
            .lines()
            .any(|l| l.starts_with("ReadWritePaths=") && l.contains("/var/lib/fleet")),
        "the agent must write its data directory"
    );
    let watchdog = read("fleet-safe-mode.service");
    for line in [
        "Restart=always",
        "After=docker.service",
        "StartLimitIntervalSec=0",
    ] {
        assert!(
            watchdog.lines().any(|l| l == line),
            "fleet-safe-mode.service lacks {line}"
        );
    }
}
