//! Drains the syscall probe's kernel maps: reads cumulative per-CPU values, deletes the entries of
//! processes that were dead before they were read, and reports the probe's health counters.

use std::collections::{BTreeMap, HashMap};

use agent_common::syscalls::{counter, FastEntry, SyscallErrorKey, SyscallKey, SyscallStats};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap},
    Pod,
};

use super::aggregate::{Agg, ErrorReading, StatReading};
use crate::procinfo::{self, comm_str};

pub use crate::ebpf::ReadError;

/// The maps taken out of the loaded object.
pub struct Maps {
    pub stats: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
    pub errors: PerCpuHashMap<MapData, SyscallErrorKey, u64>,
    pub counters: PerCpuArray<MapData, u64>,
    /// The fast table (`None` when `fast_slots` is 0).
    pub fast: Option<Array<MapData, FastEntry>>,
}

/// One drain's readings.
pub struct Drained {
    pub stats: Vec<StatReading>,
    pub errors: Vec<ErrorReading>,
    /// Entries in the stats map (to compare with its capacity).
    pub stats_entries: u64,
    pub error_entries: u64,
    /// Keys whose value is final (process dead before the read): delete them once ingested.
    pub final_stats: Vec<SyscallKey>,
    pub final_errors: Vec<SyscallErrorKey>,
    /// Fast-table indices whose values are final: free them once ingested.
    pub final_fast: Vec<u32>,
    /// Fast-table entries in use.
    pub fast_entries: u64,
}

/// The reading of `key`, created empty on first use.
fn reading_for(
    readings: &mut BTreeMap<SyscallKey, StatReading>,
    key: SyscallKey,
    final_value: bool,
) -> &mut StatReading {
    readings.entry(key).or_insert_with(|| StatReading {
        tgid: key.tgid,
        nr: key.nr,
        agg: Agg::default(),
        comm: String::new(),
        cgroup_id: 0,
        final_value,
    })
}

/// Adds one per-CPU (or fast-table) stats value into a reading's sums.
fn accumulate(r: &mut StatReading, v: &SyscallStats) {
    r.agg.add(&Agg {
        count: v.count,
        sum_ns: v.sum_ns,
        errors: v.errors,
        buckets: v.buckets,
    });
    if r.comm.is_empty() && v.comm[0] != 0 {
        r.comm = comm_str(&v.comm);
    }
    if r.cgroup_id == 0 {
        r.cgroup_id = v.cgroup_id;
    }
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
    /// Reads every entry. Liveness is checked *before* a process's first value is read, so a
    /// `final_value` reading can never miss later increments.
    pub fn drain(&self) -> Result<Drained, ReadError> {
        let stats_keys = keys_of(&self.stats, agent_common::syscalls::STATS_MAP)?;
        let error_keys = keys_of(&self.errors, agent_common::syscalls::ERRORS_MAP)?;
        // Pass 1 over the fast table: which keys hold entries (values re-read below if final).
        let fast_first: Vec<(u32, FastEntry)> = match &self.fast {
            Some(fast) => (0..fast.len())
                .filter_map(|i| Some((i, fast.get(&i, 0).ok()?)))
                .filter(|(_, e)| e.key.tgid != 0)
                .collect(),
            None => Vec::new(),
        };
        // Liveness of every process, checked before any value that it makes final is read.
        let mut dead: HashMap<u32, bool> = HashMap::new();
        let tgids = stats_keys
            .iter()
            .map(|k| k.tgid)
            .chain(error_keys.iter().map(|k| k.tgid))
            .chain(fast_first.iter().map(|(_, e)| e.key.tgid));
        for tgid in tgids {
            dead.entry(tgid).or_insert_with(|| !procinfo::alive(tgid));
        }
        let is_dead = |tgid: u32| dead.get(&tgid).copied().unwrap_or(false);

        let mut readings: BTreeMap<SyscallKey, StatReading> = BTreeMap::new();
        for key in &stats_keys {
            // A key can vanish between listing and reading (LRU eviction): skip it.
            let Ok(values) = self.stats.get(key, 0) else {
                continue;
            };
            let r = reading_for(&mut readings, *key, is_dead(key.tgid));
            for v in values.iter() {
                accumulate(r, v);
            }
        }
        let mut final_fast = Vec::new();
        let fast_entries = fast_first.len() as u64;
        for (idx, first) in fast_first {
            let entry = if is_dead(first.key.tgid) {
                // Dead before this read: the re-read value is final (only we free entries, so the
                // key cannot have changed).
                final_fast.push(idx);
                match self.fast.as_ref().map(|f| f.get(&idx, 0)) {
                    Some(Ok(e)) => e,
                    _ => first,
                }
            } else {
                first
            };
            let dead = is_dead(entry.key.tgid);
            accumulate(reading_for(&mut readings, entry.key, dead), &entry.stats);
        }
        let stats: Vec<StatReading> = readings.into_values().collect();
        let mut errors = Vec::with_capacity(error_keys.len());
        for key in &error_keys {
            let final_value = is_dead(key.tgid);
            let Ok(values) = self.errors.get(key, 0) else {
                continue;
            };
            errors.push(ErrorReading {
                tgid: key.tgid,
                nr: key.nr,
                errno: key.errno,
                count: values.iter().sum(),
                final_value,
            });
        }
        // Only keys the hash holds (a key may live in the fast table alone).
        let final_stats = stats_keys
            .iter()
            .filter(|k| is_dead(k.tgid))
            .copied()
            .collect();
        let final_errors = errors
            .iter()
            .filter(|r| r.final_value)
            .map(|r| SyscallErrorKey {
                tgid: r.tgid,
                nr: r.nr,
                errno: r.errno,
                _pad: 0,
            })
            .collect();
        Ok(Drained {
            stats_entries: stats_keys.len() as u64,
            error_entries: error_keys.len() as u64,
            stats,
            errors,
            final_stats,
            final_errors,
            final_fast,
            fast_entries,
        })
    }

    /// Deletes these kernel entries (of processes that were dead before they were read) and
    /// frees these fast-table entries (zeroed stats, key last: see `FastEntry`).
    pub fn delete(&mut self, stats: &[SyscallKey], errors: &[SyscallErrorKey], fast: &[u32]) {
        for k in stats {
            let _ = self.stats.remove(k);
        }
        for k in errors {
            let _ = self.errors.remove(k);
        }
        if let Some(table) = self.fast.as_mut() {
            let free = FastEntry {
                stats: SyscallStats::ZERO,
                key: SyscallKey::default(),
            };
            for idx in fast {
                let _ = table.set(*idx, free, 0);
            }
        }
    }

    /// The kernel's health counters, summed over CPUs, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        let names = [
            (counter::UNMATCHED_EXITS, "unmatched_exits"),
            (counter::SLOT_COLLISIONS, "slot_collisions"),
            (counter::STATS_INSERT_FAILED, "stats_insert_failed"),
            (counter::ERRORS_INSERT_FAILED, "errors_insert_failed"),
            (counter::NR_OUT_OF_RANGE, "nr_out_of_range"),
            (counter::STATS_INSERTS, "stats_inserts"),
            (counter::CHILD_RETURNS, "child_returns"),
            (counter::FAST_CLAIMS, "fast_claims"),
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
