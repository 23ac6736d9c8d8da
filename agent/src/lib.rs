//! The device agent: stages releases from Git, swaps them in atomically, applies them to
//! Docker, health-checks them and rolls back on its own.

pub mod config;
pub mod controller;
pub mod docker;
pub mod events;
pub mod fsutil;
pub mod gc;
pub mod host;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod metrics;
pub mod metrics_server;
pub mod problems;
pub mod recovery;
pub mod runtime;
pub mod secrets;
pub mod service;
pub mod stage;
pub mod startup;
pub mod status;
#[cfg(test)]
pub(crate) mod testing;
pub mod update;
