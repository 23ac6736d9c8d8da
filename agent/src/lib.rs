//! The device agent: stages releases from Git, swaps them in atomically, applies them to
//! Docker, health-checks them and rolls back on its own.

pub mod blocking;
pub mod config;
pub mod controller;
#[cfg(test)]
mod crash_check;
pub mod crash_loop;
/// The Docker runtime, in its own crate so the safe-mode watchdog shares it without the agent.
pub use fleet_docker as docker;
pub mod drift;
pub mod events;
pub mod fsops;
pub mod fsutil;
pub mod gc;
pub mod git_health;
pub mod host;
pub mod journal;
pub mod layout;
pub mod liveness;
pub mod lock;
pub mod logs;
pub mod metrics;
pub mod metrics_server;
pub mod problems;
pub mod recovery;
pub mod runtime;
/// Device-local secrets (`<secrets_dir>/<stack>.env`), read the same way by the watchdog.
pub use fleet_docker::secrets;
pub mod service;
pub mod stage;
pub mod startup;
pub mod status;
#[cfg(test)]
pub(crate) mod testing;
pub mod update;
pub mod watch;
