//! Times and sizes as people read them.

pub use crate::timefmt::{utc, utc_ms};

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`; `never` for none.
pub fn ago(ms: Option<i64>, now_ms: i64) -> String {
    let Some(t) = ms else {
        return "never".into();
    };
    let s = (now_ms - t).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// `1.5 GB`, `300 MB`.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0} MB", n / 1e6)
    } else {
        format!("{:.0} kB", n / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_000_000_000), "2026-11-30 00:53:20 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_ms(1_796_000_000_042), "2026-11-30 00:53:20.042");
        assert_eq!(ago(Some(0), 5_000), "5 s ago");
        assert_eq!(ago(Some(0), 7_200_000), "2 h ago");
        assert_eq!(ago(None, 1), "never");
        assert_eq!(bytes(1_500_000_000), "1.5 GB");
    }
}
