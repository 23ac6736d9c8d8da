//! Fixed-window attempt limits (pairing-code guesses, enrollment floods), per key.

use std::collections::HashMap;
use std::sync::Mutex;

/// At most `max` attempts per key in each `window_ms`.
#[derive(Debug)]
pub struct RateLimit {
    max: u32,
    window_ms: i64,
    seen: Mutex<HashMap<String, (i64, u32)>>,
}

impl RateLimit {
    /// A limiter.
    pub fn new(max: u32, window_ms: i64) -> RateLimit {
        RateLimit {
            max,
            window_ms,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt for `key` at `now_ms`; `Err(seconds to wait)` when over the limit.
    pub fn check(&self, key: &str, now_ms: i64) -> Result<(), u64> {
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.len() > 100_000 {
            // Bounded memory under a flood of distinct keys: forget finished windows.
            let window = self.window_ms;
            seen.retain(|_, (start, _)| now_ms - *start < window);
        }
        let entry = seen.entry(key.to_owned()).or_insert((now_ms, 0));
        if now_ms - entry.0 >= self.window_ms {
            *entry = (now_ms, 0);
        }
        if entry.1 >= self.max {
            let wait_ms = (entry.0 + self.window_ms - now_ms).max(0);
            return Err(((wait_ms + 999) / 1000) as u64);
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_window() {
        let r = RateLimit::new(3, 60_000);
        for _ in 0..3 {
            assert!(r.check("a", 0).is_ok());
        }
        assert_eq!(r.check("a", 1_000), Err(59));
        assert!(r.check("b", 1_000).is_ok(), "other keys are not affected");
        assert!(r.check("a", 60_000).is_ok(), "a new window starts");
    }
}
