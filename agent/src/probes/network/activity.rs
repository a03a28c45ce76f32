//! Per-process TCP increments for the signal deriver, taken from each drain's readings before
//! the aggregator builds the exported series (so processes beyond any folding are still seen).
//! Pure (no kernel, no `/proc`), unit-tested exactly.
//!
//! Invariants: the increments of a kernel entry over all drains sum to its final value (an
//! entry deleted after its final reading and created again counts from zero, like the
//! aggregator's `frozen` base); a process is one incarnation per start time: a pid held by a
//! later process ends the earlier one, whose increments that interval stay its own (as the
//! aggregator keeps them with the old series); a process whose readings are final (it exited
//! before the read) is reported once, `ended`.

use std::collections::{BTreeMap, HashMap};

use agent_common::network::{SeriesKey, SeriesStats};

use super::reader::{sub, Reading};
use crate::signals::NetworkDelta;

/// One incarnation's increments in one drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcIncrement {
    pub pid: u32,
    /// Start time (clock ticks after boot) of the incarnation; 0 when it was never seen alive.
    pub start: u64,
    pub delta: NetworkDelta,
    pub ended: bool,
    /// One of its series (the first read), to name it by.
    pub key: SeriesKey,
    /// Its cgroup v2 id when the kernel created that series' entry.
    pub cgroup_id: u64,
}

/// The last reading of every live kernel entry, and the start time of each pid's holder.
#[derive(Default)]
pub struct Increments {
    last: HashMap<SeriesKey, SeriesStats>,
    starts: HashMap<u32, u64>,
}

fn delta_of(d: &SeriesStats) -> NetworkDelta {
    NetworkDelta {
        handshakes: d.handshake.count(),
        handshake_us: d.handshake.sum_us,
        failures: d.failures.iter().sum(),
        retransmits: d.retransmits,
        segments_out: d.segs_out,
    }
}

fn add(a: &mut NetworkDelta, b: &NetworkDelta) {
    a.handshakes += b.handshakes;
    a.handshake_us += b.handshake_us;
    a.failures += b.failures;
    a.retransmits += b.retransmits;
    a.segments_out += b.segments_out;
}

impl Increments {
    pub fn new() -> Self {
        Self::default()
    }

    /// Kernel entries remembered (for `/status`).
    pub fn tracked(&self) -> usize {
        self.last.len()
    }

    /// What each process did since the previous drain: only processes with something new,
    /// or that ended; sorted by pid. The "other" series and unattributed owners (pid 0) are
    /// no process and left out.
    pub fn ingest(&mut self, readings: &[Reading]) -> Vec<ProcIncrement> {
        let mut out: BTreeMap<(u32, u64), ProcIncrement> = BTreeMap::new();
        let mut ended_pids = Vec::new();
        for r in readings.iter().filter(|r| r.key.tgid != 0) {
            let pid = r.key.tgid;
            let known = self.starts.get(&pid).copied();
            // Whose increments these are: the incarnation seen before (a later holder of the
            // pid takes over from this reading on), else the holder now.
            let start = match (&r.holder, known) {
                (_, Some(s)) => s,
                (Some(h), None) => h.start,
                (None, None) => 0,
            };
            let reused = matches!((&r.holder, known), (Some(h), Some(s)) if h.start != s);
            let d = match self.last.get(&r.key) {
                Some(last) => sub(&r.stats, last),
                None => r.stats,
            };
            if r.final_value {
                self.last.remove(&r.key);
            } else {
                self.last.insert(r.key, r.stats);
            }
            let p = out.entry((pid, start)).or_insert_with(|| ProcIncrement {
                pid,
                start,
                delta: NetworkDelta::default(),
                ended: false,
                key: r.key,
                cgroup_id: r.stats.cgroup_id,
            });
            add(&mut p.delta, &delta_of(&d));
            p.ended |= r.final_value || reused;
            if r.final_value || reused {
                ended_pids.push(pid);
            }
        }
        // Start times of the live holders, for the next drain (ended pids forgotten first).
        for pid in ended_pids {
            self.starts.remove(&pid);
        }
        for r in readings.iter().filter(|r| r.key.tgid != 0) {
            if let Some(h) = &r.holder {
                self.starts.insert(r.key.tgid, h.start);
            }
        }
        out.into_values()
            .filter(|p| p.ended || !p.delta.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use agent_common::network::{failure, SeriesStats, ROLE_CLIENT, ROLE_SERVER};

    use super::*;
    use crate::probes::network::reader::Holder;

    fn key(tgid: u32, role: u8, port: u16) -> SeriesKey {
        SeriesKey {
            tgid,
            port,
            family: 2,
            role,
            addr: [0; 16],
        }
    }

    fn stats(handshakes: &[u64], failures: u64, retrans: u64, segs: u64) -> SeriesStats {
        let mut s = SeriesStats::ZERO;
        for us in handshakes {
            s.handshake.add(*us);
        }
        s.failures[failure::REFUSED] = failures;
        s.retransmits = retrans;
        s.segs_out = segs;
        s
    }

    fn live(key: SeriesKey, stats: SeriesStats, start: u64) -> Reading {
        Reading {
            key,
            stats,
            final_value: false,
            holder: Some(Holder {
                start,
                comm: "w".into(),
            }),
        }
    }

    fn dead(key: SeriesKey, stats: SeriesStats) -> Reading {
        Reading {
            key,
            stats,
            final_value: true,
            holder: None,
        }
    }

    fn delta(handshakes: u64, us: u64, failures: u64, retrans: u64, segs: u64) -> NetworkDelta {
        NetworkDelta {
            handshakes,
            handshake_us: us,
            failures,
            retransmits: retrans,
            segments_out: segs,
        }
    }

    #[test]
    fn increments_are_per_process_summed_over_its_series() {
        let mut inc = Increments::new();
        let (a, b) = (key(10, ROLE_CLIENT, 80), key(10, ROLE_SERVER, 22));
        let got = inc.ingest(&[
            live(a, stats(&[100, 300], 1, 2, 50), 5),
            live(b, stats(&[40], 0, 0, 10), 5),
            live(SeriesKey::default(), stats(&[7], 0, 0, 3), 0),
        ]);
        assert_eq!(got.len(), 1, "the other series is no process: {got:?}");
        assert_eq!((got[0].pid, got[0].start, got[0].ended), (10, 5, false));
        assert_eq!(got[0].delta, delta(3, 440, 1, 2, 60));
        // Next drain: only what grew; an unchanged process is left out.
        let got = inc.ingest(&[
            live(a, stats(&[100, 300, 20], 1, 3, 70), 5),
            live(b, stats(&[40], 0, 0, 10), 5),
        ]);
        assert_eq!(got[0].delta, delta(1, 20, 0, 1, 20));
        let got = inc.ingest(&[
            live(a, stats(&[100, 300, 20], 1, 3, 70), 5),
            live(b, stats(&[40], 0, 0, 10), 5),
        ]);
        assert_eq!(got, vec![]);
        assert_eq!(inc.tracked(), 2);
    }

    #[test]
    fn an_exit_ends_the_process_once_with_its_last_increments() {
        let mut inc = Increments::new();
        let a = key(11, ROLE_CLIENT, 80);
        inc.ingest(&[live(a, stats(&[], 0, 0, 10), 9)]);
        let got = inc.ingest(&[dead(a, stats(&[], 2, 0, 14))]);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].start, got[0].ended), (9, true));
        assert_eq!(got[0].delta, delta(0, 0, 2, 0, 4));
        assert_eq!(inc.tracked(), 0, "deleted after its final reading");
        // The kernel creates the entry again (a socket outlived its owner): all of it is new.
        let got = inc.ingest(&[dead(a, stats(&[], 1, 0, 3))]);
        assert_eq!(got[0].delta, delta(0, 0, 1, 0, 3));
        assert_eq!(got[0].start, 0, "its start was forgotten with the exit");
    }

    #[test]
    fn a_reused_pid_ends_the_old_incarnation_and_starts_the_new_one() {
        let mut inc = Increments::new();
        let a = key(12, ROLE_CLIENT, 80);
        inc.ingest(&[live(a, stats(&[], 0, 0, 10), 100)]);
        // Another process (start 200) holds pid 12 now, and the entry lived through the change:
        // the interval's increments stay with the old one, which ends.
        let got = inc.ingest(&[live(a, stats(&[], 0, 1, 25), 200)]);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].start, got[0].ended), (100, true));
        assert_eq!(got[0].delta, delta(0, 0, 0, 1, 15));
        // The new one counts from there.
        let got = inc.ingest(&[live(a, stats(&[], 0, 1, 40), 200)]);
        assert_eq!((got[0].start, got[0].ended), (200, false));
        assert_eq!(got[0].delta, delta(0, 0, 0, 0, 15));
    }

    #[test]
    fn increments_sum_to_the_final_values() {
        // Random growth over many drains, with exits and recreations: the increments of each
        // key add up to every value the kernel held, never counting one twice.
        let mut inc = Increments::new();
        let mut seed = 7u64;
        let mut rnd = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let keys: Vec<SeriesKey> = (1..=4).map(|p| key(p, ROLE_CLIENT, 80)).collect();
        let mut values: Vec<SeriesStats> = vec![SeriesStats::ZERO; 4];
        let mut kernel_total = 0u64;
        let mut seen_total = 0u64;
        for round in 0..200 {
            let mut readings = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let grow = rnd(5);
                values[i].segs_out += grow;
                kernel_total += grow;
                if round % 37 == i as u64 {
                    readings.push(dead(*k, values[i]));
                    values[i] = SeriesStats::ZERO; // deleted; recreated from zero
                } else {
                    readings.push(live(*k, values[i], 1));
                }
            }
            for p in inc.ingest(&readings) {
                seen_total += p.delta.segments_out;
            }
        }
        let pending: u64 = values.iter().map(|v| v.segs_out).sum();
        let read: u64 = inc.last.values().map(|v| v.segs_out).sum();
        assert_eq!(pending, read);
        assert_eq!(seen_total, kernel_total);
    }
}
