//! Loki's push body: a `logproto.PushRequest` (one stream per level, each labelled with the
//! binary's labels), protobuf-encoded and compressed in the snappy *block* format, as Loki's
//! own clients send it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use loki_api::logproto::{EntryAdapter, PushRequest, StreamAdapter};
use loki_api::prost::Message as _;
use tracing::Level;

use crate::queue::Entry;

/// The level label's values, as `tracing-loki` writes them.
pub(crate) fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

const LEVELS: [Level; 5] = [
    Level::TRACE,
    Level::DEBUG,
    Level::INFO,
    Level::WARN,
    Level::ERROR,
];

/// The label sets of this process's streams, one per level, in Loki's text form
/// (`{component="agent", device="pi-01", level="info", site="berlin"}`).
#[derive(Debug, Clone)]
pub(crate) struct StreamLabels {
    by_level: [String; 5],
}

impl StreamLabels {
    /// `labels` (static, and the binary's `device` and `component`) plus `level`.
    pub(crate) fn new(labels: &BTreeMap<String, String>) -> Self {
        let by_level = LEVELS.map(|level| {
            let mut all = labels.clone();
            all.insert("level".to_owned(), level_name(level).to_owned());
            let mut text = String::from("{");
            for (i, (name, value)) in all.iter().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                let _ = write!(text, "{name}=\"{}\"", escape(value));
            }
            text.push('}');
            text
        });
        StreamLabels { by_level }
    }

    fn for_level(&self, level: Level) -> &str {
        let i = LEVELS.iter().position(|l| *l == level).unwrap_or(2);
        &self.by_level[i]
    }
}

/// A label value quoted as Loki's (PromQL's) parser reads it.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The body of one push of `batch`.
pub(crate) fn encode(labels: &StreamLabels, batch: &[Entry]) -> Result<Vec<u8>, snap::Error> {
    let mut streams: Vec<StreamAdapter> = Vec::new();
    for e in batch {
        let text = labels.for_level(e.level);
        let i = match streams.iter().position(|s| s.labels == text) {
            Some(i) => i,
            None => {
                streams.push(StreamAdapter {
                    labels: text.to_owned(),
                    entries: Vec::new(),
                    hash: 0,
                });
                streams.len() - 1
            }
        };
        streams[i].entries.push(EntryAdapter {
            timestamp: Some(e.at.into()),
            line: e.line.clone(),
        });
    }
    let proto = PushRequest { streams }.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&proto)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn labels_are_sorted_quoted_and_escaped() {
        let labels = BTreeMap::from([
            ("site".to_owned(), "ber\"lin".to_owned()),
            ("device".to_owned(), "pi-01".to_owned()),
            ("component".to_owned(), "agent".to_owned()),
        ]);
        let s = StreamLabels::new(&labels);
        assert_eq!(
            s.for_level(Level::WARN),
            "{component=\"agent\", device=\"pi-01\", level=\"warn\", site=\"ber\\\"lin\"}"
        );
        assert!(s.for_level(Level::TRACE).contains("level=\"trace\""));
    }

    #[test]
    fn a_batch_decodes_back_to_one_stream_per_level() {
        let labels = StreamLabels::new(&BTreeMap::from([(
            "component".to_owned(),
            "agent".to_owned(),
        )]));
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let entry = |level, line: &str| Entry {
            at: t,
            level,
            line: line.into(),
        };
        let batch = [
            entry(Level::INFO, "a"),
            entry(Level::ERROR, "b"),
            entry(Level::INFO, "c"),
        ];
        let body = encode(&labels, &batch).expect("encode");
        let proto = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy block format");
        let req = PushRequest::decode(proto.as_slice()).expect("protobuf");
        assert_eq!(req.streams.len(), 2);
        assert_eq!(
            req.streams[0].labels,
            "{component=\"agent\", level=\"info\"}"
        );
        let lines: Vec<&str> = req.streams[0]
            .entries
            .iter()
            .map(|e| e.line.as_str())
            .collect();
        assert_eq!(lines, ["a", "c"]);
        let ts = req.streams[0].entries[0].timestamp.expect("ts");
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 5));
        assert_eq!(
            req.streams[1].labels,
            "{component=\"agent\", level=\"error\"}"
        );
    }
}
