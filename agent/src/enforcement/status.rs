//! What the engine shows on `/status` → `enforcement` (the decisions themselves are
//! `/status` → `decisions`).

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RuleStatus {
    pub name: String,
    /// Effective mode.
    pub mode: &'static str,
    pub condition: String,
    pub scope: String,
    pub action: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ActiveStatus {
    pub journal_id: u64,
    pub rule: String,
    pub action: String,
    pub target: String,
    pub acted_unix_ms: u64,
    pub expires_unix_ms: u64,
    pub persist: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RateLimitStatus {
    pub cgroup_id: u64,
    pub direction: &'static str,
    pub bytes_per_second: u64,
    pub packets_per_second: u64,
    pub burst_ns: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    /// Passed with congestion notification (egress).
    pub cn_packets: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EnforcementStatus {
    /// The global mode.
    pub mode: &'static str,
    /// What a remote config may set (`deny`, `monitor`, `enforce`).
    pub remote: &'static str,
    pub rules: Vec<RuleStatus>,
    /// Limiting actions in effect (the journal).
    pub active: Vec<ActiveStatus>,
    pub rate_limits: Vec<RateLimitStatus>,
    /// pid → when armed, for signals the kernel sends at a syscall.
    pub armed_signals: BTreeMap<u32, u64>,
    /// Each loaded kernel object's own counters (`ratelimit`, `block`, `signal`).
    pub kernel: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Decisions by rule and outcome since the start.
    pub decisions: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// The sampling caps in effect (every `degrade` source merged: the lowest wins).
    pub degrade: DegradeStatus,
    /// The decision path's scheduling priority (`enforcement.nice`).
    pub decision_path: DecisionPathStatus,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DecisionPathStatus {
    /// The nice value its threads are set to.
    pub nice: i32,
    /// Threads on it now (signal-feeding drains, the deriver and engine runtime).
    pub threads: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DegradeStatus {
    /// `probes.profiler.frequency` at most this (Hz).
    pub profiler_frequency: Option<u32>,
    /// `probes.syscalls.top_processes` at most this.
    pub top_processes: Option<usize>,
}
