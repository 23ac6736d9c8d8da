//! The on-disk event buffer: events are numbered per device, written to `events/` before they
//! are sent, and deleted only once the controller acknowledges them, so a device that was
//! offline replays everything in order when it reconnects (and a power cut loses nothing).

use std::fs;
use std::path::PathBuf;

use fleet_config::protocol::{DeviceEvent, EventKind};

use crate::fsutil::{ctx, fsync_dir, write_atomic, FsError};
use crate::journal::now_ms;

/// Most events kept while offline; beyond it the oldest are dropped (and counted).
pub const MAX_BUFFERED: usize = 10_000;

/// The event buffer in a directory.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    next_seq: u64,
    dropped: u64,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

impl EventLog {
    /// Opens the buffer, continuing the sequence after the highest number ever used (kept in
    /// `events/next-seq` so acknowledged numbers are never reused).
    pub fn open(dir: PathBuf) -> Result<EventLog, FsError> {
        fs::create_dir_all(&dir).map_err(ctx("create", &dir))?;
        let stored = fs::read_to_string(dir.join("next-seq"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1);
        let highest_file = Self::seqs(&dir)?.last().copied().unwrap_or(0);
        Ok(EventLog {
            next_seq: stored.max(highest_file + 1),
            dir,
            dropped: 0,
        })
    }

    fn seqs(dir: &std::path::Path) -> Result<Vec<u64>, FsError> {
        let mut seqs: Vec<u64> = fs::read_dir(dir)
            .map_err(ctx("read", dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Records an event durably and returns its sequence number.
    pub fn append(&mut self, kind: EventKind) -> Result<u64, FsError> {
        let seq = self.next_seq;
        let event = DeviceEvent {
            seq,
            at_ms: now_ms(),
            kind,
        };
        let bytes = serde_json::to_vec(&event).unwrap_or_default();
        // The counter first: a crash after it only skips a number, never reuses one.
        write_atomic(&self.dir.join("next-seq"), (seq + 1).to_string().as_bytes())?;
        write_atomic(&self.dir.join(file_name(seq)), &bytes)?;
        self.next_seq = seq + 1;
        let seqs = Self::seqs(&self.dir)?;
        if seqs.len() > MAX_BUFFERED {
            for old in &seqs[..seqs.len() - MAX_BUFFERED] {
                let _ = fs::remove_file(self.dir.join(file_name(*old)));
                self.dropped += 1;
            }
        }
        Ok(seq)
    }

    /// Events not yet acknowledged, oldest first, at most `limit`. A corrupt file is skipped.
    pub fn pending(&self, limit: usize) -> Result<Vec<DeviceEvent>, FsError> {
        let mut out = Vec::new();
        for seq in Self::seqs(&self.dir)?.into_iter().take(limit) {
            let path = self.dir.join(file_name(seq));
            match fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<DeviceEvent>(&b).ok())
            {
                Some(e) => out.push(e),
                None => {
                    tracing::warn!(path = %path.display(), "skipping an unreadable buffered event")
                }
            }
        }
        Ok(out)
    }

    /// Drops every event up to and including `seq` (the controller stored them).
    pub fn ack(&mut self, seq: u64) -> Result<(), FsError> {
        for s in Self::seqs(&self.dir)?.into_iter().filter(|s| *s <= seq) {
            let path = self.dir.join(file_name(s));
            fs::remove_file(&path).map_err(ctx("remove", &path))?;
        }
        fsync_dir(&self.dir)
    }

    /// Events dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_reopen_are_ordered_and_never_reuse_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("events");
        let mut log = EventLog::open(p.clone()).expect("open");
        for _ in 0..3 {
            log.append(EventKind::SafeModeExited).expect("append");
        }
        drop(log);
        let mut log = EventLog::open(p.clone()).expect("reopen");
        let seqs: Vec<u64> = log
            .pending(100)
            .expect("pending")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        log.ack(3).expect("ack");
        assert!(log.pending(100).expect("pending").is_empty());
        drop(log);
        let mut log = EventLog::open(p).expect("reopen");
        assert_eq!(
            log.append(EventKind::SafeModeExited).expect("append"),
            4,
            "numbers are never reused"
        );
    }
}
