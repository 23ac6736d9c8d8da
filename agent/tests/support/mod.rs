//! Helpers shared by the agent's integration tests.
// Each test binary uses its own subset of the helpers.
#![allow(dead_code)]

pub mod lab;
pub mod standin;

#[allow(unused_imports)] // each test binary uses its own subset
pub use fleet_testkit::{
    docker_guard, faketime, git_daemon, images, prometheus, registry, slow_link,
};

/// The `fleet-agent` binary Cargo built for this test run, or `FLEET_AGENT_BIN` (the
/// benchmark measures the device build with it: `target/device/fleet-agent`). A relative
/// `FLEET_AGENT_BIN` is taken from the workspace root, where the command is typed: Cargo runs
/// tests and benchmarks in the package's directory.
pub fn agent_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let Some(given) = std::env::var("FLEET_AGENT_BIN")
            .ok()
            .filter(|p| !p.is_empty())
        else {
            return env!("CARGO_BIN_EXE_fleet-agent").to_owned();
        };
        let path = std::path::Path::new(&given);
        let path = if path.is_relative() {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(path)
        } else {
            path.to_owned()
        };
        assert!(
            path.is_file(),
            "FLEET_AGENT_BIN={given}: no file at {}",
            path.display()
        );
        path.display().to_string()
    })
}
