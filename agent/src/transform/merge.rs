//! Merging the points of a transformed metric view whose attributes became identical (see
//! `metrics.rs` for the rules), and the per-consumer state that keeps merged cumulative series
//! valid across exports.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
    time::SystemTime,
};

use crate::metrics::model::{AttrValue, Family, Key, Kind, Point, Value};

/// A hasher for keys that already are hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A merged cumulative series across exports.
struct Track {
    start: SystemTime,
    total: f64,
    seen: u64,
}

/// Merged cumulative series, by a hash of metric name and attributes.
#[derive(Default)]
pub struct MergeState {
    series: HashMap<u64, Track, BuildHasherDefault<IdHasher>>,
    /// Per metric (name, kind): the attribute hashes of its points at the last export, in
    /// order, when no two were equal. The same hashes again cannot merge anything: the sort
    /// is skipped.
    pub(super) distinct: HashMap<(&'static str, u8), (Vec<u64>, u64)>,
    epoch: u64,
}

/// What the merge needs to know of a family of the view.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Check {
    /// An editor changed attributes of its points (the probes' own attribute sets are unique
    /// per family: untouched families need no check).
    pub touched: bool,
    /// [`labels_hash`] of each point, in order, when known (the per-series cache keeps them);
    /// `None`: computed here.
    pub hashes: Option<Vec<u64>>,
}

impl From<bool> for Check {
    fn from(touched: bool) -> Self {
        Check {
            touched,
            hashes: None,
        }
    }
}

const K: u64 = 0x517c_c1b7_2722_0a95;

fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().expect("8 bytes"))).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    let mut w = [0u8; 8];
    w[..rest.len()].copy_from_slice(rest);
    (h.rotate_left(5) ^ u64::from_le_bytes(w) ^ (bytes.len() as u64) << 56).wrapping_mul(K)
}

/// An order-independent hash of an attribute set: of its values and their count (keys are left
/// out for speed; sets that differ only in keys are told apart by the equality check).
pub(crate) fn labels_hash(labels: &[(Key, AttrValue)]) -> u64 {
    let mut total = labels.len() as u64;
    for (_, v) in labels {
        let h = 0;
        let h = match v {
            AttrValue::Str(s) => mix(h ^ 1, s.as_bytes()),
            AttrValue::Int(i) => mix(h ^ 2, &i.to_le_bytes()),
            AttrValue::Double(d) => mix(h ^ 3, &d.to_bits().to_le_bytes()),
            AttrValue::Bool(b) => mix(h ^ 4, &[u8::from(*b)]),
        };
        total = total.wrapping_add(h.rotate_left(17).wrapping_mul(K));
    }
    total
}

fn same_set(a: &[(Key, AttrValue)], b: &[(Key, AttrValue)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.iter().any(|(k2, v2)| k == k2 && v == v2))
}

/// Adds `from` into `into`; false when they cannot be merged (histogram bounds differ).
fn add(into: &mut Point, from: Point) -> bool {
    match (&mut into.value, from.value) {
        (Value::Counter(a), Value::Counter(b)) => *a += b,
        (Value::Gauge(a), Value::Gauge(b)) => *a = b,
        (Value::Histogram(a), Value::Histogram(b)) => {
            if a.bounds != b.bounds || a.bucket_counts.len() != b.bucket_counts.len() {
                return false;
            }
            // Copy on write: the buckets are shared with the store's snapshot.
            for (x, y) in Arc::make_mut(&mut a.bucket_counts)
                .iter_mut()
                .zip(b.bucket_counts.iter())
            {
                *x += y;
            }
            a.sum += b.sum;
            a.count += b.count;
        }
        _ => return false,
    }
    into.start_time = into.start_time.min(from.start_time);
    true
}

fn kind_key(desc: &crate::metrics::model::Desc) -> (&'static str, u8) {
    let kind = match desc.kind {
        Kind::Counter => 0u8,
        Kind::Gauge => 1,
        Kind::Histogram => 2,
    };
    (desc.name, kind)
}

/// Merges families of one name and kind, and points with one attribute set; returns the points
/// that could not be merged (and were dropped). `checks[i]`: what is known of family `i`.
pub(crate) fn merge(
    families: &mut Vec<Family>,
    checks: &mut Vec<Check>,
    st: &mut MergeState,
    now: SystemTime,
) -> u64 {
    let mut conflicts = 0;
    // Families renamed onto one another.
    let mut by_name: HashMap<(&'static str, u8), usize> = HashMap::new();
    let mut i = 0;
    while i < families.len() {
        let key = kind_key(&families[i].desc);
        match by_name.get(&key) {
            Some(&first) => {
                let f = families.remove(i);
                let c = checks.remove(i);
                let into = &mut checks[first];
                into.hashes = match (into.hashes.take(), c.hashes) {
                    (Some(mut a), Some(b)) => {
                        a.extend(b);
                        Some(a)
                    }
                    _ => None,
                };
                into.touched = true;
                families[first].points.extend(f.points);
            }
            None => {
                by_name.insert(key, i);
                i += 1;
            }
        }
    }
    st.epoch += 1;
    for (fam, check) in families.iter_mut().zip(checks.iter_mut()) {
        if !check.touched {
            continue;
        }
        let name_hash = mix(0, fam.desc.name.as_bytes());
        let n = fam.points.len();
        let hashes: Vec<u64> = match check.hashes.take() {
            Some(h) if h.len() == n => h,
            _ => fam.points.iter().map(|p| labels_hash(&p.labels)).collect(),
        };
        let key = kind_key(&fam.desc);
        let mut merged_into: Vec<Option<usize>> = vec![None; n];
        let mut members = vec![1u32; n];
        let known = match st.distinct.get_mut(&key) {
            Some((last, seen)) if *last == hashes => {
                *seen = st.epoch;
                true
            }
            _ => false,
        };
        if n > 1 && !known {
            let mut equal_hashes = false;
            // (hash, index) pairs sorted in place: no indirection into `hashes` while sorting.
            let mut order: Vec<(u64, u32)> = hashes
                .iter()
                .enumerate()
                .map(|(i, &h)| (h, i as u32))
                .collect();
            order.sort_unstable();
            let mut run_start = 0;
            while run_start < n {
                let h = order[run_start].0;
                let mut run_end = run_start + 1;
                while run_end < n && order[run_end].0 == h {
                    run_end += 1;
                }
                if run_end - run_start > 1 {
                    equal_hashes = true;
                    let run = &order[run_start..run_end];
                    for (a, &(_, i)) in run.iter().enumerate() {
                        let i = i as usize;
                        if merged_into[i].is_some() {
                            continue;
                        }
                        for &(_, j) in &run[a + 1..] {
                            let j = j as usize;
                            if merged_into[j].is_none()
                                && same_set(&fam.points[i].labels, &fam.points[j].labels)
                            {
                                merged_into[j] = Some(i);
                            }
                        }
                    }
                }
                run_start = run_end;
            }
            if !equal_hashes {
                st.distinct.insert(key, (hashes.clone(), st.epoch));
            }
        }
        if merged_into.iter().any(Option::is_some) {
            let old = std::mem::take(&mut fam.points);
            let mut slots: Vec<Option<Point>> = old.into_iter().map(Some).collect();
            for j in 0..n {
                if let Some(i) = merged_into[j] {
                    let from = slots[j].take().expect("merged once");
                    let into = slots[i].as_mut().expect("first of its set");
                    if add(into, from) {
                        members[i] += 1;
                    } else {
                        conflicts += 1;
                    }
                }
            }
            let mut kept_hashes = Vec::new();
            let mut kept_members = Vec::new();
            for (k, p) in slots.into_iter().enumerate() {
                if let Some(p) = p {
                    fam.points.push(p);
                    kept_hashes.push(hashes[k]);
                    kept_members.push(members[k]);
                }
            }
            track(fam, &kept_hashes, &kept_members, name_hash, st, now);
        } else if !st.series.is_empty() {
            track(fam, &hashes, &members, name_hash, st, now);
        }
    }
    let epoch = st.epoch;
    st.series.retain(|_, t| t.seen == epoch);
    st.distinct.retain(|_, (_, seen)| *seen == epoch);
    conflicts
}

/// Keeps merged cumulative series monotonic across exports (see the module doc).
fn track(
    fam: &mut Family,
    hashes: &[u64],
    members: &[u32],
    name_hash: u64,
    st: &mut MergeState,
    now: SystemTime,
) {
    if fam.desc.kind == Kind::Gauge {
        return;
    }
    for (k, p) in fam.points.iter_mut().enumerate() {
        let total = match &p.value {
            Value::Counter(v) => *v,
            Value::Histogram(h) => h.count as f64,
            Value::Gauge(_) => continue,
        };
        let key = hashes[k] ^ name_hash.rotate_left(31);
        match st.series.get_mut(&key) {
            Some(t) => {
                if total < t.total {
                    t.start = now;
                }
                t.total = total;
                t.seen = st.epoch;
                p.start_time = t.start;
            }
            None if members[k] > 1 => {
                st.series.insert(
                    key,
                    Track {
                        start: p.start_time,
                        total,
                        seen: st.epoch,
                    },
                );
            }
            None => {}
        }
    }
}
