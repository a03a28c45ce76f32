//! Drains the syscall probe's kernel maps: reads cumulative per-CPU values, deletes the entries of
//! processes that were dead before they were read, and reports the probe's health counters.

use std::collections::{BTreeMap, HashMap};

use agent_common::syscalls::{counter, SyscallErrorKey, SyscallKey, SyscallStats};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};

use super::aggregate::{Agg, ErrorReading, StatReading};
use crate::procinfo::{self, comm_str};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The maps taken out of the loaded object.
pub struct Maps {
    pub stats: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
    pub errors: PerCpuHashMap<MapData, SyscallErrorKey, u64>,
    pub counters: PerCpuArray<MapData, u64>,
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
}

impl Maps {
    /// Reads every entry. Liveness is checked *before* a process's first value is read, so a
    /// `final_value` reading can never miss later increments.
    pub fn drain(&self) -> Result<Drained, ReadError> {
        let stats_keys = self
            .stats
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ReadError::Map {
                map: agent_common::syscalls::STATS_MAP,
                source,
            })?;
        let error_keys = self
            .errors
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ReadError::Map {
                map: agent_common::syscalls::ERRORS_MAP,
                source,
            })?;
        let mut dead: HashMap<u32, bool> = HashMap::new();
        let mut is_dead = |tgid: u32| *dead.entry(tgid).or_insert_with(|| !procinfo::alive(tgid));

        let mut stats = Vec::with_capacity(stats_keys.len());
        for key in &stats_keys {
            let final_value = is_dead(key.tgid);
            // A key can vanish between listing and reading (LRU eviction): skip it.
            let Ok(values) = self.stats.get(key, 0) else {
                continue;
            };
            let mut agg = Agg::default();
            let mut comm = String::new();
            let mut cgroup_id = 0;
            for v in values.iter() {
                agg.count += v.count;
                agg.sum_ns += v.sum_ns;
                agg.errors += v.errors;
                for (a, b) in agg.buckets.iter_mut().zip(v.buckets.iter()) {
                    *a += b;
                }
                if comm.is_empty() && v.comm[0] != 0 {
                    comm = comm_str(&v.comm);
                }
                if cgroup_id == 0 {
                    cgroup_id = v.cgroup_id;
                }
            }
            stats.push(StatReading {
                tgid: key.tgid,
                nr: key.nr,
                agg,
                comm,
                cgroup_id,
                final_value,
            });
        }
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
        let final_stats = stats
            .iter()
            .filter(|r| r.final_value)
            .map(|r| SyscallKey {
                tgid: r.tgid,
                nr: r.nr,
            })
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
        })
    }

    /// Deletes these kernel entries (of processes that were dead before they were read).
    pub fn delete(&mut self, stats: &[SyscallKey], errors: &[SyscallErrorKey]) {
        for k in stats {
            let _ = self.stats.remove(k);
        }
        for k in errors {
            let _ = self.errors.remove(k);
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
