//! Helpers shared by the agent's integration tests.
// Each test binary uses its own subset of the helpers.
#![allow(dead_code)]

pub mod git_daemon;
