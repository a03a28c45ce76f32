//! Turns successive readings of the kernel's cumulative syscall maps into what each process
//! incarnation did since the previous drain. Pure (no kernel, no `/proc`), unit-tested exactly.
//!
//! Invariants:
//! - the increments of a key over all drains sum to the key's final kernel value: nothing is
//!   counted twice or dropped, whatever the interleaving of reads;
//! - a key whose value is final (its incarnation ended before it was read) is forgotten after
//!   its last increment, and the caller deletes it from the kernel; if the kernel creates it
//!   again (a straggler), all of its new value is an increment;
//! - memory: one compact histogram per live kernel key.

use std::collections::{BTreeMap, HashMap};

use super::hist::Agg;

/// A process incarnation: pid and the kernel's generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    pub tgid: u32,
    pub gen: u64,
}

/// One kernel stats entry as read this drain (per-CPU values summed).
#[derive(Clone, Debug)]
pub struct StatReading {
    pub proc: ProcKey,
    pub nr: u32,
    pub agg: Agg,
    /// Command name and cgroup id stamped by the kernel when the entry was created.
    pub comm: String,
    pub cgroup_id: u64,
    /// The incarnation ended before this value was read: the value is final.
    pub final_value: bool,
}

#[derive(Clone, Debug)]
pub struct ErrorReading {
    pub proc: ProcKey,
    pub nr: u32,
    pub errno: u32,
    pub count: u64,
    pub final_value: bool,
}

/// What one incarnation did in the interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcDelta {
    pub proc: ProcKey,
    /// Command name and cgroup id the kernel stamped (for naming processes already gone).
    pub comm: String,
    pub cgroup_id: u64,
    /// Per syscall number: increments (only non-empty ones).
    pub stats: BTreeMap<u32, Agg>,
    /// Per (syscall, errno): new errors.
    pub errors: BTreeMap<(u32, u32), u64>,
    /// Its kernel entries were final: the incarnation ended.
    pub ended: bool,
}

impl ProcDelta {
    pub fn calls(&self) -> u64 {
        self.stats.values().map(|a| a.count).sum()
    }
}

/// Increments of the calls the kernel could not key by process (its maps were full).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverflowDelta {
    pub stats: BTreeMap<u32, Agg>,
    /// Per syscall (errno unknown).
    pub errors: BTreeMap<u32, u64>,
}

/// The last reading of every live kernel key.
#[derive(Default)]
pub struct Deltas {
    stats: HashMap<(ProcKey, u32), Agg>,
    errors: HashMap<(ProcKey, u32, u32), u64>,
    overflow: BTreeMap<u32, Agg>,
    overflow_errors: BTreeMap<u32, u64>,
    /// Entries whose reading went backwards (recreated by the kernel after we deleted them).
    pub recreated: u64,
}

impl Deltas {
    pub fn new() -> Self {
        Self::default()
    }

    /// Kernel keys remembered (for `/status`).
    pub fn keys(&self) -> usize {
        self.stats.len() + self.errors.len()
    }

    /// Folds one drain's readings in; returns each incarnation's increments (sorted by
    /// incarnation; incarnations with nothing new left out unless they ended).
    pub fn ingest(&mut self, stats: Vec<StatReading>, errors: Vec<ErrorReading>) -> Vec<ProcDelta> {
        let mut out: BTreeMap<ProcKey, ProcDelta> = BTreeMap::new();
        for r in stats {
            let key = (r.proc, r.nr);
            let d = match self.stats.get(&key) {
                Some(last) => match r.agg.since(last) {
                    Some(d) => d,
                    None => {
                        self.recreated += 1;
                        r.agg.clone()
                    }
                },
                None => r.agg.clone(),
            };
            if r.final_value {
                self.stats.remove(&key);
            } else {
                self.stats.insert(key, r.agg);
            }
            let p = out.entry(r.proc).or_insert_with(|| ProcDelta {
                proc: r.proc,
                ..Default::default()
            });
            if p.comm.is_empty() {
                p.comm = r.comm;
            }
            if p.cgroup_id == 0 {
                p.cgroup_id = r.cgroup_id;
            }
            p.ended |= r.final_value;
            if !d.is_empty() {
                p.stats.entry(r.nr).or_default().add(&d);
            }
        }
        for r in errors {
            let key = (r.proc, r.nr, r.errno);
            let last = self.errors.get(&key).copied().unwrap_or(0);
            let d = if r.count >= last {
                r.count - last
            } else {
                self.recreated += 1;
                r.count
            };
            if r.final_value {
                self.errors.remove(&key);
            } else {
                self.errors.insert(key, r.count);
            }
            let p = out.entry(r.proc).or_insert_with(|| ProcDelta {
                proc: r.proc,
                ..Default::default()
            });
            p.ended |= r.final_value;
            if d > 0 {
                *p.errors.entry((r.nr, r.errno)).or_default() += d;
            }
        }
        out.into_values()
            .filter(|p| p.ended || !p.stats.is_empty() || !p.errors.is_empty())
            .collect()
    }

    /// Increments of the overflow entries (cumulative per syscall in the kernel, never reset).
    pub fn overflow(
        &mut self,
        stats: BTreeMap<u32, Agg>,
        errors: BTreeMap<u32, u64>,
    ) -> OverflowDelta {
        let mut out = OverflowDelta::default();
        for (nr, agg) in stats {
            let d = match self.overflow.get(&nr) {
                Some(last) => agg.since(last).unwrap_or_else(|| agg.clone()),
                None => agg.clone(),
            };
            if !d.is_empty() {
                out.stats.insert(nr, d);
            }
            self.overflow.insert(nr, agg);
        }
        for (nr, n) in errors {
            let last = self.overflow_errors.insert(nr, n).unwrap_or(0);
            if n > last {
                out.errors.insert(nr, n - last);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn agg(count: u64, bucket: u8) -> Agg {
        Agg {
            count,
            sum_ns: count * 100,
            errors: 0,
            buckets: if count > 0 {
                vec![(bucket, count)]
            } else {
                vec![]
            },
        }
    }

    fn read(tgid: u32, gen: u64, nr: u32, count: u64, final_value: bool) -> StatReading {
        StatReading {
            proc: ProcKey { tgid, gen },
            nr,
            agg: agg(count, 7),
            comm: format!("p{tgid}"),
            cgroup_id: 0,
            final_value,
        }
    }

    #[test]
    fn increments_sum_to_the_final_value_and_finals_are_forgotten() {
        let mut d = Deltas::new();
        let a = d.ingest(
            vec![read(7, 1, 39, 100, false), read(7, 1, 0, 5, false)],
            vec![],
        );
        assert_eq!(a[0].calls(), 105);
        let b = d.ingest(
            vec![read(7, 1, 39, 250, false), read(7, 1, 0, 5, false)],
            vec![],
        );
        assert_eq!(b[0].calls(), 150);
        assert_eq!(b[0].stats.len(), 1);
        let c = d.ingest(
            vec![read(7, 1, 39, 260, true), read(7, 1, 0, 5, true)],
            vec![],
        );
        assert_eq!(c[0].calls(), 10);
        assert!(c[0].ended);
        assert_eq!(d.keys(), 0);
        // A straggler the kernel created after our delete: all of it is new.
        let e = d.ingest(vec![read(7, 1, 39, 2, true)], vec![]);
        assert_eq!(e[0].calls(), 2);
    }

    #[test]
    fn incarnations_of_one_pid_stay_apart() {
        let mut d = Deltas::new();
        let a = d.ingest(
            vec![
                read(7, 1, 110, 300_000, true),
                read(7, 2, 110, 500_000, false),
            ],
            vec![],
        );
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].proc.gen, a[0].calls(), a[0].ended),
            (1, 300_000, true)
        );
        assert_eq!(
            (a[1].proc.gen, a[1].calls(), a[1].ended),
            (2, 500_000, false)
        );
    }

    #[test]
    fn idle_incarnations_are_left_out_and_errors_count() {
        let mut d = Deltas::new();
        let err = |count, final_value| ErrorReading {
            proc: ProcKey { tgid: 3, gen: 9 },
            nr: 3,
            errno: 9,
            count,
            final_value,
        };
        d.ingest(vec![read(3, 9, 3, 4, false)], vec![err(4, false)]);
        assert!(d
            .ingest(vec![read(3, 9, 3, 4, false)], vec![err(4, false)])
            .is_empty());
        let x = d.ingest(vec![read(3, 9, 3, 6, false)], vec![err(6, false)]);
        assert_eq!(x[0].errors[&(3, 9)], 2);
    }

    #[test]
    fn overflow_is_cumulative_per_syscall() {
        let mut d = Deltas::new();
        let o = d.overflow([(1, agg(10, 3))].into(), [(1, 2)].into());
        assert_eq!((o.stats[&1].count, o.errors[&1]), (10, 2));
        let o = d.overflow([(1, agg(15, 3))].into(), [(1, 2)].into());
        assert_eq!(o.stats[&1].count, 5);
        assert!(o.errors.is_empty());
    }
}
