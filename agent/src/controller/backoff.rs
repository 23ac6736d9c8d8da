//! Retry timing: exponential backoff with full jitter (the delay is drawn uniformly between 0
//! and `min(cap, base · 2^attempt)`), and the ±10% jitter on check-in intervals, so that a fleet
//! that lost its controller at the same instant does not come back in the same second.
//!
//! The random numbers come from a small seeded generator (SplitMix64): no dependency, and tests
//! replay exact sequences.

use std::time::Duration;

/// First retry ceiling.
pub const BASE: Duration = Duration::from_secs(1);
/// Largest retry ceiling: a device without its controller asks at least every 5 minutes.
pub const CAP: Duration = Duration::from_secs(5 * 60);
/// Relative jitter on check-in intervals (±10%).
pub const INTERVAL_JITTER: f64 = 0.10;

/// A SplitMix64 pseudo-random generator: fast, tiny, good enough for jitter (not for secrets).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator replaying the sequence of `seed`.
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator seeded from the process's hash randomness, the clock and the pid, so devices
    /// started at the same instant still draw different numbers.
    pub fn from_entropy() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(crate::journal::now_ms());
        h.write_u32(std::process::id());
        Rng(h.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Exponential backoff with full jitter; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: Rng,
}

impl Backoff {
    /// Backoff from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration, rng: Rng) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            rng,
        }
    }

    /// The ceiling of the next delay: `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next retry, drawn in `[0, ceiling)`; each call doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(self.rng.unit())
    }

    /// Failures since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `base` ± `fraction` (e.g. 0.1 for ±10%), uniformly.
pub fn jitter(base: Duration, fraction: f64, rng: &mut Rng) -> Duration {
    let f = 1.0 + fraction * (2.0 * rng.unit() - 1.0);
    base.mul_f64(f.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(BASE, CAP, Rng::seeded(1));
        let ceilings: Vec<u64> = (0..12)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d < c, "{d:?} < {c:?}");
                c.as_secs()
            })
            .collect();
        assert_eq!(
            ceilings,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
        );
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert_eq!(b.ceiling(), BASE);
        for _ in 0..1000 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), CAP, "no overflow after many failures");
    }

    #[test]
    fn a_seed_replays_the_same_delays() {
        let delays = |seed| {
            let mut b = Backoff::new(BASE, CAP, Rng::seeded(seed));
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(42), delays(42));
        assert_ne!(delays(42), delays(43));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        // At the cap, 10,000 devices must not retry together: the draws cover [0, cap).
        let mut b = Backoff::new(BASE, CAP, Rng::seeded(7));
        for _ in 0..20 {
            b.next_delay();
        }
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let d = b.next_delay();
            assert!(d < CAP);
            buckets[(d.as_secs_f64() / CAP.as_secs_f64() * 10.0) as usize] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!((800..1200).contains(n), "bucket {i}: {n} of 10000");
        }
    }

    #[test]
    fn interval_jitter_stays_within_ten_percent_both_ways() {
        let mut rng = Rng::seeded(3);
        let base = Duration::from_secs(60);
        let draws: Vec<Duration> = (0..1000)
            .map(|_| jitter(base, INTERVAL_JITTER, &mut rng))
            .collect();
        assert!(draws
            .iter()
            .all(|d| *d >= Duration::from_secs(54) && *d <= Duration::from_secs(66)));
        assert!(draws.iter().any(|d| *d < Duration::from_secs(57)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(63)));
    }
}
