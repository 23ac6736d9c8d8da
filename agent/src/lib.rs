//! The Fleet device agent: fetches releases from Git, stages them and swaps them in atomically.
pub mod git;
