//! systemd's readiness and watchdog protocol (`sd_notify`), without libsystemd.
//!
//! Under a unit with `Type=notify`, systemd starts dependent units only once
//! the process says `READY=1`, and with `WatchdogSec=` it restarts a process
//! that stops saying `WATCHDOG=1` (a runtime wedged, a task spinning). The
//! protocol is one datagram to the socket named in `NOTIFY_SOCKET` (a path, or
//! `@name` for an abstract socket). Without that variable (not under systemd,
//! or `Type=simple`) every call here does nothing.
//!
//! The watchdog ping runs on the async runtime, as a task among the others:
//! if the runtime stops polling tasks, the pings stop and systemd acts.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=value` lines) to systemd. Returns
/// whether it was sent: false when not under a notify unit, or when the
/// socket refused it (logged at debug: the service still runs).
pub fn notify(state: &str) -> bool {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = target.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), std::path::Path::new(&target))?;
        }
        Ok(())
    })();
    match sent {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "sd_notify: not sent");
            false
        }
    }
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`), if it is meant
/// for this process (`WATCHDOG_PID`, when set, is ours).
pub fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Says `READY=1` (with `status` as the unit's status line) and, when
/// systemd asked for a watchdog, starts pinging it at half its period on the
/// current tokio runtime. Call once the service does its job (listening,
/// spool open).
pub fn ready(status: &str) {
    if notify(&format!("READY=1\nSTATUS={status}")) {
        tracing::debug!("sd_notify: READY=1");
    }
    if let Some(period) = watchdog_period() {
        let every = (period / 2).max(Duration::from_millis(100));
        tracing::info!(?period, "systemd watchdog: pinging every half period");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify("WATCHDOG=1");
            }
        });
    }
}

/// Says `STOPPING=1`: the service is shutting down (draining), so systemd
/// does not take the time it takes for a hang.
pub fn stopping() {
    notify("STOPPING=1");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test owns the process environment (tests run in threads).
    #[test]
    fn datagrams_reach_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("ferrule-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        // SAFETY-free: set_var is safe in edition 2021; no other test reads it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1\nSTATUS=up"));
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("ferrule-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let abstract_server = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        assert!(notify("WATCHDOG=1"));
        let n = abstract_server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");

        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!notify("READY=1"), "nothing to send to without systemd");

        std::env::set_var("WATCHDOG_USEC", "30000000");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_period(), Some(Duration::from_secs(30)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_period(), None, "another process's watchdog");
        std::env::remove_var("WATCHDOG_PID");
        std::env::remove_var("WATCHDOG_USEC");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
