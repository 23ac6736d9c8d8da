//! Alerts (DESIGN.md, "Alerts"; issue 16): the ten failure modes and the alerting's own
//! health, evaluated by the leader from check-ins, device events and the controller's state,
//! grouped, deduplicated, damped, acknowledged or silenced by operators, stored across
//! restarts and delivered through the notifiers ([`crate::notify`]).
//!
//! - [`model`]: what is kept (alerts, members, what was said, acks, silences);
//! - [`engine`]: the pure decisions (facts in, alerts and messages out), tested by tables;

pub mod engine;
pub mod model;
