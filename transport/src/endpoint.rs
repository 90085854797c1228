//! QUIC endpoints with the limits that bound what one peer can cost: pending
//! handshakes, streams per connection, receive windows and idle time. Address
//! validation (Retry) happens in [`accept_validated`].
//!
//! A Retry token must outlive the handshake of the client it was sent to. The
//! client puts it in every Initial it sends after the Retry, and retransmits
//! those (1, 2, 4, 8, 16 s apart) until its idle timeout; a token that expires
//! first turns the next of them into a fatal INVALID_TOKEN close, and the client
//! cannot be sent another Retry on that connection (RFC 9000 §8.1.2). With
//! quinn's default 15 s lifetime, a burst of a few hundred handshakes on a busy
//! aggregator (whose socket drops a client's first answers to the Retry) refused
//! clients that had done everything right (issue 10).

use crate::error::TlsError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Limits applied to every connection of an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLimits {
    /// Close a connection that has been silent this long.
    pub idle_timeout: Duration,
    /// Send a keep-alive this often (client side; keeps NAT bindings open).
    pub keep_alive: Duration,
    /// Handshakes in progress at once (server side); more are refused
    /// (by the server's `HandshakeGate`; quinn's own queue of attempts not yet
    /// looked at is at least 1024).
    pub max_pending_handshakes: usize,
    /// How long a Retry token is accepted after it was sent (server side). At
    /// least as long as a client keeps retransmitting the Initial that carries
    /// it (its idle timeout, 30 s by default): see the module doc. The token is
    /// bound to the client's address and port, so a longer life only lets that
    /// same address skip one round trip a little later.
    pub retry_token_lifetime: Duration,
    /// Receive buffer asked of the kernel for the server's UDP socket, bytes
    /// (Linux caps it at `net.core.rmem_max`). A burst of handshakes arrives
    /// faster than the endpoint reads while it is busy; every Initial dropped by
    /// a full buffer costs its client a backed-off retransmission.
    pub socket_receive_buffer_bytes: usize,
    /// Bidirectional streams a peer may open (the control stream).
    pub max_bidi_streams: u32,
    /// Unidirectional streams a peer may open (the data lanes).
    pub max_uni_streams: u32,
    /// Bytes a peer may have unread on one stream.
    pub stream_window_bytes: u32,
    /// Bytes a peer may have unread on the whole connection.
    pub connection_window_bytes: u32,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_pending_handshakes: 256,
            retry_token_lifetime: Duration::from_secs(60),
            socket_receive_buffer_bytes: 4 << 20,
            max_bidi_streams: 1,
            max_uni_streams: 4,
            stream_window_bytes: 4 << 20,
            connection_window_bytes: 16 << 20,
        }
    }
}

/// The least room in quinn's queue of connection attempts not yet accepted.
const MIN_INCOMING_QUEUE: usize = 1024;

/// Which side a transport configuration is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

fn transport(limits: &EndpointLimits, side: Side) -> Result<TransportConfig, TlsError> {
    let keep_alive = side == Side::Client;
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|e| TlsError::Rustls(format!("idle timeout: {e}")))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(keep_alive.then_some(limits.keep_alive));
    t.max_concurrent_bidi_streams(VarInt::from_u32(limits.max_bidi_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(limits.max_uni_streams));
    t.stream_receive_window(VarInt::from_u32(limits.stream_window_bytes));
    t.receive_window(VarInt::from_u32(limits.connection_window_bytes));
    t.datagram_receive_buffer_size(None);
    // With segmentation offload every connection keeps a transmit buffer for a
    // burst of datagrams (about 13 KiB each, for its whole life). The agent
    // sends bursts (batches); the server sends acks and credit, a datagram at a
    // time, and holds thousands of connections: it goes without.
    t.enable_segmentation_offload(side == Side::Client);
    Ok(t)
}

/// Binds a server endpoint with `crypto` (from [`crate::server_crypto`]).
///
/// `reset_secret` (the server's private key bytes will do: only a keyed hash of it
/// is used) fixes the stateless-reset and connection-id keys across restarts.
/// quinn's defaults are random per process, with which a restarted aggregator
/// drops the packets of its predecessor's connections instead of resetting them,
/// and agents wait out their idle timeout before reconnecting.
pub fn server_endpoint(
    bind: SocketAddr,
    crypto: rustls::ServerConfig,
    limits: &EndpointLimits,
    reset_secret: &[u8],
) -> Result<Endpoint, TlsError> {
    server_endpoint_with(bind, server_config(crypto, limits)?, limits, reset_secret)
}

/// The QUIC server configuration [`server_endpoint`] runs with: `crypto`
/// with the limits' transport, handshake and retry settings. Kept by a caller
/// that reloads its certificates ([`crate::ServerTlsSlot`]): a clone with new
/// crypto keeps the retry token key.
pub fn server_config(
    crypto: rustls::ServerConfig,
    limits: &EndpointLimits,
) -> Result<quinn::ServerConfig, TlsError> {
    let quic = QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport(limits, Side::Server)?));
    // quinn's queue of attempts the accept loop has not looked at yet; beyond
    // it quinn drops Initials without a word. The accept loop refuses what
    // exceeds the handshake limit at once (the aggregator's gate), so this
    // only has to absorb a burst arriving faster than one loop turn.
    cfg.max_incoming(limits.max_pending_handshakes.max(MIN_INCOMING_QUEUE));
    cfg.retry_token_lifetime(limits.retry_token_lifetime);
    cfg.migration(false);
    Ok(cfg)
}

/// [`server_endpoint`] with a configuration made by [`server_config`].
pub fn server_endpoint_with(
    bind: SocketAddr,
    cfg: quinn::ServerConfig,
    limits: &EndpointLimits,
    reset_secret: &[u8],
) -> Result<Endpoint, TlsError> {
    let label = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"ferrule stateless reset v1");
    let derived = ring::hmac::sign(&label, reset_secret);
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref());
    let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    // The connection-id generator signs its ids with a key too; a restarted process
    // must accept the old ids as its own, or it drops their packets instead of
    // answering with a reset.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derived.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    endpoint_cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = std::net::UdpSocket::bind(bind)
        .map_err(|e| TlsError::Rustls(format!("binding {bind}: {e}")))?;
    grow_receive_buffer(&socket, limits.socket_receive_buffer_bytes);
    Endpoint::new(
        endpoint_cfg,
        Some(cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| TlsError::Rustls(format!("binding {bind}: {e}")))
}

/// Asks for a receive buffer of `bytes` on `socket`. Best effort: the kernel may
/// grant less (its `rmem_max`), and the endpoint works with the default, only
/// with more Initials dropped under a burst; so a refusal is logged, not fatal.
fn grow_receive_buffer(socket: &std::net::UdpSocket, bytes: usize) {
    let result = quinn::udp::UdpSocketState::new(socket.into()).and_then(|state| {
        if state.recv_buffer_size(socket.into())? < bytes {
            state.set_recv_buffer_size(socket.into(), bytes)?;
        }
        state.recv_buffer_size(socket.into())
    });
    match result {
        Ok(granted) if granted < bytes => tracing::info!(
            asked = bytes,
            granted,
            "UDP receive buffer smaller than asked (raise net.core.rmem_max)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot size the UDP receive buffer"),
    }
}

/// Binds a client endpoint whose connections use `crypto` (from
/// [`crate::client_crypto`]).
pub fn client_endpoint(
    bind: SocketAddr,
    crypto: rustls::ClientConfig,
    limits: &EndpointLimits,
) -> Result<Endpoint, TlsError> {
    let cfg = client_config(crypto, limits)?;
    let mut ep =
        Endpoint::client(bind).map_err(|e| TlsError::Rustls(format!("binding {bind}: {e}")))?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// The QUIC client configuration [`client_endpoint`] connects with: for an
/// agent that reloads its certificate (`Endpoint::set_default_client_config`).
pub fn client_config(
    crypto: rustls::ClientConfig,
    limits: &EndpointLimits,
) -> Result<quinn::ClientConfig, TlsError> {
    let quic = QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport(limits, Side::Client)?));
    Ok(cfg)
}

/// Waits for the next incoming connection whose source address is validated:
/// an unvalidated one is answered with a Retry (a spoofed source never gets
/// past this, and costs us one packet). `None` once the endpoint is closed.
pub async fn accept_validated(endpoint: &Endpoint, retry: bool) -> Option<quinn::Incoming> {
    loop {
        let incoming = endpoint.accept().await?;
        if retry && !incoming.remote_address_validated() && incoming.may_retry() {
            // Err only if the Incoming cannot be retried, which may_retry excluded.
            let _ = incoming.retry();
            continue;
        }
        return Some(incoming);
    }
}
