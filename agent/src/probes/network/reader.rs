//! Drains the network probe's kernel maps: sums each series over CPUs, marks the series of
//! processes that were dead before the read as final (deleted once ingested), reads the health
//! counters.

use std::collections::{BTreeMap, HashMap};

use agent_common::network::{counter, SeriesKey, SeriesStats, SERIES_MAP};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};

use crate::procinfo;

pub use crate::ebpf::ReadError;

/// One series summed over CPUs.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub key: SeriesKey,
    pub stats: SeriesStats,
    /// The owner was dead before the read: no later increments can come from it.
    pub final_value: bool,
}

pub struct Maps {
    pub series: PerCpuHashMap<MapData, SeriesKey, SeriesStats>,
    pub counters: PerCpuArray<MapData, u64>,
}

/// Adds `b` into `a` (histograms, counters; the first non-empty name and cgroup win).
pub fn add(a: &mut SeriesStats, b: &SeriesStats) {
    if a.comm[0] == 0 {
        a.comm = b.comm;
    }
    if a.cgroup_id == 0 {
        a.cgroup_id = b.cgroup_id;
    }
    a.retransmits += b.retransmits;
    for (x, y) in a.failures.iter_mut().zip(b.failures) {
        *x += y;
    }
    for (x, y) in [
        (&mut a.handshake, &b.handshake),
        (&mut a.rtt, &b.rtt),
        (&mut a.duration, &b.duration),
    ] {
        x.sum_us += y.sum_us;
        for (p, q) in x.buckets.iter_mut().zip(y.buckets) {
            *p += q;
        }
    }
}

impl Maps {
    /// Reads every series. Liveness is checked before the value is read, so a final reading
    /// cannot miss later increments from that process.
    pub fn drain(&self) -> Result<Vec<Reading>, ReadError> {
        let keys: Vec<SeriesKey> =
            self.series
                .keys()
                .collect::<Result<_, _>>()
                .map_err(|source| ReadError::Map {
                    map: SERIES_MAP,
                    source,
                })?;
        let mut dead: HashMap<u32, bool> = HashMap::new();
        for k in &keys {
            // tgid 0: the "other" series or an owner we never saw; never final.
            if k.tgid != 0 {
                dead.entry(k.tgid)
                    .or_insert_with(|| !procinfo::alive(k.tgid));
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Ok(values) = self.series.get(&key, 0) else {
                continue;
            };
            let mut stats = SeriesStats::ZERO;
            for v in values.iter() {
                add(&mut stats, v);
            }
            out.push(Reading {
                key,
                stats,
                final_value: dead.get(&key.tgid).copied().unwrap_or(false),
            });
        }
        Ok(out)
    }

    /// Deletes series whose final values were ingested.
    pub fn delete(&mut self, keys: &[SeriesKey]) {
        for k in keys {
            let _ = self.series.remove(k);
        }
    }

    /// The kernel's health counters, summed over CPUs, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        (0..counter::COUNT)
            .map(|idx| {
                let v = self
                    .counters
                    .get(&idx, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (counter::NAMES[idx as usize], v)
            })
            .collect()
    }
}
