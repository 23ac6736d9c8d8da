//! Alerts (DESIGN.md, "Alerts"; issue 16): the ten failure modes and the alerting's own
//! health, evaluated by the leader from check-ins, device events and the controller's state,
//! grouped, deduplicated, damped, acknowledged or silenced by operators, stored across
//! restarts and delivered through the notifiers ([`crate::notify`]).
//!
//! - [`model`]: what is kept (alerts, members, what was said, acks, silences);
//! - [`facts`]: what holds now, read from an observation of the controller's state;
//! - [`engine`]: the pure decisions (facts in, alerts and messages out), tested by tables;
//! - [`text`]: what a message says;
//! - [`settings`]: timing, links, heartbeat and routes, from controller.yaml;
//! - [`run`]: the leader's loop around the engine;
//! - [`deliver`]: the delivery worker (outbox, retries, notifier health);
//! - [`heartbeat`]: the dead man's switch.

pub mod deliver;
pub mod engine;
pub mod facts;
pub mod heartbeat;
pub mod model;
pub mod run;
pub mod settings;
pub mod text;

pub use deliver::Runtime;
