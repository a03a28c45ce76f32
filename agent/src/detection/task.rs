//! The detection task of `agent run` (started and reconfigured only from `runtime.rs`): takes
//! every derived signal batch from the `SignalHub`, feeds the watched samples to the engine at
//! their observation time, and puts out what it finds.
//!
//! Outputs: each anomaly on the `AnomalyHub` (the decision engine's feed), as an
//! `agent.anomaly` OTLP log record through the exporter (`AgentState::publish_log_records`:
//! OTLP or `logs.jsonl`, transformed like every log), on `/status` (`anomalies`, newest first)
//! and in the agent's log; the `agent.anomaly.score` gauge of every watched series as the
//! metric batch of source `detection`; the engine's figures on `/status` (`detection`); its
//! health as component `detection` (OpAMP ComponentHealth).
//!
//! Invariants: a sample is scored at the time the kernel was read (the batch's `time`), never
//! at the time it arrives; the series of an incarnation that ended are dropped, not scored (an
//! exit is not an anomaly), and so are those of an incarnation a newer one of its pid replaced
//! (an exec, or a reused pid); per-syscall signals are asked of the deriver (`Demand`, consumer
//! `detection`) only for the syscalls a watch names; at most `max_series` series, least
//! recently active evicted first and counted; a config change applies at once, keeping the
//! state of series whose detector did not change.

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::SystemTime,
};

use tokio::sync::{broadcast, watch};

use super::{
    config::{DetectionConfig, Watch},
    engine::{Engine, Report},
    report::{self, WatchKey},
    status::{self, AnomalyEntry, DetectionStatus},
};
use crate::{
    metrics::{model::Batch, Store},
    signals::{Anomaly, AnomalyHub, Demand, Signal, SignalBatch, SignalHub},
    status::state::{AgentState, ComponentStatus},
};

/// The metric batch source and the `Demand` consumer name.
pub const NAME: &str = "detection";

/// Where the task's outputs go.
#[derive(Clone)]
pub struct Outputs {
    pub state: Arc<AgentState>,
    pub store: Arc<Store>,
    pub anomalies: AnomalyHub,
    pub demand: Demand,
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The engine and its outputs (synchronous: the task drives it, tests call it directly).
pub struct Detection {
    cfg: DetectionConfig,
    engine: Engine<WatchKey>,
    out: Outputs,
    started: SystemTime,
    recent: VecDeque<AnomalyEntry>,
    status: DetectionStatus,
    last_error: Option<String>,
}

fn watching(cfg: &DetectionConfig) -> Vec<String> {
    cfg.signals
        .iter()
        .map(|Watch(s)| match &s.syscall {
            Some(n) => format!("{}{{{n}}}", s.signal),
            None => s.signal.to_string(),
        })
        .collect()
}

impl Detection {
    /// `cfg` has passed validation.
    pub fn new(cfg: &DetectionConfig, out: Outputs) -> Self {
        let mut d = Detection {
            cfg: cfg.clone(),
            engine: Engine::new(cfg),
            out,
            started: SystemTime::now(),
            recent: VecDeque::new(),
            status: DetectionStatus::default(),
            last_error: None,
        };
        d.configured();
        d
    }

    /// A new `detection:` section (hot reload).
    pub fn reconfigure(&mut self, cfg: &DetectionConfig) {
        if *cfg == self.cfg {
            return;
        }
        self.engine.reconfigure(cfg);
        if cfg.enabled && !self.cfg.enabled {
            self.started = SystemTime::now();
        }
        self.cfg = cfg.clone();
        self.recent.truncate(cfg.recent);
        self.configured();
        tracing::info!(enabled = cfg.enabled, watching = %watching(cfg).join(" "), "detection reconfigured");
    }

    /// Demand, health, outputs and status after a (re)configuration.
    fn configured(&mut self) {
        let cfg = &self.cfg;
        self.out.demand.set(
            NAME,
            if cfg.enabled {
                cfg.need()
            } else {
                Default::default()
            },
        );
        if !cfg.enabled {
            self.out.store.remove(NAME);
        }
        self.status.enabled = cfg.enabled;
        self.status.watching = if cfg.enabled { watching(cfg) } else { vec![] };
        self.health();
        self.refresh_status();
        self.publish_list();
    }

    fn health(&self) {
        self.out.state.set_component(
            NAME,
            ComponentStatus {
                healthy: true,
                status: if self.cfg.enabled {
                    "running"
                } else {
                    "disabled"
                }
                .into(),
                last_error: self.last_error.clone(),
                started: self.cfg.enabled.then_some(self.started),
            },
        );
    }

    fn refresh_status(&mut self) {
        let e = self.engine.stats();
        let s = &mut self.status;
        s.series = e.series;
        s.max_series = e.max_series;
        s.evictions = e.evictions;
        s.skipped = e.skipped;
        s.anomalies_total = e.anomalies;
        s.state_bytes = self.engine.state_bytes();
        self.out.state.set_detection_status(self.status.clone());
    }

    fn publish_list(&self) {
        self.out.state.set_detection(status::Report {
            status: self.status.clone(),
            anomalies: self.recent.iter().cloned().collect(),
        });
    }

    /// The engine fell `n` batches behind the deriver: they were skipped.
    pub fn lagged(&mut self, n: u64) {
        self.status.lagged_batches += n;
        self.last_error = Some(format!(
            "fell behind the signal deriver: {n} signal batches skipped"
        ));
        tracing::warn!(
            lost = n,
            "detection fell behind: {n} signal batches skipped"
        );
        self.health();
        self.refresh_status();
    }

    /// Scores one batch; returns the anomalies it reported (already put out).
    pub fn ingest(&mut self, batch: &SignalBatch) -> Vec<Anomaly> {
        if !self.cfg.enabled {
            return Vec::new();
        }
        let cpu = thread_cpu_ns();
        if !batch.ended.is_empty() {
            let ended: HashSet<(u32, u64)> = batch.ended.iter().map(|p| (p.pid, p.gen)).collect();
            let gone = self.engine.forget(|k| {
                let p = &k.key.process;
                ended.contains(&(p.pid, p.gen))
            });
            self.status.forgotten += gone as u64;
        }
        let mut found = Vec::new();
        // The newest incarnation of each pid in this batch, when one got a new series.
        let mut newest: HashMap<u32, u64> = HashMap::new();
        let mut new_series = false;
        for s in &batch.samples {
            if !self.engine.watches(s.signal) {
                continue;
            }
            let key = WatchKey {
                signal: s.signal,
                key: s.key.clone(),
            };
            new_series |= self.engine.score(&key).is_none();
            let p = &s.key.process;
            let g = newest.entry(p.pid).or_insert(p.gen);
            *g = (*g).max(p.gen);
            if let Some(r) = self.engine.observe(&key, batch.time, s.value) {
                found.push(anomaly(r));
            }
        }
        if new_series {
            self.status.forgotten += self.replaced(batch.source, &newest) as u64;
        }
        self.status.batches += 1;
        self.status.samples += batch.samples.len() as u64;
        self.put_out(&found);
        self.out.store.publish(Batch {
            source: NAME.to_string(),
            time: batch.time,
            families: vec![report::score_family(self.engine.scores(), self.started)],
        });
        let used = thread_cpu_ns().saturating_sub(cpu);
        self.status.cpu_seconds += used as f64 * 1e-9;
        self.status.last_batch_cpu_us = used as f64 * 1e-3;
        self.refresh_status();
        found
    }

    /// Drops the series of incarnations a newer one of the same pid replaced (an exec, or a
    /// reused pid whose predecessor's end was not seen): one pid is one process at a time.
    /// Incarnations compare only within one probe's batches (`ProcessRef::gen`), so only
    /// series of signals that `source` feeds are looked at. Returns how many went.
    fn replaced(&mut self, source: &str, newest: &HashMap<u32, u64>) -> usize {
        self.engine.forget(|k| {
            let p = &k.key.process;
            source_of(k.signal) == source && newest.get(&p.pid).is_some_and(|&g| p.gen < g)
        })
    }

    fn put_out(&mut self, found: &[Anomaly]) {
        if found.is_empty() {
            return;
        }
        let now = SystemTime::now();
        for a in found {
            tracing::warn!(
                signal = a.signal.name(),
                pid = a.key.process.pid,
                "anomaly: {}",
                report::describe(a)
            );
            self.out.anomalies.publish(a.clone());
            if self.cfg.recent > 0 {
                self.recent.push_front(report::status_entry(a));
            }
        }
        self.recent.truncate(self.cfg.recent);
        self.out
            .state
            .publish_log_records(found.iter().map(|a| report::log_record(a, now)));
        self.publish_list();
    }
}

/// The probe whose batches carry `signal` (the deriver adds CPU and memory to syscall
/// activity).
fn source_of(signal: Signal) -> &'static str {
    match signal {
        Signal::TcpFailureRate | Signal::TcpRetransmitRatio | Signal::TcpHandshakeDuration => {
            crate::probes::network::NAME
        }
        Signal::SyscallRate
        | Signal::SyscallErrorRatio
        | Signal::SyscallDuration
        | Signal::CpuUtilization
        | Signal::MemoryUsage => crate::probes::syscalls::NAME,
    }
}

/// The engine's report as the typed anomaly. Every signal is non-negative (rates, ratios,
/// durations, bytes), so the expected range starts at 0 at the lowest.
fn anomaly(r: Report<WatchKey>) -> Anomaly {
    Anomaly {
        signal: r.key.signal,
        key: r.key.key,
        time: r.time,
        score: r.score,
        value: r.value,
        expected_min: r.expected_min.max(0.0),
        expected_max: r.expected_max,
    }
}

/// The task: runs until the signal hub or the config channel closes. A new value on `config`
/// is applied at once (`Running::apply` sends every validated config's `detection:`).
pub async fn run(signals: SignalHub, mut config: watch::Receiver<DetectionConfig>, out: Outputs) {
    let mut rx = signals.subscribe();
    let cfg = config.borrow_and_update().clone();
    let mut d = Detection::new(&cfg, out);
    tracing::info!(enabled = cfg.enabled, watching = %watching(&cfg).join(" "), "detection running");
    loop {
        tokio::select! {
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                let cfg = config.borrow_and_update().clone();
                d.reconfigure(&cfg);
            }
            r = rx.recv() => match r {
                Ok(batch) => {
                    d.ingest(&batch);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => d.lagged(n),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
