//! The anomalies detection reports, as the decision engine (and any other consumer) receives
//! them: a typed broadcast, so the engines are wired only in `runtime.rs`.

use std::{sync::Arc, time::SystemTime};

use tokio::sync::broadcast;

use super::{deriver::SignalKey, names::Signal, CHANNEL_CAPACITY};

/// One anomaly on one signal series.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub signal: Signal,
    /// The series: the process (and syscall, for a per-syscall watch).
    pub key: Arc<SignalKey>,
    /// The observation time of the value that was anomalous (the drain's kernel read).
    pub time: SystemTime,
    /// In [0, 1]; reported at or above the detector's threshold.
    pub score: f64,
    pub value: f64,
    /// The range the detector expected for this value.
    pub expected_min: f64,
    pub expected_max: f64,
}

/// The broadcast of anomalies. Publishing never blocks; a lagging subscriber loses the oldest.
#[derive(Clone)]
pub struct AnomalyHub {
    tx: broadcast::Sender<Arc<Anomaly>>,
}

impl Default for AnomalyHub {
    fn default() -> Self {
        Self::new()
    }
}

impl AnomalyHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY * 16);
        AnomalyHub { tx }
    }

    pub fn publish(&self, a: Anomaly) {
        let _ = self.tx.send(Arc::new(a));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Anomaly>> {
        self.tx.subscribe()
    }
}
