//! What detection shows on `/status`: the engine's figures (`detection`) and the recent
//! anomalies (`anomalies`, newest first, at most `detection.recent`).

use std::collections::BTreeMap;

use serde::Serialize;

/// The engine's state and costs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DetectionStatus {
    pub enabled: bool,
    /// The watches, as configured (`process.syscall.rate`, `process.syscall.rate{getppid}`).
    pub watching: Vec<String>,
    /// Series with a detector now, and the bound.
    pub series: usize,
    pub max_series: usize,
    /// Series dropped to stay within `max_series` (least recently active first).
    pub evictions: u64,
    /// Series dropped because their process ended (an exit is not an anomaly) or a newer
    /// incarnation of its pid replaced it (an exec, a reused pid).
    pub forgotten: u64,
    /// Samples ignored: a non-finite value or a time before the Unix epoch.
    pub skipped: u64,
    pub anomalies_total: u64,
    /// Signal batches taken, samples in them, and batches lost because the engine fell behind.
    pub batches: u64,
    pub samples: u64,
    pub lagged_batches: u64,
    /// Detector state over every series (the keys and bookkeeping come on top, ~0.6 KB per
    /// series).
    pub state_bytes: usize,
    /// CPU time the engine spent on batches (this task's thread time while it handled them).
    pub cpu_seconds: f64,
    pub last_batch_cpu_us: f64,
}

/// One anomaly as `/status` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnomalyEntry {
    /// `anomaly.signal`.
    pub signal: &'static str,
    /// Observation time of the anomalous value (the kernel read), Unix ns.
    pub time_unix_nano: u64,
    pub score: f64,
    pub value: f64,
    /// The range the value was expected in (absent when the detector had none).
    pub expected_min: Option<f64>,
    pub expected_max: Option<f64>,
    /// The series' attributes (`process.pid`, `process.executable.name`, `container.id`,
    /// `syscall.name`).
    pub attributes: BTreeMap<&'static str, serde_json::Value>,
}

/// Both parts, as the engine task publishes them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub status: DetectionStatus,
    /// Newest first.
    pub anomalies: Vec<AnomalyEntry>,
}
