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
use crate::probes::syscalls::names::syscall_number;

/// The signals a watch may name: the one signal table (`crate::signals::names::TABLE`).
pub use crate::signals::Signal;

/// `signal:` as its name (serde for the one signal type, kept here so the signal table itself
/// stays free of config concerns).
mod signal_name {
    use serde::{de, Deserialize, Deserializer, Serializer};

    use super::Signal;

    pub fn serialize<S: Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let name = String::deserialize(d)?;
        super::parse_signal(&name).map_err(de::Error::custom)
    }
}

/// The signal named `name`, or the error that lists the names.
fn parse_signal(name: &str) -> Result<Signal, String> {
    Signal::parse(name).ok_or_else(|| {
        format!(
            "unknown signal `{name}`, expected one of {}",
            Signal::all_names()
        )
    })
}

/// One watched signal. In YAML either its bare name or a map with the optional overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    #[serde(with = "signal_name")]
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
                parse_signal(v)
                    .map(|s| Watch(SignalSpec::new(s)))
                    .map_err(E::custom)
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

/// Longest `warmup` accepted.
const WARMUP_MAX: Duration = Duration::from_secs(24 * 3600);
/// Longest `hold_off` accepted.
const HOLD_OFF_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest `max_series` (each series costs about 1 KB: 1 GB at this bound).
const MAX_SERIES_MAX: usize = 1_000_000;
/// Largest `recent`.
const RECENT_MAX: usize = 10_000;

/// What `path` (a field of this section, list indices allowed) accepts, phrased to follow
/// "use " (the config module's `fix:` hints); `None` for paths outside the section.
pub fn allowed(path: &str) -> Option<String> {
    // `detection.signals[2].syscall` -> `detection.signals.syscall`.
    let mut bare = String::with_capacity(path.len());
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => bare.push(c),
            _ => {}
        }
    }
    Some(match bare.as_str() {
        "detection" => format!(
            "a mapping with the fields {}",
            FIELDS[1..]
                .iter()
                .map(|f| f.trim_start_matches("detection."))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "detection.enabled" => "true or false".into(),
        "detection.warmup" => "a duration from 0s to 24h, e.g. 15s".into(),
        "detection.hold_off" => "a duration from 0s to 7days, e.g. 6h".into(),
        "detection.signals" => format!(
            "a list of signal names ({}) or maps {{signal, syscall, detector, threshold}}",
            Signal::all_names()
        ),
        "detection.signals.signal" => format!("one of {}", Signal::all_names()),
        "detection.signals.syscall" => {
            "a syscall name as `syscount` prints it (e.g. read, getppid), only with \
             process.syscall.rate, process.syscall.error_ratio or process.syscall.duration"
                .into()
        }
        "detection.detector" | "detection.signals.detector" => {
            format!("one of {}", Kind::ALL.map(Kind::name).join(", "))
        }
        "detection.threshold" | "detection.signals.threshold" => {
            "a score in (0, 1], e.g. 0.5 (the shipped default)".into()
        }
        "detection.max_series" => {
            format!("a whole number from 1 to {MAX_SERIES_MAX}, e.g. 10000")
        }
        "detection.recent" => format!("a whole number from 0 to {RECENT_MAX}, e.g. 100"),
        _ => return None,
    })
}

impl DetectionConfig {
    /// Range checks (serde already rejected unknown names and wrong types); the first problem,
    /// with the field's path (`detection.signals[1].syscall`) and what it accepts.
    pub fn validate(&self) -> Result<(), InvalidField> {
        let bad = |field: String, problem: String| InvalidField {
            allowed: allowed(&field).unwrap_or_default(),
            field,
            problem,
        };
        let human = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        if self.warmup > WARMUP_MAX {
            return Err(bad(
                "detection.warmup".into(),
                format!("{} is out of range", human(self.warmup)),
            ));
        }
        if !threshold_ok(self.threshold) {
            return Err(bad(
                "detection.threshold".into(),
                format!("{} is out of range", self.threshold),
            ));
        }
        if self.hold_off > HOLD_OFF_MAX {
            return Err(bad(
                "detection.hold_off".into(),
                format!("{} is out of range", human(self.hold_off)),
            ));
        }
        if self.max_series == 0 || self.max_series > MAX_SERIES_MAX {
            let problem = if self.max_series == 0 {
                "0 watches nothing (set `enabled: false` to turn detection off)".to_string()
            } else {
                format!("{} is out of range", self.max_series)
            };
            return Err(bad("detection.max_series".into(), problem));
        }
        if self.recent > RECENT_MAX {
            return Err(bad(
                "detection.recent".into(),
                format!("{} is out of range", self.recent),
            ));
        }
        for (i, Watch(s)) in self.signals.iter().enumerate() {
            let at = format!("detection.signals[{i}]");
            if let Some(t) = s.threshold {
                if !threshold_ok(t) {
                    return Err(bad(
                        format!("{at}.threshold"),
                        format!("{t} is out of range"),
                    ));
                }
            }
            if let Some(name) = &s.syscall {
                if !s.signal.per_syscall() {
                    return Err(bad(
                        format!("{at}.syscall"),
                        format!("{} has no per-syscall series", s.signal),
                    ));
                }
                if syscall_number(name).is_none() {
                    return Err(bad(
                        format!("{at}.syscall"),
                        format!("{name:?} is not an x86_64 syscall name"),
                    ));
                }
            }
        }
        for (i, Watch(a)) in self.signals.iter().enumerate() {
            if self.signals[..i]
                .iter()
                .any(|Watch(b)| b.signal == a.signal && b.syscall == a.syscall)
            {
                let mut e = bad(
                    format!("detection.signals[{i}]"),
                    format!("{} is listed twice", a.signal),
                );
                e.allowed = "one entry per signal (and per syscall)".into();
                return Err(e);
            }
        }
        Ok(())
    }

    /// The syscall numbers the watches name (`syscall:`): the per-syscall signals detection
    /// asks the deriver for (`signals::Demand`).
    pub fn syscalls(&self) -> std::collections::BTreeSet<u32> {
        self.signals
            .iter()
            .filter_map(|Watch(s)| s.syscall.as_deref().and_then(syscall_number))
            .collect()
    }

    /// What detection needs from the deriver (`signals::Demand`): the watched signals and the
    /// syscall numbers the watches name.
    pub fn need(&self) -> crate::signals::Need {
        crate::signals::Need {
            syscalls: self.syscalls(),
            signals: self.signals.iter().map(|Watch(s)| s.signal).collect(),
        }
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
