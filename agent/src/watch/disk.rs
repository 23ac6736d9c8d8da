//! Disk while idle: the data directory's free space against `disk_free_below`, sampled by the
//! watcher, not only before an update.
//!
//! Below the threshold the agent prunes (see `update/gc.rs`: releases beyond `current` and
//! `previous`, their unused images, leftovers of a corrupt Git cache) and starts no update.
//! It counts as recovered only a tenth above the threshold, so a disk hovering at it does not
//! flap between the two.

/// Whether the disk is low, given whether it was at the last sample.
pub fn low(was_low: bool, free: Option<u64>, threshold: u64) -> bool {
    match free {
        None => was_low,
        Some(f) if was_low => f < threshold.saturating_add(threshold / 10),
        Some(f) => f < threshold,
    }
}

/// Bytes in MiB, for messages.
pub fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_below_the_threshold_recovered_a_tenth_above() {
        let t = 100 << 20;
        let cases = [
            (false, Some(t), false),
            (false, Some(t - 1), true),
            (true, Some(t), true),
            (true, Some(t + t / 10 - 1), true),
            (true, Some(t + t / 10), false),
            (true, None, true),
            (false, None, false),
        ];
        for (was, free, want) in cases {
            assert_eq!(low(was, free, t), want, "was {was}, {free:?}");
        }
        assert!(!low(false, Some(0), 0), "a threshold of 0 turns it off");
    }
}
