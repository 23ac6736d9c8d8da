//! Test fixtures shared by the unit tests.

use std::path::Path;
use std::time::Duration;

use fleet_config::compose::ImageRef;

use crate::config::AgentConfig;
use crate::runtime::{RuntimeError, StackRuntime, StackSpec};

/// A runtime that accepts everything and runs nothing.
pub struct NoRuntime;

impl StackRuntime for NoRuntime {
    async fn ensure_images(&self, _: &[ImageRef]) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn apply(&self, _: &StackSpec<'_>) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn remove_stack(&self, _: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn deployed_stacks(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
    async fn watch_health(&self, _: &[StackSpec<'_>], _: Duration) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn remove_images(&self, _: &[ImageRef]) -> usize {
        0
    }
    async fn releases_in_use(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
}

/// A valid configuration with data directory `data`, the shipped safe-mode stack, an
/// unreachable Git endpoint and, if `controller`, an unreachable controller whose token file is
/// `data/token`.
pub fn config(data: &Path, controller: bool) -> AgentConfig {
    let safe_mode = Path::new(env!("CARGO_MANIFEST_DIR")).join("../safe-mode/compose.yaml");
    let mut text = format!(
        "device_id: pi-01\ndata_dir: {}\nsafe_mode_compose: {}\ngit:\n  endpoints:\n    - url: git://127.0.0.1:1/fleet.git\n",
        data.display(),
        safe_mode.display()
    );
    if controller {
        text.push_str(&format!(
            "controller:\n  url: http://127.0.0.1:1\n  token_file: {}\n",
            data.join("token").display()
        ));
    }
    AgentConfig::parse(&text, "agent.yaml").expect("valid")
}
