//! A Loki stand-in on loopback that decodes Loki's real push format: `POST /loki/api/v1/push`
//! with `Content-Type: application/x-protobuf`, a `logproto.PushRequest` compressed in the
//! snappy block format (`Content-Encoding: snappy` or none, as Loki accepts). The messages are
//! written here by hand from Loki's `pkg/push/push.proto`, independently of the sender's types,
//! so a sender that drifts from the format fails its test. It answers `204 No Content` like
//! Loki, records every stream (labels parsed from Loki's `{name="value", ...}` form), entry
//! and request header, and can be told to answer an error status or to hang, to test what a
//! sender does when Loki fails. Anything Loki would refuse is refused (`400`/`404`/`415`) and
//! recorded in [`LokiReceiver::malformed`], for the test to fail on. Stops on drop.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prost::Message as _;

/// Loki's push path.
pub const PUSH_PATH: &str = "/loki/api/v1/push";

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    /// The streams.
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
    /// `loki` or `otlp` (set by Loki itself; empty from clients).
    #[prost(string, tag = "2")]
    pub format: String,
}

/// `logproto.StreamAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// The label set, `{name="value", ...}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    /// The entries.
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    /// Unused by clients.
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    /// When (required by Loki).
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    /// The log line.
    #[prost(string, tag = "2")]
    pub line: String,
    /// Structured metadata (optional).
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// How the receiver answers pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `204 No Content`: stored, as Loki does.
    Accept,
    /// This status (e.g. `500`, or `429` as a rate-limited Loki), nothing stored.
    Status(u16),
    /// No answer at all: the request is held open until the receiver stops.
    Hang,
}

/// One log line Loki accepted, with its stream's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The stream's labels.
    pub labels: BTreeMap<String, String>,
    /// The entry's timestamp.
    pub at: SystemTime,
    /// The line.
    pub line: String,
}

/// One push request that decoded, whatever it was answered.
#[derive(Debug, Clone)]
pub struct Push {
    /// Its headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// What was answered (`0`: held open).
    pub answered: u16,
    /// Its lines.
    pub lines: Vec<Line>,
}

#[derive(Default)]
struct Shared {
    answer: Mutex<Option<Answer>>,
    pushes: Mutex<Vec<Push>>,
    malformed: Mutex<Vec<String>>,
    requests: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The receiver. [`LokiReceiver::url`] is the base URL a sender is configured with.
pub struct LokiReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LokiReceiver {
    /// Starts a receiver on a free loopback port, answering [`Answer::Accept`].
    pub fn start() -> LokiReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the Loki receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let s = shared.clone();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the receiver's runtime");
            rt.block_on(serve(listener, s, stopped));
            // Dropping the runtime ends every connection, held ones included.
        });
        LokiReceiver {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: Loki's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How the following pushes are answered.
    pub fn set_answer(&self, answer: Answer) {
        *lock(&self.shared.answer) = Some(answer);
    }

    /// Push requests received so far, refused, held and malformed ones included.
    pub fn requests(&self) -> u64 {
        *lock(&self.shared.requests)
    }

    /// Every push that decoded, in order, with what it was answered.
    pub fn pushes(&self) -> Vec<Push> {
        lock(&self.shared.pushes).clone()
    }

    /// The lines of accepted pushes, in order.
    pub fn lines(&self) -> Vec<Line> {
        lock(&self.shared.pushes)
            .iter()
            .filter(|p| p.answered == 204)
            .flat_map(|p| p.lines.iter().cloned())
            .collect()
    }

    /// Requests Loki would have refused, and why.
    pub fn malformed(&self) -> Vec<String> {
        lock(&self.shared.malformed).clone()
    }

    /// Waits (blocking the thread) until the accepted lines satisfy `pred`; panics after
    /// `timeout` with what arrived.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Line]) -> bool,
    ) -> Vec<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if pred(&lines) {
                return lines;
            }
            let malformed = self.malformed();
            assert!(malformed.is_empty(), "malformed pushes: {malformed:#?}");
            if Instant::now() > deadline {
                let shown: Vec<String> = lines
                    .iter()
                    .rev()
                    .take(30)
                    .map(|l| format!("{:?} {}", l.labels, l.line))
                    .collect();
                panic!(
                    "timed out waiting for {what}; {} request(s), {} line(s) accepted, the last:\n{}",
                    self.requests(),
                    lines.len(),
                    shown.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LokiReceiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

fn answer(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    *lock(&shared.requests) += 1;
    let refuse = |status: StatusCode, why: String| {
        lock(&shared.malformed).push(why.clone());
        Ok(answer(status, &why))
    };
    if req.uri().path() != PUSH_PATH {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("{} {}: not the push path", req.method(), req.uri()),
        );
    }
    if req.method() != hyper::Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {PUSH_PATH}: pushes are POSTed", req.method()),
        );
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let content_type = headers.get("content-type").map(String::as_str);
    if content_type != Some("application/x-protobuf") {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {content_type:?}: this receiver takes application/x-protobuf"),
        );
    }
    let encoding = headers.get("content-encoding").map(String::as_str);
    if !matches!(encoding, None | Some("snappy")) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {encoding:?} is not supported for protobuf pushes"),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let lines = match decode(&body) {
        Ok(lines) => lines,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    let given = lock(&shared.answer).unwrap_or(Answer::Accept);
    let answered = match given {
        Answer::Accept => 204,
        Answer::Status(s) => s,
        Answer::Hang => 0,
    };
    lock(&shared.pushes).push(Push {
        headers,
        answered,
        lines,
    });
    match given {
        Answer::Accept => Ok(answer(StatusCode::NO_CONTENT, "")),
        Answer::Status(s) => Ok(answer(
            StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "the receiver was told to refuse",
        )),
        Answer::Hang => std::future::pending().await,
    }
}

/// The lines of a push body, or why Loki would refuse it.
pub fn decode(body: &[u8]) -> Result<Vec<Line>, String> {
    let proto = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("the body is not in the snappy block format: {e}"))?;
    let req = PushRequest::decode(proto.as_slice())
        .map_err(|e| format!("the body is not a logproto.PushRequest: {e}"))?;
    let mut lines = Vec::new();
    for stream in req.streams {
        let labels = parse_labels(&stream.labels)
            .map_err(|e| format!("stream labels `{}`: {e}", stream.labels))?;
        for entry in stream.entries {
            let ts = entry
                .timestamp
                .ok_or_else(|| format!("an entry of {} has no timestamp", stream.labels))?;
            let at = u64::try_from(ts.seconds)
                .ok()
                .zip(u32::try_from(ts.nanos).ok().filter(|n| *n < 1_000_000_000))
                .map(|(s, n)| SystemTime::UNIX_EPOCH + Duration::new(s, n))
                .ok_or_else(|| format!("timestamp {}.{} is out of range", ts.seconds, ts.nanos))?;
            lines.push(Line {
                labels: labels.clone(),
                at,
                line: entry.line,
            });
        }
    }
    Ok(lines)
}

/// Loki's label set text, `{name="value", name2="value2"}`, as its parser reads it: names
/// `[A-Za-z_][A-Za-z0-9_]*`, values double-quoted with `\\`, `\"` and `\n` escapes, no
/// duplicate, at least one label.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("not enclosed in braces")?;
    let mut out = BTreeMap::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=').ok_or("a label without `=`")?;
        let name = name.trim();
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("`{name}` is not a label name"));
        }
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of `{name}` is not quoted"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("the value of `{name}` is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err(format!("a bad escape in the value of `{name}`")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!("`{name}` appears twice"));
        }
        rest = after[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("unexpected `{rest}` after `{name}`"));
        }
    }
    if out.is_empty() {
        return Err("no label".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_parse_as_loki_reads_them() {
        let l = parse_labels(
            "{component=\"agent\", device=\"pi-01\",level=\"info\", q=\"a\\\"b\\\\c\"}",
        )
        .expect("valid");
        assert_eq!(l["component"], "agent");
        assert_eq!(l["device"], "pi-01");
        assert_eq!(l["level"], "info");
        assert_eq!(l["q"], "a\"b\\c");
        for bad in [
            "component=\"agent\"",
            "{}",
            "{a=\"1\", a=\"2\"}",
            "{9a=\"1\"}",
            "{a=1}",
            "{a=\"1\" b=\"2\"}",
            "{a=\"open}",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_body_in_the_framed_snappy_format_or_without_timestamps_is_refused() {
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: "{a=\"b\"}".into(),
                entries: vec![EntryAdapter {
                    timestamp: None,
                    line: "x".into(),
                    structured_metadata: vec![],
                }],
                hash: 0,
            }],
            format: String::new(),
        };
        let raw = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .expect("compress");
        assert!(decode(&raw)
            .expect_err("no timestamp")
            .contains("no timestamp"));
        let mut framed = Vec::new();
        {
            use std::io::Write as _;
            let mut w = snap::write::FrameEncoder::new(&mut framed);
            w.write_all(&req.encode_to_vec()).expect("write");
        }
        assert!(decode(&framed).is_err());
    }
}
