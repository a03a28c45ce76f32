//! The metric data model every probe publishes and every consumer reads (Prometheus text,
//! the output writer, later the OTLP exporter and the anomaly detectors).
//!
//! Invariants: names and units are OpenTelemetry's (`process.syscall.duration`, unit `s`);
//! counters and histograms are cumulative since `start_time`; a histogram's
//! `bucket_counts.len() == bounds.len() + 1` (the last bucket is `+Inf`), bounds are
//! upper-inclusive and strictly increasing.

use std::{sync::Arc, time::SystemTime};

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

/// Ordered attribute list; keys are OpenTelemetry attribute names (`process.pid`).
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Histogram {
    /// Upper-inclusive bucket bounds in the family's unit, shared between points.
    pub bounds: Arc<[f64]>,
    /// `bounds.len() + 1` counts; the last is the `+Inf` bucket. Not cumulative.
    pub bucket_counts: Vec<u64>,
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
