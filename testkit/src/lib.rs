//! Test helpers shared by Fleet's crates (a dev-dependency only, and `make demo`'s lab CA): each one starts or checks a
//! real component, and skips loudly (or fails, under `FLEET_REQUIRE_*`) when it is missing.
//!
//! - [`git_daemon`]: `git daemon` servers on loopback, bare repositories, work trees.
//! - [`docker_guard`]: a label namespace per test, removed when the test ends.
//! - [`images`]: the test images built from Debian's busybox, and the Docker check.
//! - [`prometheus`]: a real Prometheus scraping a target, and `promtool check metrics`.
//! - [`alertmanager`]: a real Alertmanager, and a webhook receiver that records its deliveries.
//! - [`loki`]: a Loki stand-in that decodes the real push format (snappy, protobuf).
//! - [`faketime`]: Debian's libfaketime, to run the agent on another (or a faster) clock.
//! - [`partition`]: a TCP proxy that can be frozen (a network partition) and healed.
//! - [`registry`]: a container registry stand-in whose image pull stalls half-way.
//! - [`slow_link`]: a rate-limited TCP proxy in front of a server, that can stall half-way.
//! - [`tls`]: a lab certificate authority and server certificates for loopback, made on the fly.
//! - [`receivers`]: an HTTP receiver that records every request and answers programmed replies
//!   (the stand-in for Slack, Telegram and webhook endpoints).
//! - [`smtp`]: a real SMTP server (aiosmtpd from PyPI) with STARTTLS, SMTPS or none.

pub mod alertmanager;
pub mod docker_guard;
pub mod faketime;
pub mod git_daemon;
pub mod images;
pub mod loki;
pub mod partition;
pub mod prometheus;
pub mod receivers;
pub mod registry;
pub mod slow_link;
pub mod smtp;
pub mod tls;
