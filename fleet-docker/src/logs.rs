//! The newest lines of this namespace's containers (stdout and stderr, with the engine's
//! timestamps), for a device's answer to a log request (`fleet_config::protocol::logs`).
//!
//! Bounded in size and time: the engine is asked for the last `lines` lines only, each line is
//! cut to `MAX_LOG_LINE_BYTES` as it is read (so a container that writes megabyte lines costs
//! no more memory than one that writes short ones), and each container's read stops after
//! [`READ_TIMEOUT`], keeping what came. A container that is gone, has written nothing, or whose
//! logging driver keeps no logs is reported as such in its source; only listing the
//! namespace's containers failing is an error.

use std::collections::VecDeque;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use fleet_config::protocol::logs::{
    clean_cut, LogLine, LogSource, LogStatus, LogStream, MAX_LOG_DETAIL_BYTES, MAX_LOG_LINES,
    MAX_LOG_LINE_BYTES,
};
use futures_util::StreamExt;

use super::containers::{self, display_name};
use super::error::{is_not_found, DockerError};
use super::labels::{LABEL_SERVICE, LABEL_STACK};
use super::Runtime;

/// Longest one container's logs are read for; what came by then is kept.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Runtime {
    /// The newest `lines` lines (at most `MAX_LOG_LINES`) of each container of this namespace
    /// (every stack, the safe-mode stack included) whose name `stack/service` `select` accepts,
    /// sorted by that name. Errors only when the containers cannot be listed.
    #[tracing::instrument(skip(self, select), fields(namespace = %self.namespace), err)]
    pub async fn container_logs(
        &self,
        lines: u32,
        select: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<LogSource>, DockerError> {
        let lines = lines.clamp(1, MAX_LOG_LINES);
        let listed = containers::list(&self.docker, &self.namespace, None).await?;
        let mut found: Vec<(String, String, String)> = listed
            .iter()
            .filter_map(|c| {
                let label = |k: &str| c.labels.as_ref().and_then(|l| l.get(k)).cloned();
                let container = display_name(c);
                let name = match (label(LABEL_STACK), label(LABEL_SERVICE)) {
                    (Some(stack), Some(service)) => format!("{stack}/{service}"),
                    _ => container.clone(),
                };
                let id = c.id.clone()?;
                select(&name).then_some((name, container, id))
            })
            .collect();
        found.sort();
        let mut out = Vec::with_capacity(found.len());
        for (name, container, id) in found {
            let mut source = read(&self.docker, &id, lines).await;
            source.name = name;
            source.container = Some(container);
            out.push(source);
        }
        Ok(out)
    }
}

/// One container's newest `lines` lines, as a source without its name.
async fn read(docker: &bollard::Docker, id: &str, lines: u32) -> LogSource {
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .tail(&lines.to_string())
        .build();
    let mut stream = docker.logs(id, Some(options));
    let mut kept: VecDeque<LogLine> = VecDeque::new();
    let mut omitted = 0u64;
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let mut problem: Option<(LogStatus, String)> = None;
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(n) => n,
            Err(_) => {
                problem = Some((
                    LogStatus::Ok,
                    format!(
                        "reading stopped after {} s; older lines may be missing",
                        READ_TIMEOUT.as_secs()
                    ),
                ));
                break;
            }
        };
        match next {
            None => break,
            Some(Ok(frame)) => {
                let (stream, bytes) = match &frame {
                    LogOutput::StdOut { message } => (LogStream::Stdout, message),
                    LogOutput::StdErr { message } => (LogStream::Stderr, message),
                    LogOutput::Console { message } => (LogStream::Stdout, message),
                    LogOutput::StdIn { .. } => continue,
                };
                for piece in split_lines(bytes) {
                    kept.push_back(parse_line(piece, stream));
                    if kept.len() > lines as usize {
                        kept.pop_front();
                        omitted += 1;
                    }
                }
            }
            Some(Err(e)) if is_not_found(&e) => {
                problem = Some((LogStatus::Gone, "the container was removed".into()));
                break;
            }
            Some(Err(e)) => {
                problem = Some((LogStatus::Unavailable, engine_message(&e)));
                break;
            }
        }
    }
    let (status, detail) = match problem {
        Some((LogStatus::Ok, why)) if kept.is_empty() => (LogStatus::Unavailable, Some(why)),
        Some((status, why)) => (status, Some(why)),
        None if kept.is_empty() => (LogStatus::NoLogs, None),
        None => (LogStatus::Ok, None),
    };
    LogSource {
        name: String::new(),
        container: None,
        status,
        detail: detail.map(|d| clean_cut(&d, MAX_LOG_DETAIL_BYTES)),
        lines: kept.into(),
        omitted,
    }
}

/// The engine's own message of an error (what `docker logs` prints), else the error.
fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// The lines of one frame of the log stream (a frame usually holds one line; a TTY's may hold
/// several), without their line ends; an empty frame holds none.
fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let none = bytes.is_empty();
    bytes.split(|b| *b == b'\n').filter(move |_| !none)
}

/// One line as the engine sends it with `timestamps`: `2024-05-01T12:00:00.123456789Z text`.
/// A line without a readable timestamp is kept whole, without a time.
pub fn parse_line(line: &[u8], stream: LogStream) -> LogLine {
    // Only the start is needed in full: the text is cut to the line bound anyway.
    let head = &line[..line.len().min(MAX_LOG_LINE_BYTES * 2 + 64)];
    let text = String::from_utf8_lossy(head);
    let (at_ms, rest) = match text.split_once(' ') {
        Some((ts, rest)) => match parse_timestamp(ts) {
            Some(ms) => (Some(ms), rest),
            None => (None, text.as_ref()),
        },
        None => match parse_timestamp(&text) {
            Some(ms) => (Some(ms), ""),
            None => (None, text.as_ref()),
        },
    };
    LogLine {
        at_ms,
        stream: Some(stream),
        text: clean_cut(rest, MAX_LOG_LINE_BYTES),
    }
}

/// An RFC 3339 time (the engine's `timestamps`) as milliseconds since the Unix epoch.
pub fn parse_timestamp(ts: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_lines_give_their_time_and_text() {
        let l = parse_line(
            b"2024-05-01T12:00:00.123456789Z hello world",
            LogStream::Stderr,
        );
        assert_eq!(l.at_ms, Some(1_714_564_800_123));
        assert_eq!(l.stream, Some(LogStream::Stderr));
        assert_eq!(l.text, "hello world");
        let l = parse_line(b"no timestamp here", LogStream::Stdout);
        assert_eq!((l.at_ms, l.text.as_str()), (None, "no timestamp here"));
        let l = parse_line(b"2024-05-01T12:00:00Z", LogStream::Stdout);
        assert_eq!((l.at_ms, l.text.as_str()), (Some(1_714_564_800_000), ""));
        let l = parse_line(
            b"2024-05-01T12:00:00.5Z \x1b[31mred\x1b[0m \xff",
            LogStream::Stdout,
        );
        assert_eq!(
            l.text, "red \u{fffd}",
            "escapes removed, bad UTF-8 replaced"
        );
    }

    #[test]
    fn a_huge_line_is_cut_as_it_is_read() {
        let mut line = b"2024-05-01T12:00:00Z ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        let l = parse_line(&line, LogStream::Stdout);
        assert!(l.text.len() <= MAX_LOG_LINE_BYTES, "{}", l.text.len());
        assert_eq!(l.at_ms, Some(1_714_564_800_000));
    }

    #[test]
    fn frames_split_into_lines() {
        let lines: Vec<&[u8]> = split_lines(b"a\nb\n").collect();
        assert_eq!(lines, [b"a".as_slice(), b"b".as_slice()]);
        assert_eq!(split_lines(b"").count(), 0);
        assert_eq!(split_lines(b"\n").count(), 0);
        assert_eq!(split_lines(b"one").count(), 1);
    }
}
