//! The rollout engine, pure: no I/O, no clock, no database. Its state is plain data the
//! controller stores as JSON after every step, so a restarted controller resumes where it was
//! (DESIGN.md, "Rollout semantics").
//!
//! - [`plan`]: which devices make up each wave (deterministic, cumulative, rounded up).
//! - [`machine`]: the rollout's life: waves, health gate, bake, halt, pause, resume, abort,
//!   promote, superseding.
//! - [`desired`]: what each device should run, from the rollout and the fleet's history.
//! - [`stored`]: the rollout as the store keeps it (its device records apart).

pub mod desired;
pub mod machine;
pub mod plan;
pub mod stored;

pub use desired::{desired_for, Fallback, Target};
pub use machine::{DeviceRecord, DeviceView, Effect, OpError, Outcome, Rollout, State};
pub use plan::{plan_waves, Policy, WavePlan, WaveSpec};

#[cfg(test)]
mod decisions;
