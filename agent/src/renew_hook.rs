//! The renew hook's driver: runs `tls.renew_command` when
//! [`crate::renew_schedule`] says the certificate is due.
//!
//! A task of its own, so a slow or hanging hook never holds the uplink: the
//! command runs under `tokio::process` (argv, no shell, stdin closed), is
//! killed when it outlives `tls.renew_timeout_secs` (or the agent stops), and
//! its stdout and stderr are kept up to [`OUTPUT_LIMIT_BYTES`] each (the rest
//! is read and dropped, so a chatty hook cannot block on a full pipe) and
//! logged at warn when it fails. The hook writes the new certificate (e.g.
//! `ferrule-certs renew`); the uplink's reload watcher
//! ([`crate::tls_reload`]) checks and takes it before the next connection,
//! and this task reads the file again at once, so the new certificate gets
//! its own schedule.
//!
//! Metrics: `ferrule_agent_tls_renew_total{outcome="ok|failed|timeout"}`
//! (each published at 0), and `ferrule_agent_tls_renew_next_seconds`, the
//! Unix time of the next attempt (0 while the hook is off or the
//! certificate cannot be read).

use crate::config::Config;
use crate::renew_schedule::{CertLifetime, Decision, RenewPolicy, RenewSchedule};
use ferrule_telemetry::{Counter, Gauge, Registry};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Most bytes of the hook's stdout, and of its stderr, kept for the log.
pub const OUTPUT_LIMIT_BYTES: usize = 8 * 1024;

/// Longest the driver sleeps before it reads the certificate again, so a
/// certificate renewed by other means (or a clock step) is noticed.
const RECHECK: Duration = Duration::from_secs(60);

/// How one run of the hook ended.
#[derive(Debug)]
pub enum HookOutcome {
    /// Exited 0.
    Ok {
        /// What it printed (bounded).
        stdout: String,
    },
    /// Could not start, or exited non-zero / by a signal.
    Failed {
        /// The exit status, or why it could not start.
        status: String,
        /// What it printed on stdout (bounded).
        stdout: String,
        /// What it printed on stderr (bounded).
        stderr: String,
    },
    /// Outlived the timeout and was killed.
    TimedOut {
        /// What it printed on stdout before (bounded).
        stdout: String,
        /// What it printed on stderr before (bounded).
        stderr: String,
    },
}

impl HookOutcome {
    /// The `outcome` label of `ferrule_agent_tls_renew_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HookOutcome::Ok { .. } => "ok",
            HookOutcome::Failed { .. } => "failed",
            HookOutcome::TimedOut { .. } => "timeout",
        }
    }
}

/// The hook's metrics.
struct Metrics {
    ok: Counter,
    failed: Counter,
    timeout: Counter,
    next: Gauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        let outcome = |label| {
            registry.counter(
                "ferrule_agent_tls_renew_total",
                "Runs of tls.renew_command, by outcome (ok, failed: non-zero exit or could not start, timeout: killed).",
                &[("outcome", label)],
            )
        };
        Self {
            ok: outcome("ok"),
            failed: outcome("failed"),
            timeout: outcome("timeout"),
            next: registry.gauge(
                "ferrule_agent_tls_renew_next_seconds",
                "When tls.renew_command runs next, Unix seconds (0: off, or the certificate cannot be read).",
                &[],
            ),
        }
    }

    fn count(&self, outcome: &HookOutcome) {
        match outcome {
            HookOutcome::Ok { .. } => self.ok.inc(),
            HookOutcome::Failed { .. } => self.failed.inc(),
            HookOutcome::TimedOut { .. } => self.timeout.inc(),
        }
    }
}

/// Publishes the hook's metrics (at 0) and, if `tls.renew_command` is set,
/// runs the hook's schedule until `stop` turns true.
pub async fn run(cfg: Config, registry: Registry, mut stop: watch::Receiver<bool>) {
    let metrics = Metrics::new(&registry);
    let Some(argv) = cfg.tls.renew_command.clone().filter(|a| !a.is_empty()) else {
        return;
    };
    let timeout = Duration::from_secs(cfg.tls.renew_timeout_secs);
    let cert_path = cfg.tls.cert.clone();
    let mut schedule = RenewSchedule::new(RenewPolicy {
        at_fraction: cfg.tls.renew_at_fraction,
        jitter_fraction: cfg.tls.renew_jitter_fraction,
        retry_secs: cfg.tls.renew_retry_secs,
    });
    let mut announced: Option<i64> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let known = match read_lifetime(&cert_path) {
            Ok(cert) => {
                schedule.observe(cert);
                true
            }
            Err(e) => {
                tracing::warn!(cert = %cert_path.display(), error = %e, "renew hook: cannot read the certificate; trying again later");
                false
            }
        };
        let now = unix_now();
        let decision = schedule.poll(now);
        let next = match decision {
            Decision::RunNow => now,
            Decision::NextAt(t) => t,
        };
        metrics.next.set(if known { next } else { 0 });
        if known && announced != Some(next) {
            announced = Some(next);
            tracing::info!(
                next_unix = next,
                in_secs = next.saturating_sub(now),
                "renew hook: next attempt scheduled"
            );
        }
        if decision == Decision::RunNow && known {
            tracing::info!(command = ?argv, "renew hook: the certificate is due, running the command");
            let outcome = tokio::select! {
                o = run_command(&argv, timeout) => o,
                _ = stop.wait_for(|s| *s) => return,
            };
            metrics.count(&outcome);
            schedule.attempted(unix_now());
            log_outcome(&outcome, &argv, timeout);
            if let HookOutcome::Ok { .. } = outcome {
                match read_lifetime(&cert_path) {
                    Ok(c) => {
                        tracing::info!(serial = %c.serial, not_after_unix = c.not_after_unix, "renew hook: certificate file after the hook; new connections use it once it passes the reload checks")
                    }
                    Err(e) => {
                        tracing::warn!(cert = %cert_path.display(), error = %e, "renew hook: the command succeeded but the certificate cannot be read")
                    }
                }
            }
            continue;
        }
        let wait = u64::try_from(next.saturating_sub(now))
            .map_or(Duration::ZERO, Duration::from_secs)
            .min(RECHECK)
            .max(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn log_outcome(outcome: &HookOutcome, argv: &[String], timeout: Duration) {
    match outcome {
        HookOutcome::Ok { stdout } => {
            tracing::info!(command = ?argv, stdout = %stdout.trim_end(), "renew hook: ok");
        }
        HookOutcome::Failed {
            status,
            stdout,
            stderr,
        } => {
            tracing::warn!(command = ?argv, %status, stdout = %stdout.trim_end(), stderr = %stderr.trim_end(), "renew hook failed; the current certificate stays in use, retrying after tls.renew_retry_secs");
        }
        HookOutcome::TimedOut { stdout, stderr } => {
            tracing::warn!(command = ?argv, timeout_secs = timeout.as_secs(), stdout = %stdout.trim_end(), stderr = %stderr.trim_end(), "renew hook timed out and was killed; the current certificate stays in use, retrying after tls.renew_retry_secs");
        }
    }
}

/// The validity and serial of the first certificate in `path`.
fn read_lifetime(path: &Path) -> Result<CertLifetime, String> {
    let leaf = ferrule_transport::leaf_summary(path).map_err(|e| e.to_string())?;
    Ok(CertLifetime {
        serial: leaf.serial,
        not_before_unix: leaf.not_before_unix,
        not_after_unix: leaf.not_after_unix,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Runs `argv` (no shell, stdin closed) for at most `timeout`, killing it
/// then; stdout and stderr kept up to [`OUTPUT_LIMIT_BYTES`] each.
pub async fn run_command(argv: &[String], timeout: Duration) -> HookOutcome {
    let Some((program, args)) = argv.split_first() else {
        return HookOutcome::Failed {
            status: "empty command".into(),
            stdout: String::new(),
            stderr: String::new(),
        };
    };
    let spawned = tokio::process::Command::new(PathBuf::from(program))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return HookOutcome::Failed {
                status: format!("cannot start {program:?}: {e}"),
                stdout: String::new(),
                stderr: String::new(),
            }
        }
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finished = tokio::time::timeout(timeout, async {
        let (_, _, status) = tokio::join!(
            read_bounded(stdout, &mut out),
            read_bounded(stderr, &mut err),
            child.wait()
        );
        status
    })
    .await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match finished {
        Ok(Ok(status)) if status.success() => HookOutcome::Ok { stdout: text(&out) },
        Ok(Ok(status)) => HookOutcome::Failed {
            status: status.to_string(),
            stdout: text(&out),
            stderr: text(&err),
        },
        Ok(Err(e)) => HookOutcome::Failed {
            status: format!("cannot wait for it: {e}"),
            stdout: text(&out),
            stderr: text(&err),
        },
        Err(_) => {
            // Kill and reap; a grandchild that kept the pipes open is not
            // waited for (the pipes are dropped with this future).
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            HookOutcome::TimedOut {
                stdout: text(&out),
                stderr: text(&err),
            }
        }
    }
}

/// Reads `pipe` to its end, keeping the first [`OUTPUT_LIMIT_BYTES`] in `buf`.
async fn read_bounded(pipe: Option<impl AsyncRead + Unpin>, buf: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = OUTPUT_LIMIT_BYTES.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn outcomes_and_bounded_output() {
        let ok = run_command(
            &argv(&["sh", "-c", "echo renewed"]),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(&ok, HookOutcome::Ok { stdout } if stdout == "renewed\n"),
            "{ok:?}"
        );
        let failed = run_command(
            &argv(&["sh", "-c", "echo out; echo bad >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .await;
        match &failed {
            HookOutcome::Failed {
                status,
                stdout,
                stderr,
            } => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(stdout, "out\n");
                assert_eq!(stderr, "bad\n");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(failed.label(), "failed");
        let missing = run_command(&argv(&["/nonexistent/renew"]), Duration::from_secs(10)).await;
        assert_eq!(missing.label(), "failed");
        // A flood of output is kept bounded and does not block the hook.
        let chatty = run_command(
            &argv(&["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x; exit 1"]),
            Duration::from_secs(10),
        )
        .await;
        match &chatty {
            HookOutcome::Failed { stdout, .. } => assert_eq!(stdout.len(), OUTPUT_LIMIT_BYTES),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_hanging_hook_is_killed_at_the_timeout() {
        let started = std::time::Instant::now();
        let hung = run_command(
            &argv(&["sh", "-c", "echo started; exec sleep 30"]),
            Duration::from_millis(500),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        match &hung {
            HookOutcome::TimedOut { stdout, .. } => assert_eq!(stdout, "started\n"),
            other => panic!("{other:?}"),
        }
        assert_eq!(hung.label(), "timeout");
    }
}
