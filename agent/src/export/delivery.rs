//! Delivery of one signal: every request is written to that signal's on-disk spool first, and one
//! task sends the oldest, in order, until the collector takes it.
//!
//! Invariants: memory holds at most one request per signal (the one being sent); the spool is
//! bounded and drops its oldest requests when full (counted); a request leaves the spool only
//! when the collector took it (even partly: partial successes are never retried, as the spec
//! says) or refused it for good; retryable failures wait (server delay, or exponential backoff
//! with jitter) and retry the same request, so order is kept. At-least-once: a crash between a
//! send and its removal sends that one request again after restart.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{watch, Notify};

use super::{
    retry,
    settings::signal_name,
    spool::{Signal, Spool},
    transport::{SendError, Transport},
};
use crate::status::state::{AgentState, SignalStats};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The producer's side of one signal's delivery.
#[derive(Clone)]
pub struct Delivery {
    signal: Signal,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    state: Arc<AgentState>,
}

/// Runs spool I/O (appends, reads, an fdatasync at most once a second) off the async workers'
/// hot path when the runtime allows it (multi-threaded: `block_in_place`).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn update(state: &AgentState, signal: Signal, f: impl FnOnce(&mut SignalStats)) {
    state.update_exporter(|e| {
        f(e.signals
            .entry(signal_name(signal).to_string())
            .or_default())
    });
}

impl Delivery {
    pub fn new(signal: Signal, spool: Spool, target: String, state: Arc<AgentState>) -> Self {
        let d = Delivery {
            signal,
            spool: Arc::new(Mutex::new(spool)),
            wake: Arc::new(Notify::new()),
            state,
        };
        update(&d.state, signal, |s| s.target = target);
        d.report_queue();
        d
    }

    fn report_queue(&self) {
        let st = self.spool.lock().unwrap_or_else(|e| e.into_inner()).stats();
        update(&self.state, self.signal, |s| {
            s.queued_requests = st.records;
            s.spool_bytes = st.bytes;
        });
    }

    /// Removes the request just delivered (or refused for good) from the spool.
    fn pop(&self, id: u64) {
        let popped = blocking(|| self.spool.lock().unwrap_or_else(|e| e.into_inner()).pop(id));
        if let Err(e) = popped {
            tracing::warn!(signal = signal_name(self.signal), "export spool: {e}");
        }
    }

    /// Queues one request (`items` points or records) for delivery.
    pub fn submit(&self, items: u64, bytes: &[u8]) {
        let pushed = blocking(|| {
            self.spool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.signal, items, bytes)
        });
        match pushed {
            Ok(dropped) => {
                if dropped.dropped_records > 0 {
                    tracing::warn!(
                        signal = signal_name(self.signal),
                        requests = dropped.dropped_records,
                        points = dropped.dropped_items,
                        "export spool full: dropped the oldest data"
                    );
                    update(&self.state, self.signal, |s| {
                        s.dropped += dropped.dropped_records;
                        s.dropped_points += dropped.dropped_items;
                    });
                }
            }
            Err(e) => {
                tracing::warn!(
                    signal = signal_name(self.signal),
                    "export spool: {e}; this request is dropped"
                );
                update(&self.state, self.signal, |s| {
                    s.dropped += 1;
                    s.dropped_points += items;
                    s.last_error = Some(e.to_string());
                });
            }
        }
        self.report_queue();
        self.wake.notify_one();
    }

    /// Sends until shutdown; after shutdown, keeps sending while the collector answers, for at
    /// most `grace`, then leaves the rest on disk for the next start.
    pub async fn run(
        self,
        transport: Transport,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let mut attempt = 0u32;
        // When the last retryable failure happened (ms): requests older than it waited.
        let mut last_failure_ms = 0u64;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if deadline.is_none() && *shutdown.borrow() {
                deadline = Some(tokio::time::Instant::now() + grace);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
            let head = blocking(|| self.spool.lock().unwrap_or_else(|e| e.into_inner()).peek());
            let record = match head {
                Ok(Some(r)) => r,
                Ok(None) => {
                    if deadline.is_some() {
                        break;
                    }
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(
                        signal = signal_name(self.signal),
                        "export spool unreadable: {e}"
                    );
                    update(&self.state, self.signal, |s| {
                        s.last_error = Some(e.to_string())
                    });
                    tokio::time::sleep(retry::MAX_BACKOFF).await;
                    continue;
                }
            };
            let waited = last_failure_ms != 0 && record.created_unix_ms <= last_failure_ms;
            match transport.send(&record.bytes).await {
                Ok(accepted) => {
                    attempt = 0;
                    self.pop(record.id);
                    if accepted.rejected > 0 {
                        tracing::warn!(
                            signal = signal_name(self.signal),
                            rejected = accepted.rejected,
                            "the collector rejected part of a request (not retried): {}",
                            accepted.message
                        );
                    }
                    update(&self.state, self.signal, |s| {
                        s.sent_requests += 1;
                        s.sent_points +=
                            record.items.saturating_sub(accepted.rejected.max(0) as u64);
                        s.rejected += accepted.rejected.max(0) as u64;
                        if waited {
                            s.spooled += 1;
                        }
                        s.last_error = None;
                    });
                    self.state.update_exporter(|e| {
                        e.healthy = Some(true);
                        e.last_success = Some(SystemTime::now());
                    });
                }
                Err(SendError::Permanent { message }) => {
                    attempt = 0;
                    self.pop(record.id);
                    tracing::error!(
                        signal = signal_name(self.signal),
                        points = record.items,
                        "{message} (not retryable: dropped)"
                    );
                    update(&self.state, self.signal, |s| {
                        s.failed += 1;
                        s.failed_points += record.items;
                        s.last_error = Some(message.clone());
                    });
                    self.state.update_exporter(|e| {
                        e.healthy = Some(false);
                        e.last_error = Some(message);
                    });
                }
                Err(SendError::Retryable { message, after }) => {
                    attempt += 1;
                    last_failure_ms = now_ms();
                    let wait = retry::delay(attempt, after, retry::jitter());
                    if attempt == 1 {
                        tracing::warn!(
                            signal = signal_name(self.signal),
                            "{message}; retrying (data waits on disk)"
                        );
                    } else {
                        tracing::debug!(
                            signal = signal_name(self.signal),
                            attempt,
                            ?wait,
                            "{message}"
                        );
                    }
                    update(&self.state, self.signal, |s| {
                        s.retried += 1;
                        s.last_error = Some(message.clone());
                    });
                    self.state.update_exporter(|e| {
                        e.healthy = Some(false);
                        e.last_error = Some(message);
                    });
                    if deadline.is_some() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            self.report_queue();
        }
        let _ = blocking(|| self.spool.lock().unwrap_or_else(|e| e.into_inner()).sync());
        self.report_queue();
    }
}
