//! The detection engine: one detector and gate per watched series, bounded in number, fed
//! `(series key, observation time, value)` samples and answering with reports.
//!
//! Generic over the series key ([`SeriesId`]): the running agent keys series by the derived
//! signal and its `signals::SignalKey` (`detection::task`), `agent detect-bench` and the tests
//! by attribute lists ([`SeriesKey`]).

use std::{
    collections::VecDeque,
    hash::Hash,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    config::{DetectionConfig, Signal, SignalSpec, Watch},
    gate::{Gate, GateParams},
    lru::Lru,
    Detector, Kind,
};

/// Attribute key of the syscall a per-syscall series is about (OpenTelemetry `syscall.name`
/// is not a registered attribute; this is the name the agent's metrics use).
pub const SYSCALL_ATTRIBUTE: &str = "syscall.name";

/// One series: a signal and the attributes that tell its instances apart, e.g.
/// `process.syscall.rate{process.pid=42, process.executable.name=curl}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub signal: Signal,
    /// OpenTelemetry attribute names and values, in a fixed order chosen by the producer.
    pub attributes: Vec<(&'static str, String)>,
}

/// What the engine reads of a series key: its signal, and whether it is the series a watch's
/// `syscall:` names.
pub trait SeriesId: Clone + Eq + Hash {
    fn signal(&self) -> Signal;
    /// Whether this is the series of syscall `name` (`None`: the all-syscalls series, or a
    /// signal that has no per-syscall series).
    fn is_syscall(&self, name: Option<&str>) -> bool;
}

impl SeriesId for SeriesKey {
    fn signal(&self) -> Signal {
        self.signal
    }
    fn is_syscall(&self, name: Option<&str>) -> bool {
        self.attribute(SYSCALL_ATTRIBUTE) == name
    }
}

impl SeriesKey {
    pub fn new(signal: Signal, attributes: Vec<(&'static str, String)>) -> Self {
        SeriesKey { signal, attributes }
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A reported anomaly of series `key` (the wiring turns it into a `signals::Anomaly`).
#[derive(Clone, Debug, PartialEq)]
pub struct Report<K = SeriesKey> {
    pub key: K,
    /// Observation time of the value (not the time of the report).
    pub time: SystemTime,
    pub score: f64,
    pub value: f64,
    /// The range the value was expected in (NaN when the detector has none).
    pub expected_min: f64,
    pub expected_max: f64,
}

/// Counters for `/status` and self-metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub series: usize,
    pub max_series: usize,
    /// Series dropped to stay within `max_series` (least recently updated first).
    pub evictions: u64,
    /// Samples ignored for a non-finite value or a time before the Unix epoch.
    pub skipped: u64,
    pub anomalies: u64,
}

struct State {
    detector: Box<dyn Detector>,
    kind: Kind,
    gate: Gate,
    params: GateParams,
    score: f64,
}

pub struct Engine<K: SeriesId = SeriesKey> {
    config: DetectionConfig,
    series: Lru<K, State>,
    recent: VecDeque<Report<K>>,
    stats: EngineStats,
}

/// The smallest departure from the expected range that can be an anomaly, in the signal's
/// unit: a series that held one value through its warm-up (0 CPU, all calls failing) has no
/// spread, and any move off it is infinitely surprising to a Gaussian; these are moves too
/// small to matter on a host. Not configurable (yet): they are resolutions, not sensitivities.
pub fn resolution(signal: Signal) -> f64 {
    match signal {
        // 10 calls/s; 5 percentage points of calls failing; 1 µs per call.
        Signal::SyscallRate => 10.0,
        Signal::SyscallErrorRatio => 0.05,
        Signal::SyscallDuration => 1e-6,
        // Any failed connection counts; 1 % of segments; 1 ms of handshake.
        Signal::TcpFailureRate => 0.0,
        Signal::TcpRetransmitRatio => 0.01,
        Signal::TcpHandshakeDuration => 1e-3,
        // 1 % of the host's CPU; 1 MiB resident.
        Signal::CpuUtilization => 0.01,
        Signal::MemoryUsage => 1_048_576.0,
    }
}

/// The watch that covers `key` (same signal, and the same syscall or none on both sides), its
/// detector and gate settings; `None` when detection is off or nothing watches it.
fn resolve<'a, K: SeriesId>(
    cfg: &'a DetectionConfig,
    key: &K,
) -> Option<(&'a SignalSpec, Kind, GateParams)> {
    if !cfg.enabled {
        return None;
    }
    let signal = key.signal();
    let spec = cfg
        .signals
        .iter()
        .map(|Watch(s)| s)
        .find(|s| s.signal == signal && key.is_syscall(s.syscall.as_deref()))?;
    Some((spec, spec.detector.unwrap_or(cfg.detector), cfg.gate(spec)))
}

/// Seconds since the Unix epoch (the detectors' time axis).
fn seconds(t: SystemTime) -> Option<f64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}

impl<K: SeriesId> Engine<K> {
    /// `config` should have passed [`DetectionConfig::validate`].
    pub fn new(config: &DetectionConfig) -> Self {
        Engine {
            series: Lru::new(config.max_series),
            config: config.clone(),
            recent: VecDeque::new(),
            stats: EngineStats {
                max_series: config.max_series.max(1),
                ..Default::default()
            },
        }
    }

    /// The watch that covers `key` and what it resolves to.
    fn spec(&self, key: &K) -> Option<(&SignalSpec, Kind, GateParams)> {
        resolve(&self.config, key)
    }

    /// Whether samples of `signal` are watched at all (lets a producer skip deriving them).
    pub fn watches(&self, signal: Signal) -> bool {
        self.config.enabled
            && self
                .config
                .signals
                .iter()
                .any(|Watch(s)| s.signal == signal)
    }

    /// Feeds one sample; returns the anomaly it reports, if any. Unwatched series are ignored
    /// (no state is created for them).
    pub fn observe(&mut self, key: &K, time: SystemTime, value: f64) -> Option<Report<K>> {
        let Some(t) = seconds(time).filter(|_| value.is_finite()) else {
            if self.spec(key).is_some() {
                self.stats.skipped += 1;
            }
            return None;
        };
        let series = match self.series.get_mut(key) {
            Some(s) => s,
            None => {
                let (_, kind, params) = self.spec(key)?;
                let (s, evicted) = self.series.insert(
                    key.clone(),
                    State {
                        detector: kind.build(),
                        kind,
                        gate: Gate::default(),
                        params,
                        score: 0.0,
                    },
                );
                if evicted.is_some() {
                    self.stats.evictions += 1;
                }
                s
            }
        };
        let mut raw = series.detector.update(t, value);
        let (lo, hi) = series.detector.expected();
        let floor = resolution(key.signal());
        if value >= lo - floor && value <= hi + floor {
            // Within the signal's resolution of what was expected: no anomaly, however
            // surprising to a series that has been flat (CPU 0 -> 0.3 %).
            raw = 0.0;
        }
        let g = series
            .gate
            .apply(&series.params, t, series.detector.warm(), raw);
        series.score = g.score;
        if !g.report {
            return None;
        }
        let (expected_min, expected_max) = series.detector.expected();
        let a = Report {
            key: key.clone(),
            time,
            score: g.score,
            value,
            expected_min,
            expected_max,
        };
        self.stats.anomalies += 1;
        if self.config.recent > 0 {
            if self.recent.len() >= self.config.recent {
                self.recent.pop_back();
            }
            self.recent.push_front(a.clone());
        }
        Some(a)
    }

    /// The latest gated score of a series (for the `agent.anomaly.score` gauge).
    pub fn score(&self, key: &K) -> Option<f64> {
        self.series.get(key).map(|s| s.score)
    }

    /// Every series and its latest gated score, most recently updated first.
    pub fn scores(&self) -> impl Iterator<Item = (&K, f64)> {
        self.series.iter().map(|(k, s)| (k, s.score))
    }

    /// Recent anomalies, newest first (at most `detection.recent`).
    pub fn recent(&self) -> impl Iterator<Item = &Report<K>> {
        self.recent.iter()
    }

    /// Drops the series `gone` selects (e.g. those of an exited process: an exit is not an
    /// anomaly, and its pid may be reused); returns how many went. Not counted as evictions.
    pub fn forget(&mut self, mut gone: impl FnMut(&K) -> bool) -> usize {
        self.series.retain(|k, _| !gone(k))
    }

    /// Applies a new config (hot reload): series whose signal is no longer watched or whose
    /// detector changed restart or go; the others keep their state and take the new gate
    /// settings; `max_series` shrinks by evicting the least recently updated.
    pub fn reconfigure(&mut self, config: &DetectionConfig) {
        self.config = config.clone();
        self.stats.max_series = config.max_series.max(1);
        let cfg = &self.config;
        self.series.retain(|k, s| match resolve(cfg, k) {
            Some((_, kind, params)) if kind == s.kind => {
                s.params = params;
                true
            }
            _ => false,
        });
        self.stats.evictions += self.series.set_capacity(config.max_series) as u64;
        while self.recent.len() > config.recent {
            self.recent.pop_back();
        }
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            series: self.series.len(),
            ..self.stats
        }
    }

    /// Detector state bytes summed over the series (excluding keys and bookkeeping).
    pub fn state_bytes(&self) -> usize {
        self.series
            .iter()
            .map(|(_, s)| s.detector.state_bytes())
            .sum()
    }
}
