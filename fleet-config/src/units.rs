//! Units an operator writes by hand: durations (`15m`, `1h30m`), percentages (`5%`) and byte
//! sizes (`500MB`, `512m`).

use std::fmt;
use std::time::Duration;

/// A duration that could not be read; the message says what a good one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad duration `{input}`: {reason}; write a number and a unit, e.g. 30s, 15m or 1h30m (units: ms, s, m, h, d)")]
pub struct DurationError {
    /// What was written.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses `500ms`, `30s`, `15m`, `1h30m`, `2d`. Components must come in decreasing units
/// and each unit at most once; a bare number is refused because its unit would be a guess.
///
/// ```
/// use std::time::Duration;
/// use fleet_config::units::parse_duration;
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert!(parse_duration("90").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    let mut last_rank = usize::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let (num, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(err("a number needs a unit"));
        }
        let (unit, after) = after.split_at(unit_len);
        let (rank, millis) = match unit {
            "d" => (0, 86_400_000u64),
            "h" => (1, 3_600_000),
            "m" => (2, 60_000),
            "s" => (3, 1_000),
            "ms" => (4, 1),
            _ => return Err(err("unknown unit")),
        };
        if last_rank != usize::MAX && rank <= last_rank {
            return Err(err("units must go from largest to smallest, each once"));
        }
        last_rank = rank;
        let n: u64 = num.parse().map_err(|_| err("number too large"))?;
        total = n
            .checked_mul(millis)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("number too large"))?;
        rest = after;
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration the way operators write it (`1h30m`, `45s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// A percentage with two decimals of precision, 0% to 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent {
    /// Hundredths of a percent: 5% is 500.
    basis: u32,
}

/// A percentage that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad percentage `{input}`: {reason}")]
pub struct PercentError {
    /// What was written.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Percent {
    /// 100%.
    pub const FULL: Percent = Percent { basis: 10_000 };

    /// From a whole number of percent; values above 100 are clamped.
    pub const fn from_whole(p: u32) -> Percent {
        let basis = if p > 100 { 10_000 } else { p * 100 };
        Percent { basis }
    }

    /// Parses `5%` or `2.5%`. With `allow_bare`, `5` is read as 5% too (wave sizes, where
    /// DESIGN.md writes `percent: 5`).
    pub fn parse(input: &str, allow_bare: bool) -> Result<Percent, PercentError> {
        let err = |reason| PercentError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        let number = match s.strip_suffix('%') {
            Some(n) => n.trim_end(),
            None if allow_bare => s,
            None => return Err(err("write it with a percent sign, e.g. `5%`")),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("expected a number from 0% to 100%, e.g. `5%`"));
        }
        if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("at most two decimals, e.g. `2.5%`"));
        }
        if whole.len() > 3 {
            return Err(err("must be between 0% and 100%"));
        }
        let w: u32 = whole
            .parse()
            .map_err(|_| err("expected a number from 0% to 100%"))?;
        let mut f: u32 = if frac.is_empty() {
            0
        } else {
            frac.parse()
                .map_err(|_| err("expected a number from 0% to 100%"))?
        };
        if frac.len() == 1 {
            f *= 10;
        }
        let basis = w * 100 + f;
        if basis > 10_000 {
            return Err(err("must be between 0% and 100%"));
        }
        Ok(Percent { basis })
    }

    /// Hundredths of a percent (5% is 500).
    pub fn basis_points(self) -> u32 {
        self.basis
    }

    /// As a fraction, 5% is 0.05.
    pub fn fraction(self) -> f64 {
        f64::from(self.basis) / 10_000.0
    }

    /// `ceil(n * self)`, exactly, without floating point: the number of items out of `n`
    /// this percentage covers, rounded up.
    ///
    /// ```
    /// use fleet_config::units::Percent;
    /// let five = Percent::parse("5%", false).expect("valid");
    /// assert_eq!(five.of_rounded_up(10), 1); // a 10-device fleet still gets a 5% wave
    /// assert_eq!(five.of_rounded_up(200), 10);
    /// ```
    pub fn of_rounded_up(self, n: u64) -> u64 {
        (n * u64::from(self.basis)).div_ceil(10_000)
    }

    /// True when `count` out of `total` is strictly above this percentage (exact arithmetic).
    pub fn is_exceeded_by(self, count: u64, total: u64) -> bool {
        total > 0 && count * 10_000 > u64::from(self.basis) * total
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.basis / 100;
        let frac = self.basis % 100;
        if frac == 0 {
            write!(f, "{whole}%")
        } else if frac % 10 == 0 {
            write!(f, "{whole}.{}%", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}%")
        }
    }
}

/// A byte size that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad size `{input}`: {reason}; write a number and a unit, e.g. 512MB, 1GB or 64k (units: b, k, m, g, t with an optional b or ib, all powers of 1024)")]
pub struct SizeError {
    /// What was written.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a byte size the way Docker reads `mem_limit`: `512m`, `1g`, `500MB`, `64KiB`,
/// or a plain number of bytes. Units are powers of 1024.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    let digits = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    if digits == 0 {
        return Err(err("expected a number"));
    }
    let (num, unit) = s.split_at(digits);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(err("unknown unit")),
    };
    let value: f64 = num.parse().map_err(|_| err("expected a number"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 / 2.0 {
        return Err(err("too large"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "15",
            "m",
            "15 minutes",
            "1m1h",
            "5s5s",
            "1.5s",
            "-1s",
            "15x",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} must be refused");
        }
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn duration_round_trip() {
        for s in ["1h30m", "45s", "250ms", "2d3h", "0s", "1m500ms"] {
            let d = parse_duration(s).expect("valid");
            assert_eq!(format_duration(d), s);
        }
    }

    #[test]
    fn percents() {
        assert_eq!(
            Percent::parse("5%", false).map(Percent::basis_points),
            Ok(500)
        );
        assert_eq!(
            Percent::parse("2.5%", false).map(Percent::basis_points),
            Ok(250)
        );
        assert_eq!(
            Percent::parse("0.25%", false).map(Percent::basis_points),
            Ok(25)
        );
        assert_eq!(
            Percent::parse("100%", false).map(Percent::basis_points),
            Ok(10_000)
        );
        assert_eq!(
            Percent::parse("25", true).map(Percent::basis_points),
            Ok(2_500)
        );
        for bad in ["5", "101%", "-1%", "abc%", "%", "1.234%", "1e2%", "1000%"] {
            assert!(Percent::parse(bad, false).is_err(), "{bad} must be refused");
        }
        assert_eq!(Percent::from_whole(5).to_string(), "5%");
        assert_eq!(
            Percent::parse("2.5%", false).map(|p| p.to_string()),
            Ok("2.5%".into())
        );
    }

    #[test]
    fn percent_arithmetic_is_exact() {
        let five = Percent::from_whole(5);
        assert_eq!(five.of_rounded_up(10), 1);
        assert_eq!(five.of_rounded_up(100), 5);
        assert_eq!(five.of_rounded_up(101), 6);
        assert_eq!(Percent::from_whole(25).of_rounded_up(10), 3);
        assert!(!five.is_exceeded_by(5, 100));
        assert!(five.is_exceeded_by(6, 100));
        assert!(five.is_exceeded_by(1, 10));
        assert!(!five.is_exceeded_by(0, 0));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("500MB"), Ok(500 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1024"), Ok(1024));
        for bad in ["", "m", "12 parsecs", "1.2.3m"] {
            assert!(parse_size(bad).is_err(), "{bad} must be refused");
        }
    }
}
