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
    /// OTLP delivery per signal (`metrics`, `logs`, `profiles`).
    pub signals: BTreeMap<String, SignalStats>,
}

/// Delivery of one signal over OTLP. Counts are requests unless said otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SignalStats {
    pub target: String,
    /// Requests the collector took, and the data points / log records in them.
    pub sent_requests: u64,
    pub sent_points: u64,
    /// Send attempts that failed with a retryable error (each retried later).
    pub retried: u64,
    /// Requests that waited in the spool through at least one failed attempt.
    pub spooled: u64,
    /// Requests dropped unsent: the spool was full (oldest first).
    pub dropped: u64,
    pub dropped_points: u64,
    /// Requests the collector refused for good (not retryable); their points are lost.
    pub failed: u64,
    pub failed_points: u64,
    /// Points the collector refused in a partial success (never retried).
    pub rejected: u64,
    /// Requests waiting in the spool now.
    pub queued_requests: u64,
    /// Bytes of the spool files on disk (popped records count until their segment goes).
    pub spool_bytes: u64,
    pub last_error: Option<String>,
}

/// Profiles waiting for the exporter (one per interval; the exporter takes them at once).
const PROFILES_CAPACITY: usize = 16;

/// A request to the running profiler: the samples of the next `duration` (one process when
/// `pid` is given), symbolized.
pub struct CaptureRequest {
    pub duration: std::time::Duration,
    pub pid: Option<u32>,
    pub reply: tokio::sync::oneshot::Sender<crate::profile::Profile>,
}

/// Where capture requests go: the profiler's queue, and what wakes its drain thread.
#[derive(Clone)]
pub struct ProfilerHandle {
    tx: std::sync::mpsc::Sender<CaptureRequest>,
    wake: std::sync::Arc<dyn Fn() + Send + Sync>,
}

impl ProfilerHandle {
    pub fn new(
        tx: std::sync::mpsc::Sender<CaptureRequest>,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        ProfilerHandle {
            tx,
            wake: std::sync::Arc::new(wake),
        }
    }

    /// Queues `req` and wakes the profiler. Errors: the profiler stopped (the request comes
    /// back).
    pub fn send(
        &self,
        req: CaptureRequest,
    ) -> Result<(), std::sync::mpsc::SendError<CaptureRequest>> {
        self.tx.send(req)?;
        (self.wake)();
        Ok(())
    }
}

/// One connection event of the network probe, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnRecord {
    /// `open` (reached ESTABLISHED) or `close`.
    pub event: &'static str,
    /// Unix time of the event, in nanoseconds.
    pub time_unix_nano: u64,
    /// The kernel's socket cookie (unique per socket while the kernel runs).
    pub cookie: u64,
    pub pid: u32,
    pub comm: String,
    /// `client` (connect()) or `server` (accepted).
    pub role: &'static str,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    pub local_address: String,
    pub local_port: u16,
    pub peer_address: String,
    pub peer_port: u16,
    pub handshake_us: Option<u64>,
    pub duration_us: Option<u64>,
    /// Smoothed RTT when the connection left ESTABLISHED (what `ss -ti` showed).
    pub rtt_us: Option<u64>,
    /// Payload bytes acked by the peer.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u32,
    /// `refused`, `timeout`, `reset`, ... when the connection failed.
    pub error_type: Option<&'static str>,
}

/// What the network probe adds to `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetworkStatus {
    /// Newest first.
    pub recent_connections: std::collections::VecDeque<ConnRecord>,
}

/// Health of an engine that is not a probe or the exporter (detection, enforcement, ...), as it
/// reports itself through [`AgentState::set_component`]; OpAMP sends it as ComponentHealth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ComponentStatus {
    pub healthy: bool,
    /// Short state word, e.g. `running`, `monitoring`, `disabled`.
    pub status: String,
    pub last_error: Option<String>,
    /// When it started running (`None`: not running).
    #[serde(skip)]
    pub started: Option<SystemTime>,
}

/// Connection events a subscriber may fall behind before it loses the oldest.
pub const CONNECTION_EVENTS_CAPACITY: usize = 4096;

pub struct AgentState {
    pub started: Instant,
    pub started_at: SystemTime,
    config_hash: RwLock<String>,
    probes: RwLock<BTreeMap<String, ProbeStatus>>,
    /// When each probe's state last changed.
    probe_since: RwLock<BTreeMap<String, SystemTime>>,
    components: RwLock<BTreeMap<String, ComponentStatus>>,
    opamp: RwLock<Option<crate::opamp::status::OpampStatus>>,
    maps: RwLock<BTreeMap<String, MapStats>>,
    exporter: RwLock<ExporterStatus>,
    network: RwLock<NetworkStatus>,
    /// Every connection event as it arrives (for detectors); bounded, lagging receivers lose
    /// the oldest.
    connections: tokio::sync::broadcast::Sender<ConnRecord>,
    pipeline_running: std::sync::atomic::AtomicBool,
    /// Symbolized profiles, one per profiler interval, for the exporter.
    profiles: tokio::sync::broadcast::Sender<std::sync::Arc<crate::profile::Profile>>,
    /// The running profiler's request channel (flame graph captures).
    profiler: std::sync::Mutex<Option<ProfilerHandle>>,
    /// Recent enforcement decisions, newest first (`/status` → `decisions`).
    decisions: RwLock<
        std::collections::VecDeque<std::sync::Arc<crate::enforcement::audit::DecisionRecord>>,
    >,
    /// The enforcement engine's state (`/status` → `enforcement`).
    enforcement: RwLock<Option<crate::enforcement::status::EnforcementStatus>>,
    /// Detection's figures and recent anomalies (`detection::task`).
    detection: RwLock<crate::detection::status::Report>,
    /// OTLP log records made by engines (detection's `agent.anomaly`, enforcement's
    /// `agent.decision`) for the exporter; bounded, lagging receivers lose the oldest.
    log_records: tokio::sync::broadcast::Sender<std::sync::Arc<LogRecord>>,
    /// Self-protection's level and figures (`None`: not running).
    self_protection: RwLock<Option<crate::selfprotect::report::SelfProtectionStatus>>,
}

/// An OTLP log record, as engines hand them to the exporter.
pub type LogRecord = opentelemetry_proto::tonic::logs::v1::LogRecord;

/// Engine log records a subscriber may fall behind before it loses the oldest.
pub const LOG_RECORDS_CAPACITY: usize = 4096;

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
            probe_since: RwLock::default(),
            components: RwLock::default(),
            opamp: RwLock::default(),
            maps: RwLock::default(),
            exporter: RwLock::default(),
            network: RwLock::default(),
            connections: tokio::sync::broadcast::channel(CONNECTION_EVENTS_CAPACITY).0,
            profiles: tokio::sync::broadcast::channel(PROFILES_CAPACITY).0,
            profiler: std::sync::Mutex::new(None),
            self_protection: RwLock::default(),
            pipeline_running: false.into(),
            decisions: RwLock::default(),
            enforcement: RwLock::default(),
            detection: RwLock::default(),
            log_records: tokio::sync::broadcast::channel(LOG_RECORDS_CAPACITY).0,
        }
    }

    /// Records an enforcement decision for `/status` (newest first, at most `keep`).
    pub fn push_decision(
        &self,
        d: std::sync::Arc<crate::enforcement::audit::DecisionRecord>,
        keep: usize,
    ) {
        let mut q = write(&self.decisions);
        q.push_front(d);
        q.truncate(keep);
    }

    /// Recent decisions, newest first.
    pub fn decisions(&self) -> Vec<std::sync::Arc<crate::enforcement::audit::DecisionRecord>> {
        read(&self.decisions).into_iter().collect()
    }

    pub fn set_enforcement(&self, s: crate::enforcement::status::EnforcementStatus) {
        *write(&self.enforcement) = Some(s);
    }

    pub fn enforcement(&self) -> Option<crate::enforcement::status::EnforcementStatus> {
        read(&self.enforcement)
    }

    pub fn set_self_protection(&self, s: Option<crate::selfprotect::report::SelfProtectionStatus>) {
        *write(&self.self_protection) = s;
    }

    pub fn self_protection(&self) -> Option<crate::selfprotect::report::SelfProtectionStatus> {
        read(&self.self_protection)
    }

    pub fn config_hash(&self) -> String {
        read(&self.config_hash)
    }

    pub fn set_config_hash(&self, hash: String) {
        *write(&self.config_hash) = hash;
    }

    pub fn set_probe(&self, name: &str, status: ProbeStatus) {
        let state = status.state;
        let old = write(&self.probes).insert(name.to_string(), status);
        if old.map(|o| o.state) != Some(state) {
            write(&self.probe_since).insert(name.to_string(), SystemTime::now());
        }
    }

    /// When probe `name` entered its current state.
    pub fn probe_since(&self, name: &str) -> Option<SystemTime> {
        read(&self.probe_since).get(name).copied()
    }

    /// Records the health of engine `name` (e.g. `detection`, `enforcement`).
    pub fn set_component(&self, name: &str, status: ComponentStatus) {
        write(&self.components).insert(name.to_string(), status);
    }

    pub fn components(&self) -> BTreeMap<String, ComponentStatus> {
        read(&self.components)
    }

    /// The OpAMP client's state for `/status` (`None`: OpAMP off).
    pub fn set_opamp(&self, s: Option<crate::opamp::status::OpampStatus>) {
        *write(&self.opamp) = s;
    }

    pub fn update_opamp(&self, f: impl FnOnce(&mut crate::opamp::status::OpampStatus)) {
        if let Some(s) = write(&self.opamp).as_mut() {
            f(s);
        }
    }

    pub fn opamp(&self) -> Option<crate::opamp::status::OpampStatus> {
        read(&self.opamp)
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

    /// Adds connection events (oldest first), keeping the newest `keep`. A failure (`event`
    /// `failure`) is not listed on its own: it sets `error_type` on its connection's close.
    pub fn push_connections(&self, records: Vec<ConnRecord>, keep: usize) {
        let mut n = write(&self.network);
        let recent = &mut n.recent_connections;
        for r in records {
            // No subscriber is not an error.
            let _ = self.connections.send(r.clone());
            if r.event == "failure" {
                if let Some(close) = recent
                    .iter_mut()
                    .find(|c| c.cookie == r.cookie && c.event == "close")
                {
                    close.error_type = r.error_type;
                }
                continue;
            }
            recent.push_front(r);
        }
        recent.truncate(keep);
    }

    /// Every connection event (open, close, failure) from now on.
    pub fn subscribe_connections(&self) -> tokio::sync::broadcast::Receiver<ConnRecord> {
        self.connections.subscribe()
    }

    /// Hands one interval's profile to the exporter (no subscriber is not an error).
    pub fn publish_profile(&self, p: std::sync::Arc<crate::profile::Profile>) {
        let _ = self.profiles.send(p);
    }

    /// Every profile from now on.
    pub fn subscribe_profiles(
        &self,
    ) -> tokio::sync::broadcast::Receiver<std::sync::Arc<crate::profile::Profile>> {
        self.profiles.subscribe()
    }

    /// Registers (or, with `None`, removes) the running profiler.
    pub fn set_profiler(&self, h: Option<ProfilerHandle>) {
        *self.profiler.lock().unwrap_or_else(|e| e.into_inner()) = h;
    }

    /// The running profiler, if any.
    pub fn profiler(&self) -> Option<ProfilerHandle> {
        self.profiler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn network(&self) -> NetworkStatus {
        read(&self.network)
    }

    pub fn set_detection(&self, r: crate::detection::status::Report) {
        *write(&self.detection) = r;
    }

    /// Updates detection's figures, leaving the anomaly list as it is.
    pub fn set_detection_status(&self, s: crate::detection::status::DetectionStatus) {
        write(&self.detection).status = s;
    }

    pub fn detection(&self) -> crate::detection::status::Report {
        read(&self.detection)
    }

    /// Hands log records to the exporter (no subscriber is not an error).
    pub fn publish_log_records(&self, records: impl IntoIterator<Item = LogRecord>) {
        for r in records {
            let _ = self.log_records.send(std::sync::Arc::new(r));
        }
    }

    /// Every engine log record from now on.
    pub fn subscribe_log_records(
        &self,
    ) -> tokio::sync::broadcast::Receiver<std::sync::Arc<LogRecord>> {
        self.log_records.subscribe()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &'static str, cookie: u64, error_type: Option<&'static str>) -> ConnRecord {
        ConnRecord {
            event,
            time_unix_nano: 0,
            cookie,
            pid: 1,
            comm: "c".into(),
            role: "client",
            family: "ipv4",
            local_address: "10.0.0.1".into(),
            local_port: 1,
            peer_address: "10.0.0.2".into(),
            peer_port: 2,
            handshake_us: None,
            duration_us: None,
            rtt_us: None,
            bytes_sent: 0,
            bytes_received: 0,
            retransmits: 0,
            error_type,
        }
    }

    #[test]
    fn recent_connections_newest_first_bounded_with_failures_merged() {
        let s = AgentState::new("h".into());
        let mut rx = s.subscribe_connections();
        s.push_connections(
            vec![
                record("open", 1, None),
                record("close", 1, None),
                record("failure", 1, Some("reset")),
                record("close", 2, None),
            ],
            2,
        );
        let recent = s.network().recent_connections;
        assert_eq!(recent.len(), 2);
        assert_eq!((recent[0].cookie, recent[0].event), (2, "close"));
        assert_eq!((recent[1].cookie, recent[1].error_type), (1, Some("reset")));
        // Subscribers see every event, failures included.
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.event)
            .collect();
        assert_eq!(events, ["open", "close", "failure", "close"]);
    }
}
