//! Controller mode (DESIGN.md, "Agent ↔ controller"): the agent enrolls, checks in every
//! interval with its state, telemetry and buffered events, and moves only to the release the
//! controller names. Pull only: the controller never connects to a device.
//!
//! - [`client`]: typed HTTP calls and the status → [`ControllerError`] mapping;
//! - [`backoff`]: retry and interval jitter;
//! - [`enroll`]: pairing code or bootstrap token → device token;
//! - [`checkin`]: the check-in request from the data directory, journal and /proc;
//! - [`decide`]: the pure decision on a check-in answer;
//! - [`report`]: the last check-in and error, for `fleet-agent status`;
//! - [`mode`]: the loop that ties them together.

pub mod backoff;
pub mod checkin;
pub mod client;
pub mod decide;
pub mod enroll;
pub mod mode;
pub mod report;

pub use client::{Client, ControllerError};
