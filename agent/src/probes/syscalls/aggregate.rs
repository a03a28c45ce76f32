//! Turns successive readings of the kernel's cumulative syscall maps into stable cumulative
//! series: per-process top-N with an "other" fold, LRU-eviction detection, exited-process
//! retention. Pure logic (no kernel, no /proc) so it is unit-tested exactly.
//!
//! Invariants:
//! - Every exported counter and histogram is monotonic for the life of its series: a kernel entry
//!   that was evicted and recreated (its count went down or it vanished while the process lives)
//!   is folded into the series' base, and the event is counted in `evictions_detected`.
//! - A process is individual or folded from first sight until it is dropped; folded processes add
//!   to the `other` series, and their totals stay there after they are dropped.
//! - A key may be deleted from the kernel only once its process is dead *before* its value was
//!   read, so the value read is final (the caller checks liveness first).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::syscalls::HIST_BUCKETS;

use crate::metrics::model::{Desc, Family, Histogram, Kind, Labels, Point, Value};

pub const DURATION: Desc = Desc {
    name: "process.syscall.duration",
    unit: "s",
    help: "Time spent in system calls, per process and syscall (measured from raw_syscalls enter to exit).",
    kind: Kind::Histogram,
};

pub const ERRORS: Desc = Desc {
    name: "process.syscall.errors",
    unit: "{error}",
    help: "System calls that returned an error, per process, syscall and errno.",
    kind: Kind::Counter,
};

/// Label value of the series that folds every process beyond the top N.
pub const OTHER: &str = "other";

/// Cumulative latency histogram in kernel units (ns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agg {
    pub count: u64,
    pub sum_ns: u64,
    pub errors: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            count: 0,
            sum_ns: 0,
            errors: 0,
            buckets: [0; HIST_BUCKETS],
        }
    }
}

impl Agg {
    pub fn add(&mut self, o: &Agg) {
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.errors += o.errors;
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
    }
}

/// One kernel entry as read this interval (per-CPU values already summed).
#[derive(Clone, Debug)]
pub struct StatReading {
    pub tgid: u32,
    pub nr: u32,
    pub agg: Agg,
    pub comm: String,
    pub cgroup_id: u64,
    /// The process was dead before this value was read: the value is final.
    pub final_value: bool,
}

#[derive(Clone, Debug)]
pub struct ErrorReading {
    pub tgid: u32,
    pub nr: u32,
    pub errno: u32,
    pub count: u64,
    pub final_value: bool,
}

/// Attribution of a process for its labels.
#[derive(Clone, Debug, Default)]
pub struct Attribution {
    pub exe_name: String,
    pub container_id: Option<String>,
    /// Container runtime and pod (`crate::k8s`), labelled beside `container.id`.
    pub workload: Option<crate::k8s::Workload>,
}

/// Settings the aggregator follows (from `probes.syscalls`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub top_processes: usize,
    pub retain_exited: Duration,
}

#[derive(Clone, Debug)]
struct Series<T> {
    start: SystemTime,
    /// Totals of kernel entries that were evicted or reset.
    base: T,
    /// Last value read from the live kernel entry.
    last: T,
    /// Seen in this interval's reading.
    seen: bool,
}

impl<T: Clone + Default> Series<T> {
    fn new(start: SystemTime) -> Self {
        Series {
            start,
            base: T::default(),
            last: T::default(),
            seen: false,
        }
    }
}

#[derive(Debug)]
struct Proc {
    attribution: Attribution,
    individual: bool,
    exited_at: Option<Instant>,
    stats: BTreeMap<u32, Series<Agg>>,
    errors: BTreeMap<(u32, u32), Series<u64>>,
}

/// What a drain found beyond the data: the probe's own accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Kernel entries that disappeared or went backwards while their process lived (LRU
    /// eviction): increments between the last read and the eviction are lost.
    pub evictions_detected: u64,
    /// Processes folded into the `other` series since start.
    pub folded_processes: u64,
    /// Exited processes whose series were dropped after `retain_exited`.
    pub expired_processes: u64,
    /// Processes currently tracked (individual + folded).
    pub tracked_processes: u64,
    /// Calls of individual processes whose series expired (so `total_calls` stays monotonic).
    pub expired_calls: u64,
    /// Errors of individual processes whose series expired (so `total_errors` stays monotonic).
    pub expired_errors: u64,
}

/// Cumulative state across drains.
pub struct Aggregator {
    procs: HashMap<u32, Proc>,
    other_stats: BTreeMap<u32, Series<Agg>>,
    other_errors: BTreeMap<(u32, u32), Series<u64>>,
    pub accounting: Accounting,
    bounds: Arc<[f64]>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new()
    }
}

/// Upper bounds in seconds of kernel buckets 0..HIST_BUCKETS-1: 2^b ns (the last is +Inf).
pub fn bucket_bounds_seconds() -> Arc<[f64]> {
    (0..HIST_BUCKETS - 1)
        .map(|b| (1u64 << b) as f64 * 1e-9)
        .collect::<Vec<_>>()
        .into()
}

impl Aggregator {
    pub fn new() -> Self {
        Aggregator {
            procs: HashMap::new(),
            other_stats: BTreeMap::new(),
            other_errors: BTreeMap::new(),
            accounting: Accounting::default(),
            bounds: bucket_bounds_seconds(),
        }
    }

    /// Folds one drain's readings in. `attribute` is asked once per new process.
    /// Returns the pids whose kernel entries are final and may now be deleted.
    pub fn ingest(
        &mut self,
        stats: Vec<StatReading>,
        errors: Vec<ErrorReading>,
        limits: &Limits,
        now: Instant,
        wall: SystemTime,
        mut attribute: impl FnMut(u32, &str, u64) -> Attribution,
    ) -> Vec<u32> {
        for p in self.procs.values_mut() {
            p.stats.values_mut().for_each(|s| s.seen = false);
            p.errors.values_mut().for_each(|s| s.seen = false);
        }

        // New processes, busiest first, compete for the free individual slots.
        let mut new_pids: BTreeMap<u32, (u64, String, u64)> = BTreeMap::new();
        for r in &stats {
            if !self.procs.contains_key(&r.tgid) {
                let e = new_pids
                    .entry(r.tgid)
                    .or_insert((0, r.comm.clone(), r.cgroup_id));
                e.0 += r.agg.count;
            }
        }
        for r in &errors {
            if !self.procs.contains_key(&r.tgid) && !new_pids.contains_key(&r.tgid) {
                new_pids.insert(r.tgid, (0, String::new(), 0));
            }
        }
        let mut ranked: Vec<_> = new_pids.into_iter().collect();
        ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let mut individuals = self.procs.values().filter(|p| p.individual).count();
        for (pid, (_, comm, cgroup)) in ranked {
            let individual = individuals < limits.top_processes;
            if individual {
                individuals += 1;
            } else {
                self.accounting.folded_processes += 1;
            }
            self.procs.insert(
                pid,
                Proc {
                    attribution: attribute(pid, &comm, cgroup),
                    individual,
                    exited_at: None,
                    stats: BTreeMap::new(),
                    errors: BTreeMap::new(),
                },
            );
        }

        let mut finals: Vec<u32> = Vec::new();
        for r in stats {
            let p = self.procs.get_mut(&r.tgid).expect("inserted above");
            let s = p.stats.entry(r.nr).or_insert_with(|| Series::new(wall));
            if r.agg.count < s.last.count {
                // The kernel entry was evicted and recreated since the last read.
                self.accounting.evictions_detected += 1;
                let last = std::mem::take(&mut s.last);
                s.base.add(&last);
            }
            s.last = r.agg;
            s.seen = true;
            if r.final_value {
                p.exited_at.get_or_insert(now);
                finals.push(r.tgid);
            }
        }
        for r in errors {
            let Some(p) = self.procs.get_mut(&r.tgid) else {
                continue;
            };
            let s = p
                .errors
                .entry((r.nr, r.errno))
                .or_insert_with(|| Series::new(wall));
            if r.count < s.last {
                self.accounting.evictions_detected += 1;
                s.base += s.last;
            }
            s.last = r.count;
            s.seen = true;
            if r.final_value {
                p.exited_at.get_or_insert(now);
                finals.push(r.tgid);
            }
        }

        // Entries that vanished: deleted by us after exit (exited_at set), or evicted.
        for p in self.procs.values_mut() {
            let exited = p.exited_at.is_some();
            for s in p.stats.values_mut().filter(|s| !s.seen && s.last.count > 0) {
                if !exited {
                    self.accounting.evictions_detected += 1;
                }
                let last = std::mem::take(&mut s.last);
                s.base.add(&last);
            }
            for s in p.errors.values_mut().filter(|s| !s.seen && s.last > 0) {
                if !exited {
                    self.accounting.evictions_detected += 1;
                }
                s.base += std::mem::take(&mut s.last);
            }
        }

        self.expire(limits, now);
        self.accounting.tracked_processes = self.procs.len() as u64;
        finals.sort_unstable();
        finals.dedup();
        finals
    }

    /// Marks a process that has no kernel entries left as exited (so its series expire).
    pub fn mark_exited(&mut self, pid: u32, now: Instant) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exited_at.get_or_insert(now);
        }
    }

    /// Pids tracked and not known to have exited.
    pub fn live_pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, p)| p.exited_at.is_none())
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn expire(&mut self, limits: &Limits, now: Instant) {
        let expired: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.exited_at
                    .is_some_and(|t| now.duration_since(t) >= limits.retain_exited)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in expired {
            let p = self.procs.remove(&pid).expect("listed above");
            self.accounting.expired_processes += 1;
            if p.individual {
                self.accounting.expired_calls += p
                    .stats
                    .values()
                    .map(|s| s.base.count + s.last.count)
                    .sum::<u64>();
                self.accounting.expired_errors +=
                    p.errors.values().map(|s| s.base + s.last).sum::<u64>();
                continue;
            }
            // A folded process's totals stay in `other` for good.
            for (nr, s) in p.stats {
                let o = self
                    .other_stats
                    .entry(nr)
                    .or_insert_with(|| Series::new(s.start));
                o.base.add(&s.base);
                o.base.add(&s.last);
            }
            for (k, s) in p.errors {
                let o = self
                    .other_errors
                    .entry(k)
                    .or_insert_with(|| Series::new(s.start));
                o.base += s.base + s.last;
            }
        }
    }

    /// Every call aggregated since start (monotonic): live, folded and expired series.
    pub fn total_calls(&self) -> u64 {
        let live: u64 = self
            .procs
            .values()
            .flat_map(|p| p.stats.values())
            .map(|s| s.base.count + s.last.count)
            .sum();
        let other: u64 = self.other_stats.values().map(|s| s.base.count).sum();
        live + other + self.accounting.expired_calls
    }

    /// Every syscall error counted since start (monotonic): live, folded and expired series.
    pub fn total_errors(&self) -> u64 {
        let live: u64 = self
            .procs
            .values()
            .flat_map(|p| p.errors.values())
            .map(|s| s.base + s.last)
            .sum();
        let other: u64 = self.other_errors.values().map(|s| s.base).sum();
        live + other + self.accounting.expired_errors
    }

    /// The current cumulative families.
    pub fn families(
        &self,
        name: impl Fn(u32) -> String,
        errno: impl Fn(u32) -> String,
    ) -> Vec<Family> {
        let mut durations = Vec::new();
        let mut errors = Vec::new();
        let mut other: BTreeMap<u32, (SystemTime, Agg)> = self
            .other_stats
            .iter()
            .map(|(nr, s)| (*nr, (s.start, s.base.clone())))
            .collect();
        let mut other_err: BTreeMap<(u32, u32), (SystemTime, u64)> = self
            .other_errors
            .iter()
            .map(|(k, s)| (*k, (s.start, s.base)))
            .collect();

        let mut pids: Vec<_> = self.procs.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let p = &self.procs[&pid];
            for (nr, s) in &p.stats {
                let mut total = s.base.clone();
                total.add(&s.last);
                if p.individual {
                    durations.push(self.histogram_point(
                        proc_labels(&name(*nr), pid, &p.attribution),
                        &total,
                        s.start,
                    ));
                } else {
                    let o = other.entry(*nr).or_insert((s.start, Agg::default()));
                    o.0 = o.0.min(s.start);
                    o.1.add(&total);
                }
            }
            for ((nr, e), s) in &p.errors {
                let total = s.base + s.last;
                if p.individual {
                    let mut labels = proc_labels(&name(*nr), pid, &p.attribution);
                    labels.push(("error.type", errno(*e)));
                    errors.push(Point {
                        labels,
                        value: Value::Counter(total as f64),
                        start_time: s.start,
                    });
                } else {
                    let o = other_err.entry((*nr, *e)).or_insert((s.start, 0));
                    o.0 = o.0.min(s.start);
                    o.1 += total;
                }
            }
        }
        for (nr, (start, agg)) in other {
            durations.push(self.histogram_point(other_labels(&name(nr)), &agg, start));
        }
        for ((nr, e), (start, total)) in other_err {
            let mut labels = other_labels(&name(nr));
            labels.push(("error.type", errno(e)));
            errors.push(Point {
                labels,
                value: Value::Counter(total as f64),
                start_time: start,
            });
        }
        vec![
            Family {
                desc: DURATION,
                points: durations,
            },
            Family {
                desc: ERRORS,
                points: errors,
            },
        ]
    }

    fn histogram_point(&self, labels: Labels, agg: &Agg, start: SystemTime) -> Point {
        Point {
            labels,
            value: Value::Histogram(Histogram {
                bounds: self.bounds.clone(),
                bucket_counts: agg.buckets.to_vec(),
                sum: agg.sum_ns as f64 * 1e-9,
                count: agg.count,
            }),
            start_time: start,
        }
    }
}

fn proc_labels(syscall: &str, pid: u32, a: &Attribution) -> Labels {
    let mut l: Labels = vec![
        ("syscall.name", syscall.to_string()),
        ("process.pid", pid.to_string()),
        ("process.executable.name", a.exe_name.clone()),
    ];
    if let Some(c) = &a.container_id {
        l.push(("container.id", c.clone()));
    }
    l.extend(crate::k8s::pod_labels(a.workload.as_ref()));
    l
}

fn other_labels(syscall: &str) -> Labels {
    vec![
        ("syscall.name", syscall.to_string()),
        ("process.pid", OTHER.to_string()),
        ("process.executable.name", OTHER.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::syscalls::bucket_of;

    fn agg(count: u64, ns_each: u64) -> Agg {
        let mut a = Agg {
            count,
            sum_ns: count * ns_each,
            ..Agg::default()
        };
        a.buckets[bucket_of(ns_each)] = count;
        a
    }

    fn reading(tgid: u32, nr: u32, count: u64) -> StatReading {
        StatReading {
            tgid,
            nr,
            agg: agg(count, 100),
            comm: format!("p{tgid}"),
            cgroup_id: 0,
            final_value: false,
        }
    }

    fn limits(top: usize) -> Limits {
        Limits {
            top_processes: top,
            retain_exited: Duration::from_secs(10),
        }
    }

    fn attr(_: u32, comm: &str, _: u64) -> Attribution {
        Attribution {
            exe_name: comm.to_string(),
            container_id: None,
            workload: None,
        }
    }

    /// (syscall, pid) -> count, from the duration family.
    fn counts(a: &Aggregator) -> BTreeMap<(String, String), u64> {
        let fams = a.families(|nr| format!("sys{nr}"), |e| format!("E{e}"));
        fams[0]
            .points
            .iter()
            .map(|p| {
                let Value::Histogram(h) = &p.value else {
                    panic!()
                };
                assert_eq!(h.bucket_counts.iter().sum::<u64>(), h.count);
                ((p.labels[0].1.clone(), p.labels[1].1.clone()), h.count)
            })
            .collect()
    }

    #[test]
    fn bounds_are_powers_of_two_nanoseconds() {
        let b = bucket_bounds_seconds();
        assert_eq!(b.len(), HIST_BUCKETS - 1);
        assert_eq!(b[0], 1e-9);
        assert_eq!(b[10], 1024e-9);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn cumulative_counts_pass_through_exactly() {
        let mut a = Aggregator::new();
        let (t0, w) = (Instant::now(), SystemTime::now());
        a.ingest(
            vec![reading(7, 110, 1000)],
            vec![],
            &limits(10),
            t0,
            w,
            attr,
        );
        a.ingest(
            vec![reading(7, 110, 200_000)],
            vec![],
            &limits(10),
            t0,
            w,
            attr,
        );
        assert_eq!(counts(&a)[&("sys110".into(), "7".into())], 200_000);
        assert_eq!(
            a.accounting,
            Accounting {
                tracked_processes: 1,
                ..Default::default()
            }
        );
        let fams = a.families(|nr| format!("sys{nr}"), |e| format!("E{e}"));
        let Value::Histogram(h) = &fams[0].points[0].value else {
            panic!()
        };
        assert!((h.sum - 200_000.0 * 100e-9).abs() < 1e-12);
    }

    #[test]
    fn eviction_keeps_series_monotonic_and_is_counted() {
        let mut a = Aggregator::new();
        let (t0, w) = (Instant::now(), SystemTime::now());
        a.ingest(vec![reading(7, 1, 500)], vec![], &limits(10), t0, w, attr);
        // Evicted and recreated: the kernel now holds only new calls.
        a.ingest(vec![reading(7, 1, 30)], vec![], &limits(10), t0, w, attr);
        assert_eq!(counts(&a)[&("sys1".into(), "7".into())], 530);
        // Vanished while the process lives.
        a.ingest(vec![], vec![], &limits(10), t0, w, attr);
        assert_eq!(counts(&a)[&("sys1".into(), "7".into())], 530);
        assert_eq!(a.accounting.evictions_detected, 2);
    }

    #[test]
    fn processes_beyond_top_n_fold_into_other_busiest_first() {
        let mut a = Aggregator::new();
        let (t0, w) = (Instant::now(), SystemTime::now());
        a.ingest(
            vec![reading(1, 0, 5), reading(2, 0, 50), reading(3, 0, 7)],
            vec![],
            &limits(1),
            t0,
            w,
            attr,
        );
        let c = counts(&a);
        assert_eq!(c[&("sys0".into(), "2".into())], 50);
        assert_eq!(c[&("sys0".into(), OTHER.into())], 12);
        assert_eq!(c.len(), 2);
        assert_eq!(a.accounting.folded_processes, 2);
    }

    #[test]
    fn exited_processes_are_final_then_expire_but_other_keeps_totals() {
        let mut a = Aggregator::new();
        let (t0, w) = (Instant::now(), SystemTime::now());
        // pid 1 is busier, so it takes the one individual slot; pid 2 is folded and has exited.
        let mut dead = reading(2, 0, 9);
        dead.final_value = true;
        let finals = a.ingest(
            vec![reading(1, 0, 50), dead],
            vec![],
            &limits(1),
            t0,
            w,
            attr,
        );
        assert_eq!(finals, vec![2]);
        assert_eq!(a.accounting.folded_processes, 1);
        // The caller deleted pid 2's kernel entry: not an eviction.
        let later = t0 + Duration::from_secs(11);
        a.ingest(vec![reading(1, 0, 60)], vec![], &limits(1), later, w, attr);
        assert_eq!(a.accounting.evictions_detected, 0);
        assert_eq!(a.accounting.expired_processes, 1);
        let c = counts(&a);
        assert_eq!(c[&("sys0".into(), "1".into())], 60);
        assert_eq!(a.total_calls(), 69);
        assert_eq!(c[&("sys0".into(), OTHER.into())], 9);
    }

    #[test]
    fn error_total_survives_exit_and_expiry() {
        let mut a = Aggregator::new();
        let (t0, w) = (Instant::now(), SystemTime::now());
        let err = |tgid, count, final_value| ErrorReading {
            tgid,
            nr: 3,
            errno: 9,
            count,
            final_value,
        };
        a.ingest(
            vec![reading(1, 3, 10)],
            vec![err(1, 7, false)],
            &limits(5),
            t0,
            w,
            attr,
        );
        assert_eq!(a.total_errors(), 7);
        a.ingest(
            vec![reading(1, 3, 12)],
            vec![err(1, 8, true)],
            &limits(5),
            t0,
            w,
            attr,
        );
        assert_eq!(a.total_errors(), 8);
        // Deleted from the kernel and expired: the total must not go back.
        let later = t0 + Duration::from_secs(11);
        a.ingest(vec![], vec![], &limits(5), later, w, attr);
        assert_eq!(a.accounting.expired_processes, 1);
        assert_eq!(a.total_errors(), 8);
    }

    #[test]
    fn errors_are_labelled_by_errno_and_folded_too() {
        let mut a = Aggregator::new();
        let (t0, w) = (Instant::now(), SystemTime::now());
        let e = |tgid, count| ErrorReading {
            tgid,
            nr: 2,
            errno: 2,
            count,
            final_value: false,
        };
        a.ingest(
            vec![reading(1, 2, 10), reading(2, 2, 1)],
            vec![e(1, 4), e(2, 1)],
            &limits(1),
            t0,
            w,
            attr,
        );
        let fams = a.families(|nr| format!("sys{nr}"), |e| format!("E{e}"));
        let got: Vec<_> = fams[1]
            .points
            .iter()
            .map(|p| {
                (
                    p.labels[1].1.clone(),
                    p.labels[3].1.clone(),
                    p.value.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("1".into(), "E2".into(), Value::Counter(4.0)),
                (OTHER.into(), "E2".into(), Value::Counter(1.0)),
            ]
        );
    }
}
