//! Power: the Raspberry Pi firmware's throttled flags (under-voltage) and a "power failing"
//! signal from a UPS.
//!
//! The flags are what `vcgencmd get_throttled` prints (`throttled=0x50005`) and what the
//! firmware driver exposes in sysfs (`/sys/devices/platform/soc/soc:firmware/get_throttled`,
//! hexadecimal without `0x`, e.g. `50005`). Both forms, and `0x50005`, are read. The bits:
//!
//! | bit | meaning                                  |
//! |-----|------------------------------------------|
//! | 0   | under-voltage now                        |
//! | 1   | ARM frequency capped now                 |
//! | 2   | throttled now                            |
//! | 3   | soft temperature limit active now        |
//! | 16  | under-voltage has occurred since boot    |
//! | 17  | frequency capping has occurred           |
//! | 18  | throttling has occurred                  |
//! | 19  | soft temperature limit has occurred      |
//!
//! Under-voltage now (bit 0) holds updates back: a brown-out while writing a release or pulling
//! images is how SD cards get corrupted. The rest is reported in metrics.

/// The throttled flags could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: expected throttled flags such as `throttled=0x50005` or `50005` (hexadecimal), found `{found}`")]
pub struct BadFlags {
    /// The file.
    pub path: String,
    /// What it held.
    pub found: String,
}

/// The firmware's throttled flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttled(pub u32);

impl Throttled {
    /// Bit 0: under-voltage now.
    pub fn under_voltage(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1: ARM frequency capped now.
    pub fn freq_capped(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// Bit 2: throttled now.
    pub fn throttled(self) -> bool {
        self.0 & (1 << 2) != 0
    }
    /// Bit 16: under-voltage has occurred since boot.
    pub fn under_voltage_since_boot(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Bit 17: frequency capping has occurred since boot.
    pub fn freq_capped_since_boot(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    /// Bit 18: throttling has occurred since boot.
    pub fn throttled_since_boot(self) -> bool {
        self.0 & (1 << 18) != 0
    }

    /// Parses `throttled=0x50005`, `0x50005` or `50005` (all hexadecimal).
    pub fn parse(text: &str, path: &str) -> Result<Throttled, BadFlags> {
        let t = text.trim();
        let t = t.strip_prefix("throttled=").unwrap_or(t);
        let hex = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        u32::from_str_radix(hex, 16)
            .ok()
            .filter(|_| !hex.is_empty())
            .map(Throttled)
            .ok_or_else(|| BadFlags {
                path: path.to_owned(),
                found: text.trim().chars().take(40).collect(),
            })
    }
}

impl std::fmt::Display for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "throttled=0x{:x}", self.0)?;
        let mut now = Vec::new();
        if self.under_voltage() {
            now.push("under-voltage");
        }
        if self.freq_capped() {
            now.push("frequency capped");
        }
        if self.throttled() {
            now.push("throttled");
        }
        if !now.is_empty() {
            write!(f, " (now: {})", now.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_real_format_is_read() {
        for text in ["throttled=0x50005\n", "0x50005", "50005\n"] {
            let t = Throttled::parse(text, "f").expect(text);
            assert_eq!(t, Throttled(0x50005), "{text}");
            assert!(t.under_voltage() && t.throttled() && !t.freq_capped());
            assert!(t.under_voltage_since_boot() && t.throttled_since_boot());
            assert!(!t.freq_capped_since_boot());
        }
        let healthy = Throttled::parse("throttled=0x0", "f").expect("zero");
        assert!(!healthy.under_voltage());
        // Once under-voltage, recovered: only the since-boot bit.
        let past = Throttled::parse("10000", "f").expect("past");
        assert!(!past.under_voltage() && past.under_voltage_since_boot());
        assert_eq!(
            Throttled(0x50005).to_string(),
            "throttled=0x50005 (now: under-voltage, throttled)"
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        for text in ["", "throttled=", "0xZZ", "yes", "throttled=0x1ffffffff"] {
            let e = Throttled::parse(text, "/sys/get_throttled").expect_err(text);
            assert!(e
                .to_string()
                .starts_with("/sys/get_throttled: expected throttled flags"));
        }
    }
}
