//! A slow link for tests: a TCP proxy on loopback in front of a real server (a `git daemon`)
//! that passes what the client sends at once and what the server answers at a bounded rate, as a
//! cellular link would, and can stop passing the answer altogether after some bytes (a
//! transfer that stalls half-way). Stops on drop.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the rate-limited direction sends its next chunk.
const TICK: Duration = Duration::from_millis(50);

/// What the link does to the server's answer.
#[derive(Debug, Clone, Copy)]
pub struct LinkShape {
    /// Bytes per second passed from the server to the client.
    pub bytes_per_second: u64,
    /// After this many bytes (counted over all connections) nothing more is passed, and the
    /// connections are held open: the server seems to have fallen silent. `None`: never.
    pub stall_after: Option<u64>,
}

/// The proxy. Its [`SlowLink::url`] reaches the upstream server through the link.
pub struct SlowLink {
    port: u16,
    stop: Arc<AtomicBool>,
    passed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl SlowLink {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr, shape: LinkShape) -> SlowLink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let passed = Arc::new(AtomicU64::new(0));
        let (stopping, counted) = (Arc::clone(&stop), Arc::clone(&passed));
        let thread = thread::spawn(move || {
            let mut links = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if let Ok(server) = TcpStream::connect(upstream) {
                            links.push(spawn_link(
                                client,
                                server,
                                shape,
                                Arc::clone(&stopping),
                                Arc::clone(&counted),
                            ));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
                    Err(_) => thread::sleep(TICK),
                }
            }
            for link in links {
                let _ = link.join();
            }
        });
        SlowLink {
            port,
            stop,
            passed,
            thread: Some(thread),
        }
    }

    /// A `git://` URL of repository `name` on the upstream daemon, through the link.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// Bytes of the server's answers passed to clients so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::SeqCst)
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One proxied connection: the client's bytes go up at once on a thread of their own, the
/// server's come down at the link's rate on this one.
fn spawn_link(
    client: TcpStream,
    server: TcpStream,
    shape: LinkShape,
    stop: Arc<AtomicBool>,
    passed: Arc<AtomicU64>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone())
        else {
            return;
        };
        let up = thread::spawn(move || {
            let _ = std::io::copy(&mut client_in, &mut server_out);
            let _ = server_out.shutdown(Shutdown::Write);
        });
        let (mut server_in, mut client_out) = (server, client);
        let _ = server_in.set_read_timeout(Some(TICK));
        let per_tick =
            usize::try_from((shape.bytes_per_second * TICK.as_millis() as u64 / 1000).max(1))
                .unwrap_or(usize::MAX);
        let mut buf = vec![0u8; per_tick];
        while !stop.load(Ordering::SeqCst) {
            if shape
                .stall_after
                .is_some_and(|limit| passed.load(Ordering::SeqCst) >= limit)
            {
                thread::sleep(TICK);
                continue;
            }
            let want = match shape.stall_after {
                Some(limit) => {
                    let left = limit.saturating_sub(passed.load(Ordering::SeqCst));
                    buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))
                }
                None => buf.len(),
            };
            match server_in.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    if client_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    passed.fetch_add(n as u64, Ordering::SeqCst);
                    thread::sleep(TICK);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = client_out.shutdown(Shutdown::Both);
        let _ = server_in.shutdown(Shutdown::Both);
        let _ = up.join();
    })
}
