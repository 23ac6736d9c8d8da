//! Fleet's Git layer, shared by the agent and the controller's watcher: a bare cache, failover
//! fetches, and exact checkouts.
//!
//! A release is a commit of the fleet repository, named by its sha. The agent
//!
//! 1. opens its cache with [`GitCache::open_or_init`] (a corrupt cache is replaced: it only holds
//!    what can be fetched again);
//! 2. fetches with [`GitCache::fetch`] (standalone mode: follow the branch head) or makes sure the
//!    release the controller named is present with [`GitCache::fetch_commit`], trying the
//!    [`Endpoint`]s in order, each until it falls silent for `failover_timeout`;
//! 3. writes that exact commit's tree into a new staging directory with [`GitCache::checkout`].
//!
//! The sha pins the content: a mirror can be down, late or wrong, but it cannot make a sha name
//! other files. Every step is synchronous; run it on a blocking thread from async code.

mod cache;
mod checkout;
mod endpoint;
mod error;
mod fetch;
mod sync;

pub use cache::{
    configure_libgit2, tracking_ref, CacheRecovery, GitCache, SOCKET_CONNECT_TIMEOUT,
    SOCKET_IO_TIMEOUT,
};
pub use checkout::{CheckoutSummary, MAX_TREE_DEPTH};
pub use endpoint::{Auth, Endpoint, DEFAULT_SSH_USERNAME, DEFAULT_TOKEN_USERNAME};
pub use error::{EndpointFailure, GitError};
pub use fetch::{abandoned_fetch_workers, CommitOutcome, FetchOutcome};
