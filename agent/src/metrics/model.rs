//! The metric data model every probe publishes and every consumer reads (Prometheus text,
//! the output writer, later the OTLP exporter and the anomaly detectors).
//!
//! Invariants: names and units are OpenTelemetry's (`process.syscall.duration`, unit `s`);
//! counters and histograms are cumulative since `start_time`; a histogram's
//! `bucket_counts.len() == bounds.len() + 1` (the last bucket is `+Inf`), bounds are
//! upper-inclusive and strictly increasing.

use std::{borrow::Cow, fmt, sync::Arc, time::SystemTime};

/// What kind of instrument a family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Monotonic cumulative sum.
    Counter,
    /// A value that can go up and down.
    Gauge,
    /// Cumulative explicit-bucket histogram.
    Histogram,
}

/// Static description of a metric family.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Desc {
    /// OpenTelemetry name, dotted: `process.syscall.duration`.
    pub name: &'static str,
    /// UCUM unit as OpenTelemetry writes it: `s`, `By`, `1`, `{call}`.
    pub unit: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

/// An attribute key: an OpenTelemetry attribute name (`process.pid`); static for the names the
/// agent sets, owned for keys a transform statement creates.
pub type Key = Cow<'static, str>;

/// Ordered attribute list; keys are OpenTelemetry attribute names (`process.pid`), values typed
/// as the semantic conventions define them (`process.pid` is an int).
pub type Labels = Vec<(Key, AttrValue)>;

/// A typed attribute value (the OTLP `AnyValue` scalars).
///
/// Equality and hashing compare doubles by bit pattern, so a label set can key a map (the
/// exporter's delta state, the transform's merge of identical points). Strings are shared
/// (`Arc<str>`): copying a point (the transform's view of a snapshot) counts references instead
/// of copying bytes.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub enum AttrValue {
    Str(Arc<str>),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl AttrValue {
    /// The string of a `Str` value, else `None`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s.as_ref()),
            _ => None,
        }
    }
}

impl PartialEq for AttrValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (AttrValue::Str(a), AttrValue::Str(b)) => a == b,
            (AttrValue::Int(a), AttrValue::Int(b)) => a == b,
            (AttrValue::Double(a), AttrValue::Double(b)) => a.to_bits() == b.to_bits(),
            (AttrValue::Bool(a), AttrValue::Bool(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for AttrValue {}

impl std::hash::Hash for AttrValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            AttrValue::Str(s) => s.hash(state),
            AttrValue::Int(i) => i.hash(state),
            AttrValue::Double(d) => d.to_bits().hash(state),
            AttrValue::Bool(b) => b.hash(state),
        }
    }
}

/// The value as text (Prometheus label values, logs): ints and doubles in their shortest form.
impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Double(d) => write!(f, "{d}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s.into())
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.into())
    }
}

impl From<Arc<str>> for AttrValue {
    fn from(s: Arc<str>) -> Self {
        AttrValue::Str(s)
    }
}

impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}

impl From<u32> for AttrValue {
    fn from(i: u32) -> Self {
        AttrValue::Int(i64::from(i))
    }
}

impl From<u16> for AttrValue {
    fn from(i: u16) -> Self {
        AttrValue::Int(i64::from(i))
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// Marker attribute of a series that stands for several processes instead of one: it carries no
/// `process.pid` (and no other per-process attribute). Values: [`FOLDED_OTHER`],
/// [`FOLDED_UNKNOWN`].
pub const FOLDED: &str = "agent.series.folded";
/// The folded series of the processes beyond a probe's top N, or whose kernel map was full.
pub const FOLDED_OTHER: &str = "other";
/// The folded series of activity whose process is not known (a socket listening since before
/// the agent started).
pub const FOLDED_UNKNOWN: &str = "unknown";

/// One attribute with a static key: `attr("process.pid", 42u32)`.
pub fn attr(key: &'static str, value: impl Into<AttrValue>) -> (Key, AttrValue) {
    (Cow::Borrowed(key), value.into())
}

/// The value of attribute `key` in `labels`, if present.
pub fn get<'a>(labels: &'a [(Key, AttrValue)], key: &str) -> Option<&'a AttrValue> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Histogram {
    /// Upper-inclusive bucket bounds in the family's unit, shared between points.
    pub bounds: Arc<[f64]>,
    /// `bounds.len() + 1` counts; the last is the `+Inf` bucket. Not cumulative. Shared: a
    /// copy of a point (the transform's view, a snapshot) counts a reference instead of copying
    /// the buckets; writers go through `Arc::make_mut` (copy on write).
    pub bucket_counts: Arc<[u64]>,
    pub sum: f64,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram(Histogram),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Point {
    pub labels: Labels,
    pub value: Value,
    /// Start of the cumulative window (when the series was first seen).
    #[serde(with = "unix_nanos")]
    pub start_time: SystemTime,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Family {
    pub desc: Desc,
    pub points: Vec<Point>,
}

/// A consistent set of families published by one source at one time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Batch {
    /// Who published it (`syscalls`, `agent`); a new batch replaces the source's previous one.
    pub source: String,
    #[serde(with = "unix_nanos")]
    pub time: SystemTime,
    pub families: Vec<Family>,
}

mod unix_nanos {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ns = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        s.serialize_u64(ns as u64)
    }
}
