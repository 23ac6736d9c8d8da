//! Clock: a wall clock far from the controller's, or before any plausible date (a board without
//! a real-time clock boots in 1970 until NTP answers).
//!
//! Nothing the agent decides depends on the wall clock: waits, backoff, supervision and the
//! watchers run on the monotonic clock (`tokio::time::Instant`), releases are pruned by staging
//! order, events by sequence number. Wall-clock times are only recorded (for people) and
//! reported; this module says when they cannot be trusted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// No correct clock is before 2024-01-01T00:00:00Z.
pub const PLAUSIBLE_FLOOR_UNIX: u64 = 1_704_067_200;

/// True when `now` is before [`PLAUSIBLE_FLOOR_UNIX`].
pub fn implausible(now: SystemTime) -> bool {
    now.duration_since(UNIX_EPOCH)
        .map_or(true, |d| d.as_secs() < PLAUSIBLE_FLOOR_UNIX)
}

/// The controller's time from an HTTP `Date` header (`Tue, 02 Dec 2026 04:20:00 GMT`).
pub fn parse_date(header: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(header.trim()).ok()
}

/// How far the local clock is ahead of `server` (negative: behind), in seconds.
pub fn skew_seconds(local: SystemTime, server: SystemTime) -> f64 {
    match local.duration_since(server) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Whether a skew is worth reporting: beyond `max` either way. The `Date` header has a one
/// second resolution and the answer takes time to arrive, so `max` is never below 1 s.
pub fn skewed(skew_seconds: f64, max: Duration) -> bool {
    skew_seconds.abs() > max.as_secs_f64().max(1.0)
}

/// A duration in words, for a problem's detail: "3y 12d", "2h 5m", "42s".
pub fn human(seconds: f64) -> String {
    let s = seconds.abs().round() as u64;
    let (y, d, h, m) = (s / 31_536_000, s / 86_400 % 365, s / 3600 % 24, s / 60 % 60);
    if y > 0 {
        format!("{y}y {d}d")
    } else if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_catches_a_board_that_booted_in_1970() {
        assert!(implausible(UNIX_EPOCH));
        assert!(implausible(UNIX_EPOCH + Duration::from_secs(86_400 * 365)));
        assert!(!implausible(
            UNIX_EPOCH + Duration::from_secs(PLAUSIBLE_FLOOR_UNIX)
        ));
        assert!(!implausible(SystemTime::now()));
    }

    #[test]
    fn skew_from_a_date_header_both_ways() {
        let server = parse_date("Wed, 02 Dec 2026 04:20:00 GMT").expect("date");
        assert_eq!(
            server.duration_since(UNIX_EPOCH).expect("after").as_secs(),
            1_796_185_200
        );
        let ahead = server + Duration::from_secs(3 * 365 * 86_400);
        assert_eq!(skew_seconds(ahead, server), 94_608_000.0);
        assert_eq!(skew_seconds(server, ahead), -94_608_000.0);
        assert!(skewed(-94_608_000.0, Duration::from_secs(300)));
        assert!(!skewed(299.0, Duration::from_secs(300)));
        assert!(
            !skewed(0.9, Duration::ZERO),
            "below the header's resolution"
        );
        assert_eq!(parse_date("yesterday"), None);
        assert_eq!(human(94_608_000.0), "3y 0d");
        assert_eq!(human(-125.0), "2m 5s");
    }
}
