//! Thin clients of the fleet controller, over its HTTP API only: what `fleetctl` (the on-call
//! CLI) and `fleet-sim` (simulated devices) are made of, and what the controller's tests and
//! benchmarks drive it with.

pub mod api;
pub mod logs;
pub mod sim;
pub mod sim_run;
pub mod tls;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
