//! The transformed view of a metric snapshot: what the exporter encodes (OTLP, JSON lines) and
//! what `/metrics` prints. Filters first (`filter.metrics.metric`, then `.datapoint`), then the
//! `metric_statements` groups in config order (resource and scope groups first, on the
//! export's resource and scope); metrics whose points were all dropped disappear. Each point
//! passes the data point filters and then every data point group (a group sees the metric as
//! the metric groups before it left it). When every data point statement and condition depends
//! on the series alone, a series' outcome is kept between exports (`cache.rs`).
//!
//! Merging: points of one metric whose attributes became identical (after `keep_keys`,
//! `delete_key`, a `set`, ...) are exported as one: counters summed, histograms with equal
//! bounds summed bucket by bucket (unequal bounds: the first point stays, the others are
//! dropped and counted as errors), gauges take the last point. Metrics renamed onto one name
//! (same kind) merge the same way. A merged cumulative point starts at the earliest start of
//! its members; when its total goes down (a member series ended, e.g. its process exited and
//! `retain_exited` passed), its start time moves to that export's time, so receivers see a reset
//! rather than a counter that decreased. Gauges carry no start.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{common::v1::InstrumentationScope, resource::v1::Resource};

use super::{
    cache::{same_labels, Hit, SeriesCache},
    merge::{labels_hash, merge, Check},
    resource_groups, Consumer, Propagated, Run, Transformer,
};
use crate::{
    metrics::model::{Batch, Desc, Family, Point},
    ottl::{Context, Env, Subject, Tcx},
};

/// What leaves the agent this time.
pub struct MetricsView<'a> {
    pub batches: Vec<Arc<Batch>>,
    pub resource: Cow<'a, Resource>,
    /// The scope after `scope` statements (`None`: unchanged, `export::metrics::scope()`).
    pub scope: Option<InstrumentationScope>,
}

/// Spare attribute lists tried per point (see `family`).
const SPARE_WINDOW: usize = 4;

/// The source of a transformed view's one batch.
const VIEW_SOURCE: &str = "transform";

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Transformer {
    /// The transformed view of the batches `snapshot` returns, exported at `now` with
    /// `resource`. The snapshot is taken under `consumer`'s lock, so its views are made in
    /// snapshot order.
    pub fn metrics<'a>(
        &self,
        consumer: Consumer,
        snapshot: impl FnOnce() -> Vec<Arc<Batch>>,
        resource: &'a Resource,
        now: SystemTime,
    ) -> Result<MetricsView<'a>, Propagated> {
        let p = self.pipeline();
        if p.metrics_unchanged() {
            return Ok(MetricsView {
                batches: snapshot(),
                resource: Cow::Borrowed(resource),
                scope: None,
            });
        }
        let mut st = self.merge[consumer as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let batches = snapshot();
        let batches = &batches;
        let now_ns = unix_nanos(now);
        let mut run = Run::new(self, "metrics");
        let result = (|| {
            let mut res = resource.clone();
            resource_groups(&mut run, &p.metric_groups, &mut res.attributes, now_ns)?;
            let mut scope = crate::export::metrics::scope();
            let scoped = p.metric_groups.iter().any(|g| g.context == Context::Scope);
            for g in p
                .metric_groups
                .iter()
                .filter(|g| g.context == Context::Scope)
            {
                let mut tcx = Tcx {
                    touched: false,
                    subject: Subject::Scope(&mut scope),
                    env: Env {
                        resource: &res.attributes,
                        scope: None,
                        metric: None,
                        now_unix_nano: now_ns,
                    },
                };
                run.group(g, &mut tcx)?;
            }
            let mut cache = (self.cached && p.points_per_series).then(|| {
                let mut c = self.cache[consumer as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let points = batches
                    .iter()
                    .flat_map(|b| &b.families)
                    .map(|f| f.points.len())
                    .sum();
                c.begin(&p, &res.attributes, &scope, points);
                c
            });
            let mut families = Vec::new();
            let mut checks = Vec::new();
            for batch in batches {
                for fam in &batch.families {
                    let c = cache.as_deref_mut();
                    let at = families.len();
                    if let Some((f, t)) =
                        self.family(&mut run, &p, fam, &res, &scope, now_ns, (c, at))?
                    {
                        families.push(f);
                        checks.push(t);
                    }
                }
            }
            if let Some(c) = &mut cache {
                c.end();
            }
            drop(cache);
            let conflicts = merge(&mut families, &mut checks, &mut st, now);
            run.errors += conflicts;
            Ok(MetricsView {
                batches: vec![Arc::new(Batch {
                    source: VIEW_SOURCE.into(),
                    time: now,
                    families,
                })],
                resource: Cow::Owned(res),
                scope: scoped.then_some(scope),
            })
        })();
        run.finish();
        result
    }

    /// Hands a view back once its consumer is done with it (encoded, printed): with the
    /// per-series cache on, its points' attribute lists become the spares of the consumer's
    /// next view (`cache.rs`; the rest is dropped here). Otherwise, or while anyone else
    /// holds the view's batch, it is only dropped.
    pub fn recycle(&self, consumer: Consumer, view: MetricsView<'_>) {
        if !(self.cached && self.pipeline().points_per_series) {
            return;
        }
        let Ok([batch]) = <[Arc<Batch>; 1]>::try_from(view.batches) else {
            return;
        };
        let Some(batch) = Arc::into_inner(batch) else {
            return;
        };
        if batch.source != VIEW_SOURCE {
            return;
        }
        let families = batch
            .families
            .into_iter()
            .map(|f| f.points.into_iter().map(|p| p.labels).collect())
            .collect();
        self.cache[consumer as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recycle(families);
    }

    #[allow(clippy::too_many_arguments)]
    fn family(
        &self,
        run: &mut Run,
        p: &super::Pipeline,
        fam: &Family,
        res: &Resource,
        scope: &InstrumentationScope,
        now: u64,
        (mut cache, at): (Option<&mut SeriesCache>, usize),
    ) -> Result<Option<(Family, Check)>, Propagated> {
        let base = Env {
            resource: &res.attributes,
            scope: Some(scope),
            metric: None,
            now_unix_nano: now,
        };
        let mut desc = fam.desc.clone();
        {
            let tcx = Tcx {
                touched: false,
                subject: Subject::Metric(&mut desc),
                env: base,
            };
            if run.filtered(&p.metric_filters, p.filter_mode, &tcx)? {
                // Counted per point.
                run.dropped = (run.dropped + fam.points.len() as u64).saturating_sub(1);
                return Ok(None);
            }
        }
        let mut descs = None;
        let mut points = Vec::with_capacity(fam.points.len());
        let mut touched = false;
        // The merge hashes of the points, from the cache (all of them or none).
        let mut hashes = Vec::new();
        // The points the previous view had at this family's place (see `cache.rs`).
        let mut spare = Vec::new();
        let mut next_spare = 0;
        if let Some(c) = cache.as_deref_mut() {
            hashes.reserve(fam.points.len());
            spare = c.take_spare(at);
        }
        for point in &fam.points {
            let Some(c) = cache.as_deref_mut() else {
                let mut pt = point.clone();
                if let Some(t) = point_groups(run, p, &desc, &mut descs, base, &mut pt)? {
                    points.push(pt);
                    touched |= t;
                }
                continue;
            };
            match c.get(&fam.desc, &point.labels) {
                Ok(Hit::Dropped) => run.dropped += 1,
                Ok(Hit::Kept(labels, t, h)) => {
                    touched |= t;
                    hashes.push(h);
                    // The spares are in the previous view's order: the next few are tried (a
                    // series gone or merged since shifts them).
                    let found = spare.get(next_spare..).and_then(|s| {
                        s.iter()
                            .take(SPARE_WINDOW)
                            .position(|s| same_labels(s, labels))
                    });
                    let labels = match found {
                        Some(d) => {
                            next_spare += d + 1;
                            std::mem::take(&mut spare[next_spare - 1])
                        }
                        None => labels.to_vec(),
                    };
                    points.push(Point {
                        labels,
                        value: point.value.clone(),
                        start_time: point.start_time,
                    });
                    describe(run, p, &desc, base, &mut descs)?;
                }
                Err(h) => {
                    let errors = run.errors;
                    let mut pt = point.clone();
                    let kept = point_groups(run, p, &desc, &mut descs, base, &mut pt)?;
                    let merge_hash = kept.map(|_| labels_hash(&pt.labels));
                    if run.errors == errors {
                        let output = merge_hash.map(|m| (pt.labels.as_slice(), m));
                        let t = kept.unwrap_or(false);
                        c.insert(h, &fam.desc, &point.labels, output, t);
                    }
                    if let (Some(t), Some(m)) = (kept, merge_hash) {
                        hashes.push(m);
                        points.push(pt);
                        touched |= t;
                    }
                }
            }
        }
        if points.is_empty() && !fam.points.is_empty() {
            return Ok(None);
        }
        let desc = describe(run, p, &desc, base, &mut descs)?.0.clone();
        let hashes = cache.is_some().then_some(hashes);
        Ok(Some((Family { desc, points }, Check { touched, hashes })))
    }
}

/// The metric's description after the metric groups, and the one each data point group sees
/// (the metric groups before it ran), made once per family: when a first point passed the
/// filters, or at the end for a family without points.
fn describe<'d>(
    run: &mut Run,
    p: &super::Pipeline,
    desc: &Desc,
    base: Env,
    descs: &'d mut Option<(Desc, Vec<Desc>)>,
) -> Result<&'d (Desc, Vec<Desc>), Propagated> {
    if descs.is_none() {
        let mut d = desc.clone();
        let mut seen = Vec::new();
        for g in &p.metric_groups {
            match g.context {
                Context::Metric => {
                    let mut tcx = Tcx {
                        touched: false,
                        subject: Subject::Metric(&mut d),
                        env: base,
                    };
                    run.group(g, &mut tcx)?;
                }
                Context::Datapoint => seen.push(d.clone()),
                _ => {}
            }
        }
        *descs = Some((d, seen));
    }
    Ok(descs.as_ref().expect("set above"))
}

/// Runs the data point filters, then the data point groups on `pt`: `None` when a filter
/// dropped it, else whether an editor took its attributes. `desc`: the metric as the filters
/// see it (before the metric groups).
fn point_groups(
    run: &mut Run,
    p: &super::Pipeline,
    desc: &Desc,
    descs: &mut Option<(Desc, Vec<Desc>)>,
    base: Env,
    pt: &mut Point,
) -> Result<Option<bool>, Propagated> {
    if !p.datapoint_filters.is_empty() {
        let tcx = Tcx {
            touched: false,
            subject: Subject::Datapoint(pt),
            env: Env {
                metric: Some(desc),
                ..base
            },
        };
        if run.filtered(&p.datapoint_filters, p.filter_mode, &tcx)? {
            return Ok(None);
        }
    }
    let (_, seen) = describe(run, p, desc, base, descs)?;
    let mut touched = false;
    let groups = p
        .metric_groups
        .iter()
        .filter(|g| g.context == Context::Datapoint);
    for (g, d) in groups.zip(seen) {
        let mut tcx = Tcx {
            touched: false,
            subject: Subject::Datapoint(pt),
            env: Env {
                metric: Some(d),
                ..base
            },
        };
        run.group(g, &mut tcx)?;
        touched |= tcx.touched;
    }
    Ok(Some(touched))
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        metrics::model::{attr, AttrValue, Desc, Histogram, Kind, Point, Value},
        transform::merge::MergeState,
        transform::{FilterConfig, Pipeline, TransformConfig},
    };

    // The families and the clock of the transform's tests (also `cache.rs`'s).
    pub(in crate::transform) const ERRORS: Desc = Desc {
        name: "process.syscall.errors",
        unit: "{error}",
        help: "h",
        kind: Kind::Counter,
    };
    pub(in crate::transform) const DURATION: Desc = Desc {
        name: "process.syscall.duration",
        unit: "s",
        help: "h",
        kind: Kind::Histogram,
    };

    pub(in crate::transform) fn t0(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn counter(pid: i64, exe: &str, v: f64, start: u64) -> Point {
        Point {
            labels: vec![
                attr("process.pid", pid),
                attr("process.executable.name", exe),
                attr("syscall.name", "read"),
            ],
            value: Value::Counter(v),
            start_time: t0(start),
        }
    }

    fn hist(pid: i64, counts: [u64; 3], start: u64) -> Point {
        Point {
            labels: vec![attr("process.pid", pid), attr("syscall.name", "read")],
            value: Value::Histogram(Histogram {
                bounds: vec![1.0, 2.0].into(),
                bucket_counts: counts[..].into(),
                sum: counts.iter().sum::<u64>() as f64,
                count: counts.iter().sum(),
            }),
            start_time: t0(start),
        }
    }

    fn batch(families: Vec<Family>) -> Vec<Arc<Batch>> {
        vec![Arc::new(Batch {
            source: "t".into(),
            time: t0(0),
            families,
        })]
    }

    fn transformer(yaml_t: &str, yaml_f: &str) -> Arc<Transformer> {
        let t: TransformConfig = serde_yaml_ng::from_str(yaml_t).unwrap();
        let f: FilterConfig = serde_yaml_ng::from_str(yaml_f).unwrap();
        Transformer::new(Pipeline::compile(&t, &f).unwrap())
    }

    const KEEP_SYSCALL: &str = "metric_statements:\n  - context: datapoint\n    statements:\n      - keep_keys(attributes, [\"syscall.name\"])\n";

    #[test]
    fn identical_points_merge_and_cumulative_starts_stay_valid() {
        let t = transformer(KEEP_SYSCALL, "{}");
        let res = Resource::default();
        let input = |a: f64, b: f64, with_b: bool| {
            let mut pts = vec![counter(1, "a", a, 100)];
            if with_b {
                pts.push(counter(2, "b", b, 50));
            }
            batch(vec![
                Family {
                    desc: ERRORS,
                    points: pts,
                },
                Family {
                    desc: DURATION,
                    points: vec![hist(1, [1, 2, 3], 100), hist(2, [10, 0, 1], 90)],
                },
            ])
        };
        let v = t
            .metrics(Consumer::Export, || input(5.0, 7.0, true), &res, t0(200))
            .unwrap();
        let fams = &v.batches[0].families;
        assert_eq!(fams[0].points.len(), 1);
        assert_eq!(fams[0].points[0].labels, vec![attr("syscall.name", "read")]);
        assert_eq!(fams[0].points[0].value, Value::Counter(12.0));
        assert_eq!(fams[0].points[0].start_time, t0(50));
        let Value::Histogram(h) = &fams[1].points[0].value else {
            panic!()
        };
        assert_eq!(
            (h.bucket_counts.to_vec(), h.count, h.sum),
            (vec![11, 2, 4], 17, 17.0)
        );
        assert_eq!(fams[1].points[0].start_time, t0(90));
        // Grows: same start.
        let v = t
            .metrics(Consumer::Export, || input(6.0, 8.0, true), &res, t0(210))
            .unwrap();
        assert_eq!(
            v.batches[0].families[0].points[0].value,
            Value::Counter(14.0)
        );
        assert_eq!(v.batches[0].families[0].points[0].start_time, t0(50));
        // Member b ended: the total went down, so the series restarts at this export.
        let v = t
            .metrics(Consumer::Export, || input(7.0, 0.0, false), &res, t0(220))
            .unwrap();
        assert_eq!(
            v.batches[0].families[0].points[0].value,
            Value::Counter(7.0)
        );
        assert_eq!(v.batches[0].families[0].points[0].start_time, t0(220));
        let v = t
            .metrics(Consumer::Export, || input(9.0, 0.0, false), &res, t0(230))
            .unwrap();
        assert_eq!(v.batches[0].families[0].points[0].start_time, t0(220));
        // The store's batches are untouched.
        assert_eq!(input(5.0, 7.0, true)[0].families[0].points.len(), 2);
    }

    #[test]
    fn gauges_take_the_last_and_unequal_bounds_do_not_merge() {
        let mut fams = vec![Family {
            desc: Desc {
                kind: Kind::Gauge,
                ..ERRORS
            },
            points: vec![
                Point {
                    labels: vec![attr("a", "x")],
                    value: Value::Gauge(1.0),
                    start_time: t0(1),
                },
                Point {
                    labels: vec![attr("a", "x")],
                    value: Value::Gauge(2.0),
                    start_time: t0(1),
                },
            ],
        }];
        let mut st = MergeState::default();
        assert_eq!(merge(&mut fams, &mut vec![true.into()], &mut st, t0(5)), 0);
        assert_eq!(fams[0].points.len(), 1);
        assert_eq!(fams[0].points[0].value, Value::Gauge(2.0));
        let mut other = hist(1, [1, 1, 1], 1);
        if let Value::Histogram(h) = &mut other.value {
            h.bounds = vec![1.0, 4.0].into();
        }
        let mut fams = vec![Family {
            desc: DURATION,
            points: vec![hist(1, [1, 1, 1], 1), other],
        }];
        assert_eq!(merge(&mut fams, &mut vec![true.into()], &mut st, t0(5)), 1);
        assert_eq!(fams[0].points.len(), 1);
        // Attribute order does not matter.
        let mut a = counter(1, "a", 1.0, 1);
        let mut b = counter(1, "a", 2.0, 1);
        a.labels.reverse();
        b.labels.swap(0, 1);
        let mut fams = vec![Family {
            desc: ERRORS,
            points: vec![a, b],
        }];
        merge(&mut fams, &mut vec![true.into()], &mut st, t0(5));
        assert_eq!(fams[0].points.len(), 1);
        // Untouched families are not checked.
        let mut fams = vec![Family {
            desc: ERRORS,
            points: vec![counter(1, "a", 1.0, 1), counter(1, "a", 2.0, 1)],
        }];
        merge(&mut fams, &mut vec![false.into()], &mut st, t0(5));
        assert_eq!(fams[0].points.len(), 2);
        let mut fams = vec![Family {
            desc: ERRORS,
            points: vec![counter(1, "a", 1.0, 1), counter(1, "a", 2.0, 1)],
        }];
        merge(&mut fams, &mut vec![true.into()], &mut st, t0(5));
        assert_eq!(fams[0].points.len(), 1);
        assert_eq!(fams[0].points[0].value, Value::Counter(3.0));
    }

    #[test]
    fn hashes_seen_distinct_before_skip_the_sort_and_only_those() {
        let mut st = MergeState::default();
        let fams = |b_pid: i64, c_pid: i64| {
            vec![Family {
                desc: ERRORS,
                points: vec![
                    counter(1, "a", 1.0, 1),
                    counter(b_pid, "a", 2.0, 1),
                    counter(c_pid, "a", 4.0, 1),
                ],
            }]
        };
        let hashes = |f: &[Family]| -> Vec<u64> {
            f[0].points.iter().map(|p| labels_hash(&p.labels)).collect()
        };
        let run = |f: &mut Vec<Family>, st: &mut MergeState, known: Option<Vec<u64>>| {
            let mut c = vec![Check {
                touched: true,
                hashes: known,
            }];
            merge(f, &mut c, st, t0(5));
            f[0].points
                .iter()
                .map(|p| p.value.clone())
                .collect::<Vec<_>>()
        };
        let counters = |v: &[f64]| v.iter().map(|x| Value::Counter(*x)).collect::<Vec<_>>();
        // Distinct: kept as they are, twice (the second time from the remembered hashes).
        for _ in 0..2 {
            let mut f = fams(2, 3);
            let h = hashes(&f);
            assert_eq!(run(&mut f, &mut st, Some(h)), counters(&[1.0, 2.0, 4.0]));
        }
        assert_eq!(st.distinct.len(), 1);
        // One point's attributes became another's: other hashes, sorted and merged.
        let mut f = fams(1, 3);
        assert_eq!(run(&mut f, &mut st, None), counters(&[3.0, 4.0]));
        // A family with equal hashes is not remembered; a family gone is forgotten.
        assert!(st.distinct.is_empty());
        let mut f = fams(1, 1);
        assert_eq!(run(&mut f, &mut st, None), counters(&[7.0]));
        assert!(st.distinct.is_empty());
        let mut f = fams(2, 3);
        run(&mut f, &mut st, None);
        assert_eq!(st.distinct.len(), 1);
        merge(&mut Vec::new(), &mut Vec::new(), &mut st, t0(6));
        assert!(st.distinct.is_empty());
        // Hashes that do not fit the points are not used.
        let mut f = fams(1, 3);
        assert_eq!(
            run(&mut f, &mut st, Some(vec![1, 2])),
            counters(&[3.0, 4.0])
        );
    }

    #[test]
    fn filters_drop_metrics_and_points_and_resource_statements_apply() {
        let t = transformer(
            "metric_statements:\n  - context: resource\n    statements:\n      - set(attributes[\"deployment.environment\"], \"prod\")\n  - context: datapoint\n    statements:\n      - set(attributes[\"env\"], resource.attributes[\"deployment.environment\"])\n",
            "metrics:\n  metric:\n    - name == \"process.syscall.errors\"\n  datapoint:\n    - attributes[\"process.pid\"] == 2\n",
        );
        let res = Resource::default();
        let input = batch(vec![
            Family {
                desc: ERRORS,
                points: vec![counter(1, "a", 1.0, 1)],
            },
            Family {
                desc: DURATION,
                points: vec![hist(1, [1, 0, 0], 1), hist(2, [1, 0, 0], 1)],
            },
        ]);
        let v = t
            .metrics(Consumer::Export, || input.clone(), &res, t0(5))
            .unwrap();
        let fams = &v.batches[0].families;
        assert_eq!(fams.len(), 1);
        assert_eq!(fams[0].desc.name, DURATION.name);
        assert_eq!(fams[0].points.len(), 1);
        assert_eq!(
            crate::metrics::model::get(&fams[0].points[0].labels, "env"),
            Some(&AttrValue::Str("prod".into()))
        );
        assert_eq!(v.resource.attributes[0].key, "deployment.environment");
        assert_eq!(t.counts()["metrics"].dropped, 2);
    }

    #[test]
    fn error_modes() {
        let stmt = "metric_statements:\n  - context: datapoint\n    statements:\n      - set(attributes[\"h\"], SHA256(attributes[\"process.executable.name\"]))\n      - set(attributes[\"after\"], true)\n";
        let input = batch(vec![Family {
            desc: ERRORS,
            points: vec![
                counter(1, "a", 1.0, 1),
                Point {
                    labels: vec![attr("agent.series.folded", "other")],
                    value: Value::Counter(1.0),
                    start_time: t0(1),
                },
            ],
        }]);
        let res = Resource::default();
        // ignore: the failing point goes on to the next statement.
        let t = transformer(stmt, "{}");
        let v = t
            .metrics(Consumer::Export, || input.clone(), &res, t0(5))
            .unwrap();
        let pts = &v.batches[0].families[0].points;
        assert!(pts
            .iter()
            .all(|p| crate::metrics::model::get(&p.labels, "after").is_some()));
        assert_eq!(t.counts()["metrics"].errors, 1);
        // propagate: the export is dropped.
        let t = transformer(&format!("error_mode: propagate\n{stmt}"), "{}");
        let e = t
            .metrics(Consumer::Export, || input.clone(), &res, t0(5))
            .err()
            .unwrap();
        assert_eq!(e.error, "expected string but got nil");
    }
}
