//! Drains the network probe's kernel maps: sums each series over CPUs, marks the series of
//! processes that were dead before the read as final (deleted once ingested), reads the health
//! counters.
//!
//! Each owner is looked up in `/proc/<pid>/stat` (`procfs`) before its values are read: absent
//! means dead (final values); present gives the process's start time, which tells one process
//! from a later one that reuses its pid.

use std::collections::{BTreeMap, HashMap};

use agent_common::network::{counter, SeriesKey, SeriesStats, SERIES_MAP};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};

pub use crate::ebpf::ReadError;

/// The process that holds a pid now, as `/proc/<pid>/stat` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Start time in clock ticks after boot (`starttime`): differs between a process and a
    /// later one that reuses its pid.
    pub start: u64,
    /// Its command name now.
    pub comm: String,
}

/// The process holding `pid` now; `None` when no process has it.
pub fn holder(pid: u32) -> Option<Holder> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    Some(Holder {
        start: stat.starttime,
        comm: stat.comm,
    })
}

/// One series summed over CPUs.
#[derive(Clone, Debug)]
pub struct Reading {
    pub key: SeriesKey,
    pub stats: SeriesStats,
    /// The owner was dead before the read: no later increments can come from it.
    pub final_value: bool,
    /// The process holding the series' pid before the read (`None` when final).
    pub holder: Option<Holder>,
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
    a.segs_out += b.segs_out;
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

/// `a - b`, field by field (a kernel entry's growth since `b` was read from it).
pub fn sub(a: &SeriesStats, b: &SeriesStats) -> SeriesStats {
    let mut d = *a;
    d.retransmits = a.retransmits.saturating_sub(b.retransmits);
    d.segs_out = a.segs_out.saturating_sub(b.segs_out);
    for (x, y) in d.failures.iter_mut().zip(b.failures) {
        *x = x.saturating_sub(y);
    }
    for (x, y) in [
        (&mut d.handshake, &b.handshake),
        (&mut d.rtt, &b.rtt),
        (&mut d.duration, &b.duration),
    ] {
        x.sum_us = x.sum_us.saturating_sub(y.sum_us);
        for (p, q) in x.buckets.iter_mut().zip(y.buckets) {
            *p = p.saturating_sub(q);
        }
    }
    d
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
        let mut holders: HashMap<u32, Option<Holder>> = HashMap::new();
        for k in &keys {
            // tgid 0: the "other" series or an owner we never saw; never final.
            if k.tgid != 0 {
                holders.entry(k.tgid).or_insert_with(|| holder(k.tgid));
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
            let holder = holders.get(&key.tgid).cloned().flatten();
            out.push(Reading {
                key,
                stats,
                final_value: key.tgid != 0 && holder.is_none(),
                holder,
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
