//! Device logs on request, through the check-in (DESIGN.md, "Observability"): the controller
//! never connects to a device, so an operator's request for logs rides on the answer to a
//! check-in ([`LogRequest`]), and the device sends the tail with its next check-in
//! ([`LogTail`]): the agent's own recent lines and each of its containers' recent lines.
//!
//! **Bounds.** A tail is small whatever a device holds, so a check-in carrying one stays far
//! below the controller's 1 MiB body limit: at most [`MAX_LOG_SOURCES`] sources of at most
//! [`MAX_LOG_LINES`] lines each, each line at most [`MAX_LOG_LINE_BYTES`] bytes, and the whole at
//! most [`MAX_LOG_TAIL_BYTES`] (each line counted with [`LOG_LINE_COST`] bytes of overhead, so
//! the JSON of a bounded tail stays under about twice that). [`LogTail::bounded`] applies them:
//! the agent before it sends, the controller again before it stores (a device that sends more is
//! cut, never refused). Cuts keep the newest lines and never split a UTF-8 character; what was
//! left out is counted ([`LogSource::omitted`], [`LogTail::truncated`]).
//!
//! **Text only.** Lines are text for people: terminal escape sequences (colours) are removed and
//! other control characters replaced by U+FFFD, so a line is safe to print on a terminal; pages
//! still escape it as any text.
//!
//! **Compatibility.** Both fields are optional on the wire and left out when empty: an older
//! agent never sends a tail and ignores a request; an older controller ignores a tail. A tail the
//! controller cannot read is dropped ([`Tolerant`]), never a reason to refuse the check-in.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Lines per source when a request does not say.
pub const DEFAULT_LOG_LINES: u32 = 100;
/// Most lines per source a request may ask for, and a source may carry.
pub const MAX_LOG_LINES: u32 = 1_000;
/// Longest line kept, in bytes; a longer one is cut (at a character boundary) and ends in `…`.
pub const MAX_LOG_LINE_BYTES: usize = 2_048;
/// Most sources (the agent and its containers) in one tail.
pub const MAX_LOG_SOURCES: usize = 64;
/// Most service selectors in one request.
pub const MAX_LOG_SERVICES: usize = 16;
/// Longest source, container or selector name kept, in bytes.
pub const MAX_LOG_NAME_BYTES: usize = 128;
/// Longest detail of a source's status kept, in bytes.
pub const MAX_LOG_DETAIL_BYTES: usize = 512;
/// What each line costs against [`MAX_LOG_TAIL_BYTES`] beyond its text (its JSON, its time).
pub const LOG_LINE_COST: usize = 64;
/// What each source costs against [`MAX_LOG_TAIL_BYTES`] beyond its lines.
pub const LOG_SOURCE_COST: usize = 128;
/// Most bytes of a whole tail, counted as its lines' text plus [`LOG_LINE_COST`] a line and
/// its sources' names and details plus [`LOG_SOURCE_COST`] a source.
pub const MAX_LOG_TAIL_BYTES: usize = 256 * 1024;
/// The name of the agent's own log among a tail's sources (and the selector that asks for it).
pub const AGENT_SOURCE: &str = "agent";

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_lines() -> u32 {
    DEFAULT_LOG_LINES
}

/// The controller asking a device for a tail of its logs, in the answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogRequest {
    /// The request's id: the tail that answers it carries it back. Ids of one device grow.
    pub id: u64,
    /// Lines per source (1 to [`MAX_LOG_LINES`]; more is read as the maximum).
    #[serde(default = "default_lines")]
    pub lines: u32,
    /// Only these sources: `agent` (the agent's own log), a stack, a service, or
    /// `stack/service`. Empty: the agent and every container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

impl LogRequest {
    /// Lines per source, within 1 to [`MAX_LOG_LINES`].
    pub fn lines(&self) -> u32 {
        self.lines.clamp(1, MAX_LOG_LINES)
    }

    /// The selectors in use (at most [`MAX_LOG_SERVICES`], blank ones left out).
    pub fn selectors(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .take(MAX_LOG_SERVICES)
    }

    /// Whether the request asks for the source `name` (`agent` or `stack/service`).
    pub fn selects(&self, name: &str) -> bool {
        let mut any = false;
        for s in self.selectors() {
            any = true;
            if selector_matches(s, name) {
                return true;
            }
        }
        !any
    }
}

/// Whether `selector` (`agent`, a stack, a service or `stack/service`) names the source `name`.
pub fn selector_matches(selector: &str, name: &str) -> bool {
    if selector == name {
        return true;
    }
    match name.split_once('/') {
        Some((stack, service)) => selector == stack || selector == service,
        None => false,
    }
}

/// Which output stream of a container a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A stream this version does not know.
    #[serde(other)]
    Other,
}

/// One line of a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogLine {
    /// When it was written, milliseconds since the Unix epoch (device clock), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// A container's stream; absent for the agent's own lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<LogStream>,
    /// The text, without its line end.
    pub text: String,
}

/// What became of one source of a tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogStatus {
    /// Read: its lines follow (possibly none newer than the tail asked for).
    Ok,
    /// The source exists and has written nothing.
    NoLogs,
    /// The container was removed while its logs were read.
    Gone,
    /// A selector of the request matched no source on the device.
    NotFound,
    /// Its logs cannot be read (a logging driver that keeps none, the engine not answering);
    /// `detail` says why.
    Unavailable,
    /// A status this version does not know.
    #[serde(other)]
    Unknown,
}

/// The recent lines of one source: the agent, or one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogSource {
    /// `agent`, or the container's `stack/service` (a selector, for `not_found`).
    pub name: String,
    /// The container's name, for a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What became of it.
    pub status: LogStatus,
    /// Why, when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Its newest lines, oldest first.
    #[serde(default)]
    pub lines: Vec<LogLine>,
    /// Older lines left out to keep the tail within its bounds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
}

impl LogSource {
    /// A source with no lines and `status`, with `detail` if any.
    pub fn empty(name: impl Into<String>, status: LogStatus, detail: Option<String>) -> LogSource {
        LogSource {
            name: name.into(),
            container: None,
            status,
            detail,
            lines: Vec::new(),
            omitted: 0,
        }
    }
}

/// A device's answer to a [`LogRequest`], carried by its next check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogTail {
    /// The id of the request this answers.
    pub request_id: u64,
    /// When the device read the logs, milliseconds since the Unix epoch (device clock).
    #[serde(default)]
    pub collected_ms: u64,
    /// The agent's own log first, then each container's.
    #[serde(default)]
    pub sources: Vec<LogSource>,
    /// Something was left out to keep within the bounds (lines, or whole sources).
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

impl LogTail {
    /// The tail within every bound of this module (see the module's doc): sources, lines per
    /// source, bytes per line, names and details cut, text cleaned, and the whole within
    /// [`MAX_LOG_TAIL_BYTES`] by keeping each source's newest lines. The budget is shared
    /// fairly: a source that needs less than an equal share leaves the rest to the others, so
    /// one chatty container cannot crowd out the agent. Applying it twice changes nothing.
    pub fn bounded(self) -> LogTail {
        let mut truncated = self.truncated;
        let mut sources = self.sources;
        if sources.len() > MAX_LOG_SOURCES {
            sources.truncate(MAX_LOG_SOURCES);
            truncated = true;
        }
        let max_lines = MAX_LOG_LINES as usize;
        for s in &mut sources {
            s.name = clean_cut(&s.name, MAX_LOG_NAME_BYTES);
            s.container = s
                .container
                .take()
                .map(|c| clean_cut(&c, MAX_LOG_NAME_BYTES));
            s.detail = s.detail.take().map(|d| clean_cut(&d, MAX_LOG_DETAIL_BYTES));
            if s.lines.len() > max_lines {
                let extra = s.lines.len() - max_lines;
                s.lines.drain(..extra);
                s.omitted = s.omitted.saturating_add(extra as u64);
                truncated = true;
            }
            for l in &mut s.lines {
                if needs_cleaning(&l.text, MAX_LOG_LINE_BYTES) {
                    l.text = clean_cut(&l.text, MAX_LOG_LINE_BYTES);
                }
            }
        }
        let fixed: usize = sources
            .iter()
            .map(|s| {
                LOG_SOURCE_COST
                    + s.name.len()
                    + s.container.as_ref().map_or(0, String::len)
                    + s.detail.as_ref().map_or(0, String::len)
            })
            .sum();
        let budget = MAX_LOG_TAIL_BYTES.saturating_sub(fixed);
        let wants: Vec<usize> = sources
            .iter()
            .map(|s| s.lines.iter().map(line_cost).sum())
            .collect();
        let shares = fair_shares(&wants, budget);
        for (s, share) in sources.iter_mut().zip(shares) {
            let mut spent = 0;
            let mut keep = 0;
            for l in s.lines.iter().rev() {
                let c = line_cost(l);
                if spent + c > share {
                    break;
                }
                spent += c;
                keep += 1;
            }
            let extra = s.lines.len() - keep;
            if extra > 0 {
                s.lines.drain(..extra);
                s.omitted = s.omitted.saturating_add(extra as u64);
                truncated = true;
            }
        }
        LogTail {
            request_id: self.request_id,
            collected_ms: self.collected_ms,
            sources,
            truncated,
        }
    }

    /// What the tail costs against [`MAX_LOG_TAIL_BYTES`] (see there).
    pub fn cost(&self) -> usize {
        self.sources
            .iter()
            .map(|s| {
                LOG_SOURCE_COST
                    + s.name.len()
                    + s.container.as_ref().map_or(0, String::len)
                    + s.detail.as_ref().map_or(0, String::len)
                    + s.lines.iter().map(line_cost).sum::<usize>()
            })
            .sum()
    }
}

fn line_cost(l: &LogLine) -> usize {
    l.text.len() + LOG_LINE_COST
}

/// Splits `budget` among claims `wants`: each gets what it wants if that is at most an equal
/// share of what is left, and the rest is shared equally among the larger ones (water filling).
pub fn fair_shares(wants: &[usize], budget: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by_key(|&i| wants[i]);
    let mut shares = vec![0; wants.len()];
    let mut left = budget;
    for (k, &i) in order.iter().enumerate() {
        let equal = left / (wants.len() - k);
        let give = wants[i].min(equal);
        shares[i] = give;
        left -= give;
    }
    shares
}

/// Whether `text` would change when cleaned and cut to `max` bytes.
fn needs_cleaning(text: &str, max: usize) -> bool {
    text.len() > max
        || text
            .chars()
            .any(|c| (c.is_control() && c != '\t') || c == '\u{1b}')
}

/// `text` cleaned for people (see [`clean`]) and cut to at most `max` bytes (see [`cut`]).
pub fn clean_cut(text: &str, max: usize) -> String {
    cut(&clean(text), max)
}

/// `text` as safe text for a terminal or a page: terminal escape sequences (CSI, such as
/// colours, and OSC, such as window titles) removed, line ends at the end removed, and every
/// other control character but the tab replaced by U+FFFD.
pub fn clean(text: &str) -> String {
    let text = text.trim_end_matches(['\r', '\n']);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // Another two-character escape.
                Some(n) if ('@'..='_').contains(n) => {
                    chars.next();
                }
                _ => out.push('\u{fffd}'),
            },
            '\t' => out.push('\t'),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `max` bytes at a character boundary, ending in `…` when cut (the
/// ellipsis counts against `max`).
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + ELLIPSIS.len());
    out.push_str(&text[..end]);
    if ELLIPSIS.len() <= max {
        out.push_str(ELLIPSIS);
    }
    out
}

/// A part of a message read leniently: what does not decode as `T` is kept as the reason
/// (`Unreadable`) instead of failing the whole message. A check-in carrying a log tail the
/// controller cannot read (a newer agent's, a broken one) is stored without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tolerant<T> {
    /// It decoded.
    Read(T),
    /// It did not; why.
    Unreadable(String),
}

impl<T> Tolerant<T> {
    /// The value, if it decoded.
    pub fn read(self) -> Result<T, String> {
        match self {
            Tolerant::Read(t) => Ok(t),
            Tolerant::Unreadable(why) => Err(why),
        }
    }
}

impl<T: Serialize> Serialize for Tolerant<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Tolerant::Read(t) => t.serialize(s),
            Tolerant::Unreadable(_) => s.serialize_none(),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Tolerant<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(match serde_json::from_value(v) {
            Ok(t) => Tolerant::Read(t),
            Err(e) => Tolerant::Unreadable(e.to_string()),
        })
    }
}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> schemars::JsonSchema for Tolerant<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

#[cfg(test)]
mod tests;
