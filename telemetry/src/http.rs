//! A minimal HTTP/1.1 endpoint for `GET /metrics` (Prometheus scrapes),
//! `GET /healthz` (alive) and `GET /readyz` (ready to take work), without pulling
//! a web framework into the agent.
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

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;
type Note = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// What the probe endpoints answer. Liveness and readiness are separate because
/// an orchestrator acts differently on each: a process that is not alive is
/// restarted, one that is not ready is only taken out of rotation. An aggregator
/// whose Kafka is down is alive (restarting it would not bring Kafka back) but
/// not ready.
pub struct Probes {
    alive: Check,
    ready: Check,
    degraded: Note,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

impl Probes {
    /// `/healthz` and `/readyz` both answer by `check` (`Ok` or the reason): for a
    /// process whose health is its readiness, like the agent.
    pub fn same(check: impl Fn() -> Result<(), String> + Send + Sync + Clone + 'static) -> Self {
        Self {
            alive: Box::new(check.clone()),
            ready: Box::new(check),
            degraded: Box::new(|| None),
        }
    }

    /// `/healthz` answers 200 whenever the process serves HTTP; `/readyz` by
    /// `ready`.
    pub fn ready_by(ready: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self {
            alive: Box::new(|| Ok(())),
            ready: Box::new(ready),
            degraded: Box::new(|| None),
        }
    }

    /// Adds what is degraded without making the process unready (a best-effort
    /// side path such as a real-time fan-out whose Redis is down): a 200 from
    /// either probe then says `ok` and, on a second line, `degraded: <reasons>`.
    pub fn with_degraded(
        mut self,
        degraded: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.degraded = Box::new(degraded);
        self
    }

    fn answer(&self, check: &Check) -> (&'static str, String) {
        match check() {
            Ok(()) => match (self.degraded)() {
                None => ("200 OK", "ok\n".to_string()),
                Some(why) => ("200 OK", format!("ok\ndegraded: {why}\n")),
            },
            Err(why) => ("503 Service Unavailable", format!("unready: {why}\n")),
        }
    }
}

/// Serves `/metrics` from `registry` and `/healthz` and `/readyz` from `health`
/// (a function returning `Ok(())` when ready or `Err(reason)`) on `listener`
/// until `shutdown` completes.
pub async fn serve<F, S>(listener: TcpListener, registry: Registry, health: F, shutdown: S)
where
    F: Fn() -> Result<(), String> + Send + Sync + Clone + 'static,
    S: Future<Output = ()>,
{
    serve_probes(listener, registry, Probes::same(health), shutdown).await
}

/// Serves `/metrics` from `registry`, `/healthz` and `/readyz` from `probes`, on
/// `listener` until `shutdown` completes.
pub async fn serve_probes<S>(listener: TcpListener, registry: Registry, probes: Probes, shutdown: S)
where
    S: Future<Output = ()>,
{
    let probes = Arc::new(probes);
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
        let probes = probes.clone();
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
                "/metrics" => ("200 OK", registry.render(), crate::registry::CONTENT_TYPE),
                "/healthz" => {
                    let (status, body) = probes.answer(&probes.alive);
                    (status, body, "text/plain")
                }
                "/readyz" => {
                    let (status, body) = probes.answer(&probes.ready);
                    (status, body, "text/plain")
                }
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

    /// The whole answer to `GET path`, head and body.
    async fn get(addr: SocketAddr, path: &str) -> String {
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
        out
    }

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
            ("/readyz", "503"),
            ("/nope", "404"),
        ] {
            let out = get(addr, path).await;
            assert!(out.contains(want), "{path}: {out}");
        }
        let _ = tx.send(());
        let _ = server.await;
    }

    /// Liveness and readiness answer apart: an aggregator whose sink is down
    /// is alive (200) but not ready (503, with the reason); what is degraded
    /// shows in both.
    #[tokio::test]
    async fn alive_and_ready_answer_apart() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let probes = Probes::ready_by(|| Err("kafka unreachable".into()))
            .with_degraded(|| Some("redis down".into()));
        let server = tokio::spawn(serve_probes(listener, Registry::new(), probes, async {
            let _ = rx.await;
        }));
        for (path, status, body) in [
            ("/healthz", "200 OK", "ok\ndegraded: redis down\n"),
            (
                "/readyz",
                "503 Service Unavailable",
                "unready: kafka unreachable\n",
            ),
        ] {
            let out = get(addr, path).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status}")),
                "{path}: {out}"
            );
            assert!(out.ends_with(body), "{path}: {out}");
        }
        let _ = tx.send(());
        let _ = server.await;
    }
}
