//! The scrape endpoint: a tokio TCP listener answering `GET /metrics` (see `http`).
//!
//! Bounded in every direction: request heads of at most [`http::MAX_REQUEST_BYTES`], a
//! deadline to send one, at most [`MAX_CONNECTIONS`] connections at once (more are answered
//! 503 and closed), one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::http;
use super::http::HttpError;
use super::http::Response;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("metrics listener on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `addr` (so a taken port is a start-up error) and serves scrapes until `stop`.
/// Returns the bound address (useful with port 0).
pub async fn spawn(
    addr: SocketAddr,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<SocketAddr, BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    tracing::info!(listen = %local, "serving metrics at http://{local}{}", http::METRICS_PATH);
    tokio::spawn(serve(listener, metrics, stop));
    Ok(local)
}

/// Accepts connections until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Metrics, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let busy = Response::text(503, "too many concurrent scrapes\n").to_bytes();
            // Best effort, never waits: the client may as well see a reset.
            let _ = stream.try_write(&busy);
            continue;
        };
        let metrics = metrics.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = handle(stream, &metrics) => {}
            }
            tracing::trace!(%peer, "metrics: connection done");
            drop(permit);
        });
    }
}

/// Reads one request head, answers it, closes.
async fn handle(mut stream: TcpStream, metrics: &Metrics) {
    let mut buf = Vec::with_capacity(1024);
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream, &mut buf)).await
    {
        Err(_) => Response::text(408, "request head not received in time\n"),
        Ok(Err(e)) => {
            tracing::debug!("metrics: reading a request: {e}");
            return;
        }
        Ok(Ok(Err(e))) => Response::error(&e),
        Ok(Ok(Ok(None))) => return, // closed before a full request: nothing to answer
        Ok(Ok(Ok(Some(req)))) => http::respond(&req, || metrics.render()),
    };
    let bytes = response.to_bytes();
    let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    // Let unread request bytes (a body, pipelined requests) drain briefly, so closing does not
    // turn into a reset that could destroy the response before the client read it.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Reads until a whole head is in `buf` (`Ok(Ok(Some))`), the head is refused
/// (`Ok(Err)`), or the peer closes first (`Ok(Ok(None))`).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Result<Option<http::Request>, HttpError>> {
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Ok(None)
            } else {
                // A partial head followed by a close: answer what is wrong with it if we can.
                match http::parse(buf) {
                    Ok(_) => Ok(None),
                    Err(e) => Err(e),
                }
            });
        }
        // Never hold more than the limit (plus one chunk).
        buf.extend_from_slice(&chunk[..n]);
        match http::parse(buf) {
            Ok(None) => continue,
            other => return Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsWriter;

    async fn start() -> (SocketAddr, CancellationToken) {
        let m = Metrics::default();
        m.add(|w: &mut MetricsWriter| w.counter("t_total", "A test.", &[("k", "v")], 7u64));
        let stop = CancellationToken::new();
        let addr = spawn("127.0.0.1:0".parse().unwrap(), m, stop.clone())
            .await
            .unwrap();
        (addr, stop)
    }

    async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer (and stop reading) before all of a huge request is written.
        let _ = s.write_all(req).await;
        // Half-close: the request is all there is.
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_scrapes_and_refuses_the_rest() {
        let (addr, stop) = start().await;
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(
            ok.ends_with("# HELP t_total A test.\n# TYPE t_total counter\nt_total{k=\"v\"} 7\n"),
            "{ok}"
        );
        let nf = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404 "), "{nf}");
        let bad = exchange(
            addr,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        )
        .await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 30_000));
        let big = exchange(addr, &big).await;
        assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
        // A client that closes half-way gets nothing and breaks nothing.
        let _ = exchange(addr, b"GET /met").await;
        // Still serving.
        let again = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");
        stop.cancel();
    }

    #[tokio::test]
    async fn concurrent_scrapes_all_succeed() {
        let (addr, stop) = start().await;
        let mut tasks = Vec::new();
        for _ in 0..40 {
            tasks.push(tokio::spawn(async move {
                exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let (addr, stop) = start().await;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
