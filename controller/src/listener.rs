//! The accept loop under the router: what one client may hold, and how long each part of a
//! request may take, so idle, slow or numerous connections cannot use up the controller.
//!
//! Guarantees, with the bounds of controller.yaml's `limits`:
//! - at most `max_connections` connections are open, and never more than the process's
//!   file-descriptor limit minus [`RESERVED_FDS`] (kept for the database, Git and logs); at the
//!   cap, new connections wait in the kernel's backlog instead of taking descriptors;
//! - at most `max_connections_per_ip` from one address; more are closed at once;
//! - a connection that sends no complete request head within `header_timeout` (idle keep-alive
//!   included) is closed (hyper's header read timeout); a TLS handshake gets
//!   `handshake_timeout`; a response write the client does not read, `write_timeout`;
//! - when `accept` fails for want of descriptors (EMFILE, ENFILE) or memory, the loop waits a
//!   moment and goes on: the connections being served finish and free theirs.
//!
//! Request bodies (`body_timeout`) and handlers (`request_timeout`) are bounded in the router
//! (`routes::router`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::metrics::Metrics;

/// Descriptors kept free of connections: the database pool, Git fetches, log files.
pub const RESERVED_FDS: u64 = 256;
/// Wait after `accept` failed for want of descriptors or memory.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long open connections get to finish after shutdown starts.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Raises the soft limit on open files to the hard limit and returns the connection cap that
/// fits under it with [`RESERVED_FDS`] to spare.
pub fn connection_cap(configured: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(rlimit::INFINITY) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let budget = soft.saturating_sub(RESERVED_FDS).max(16);
    let cap = configured.min(usize::try_from(budget).unwrap_or(usize::MAX));
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            open_file_limit = soft,
            "limits.max_connections is above what the open-file limit allows; capped (raise LimitNOFILE)"
        );
    }
    cap
}

/// Open connections per address.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; uncounted when dropped.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = match self.open.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = match self.table.open.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Whether an `accept` error means the process or system is short of descriptors or memory.
fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values the loop tells apart (Linux; the same on the BSDs for these four).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// Logs a recurring condition at most once every ten seconds, with how often it happened.
struct Throttle {
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            last: None,
            count: 0,
        }
    }

    /// `Some(times since the last log)` when it is time to log again.
    fn tick(&mut self) -> Option<u64> {
        self.count += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) within `limits` until `shutdown`, then
/// gives open connections [`DRAIN`] to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let cap = connection_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let mut short = Throttle::new();
    let mut over_ip = Throttle::new();
    tracing::info!(
        max_connections = cap,
        per_ip = limits.max_connections_per_ip,
        tls = tls.is_some(),
        "accepting connections"
    );
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) if is_resource_shortage(&e) => {
                    metrics.accept_failed();
                    if let Some(n) = short.tick() {
                        tracing::error!(error = %e, times = n, "cannot accept connections: out of file descriptors or memory; waiting for connections to close");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                // A connection reset before it was accepted, and the like: the next one.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let Some(ip_slot) = per_ip.take(peer.ip(), limits.max_connections_per_ip) else {
            metrics.connection_refused();
            if let Some(n) = over_ip.tick() {
                tracing::warn!(%peer, times = n, max = limits.max_connections_per_ip, "too many connections from one address; closed");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            tls: tls.clone(),
            limits: limits.clone(),
            peer,
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            conn.run(stream, watcher).await;
            drop(ip_slot);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!("connections still open after the drain period; closing them");
        }
    }
}

struct Connection {
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream, graceful: hyper_util::server::graceful::Watcher) {
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(self.limits.write_timeout));
        let io = Box::pin(io);
        let peer = self.peer;
        let svc = tower::ServiceExt::map_request(
            self.app,
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let svc = TowerToHyperService::new(svc);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(64 * 1024);
        let result = match self.tls {
            None => {
                let conn = http.serve_connection(TokioIo::new(io), svc);
                graceful.watch(conn).await
            }
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(io)).await;
                let tls = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        // A client that does not trust the certificate ends here (it says so
                        // in its own message); not the controller's failure.
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let conn = http.serve_connection(TokioIo::new(tls), svc);
                graceful.watch(conn).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_counted_and_given_back() {
        let t = Arc::new(PerIp::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let a = t.take(ip, 2).expect("first");
        let _b = t.take(ip, 2).expect("second");
        assert!(t.take(ip, 2).is_none(), "third over the cap");
        assert!(t.take("10.0.0.2".parse().expect("ip"), 2).is_some());
        drop(a);
        assert!(
            t.take(ip, 2).is_some(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn descriptor_shortage_is_told_apart() {
        assert!(is_resource_shortage(&io::Error::from_raw_os_error(24)));
        assert!(is_resource_shortage(&io::Error::from_raw_os_error(23)));
        assert!(!is_resource_shortage(&io::Error::from_raw_os_error(103)));
    }
}
