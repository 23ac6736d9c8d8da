//! The Fleet demo: everything on one machine with one command.
//!
//! - [`prereq`]: what must be installed, with the command that installs it.
//! - [`images`]: the example fleet's images, built locally from Debian's static busybox.
//! - [`repo`]: the fleet repository, made from `examples/fleet-repo`, served by two
//!   `git daemon`s ([`gitd`]), and the releases the demo commits.
//! - [`stack`]: the controller, the agents and the simulator as child processes.
//! - [`progress`]: the rollout's waves in the terminal.
//! - [`run`]: the whole demo, and Ctrl-C.

pub mod cmd;
pub mod gitd;
pub mod images;
pub mod prereq;
pub mod progress;
pub mod repo;
pub mod run;
pub mod stack;
