//! Connection exhaustion, tried as an unauthenticated client on the network would: an idle
//! connection, a slowloris (headers a byte at a time), a slow body, many connections from one
//! address, and more connections than the controller has file descriptors. Each is cut off or
//! refused within its limit, and `/healthz` keeps answering for everybody else.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleet_controller::config::Limits;
use support::{test_config, TestController};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn start(limits: Limits) -> (tempfile::TempDir, TestController) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let mut cfg = test_config(dir.path(), &url, None);
    cfg.limits = limits;
    let c = TestController::start(cfg).await;
    (dir, c)
}

/// A connection to `to` from the loopback address `from` (any 127.x.y.z works on Linux).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// Reads until the server closes the connection; how long that took, and what it sent.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<(Duration, String)> {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((t + within).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((t.elapsed(), String::from_utf8_lossy(&got).into_owned()))
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /healthz` on a fresh connection from `from`: the status line, or why not.
async fn healthz(from: [u8; 4], to: SocketAddr) -> Result<String, String> {
    let mut s = connect_from(from, to).await.map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

fn short_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

#[tokio::test]
async fn idle_slow_header_and_slow_body_connections_are_cut_off() {
    let (_dir, c) = start(short_limits()).await;
    let addr = c.state.cfg.listen;

    // Idle: connects and says nothing.
    let mut idle = connect_from([127, 0, 0, 1], addr).await.expect("connect");
    let (took, _) = until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle connection is closed");
    assert!(
        took < Duration::from_secs(4),
        "idle connection closed after {took:?}"
    );

    // Slowloris: a header line a byte every 200 ms, never finishing the head.
    let mut slow = connect_from([127, 0, 0, 1], addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\n")
        .await
        .expect("write");
    let t = Instant::now();
    let mut cut = false;
    while t.elapsed() < Duration::from_secs(10) {
        if slow.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
        let mut b = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    assert!(
        cut,
        "a slowloris was still connected after {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "slowloris cut after {:?}",
        t.elapsed()
    );

    // Slow body: the head promises 1000 bytes, 10 arrive, then nothing.
    let mut body = connect_from([127, 0, 0, 1], addr).await.expect("connect");
    body.write_all(
        b"POST /api/v1/enroll HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"device_i",
    )
    .await
    .expect("write");
    let (took, answer) = until_closed(&mut body, Duration::from_secs(10))
        .await
        .expect("a stalled body is cut off");
    assert!(
        took < Duration::from_secs(5),
        "slow body cut after {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "answered: {answer:?}");
    assert!(
        answer.contains("stalled") || answer.contains("limits."),
        "{answer}"
    );

    assert_eq!(
        healthz([127, 0, 0, 1], addr).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
    c.stop().await;
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let (_dir, c) = start(Limits {
        max_connections_per_ip: 20,
        header_timeout: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    let addr = c.state.cfg.listen;
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(connect_from([127, 0, 0, 1], addr).await.expect("connect"));
    }
    // The 40 over the cap are closed at once; the 20 stay (until their header timeout).
    let mut closed = 0;
    for s in &mut held {
        if until_closed(s, Duration::from_millis(300)).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 40,
        "connections over the per-address cap are closed at once"
    );
    assert_eq!(
        healthz([127, 0, 0, 2], addr).await.as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "another address is served"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = reqwest::get(c.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("fleet_connections_refused_total 40"),
        "{metrics}"
    );
    c.stop().await;
}

/// The real binary under a 512-descriptor limit (as a small systemd `LimitNOFILE` would give),
/// with 700 idle connections from many addresses: `/healthz` still answers within seconds.
#[tokio::test]
async fn more_connections_than_descriptors_do_not_stop_the_controller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = support::process::free_addr();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let config = dir.path().join("controller.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"{listen}\"\ndata_dir: \"{}\"\nlimits:\n  header_timeout: 2s\n  max_connections_per_ip: 100\n",
            data.display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("controller.log")).expect("log");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 512 && exec '{}' --config '{}' serve",
            support::controller_bin().display(),
            config.display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while healthz([127, 0, 0, 1], listen).await.is_err() {
        assert!(Instant::now() < deadline, "the controller did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 700 idle connections from 127.0.1.1 … 127.0.1.7, 100 each (the per-address cap).
    let mut held = Vec::new();
    for host in 1..=7u8 {
        for _ in 0..100 {
            if let Ok(s) = connect_from([127, 0, 1, host], listen).await {
                held.push(s);
            }
        }
    }
    let t = Instant::now();
    let mut answer = Err(String::new());
    while t.elapsed() < Duration::from_secs(15) {
        answer = healthz([127, 0, 0, 9], listen).await;
        if answer.is_ok() {
            break;
        }
    }
    let took = t.elapsed();
    let log = std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "healthz with {} idle connections held: {answer:?} after {took:?}",
        held.len()
    );
    assert_eq!(answer.as_deref(), Ok("HTTP/1.1 200 OK"), "log:\n{log}");
    assert!(took < Duration::from_secs(10), "healthz took {took:?}");
}
