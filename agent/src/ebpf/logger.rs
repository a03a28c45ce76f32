//! Forwards kernel-side diagnostics (aya-log records) into the agent's `tracing` log, tagged
//! with the probe's name.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

/// A `log::Log` that re-emits records as `tracing` events with a `probe` field.
struct ProbeLog {
    probe: &'static str,
}

impl log::Log for ProbeLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        let probe = self.probe;
        match record.level() {
            log::Level::Error => tracing::error!(probe, kernel = true, "{msg}"),
            log::Level::Warn => tracing::warn!(probe, kernel = true, "{msg}"),
            log::Level::Info => tracing::info!(probe, kernel = true, "{msg}"),
            log::Level::Debug => tracing::debug!(probe, kernel = true, "{msg}"),
            log::Level::Trace => tracing::trace!(probe, kernel = true, "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Starts forwarding `probe`'s kernel log records; `None` when the object logs nothing.
/// Must run inside a tokio runtime. Abort the handle to stop.
pub fn spawn(probe: &'static str, bpf: &mut Ebpf) -> Option<JoinHandle<()>> {
    // A probe started on its own drain thread has no runtime here: kernel logs are off then,
    // instead of a panic that kills the probe's start.
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::debug!(
            probe,
            "no tokio runtime on this thread: kernel log forwarding is off"
        );
        return None;
    }
    let logger = match EbpfLogger::init_with_logger(bpf, ProbeLog { probe }) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(probe, "no kernel log forwarding: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns the ring buffer fd and moves into the AsyncFd, so the fd stays
    // open and the same for the AsyncFd's whole life.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut afd = match registered {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(
                probe,
                "kernel log ring buffer cannot be polled ({e}); kernel logs are off"
            );
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = afd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
