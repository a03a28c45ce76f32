//! Shared, live state of the agent that `/status` and `/readyz` report: probes, maps, exporter.
//!
//! Writers (probe manager, readers, exporter) update their own entries; readers take cheap
//! snapshots. Locks are never held across an await.

use std::{
    collections::BTreeMap,
    sync::RwLock,
    time::{Instant, SystemTime},
};

use serde::Serialize;

/// Lifecycle of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    /// Turned off in the config.
    Disabled,
    /// Loading or attaching.
    Starting,
    /// Every hook attached; data flowing.
    Attached,
    /// Some hooks attached, some not (see each hook's error).
    Degraded,
    /// Nothing attached (see `error`).
    Failed,
    /// Detached on request (reload or shutdown).
    Detached,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    /// e.g. `raw_tracepoint/sys_enter`.
    pub hook: String,
    pub attached: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    pub state: ProbeState,
    /// One line of cause.
    pub error: Option<String>,
    /// One line of fix.
    pub fix: Option<String>,
    pub hooks: Vec<HookStatus>,
}

/// Events processed and lost through one map or ring buffer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MapStats {
    pub probe: String,
    /// Events aggregated or read (e.g. syscall exits counted in the kernel).
    pub processed: u64,
    /// Events that could not be accounted (insert failures, evictions, collisions, drops).
    pub lost: u64,
    /// Entries in use and capacity, when the map has a size.
    pub entries: Option<u64>,
    pub capacity: Option<u64>,
    /// Named breakdown of `lost` and other counters.
    pub detail: BTreeMap<String, u64>,
}

/// State of the data exporter (the local output writer until OTLP export exists).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExporterStatus {
    pub kind: String,
    pub target: String,
    /// `None` until the first write or send: unknown, not failing.
    pub healthy: Option<bool>,
    pub last_error: Option<String>,
    pub batches_written: u64,
    pub bytes_written: u64,
    #[serde(skip)]
    pub last_success: Option<SystemTime>,
}

pub struct AgentState {
    pub started: Instant,
    pub started_at: SystemTime,
    config_hash: RwLock<String>,
    probes: RwLock<BTreeMap<String, ProbeStatus>>,
    maps: RwLock<BTreeMap<String, MapStats>>,
    exporter: RwLock<ExporterStatus>,
    pipeline_running: std::sync::atomic::AtomicBool,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl AgentState {
    pub fn new(config_hash: String) -> Self {
        AgentState {
            started: Instant::now(),
            started_at: SystemTime::now(),
            config_hash: RwLock::new(config_hash),
            probes: RwLock::default(),
            maps: RwLock::default(),
            exporter: RwLock::default(),
            pipeline_running: false.into(),
        }
    }

    pub fn config_hash(&self) -> String {
        read(&self.config_hash)
    }

    pub fn set_config_hash(&self, hash: String) {
        *write(&self.config_hash) = hash;
    }

    pub fn set_probe(&self, name: &str, status: ProbeStatus) {
        write(&self.probes).insert(name.to_string(), status);
    }

    pub fn probes(&self) -> BTreeMap<String, ProbeStatus> {
        read(&self.probes)
    }

    /// `name` is the map or ring buffer's name (`SYSCALL_STATS`).
    pub fn set_map(&self, name: &str, stats: MapStats) {
        write(&self.maps).insert(name.to_string(), stats);
    }

    pub fn maps(&self) -> BTreeMap<String, MapStats> {
        read(&self.maps)
    }

    pub fn update_exporter(&self, f: impl FnOnce(&mut ExporterStatus)) {
        f(&mut write(&self.exporter));
    }

    pub fn exporter(&self) -> ExporterStatus {
        read(&self.exporter)
    }

    pub fn set_pipeline_running(&self, running: bool) {
        self.pipeline_running
            .store(running, std::sync::atomic::Ordering::Release);
    }

    /// Ready: the pipeline runs and every enabled probe has at least one hook attached.
    /// Returns the reasons it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if !self
            .pipeline_running
            .load(std::sync::atomic::Ordering::Acquire)
        {
            why.push("pipeline not running".to_string());
        }
        for (name, p) in self.probes() {
            match p.state {
                ProbeState::Attached | ProbeState::Degraded | ProbeState::Disabled => {}
                other => why.push(format!(
                    "probe {name} is {other:?}{}",
                    p.error.map(|e| format!(": {e}")).unwrap_or_default()
                )),
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}
