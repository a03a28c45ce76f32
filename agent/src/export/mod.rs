//! Export: every interval, the store's metrics (and the connection events gathered since) leave
//! as OTLP — to a collector over gRPC or HTTP through an on-disk spool, or, for a signal with no
//! endpoint, as OTLP JSON lines files under the output directory.
//!
//! Invariants: no unbounded memory queue (connection events wait in a bounded buffer, requests
//! wait on disk); a collector outage, a bad endpoint or a full disk never stops the agent; the
//! exporter is rebuilt whole when its settings change (SIGHUP); on shutdown one last export is
//! made and delivery gets a short grace period, the rest stays spooled for the next start.

pub mod bench;
pub mod delivery;
pub mod logs;
pub mod metrics;
pub mod resource;
pub mod retry;
pub mod settings;
pub mod spool;
pub mod transport;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use prost::Message;
use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use self::{
    delivery::Delivery,
    metrics::MetricsEncoder,
    settings::{signal_name, Settings},
    spool::{Signal, Spool},
    transport::Transport,
};
use crate::{
    metrics::Store,
    output::{self, OutputSettings},
    selfstats,
    status::state::{AgentState, ConnRecord},
    transform::{Consumer, Transformer},
};

/// Data points per metrics request (larger exports are split).
pub const MAX_POINTS_PER_REQUEST: usize = 2000;
/// Log records per request.
pub const MAX_RECORDS_PER_REQUEST: usize = 2000;
/// Connection events buffered between exports; at it they are exported early. One request's
/// worth: under a connection storm (the soak's 300 connections/s) the buffer filled to 10,000
/// events (3.8 MB) with the old bound, and each early export then built 10,000 records.
const MAX_BUFFERED_EVENTS: usize = MAX_RECORDS_PER_REQUEST;
/// The smallest interval honoured.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Where the exporter writes: one OTLP delivery per signal that has an endpoint; the other
/// signals go to the local files.
struct Backend {
    files: OutputSettings,
    deliveries: Vec<(Signal, Delivery)>,
}

impl Backend {
    fn delivery(&self, signal: Signal) -> Option<&Delivery> {
        self.deliveries
            .iter()
            .find(|(s, _)| *s == signal)
            .map(|(_, d)| d)
    }
}

/// A running exporter.
pub struct Exporter {
    /// What it was built from (rebuilt when this changes).
    pub key: (Settings, OutputSettings),
    stop: watch::Sender<bool>,
    /// Stops the deliveries, once the producer's last export is in their spools.
    stop_deliveries: watch::Sender<bool>,
    /// The producer first, then one delivery per signal.
    tasks: Vec<JoinHandle<()>>,
}

impl Exporter {
    /// The producer makes its last export (into the spools) and ends; only then do the
    /// deliveries get their grace period, so that export is sent too when the collector
    /// answers, instead of a delivery finding its spool empty and ending first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.into_iter();
        if let Some(producer) = tasks.next() {
            let _ = producer.await;
        }
        let _ = self.stop_deliveries.send(true);
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Starts the exporter. `settings` with no target means local files under `output`.
pub fn spawn(
    settings: Settings,
    output: OutputSettings,
    store: Arc<Store>,
    state: Arc<AgentState>,
    transform: Arc<Transformer>,
) -> Exporter {
    let (stop, rx) = watch::channel(false);
    let (stop_deliveries, delivery_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let instance = resource::instance_id(&output.dir);
    let resource = resource::build(&instance, |k| std::env::var(k).ok());
    transform.set_resource(resource.clone());
    let backend = if settings.targets.is_empty() {
        state.update_exporter(|e| {
            e.kind = "file".into();
            e.target = output.dir.display().to_string();
        });
        Backend {
            files: output.clone(),
            deliveries: Vec::new(),
        }
    } else {
        let mut deliveries = Vec::new();
        for target in &settings.targets {
            let name = signal_name(target.signal);
            let transport = match Transport::new(target) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(signal = name, "{}", e.cause);
                    tracing::error!(signal = name, "fix: {}", e.fix);
                    state.update_exporter(|x| {
                        x.healthy = Some(false);
                        x.last_error = Some(e.cause.clone());
                    });
                    continue;
                }
            };
            let dir = settings.spool_dir.join(name);
            // Each signal gets its share of the spool budget (metrics the largest).
            let share = match target.signal {
                Signal::Metrics => settings.spool_max_bytes / 2,
                _ => settings.spool_max_bytes / 4,
            };
            let spool = match Spool::open(&dir, share) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(
                        signal = name,
                        "cannot open the export spool {}: {e}",
                        dir.display()
                    );
                    tracing::error!(
                        signal = name,
                        "fix: make export.spool.dir writable, or point it elsewhere"
                    );
                    state.update_exporter(|x| {
                        x.healthy = Some(false);
                        x.last_error = Some(e.to_string());
                    });
                    continue;
                }
            };
            let d = Delivery::new(target.signal, spool, target.url.to_string(), state.clone());
            let grace = target.timeout.min(Duration::from_secs(5));
            tasks.push(tokio::spawn(d.clone().run(
                transport,
                delivery_rx.clone(),
                grace,
            )));
            deliveries.push((target.signal, d));
        }
        let targets: Vec<String> = settings.targets.iter().map(|t| t.url.to_string()).collect();
        state.update_exporter(|e| {
            e.kind = "otlp".into();
            e.target = targets.join(" ");
        });
        tracing::info!(targets = %targets.join(" "), protocol = settings.targets[0].protocol.as_str(), "exporting over OTLP");
        Backend {
            files: output.clone(),
            deliveries,
        }
    };
    let producer = Producer {
        interval: if backend.deliveries.is_empty() {
            output.interval
        } else {
            settings.interval
        }
        .max(MIN_INTERVAL),
        encoder: MetricsEncoder::new(settings.temporality, MAX_POINTS_PER_REQUEST),
        resource,
        backend,
        store,
        state,
        transform,
        events: Vec::new(),
        records: Vec::new(),
        failing: None,
    };
    tasks.insert(0, tokio::spawn(producer.run(rx)));
    Exporter {
        key: (settings, output),
        stop,
        stop_deliveries,
        tasks,
    }
}

struct Producer {
    interval: Duration,
    encoder: MetricsEncoder,
    resource: opentelemetry_proto::tonic::resource::v1::Resource,
    backend: Backend,
    store: Arc<Store>,
    state: Arc<AgentState>,
    /// `transform:`/`filter:`, applied to each signal once per export.
    transform: Arc<Transformer>,
    events: Vec<ConnRecord>,
    /// Log records engines made (detection's anomalies), exported with the connection events.
    records: Vec<Arc<crate::status::state::LogRecord>>,
    /// The last file-write error logged (logged once while it persists).
    failing: Option<String>,
}

impl Producer {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut conns = self.state.subscribe_connections();
        let mut profiles = self.state.subscribe_profiles();
        let mut records = self.state.subscribe_log_records();
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = ticker.tick() => self.export().await,
                r = conns.recv() => match r {
                    Ok(ev) => {
                        self.buffer(ev);
                        if self.events.len() >= MAX_BUFFERED_EVENTS {
                            self.export_logs().await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "connection events arrived faster than the exporter took them");
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                r = records.recv() => match r {
                    Ok(rec) => {
                        self.records.push(rec);
                        if self.records.len() >= MAX_BUFFERED_EVENTS {
                            self.export_logs().await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "log records arrived faster than the exporter took them");
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                r = profiles.recv() => match r {
                    Ok(p) => self.export_profile(&p).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "profiles arrived faster than the exporter took them");
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                r = shutdown.changed() => if r.is_err() { break },
            }
        }
        while let Ok(p) = profiles.try_recv() {
            self.export_profile(&p).await;
        }
        while let Ok(ev) = conns.try_recv() {
            self.buffer(ev);
        }
        while let Ok(rec) = records.try_recv() {
            self.records.push(rec);
        }
        self.export().await;
    }

    /// Buffers one connection event; a failure right after its close (the kernel's usual
    /// order) sets `error.type` on that close record instead of making a record of its own.
    fn buffer(&mut self, ev: ConnRecord) {
        if ev.event == "failure" {
            if let Some(close) = self
                .events
                .iter_mut()
                .rev()
                .find(|c| c.cookie == ev.cookie && c.event == "close")
            {
                close.error_type = ev.error_type;
                return;
            }
        }
        self.events.push(ev);
    }

    async fn export(&mut self) {
        let (store, state) = (&self.store, &self.state);
        let snapshot = || {
            let mut batches = store.snapshot();
            let own = selfstats::batch(&selfstats::sample(), state, state.started_at);
            batches.push(Arc::new(own));
            batches
        };
        let now = SystemTime::now();
        let view = match self
            .transform
            .metrics(Consumer::Export, snapshot, &self.resource, now)
        {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("{e}");
                self.export_logs().await;
                return;
            }
        };
        let mut requests = self.encoder.encode(&view.batches, &view.resource, now);
        if let Some(scope) = &view.scope {
            for (r, _) in &mut requests {
                for sm in r
                    .resource_metrics
                    .iter_mut()
                    .flat_map(|rm| &mut rm.scope_metrics)
                {
                    sm.scope = Some(scope.clone());
                }
            }
        }
        // Its attribute lists serve the next export (the transform's per-series cache).
        self.transform.recycle(Consumer::Export, view);
        match self.backend.delivery(Signal::Metrics) {
            Some(d) => {
                for (r, n) in &requests {
                    d.submit(*n, &r.encode_to_vec());
                }
            }
            None => {
                let requests = requests.into_iter().map(|(r, _)| r).collect();
                self.write_file(output::FILE_NAME, requests).await;
            }
        }
        self.export_logs().await;
    }

    /// Exports the buffered connection events and engine records, one request at a time:
    /// each is built, transformed and written (or submitted) before the next is built.
    async fn export_logs(&mut self) {
        if self.events.is_empty() && self.records.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.events);
        let records = std::mem::take(&mut self.records);
        let resource = self.resource.clone();
        let now = SystemTime::now();
        let requests = logs::requests(&events, &records, &resource, now, MAX_RECORDS_PER_REQUEST);
        for request in requests {
            let mut one = vec![request];
            if let Err(e) = self.transform.logs(&mut one, metrics::unix_nanos(now)) {
                tracing::error!("{e}");
                return;
            }
            match self.backend.delivery(Signal::Logs) {
                Some(d) => {
                    for (r, n) in &one {
                        d.submit(*n, &r.encode_to_vec());
                    }
                }
                None => {
                    let one = one.into_iter().map(|(r, _)| r).collect();
                    self.write_file(LOGS_FILE, one).await;
                }
            }
        }
    }

    /// One profiler interval: OTLP profiles (always protobuf; see `delivery`), or with no
    /// profiles endpoint a gzipped pprof file under `<output.dir>/profiles/`.
    async fn export_profile(&mut self, p: &crate::profile::Profile) {
        let now = metrics::unix_nanos(SystemTime::now());
        match self.backend.delivery(Signal::Profiles) {
            Some(d) => {
                let base = &self.resource.attributes;
                for part in split_profile(p, MAX_STACKS_PER_REQUEST) {
                    let samples = part
                        .processes
                        .iter()
                        .flat_map(|x| &x.samples)
                        .map(|s| s.count)
                        .sum();
                    let mut req = crate::profile::otlp::encode(&part, base);
                    if let Err(e) = self.transform.profile_request(&mut req, now) {
                        tracing::error!("{e}");
                        return;
                    }
                    d.submit(samples, &req.encode_to_vec());
                }
            }
            None => {
                let p = match self.transform.profile_for_pprof(p, now) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!("{e}");
                        return;
                    }
                };
                let bytes = crate::profile::pprof::encode(&p);
                let dir = self.backend.files.dir.join(PROFILES_DIR);
                let name = format!("cpu-{}.pb.gz", p.start_unix_nanos / 1_000_000);
                let r = tokio::task::spawn_blocking(move || {
                    output::write_rotating(&dir, &name, &bytes, PROFILE_FILES_KEPT)
                })
                .await;
                if let Ok(Err(e)) = r {
                    tracing::warn!("cannot write a profile file: {e}");
                }
            }
        }
    }

    /// Appends each request as one JSON line. Each is encoded just before it is written and
    /// dropped right after, so only one encoded line is in memory at a time (a metrics export
    /// on a busy host is several lines of 1–2 MB each).
    async fn write_file<R: serde::Serialize + Send + 'static>(
        &mut self,
        name: &'static str,
        requests: Vec<R>,
    ) {
        let c = self.backend.files.clone();
        let result = tokio::task::spawn_blocking(move || {
            let lines = requests
                .into_iter()
                .filter_map(|r| serde_json::to_vec(&r).ok());
            output::append_lines(&c, name, lines)
        })
        .await;
        let result = match result {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("writer task failed: {e}")),
        };
        match result {
            Ok(w) => {
                if self.failing.take().is_some() {
                    tracing::info!("output writes succeed again");
                }
                self.state.update_exporter(|e| {
                    e.healthy = Some(true);
                    e.last_error = None;
                    e.batches_written += w.batches;
                    e.bytes_written += w.bytes;
                    e.last_success = Some(SystemTime::now());
                });
            }
            Err(msg) => {
                if self.failing.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(
                        "{msg} (the agent keeps running; retrying every {:?})",
                        self.interval
                    );
                }
                self.state.update_exporter(|e| {
                    e.healthy = Some(false);
                    e.last_error = Some(msg.clone());
                });
                self.failing = Some(msg);
            }
        }
    }
}

/// Distinct stacks per profiles request (whole processes per request; a larger process goes
/// alone): keeps requests well under the 4 MiB that gRPC receivers accept by default.
const MAX_STACKS_PER_REQUEST: usize = 10_000;

/// Splits a profile into profiles of whole processes holding at most `max` samples (distinct
/// stacks) each, except a single process larger than that.
fn split_profile(p: &crate::profile::Profile, max: usize) -> Vec<crate::profile::Profile> {
    let mut parts = Vec::new();
    let mut cur = crate::profile::Profile {
        processes: Vec::new(),
        ..p.clone_header()
    };
    let mut n = 0;
    for proc_ in &p.processes {
        if n > 0 && n + proc_.samples.len() > max {
            parts.push(std::mem::replace(
                &mut cur,
                crate::profile::Profile {
                    processes: Vec::new(),
                    ..p.clone_header()
                },
            ));
            n = 0;
        }
        n += proc_.samples.len();
        cur.processes.push(proc_.clone());
    }
    if !cur.processes.is_empty() || parts.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Directory under `output.dir` for pprof files when profiles have no OTLP endpoint.
pub const PROFILES_DIR: &str = "profiles";
/// Profile files kept there (newest first).
const PROFILE_FILES_KEPT: usize = 60;

/// The logs file next to `metrics.jsonl`.
pub const LOGS_FILE: &str = "logs.jsonl";

#[cfg(test)]
mod tests {
    use super::split_profile;
    use crate::profile::{ProcessProfile, Profile, Sample};

    #[test]
    fn profiles_split_by_whole_processes() {
        let proc_ = |pid, n| ProcessProfile {
            pid,
            samples: vec![Sample::default(); n],
            ..Default::default()
        };
        let p = Profile {
            period_nanos: 7,
            processes: vec![proc_(1, 3), proc_(2, 3), proc_(3, 9), proc_(4, 1)],
            ..Default::default()
        };
        let parts = split_profile(&p, 6);
        let pids: Vec<Vec<u32>> = parts
            .iter()
            .map(|x| x.processes.iter().map(|p| p.pid).collect())
            .collect();
        assert_eq!(pids, vec![vec![1, 2], vec![3], vec![4]]);
        assert!(parts.iter().all(|x| x.period_nanos == 7));
        assert_eq!(split_profile(&Profile::default(), 6).len(), 1);
    }
}
