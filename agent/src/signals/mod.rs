//! Per-process activity from the probes (before any folding) and its typed broadcast: the one
//! feed the signal deriver turns into rates and ratios for detection and the decision engine.

pub mod activity;
pub mod anomaly;
pub mod deriver;
pub mod names;

use std::{collections::BTreeSet, sync::Arc};

use tokio::sync::broadcast;

pub use activity::{
    Activity, ActivityBatch, NetworkActivity, NetworkDelta, ProcessRef, SyscallActivity,
    SyscallDelta,
};
pub use anomaly::{Anomaly, AnomalyHub};
pub use deriver::{Deriver, SignalBatch, SignalKey, SignalSample};
pub use names::Signal;

/// Batches a subscriber may fall behind before it loses the oldest ones.
pub const CHANNEL_CAPACITY: usize = 64;

/// The broadcast of every probe's activity batches. Publishing never blocks; a subscriber that
/// falls behind loses the oldest batches (`RecvError::Lagged`) and continues.
#[derive(Clone)]
pub struct ActivityHub {
    tx: broadcast::Sender<Arc<ActivityBatch>>,
}

impl Default for ActivityHub {
    fn default() -> Self {
        Self::new()
    }
}

impl ActivityHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        ActivityHub { tx }
    }

    /// Sends `batch` to every subscriber (none is fine).
    pub fn publish(&self, batch: ActivityBatch) {
        let _ = self.tx.send(Arc::new(batch));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ActivityBatch>> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (probes skip building batches nobody reads).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}

/// The broadcast of derived signals (detection and the decision engine subscribe).
#[derive(Clone)]
pub struct SignalHub {
    tx: broadcast::Sender<Arc<SignalBatch>>,
}

impl Default for SignalHub {
    fn default() -> Self {
        Self::new()
    }
}

impl SignalHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        SignalHub { tx }
    }

    pub fn publish(&self, batch: SignalBatch) {
        let _ = self.tx.send(Arc::new(batch));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SignalBatch>> {
        self.tx.subscribe()
    }
}

/// What one consumer needs from the deriver: the syscall numbers that need per-syscall signals,
/// and the signals it reads (the deriver reads `/proc` only for CPU and memory someone needs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub syscalls: BTreeSet<u32>,
    pub signals: BTreeSet<Signal>,
}

impl Need {
    /// Whether some consumer reads `signal`.
    pub fn wants(&self, signal: Signal) -> bool {
        self.signals.contains(&signal)
    }
}

/// What the deriver must make, per consumer (`detection`, `enforcement`): each engine sets its
/// own [`Need`] on (re)configuration; the deriver makes samples for the union.
#[derive(Clone, Default)]
pub struct Demand {
    inner: Arc<std::sync::RwLock<std::collections::BTreeMap<&'static str, Need>>>,
}

impl Demand {
    pub fn set(&self, consumer: &'static str, need: Need) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(consumer, need);
    }

    /// Every syscall and signal some consumer wants.
    pub fn union(&self) -> Need {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut all = Need::default();
        for n in inner.values() {
            all.syscalls.extend(n.syscalls.iter().copied());
            all.signals.extend(n.signals.iter().copied());
        }
        all
    }
}

/// Runs the deriver on every activity batch until the hub closes: the task `runtime.rs`
/// starts. `demand` is re-read at every batch, so a reloaded watch or rule takes effect at the
/// next drain.
pub async fn run_deriver(activity: ActivityHub, signals: SignalHub, demand: Demand) {
    let mut rx = activity.subscribe();
    let mut d = Deriver::new();
    loop {
        match rx.recv().await {
            Ok(batch) => {
                d.set_demand(&demand.union());
                // /proc reads: off the async workers' cooperative budget.
                let out = tokio::task::block_in_place(|| d.derive(&batch));
                signals.publish(out);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    lost = n,
                    "signal deriver fell behind: {n} activity batches skipped"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
