//! Helpers shared by the agent's integration tests.
// Each test binary uses its own subset of the helpers.
#![allow(dead_code)]

pub mod lab;

#[allow(unused_imports)] // each test binary uses its own subset
pub use fleet_testkit::{docker_guard, git_daemon, images, prometheus};

/// The `fleet-agent` binary Cargo built for this test run, or `FLEET_AGENT_BIN` (the
/// benchmark measures the device build with it: `target/device/fleet-agent`).
pub fn agent_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("FLEET_AGENT_BIN")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_fleet-agent").to_owned())
    })
}
