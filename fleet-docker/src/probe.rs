//! The `x-fleet` HTTP probe: one GET to the service's own address, judged by its status.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends `GET path` to `addr` and returns the response status, or why there is none.
/// The whole exchange (connect, request, response head) is bounded by `timeout`.
pub(crate) async fn get_status(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let driver = tokio::spawn(conn);
        let request = Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "fleet-agent")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let response = sender.send_request(request).await;
        driver.abort();
        response
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("request failed: {e}"))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// True when `status` is what the probe expects: `expect` exactly, or any 2xx.
pub(crate) fn status_ok(status: u16, expect: Option<u16>) -> bool {
    match expect {
        Some(e) => status == e,
        None => (200..300).contains(&status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn expectations() {
        assert!(status_ok(204, None));
        assert!(!status_ok(301, None));
        assert!(status_ok(418, Some(418)));
        assert!(!status_ok(200, Some(418)));
    }

    /// A one-shot server answering with `status_line` after reading the request head.
    async fn serve_once(status_line: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!("{status_line}\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_the_status() {
        let addr = serve_once("HTTP/1.1 404 Not Found").await;
        assert_eq!(
            get_status(addr, "/healthz", Duration::from_secs(2)).await,
            Ok(404)
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let got = get_status(addr, "/", Duration::from_millis(200)).await;
        assert!(got.is_err_and(|e| e.contains("no answer")));
        drop(listener);
    }
}
