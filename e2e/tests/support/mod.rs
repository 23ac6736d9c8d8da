//! Helpers of the end-to-end tests: the shared test kit (git daemons, test images, Docker
//! namespaces), the agent's lab (agent processes) and the controller's process wrapper, reused by
//! path, plus the binaries built for the run.
#![allow(dead_code)]

pub mod bins;
#[path = "../../../controller/tests/support/dashboard.rs"]
pub mod dashboard;
pub mod fleet;
#[path = "../../../agent/tests/support/lab.rs"]
pub mod lab;
pub mod monitoring;
#[path = "../../../controller/tests/support/process.rs"]
pub mod process;

#[allow(unused_imports)] // each test binary uses its own subset
pub use fleet_testkit::{
    alertmanager, docker_guard, faketime, git_daemon, images, partition, prometheus,
};

use std::time::Duration;

/// The `fleet-agent` binary.
pub fn agent_bin() -> &'static str {
    bins::bins()
        .agent
        .to_str()
        .expect("the target directory path is UTF-8")
}

/// The `fleet-controller` binary.
pub fn controller_bin() -> std::path::PathBuf {
    bins::bins().controller.clone()
}

/// An HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}
