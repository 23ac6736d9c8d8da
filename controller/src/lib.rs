//! The fleet controller: decides which release each device runs and when (DESIGN.md,
//! "Controller"). Devices pull; the controller never connects to them.

pub mod alerts;
pub mod api;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod engine;
pub mod fleet_cache;
pub mod git_health;
pub mod leader;
pub mod listener;
pub mod longpoll;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod ratelimit;
pub mod reach;
pub mod rollout;
pub mod route;
pub mod routes;
pub mod rows_cache;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod state;
pub mod summary;
pub mod timefmt;
pub mod tls;
pub mod tokens;
pub mod watcher;
