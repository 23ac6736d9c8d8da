//! Logging of the agent and the controller: JSON lines on the console, and, when `logging.loki`
//! is configured, the same lines pushed to Grafana Loki, labelled `device`, `component`,
//! `level` and the configured static labels.
//!
//! - [`config`]: the `logging:` section of both configuration files.
//! - [`queue`]: the bounded, never-waiting queue between log events and the shipper.
//! - [`ship`]: the task that batches, pushes, retries and drops (counted).
//! - `push`: Loki's push body (protobuf, snappy block format).
//!
//! Without `logging.loki` nothing of the Loki side is built: no queue, no task, no HTTP client.
//!
//! The push is Fleet's own rather than `tracing-loki`'s: that crate (0.2.7) keeps undelivered
//! lines in an unbounded buffer, sends without a timeout (a Loki that accepts the connection
//! and never answers grows the process without end), and drops lines silently when its channel
//! is full. A device agent with a 12 MB memory budget needs the bound, the timeout and the
//! count. The wire format is the same (`logproto.PushRequest`, snappy, the same `level`
//! values), built on `loki-api`, the protobuf types `tracing-loki` uses.

pub mod config;
mod push;
pub mod queue;
pub mod ship;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Metadata;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

pub use config::{LoggingConfig, LokiAuth, LokiConfig};
pub use queue::ShipStats;
pub use ship::{ShipOptions, Shipper};

/// Where the console lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Standard output (the agent).
    Stdout,
    /// Standard error (the controller: its standard output is for commands' results).
    Stderr,
    /// Nowhere: Loki only (tests).
    Off,
}

/// What the Loki side needs beyond its configuration: the binary's own labels.
#[derive(Debug, Clone)]
pub struct LokiSetup {
    /// `logging.loki` from the configuration file.
    pub config: LokiConfig,
    /// The `component` label: `agent` or `controller`.
    pub component: &'static str,
    /// The `device` label: the agent's device id, the controller's host name.
    pub device: String,
    /// Limits and timings (the defaults, except in tests).
    pub options: ShipOptions,
}

impl LokiSetup {
    /// The defaults for `config`, labelled `component` and `device`.
    pub fn new(config: LokiConfig, component: &'static str, device: String) -> Self {
        LokiSetup {
            config,
            component,
            device,
            options: ShipOptions::default(),
        }
    }
}

/// The logging of a process, once the subscriber is built: the shipper to start on the
/// runtime, and its counters.
#[derive(Debug, Default)]
pub struct Logging {
    shipper: Option<Shipper>,
    stats: Option<Arc<ShipStats>>,
    /// Why Loki is off although configured (told once the subscriber is installed).
    failed: Option<ship::SetupError>,
}

impl Logging {
    /// The counters of lines sent to Loki and dropped; `None` without Loki.
    pub fn stats(&self) -> Option<Arc<ShipStats>> {
        self.stats.clone()
    }

    /// Starts the shipper on the current Tokio runtime (nothing without Loki). Lines logged
    /// before wait in the queue.
    pub fn start(&mut self) -> Shipping {
        if let Some(e) = self.failed.take() {
            tracing::error!(error = %e, "logs are not pushed to Loki");
        }
        match self.shipper.take() {
            None => Shipping(None),
            Some(s) => {
                let flush = s.flush_deadline();
                let stop = CancellationToken::new();
                let task = tokio::spawn(s.run(stop.clone()));
                Shipping(Some((stop, task, flush)))
            }
        }
    }
}

/// The running shipper, stopped (with a last push of what is queued) by
/// [`Shipping::finish`].
#[derive(Debug)]
pub struct Shipping(Option<(CancellationToken, tokio::task::JoinHandle<()>, Duration)>);

/// Beyond the flush deadline, what [`Shipping::finish`] still waits for the task to end.
const FINISH_GRACE: Duration = Duration::from_millis(500);

impl Shipping {
    /// Stops shipping: what is queued is pushed within the flush deadline, the rest counted
    /// as dropped. Returns within the deadline (and a short grace) whatever Loki does.
    pub async fn finish(self) {
        if let Some((stop, mut task, flush)) = self.0 {
            stop.cancel();
            if tokio::time::timeout(flush + FINISH_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// Targets of the HTTP client's own events: never pushed to Loki (a push would log, and that
/// line would need a push). They still reach the console.
const HTTP_STACK: [&str; 7] = [
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
    "want",
    "native_tls",
    "tokio_native_tls",
];

fn not_http_stack(meta: &Metadata<'_>) -> bool {
    pushed_target(meta.target())
}

fn pushed_target(target: &str) -> bool {
    !HTTP_STACK.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The process's subscriber: `RUST_LOG` (default `info`) filtering JSON lines on `console` and,
/// with `loki`, the same lines into the Loki queue. Not installed: see [`init`].
pub fn subscriber(
    console: Console,
    loki: Option<LokiSetup>,
) -> (impl tracing::Subscriber + Send + Sync, Logging) {
    subscriber_with(console, loki, None)
}

/// A layer of the caller's that sees every event the filter lets through (the agent's ring of
/// its own lines for the controller's log requests).
pub type ExtraLayer =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// [`subscriber`] with `extra` beside the console and Loki layers.
pub fn subscriber_with(
    console: Console,
    loki: Option<LokiSetup>,
    extra: Option<ExtraLayer>,
) -> (impl tracing::Subscriber + Send + Sync, Logging) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = match console {
        Console::Stdout => Some(BoxMakeWriter::new(std::io::stdout)),
        Console::Stderr => Some(BoxMakeWriter::new(std::io::stderr)),
        Console::Off => None,
    };
    let console_layer = writer.map(|w| tracing_subscriber::fmt::layer().json().with_writer(w));
    let mut logging = Logging::default();
    let loki_layer = loki.and_then(|setup| {
        let labels = BTreeMap::from([
            ("component".to_owned(), setup.component.to_owned()),
            ("device".to_owned(), setup.device.clone()),
        ]);
        let agent = format!("fleet-{}/{}", setup.component, env!("CARGO_PKG_VERSION"));
        match Shipper::new(&setup.config, &labels, &agent, setup.options) {
            Ok((queue, shipper)) => {
                logging.stats = Some(shipper.stats());
                logging.shipper = Some(shipper);
                Some(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_ansi(false)
                        .with_writer(queue)
                        .with_filter(filter_fn(not_http_stack)),
                )
            }
            Err(e) => {
                logging.failed = Some(e);
                None
            }
        }
    });
    let subscriber = tracing_subscriber::registry()
        .with(extra)
        .with(filter)
        .with(console_layer)
        .with(loki_layer);
    (subscriber, logging)
}

/// Builds [`subscriber`] and installs it for the whole process, with the `log` crate's records
/// (some dependencies use it) turned into events (a second call leaves the first in place).
pub fn init(console: Console, loki: Option<LokiSetup>) -> Logging {
    init_with(console, loki, None)
}

/// [`init`] with `extra` beside the console and Loki layers.
pub fn init_with(console: Console, loki: Option<LokiSetup>, extra: Option<ExtraLayer>) -> Logging {
    let (subscriber, logging) = subscriber_with(console, loki, extra);
    let _ = subscriber.try_init();
    logging
}

/// This machine's host name (the controller's `device` label), or `controller` when the
/// kernel does not say.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "controller".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_clients_own_events_are_not_pushed() {
        for (target, pushed) in [
            ("hyper::proto::h1", false),
            ("hyper_util::client", false),
            ("reqwest::connect", false),
            ("h2", false),
            ("fleet_agent::update", true),
            ("hyperion", true),
        ] {
            assert_eq!(pushed_target(target), pushed, "{target}");
        }
    }
}
