//! A network partition for tests: a TCP proxy on loopback in front of a real server that the
//! test can freeze (stop moving bytes in both directions, and accept new connections without
//! connecting them on, closing nothing: the far side falls silent, as behind a dead link, not a
//! refused port) and heal. It counts the connections clients open, so a test can see how
//! often a client retried while cut off. Stops on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy. Clients connect to [`Partition::addr`]; it forwards to the upstream server.
pub struct Partition {
    /// Where clients connect.
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Waits while the proxy is frozen.
async fn thawed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|frozen| !*frozen).await;
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        thawed(&mut frozen).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // The close, too, waits for the thaw: frozen means nothing gets through.
                thawed(&mut frozen).await;
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        thawed(&mut frozen).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Partition {
    /// Listens on a free loopback port and forwards every connection to `upstream`. Must be
    /// called inside a Tokio runtime, which runs the proxy.
    pub async fn start(upstream: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (frozen, rx) = watch::channel(false);
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    thawed(&mut rx).await;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, rx.clone()));
                    tokio::spawn(pump(sr, cw, rx));
                });
            }
        });
        Partition {
            addr,
            frozen,
            accepted,
            task,
        }
    }

    /// `http://` + [`Partition::addr`].
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the link: nothing gets through either way, nothing is closed.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Heals it: held bytes and connections go on.
    pub fn heal(&self) {
        self.frozen.send_replace(false);
    }

    /// Whether it is cut.
    pub fn is_frozen(&self) -> bool {
        *self.frozen.borrow()
    }

    /// Connections clients opened so far (frozen or not).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}
