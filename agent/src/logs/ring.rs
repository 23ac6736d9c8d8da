//! The agent's own recent log lines, kept in memory for a log request: a `tracing` layer beside
//! the JSON stdout layer ([`layer`]) pushes every event that passes the log filter, as one line
//! of text, into a bounded ring.
//!
//! Cheap when nobody asks: an event costs one formatted `String` (events are rare on an idle
//! agent: a few a minute at `info`), and the ring holds at most [`RING_LINES`] lines and
//! [`RING_BYTES`] bytes of text, the oldest dropped first; each line is cut to
//! [`RING_LINE_BYTES`]. It starts empty and grows only as lines come.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use fleet_config::protocol::logs::{clean_cut, LogLine};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Most lines kept (a power of two: the ring's buffer is allocated exactly).
pub const RING_LINES: usize = 256;
/// Most bytes of text kept, all lines together.
pub const RING_BYTES: usize = 48 * 1024;
/// Longest line kept; a longer one is cut (at a character boundary) and ends in `…`.
pub const RING_LINE_BYTES: usize = 1024;

/// Recent lines, oldest first, within [`RING_LINES`] and [`RING_BYTES`].
#[derive(Debug, Default)]
pub struct Ring {
    lines: VecDeque<(u64, String)>,
    bytes: usize,
    dropped: u64,
}

impl Ring {
    /// An empty ring (allocates nothing).
    pub const fn new() -> Ring {
        Ring {
            lines: VecDeque::new(),
            bytes: 0,
            dropped: 0,
        }
    }

    /// Adds a line written at `at_ms` (cut to [`RING_LINE_BYTES`]), dropping the oldest lines
    /// while the ring is over either bound.
    pub fn push(&mut self, at_ms: u64, text: &str) {
        let text = clean_cut(text, RING_LINE_BYTES);
        self.bytes += text.len();
        self.lines.push_back((at_ms, text));
        while self.lines.len() > RING_LINES || self.bytes > RING_BYTES {
            match self.lines.pop_front() {
                Some((_, old)) => {
                    self.bytes -= old.len();
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }

    /// The newest `n` lines, oldest first, and how many older ones the ring holds beside them.
    pub fn tail(&self, n: usize) -> (Vec<LogLine>, u64) {
        let skip = self.lines.len().saturating_sub(n);
        let lines = self
            .lines
            .iter()
            .skip(skip)
            .map(|(at_ms, text)| LogLine {
                at_ms: Some(*at_ms),
                stream: None,
                text: text.clone(),
            })
            .collect();
        (lines, skip as u64)
    }

    /// Lines held.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether it holds no line.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Bytes of text held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Lines dropped to stay within the bounds, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The process's ring, filled by [`layer`].
static RING: Mutex<Ring> = Mutex::new(Ring::new());

/// The newest `n` lines of the process's ring (see [`Ring::tail`]).
pub fn tail(n: usize) -> (Vec<LogLine>, u64) {
    RING.lock().unwrap_or_else(|e| e.into_inner()).tail(n)
}

/// The layer that fills the process's ring; install it beside the stdout layer, under the same
/// filter, so the ring holds what the log holds.
pub fn layer() -> RingLayer {
    RingLayer { ring: &RING }
}

/// A `tracing` layer writing each event as a line of text into a [`Ring`]:
/// `LEVEL target: span:span: message key=value …`.
#[derive(Debug, Clone, Copy)]
pub struct RingLayer {
    ring: &'static Mutex<Ring>,
}

impl RingLayer {
    /// A layer writing into `ring` instead of the process's (for tests).
    pub fn to(ring: &'static Mutex<Ring>) -> RingLayer {
        RingLayer { ring }
    }
}

impl<S> Layer<S> for RingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = String::with_capacity(128);
        let _ = write!(line, "{:<5} {}: ", meta.level(), meta.target());
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                line.push_str(span.name());
                line.push_str(": ");
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        line.push_str(&fields.message);
        line.push_str(&fields.rest);
        let at_ms = crate::journal::now_ms();
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(at_ms, &line);
    }
}

/// An event's message and its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if value.contains(char::is_whitespace) || value.is_empty() {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_line_bound() {
        let mut r = Ring::new();
        for i in 0..(RING_LINES + 10) {
            r.push(i as u64, &format!("line {i}"));
        }
        assert_eq!(r.len(), RING_LINES);
        assert_eq!(r.dropped(), 10);
        let (lines, older) = r.tail(3);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        let last = RING_LINES + 9;
        assert_eq!(
            texts,
            [
                format!("line {}", last - 2),
                format!("line {}", last - 1),
                format!("line {last}")
            ]
        );
        assert_eq!(older, (RING_LINES - 3) as u64);
        assert_eq!(lines[2].at_ms, Some(last as u64));
        assert_eq!(r.tail(10_000).0.len(), RING_LINES);
    }

    #[test]
    fn the_ring_keeps_within_its_byte_bound_and_cuts_long_lines() {
        let mut r = Ring::new();
        let long = "é".repeat(RING_LINE_BYTES);
        for i in 0..200 {
            r.push(i, &long);
            assert!(r.bytes() <= RING_BYTES, "{}", r.bytes());
        }
        let (lines, _) = r.tail(1);
        let t = &lines[0].text;
        assert!(
            t.len() <= RING_LINE_BYTES && t.ends_with('…'),
            "{}",
            t.len()
        );
        assert!(t.starts_with("éé"), "cut at a character boundary");
        assert_eq!(r.len(), RING_BYTES / t.len(), "as many as fit");
        assert!(Ring::new().is_empty());
    }

    #[test]
    fn the_layer_writes_events_with_their_level_target_spans_and_fields() {
        let ring: &'static Mutex<Ring> = Box::leak(Box::new(Mutex::new(Ring::new())));
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(RingLayer::to(ring));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("update", release = "abc");
            let _g = span.enter();
            tracing::info!(release = "0123abc", attempt = 2, "updating to the release");
            tracing::warn!(
                error = "connection refused: os error 111",
                "check-in failed"
            );
            tracing::debug!("below the filter: not kept");
        });
        let (lines, _) = ring.lock().expect("lock").tail(10);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "INFO  fleet_agent::logs::ring::tests: update: updating to the release release=0123abc attempt=2",
                "WARN  fleet_agent::logs::ring::tests: update: check-in failed error=\"connection refused: os error 111\"",
            ]
        );
        assert!(lines.iter().all(|l| l.at_ms.is_some_and(|t| t > 0)));
    }
}
