//! A container registry stand-in on loopback that stalls: it speaks the Docker Registry HTTP
//! API V2 a pull uses (`GET /v2/`, the image manifest, the config blob, the layer blob) with
//! real digests, and sends the first bytes of the layer and then nothing, holding the
//! connection open, as a registry behind a link that died does. The Docker engine treats
//! `127.0.0.0/8` registries as insecure (plain HTTP) by default, so it pulls from this one
//! without configuration. Stops on drop.

use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// What the layer claims to be.
const LAYER_SIZE: usize = 8 << 20;
/// What is sent of it before the stall.
const SENT_BEFORE_STALL: usize = 64 << 10;

/// The stand-in. Its [`StalledRegistry::image`] names an image whose pull stalls.
pub struct StalledRegistry {
    port: u16,
    stop: Arc<AtomicBool>,
    layer_requests: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

struct Blobs {
    manifest: Vec<u8>,
    manifest_digest: String,
    config: Vec<u8>,
    config_digest: String,
    layer_digest: String,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn blobs() -> Blobs {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    // The layer's digest need not match bytes that are never all sent.
    let layer_digest = sha256(b"a layer that never arrives");
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(),
            "digest": config_digest,
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": LAYER_SIZE,
            "digest": layer_digest,
        }],
    })
    .to_string()
    .into_bytes();
    Blobs {
        manifest_digest: sha256(&manifest),
        manifest,
        config,
        config_digest,
        layer_digest,
    }
}

impl StalledRegistry {
    /// Listens on a free loopback port.
    pub fn start() -> StalledRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let layer_requests = Arc::new(AtomicU64::new(0));
        let (stopping, counted) = (Arc::clone(&stop), Arc::clone(&layer_requests));
        let blobs = Arc::new(blobs());
        let thread = thread::spawn(move || {
            let mut conns = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (stopping, counted, blobs) = (
                            Arc::clone(&stopping),
                            Arc::clone(&counted),
                            Arc::clone(&blobs),
                        );
                        conns.push(thread::spawn(move || {
                            serve(stream, &blobs, &stopping, &counted)
                        }));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        StalledRegistry {
            port,
            stop,
            layer_requests,
            thread: Some(thread),
        }
    }

    /// An image reference on this registry (`127.0.0.1:PORT/stalled/app:1`).
    pub fn image(&self) -> String {
        format!("127.0.0.1:{}/stalled/app:1", self.port)
    }

    /// How many times the layer was asked for (the engine retries a failed download).
    pub fn layer_requests(&self) -> u64 {
        self.layer_requests.load(Ordering::SeqCst)
    }
}

impl Drop for StalledRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection's requests (keep-alive) until it closes or the registry stops.
fn serve(stream: TcpStream, blobs: &Blobs, stop: &AtomicBool, layer_requests: &AtomicU64) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    // The engine tries HTTPS first: a TLS handshake is refused at once, so it falls back to
    // plain HTTP without waiting for a handshake timeout.
    let mut first = [0u8; 1];
    loop {
        match stream.peek(&mut first) {
            Ok(0) => return,
            Ok(_) if first[0] == 0x16 => return,
            Ok(_) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while !stop.load(Ordering::SeqCst) {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        // The headers (a pull sends no body).
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let head = method == "HEAD";
        let reply = |out: &mut TcpStream, status: &str, kind: &str, extra: &str, body: &[u8]| {
            let header = format!(
                "HTTP/1.1 {status}\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}\r\n",
                body.len()
            );
            let _ = out.write_all(header.as_bytes());
            if !head {
                let _ = out.write_all(body);
            }
            let _ = out.flush();
        };
        if path == "/v2/" {
            reply(&mut out, "200 OK", "application/json", "", b"{}");
        } else if path.starts_with("/v2/stalled/app/manifests/") {
            let extra = format!("Docker-Content-Digest: {}\r\n", blobs.manifest_digest);
            reply(
                &mut out,
                "200 OK",
                "application/vnd.docker.distribution.manifest.v2+json",
                &extra,
                &blobs.manifest,
            );
        } else if path == format!("/v2/stalled/app/blobs/{}", blobs.config_digest) {
            let extra = format!("Docker-Content-Digest: {}\r\n", blobs.config_digest);
            reply(
                &mut out,
                "200 OK",
                "application/octet-stream",
                &extra,
                &blobs.config,
            );
        } else if path == format!("/v2/stalled/app/blobs/{}", blobs.layer_digest) {
            layer_requests.fetch_add(1, Ordering::SeqCst);
            let header = format!(
                "HTTP/1.1 200 OK\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Type: application/octet-stream\r\nContent-Length: {LAYER_SIZE}\r\nDocker-Content-Digest: {}\r\n\r\n",
                blobs.layer_digest
            );
            let _ = out.write_all(header.as_bytes());
            if !head {
                let _ = out.write_all(&vec![0x1f; SENT_BEFORE_STALL]);
                let _ = out.flush();
                // The stall: the connection stays open and silent until the registry stops.
                while !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(50));
                }
                return;
            }
        } else {
            reply(
                &mut out,
                "404 Not Found",
                "application/json",
                "",
                br#"{"errors":[{"code":"NAME_UNKNOWN","message":"not here"}]}"#,
            );
        }
    }
}
