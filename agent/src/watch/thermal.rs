//! Heat: the CPU temperature from the kernel's thermal zones, and whether updates must wait.
//!
//! Each zone's `temp` file (`<sysfs_root>/class/thermal/thermal_zone*/temp`) holds one integer
//! in millidegrees Celsius (`85000` is 85 °C). The hottest zone counts: on a Raspberry Pi there
//! is one (`cpu-thermal`); where there are several, the hottest is what throttles.

use std::path::Path;

/// A thermal zone's `temp` could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: expected millidegrees Celsius such as `48312`, found `{found}`")]
pub struct BadReading {
    /// The file.
    pub path: String,
    /// What it held.
    pub found: String,
}

/// One zone's `temp` text in °C.
pub fn parse_millidegrees(text: &str, path: &str) -> Result<f64, BadReading> {
    text.trim()
        .parse::<i64>()
        .map(|m| m as f64 / 1000.0)
        .map_err(|_| BadReading {
            path: path.to_owned(),
            found: text.trim().chars().take(40).collect(),
        })
}

/// The hottest zone under `sysfs_root` in °C; `Ok(None)` when there are no zones (not every
/// machine has them). An unreadable zone is skipped; a zone whose text is not a number is an
/// error naming the file.
pub fn read_hottest(sysfs_root: &Path) -> Result<Option<f64>, BadReading> {
    let dir = sysfs_root.join("class/thermal");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut hottest: Option<f64> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("thermal_zone") {
            continue;
        }
        let path = entry.path().join("temp");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let t = parse_millidegrees(&text, &path.display().to_string())?;
        hottest = Some(hottest.map_or(t, |h: f64| h.max(t)));
    }
    Ok(hottest)
}

/// Whether the device is too hot to start an update, given whether it was at the last sample:
/// it becomes hot above `above`, and stays hot until it is below `above - hysteresis`, so a
/// temperature hovering at the threshold does not flap. No reading: not hot.
pub fn too_hot(was_hot: bool, celsius: Option<f64>, above: f64, hysteresis: f64) -> bool {
    match celsius {
        None => false,
        Some(t) if was_hot => t >= above - hysteresis,
        Some(t) => t > above,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millidegrees_are_parsed_and_garbage_is_named() {
        assert_eq!(parse_millidegrees("85000\n", "t"), Ok(85.0));
        assert_eq!(parse_millidegrees("-2500", "t"), Ok(-2.5));
        let e = parse_millidegrees("hot", "/sys/x/temp").expect_err("garbage");
        assert_eq!(
            e.to_string(),
            "/sys/x/temp: expected millidegrees Celsius such as `48312`, found `hot`"
        );
    }

    #[test]
    fn hot_above_the_threshold_and_cool_only_below_the_hysteresis() {
        // (was hot, reading, expected)
        let cases = [
            (false, Some(79.9), false),
            (false, Some(80.0), false),
            (false, Some(80.1), true),
            (true, Some(79.0), true),
            (true, Some(75.0), true),
            (true, Some(74.9), false),
            (true, None, false),
            (false, None, false),
        ];
        for (was, t, want) in cases {
            assert_eq!(too_hot(was, t, 80.0, 5.0), want, "was {was}, {t:?}");
        }
    }

    #[test]
    fn the_hottest_zone_counts_and_no_zones_is_no_reading() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_hottest(root.path()), Ok(None));
        for (zone, t) in [("thermal_zone0", "51000\n"), ("thermal_zone1", "85000\n")] {
            let d = root.path().join("class/thermal").join(zone);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("temp"), t).expect("write");
        }
        std::fs::create_dir_all(root.path().join("class/thermal/cooling_device0")).expect("mkdir");
        assert_eq!(read_hottest(root.path()), Ok(Some(85.0)));
    }
}
