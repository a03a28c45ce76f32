//! `agent export-bench`: how many data points per second the exporter's own path (encode, spool,
//! compress, send) sustains on the thread that runs it, and the bytes on the wire per point.
//! Driven by `cargo xtask bench export`, which pins it to one core and runs the receiver.
//!
//! The data is synthetic but shaped like the syscall probe's: histogram series with 40 log2
//! buckets and five attributes each, plus one counter per series. Every request goes through the
//! same spool and transport as the agent's, one request in flight at a time.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use prost::Message;

use super::{
    metrics::MetricsEncoder,
    resource,
    settings::Target,
    spool::{Signal, Spool},
    transport::{self, Transport},
};
use crate::{
    config::{Compression, Protocol, Temporality},
    metrics::model::{attr, Batch, Desc, Family, Histogram, Kind, Point, Value},
};

/// What one bench run measured.
#[derive(Debug)]
pub struct Report {
    pub points: u64,
    pub requests: u64,
    pub seconds: f64,
    /// Body bytes per point as sent (after JSON encoding and compression), measured on the
    /// first request, off the timed path.
    pub wire_bytes_per_point: f64,
    /// Protobuf bytes per point before compression.
    pub raw_bytes_per_point: f64,
    pub failures: u64,
}

/// A transport for `signal` to `url` with no headers, no TLS files and a 10 s timeout.
fn transport_to(
    signal: Signal,
    url: &str,
    protocol: Protocol,
    compression: Compression,
) -> Result<Transport, String> {
    let target = Target {
        signal,
        url: url.parse().map_err(|e| format!("{url}: {e}"))?,
        protocol,
        compression,
        headers: Vec::new(),
        timeout: Duration::from_secs(10),
        tls: Default::default(),
    };
    Transport::new(&target).map_err(|e| e.cause)
}

fn synthetic(series: usize) -> Arc<Batch> {
    synthetic_ids(series, 100)
}

/// `series` histogram and counter series; one `container.id` per `per_id` series.
fn synthetic_ids(series: usize, per_id: usize) -> Arc<Batch> {
    let bounds: Arc<[f64]> = (0..39)
        .map(|b| (1u64 << b) as f64 * 1e-9)
        .collect::<Vec<_>>()
        .into();
    let start = SystemTime::now();
    let mut hist = Vec::with_capacity(series);
    let mut counters = Vec::with_capacity(series);
    for i in 0..series {
        let labels = vec![
            attr(
                "syscall.name",
                ["read", "write", "openat", "futex", "epoll_wait"][i % 5],
            ),
            attr("process.pid", (1000 + i / 5) as i64),
            attr("process.executable.name", format!("service-{}", i / 50)),
            attr("container.id", format!("{:064x}", i / per_id)),
            attr("host.cpu", (i % 2) as i64),
        ];
        let mut counts = vec![0u64; 40];
        for (b, c) in counts.iter_mut().enumerate().skip(8).take(14) {
            *c = (i as u64 * 7 + b as u64 * 13) % 1000;
        }
        let count = counts.iter().sum();
        hist.push(Point {
            labels: labels.clone(),
            value: Value::Histogram(Histogram {
                bounds: bounds.clone(),
                bucket_counts: counts.into(),
                sum: count as f64 * 3e-6,
                count,
            }),
            start_time: start,
        });
        counters.push(Point {
            labels,
            value: Value::Counter(i as f64),
            start_time: start,
        });
    }
    Arc::new(Batch {
        source: "bench".into(),
        time: start,
        families: vec![
            Family {
                desc: Desc {
                    name: "process.syscall.duration",
                    unit: "s",
                    help: "bench",
                    kind: Kind::Histogram,
                },
                points: hist,
            },
            Family {
                desc: Desc {
                    name: "process.syscall.errors",
                    unit: "{error}",
                    help: "bench",
                    kind: Kind::Counter,
                },
                points: counters,
            },
        ],
    })
}

/// Sends synthetic exports to `url` for `seconds`, one request at a time, through a spool in
/// `spool_dir`.
pub async fn run(
    url: &str,
    protocol: Protocol,
    compression: Compression,
    series: usize,
    seconds: f64,
    spool_dir: &Path,
) -> Result<Report, String> {
    let t = transport_to(Signal::Metrics, url, protocol, compression)?;
    let mut spool = Spool::open(spool_dir, 1 << 30).map_err(|e| e.to_string())?;
    let batch = synthetic(series);
    let res = resource::build("00000000-0000-0000-0000-000000000000", |_| None);
    let mut enc = MetricsEncoder::new(Temporality::Cumulative, super::MAX_POINTS_PER_REQUEST);
    let mut r = Report {
        points: 0,
        requests: 0,
        seconds: 0.0,
        wire_bytes_per_point: 0.0,
        raw_bytes_per_point: 0.0,
        failures: 0,
    };
    let mut timed = Duration::ZERO;
    while timed.as_secs_f64() < seconds {
        let started = Instant::now();
        let requests = enc.encode(std::slice::from_ref(&batch), &res, SystemTime::now());
        timed += started.elapsed();
        for (req, n) in requests {
            let started = Instant::now();
            let body = req.encode_to_vec();
            spool
                .push(Signal::Metrics, n, &body)
                .map_err(|e| e.to_string())?;
            let rec = spool
                .peek()
                .map_err(|e| e.to_string())?
                .ok_or("spool empty")?;
            let sent = t.send(&rec.bytes).await;
            spool.pop(rec.id).map_err(|e| e.to_string())?;
            timed += started.elapsed();
            match sent {
                Ok(_) => {
                    if r.requests == 0 {
                        let n = rec.items.max(1) as f64;
                        r.raw_bytes_per_point = rec.bytes.len() as f64 / n;
                        r.wire_bytes_per_point =
                            wire_size(protocol, compression, &rec.bytes) as f64 / n;
                    }
                    r.points += rec.items;
                    r.requests += 1;
                }
                Err(e) => {
                    r.failures += 1;
                    if r.failures > 3 {
                        return Err(e.to_string());
                    }
                }
            }
        }
    }
    r.seconds = timed.as_secs_f64();
    Ok(r)
}

/// The five statements of the transform bench: a redaction (`set` with `SHA256` and a `where`
/// that holds for 5% of the points: one executable name in twenty), a `delete_key`, a
/// `keep_keys`, a `replace_pattern` (container ids cut to 12 characters) and a `limit`.
pub const TRANSFORM_STATEMENTS: [&str; 5] = [
    r#"set(attributes["process.executable.name"], SHA256(attributes["process.executable.name"])) where attributes["process.executable.name"] == "service-3""#,
    r#"delete_key(attributes, "host.cpu")"#,
    r#"keep_keys(attributes, ["syscall.name", "process.pid", "process.executable.name", "container.id"])"#,
    r#"replace_pattern(attributes["container.id"], "^([0-9a-f]{12})[0-9a-f]+$", "$1")"#,
    r#"limit(attributes, 4, ["process.pid"])"#,
];

/// CPU ns per data point of each condition, per round.
#[derive(Debug)]
pub struct TransformReport {
    /// (condition, ns per point of each round): `encode` (the raw snapshot to OTLP),
    /// `transform` (the five statements; after the first export every series' outcome comes
    /// from the per-series cache, `transform/cache.rs`, and each view is handed back as the
    /// exporter does, `Transformer::recycle`), `transform uncached` (the same with
    /// that cache off: the statements run on every point), `transform+encode`, `copy` (a
    /// statement that never applies: the view's copy alone), each statement alone
    /// (`s1`..`s5`: too few for the cache, `transform::config::CACHE_MIN`), and the worst case: `transform cold` and `s4 cold`, a fresh
    /// pipeline for every export (empty per-series cache and memos) on series whose container
    /// ids are all distinct, and `transform reload`: the same on one transformer whose
    /// pipeline is replaced before every export (`Transformer::set`, as a config reload: the
    /// cache starts over in the memory of its previous fill).
    pub conditions: Vec<(String, Vec<f64>)>,
    pub points_per_export: usize,
}

fn transformer_of(statements: &[&str]) -> Result<Arc<crate::transform::Transformer>, String> {
    Ok(crate::transform::Transformer::new(pipeline_of(statements)?))
}

fn pipeline_of(statements: &[&str]) -> Result<crate::transform::Pipeline, String> {
    use crate::transform::{config::StatementGroup, FilterConfig, Pipeline, TransformConfig};
    let t = TransformConfig {
        metric_statements: vec![StatementGroup {
            context: crate::ottl::Context::Datapoint,
            conditions: Vec::new(),
            statements: statements.iter().map(|s| s.to_string()).collect(),
            error_mode: None,
        }],
        ..Default::default()
    };
    Pipeline::compile(&t, &FilterConfig::default()).map_err(|e| e.problem)
}

/// `rounds` rounds over `exports` exports of `series` histogram series plus as many counters;
/// every round times each condition once, in an order rotated every round. CPU time of this
/// thread (`CLOCK_THREAD_CPUTIME_ID`). `only`: the conditions to run by name (empty: all).
pub fn transform_bench(
    series: usize,
    rounds: usize,
    exports: usize,
    only: &[String],
) -> Result<TransformReport, String> {
    let export = crate::transform::Consumer::Export;
    let all = transformer_of(&TRANSFORM_STATEMENTS)?;
    type Tr = Option<Arc<crate::transform::Transformer>>;
    // (name, transformer, encode, statements of a fresh transformer per export: cold memos).
    let mut conds: Vec<(String, Tr, bool, Option<&[&str]>)> = vec![
        ("encode".into(), None, true, None),
        ("transform".into(), Some(all.clone()), false, None),
        (
            "transform uncached".into(),
            Some(crate::transform::Transformer::uncached(pipeline_of(
                &TRANSFORM_STATEMENTS,
            )?)),
            false,
            None,
        ),
        ("transform+encode".into(), Some(all.clone()), true, None),
        (
            "copy".into(),
            Some(transformer_of(&[r#"set(attributes["x"], 1) where false"#])?),
            false,
            None,
        ),
    ];
    for (k, s) in TRANSFORM_STATEMENTS.iter().enumerate() {
        conds.push((
            format!("s{}", k + 1),
            Some(transformer_of(&[s])?),
            false,
            None,
        ));
    }
    const ALL: &[&str] = &TRANSFORM_STATEMENTS;
    conds.push(("transform cold".into(), None, false, Some(ALL)));
    conds.push(("s4 cold".into(), None, false, Some(&ALL[3..4])));
    // One transformer, a fresh pipeline set before every export (a reload every export).
    let reloaded = transformer_of(ALL)?;
    conds.push(("transform reload".into(), Some(reloaded), false, None));
    if !only.is_empty() {
        conds.retain(|c| only.contains(&c.0));
        if conds.is_empty() {
            return Err(format!("no transform bench condition named {only:?}"));
        }
    }
    let batches = vec![synthetic(series)];
    let distinct = vec![synthetic_ids(series, 1)];
    let points = series * 2;
    let res = resource::build("00000000-0000-0000-0000-000000000000", |_| None);
    let mut enc = MetricsEncoder::new(Temporality::Cumulative, super::MAX_POINTS_PER_REQUEST);
    // Sanity: the statements did what they say.
    let view = all
        .metrics(export, || batches.clone(), &res, SystemTime::now())
        .map_err(|e| e.to_string())?;
    let p0 = &view.batches[0].families[0].points[0];
    if p0.labels.len() != 4
        || crate::metrics::model::get(&p0.labels, "container.id")
            .and_then(|v| v.as_str())
            .map(str::len)
            != Some(12)
    {
        return Err(format!(
            "transform bench statements did not apply: {:?}",
            p0.labels
        ));
    }
    let cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
    };
    let mut out: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    for round in 0..rounds {
        for k in 0..conds.len() {
            let c = (k + round) % conds.len();
            let (name, tr, encode, cold) = &conds[c];
            let reload = name == "transform reload";
            let mut pipelines = Vec::new();
            if reload {
                for _ in 0..exports {
                    pipelines.push(pipeline_of(ALL)?);
                }
            }
            let fresh = match cold {
                Some(st) => (0..exports)
                    .map(|_| transformer_of(st).map(Some))
                    .collect::<Result<Vec<_>, _>>()?,
                None => vec![tr.clone(); exports],
            };
            let input = if cold.is_some() || reload {
                &distinct
            } else {
                &batches
            };
            let t0 = cpu();
            for tr in &fresh {
                let now = SystemTime::now();
                match tr {
                    None => {
                        std::hint::black_box(enc.encode(input, &res, now));
                    }
                    Some(tr) => {
                        if let Some(p) = pipelines.pop() {
                            tr.set(p);
                        }
                        let v = tr
                            .metrics(export, || input.clone(), &res, now)
                            .map_err(|e| e.to_string())?;
                        if *encode {
                            std::hint::black_box(enc.encode(&v.batches, &v.resource, now));
                        }
                        std::hint::black_box(&v.batches);
                        // As the exporter does once a view is encoded; a cold pipeline is
                        // not used again (a reload drops its spares with its cache).
                        if cold.is_none() {
                            tr.recycle(export, v);
                        }
                    }
                }
            }
            out[c].push((cpu() - t0) / (exports * points) as f64);
        }
    }
    Ok(TransformReport {
        conditions: conds.into_iter().map(|c| c.0).zip(out).collect(),
        points_per_export: points,
    })
}

/// The body size as the transport sends it. Measured on the side (not on the timed path's
/// socket), with the same encoders.
fn wire_size(protocol: Protocol, compression: Compression, proto: &[u8]) -> u64 {
    let body = match protocol {
        Protocol::HttpJson => transport::to_json(Signal::Metrics, proto).unwrap_or_default(),
        _ => proto.to_vec(),
    };
    match compression {
        Compression::Gzip => transport::gzip(&body).len() as u64,
        Compression::None => body.len() as u64,
    }
}

/// A small, valid `ExportProfilesServiceRequest`: one CPU profile of one stack (`main`, called
/// from `_start`) with 3 samples; every dictionary table starts with its zero entry. Used to
/// check the profiles path end to end (`agent export-profile`) until the profiler feeds it.
pub fn sample_profile(
    res: &opentelemetry_proto::tonic::resource::v1::Resource,
) -> opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest {
    use opentelemetry_proto::tonic::{
        collector::profiles::v1development::ExportProfilesServiceRequest,
        profiles::v1development::{
            Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
            ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
        },
    };
    let strings = [
        "",
        "samples",
        "count",
        "cpu",
        "nanoseconds",
        "main",
        "_start",
    ];
    let line = |f: i32| Line {
        function_index: f,
        ..Default::default()
    };
    let now = super::metrics::unix_nanos(SystemTime::now());
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: Some(res.clone()),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(super::metrics::scope()),
                profiles: vec![Profile {
                    sample_type: Some(ValueType {
                        type_strindex: 1,
                        unit_strindex: 2,
                    }),
                    period_type: Some(ValueType {
                        type_strindex: 3,
                        unit_strindex: 4,
                    }),
                    period: 1_000_000_000 / 19,
                    time_unix_nano: now,
                    duration_nano: 1_000_000_000,
                    samples: vec![Sample {
                        stack_index: 1,
                        values: vec![3],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dictionary: Some(ProfilesDictionary {
            mapping_table: vec![Mapping::default()],
            location_table: vec![
                Location::default(),
                Location {
                    lines: vec![line(1)],
                    ..Default::default()
                },
                Location {
                    lines: vec![line(2)],
                    ..Default::default()
                },
            ],
            function_table: vec![
                Function::default(),
                Function {
                    name_strindex: 5,
                    ..Default::default()
                },
                Function {
                    name_strindex: 6,
                    ..Default::default()
                },
            ],
            link_table: vec![Link::default()],
            string_table: strings.iter().map(|s| s.to_string()).collect(),
            attribute_table: vec![KeyValueAndUnit::default()],
            stack_table: vec![
                Stack::default(),
                Stack {
                    location_indices: vec![1, 2],
                },
            ],
        }),
    }
}

/// Sends [`sample_profile`] once to `url`; the collector's answer as text.
pub async fn send_sample_profile(
    url: &str,
    protocol: Protocol,
    compression: Compression,
) -> Result<String, String> {
    let t = transport_to(Signal::Profiles, url, protocol, compression)?;
    let res = resource::build(&resource::instance_id(&std::env::temp_dir()), |k| {
        std::env::var(k).ok()
    });
    let body = sample_profile(&res).encode_to_vec();
    t.send(&body)
        .await
        .map(|a| format!("accepted rejected={} {}", a.rejected, a.message))
        .map_err(|e| e.to_string())
}
