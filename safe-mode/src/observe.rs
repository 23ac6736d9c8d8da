//! What the watchdog looks at, read-only, so looking can never disturb the agent: who holds the
//! agent's lock (from the kernel's `/proc/locks`, not by trying to take it, which could make a
//! starting agent fail) and the agent's heartbeat file.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fleet_config::liveness::Heartbeat;

/// The pid holding an exclusive `flock` on `lock_file`, from `/proc/locks`; `None` when nobody
/// does (or the file does not exist yet).
pub fn lock_holder(lock_file: &Path) -> Option<u32> {
    let meta = std::fs::metadata(lock_file).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino())
}

/// Linux's encoding of a device number (glibc's `major()` and `minor()`).
fn major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The holder of a granted FLOCK on (dev, ino) in the text of `/proc/locks`, e.g.
/// `1: FLOCK  ADVISORY  WRITE 24275 fe:00:5742604 0 EOF` (waiters are marked `->`).
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = major_minor(dev);
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, kind, _, _, pid, id, ..] = fields.as_slice() else {
            return None;
        };
        if *kind != "FLOCK" {
            return None; // POSIX locks, OFD locks and waiters ("->") are not the agent's
        }
        let mut parts = id.split(':');
        let (Some(ma), Some(mi), Some(i)) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        let same = u64::from_str_radix(ma, 16).ok() == Some(major)
            && u64::from_str_radix(mi, 16).ok() == Some(minor)
            && i.parse::<u64>().ok() == Some(ino);
        same.then(|| pid.parse().ok()).flatten()
    })
}

/// The agent's heartbeat at `path`, if it is readable and from this boot (`boot_id`).
pub fn heartbeat(path: &Path, boot_id: &str) -> Option<Heartbeat> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<Heartbeat>(&bytes)
        .ok()
        .filter(|h| h.boot_id == boot_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "1: POSIX  ADVISORY  WRITE 900 fe:00:77 0 EOF
2: -> FLOCK  ADVISORY  WRITE 901 fe:00:77 0 EOF
3: FLOCK  ADVISORY  WRITE 24275 fe:00:5742604 0 EOF
4: OFDLCK ADVISORY  READ -1 00:06:3 0 EOF
5: FLOCK  ADVISORY  WRITE 26553 103:02:77 0 EOF
";

    #[test]
    fn the_holder_is_found_by_device_and_inode() {
        let fe00 = 0xfe00;
        assert_eq!(holder_in(LOCKS, fe00, 5742604), Some(24275));
        // POSIX lock and a waiter on inode 77 of fe:00 are not a held flock.
        assert_eq!(holder_in(LOCKS, fe00, 77), None);
        // 103:02 is major 0x103 (a large major) minor 2.
        let dev = (0x103 << 8) | 2;
        assert_eq!(holder_in(LOCKS, dev, 77), Some(26553));
        assert_eq!(holder_in("", fe00, 5742604), None);
        assert_eq!(holder_in("garbage\n1: FLOCK\n", fe00, 1), None);
    }

    #[test]
    fn a_real_flock_is_seen_and_its_release_too() {
        use fs2::FileExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("update.lock");
        let f = std::fs::File::create(&path).expect("create");
        assert_eq!(lock_holder(&path), None);
        f.try_lock_exclusive().expect("lock");
        assert_eq!(lock_holder(&path), Some(std::process::id()));
        FileExt::unlock(&f).expect("unlock");
        assert_eq!(lock_holder(&path), None);
        assert_eq!(lock_holder(&dir.path().join("missing")), None);
    }
}
