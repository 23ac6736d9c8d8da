//! The bounded queue between the process's log events and the Loki shipper: a writer for
//! `tracing-subscriber`'s formatter that turns each formatted line into an [`Entry`] and
//! offers it to the queue without waiting. A full (or closed) queue drops the line and counts
//! it, so logging never blocks nor grows memory, whatever Loki does.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// One log line on its way to Loki.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the event happened.
    pub at: SystemTime,
    /// Its level (the stream's `level` label).
    pub level: Level,
    /// The line, as on the console, without its newline.
    pub line: String,
}

/// What happened to the lines handed to Loki since the process started; read by the
/// binaries' `/metrics`.
#[derive(Debug, Default)]
pub struct ShipStats {
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl ShipStats {
    /// Lines Loki accepted.
    pub fn sent_total(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Lines dropped: the queue was full, Loki refused or did not answer their push, or the
    /// shutdown deadline passed first.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    pub(crate) fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The sending side of the queue, as a `MakeWriter` for a `tracing-subscriber` formatter.
#[derive(Debug, Clone)]
pub struct Queue {
    tx: mpsc::Sender<Entry>,
    stats: Arc<ShipStats>,
}

impl Queue {
    /// A queue of at most `capacity` lines, with its receiving end.
    pub(crate) fn new(capacity: usize, stats: Arc<ShipStats>) -> (Queue, mpsc::Receiver<Entry>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Queue { tx, stats }, rx)
    }

    /// Offers `entry`; drops and counts it when the queue is full or the shipper has stopped.
    pub fn offer(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.stats.add_dropped(1);
        }
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = EntryWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EntryWriter::new(self, Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        EntryWriter::new(self, *meta.level())
    }
}

/// Collects one formatted event and offers it to the queue when dropped (the formatter
/// writes an event in one go, then drops its writer).
#[derive(Debug)]
pub struct EntryWriter<'a> {
    queue: &'a Queue,
    level: Level,
    at: SystemTime,
    buf: Vec<u8>,
}

impl<'a> EntryWriter<'a> {
    fn new(queue: &'a Queue, level: Level) -> Self {
        EntryWriter {
            queue,
            level,
            at: SystemTime::now(),
            buf: Vec::new(),
        }
    }
}

impl io::Write for EntryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EntryWriter<'_> {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        if buf.is_empty() {
            return;
        }
        let line = String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        self.queue.offer(Entry {
            at: self.at,
            level: self.level,
            line,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let stats = Arc::new(ShipStats::default());
        let (queue, mut rx) = Queue::new(2, stats.clone());
        for i in 0..5 {
            let mut w = queue.make_writer();
            writeln!(w, "line {i}").expect("write");
        }
        assert_eq!(stats.dropped_total(), 3);
        assert_eq!(
            rx.try_recv().map(|e| e.line).ok().as_deref(),
            Some("line 0")
        );
        assert_eq!(
            rx.try_recv().map(|e| e.line).ok().as_deref(),
            Some("line 1")
        );
        assert!(rx.try_recv().is_err());
        // Closed (the shipper stopped): dropped and counted too.
        rx.close();
        queue.offer(Entry {
            at: SystemTime::now(),
            level: Level::WARN,
            line: "late".into(),
        });
        assert_eq!(stats.dropped_total(), 4);
    }

    #[test]
    fn a_writer_offers_one_entry_with_its_level_and_no_newline() {
        let stats = Arc::new(ShipStats::default());
        let (queue, mut rx) = Queue::new(8, stats.clone());
        {
            let mut w = EntryWriter::new(&queue, Level::ERROR);
            w.write_all(b"{\"a\":").expect("write");
            w.write_all(b"1}\n").expect("write");
        }
        // Nothing written: nothing offered.
        drop(queue.make_writer());
        let e = rx.try_recv().expect("one entry");
        assert_eq!(e.line, "{\"a\":1}");
        assert_eq!(e.level, Level::ERROR);
        assert!(rx.try_recv().is_err());
        assert_eq!(stats.dropped_total(), 0);
    }
}
