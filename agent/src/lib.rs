//! The Fleet device agent: fetches releases, stages them, swaps them in and runs them on Docker.
pub mod docker;
