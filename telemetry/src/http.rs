//! A minimal HTTP/1.1 endpoint for `GET /metrics` (Prometheus scrapes) and
//! `GET /healthz`, without pulling a web framework into the agent.
//!
//! Each connection gets one request and a closed connection; requests larger than
//! 8 KiB or slower than 5 s are dropped.

use crate::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `/metrics` from `registry` and `/healthz` from `health` (a function
/// returning `Ok(())` when ready or `Err(reason)`) on `listener` until `shutdown`
/// completes.
pub async fn serve<F, S>(listener: TcpListener, registry: Registry, health: F, shutdown: S)
where
    F: Fn() -> Result<(), String> + Send + Sync + 'static,
    S: Future<Output = ()>,
{
    serve_with_degraded(listener, registry, health, || None, shutdown).await
}

/// [`serve`], plus what is degraded without making the process unready (a
/// best-effort side path such as a real-time fan-out whose Redis is down):
/// `/healthz` still answers 200 by `health` alone, its body then says
/// `ok` and, on a second line, `degraded: <reasons>`.
pub async fn serve_with_degraded<F, D, S>(
    listener: TcpListener,
    registry: Registry,
    health: F,
    degraded: D,
    shutdown: S,
) where
    F: Fn() -> Result<(), String> + Send + Sync + 'static,
    D: Fn() -> Option<String> + Send + Sync + 'static,
    S: Future<Output = ()>,
{
    let health = Arc::new(health);
    let degraded = Arc::new(degraded);
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let health = health.clone();
        let degraded = degraded.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut used = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let n = sock.read(&mut buf[used..]).await?;
                    if n == 0 {
                        break;
                    }
                    used += n;
                    if buf[..used].windows(4).any(|w| w == b"\r\n\r\n") || used == buf.len() {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..used]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body, ctype) = match path {
                "/metrics" => ("200 OK", registry.render(), "text/plain; version=0.0.4"),
                "/healthz" => match health() {
                    Ok(()) => match degraded() {
                        None => ("200 OK", "ok\n".to_string(), "text/plain"),
                        Some(why) => ("200 OK", format!("ok\ndegraded: {why}\n"), "text/plain"),
                    },
                    Err(why) => (
                        "503 Service Unavailable",
                        format!("unready: {why}\n"),
                        "text/plain",
                    ),
                },
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let reg = Registry::new();
        reg.counter("t_total", "T", &[]).add(5);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, reg, || Err("kafka down".into()), async {
            let _ = rx.await;
        }));
        for (path, want) in [
            ("/metrics", "t_total 5"),
            ("/healthz", "503"),
            ("/nope", "404"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(out.contains(want), "{path}: {out}");
        }
        let _ = tx.send(());
        let _ = server.await;
    }
}
