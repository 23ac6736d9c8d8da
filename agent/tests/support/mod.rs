//! Helpers shared by the agent's integration tests.
// Each test binary uses its own subset of the helpers.
#![allow(dead_code)]

pub mod docker_guard;
pub mod git_daemon;
pub mod images;
pub mod lab;
pub mod prometheus;

/// The `fleet-agent` binary Cargo built for this test run.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fleet-agent")
}
