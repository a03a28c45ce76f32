//! The `detection:` config section: which signals are watched, by which detector, how
//! sensitively, and within what bounds. Written to be dropped into `config::model::Config` as
//! `pub detection: DetectionConfig` (same conventions: `#[serde(default, deny_unknown_fields)]`,
//! durations through `humantime_serde`); [`DetectionConfig::validate`] gives the value checks
//! with the field path and what is allowed.
//!
//! ```yaml
//! detection:
//!   warmup: 15s
//!   signals: [process.syscall.rate]          # names, or maps for per-signal settings:
//!   # - {signal: process.syscall.rate, syscall: getppid, detector: cusum, threshold: 0.6}
//! ```

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{
    gate::{GateParams, DEFAULT_HOLD_OFF, DEFAULT_THRESHOLD},
    Kind,
};

/// A derived per-process signal the engine can watch (name, unit, key: see `Signal::unit` and
/// the table in ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Signal {
    /// Calls per second of one process (all syscalls, or one with `syscall:`).
    #[serde(rename = "process.syscall.rate")]
    SyscallRate,
    /// Failed calls / calls in the interval.
    #[serde(rename = "process.syscall.error_ratio")]
    SyscallErrorRatio,
    /// Mean seconds per call in the interval (from the `process.syscall.duration` histogram).
    #[serde(rename = "process.syscall.duration")]
    SyscallDuration,
    /// Failed TCP connections per second of one process.
    #[serde(rename = "system.network.tcp.connection.failure_rate")]
    TcpFailureRate,
    /// Retransmitted / sent segments (sock_ops).
    #[serde(rename = "system.network.tcp.retransmit_ratio")]
    TcpRetransmitRatio,
    /// Mean handshake seconds in the interval.
    #[serde(rename = "system.network.tcp.handshake.duration")]
    TcpHandshakeDuration,
    /// CPU seconds per second of one process.
    #[serde(rename = "process.cpu.utilization")]
    CpuUtilization,
    /// Resident bytes of one process.
    #[serde(rename = "process.memory.usage")]
    MemoryUsage,
}

impl Signal {
    pub const ALL: [Signal; 8] = [
        Signal::SyscallRate,
        Signal::SyscallErrorRatio,
        Signal::SyscallDuration,
        Signal::TcpFailureRate,
        Signal::TcpRetransmitRatio,
        Signal::TcpHandshakeDuration,
        Signal::CpuUtilization,
        Signal::MemoryUsage,
    ];

    /// The OpenTelemetry-style name (`anomaly.signal` in reports).
    pub fn name(self) -> &'static str {
        match self {
            Signal::SyscallRate => "process.syscall.rate",
            Signal::SyscallErrorRatio => "process.syscall.error_ratio",
            Signal::SyscallDuration => "process.syscall.duration",
            Signal::TcpFailureRate => "system.network.tcp.connection.failure_rate",
            Signal::TcpRetransmitRatio => "system.network.tcp.retransmit_ratio",
            Signal::TcpHandshakeDuration => "system.network.tcp.handshake.duration",
            Signal::CpuUtilization => "process.cpu.utilization",
            Signal::MemoryUsage => "process.memory.usage",
        }
    }

    /// UCUM unit of the value.
    pub fn unit(self) -> &'static str {
        match self {
            Signal::SyscallRate => "{call}/s",
            Signal::TcpFailureRate => "{connection}/s",
            Signal::SyscallErrorRatio | Signal::TcpRetransmitRatio | Signal::CpuUtilization => "1",
            Signal::SyscallDuration | Signal::TcpHandshakeDuration => "s",
            Signal::MemoryUsage => "By",
        }
    }

    pub fn parse(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One watched signal. In YAML either its bare name or a map with the optional overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    pub signal: Signal,
    /// Only this syscall's series (`process.syscall.*` signals); without it, the process's
    /// all-syscalls series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// Detector for this signal (default: `detection.detector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<Kind>,
    /// Threshold for this signal (default: `detection.threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

impl SignalSpec {
    pub fn new(signal: Signal) -> Self {
        SignalSpec {
            signal,
            syscall: None,
            detector: None,
            threshold: None,
        }
    }

    fn is_bare(&self) -> bool {
        self.syscall.is_none() && self.detector.is_none() && self.threshold.is_none()
    }
}

/// `signals:` entries: a bare name or a map.
#[derive(Clone, Debug, PartialEq)]
pub struct Watch(pub SignalSpec);

impl Serialize for Watch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_bare() {
            s.serialize_str(self.0.signal.name())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Watch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Watch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name or a map with `signal:`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Watch, E> {
                Signal::parse(v)
                    .map(|s| Watch(SignalSpec::new(s)))
                    .ok_or_else(|| {
                        let names: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
                        E::custom(format!(
                            "unknown signal `{v}`, expected one of {}",
                            names.join(", ")
                        ))
                    })
            }
            fn visit_map<M: de::MapAccess<'de>>(self, m: M) -> Result<Watch, M::Error> {
                SignalSpec::deserialize(de::value::MapAccessDeserializer::new(m)).map(Watch)
            }
        }
        d.deserialize_any(V)
    }
}

/// The `detection:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectionConfig {
    pub enabled: bool,
    /// Time from a series' first value before it may report (its detector must also have
    /// seen 10 values).
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// What is watched.
    pub signals: Vec<Watch>,
    /// Detector for signals that do not name one.
    pub detector: Kind,
    /// Score (0–1] at or above which a series reports an anomaly.
    pub threshold: f64,
    /// After a report, the series reports nothing more for this long.
    #[serde(with = "humantime_serde")]
    pub hold_off: Duration,
    /// Series watched at once; beyond it the least recently updated is dropped (counted).
    pub max_series: usize,
    /// Anomalies kept for `/status` (newest first).
    pub recent: usize,
}

// `threshold` is validated finite, so equality is total.
impl Eq for DetectionConfig {}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            enabled: true,
            warmup: Duration::from_secs(15),
            signals: [
                Signal::SyscallRate,
                Signal::SyscallErrorRatio,
                Signal::TcpFailureRate,
                Signal::CpuUtilization,
            ]
            .into_iter()
            .map(|s| Watch(SignalSpec::new(s)))
            .collect(),
            detector: Kind::Ensemble,
            threshold: DEFAULT_THRESHOLD,
            hold_off: Duration::from_secs_f64(DEFAULT_HOLD_OFF),
            max_series: 10_000,
            recent: 100,
        }
    }
}

/// Every field, dotted from the section (for the config module's field table).
pub const FIELDS: &[&str] = &[
    "detection",
    "detection.enabled",
    "detection.warmup",
    "detection.signals",
    "detection.detector",
    "detection.threshold",
    "detection.hold_off",
    "detection.max_series",
    "detection.recent",
];

/// A value out of range: the field's dotted path, what is wrong and what is allowed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {problem}\nfix: {allowed}")]
pub struct InvalidField {
    pub field: String,
    pub problem: String,
    pub allowed: String,
}

fn threshold_ok(t: f64) -> bool {
    t.is_finite() && t > 0.0 && t <= 1.0
}

impl DetectionConfig {
    /// Range checks (serde already rejected unknown names and wrong types).
    pub fn validate(&self) -> Result<(), InvalidField> {
        let bad = |field: String, problem: String, allowed: &str| InvalidField {
            field,
            problem,
            allowed: allowed.to_string(),
        };
        if !threshold_ok(self.threshold) {
            return Err(bad(
                "detection.threshold".into(),
                format!("{} is out of range", self.threshold),
                "a score in (0, 1]; 0.5 is the shipped default",
            ));
        }
        if self.max_series == 0 {
            return Err(bad(
                "detection.max_series".into(),
                "0 watches nothing".into(),
                "at least 1 (default 10000); set `enabled: false` to turn detection off",
            ));
        }
        for (i, Watch(s)) in self.signals.iter().enumerate() {
            let at = format!("detection.signals[{i}]");
            if let Some(t) = s.threshold {
                if !threshold_ok(t) {
                    return Err(bad(
                        format!("{at}.threshold"),
                        format!("{t} is out of range"),
                        "a score in (0, 1]",
                    ));
                }
            }
            if let Some(name) = &s.syscall {
                let per_syscall = matches!(
                    s.signal,
                    Signal::SyscallRate | Signal::SyscallErrorRatio | Signal::SyscallDuration
                );
                if !per_syscall {
                    return Err(bad(
                        format!("{at}.syscall"),
                        format!("{} has no per-syscall series", s.signal),
                        "`syscall:` only with process.syscall.rate, process.syscall.error_ratio or process.syscall.duration",
                    ));
                }
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(bad(
                        format!("{at}.syscall"),
                        format!("{name:?} is not a syscall name"),
                        "a name as `syscount` prints it, e.g. read, getppid",
                    ));
                }
            }
        }
        for (i, Watch(a)) in self.signals.iter().enumerate() {
            if self.signals[..i]
                .iter()
                .any(|Watch(b)| b.signal == a.signal && b.syscall == a.syscall)
            {
                return Err(bad(
                    format!("detection.signals[{i}]"),
                    format!("{} is listed twice", a.signal),
                    "one entry per signal (and per syscall)",
                ));
            }
        }
        Ok(())
    }

    /// The gate settings for `spec` (its threshold, else the section's).
    pub fn gate(&self, spec: &SignalSpec) -> GateParams {
        GateParams {
            threshold: spec.threshold.unwrap_or(self.threshold),
            hold_off: self.hold_off.as_secs_f64(),
            warmup: self.warmup.as_secs_f64(),
        }
    }
}
