//! The device agent: stages releases from Git, swaps them in atomically, applies them to
//! Docker, health-checks them and rolls back on its own.

pub mod config;
pub mod fsutil;
pub mod gc;
pub mod git;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod recovery;
pub mod stage;
pub mod status;
