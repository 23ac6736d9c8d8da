//! The fleet repository format: what operators edit and `git push` to release.
//!
//! - [`load::validate_dir`] / [`load::validate_tree`] read and check a repository, returning
//!   every problem with file, line and column ([`diag`]).
//! - [`digest`] computes the release digest that agent and controller must agree on.
//! - [`protocol`] holds the types agent and controller exchange, so they cannot drift apart.

pub mod alerts;
pub mod compose;
pub mod decode;
pub mod devices;
pub mod diag;
pub mod digest;
pub mod fleet;
pub mod interpolate;
pub mod liveness;
pub mod load;
pub mod names;
pub mod protocol;
pub mod repo;
pub mod secrets;
pub mod units;
pub mod yaml;

pub use diag::{Diagnostic, Diagnostics, Pos, Severity};
pub use digest::{digest_dir, digest_tree, DigestBuilder, FileMode, TreeDigest};
pub use load::{validate_dir, validate_tree, FleetRepo, Validation};
pub use repo::{RepoError, RepoTree};
