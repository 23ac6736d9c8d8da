//! The shipper: a task that takes lines from the bounded queue, batches them, pushes each batch
//! to Loki and retries with backoff, and drops (and counts) what cannot be delivered.
//!
//! Guarantees, whatever Loki does (down, refusing, hanging):
//! - the process never waits for Loki: lines are offered to the queue without waiting, and a
//!   full queue drops them (see [`crate::queue`]);
//! - memory stays bounded: at most [`ShipOptions::queue_capacity`] lines wait in the queue and
//!   one encoded batch is in flight; every push has a timeout;
//! - every line is either sent or counted in [`ShipStats::dropped_total`], and a warning says
//!   so at most once per [`ShipOptions::warn_every`];
//! - at shutdown what is queued is pushed within [`ShipOptions::flush_deadline`], and the rest
//!   is counted as dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::{LokiAuth, LokiConfig};
use crate::push::{encode, StreamLabels};
use crate::queue::{Entry, Queue, ShipStats};

/// Limits and timings of the shipper; [`ShipOptions::default`] is what the binaries use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipOptions {
    /// Lines waiting for a push at most; more are dropped.
    pub queue_capacity: usize,
    /// Lines in one push at most.
    pub batch_max: usize,
    /// How long a batch waits for more lines once it has one.
    pub batch_wait: Duration,
    /// One push, connecting included.
    pub push_timeout: Duration,
    /// Pushes of one batch (the first and the retries) before it is dropped.
    pub max_attempts: u32,
    /// The first wait after a failed push; doubled at each further failure.
    pub backoff_min: Duration,
    /// The longest wait between pushes while Loki fails.
    pub backoff_max: Duration,
    /// What shutdown may spend pushing what is queued.
    pub flush_deadline: Duration,
    /// At most one warning about failing pushes per this long.
    pub warn_every: Duration,
}

/// The defaults, as named constants so the documentation and the code agree.
pub mod defaults {
    use std::time::Duration;
    /// 1024 lines (a few hundred kilobytes at most).
    pub const QUEUE_CAPACITY: usize = 1024;
    /// 256 lines per push.
    pub const BATCH_MAX: usize = 256;
    /// 1 s, as Loki's own clients (promtail's `batchwait`).
    pub const BATCH_WAIT: Duration = Duration::from_secs(1);
    /// 10 s per push.
    pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
    /// 5 pushes per batch.
    pub const MAX_ATTEMPTS: u32 = 5;
    /// 500 ms.
    pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
    /// 30 s.
    pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
    /// 2 s.
    pub const FLUSH_DEADLINE: Duration = Duration::from_secs(2);
    /// 1 minute.
    pub const WARN_EVERY: Duration = Duration::from_secs(60);
}

impl Default for ShipOptions {
    fn default() -> Self {
        ShipOptions {
            queue_capacity: defaults::QUEUE_CAPACITY,
            batch_max: defaults::BATCH_MAX,
            batch_wait: defaults::BATCH_WAIT,
            push_timeout: defaults::PUSH_TIMEOUT,
            max_attempts: defaults::MAX_ATTEMPTS,
            backoff_min: defaults::BACKOFF_MIN,
            backoff_max: defaults::BACKOFF_MAX,
            flush_deadline: defaults::FLUSH_DEADLINE,
            warn_every: defaults::WARN_EVERY,
        }
    }
}

/// The shipper could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The HTTP client (its TLS backend) could not be built.
    #[error("cannot build the HTTP client for Loki: {0}")]
    Client(#[source] reqwest::Error),
}

/// One push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A credential file could not be read.
    #[error("cannot read {path}: {source}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The batch could not be compressed.
    #[error("cannot compress the batch: {0}")]
    Encode(#[source] snap::Error),
    /// No answer: refused, unreachable, timed out.
    #[error("no answer from {url}: {source}")]
    Send {
        /// The push URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// Loki answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The push URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The start of the answer's body.
        body: String,
    },
}

impl PushError {
    /// Whether the same batch may succeed later: Loki unreachable, overloaded (`429`) or
    /// failing (`5xx`). A refusal of the batch itself (`400`, `401`, …) will not change.
    pub fn retryable(&self) -> bool {
        match self {
            PushError::Send { .. } => true,
            PushError::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            PushError::Secret { .. } | PushError::Encode(_) => false,
        }
    }
}

/// Longest part of an error answer's body quoted in a warning.
const BODY_QUOTE: usize = 200;

/// Where and how one push goes.
#[derive(Debug)]
struct Pusher {
    client: reqwest::Client,
    url: String,
    tenant: Option<String>,
    auth: LokiAuth,
}

impl Pusher {
    async fn push(&self, body: Vec<u8>) -> Result<(), PushError> {
        let mut req = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(CONTENT_ENCODING, "snappy")
            .body(body);
        if let Some(t) = &self.tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        req = match &self.auth {
            LokiAuth::None => req,
            LokiAuth::Bearer { token_file } => req.bearer_auth(read_secret(token_file)?),
            LokiAuth::Basic {
                username,
                password_file,
            } => req.basic_auth(username, Some(read_secret(password_file)?)),
        };
        let send = |source| PushError::Send {
            url: self.url.clone(),
            source,
        };
        let resp = req.send().await.map_err(send)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(PushError::Status {
            url: self.url.clone(),
            status,
            body: text.trim().chars().take(BODY_QUOTE).collect(),
        })
    }
}

fn read_secret(path: &Path) -> Result<String, PushError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| PushError::Secret {
            path: path.to_owned(),
            source,
        })
}

/// The wait before the next push while Loki fails; none while it works.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    fn failed(&mut self) {
        self.current = Some(match self.current {
            None => self.min,
            Some(d) => (d * 2).min(self.max),
        });
    }
}

/// What became of a batch.
enum Delivery {
    /// Sent, or dropped and counted.
    Done,
    /// Shutdown came first: the batch is still to be flushed.
    Stopped,
}

/// The shipping task's state; [`Shipper::run`] is spawned on the binary's runtime.
#[derive(Debug)]
pub struct Shipper {
    rx: mpsc::Receiver<Entry>,
    pusher: Pusher,
    labels: StreamLabels,
    stats: Arc<ShipStats>,
    opts: ShipOptions,
    backoff: Backoff,
    last_warning: Option<Instant>,
}

impl Shipper {
    /// A shipper for `cfg`, whose streams carry `labels` (the binary's `device` and
    /// `component`, the configured static ones; `level` is added per line), and the queue
    /// that feeds it.
    pub fn new(
        cfg: &LokiConfig,
        labels: &std::collections::BTreeMap<String, String>,
        user_agent: &str,
        opts: ShipOptions,
    ) -> Result<(Queue, Shipper), SetupError> {
        let client = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(opts.push_timeout)
            .timeout(opts.push_timeout)
            // A redirect of a POST loses its body: Loki never redirects a push.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1)
            // Plain HTTP never verifies a certificate: the system's roots (about a megabyte once
            // parsed, on a device with a 12 MB budget) are not kept.
            .tls_built_in_root_certs(cfg.url.starts_with("https://"))
            .build()
            .map_err(SetupError::Client)?;
        let stats = Arc::new(ShipStats::default());
        let (queue, rx) = Queue::new(opts.queue_capacity, stats.clone());
        let mut all = cfg.labels.clone();
        all.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let shipper = Shipper {
            rx,
            pusher: Pusher {
                client,
                url: cfg.push_url(),
                tenant: cfg.tenant.clone(),
                auth: cfg.auth.clone(),
            },
            labels: StreamLabels::new(&all),
            stats,
            backoff: Backoff {
                min: opts.backoff_min,
                max: opts.backoff_max,
                current: None,
            },
            opts,
            last_warning: None,
        };
        Ok((queue, shipper))
    }

    /// The counters of this shipper's lines.
    pub fn stats(&self) -> Arc<ShipStats> {
        self.stats.clone()
    }

    /// What shutdown may spend pushing what is queued.
    pub fn flush_deadline(&self) -> Duration {
        self.opts.flush_deadline
    }

    /// Ships until `stop` is cancelled, then flushes what is queued within the flush
    /// deadline.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch: Vec<Entry> = Vec::new();
        'ship: loop {
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break 'ship,
                    e = self.rx.recv() => match e {
                        Some(e) => batch.push(e),
                        None => break 'ship,
                    },
                }
            }
            let until = Instant::now() + self.opts.batch_wait;
            while batch.len() < self.opts.batch_max {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break 'ship,
                    () = sleep_until(until) => break,
                    e = self.rx.recv() => match e {
                        Some(e) => batch.push(e),
                        None => break,
                    },
                }
            }
            match self.deliver(&batch, &stop).await {
                Delivery::Done => batch.clear(),
                Delivery::Stopped => break 'ship,
            }
        }
        self.flush(batch).await;
    }

    /// Pushes `batch`, retrying with backoff; drops and counts it when it cannot be sent.
    async fn deliver(&mut self, batch: &[Entry], stop: &CancellationToken) -> Delivery {
        let body = match encode(&self.labels, batch) {
            Ok(b) => b,
            Err(e) => {
                self.stats.add_dropped(batch.len());
                self.warn(&PushError::Encode(e));
                return Delivery::Done;
            }
        };
        let mut attempts = 0;
        loop {
            if let Some(wait) = self.backoff.current {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return Delivery::Stopped,
                    () = sleep(wait) => {}
                }
            }
            attempts += 1;
            let result = tokio::select! {
                biased;
                () = stop.cancelled() => return Delivery::Stopped,
                r = self.pusher.push(body.clone()) => r,
            };
            match result {
                Ok(()) => {
                    self.stats.add_sent(batch.len());
                    if self.backoff.current.take().is_some() && self.last_warning.is_some() {
                        tracing::info!(
                            loki = %self.pusher.url,
                            dropped_total = self.stats.dropped_total(),
                            "logs reach Loki again"
                        );
                    }
                    return Delivery::Done;
                }
                Err(e) => {
                    let retry = e.retryable();
                    if retry {
                        self.backoff.failed();
                    }
                    let give_up = !retry || attempts >= self.opts.max_attempts;
                    if give_up {
                        self.stats.add_dropped(batch.len());
                    }
                    self.warn(&e);
                    if give_up {
                        return Delivery::Done;
                    }
                }
            }
        }
    }

    /// At most one warning per `warn_every`, with the running count of dropped lines.
    fn warn(&mut self, e: &PushError) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|t| now.duration_since(t) < self.opts.warn_every)
        {
            return;
        }
        self.last_warning = Some(now);
        tracing::warn!(
            loki = %self.pusher.url,
            error = %e,
            dropped_total = self.stats.dropped_total(),
            "cannot push logs to Loki; lines wait in a bounded queue and are dropped (and counted) beyond it"
        );
    }

    /// Pushes `pending` and whatever is queued, one attempt per batch, until the flush
    /// deadline; counts the rest as dropped.
    async fn flush(mut self, mut pending: Vec<Entry>) {
        let deadline = Instant::now() + self.opts.flush_deadline;
        self.rx.close();
        loop {
            while pending.len() < self.opts.batch_max {
                match self.rx.try_recv() {
                    Ok(e) => pending.push(e),
                    Err(_) => break,
                }
            }
            if pending.is_empty() {
                return;
            }
            let sent = match encode(&self.labels, &pending) {
                Ok(body) => matches!(
                    timeout_at(deadline, self.pusher.push(body)).await,
                    Ok(Ok(()))
                ),
                Err(_) => false,
            };
            if !sent {
                let mut left = pending.len();
                while self.rx.try_recv().is_ok() {
                    left += 1;
                }
                self.stats.add_dropped(left);
                // To the console (the queue is closed: this line is one more dropped).
                tracing::warn!(
                    loki = %self.pusher.url,
                    lines = left,
                    "log lines not pushed to Loki before the shutdown deadline"
                );
                return;
            }
            self.stats.add_sent(pending.len());
            pending.clear();
        }
    }
}
