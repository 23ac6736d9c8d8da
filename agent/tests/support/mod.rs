//! Helpers shared by the agent's integration tests.
// Each test binary uses its own subset of the helpers.
#![allow(dead_code)]

pub mod docker_guard;
pub mod git_daemon;
pub mod images;
pub mod lab;
pub mod prometheus;
