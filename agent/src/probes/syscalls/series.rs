//! The exported syscall series, built from each drain's per-incarnation increments: the N
//! busiest owners of the interval (processes, executables or containers, by the aggregation
//! level) add their increments to their own series; every other owner adds to `other`.
//! Pure logic, unit-tested exactly.
//!
//! Invariants:
//! - every series is monotonic, and the sum over all exported series (owners and `other`)
//!   grows by exactly the calls of each drain: nothing is counted twice or dropped;
//! - an owner's series is cumulative over the intervals in which it was among the N busiest,
//!   and starts at the beginning of the first of them;
//! - an owner is named from its first incarnation and never renamed: an incarnation (pid,
//!   generation) keeps the owner it was given at first sight;
//! - an owner's series is dropped `retain_exited` after its last live incarnation ended (its
//!   totals then leave the export; `total_calls` keeps counting them);
//! - no two exported series have the same attributes: a new incarnation of a pid with the same
//!   executable and container (a reused pid, a process that execs itself) replaces the older
//!   one's series, which ends there (a counter reset, with a new start time, as for a restart).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    deltas::{OverflowDelta, ProcDelta, ProcKey},
    hist::Agg,
};
use crate::{
    config::SyscallAggregation,
    metrics::model::{
        attr, Desc, Family, Histogram, Kind, Labels, Point, Value, FOLDED, FOLDED_OTHER,
    },
};

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

/// `error.type` of errors the kernel could not key by errno (its error map was full).
pub const ERROR_TYPE_OTHER: &str = "_OTHER";

/// How a process incarnation is named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub exe_name: Arc<str>,
    pub container_id: Option<Arc<str>>,
    /// Labels of the container's workload besides `container.id` (`container.runtime`, the
    /// pod's uid, name and namespace): one value per container, so no new series.
    pub container_labels: Labels,
}

/// Who a series belongs to, at the configured aggregation level.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Process {
        pid: u32,
        gen: u64,
        exe: Arc<str>,
        container: Option<Arc<str>>,
    },
    Executable {
        exe: Arc<str>,
        container: Option<Arc<str>>,
    },
    Container {
        container: Option<Arc<str>>,
    },
    Host,
}

impl Owner {
    /// The owner as its attributes show it (process owners without their generation).
    fn shown(&self) -> Owner {
        match self {
            Owner::Process {
                pid,
                exe,
                container,
                ..
            } => Owner::Process {
                pid: *pid,
                gen: 0,
                exe: exe.clone(),
                container: container.clone(),
            },
            o => o.clone(),
        }
    }

    fn of(level: SyscallAggregation, p: ProcKey, id: &Identity) -> Owner {
        match level {
            SyscallAggregation::Process => Owner::Process {
                pid: p.tgid,
                gen: p.gen,
                exe: id.exe_name.clone(),
                container: id.container_id.clone(),
            },
            SyscallAggregation::Executable => Owner::Executable {
                exe: id.exe_name.clone(),
                container: id.container_id.clone(),
            },
            SyscallAggregation::Container => Owner::Container {
                container: id.container_id.clone(),
            },
            SyscallAggregation::Host => Owner::Host,
        }
    }

    fn labels(&self, syscall: &str, containers: &HashMap<Arc<str>, Labels>) -> Labels {
        let mut l: Labels = vec![attr("syscall.name", syscall)];
        let (pid, exe, container) = match self {
            Owner::Process {
                pid,
                exe,
                container,
                ..
            } => (Some(*pid), Some(exe), container.as_ref()),
            Owner::Executable { exe, container } => (None, Some(exe), container.as_ref()),
            Owner::Container { container } => (None, None, container.as_ref()),
            Owner::Host => (None, None, None),
        };
        if let Some(pid) = pid {
            l.push(attr("process.pid", pid));
        }
        if let Some(exe) = exe {
            l.push(attr("process.executable.name", &**exe));
        }
        if let Some(c) = container {
            l.push(attr("container.id", &**c));
            if let Some(extra) = containers.get(c) {
                l.extend(extra.iter().cloned());
            }
        }
        l
    }
}

/// Settings the series follow (from `probes.syscalls`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Owners individual per interval.
    pub top: usize,
    pub retain_exited: Duration,
}

#[derive(Debug)]
struct OwnerSeries {
    start: SystemTime,
    stats: BTreeMap<u32, Agg>,
    errors: BTreeMap<(u32, u32), u64>,
}

/// Live incarnations of an owner, and since when it has none.
#[derive(Debug, Default)]
struct Members {
    live: u32,
    idle_since: Option<Instant>,
}

/// The series' own accounting (for `/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Calls added to `other` because their owner was not among the N busiest that interval.
    pub folded_calls: u64,
    /// Calls added to `other` because the kernel's map was full (not keyed by process).
    pub overflow_calls: u64,
    /// Owner series dropped after their last incarnation ended.
    pub expired_series: u64,
    /// Calls of expired series (so `total_calls` stays monotonic).
    pub expired_calls: u64,
    pub expired_errors: u64,
}

/// Cumulative exported state.
pub struct Series {
    level: SyscallAggregation,
    incarnations: HashMap<ProcKey, Owner>,
    members: HashMap<Owner, Members>,
    owners: HashMap<Owner, OwnerSeries>,
    /// Which owner holds the series of each attribute set (see [`Owner::shown`]).
    shown: HashMap<Owner, Owner>,
    /// Workload labels per container id (from the first incarnation seen in it).
    containers: HashMap<Arc<str>, Labels>,
    other_stats: BTreeMap<u32, (SystemTime, Agg)>,
    other_errors: BTreeMap<(u32, Option<u32>), (SystemTime, u64)>,
    pub accounting: Accounting,
    bounds: Arc<[f64]>,
}

/// Upper bounds in seconds of kernel buckets 0..HIST_BUCKETS-1: 2^b ns (the last is +Inf).
pub fn bucket_bounds_seconds() -> Arc<[f64]> {
    use agent_common::syscalls::HIST_BUCKETS;
    (0..HIST_BUCKETS - 1)
        .map(|b| (1u64 << b) as f64 * 1e-9)
        .collect::<Vec<_>>()
        .into()
}

impl Series {
    pub fn new(level: SyscallAggregation) -> Self {
        Series {
            level,
            incarnations: HashMap::new(),
            members: HashMap::new(),
            owners: HashMap::new(),
            shown: HashMap::new(),
            containers: HashMap::new(),
            other_stats: BTreeMap::new(),
            other_errors: BTreeMap::new(),
            accounting: Accounting::default(),
            bounds: bucket_bounds_seconds(),
        }
    }

    pub fn level(&self) -> SyscallAggregation {
        self.level
    }

    /// Incarnations known (live ones that have made calls).
    pub fn incarnations(&self) -> usize {
        self.incarnations.len()
    }

    /// Owner series exported (besides `other`).
    pub fn owner_series(&self) -> usize {
        self.owners.len()
    }

    /// Folds one drain in. `identity` names an incarnation at its first sight; `interval_start`
    /// is when the previous drain read the kernel (the start of what these increments cover).
    pub fn ingest(
        &mut self,
        deltas: &[ProcDelta],
        mut identity: impl FnMut(&ProcDelta) -> Identity,
        overflow: &OverflowDelta,
        limits: &Limits,
        now: Instant,
        interval_start: SystemTime,
    ) {
        // Owners of this interval, with their calls.
        let mut groups: BTreeMap<Owner, (u64, Vec<&ProcDelta>)> = BTreeMap::new();
        for d in deltas {
            let owner = match self.incarnations.get(&d.proc) {
                Some(o) => o.clone(),
                None => {
                    let id = identity(d);
                    if let Some(c) = &id.container_id {
                        if !id.container_labels.is_empty() && !self.containers.contains_key(c) {
                            self.containers
                                .insert(c.clone(), id.container_labels.clone());
                        }
                    }
                    let o = Owner::of(self.level, d.proc, &id);
                    let m = self.members.entry(o.clone()).or_default();
                    m.live += 1;
                    m.idle_since = None;
                    self.incarnations.insert(d.proc, o.clone());
                    o
                }
            };
            let g = groups.entry(owner).or_default();
            g.0 += d.calls();
            g.1.push(d);
        }
        let mut ranked: Vec<(&Owner, u64)> = groups.iter().map(|(o, g)| (o, g.0)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let individual: Vec<Owner> = ranked
            .iter()
            .filter(|(_, calls)| *calls > 0)
            .take(limits.top)
            .map(|(o, _)| (*o).clone())
            .collect();
        for (owner, (calls, ds)) in &groups {
            if individual.contains(owner) {
                if !self.owners.contains_key(owner) {
                    // One series per attribute set: an older incarnation that looks the same
                    // ends here.
                    if let Some(older) = self.shown.insert(owner.shown(), owner.clone()) {
                        if older != *owner {
                            self.drop_series(&older);
                        }
                    }
                }
                let s = self
                    .owners
                    .entry(owner.clone())
                    .or_insert_with(|| OwnerSeries {
                        start: interval_start,
                        stats: BTreeMap::new(),
                        errors: BTreeMap::new(),
                    });
                for d in ds {
                    for (nr, a) in &d.stats {
                        s.stats.entry(*nr).or_default().add(a);
                    }
                    for (k, n) in &d.errors {
                        *s.errors.entry(*k).or_default() += n;
                    }
                }
            } else {
                self.accounting.folded_calls += calls;
                for d in ds {
                    for (nr, a) in &d.stats {
                        add_other(&mut self.other_stats, *nr, interval_start, a);
                    }
                    for ((nr, errno), n) in &d.errors {
                        add_other_error(
                            &mut self.other_errors,
                            (*nr, Some(*errno)),
                            interval_start,
                            *n,
                        );
                    }
                }
            }
        }
        for (nr, a) in &overflow.stats {
            self.accounting.overflow_calls += a.count;
            add_other(&mut self.other_stats, *nr, interval_start, a);
        }
        for (nr, n) in &overflow.errors {
            add_other_error(&mut self.other_errors, (*nr, None), interval_start, *n);
        }
        // Incarnations that ended leave their owner; owners with none left expire later.
        for d in deltas.iter().filter(|d| d.ended) {
            if let Some(owner) = self.incarnations.remove(&d.proc) {
                if let Some(m) = self.members.get_mut(&owner) {
                    m.live = m.live.saturating_sub(1);
                    if m.live == 0 {
                        m.idle_since = Some(now);
                    }
                }
            }
        }
        self.expire(limits, now);
    }

    fn expire(&mut self, limits: &Limits, now: Instant) {
        let gone: Vec<Owner> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.live == 0
                    && m.idle_since
                        .is_some_and(|t| now.duration_since(t) >= limits.retain_exited)
            })
            .map(|(o, _)| o.clone())
            .collect();
        for o in gone {
            self.members.remove(&o);
            self.drop_series(&o);
        }
    }

    /// Drops `o`'s series from the export (its totals stay in `total_calls`).
    fn drop_series(&mut self, o: &Owner) {
        if let Some(s) = self.owners.remove(o) {
            self.accounting.expired_series += 1;
            self.accounting.expired_calls += s.stats.values().map(|a| a.count).sum::<u64>();
            self.accounting.expired_errors += s.errors.values().sum::<u64>();
            let shown = o.shown();
            if self.shown.get(&shown) == Some(o) {
                self.shown.remove(&shown);
            }
        }
    }

    /// Every call counted since start (monotonic): owners, `other` and expired series.
    pub fn total_calls(&self) -> u64 {
        let owners: u64 = self
            .owners
            .values()
            .flat_map(|s| s.stats.values())
            .map(|a| a.count)
            .sum();
        let other: u64 = self.other_stats.values().map(|(_, a)| a.count).sum();
        owners + other + self.accounting.expired_calls
    }

    /// Every syscall error counted since start (monotonic).
    pub fn total_errors(&self) -> u64 {
        let owners: u64 = self.owners.values().flat_map(|s| s.errors.values()).sum();
        let other: u64 = self.other_errors.values().map(|(_, n)| n).sum();
        owners + other + self.accounting.expired_errors
    }

    /// The current cumulative families, sorted by owner.
    pub fn families(
        &self,
        name: impl Fn(u32) -> String,
        errno: impl Fn(u32) -> String,
    ) -> Vec<Family> {
        let mut durations = Vec::new();
        let mut errors = Vec::new();
        let mut owners: Vec<(&Owner, &OwnerSeries)> = self.owners.iter().collect();
        owners.sort_by(|a, b| a.0.cmp(b.0));
        for (o, s) in owners {
            for (nr, a) in &s.stats {
                durations.push(self.histogram(o.labels(&name(*nr), &self.containers), a, s.start));
            }
            for ((nr, e), n) in &s.errors {
                let mut labels = o.labels(&name(*nr), &self.containers);
                labels.push(attr("error.type", errno(*e)));
                errors.push(counter(labels, *n, s.start));
            }
        }
        for (nr, (start, a)) in &self.other_stats {
            durations.push(self.histogram(other_labels(&name(*nr)), a, *start));
        }
        for ((nr, e), (start, n)) in &self.other_errors {
            let mut labels = other_labels(&name(*nr));
            labels.push(attr(
                "error.type",
                e.map(&errno)
                    .unwrap_or_else(|| ERROR_TYPE_OTHER.to_string()),
            ));
            errors.push(counter(labels, *n, *start));
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

    fn histogram(&self, labels: Labels, a: &Agg, start: SystemTime) -> Point {
        Point {
            labels,
            value: Value::Histogram(Histogram {
                bounds: self.bounds.clone(),
                bucket_counts: a.dense().into(),
                sum: a.sum_ns as f64 * 1e-9,
                count: a.count,
            }),
            start_time: start,
        }
    }
}

fn counter(labels: Labels, n: u64, start: SystemTime) -> Point {
    Point {
        labels,
        value: Value::Counter(n as f64),
        start_time: start,
    }
}

fn other_labels(syscall: &str) -> Labels {
    vec![attr("syscall.name", syscall), attr(FOLDED, FOLDED_OTHER)]
}

fn add_other(o: &mut BTreeMap<u32, (SystemTime, Agg)>, nr: u32, start: SystemTime, a: &Agg) {
    let e = o.entry(nr).or_insert_with(|| (start, Agg::default()));
    e.1.add(a);
}

fn add_other_error(
    o: &mut BTreeMap<(u32, Option<u32>), (SystemTime, u64)>,
    k: (u32, Option<u32>),
    start: SystemTime,
    n: u64,
) {
    o.entry(k).or_insert((start, 0)).1 += n;
}

#[cfg(test)]
mod tests;
