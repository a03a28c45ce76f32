//! Per-series outcomes of the data point statements and filters, kept between exports. A
//! series' attributes, its metric, the resource and the scope are the same every export, so when
//! every data point statement and condition reads and writes nothing else, and there are enough
//! of them to be worth it (`Pipeline::points_per_series`, decided at config load), the attributes a series ends with
//! (or that a filter dropped it) are computed once and reused while the series lives: each
//! export then copies the cached attributes and the point's value instead of running the
//! statements. The attribute lists of the consumer's previous view, once it is done with it
//! ([`crate::transform::Transformer::recycle`]), are kept as spares: a point whose spare (same
//! family and position) already holds its cached attributes takes it instead of a copy (no
//! allocation, no reference counting).
//!
//! Invariants: one cache per consumer, under the lock of its merge state; it holds outcomes of
//! one pipeline, one resource and one scope (after their statements): with any other it starts
//! empty (a config reload, a resource that changed); an outcome whose run had an error is not
//! kept, so every export counts and logs its errors as before; series absent from an export are
//! dropped after it; at most [`CAPACITY`] series and [`MAX_ATTRS`] attributes (full: further series are computed every
//! export until some leave); keys are hashed with `hashbrown`'s foldhash, seeded per map, and
//! confirmed by full equality (the metric's description and the input attributes in order).

use std::{hash::BuildHasher, ops::Range, sync::Arc};

use hashbrown::{DefaultHashBuilder, HashTable};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};

use super::Pipeline;
use crate::metrics::model::{AttrValue, Desc, Key, Labels};

/// Series kept per consumer.
pub const CAPACITY: usize = 16384;
/// Attributes kept per consumer, inputs and outputs together (48 bytes each: at most 7.5 MiB,
/// shared strings not counted).
pub const MAX_ATTRS: usize = CAPACITY * 10;

/// What the data point filters and statements made of a series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hit<'a> {
    /// A filter condition held.
    Dropped,
    /// The attributes after every statement, whether an editor took the map (the merge then
    /// checks the family) and their merge hash (`merge::labels_hash`).
    Kept(&'a [(Key, AttrValue)], bool, u64),
}

struct Entry {
    hash: u64,
    desc: Desc,
    /// In `attrs`.
    input: Range<u32>,
    /// In `attrs`; `None`: dropped.
    output: Option<Range<u32>>,
    touched: bool,
    /// `merge::labels_hash` of the output.
    merge_hash: u64,
    /// The export that last used it.
    seen: u64,
}

/// The per-series outcomes of one consumer (see the module doc). Entries and their attributes
/// sit in two vectors in the order series were first seen, which is the order exports visit
/// them: no allocation per series, and lookups walk memory in order.
#[derive(Default)]
pub struct SeriesCache {
    pipeline: Option<Arc<Pipeline>>,
    resource: Vec<KeyValue>,
    scope: InstrumentationScope,
    /// Indices into `entries`, by hash.
    table: HashTable<u32>,
    entries: Vec<Entry>,
    attrs: Vec<(Key, AttrValue)>,
    hasher: DefaultHashBuilder,
    epoch: u64,
    /// The entry after the last one found.
    next: usize,
    /// Per family of the previous view, its points' attribute lists.
    spare: Vec<Vec<Labels>>,
}

fn range(r: &Range<u32>) -> Range<usize> {
    r.start as usize..r.end as usize
}

/// `a == b`, first by address: the probes' descriptions and attribute keys are static
/// strings, so equal ones usually are the same string and need no byte comparison.
fn same_str(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

fn same_desc(a: &Desc, b: &Desc) -> bool {
    same_str(a.name, b.name)
        && same_str(a.unit, b.unit)
        && same_str(a.help, b.help)
        && a.kind == b.kind
}

/// Attribute lists equal in order (`==` on the slices), keys compared by address first;
/// values compare shared strings by address first already (`Arc`'s `PartialEq` for `Eq` types).
pub(super) fn same_labels(a: &[(Key, AttrValue)], b: &[(Key, AttrValue)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| same_str(ka, kb) && va == vb)
}

impl SeriesCache {
    /// Starts an export with pipeline `p`, the resource's attributes and the scope as the
    /// resource and scope statements left them: the cache empties when any of them differs from
    /// the previous export's, and then makes room for `points` series at once (no growing
    /// step by step while the first export fills it).
    pub fn begin(
        &mut self,
        p: &Arc<Pipeline>,
        resource: &[KeyValue],
        scope: &InstrumentationScope,
        points: usize,
    ) {
        let same = self.pipeline.as_ref().is_some_and(|q| Arc::ptr_eq(p, q))
            && self.resource == resource
            && self.scope == *scope;
        if !same {
            // Emptied in place: the memory of the previous fill (a reload's) is filled again
            // instead of fresh pages.
            self.reset();
            let n = points.min(CAPACITY);
            let entries = &self.entries;
            self.table.reserve(n, |&j| entries[j as usize].hash);
            self.entries.reserve(n);
            self.pipeline = Some(p.clone());
            self.resource = resource.to_vec();
            self.scope = scope.clone();
        }
        self.epoch += 1;
        self.next = 0;
    }

    /// Forgets every outcome and spare (a reload), keeping the memory for the next fill.
    pub fn reset(&mut self) {
        self.pipeline = None;
        self.table.clear();
        self.entries.clear();
        self.attrs.clear();
        self.spare.clear();
    }

    /// Ends an export: series it did not see are dropped, the others moved down in place (the
    /// vectors keep their memory: no fresh pages while series come and go); spares left over
    /// are dropped.
    pub fn end(&mut self) {
        // Spares of families this export did not reach.
        self.spare.clear();
        let epoch = self.epoch;
        if self.entries.iter().all(|e| e.seen == epoch) {
            return;
        }
        // Ranges are in ascending order, so the write position never passes the read one.
        let mut w = 0usize;
        let mut kept = 0usize;
        for i in 0..self.entries.len() {
            if self.entries[i].seen != epoch {
                continue;
            }
            let mut moved = |r: &Range<u32>| {
                let start = w;
                for j in range(r) {
                    self.attrs.swap(w, j);
                    w += 1;
                }
                start as u32..w as u32
            };
            let input = moved(&self.entries[i].input);
            let output = self.entries[i].output.clone().map(|o| moved(&o));
            let e = &mut self.entries[i];
            e.input = input;
            e.output = output;
            self.entries.swap(kept, i);
            kept += 1;
        }
        self.attrs.truncate(w);
        self.entries.truncate(kept);
        self.table.clear();
        for (i, e) in self.entries.iter().enumerate() {
            let entries = &self.entries;
            self.table
                .insert_unique(e.hash, i as u32, |&j| entries[j as usize].hash);
        }
    }

    /// The key hash of a series (its metric's name and its attributes in order).
    pub fn hash(&self, desc: &Desc, labels: &[(Key, AttrValue)]) -> u64 {
        self.hasher.hash_one((desc.name, labels))
    }

    /// The outcome of the series if kept, else its key hash (for [`Self::insert`]). The entry
    /// after the last one found is tried first (exports visit series in the order they were
    /// kept): an in-order hit costs one comparison and no hash.
    pub fn get(&mut self, desc: &Desc, labels: &[(Key, AttrValue)]) -> Result<Hit<'_>, u64> {
        let same = |e: &Entry, attrs: &[(Key, AttrValue)]| {
            same_desc(&e.desc, desc) && same_labels(&attrs[range(&e.input)], labels)
        };
        let i = match self.entries.get(self.next) {
            Some(e) if same(e, &self.attrs) => self.next,
            _ => {
                let hash = self.hash(desc, labels);
                let (entries, attrs) = (&self.entries, &self.attrs);
                match self.table.find(hash, |&i| {
                    let e = &entries[i as usize];
                    e.hash == hash && same(e, attrs)
                }) {
                    Some(&i) => i as usize,
                    None => return Err(hash),
                }
            }
        };
        self.next = i + 1;
        let e = &mut self.entries[i];
        e.seen = self.epoch;
        Ok(match &e.output {
            None => Hit::Dropped,
            Some(o) => Hit::Kept(&self.attrs[range(o)], e.touched, e.merge_hash),
        })
    }

    /// Keeps the outcome of a series that [`Self::get`] did not find, unless full: `output`
    /// `None` when a filter dropped it, else with its `merge::labels_hash`.
    pub fn insert(
        &mut self,
        hash: u64,
        desc: &Desc,
        input: &[(Key, AttrValue)],
        output: Option<(&[(Key, AttrValue)], u64)>,
        touched: bool,
    ) {
        let size = input.len() + output.map_or(0, |o| o.0.len());
        if self.entries.len() >= CAPACITY || self.attrs.len() + size > MAX_ATTRS {
            return;
        }
        let merge_hash = output.map_or(0, |o| o.1);
        let output = output.map(|o| o.0);
        let mut put = |a: &[(Key, AttrValue)]| {
            let start = self.attrs.len() as u32;
            self.attrs.extend_from_slice(a);
            start..self.attrs.len() as u32
        };
        let input = put(input);
        let output = output.map(put);
        let i = self.entries.len() as u32;
        self.entries.push(Entry {
            hash,
            desc: desc.clone(),
            input,
            output,
            touched,
            merge_hash,
            seen: self.epoch,
        });
        let entries = &self.entries;
        self.table
            .insert_unique(hash, i, |&j| entries[j as usize].hash);
    }

    /// Keeps the attribute lists of a finished view (per family, in point order) as spares for
    /// the next one.
    pub fn recycle(&mut self, families: Vec<Vec<Labels>>) {
        self.spare = families;
    }

    /// The spare attribute lists of the family at `index` of the view (empty when none).
    pub fn take_spare(&mut self, index: usize) -> Vec<Labels> {
        self.spare
            .get_mut(index)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{common::v1::AnyValue, resource::v1::Resource};

    use super::*;
    use crate::{
        metrics::model::{attr, Batch, Family, Histogram, Point, Value},
        transform::{
            metrics::{
                tests::{t0, DURATION, ERRORS},
                MetricsView,
            },
            Consumer, FilterConfig, Pipeline, TransformConfig, Transformer,
        },
    };

    /// `n` series per family; values grow with `export`; series `gone` is absent.
    fn input(n: usize, export: u64, gone: Option<usize>) -> Vec<Arc<Batch>> {
        let labels = |i: usize| {
            vec![
                attr("syscall.name", ["read", "write"][i % 2]),
                attr("process.pid", (100 + i / 2) as i64),
                attr("process.executable.name", format!("exe-{}", i / 4)),
                attr("container.id", format!("{:064x}", i / 3)),
                attr("host.cpu", (i % 2) as i64),
            ]
        };
        let live = |i: &usize| Some(*i) != gone;
        let counters = (0..n)
            .filter(live)
            .map(|i| Point {
                labels: labels(i),
                value: Value::Counter((i as u64 * 10 + export) as f64),
                start_time: t0(1),
            })
            .collect();
        let hists = (0..n)
            .filter(live)
            .map(|i| Point {
                labels: labels(i),
                value: Value::Histogram(Histogram {
                    bounds: vec![1.0, 2.0].into(),
                    bucket_counts: vec![export, i as u64, 1].into(),
                    sum: 1.5,
                    count: export + i as u64 + 1,
                }),
                start_time: t0(1),
            })
            .collect();
        vec![Arc::new(Batch {
            source: "t".into(),
            time: t0(0),
            families: vec![
                Family {
                    desc: ERRORS,
                    points: counters,
                },
                Family {
                    desc: DURATION,
                    points: hists,
                },
            ],
        })]
    }

    fn pipeline(statements: &str, filters: &str) -> Pipeline {
        let t: TransformConfig = serde_yaml_ng::from_str(statements).unwrap();
        let f: FilterConfig = serde_yaml_ng::from_str(filters).unwrap();
        Pipeline::compile(&t, &f).unwrap()
    }

    /// The bench's five statements, a metric rename read by a later data point group, a
    /// resource attribute copied onto points, and a data point filter.
    const STATEMENTS: &str = r#"
metric_statements:
  - context: datapoint
    statements:
      - set(attributes["process.executable.name"], SHA256(attributes["process.executable.name"])) where attributes["process.executable.name"] == "exe-1"
      - delete_key(attributes, "host.cpu")
      - keep_keys(attributes, ["syscall.name", "process.pid", "process.executable.name", "container.id"])
      - replace_pattern(attributes["container.id"], "^([0-9a-f]{12})[0-9a-f]+$", "$1")
      - limit(attributes, 4, ["process.pid"])
  - context: metric
    statements:
      - set(name, "renamed.errors") where name == "process.syscall.errors"
  - context: datapoint
    statements:
      - set(attributes["metric"], metric.name)
      - set(attributes["env"], resource.attributes["deployment.environment"])
      - delete_key(attributes, "process.pid") where attributes["syscall.name"] == "write"
"#;
    const FILTERS: &str = "metrics:\n  datapoint:\n    - attributes[\"process.pid\"] == 101\n";

    fn resource(env: &str) -> Resource {
        Resource {
            attributes: vec![KeyValue {
                key: "deployment.environment".into(),
                value: Some(AnyValue {
                    value: Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            env.into(),
                        ),
                    ),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn view(t: &Transformer, b: &[Arc<Batch>], res: &Resource, at: u64) -> Vec<Family> {
        let v: MetricsView = t
            .metrics(Consumer::Export, || b.to_vec(), res, t0(at))
            .unwrap();
        v.batches.iter().flat_map(|b| b.families.clone()).collect()
    }

    fn cached_len(t: &Transformer) -> usize {
        t.cache[Consumer::Export as usize].lock().unwrap().len()
    }

    #[test]
    fn cached_views_equal_uncached_ones_across_exports() {
        let cached = Transformer::new(pipeline(STATEMENTS, FILTERS));
        let plain = Transformer::uncached(pipeline(STATEMENTS, FILTERS));
        assert!(cached.pipeline().points_per_series);
        let res = resource("prod");
        for (k, gone) in [None, None, Some(5), None, Some(0)].into_iter().enumerate() {
            let b = input(40, k as u64, gone);
            let a = view(&cached, &b, &res, 10 + k as u64);
            assert_eq!(a, view(&plain, &b, &res, 10 + k as u64), "export {k}");
            // Merged (pid deleted on writes), filtered, renamed, hashed: the statements ran.
            assert_eq!(a[0].desc.name, "renamed.errors");
            assert!(a[0].points.len() < 39, "{}", a[0].points.len());
            assert!(a[0].points.iter().all(|p| {
                crate::metrics::model::get(&p.labels, "metric") == Some(&"renamed.errors".into())
            }));
        }
        assert_eq!(cached.counts(), plain.counts());
        assert!(cached.counts()["metrics"].dropped > 0);
        // Every live series kept (40 inputs per family, one absent in the last export), the
        // absent one dropped after it.
        assert_eq!(cached_len(&cached), 2 * 39);
    }

    #[test]
    fn recycled_views_lend_their_attribute_lists_and_change_nothing() {
        let cached = Transformer::new(pipeline(STATEMENTS, FILTERS));
        let plain = Transformer::uncached(pipeline(STATEMENTS, FILTERS));
        let res = resource("prod");
        let addrs = |v: &MetricsView| -> Vec<usize> {
            v.batches[0]
                .families
                .iter()
                .flat_map(|f| f.points.iter().map(|p| p.labels.as_ptr() as usize))
                .collect()
        };
        let mut last = Vec::new();
        let exports = [None, None, Some(5), None, Some(0), None, None];
        for (k, gone) in exports.into_iter().enumerate() {
            let b = input(40, k as u64, gone);
            let at = 10 + k as u64;
            let v = cached
                .metrics(Consumer::Export, || b.to_vec(), &res, t0(at))
                .unwrap();
            let fams = v.batches[0].families.clone();
            assert_eq!(fams, view(&plain, &b, &res, at), "export {k}");
            // Merged (pid deleted on writes) and filtered: the spares' order is not the
            // input's, and series leave and come back.
            assert!(fams[0].points.len() < 39, "{}", fams[0].points.len());
            let now = addrs(&v);
            let reused = now.iter().filter(|a| last.contains(*a)).count();
            match k {
                0 => assert_eq!(reused, 0),
                // The same series: every list reused.
                1 | 6 => assert_eq!(reused, now.len(), "export {k}"),
                // One series per family back: at most those two copied.
                _ => assert!(
                    reused + 2 >= now.len(),
                    "export {k}: {reused} of {}",
                    now.len()
                ),
            }
            last = now;
            cached.recycle(Consumer::Export, v);
        }
        // A view someone else still holds is not taken; the next one is still right.
        let b = input(40, 9, None);
        let v = cached
            .metrics(Consumer::Export, || b.to_vec(), &res, t0(30))
            .unwrap();
        let held = v.batches.clone();
        cached.recycle(Consumer::Export, v);
        assert!(cached.cache[Consumer::Export as usize]
            .lock()
            .unwrap()
            .spare
            .is_empty());
        assert_eq!(view(&cached, &b, &res, 31), view(&plain, &b, &res, 31));
        drop(held);
    }

    #[test]
    fn reload_and_a_changed_resource_empty_the_cache() {
        let set = |v: &str| {
            pipeline(
                &format!("metric_statements:\n  - context: datapoint\n    statements:\n      - set(attributes[\"v\"], \"{v}\")\n      - delete_key(attributes, \"host.cpu\")\n      - delete_key(attributes, \"x\")\n"),
                "{}",
            )
        };
        assert!(set("1").points_per_series);
        // Fewer statements than CACHE_MIN: run every time.
        assert!(!pipeline("metric_statements:\n  - context: datapoint\n    statements:\n      - delete_key(attributes, \"x\")\n", "{}").points_per_series);
        let v_of = |f: &[Family]| crate::metrics::model::get(&f[0].points[0].labels, "v").cloned();
        let t = Transformer::new(set("1"));
        let b = input(4, 0, None);
        let res = resource("prod");
        assert_eq!(v_of(&view(&t, &b, &res, 1)), Some("1".into()));
        assert_eq!(v_of(&view(&t, &b, &res, 2)), Some("1".into()));
        let capacity = |t: &Transformer| {
            let c = t.cache[Consumer::Export as usize].lock().unwrap();
            (c.entries.capacity(), c.attrs.capacity())
        };
        let filled = capacity(&t);
        t.set(set("2"));
        // Emptied, its memory kept for the next fill.
        assert_eq!(cached_len(&t), 0);
        assert_eq!(capacity(&t), filled);
        assert_eq!(v_of(&view(&t, &b, &res, 3)), Some("2".into()));
        assert_eq!(cached_len(&t), 8);
        assert_eq!(capacity(&t), filled);
        // The resource a statement reads changed: recomputed.
        let t = Transformer::new(pipeline(STATEMENTS, "{}"));
        let env_of =
            |f: &[Family]| crate::metrics::model::get(&f[0].points[0].labels, "env").cloned();
        assert_eq!(env_of(&view(&t, &b, &res, 1)), Some("prod".into()));
        assert_eq!(
            env_of(&view(&t, &b, &resource("test"), 2)),
            Some("test".into())
        );
        // A pipeline filled for another one is not used (a reload racing an export).
        let mut c = SeriesCache::default();
        let (p1, p2) = (Arc::new(set("1")), Arc::new(set("1")));
        let scope = InstrumentationScope::default();
        c.begin(&p1, &[], &scope, 1);
        let labels = vec![attr("a", "b")];
        let h = c.hash(&ERRORS, &labels);
        assert_eq!(c.get(&ERRORS, &labels), Err(h));
        c.insert(h, &ERRORS, &labels, None, false);
        // Equal descriptions and attributes in other strings are found.
        let owned: Vec<(Key, AttrValue)> = labels
            .iter()
            .map(|(k, v)| (Key::Owned(k.to_string()), AttrValue::from(v.to_string())))
            .collect();
        assert_eq!(c.get(&ERRORS, &owned), Ok(Hit::Dropped));
        let other = Desc {
            name: "process.syscall.errors",
            ..DURATION
        };
        let h2 = c.hash(&other, &owned);
        assert_eq!(c.get(&other, &owned), Err(h2));
        assert_eq!(c.get(&ERRORS, &labels), Ok(Hit::Dropped));
        c.begin(&p2, &[], &scope, 1);
        assert_eq!(c.get(&ERRORS, &labels), Err(h));
    }

    #[test]
    fn the_bound_holds_and_series_beyond_it_are_still_transformed() {
        let t = Transformer::new(pipeline(STATEMENTS, "{}"));
        let plain = Transformer::uncached(pipeline(STATEMENTS, "{}"));
        let n = CAPACITY / 2 + 100;
        let b = input(n, 0, None);
        let res = resource("prod");
        for at in 1..3 {
            assert_eq!(view(&t, &b, &res, at), view(&plain, &b, &res, at));
            let c = t.cache[Consumer::Export as usize].lock().unwrap();
            // Full: by series or by attributes (12 per series here: 5 in, 7 out).
            assert!(c.len() <= CAPACITY && c.attrs.len() <= MAX_ATTRS);
            assert!(c.len() == CAPACITY || c.attrs.len() + 12 > MAX_ATTRS);
        }
    }

    #[test]
    fn per_point_statements_and_failing_ones_are_not_kept() {
        let value = "metric_statements:\n  - context: datapoint\n    statements:\n      - set(attributes[\"big\"], true) where value_double > 15.0\n      - delete_key(attributes, \"a\")\n      - delete_key(attributes, \"b\")\n";
        assert!(!pipeline(value, "{}").points_per_series);
        let start = "metric_statements:\n  - context: datapoint\n    statements:\n      - set(start_time_unix_nano, 5)\n      - delete_key(attributes, \"a\")\n      - delete_key(attributes, \"b\")\n";
        assert!(!pipeline(start, "{}").points_per_series);
        let time = "metrics:\n  datapoint:\n    - time_unix_nano > 0\n    - attributes[\"a\"] == \"b\"\n    - attributes[\"a\"] == \"c\"\n";
        assert!(!pipeline("{}", time).points_per_series);
        let t = Transformer::new(pipeline(value, "{}"));
        let res = resource("prod");
        let big = |f: &[Family]| {
            f[0].points
                .iter()
                .filter(|p| crate::metrics::model::get(&p.labels, "big").is_some())
                .count()
        };
        // Values 0 and 10 at export 0, 6 and 16 at export 6: one above 15.
        assert_eq!(big(&view(&t, &input(2, 0, None), &res, 1)), 0);
        assert_eq!(big(&view(&t, &input(2, 6, None), &res, 2)), 1);
        assert_eq!(cached_len(&t), 0);
        // An error (SHA256 of a missing attribute) is counted every export, never cached.
        let failing = "metric_statements:\n  - context: datapoint\n    statements:\n      - set(attributes[\"h\"], SHA256(attributes[\"missing\"]))\n      - delete_key(attributes, \"a\")\n      - delete_key(attributes, \"b\")\n";
        let t = Transformer::new(pipeline(failing, "{}"));
        assert!(t.pipeline().points_per_series);
        let b = input(2, 0, None);
        view(&t, &b, &res, 1);
        view(&t, &b, &res, 2);
        assert_eq!(t.counts()["metrics"].errors, 8);
        assert_eq!(cached_len(&t), 0);
    }
}
