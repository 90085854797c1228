//! The transports: a tonic channel config for gRPC and an HTTP/1.1 client for
//! HTTP/protobuf, both with rustls (ring), the configured CA (or the platform's
//! roots) and an optional client certificate.

use crate::Error;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("{what} {}: {e}", path.display())))
}

/// The PEM files of `[otlp]`, read once at start.
pub(crate) struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    pub fn load(cfg: &crate::OtlpSection) -> Result<Self, Error> {
        let ca = cfg.ca.as_deref().map(|p| read(p, "otlp.ca")).transpose()?;
        let identity = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => Some((read(c, "otlp.cert")?, read(k, "otlp.key")?)),
            _ => None,
        };
        Ok(Self { ca, identity })
    }

    /// tonic's TLS settings for these files.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut t = tonic::transport::ClientTlsConfig::new();
        t = match &self.ca {
            Some(ca) => t.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => t.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            t = t.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        t
    }

    /// A rustls client config for these files.
    pub fn rustls(&self) -> Result<rustls::ClientConfig, Error> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for c in rustls_pemfile::certs(&mut ca.as_slice()) {
                    let c = c.map_err(|e| Error::Tls(format!("otlp.ca: {e}")))?;
                    roots
                        .add(c)
                        .map_err(|e| Error::Tls(format!("otlp.ca: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(Error::Tls("otlp.ca holds no certificate".into()));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots);
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = rustls_pemfile::certs(&mut cert.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Tls(format!("otlp.cert: {e}")))?;
                let key = rustls_pemfile::private_key(&mut key.as_slice())
                    .map_err(|e| Error::Tls(format!("otlp.key: {e}")))?
                    .ok_or_else(|| Error::Tls("otlp.key holds no private key".into()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Tls(format!("otlp.cert/otlp.key: {e}")))
            }
        }
    }
}

type Hyper = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The largest response body read from a receiver.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The HTTP/protobuf exporters' client. The SDK exports from its own thread,
/// outside any async runtime; each request is run on the process's tokio
/// runtime (whose handle this keeps) and awaited from there.
#[derive(Clone)]
pub(crate) struct RuntimeHttp {
    client: Hyper,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for RuntimeHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHttp").finish_non_exhaustive()
    }
}

impl RuntimeHttp {
    pub fn new(
        tls: rustls::ClientConfig,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // The pool is created inside the runtime: its idle-connection timer
        // needs one.
        let _guard = runtime.enter();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Self {
            client,
            runtime,
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeHttp {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            let request = request.map(Full::new);
            let run = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                // A receiver answers with a few bytes (a partial-success
                // message at most); whatever else answers at the endpoint must
                // not make this process read gigabytes.
                let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} s", timeout.as_secs()).into()),
            }
        });
        task.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_http::HttpClient as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whatever answers at the endpoint (a wrong URL, a file server) cannot
    /// make an export read an endless body: it fails after 64 KiB.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_huge_response_is_refused_not_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n")
                .await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut written = 0usize;
            // Up to 1 GB, or until the client hangs up.
            while written < 1_000_000_000 {
                match tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await {
                    Ok(Ok(())) => written += chunk.len(),
                    _ => break,
                }
            }
            written
        });
        let tls = TlsFiles {
            ca: None,
            identity: None,
        }
        .rustls()
        .unwrap_or_else(|e| panic!("{e}"));
        let client = RuntimeHttp::new(
            tls,
            tokio::runtime::Handle::current(),
            Duration::from_secs(10),
        );
        let req = http::Request::post(format!("http://{addr}/v1/metrics"))
            .body(Bytes::from_static(b"x"))
            .unwrap_or_else(|e| panic!("{e}"));
        let r = client.send_bytes(req).await;
        assert!(r.is_err(), "a 1 GB body was accepted");
        let written = server.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            written < 32 << 20,
            "the server got {written} bytes out before the client gave up"
        );
    }
}
