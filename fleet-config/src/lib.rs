//! The fleet repository format: what operators edit and `git push` to release.
pub mod diag;
pub mod yaml;
