//! Drains the syscall probe's kernel maps: reads cumulative per-CPU values, tells which keys
//! belong to incarnations that ended (their values are final), deletes those after they are
//! ingested, and reports the probe's health counters.
//!
//! Invariant: whether an incarnation ended is decided *before* any of its values is read
//! (`SYSCALL_PROC_GEN` no longer holds its generation: it exited, or exec'd into a new one), so
//! a final value can never miss a later increment.

use std::collections::{BTreeMap, HashMap};

use agent_common::syscalls::{
    counter, FastEntry, SyscallErrorKey, SyscallKey, SyscallStats, ERRORS_MAP, STATS_MAP,
};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
    Pod,
};

use super::{
    deltas::{ErrorReading, ProcKey, StatReading},
    hist::Agg,
};
use crate::procinfo::{self, comm_str};

pub use crate::ebpf::ReadError;

/// The maps taken out of the loaded object.
pub struct Maps {
    pub stats: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
    pub errors: PerCpuHashMap<MapData, SyscallErrorKey, u64>,
    pub counters: PerCpuArray<MapData, u64>,
    /// The fast table (`None` when `fast_slots` is 0).
    pub fast: Option<Array<MapData, FastEntry>>,
    pub overflow: PerCpuArray<MapData, SyscallStats>,
    pub errors_overflow: PerCpuArray<MapData, u64>,
    pub proc_gen: BpfHashMap<MapData, u32, u64>,
    /// Whether the exit hook runs (it removes ended processes from `proc_gen`); without it,
    /// `/proc` tells which processes ended and the reader removes them.
    pub exit_hook: bool,
}

/// One drain's readings.
pub struct Drained {
    pub stats: Vec<StatReading>,
    pub errors: Vec<ErrorReading>,
    /// Cumulative overflow values per syscall (read only when the kernel folded something).
    pub overflow: Option<(BTreeMap<u32, Agg>, BTreeMap<u32, u64>)>,
    /// Entries in the stats map (to compare with its capacity).
    pub stats_entries: u64,
    pub error_entries: u64,
    /// Fast-table entries in use.
    pub fast_entries: u64,
    pub finals: Finals,
}

/// What to delete from the kernel once a drain is ingested.
#[derive(Default)]
pub struct Finals {
    /// Keys whose value is final.
    pub stats: Vec<SyscallKey>,
    pub errors: Vec<SyscallErrorKey>,
    /// Fast-table indices whose values are final.
    pub fast: Vec<u32>,
    /// Processes that ended, to remove from `proc_gen` (only without the exit hook).
    pub procs: Vec<u32>,
}

/// Every key of a per-CPU hash map.
fn keys_of<K: Pod, V: Pod>(
    map: &PerCpuHashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<K>, ReadError> {
    map.keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ReadError::Map { map: name, source })
}

impl Maps {
    /// The kernel's current generation of `tgid` (`None`: no live process of that pid has
    /// made a syscall since attach, or it ended).
    pub fn current_gen(&self, tgid: u32) -> Option<u64> {
        self.proc_gen.get(&tgid, 0).ok()
    }

    /// Whether incarnation `p` ended. Unknown generations (0) fall back to `/proc`.
    fn ended(&self, p: ProcKey) -> bool {
        if p.gen == 0 || !self.exit_hook {
            if !procinfo::alive(p.tgid) {
                return true;
            }
            if p.gen == 0 {
                return false;
            }
        }
        match self.proc_gen.get(&p.tgid, 0) {
            Ok(g) => g != p.gen,
            Err(MapError::KeyNotFound) => true,
            // Cannot tell: keep it (never delete a live key).
            Err(_) => false,
        }
    }

    /// Reads every entry. Whether an incarnation ended is checked before its first value is
    /// read. `folded_moved`: the kernel folded calls since the last drain (read the overflow).
    pub fn drain(&self, folded_moved: bool) -> Result<Drained, ReadError> {
        let stats_keys = keys_of(&self.stats, STATS_MAP)?;
        let error_keys = keys_of(&self.errors, ERRORS_MAP)?;
        let fast_first: Vec<(u32, FastEntry)> = match &self.fast {
            Some(fast) => (0..fast.len())
                .filter_map(|i| Some((i, fast.get(&i, 0).ok()?)))
                .filter(|(_, e)| e.key.tgid != 0)
                .collect(),
            None => Vec::new(),
        };
        let mut ended: HashMap<ProcKey, bool> = HashMap::new();
        let procs = stats_keys
            .iter()
            .map(|k| ProcKey {
                tgid: k.tgid,
                gen: k.gen,
            })
            .chain(error_keys.iter().map(|k| ProcKey {
                tgid: k.tgid,
                gen: k.gen,
            }))
            .chain(fast_first.iter().map(|(_, e)| ProcKey {
                tgid: e.key.tgid,
                gen: e.key.gen,
            }));
        for p in procs {
            if let std::collections::hash_map::Entry::Vacant(v) = ended.entry(p) {
                v.insert(self.ended(p));
            }
        }
        let is_final =
            |tgid: u32, gen: u64| ended.get(&ProcKey { tgid, gen }).copied().unwrap_or(false);

        let mut readings: BTreeMap<SyscallKey, StatReading> = BTreeMap::new();
        let mut add = |key: SyscallKey, values: &mut dyn Iterator<Item = &SyscallStats>| {
            let values: Vec<&SyscallStats> = values.collect();
            let agg = Agg::from_cpus(values.iter().copied());
            let stamp = values.iter().find(|v| v.comm[0] != 0);
            let r = readings.entry(key).or_insert_with(|| StatReading {
                proc: ProcKey {
                    tgid: key.tgid,
                    gen: key.gen,
                },
                nr: key.nr,
                agg: Agg::default(),
                comm: String::new(),
                cgroup_id: 0,
                final_value: is_final(key.tgid, key.gen),
            });
            r.agg.add(&agg);
            if r.comm.is_empty() {
                if let Some(v) = stamp {
                    r.comm = comm_str(&v.comm);
                    r.cgroup_id = v.cgroup_id;
                }
            }
        };
        for key in &stats_keys {
            // A key can vanish between listing and reading (we deleted it): skip it.
            let Ok(values) = self.stats.get(key, 0) else {
                continue;
            };
            add(*key, &mut values.iter());
        }
        let mut final_fast = Vec::new();
        let fast_entries = fast_first.len() as u64;
        for (idx, first) in fast_first {
            let entry = if is_final(first.key.tgid, first.key.gen) {
                // Ended before this read: the re-read value is final (only we free entries, so
                // the key cannot have changed).
                final_fast.push(idx);
                match self.fast.as_ref().map(|f| f.get(&idx, 0)) {
                    Some(Ok(e)) => e,
                    _ => first,
                }
            } else {
                first
            };
            add(entry.key, &mut std::iter::once(&entry.stats));
        }
        let stats: Vec<StatReading> = readings.into_values().collect();

        let mut errors = Vec::with_capacity(error_keys.len());
        for key in &error_keys {
            let Ok(values) = self.errors.get(key, 0) else {
                continue;
            };
            errors.push(ErrorReading {
                proc: ProcKey {
                    tgid: key.tgid,
                    gen: key.gen,
                },
                nr: key.nr,
                errno: key.errno,
                count: values.iter().sum(),
                final_value: is_final(key.tgid, key.gen),
            });
        }
        let overflow = if folded_moved {
            Some(self.read_overflow())
        } else {
            None
        };
        // Only keys the hash holds (a key may live in the fast table alone).
        let final_stats = stats_keys
            .iter()
            .filter(|k| is_final(k.tgid, k.gen))
            .copied()
            .collect();
        let final_errors = error_keys
            .iter()
            .filter(|k| is_final(k.tgid, k.gen))
            .copied()
            .collect();
        let final_procs = if self.exit_hook {
            Vec::new()
        } else {
            let mut v: Vec<u32> = ended
                .iter()
                .filter(|(p, e)| **e && p.gen != 0)
                .map(|(p, _)| p.tgid)
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Ok(Drained {
            stats_entries: stats_keys.len() as u64,
            error_entries: error_keys.len() as u64,
            stats,
            errors,
            overflow,
            fast_entries,
            finals: Finals {
                stats: final_stats,
                errors: final_errors,
                fast: final_fast,
                procs: final_procs,
            },
        })
    }

    /// The overflow arrays: cumulative per syscall, only the used entries.
    fn read_overflow(&self) -> (BTreeMap<u32, Agg>, BTreeMap<u32, u64>) {
        let mut stats = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for nr in 0..self.overflow.len() {
            if let Ok(values) = self.overflow.get(&nr, 0) {
                let a = Agg::from_cpus(values.iter());
                if !a.is_empty() {
                    stats.insert(nr, a);
                }
            }
            if let Ok(values) = self.errors_overflow.get(&nr, 0) {
                let n: u64 = values.iter().sum();
                if n > 0 {
                    errors.insert(nr, n);
                }
            }
        }
        (stats, errors)
    }

    /// Deletes these kernel entries (of incarnations that ended before they were read) and
    /// frees these fast-table entries (zeroed stats, key last: see `FastEntry`).
    pub fn delete(&mut self, d: &Finals) {
        for k in &d.stats {
            let _ = self.stats.remove(k);
        }
        for k in &d.errors {
            let _ = self.errors.remove(k);
        }
        if let Some(table) = self.fast.as_mut() {
            let free = FastEntry {
                stats: SyscallStats::ZERO,
                key: SyscallKey::default(),
            };
            for idx in &d.fast {
                let _ = table.set(*idx, free, 0);
            }
        }
        for tgid in &d.procs {
            let _ = self.proc_gen.remove(tgid);
        }
    }

    /// The kernel's health counters, summed over CPUs, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        let names = [
            (counter::UNMATCHED_EXITS, "unmatched_exits"),
            (counter::SLOT_COLLISIONS, "slot_collisions"),
            (counter::STATS_FOLDED, "stats_folded"),
            (counter::ERRORS_FOLDED, "errors_folded"),
            (counter::NR_OUT_OF_RANGE, "nr_out_of_range"),
            (counter::STATS_INSERTS, "stats_inserts"),
            (counter::CHILD_RETURNS, "child_returns"),
            (counter::FAST_CLAIMS, "fast_claims"),
            (counter::GEN_UNKNOWN, "gen_unknown"),
            (counter::EVENTS_LOST, "proc_events_lost"),
            (counter::EXECS, "execs"),
            (counter::EXITS, "exits"),
        ];
        names
            .into_iter()
            .map(|(idx, name)| {
                let v = self
                    .counters
                    .get(&idx, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (name, v)
            })
            .collect()
    }
}
