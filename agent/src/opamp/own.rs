//! Own telemetry (spec "Own Telemetry Reporting"): when the server offers `own_metrics` or
//! `own_logs` endpoints, the agent's self-metrics (`selfstats`: process CPU, memory, threads,
//! fds, eBPF events and losses, as on `/metrics`) go there every 10 s, and its own log records
//! (what the log level lets through) every 2 s, as OTLP/HTTP protobuf with gzip.
//!
//! Invariants: log records wait in a bounded buffer (`LOG_BUFFER` records; beyond it the oldest
//! are dropped and counted) and are only collected while an own_logs endpoint is set; the
//! sender's own messages (`agent::opamp::own`) are never collected, so a failing endpoint cannot
//! feed itself; the resource carries the current instance id (the OTLP `service.instance.id`).

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, SystemTime},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
};
use prost::Message;
use tokio::sync::watch;

use crate::{
    config::Temporality,
    export::{metrics::MetricsEncoder, settings::Target, transport::Transport},
    selfstats,
    status::state::AgentState,
};

/// The spec's recommended own-metrics interval.
pub const METRICS_INTERVAL: Duration = Duration::from_secs(10);
pub const LOGS_INTERVAL: Duration = Duration::from_secs(2);
/// Log records held between two sends.
pub const LOG_BUFFER: usize = 2000;

/// Where own telemetry goes (`None`: not sent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnTargets {
    pub metrics: Option<Target>,
    pub logs: Option<Target>,
}

struct LogBuffer {
    enabled: AtomicBool,
    dropped: AtomicU64,
    records: Mutex<VecDeque<LogRecord>>,
}

fn buffer() -> &'static LogBuffer {
    static B: OnceLock<LogBuffer> = OnceLock::new();
    B.get_or_init(|| LogBuffer {
        enabled: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
        records: Mutex::new(VecDeque::new()),
    })
}

/// A `tracing` layer that copies log events into the own-logs buffer while an own_logs
/// endpoint is set (installed by `logging::init`; costs one atomic load per event otherwise).
pub struct OwnLogsLayer;

struct Fields {
    message: String,
    attrs: Vec<KeyValue>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        if f.name() == "message" {
            self.message = v.to_string();
        } else {
            self.attrs.push(crate::export::resource::kv(f.name(), v));
        }
    }

    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            self.message = format!("{v:?}");
        } else {
            self.attrs
                .push(crate::export::resource::kv(f.name(), format!("{v:?}")));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OwnLogsLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let b = buffer();
        if !b.enabled.load(Ordering::Relaxed) {
            return;
        }
        let meta = event.metadata();
        if meta.target().starts_with(module_path!()) {
            return;
        }
        let mut f = Fields {
            message: String::new(),
            attrs: Vec::new(),
        };
        event.record(&mut f);
        f.attrs
            .push(crate::export::resource::kv("log.target", meta.target()));
        let (number, text) = match *meta.level() {
            tracing::Level::TRACE => (1, "TRACE"),
            tracing::Level::DEBUG => (5, "DEBUG"),
            tracing::Level::INFO => (9, "INFO"),
            tracing::Level::WARN => (13, "WARN"),
            tracing::Level::ERROR => (17, "ERROR"),
        };
        let now = crate::export::metrics::unix_nanos(SystemTime::now());
        let rec = LogRecord {
            time_unix_nano: now,
            observed_time_unix_nano: now,
            severity_number: number,
            severity_text: text.into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(f.message)),
            }),
            attributes: f.attrs,
            ..Default::default()
        };
        let mut q = b.records.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= LOG_BUFFER {
            q.pop_front();
            b.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(rec);
    }
}

fn set_collecting(on: bool) {
    let b = buffer();
    b.enabled.store(on, Ordering::Relaxed);
    if !on {
        b.records.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn take_logs() -> (Vec<LogRecord>, u64) {
    let b = buffer();
    let recs: Vec<LogRecord> = b
        .records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    (recs, b.dropped.swap(0, Ordering::Relaxed))
}

struct Sender {
    target: Target,
    transport: Transport,
}

impl Sender {
    fn new(t: &Option<Target>, state: &AgentState) -> Option<Sender> {
        let t = t.as_ref()?;
        match Transport::new(t) {
            Ok(transport) => Some(Sender {
                target: t.clone(),
                transport,
            }),
            Err(e) => {
                state.update_opamp(|s| {
                    s.own_telemetry.last_error = Some(e.cause.clone());
                });
                None
            }
        }
    }
}

/// Sends own telemetry to the targets in `rx` until `shutdown`.
pub async fn run(
    state: Arc<AgentState>,
    output_dir: PathBuf,
    mut rx: watch::Receiver<OwnTargets>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics: Option<Sender> = None;
    let mut logs: Option<Sender> = None;
    let mut encoder = MetricsEncoder::new(Temporality::Cumulative, 2000);
    let mut m_tick = tokio::time::interval(METRICS_INTERVAL);
    let mut l_tick = tokio::time::interval(LOGS_INTERVAL);
    let mut apply = true;
    loop {
        if apply {
            apply = false;
            let t = rx.borrow_and_update().clone();
            metrics = Sender::new(&t.metrics, &state);
            logs = Sender::new(&t.logs, &state);
            set_collecting(logs.is_some());
            state.update_opamp(|s| {
                s.own_telemetry.metrics_endpoint = t.metrics.as_ref().map(|t| t.url.to_string());
                s.own_telemetry.logs_endpoint = t.logs.as_ref().map(|t| t.url.to_string());
            });
            m_tick.reset_immediately();
        }
        tokio::select! {
            r = rx.changed() => { if r.is_err() { break } apply = true; }
            _ = shutdown.changed() => break,
            _ = m_tick.tick() => if let Some(s) = &metrics {
                let resource = resource(&output_dir);
                let batch = selfstats::batch(&selfstats::sample(), &state, state.started_at);
                for (req, _) in encoder.encode(&[Arc::new(batch)], &resource, SystemTime::now()) {
                    send(&state, s, &req.encode_to_vec(), |o| o.metrics_requests_sent += 1).await;
                }
            },
            _ = l_tick.tick() => if let Some(s) = &logs {
                let (recs, dropped) = take_logs();
                state.update_opamp(|o| o.own_telemetry.log_records_dropped += dropped);
                if recs.is_empty() {
                    continue;
                }
                let n = recs.len() as u64;
                let req = ExportLogsServiceRequest {
                    resource_logs: vec![ResourceLogs {
                        resource: Some(resource(&output_dir)),
                        scope_logs: vec![ScopeLogs {
                            scope: Some(crate::export::metrics::scope()),
                            log_records: recs,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                };
                send(&state, s, &req.encode_to_vec(), |o| {
                    o.logs_requests_sent += 1;
                    o.log_records_sent += n;
                })
                .await;
            },
        }
    }
    set_collecting(false);
}

fn resource(output_dir: &std::path::Path) -> opentelemetry_proto::tonic::resource::v1::Resource {
    let id = crate::export::resource::instance_id(output_dir);
    crate::export::resource::build(&id, |k| std::env::var(k).ok())
}

async fn send(
    state: &AgentState,
    s: &Sender,
    body: &[u8],
    ok: impl FnOnce(&mut super::status::OwnTelemetryState),
) {
    match s.transport.send(body).await {
        Ok(_) => state.update_opamp(|o| {
            ok(&mut o.own_telemetry);
            o.own_telemetry.last_error = None;
        }),
        Err(e) => {
            tracing::debug!(endpoint = %s.target.url, "own telemetry not sent: {e}");
            state.update_opamp(|o| {
                o.own_telemetry.failed_requests += 1;
                o.own_telemetry.last_error = Some(e.to_string());
            });
        }
    }
}
