//! The metric model (`metrics::model`) to OTLP `ExportMetricsServiceRequest`s: counters to
//! monotonic sums, gauges to gauges, histograms to explicit-bucket histograms with the kernel's
//! bounds exactly (no re-bucketing, so no error is added), cumulative or delta.
//!
//! Invariants: a request holds at most `max_points` data points (larger exports are split, each
//! part a valid request with the resource); every point's time is the export time; in delta mode
//! each series' start time is the previous export's time, and a series whose cumulative value
//! went backwards (restarted) is reported from its own start again.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::InstrumentationScope,
    metrics::v1::{
        metric, number_data_point, AggregationTemporality, Gauge, Histogram as OtlpHistogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};

use super::resource::kv_attr;
use crate::{
    config::Temporality,
    metrics::model::{Batch, Family, Histogram, Kind, Labels, Point, Value},
};

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "agent".into(),
        version: crate::VERSION.into(),
        ..Default::default()
    }
}

/// Identity of one series: metric name and attributes.
type SeriesId = (&'static str, Labels);

/// The previous export of a series (delta mode).
#[derive(Clone)]
struct Previous {
    time: u64,
    value: Value,
}

pub struct MetricsEncoder {
    temporality: Temporality,
    max_points: usize,
    previous: HashMap<SeriesId, Previous>,
}

impl MetricsEncoder {
    pub fn new(temporality: Temporality, max_points: usize) -> Self {
        MetricsEncoder {
            temporality,
            max_points: max_points.max(1),
            previous: HashMap::new(),
        }
    }

    fn temporality_code(&self) -> i32 {
        match self.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
            Temporality::Delta => AggregationTemporality::Delta as i32,
        }
    }

    /// (start time, value) to export for `point` of `family` at `now` (ns).
    fn reported(&mut self, family: &Family, point: &Point, now: u64) -> (u64, Value) {
        let start = unix_nanos(point.start_time);
        if self.temporality == Temporality::Cumulative || family.desc.kind == Kind::Gauge {
            return (start, point.value.clone());
        }
        let id: SeriesId = (family.desc.name, point.labels.clone());
        let prev = self.previous.insert(
            id,
            Previous {
                time: now,
                value: point.value.clone(),
            },
        );
        match (prev, &point.value) {
            (Some(p), Value::Counter(v)) => match p.value {
                Value::Counter(old) if *v >= old => (p.time, Value::Counter(v - old)),
                _ => (start, point.value.clone()),
            },
            (Some(p), Value::Histogram(h)) => match &p.value {
                Value::Histogram(old) if h.count >= old.count && h.bounds == old.bounds => {
                    (p.time, Value::Histogram(subtract(h, old)))
                }
                _ => (start, point.value.clone()),
            },
            _ => (start, point.value.clone()),
        }
    }

    /// Encodes every family of `batches` at time `now`; returns the requests and their point
    /// counts.
    pub fn encode(
        &mut self,
        batches: &[Arc<Batch>],
        resource: &Resource,
        now: SystemTime,
    ) -> Vec<(ExportMetricsServiceRequest, u64)> {
        let now_ns = unix_nanos(now);
        let temporality = self.temporality_code();
        let mut requests = Vec::new();
        let mut metrics: Vec<Metric> = Vec::new();
        let mut points_in_request = 0usize;
        for batch in batches {
            for family in &batch.families {
                let mut points = family.points.iter().peekable();
                while points.peek().is_some() {
                    let room = self.max_points - points_in_request;
                    let chunk: Vec<&Point> = points.by_ref().take(room).collect();
                    points_in_request += chunk.len();
                    metrics.push(self.metric(family, &chunk, now_ns, temporality));
                    if points_in_request >= self.max_points {
                        requests.push(request(resource, std::mem::take(&mut metrics)));
                        points_in_request = 0;
                    }
                }
            }
        }
        if !metrics.is_empty() {
            requests.push(request(resource, metrics));
        }
        requests
            .into_iter()
            .map(|r| {
                let n = count_points(&r);
                (r, n)
            })
            .collect()
    }

    fn metric(&mut self, family: &Family, points: &[&Point], now: u64, temporality: i32) -> Metric {
        let attrs = |p: &Point| p.labels.iter().map(|(k, v)| kv_attr(k, v)).collect();
        let data = match family.desc.kind {
            Kind::Counter | Kind::Gauge => {
                let dps = points
                    .iter()
                    .map(|p| {
                        let (start, value) = self.reported(family, p, now);
                        let v = match value {
                            Value::Counter(v) | Value::Gauge(v) => v,
                            Value::Histogram(h) => h.sum,
                        };
                        NumberDataPoint {
                            attributes: attrs(p),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            value: Some(number_data_point::Value::AsDouble(v)),
                            ..Default::default()
                        }
                    })
                    .collect();
                if family.desc.kind == Kind::Counter {
                    metric::Data::Sum(Sum {
                        data_points: dps,
                        aggregation_temporality: temporality,
                        is_monotonic: true,
                    })
                } else {
                    metric::Data::Gauge(Gauge { data_points: dps })
                }
            }
            Kind::Histogram => metric::Data::Histogram(OtlpHistogram {
                data_points: points
                    .iter()
                    .filter_map(|p| {
                        let (start, value) = self.reported(family, p, now);
                        let Value::Histogram(h) = value else {
                            return None;
                        };
                        Some(HistogramDataPoint {
                            attributes: attrs(p),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: h.count,
                            sum: Some(h.sum),
                            bucket_counts: h.bucket_counts.to_vec(),
                            explicit_bounds: h.bounds.to_vec(),
                            ..Default::default()
                        })
                    })
                    .collect(),
                aggregation_temporality: temporality,
            }),
        };
        Metric {
            name: family.desc.name.to_string(),
            description: family.desc.help.to_string(),
            unit: family.desc.unit.to_string(),
            data: Some(data),
            ..Default::default()
        }
    }
}

fn subtract(h: &Histogram, old: &Histogram) -> Histogram {
    Histogram {
        bounds: h.bounds.clone(),
        bucket_counts: h
            .bucket_counts
            .iter()
            .zip(old.bucket_counts.iter())
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        sum: h.sum - old.sum,
        count: h.count - old.count,
    }
}

fn request(resource: &Resource, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Data points in a request (what partial success and delivery counts are about).
pub fn count_points(r: &ExportMetricsServiceRequest) -> u64 {
    r.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            Some(metric::Data::Histogram(h)) => h.data_points.len(),
            Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(metric::Data::Summary(s)) => s.data_points.len(),
            None => 0,
        } as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        export::resource::kv,
        metrics::model::{attr, Desc},
    };

    const HIST: Desc = Desc {
        name: "process.syscall.duration",
        unit: "s",
        help: "h",
        kind: Kind::Histogram,
    };
    const COUNTER: Desc = Desc {
        name: "process.syscall.errors",
        unit: "{error}",
        help: "c",
        kind: Kind::Counter,
    };

    fn batch(counter: f64, hist_counts: [u64; 3], points: usize) -> Arc<Batch> {
        let start = UNIX_EPOCH + Duration::from_secs(100);
        let bounds: Arc<[f64]> = vec![1e-6, 2e-6].into();
        let hist = |i: usize| Point {
            labels: vec![attr("process.pid", i as i64)],
            value: Value::Histogram(Histogram {
                bounds: bounds.clone(),
                bucket_counts: hist_counts[..].into(),
                sum: hist_counts.iter().sum::<u64>() as f64 * 1e-6,
                count: hist_counts.iter().sum(),
            }),
            start_time: start,
        };
        Arc::new(Batch {
            source: "t".into(),
            time: start,
            families: vec![
                Family {
                    desc: HIST,
                    points: (0..points).map(hist).collect(),
                },
                Family {
                    desc: COUNTER,
                    points: vec![Point {
                        labels: vec![attr("syscall.name", "read")],
                        value: Value::Counter(counter),
                        start_time: start,
                    }],
                },
            ],
        })
    }

    fn resource() -> Resource {
        Resource {
            attributes: vec![kv("service.name", "agent")],
            ..Default::default()
        }
    }

    fn first_hist(r: &ExportMetricsServiceRequest) -> &HistogramDataPoint {
        match &r.resource_metrics[0].scope_metrics[0].metrics[0].data {
            Some(metric::Data::Histogram(h)) => &h.data_points[0],
            other => panic!("{other:?}"),
        }
    }

    fn sum_point(r: &ExportMetricsServiceRequest) -> (&NumberDataPoint, i32, bool) {
        let m = r.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == COUNTER.name)
            .unwrap();
        match &m.data {
            Some(metric::Data::Sum(s)) => {
                (&s.data_points[0], s.aggregation_temporality, s.is_monotonic)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cumulative_histograms_keep_the_kernel_buckets_exactly() {
        let mut e = MetricsEncoder::new(Temporality::Cumulative, 1000);
        let now = UNIX_EPOCH + Duration::from_secs(200);
        let out = e.encode(&[batch(5.0, [1, 2, 3], 1)], &resource(), now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, 2);
        let h = first_hist(&out[0].0);
        assert_eq!(h.bucket_counts, vec![1, 2, 3]);
        assert_eq!(h.explicit_bounds, vec![1e-6, 2e-6]);
        assert_eq!(h.count, 6);
        assert_eq!(h.start_time_unix_nano, 100_000_000_000);
        assert_eq!(h.time_unix_nano, 200_000_000_000);
        let (p, t, mono) = sum_point(&out[0].0);
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(5.0)));
        assert_eq!(t, AggregationTemporality::Cumulative as i32);
        assert!(mono);
        let m = &out[0].0.resource_metrics[0].scope_metrics[0].metrics[0];
        assert_eq!((m.name.as_str(), m.unit.as_str()), (HIST.name, "s"));
    }

    #[test]
    fn delta_subtracts_the_previous_export_and_restarts_on_reset() {
        let mut e = MetricsEncoder::new(Temporality::Delta, 1000);
        let t1 = UNIX_EPOCH + Duration::from_secs(200);
        let t2 = UNIX_EPOCH + Duration::from_secs(210);
        e.encode(&[batch(5.0, [1, 2, 3], 1)], &resource(), t1);
        let out = e.encode(&[batch(8.0, [1, 4, 3], 1)], &resource(), t2);
        let h = first_hist(&out[0].0);
        assert_eq!(h.bucket_counts, vec![0, 2, 0]);
        assert_eq!(h.count, 2);
        assert_eq!(h.start_time_unix_nano, 200_000_000_000);
        let (p, t, _) = sum_point(&out[0].0);
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(3.0)));
        assert_eq!(p.start_time_unix_nano, 200_000_000_000);
        assert_eq!(t, AggregationTemporality::Delta as i32);
        // The series restarted (value went down): reported whole, from its own start.
        let out = e.encode(&[batch(1.0, [1, 0, 0], 1)], &resource(), t2);
        let (p, _, _) = sum_point(&out[0].0);
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(1.0)));
        assert_eq!(p.start_time_unix_nano, 100_000_000_000);
    }

    #[test]
    fn large_exports_are_split_without_losing_points() {
        let mut e = MetricsEncoder::new(Temporality::Cumulative, 4);
        let out = e.encode(&[batch(1.0, [1, 1, 1], 9)], &resource(), SystemTime::now());
        let counts: Vec<u64> = out.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, vec![4, 4, 2]);
        for (r, _) in &out {
            assert!(r.resource_metrics[0].resource.is_some());
        }
    }
}
