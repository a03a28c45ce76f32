//! Cumulative network series from kernel readings, and the metric families they export.
//!
//! Invariants: an exported value never goes backwards while the series is exported. A series
//! whose kernel entry was deleted (owner exited) keeps its final value (`frozen`); if the kernel
//! creates the key again (a socket outlived its owner), the new entry starts from zero and is
//! added on top. Series of exited owners are dropped after `retain_exited`.
//!
//! A series belongs to one process, not to a pid: it is attributed (executable name, container)
//! once, while that process lives, and keeps that attribution. When another process holds the
//! pid later (pid reuse: a different start time, any live process after the owner was seen
//! dead, or a dead owner of another command name re-creating the deleted entry), the old
//! series is retired with its final value and name, and the new process's
//! series starts from zero (from the kernel entry's value then, if the entry outlived the
//! change: a reuse within one drain interval, counted in `pid_reused_within_interval`, whose
//! interval's increments stay with the old process). A retired series is exported until it
//! expires, unless the new one has the very same attributes (the same program again): then the
//! new one replaces it, with a new start time (a reset, as OTLP and Prometheus read it).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::network::{failure, Hist, SeriesKey, SeriesStats, HIST_BUCKETS, ROLE_CLIENT};

use super::{
    events::{addr_string, family_name, role_name},
    reader::{add, sub, Reading},
};
use crate::{
    metrics::model::{
        attr, Desc, Family, Histogram, Kind, Labels, Point, Value, FOLDED, FOLDED_OTHER,
        FOLDED_UNKNOWN,
    },
    procinfo::comm_str,
};

pub const HANDSHAKE: Desc = Desc {
    name: "system.network.tcp.handshake.duration",
    unit: "s",
    help: "TCP handshake time: connect() to ESTABLISHED (client), SYN arrival to ESTABLISHED (server).",
    kind: Kind::Histogram,
};
pub const RTT: Desc = Desc {
    name: "system.network.tcp.rtt.duration",
    unit: "s",
    help: "Smoothed TCP round-trip time of each connection, sampled at most once per rtt_sample_interval.",
    kind: Kind::Histogram,
};
pub const DURATION: Desc = Desc {
    name: "system.network.tcp.connection.duration",
    unit: "s",
    help: "TCP connection lifetime, ESTABLISHED to CLOSE.",
    kind: Kind::Histogram,
};
pub const RETRANSMITS: Desc = Desc {
    name: "system.network.tcp.retransmits",
    unit: "{segment}",
    help: "TCP segments retransmitted (SYNs included).",
    kind: Kind::Counter,
};
pub const FAILURES: Desc = Desc {
    name: "system.network.tcp.connection.failures",
    unit: "{failure}",
    help: "TCP connections that failed, by error.type (refused, timeout, reset, ...).",
    kind: Kind::Counter,
};

/// Who a series belongs to, resolved by the caller (exe name, container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    pub exe_name: String,
    pub container_id: Option<String>,
    /// Container runtime and pod (`crate::k8s`), labelled beside `container.id`.
    pub workload: Option<crate::k8s::Workload>,
}

/// How to attribute a new series: from `/proc` (its owner is alive and is the process that
/// created the kernel entry) or from what the kernel captured (command name, cgroup id).
pub trait Attribute {
    /// `live`: the owner is alive, and its command name now matches the one the kernel
    /// captured when the entry was created.
    fn attribute(&mut self, key: &SeriesKey, stats: &SeriesStats, live: bool) -> Attribution;
}

impl<F: FnMut(&SeriesKey, &SeriesStats, bool) -> Attribution> Attribute for F {
    fn attribute(&mut self, key: &SeriesKey, stats: &SeriesStats, live: bool) -> Attribution {
        self(key, stats, live)
    }
}

#[derive(Clone)]
struct Series {
    /// Sum of the kernel entries that were deleted (final values).
    frozen: SeriesStats,
    /// The current kernel entry's value (zero when it has none).
    live: SeriesStats,
    /// The kernel entry's value when this series' process took it over (pid reused while the
    /// entry lived); subtracted from `live`.
    base: SeriesStats,
    first_seen: SystemTime,
    /// When the owner was found dead (its kernel entry then deleted).
    exited: Option<Instant>,
    /// Start time of the owner (clock ticks after boot), once seen alive.
    start: Option<u64>,
    /// Resolved once, at first sight.
    attribution: Option<Attribution>,
}

impl Series {
    fn new(wall: SystemTime) -> Self {
        Series {
            frozen: SeriesStats::ZERO,
            live: SeriesStats::ZERO,
            base: SeriesStats::ZERO,
            first_seen: wall,
            exited: None,
            start: None,
            attribution: None,
        }
    }
}

#[derive(Default)]
pub struct Aggregator {
    /// Boxed: a `Series` is ~3 KB (three sets of 36-bucket histograms) and a hash table keeps
    /// up to half its slots empty after it grows; boxed, an empty slot costs 8 bytes.
    series: HashMap<SeriesKey, Box<Series>>,
    /// Series of processes whose pid another process holds now, with their final values.
    retired: Vec<(SeriesKey, Series)>,
    /// Series dropped after their owner exited and the retention passed.
    pub expired: u64,
    /// Series retired because another process took their pid.
    pub pid_reused: u64,
    /// Of those, the ones where the pid changed hands between two drains while the kernel
    /// entry lived: that interval's increments went to the old process.
    pub pid_reused_within_interval: u64,
}

/// Upper bounds in seconds of kernel buckets 0..HIST_BUCKETS-1: 2^b µs (the last is +Inf).
pub fn bucket_bounds_seconds() -> Arc<[f64]> {
    (0..HIST_BUCKETS - 1)
        .map(|b| (1u64 << b) as f64 * 1e-6)
        .collect::<Vec<_>>()
        .into()
}

fn histogram(h: &Hist, bounds: &Arc<[f64]>) -> Histogram {
    Histogram {
        bounds: bounds.clone(),
        bucket_counts: h.buckets[..].into(),
        sum: h.sum_us as f64 * 1e-6,
        count: h.count(),
    }
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one drain's readings; returns the keys whose kernel entries may now be deleted.
    /// New series are attributed through `attribute`.
    pub fn ingest(
        &mut self,
        readings: Vec<Reading>,
        now: Instant,
        wall: SystemTime,
        attribute: &mut impl Attribute,
    ) -> Vec<SeriesKey> {
        let mut finals = Vec::new();
        for r in readings {
            let s = self
                .series
                .entry(r.key)
                .or_insert_with(|| Box::new(Series::new(wall)));
            if let Some(h) = &r.holder {
                // A live process holds the pid: is it the series' own?
                let reused = s.exited.is_some() || s.start.is_some_and(|t| t != h.start);
                if reused && r.key.tgid != 0 {
                    let mut old = *std::mem::replace(s, Box::new(Series::new(wall)));
                    self.pid_reused += 1;
                    if old.exited.is_none() {
                        // The entry lived through the change: its value now is the old
                        // process's final one; the new process counts from it.
                        self.pid_reused_within_interval += 1;
                        add(&mut old.frozen, &sub(&r.stats, &old.base));
                        old.live = SeriesStats::ZERO;
                        old.base = SeriesStats::ZERO;
                        old.exited = Some(now);
                        s.base = r.stats;
                    }
                    self.retired.push((r.key, old));
                }
                s.live = r.stats;
                s.exited = None;
                s.start.get_or_insert(h.start);
                if s.attribution.is_none() {
                    let same = h.comm == comm_str(&r.stats.comm);
                    s.attribution = Some(attribute.attribute(&r.key, &r.stats, same));
                }
            } else if r.final_value {
                // Dead again after its entry was deleted: the entry was created anew, by a
                // socket that outlived its owner (same command name), or by another process
                // that held the pid and exited between two drains (another name).
                if s.exited.is_some() && s.frozen.comm != r.stats.comm {
                    let old = *std::mem::replace(s, Box::new(Series::new(wall)));
                    self.pid_reused += 1;
                    self.retired.push((r.key, old));
                }
                if s.attribution.is_none() {
                    s.attribution = Some(attribute.attribute(&r.key, &r.stats, false));
                }
                add(&mut s.frozen, &sub(&r.stats, &s.base));
                s.live = SeriesStats::ZERO;
                s.base = SeriesStats::ZERO;
                s.exited.get_or_insert(now);
                finals.push(r.key);
            } else {
                // The "other" series and owners never seen (tgid 0).
                s.live = r.stats;
            }
        }
        finals
    }

    /// Drops series whose owner exited more than `retain` ago.
    pub fn expire(&mut self, now: Instant, retain: Duration) {
        let before = self.tracked();
        let keep = |s: &Series| s.exited.is_none_or(|t| now.duration_since(t) < retain);
        self.series.retain(|_, s| keep(s));
        self.retired.retain(|(_, s)| keep(s));
        self.expired += (before - self.tracked()) as u64;
    }

    pub fn tracked(&self) -> usize {
        self.series.len() + self.retired.len()
    }

    /// Who the current series of `key` belongs to (attributed at its first sight).
    pub fn attribution(&self, key: &SeriesKey) -> Option<&Attribution> {
        self.series.get(key)?.attribution.as_ref()
    }

    /// Cumulative totals of one series.
    fn total(s: &Series) -> SeriesStats {
        let mut t = s.frozen;
        add(&mut t, &sub(&s.live, &s.base));
        t
    }

    /// Handshakes measured over every series (for the map's `processed` count).
    pub fn total_handshakes(&self) -> u64 {
        self.series
            .values()
            .map(|s| &**s)
            .chain(self.retired.iter().map(|(_, s)| s))
            .map(|s| Self::total(s).handshake.count())
            .sum()
    }

    /// The five families, one point per series (histograms without samples are left out).
    pub fn families(&self) -> Vec<Family> {
        let bounds = bucket_bounds_seconds();
        let mut handshake = Vec::new();
        let mut rtt = Vec::new();
        let mut duration = Vec::new();
        let mut retransmits = Vec::new();
        let mut failures = Vec::new();
        let mut current: Vec<(&SeriesKey, &Series)> =
            self.series.iter().map(|(k, s)| (k, &**s)).collect();
        current.sort_by_key(|(k, _)| **k);
        let mut seen = std::collections::HashSet::new();
        let mut all: Vec<(&SeriesKey, &Series, Labels)> = Vec::new();
        for (key, s) in current {
            let l = labels(key, s);
            seen.insert(format!("{l:?}"));
            all.push((key, s, l));
        }
        // A retired series whose attributes the current one repeats is replaced by it.
        for (key, s) in &self.retired {
            let l = labels(key, s);
            if seen.insert(format!("{l:?}")) {
                all.push((key, s, l));
            }
        }
        for (_, s, labels) in all {
            let t = Self::total(s);
            let start_time = s.first_seen;
            let point = |labels: Labels, value: Value| Point {
                labels,
                value,
                start_time,
            };
            for (h, out) in [
                (&t.handshake, &mut handshake),
                (&t.rtt, &mut rtt),
                (&t.duration, &mut duration),
            ] {
                if h.count() > 0 {
                    out.push(point(
                        labels.clone(),
                        Value::Histogram(histogram(h, &bounds)),
                    ));
                }
            }
            retransmits.push(point(labels.clone(), Value::Counter(t.retransmits as f64)));
            for (kind, n) in t.failures.iter().enumerate() {
                if *n > 0 {
                    let mut l = labels.clone();
                    l.push(attr("error.type", failure::NAMES[kind]));
                    failures.push(point(l, Value::Counter(*n as f64)));
                }
            }
        }
        [
            (HANDSHAKE, handshake),
            (RTT, rtt),
            (DURATION, duration),
            (RETRANSMITS, retransmits),
            (FAILURES, failures),
        ]
        .into_iter()
        .map(|(desc, points)| Family { desc, points })
        .collect()
    }
}

/// Attributes of one series. The all-zero key is the "other" series (what did not fit).
fn labels(key: &SeriesKey, s: &Series) -> Labels {
    if *key == SeriesKey::default() {
        return vec![attr(FOLDED, FOLDED_OTHER), attr("network.transport", "tcp")];
    }
    let mut l: Labels = Vec::with_capacity(9);
    if key.tgid == 0 {
        // A server socket whose listen() was not seen (listening before the agent started).
        l.push(attr(FOLDED, FOLDED_UNKNOWN));
    } else {
        l.push(attr("process.pid", key.tgid));
        let (exe, container) = match &s.attribution {
            Some(a) if !a.exe_name.is_empty() => (a.exe_name.clone(), a.container_id.clone()),
            a => (
                comm_str(&Aggregator::total(s).comm),
                a.as_ref().and_then(|a| a.container_id.clone()),
            ),
        };
        l.push(attr("process.executable.name", exe));
        if let Some(c) = container {
            l.push(attr("container.id", c));
        }
        l.extend(crate::k8s::pod_labels(
            s.attribution.as_ref().and_then(|a| a.workload.as_ref()),
        ));
    }
    l.push(attr("network.tcp.handshake.role", role_name(key.role)));
    l.push(attr("network.transport", "tcp"));
    l.push(attr("network.type", family_name(key.family)));
    if key.addr != [0; 16] {
        l.push(attr(
            "network.peer.address",
            addr_string(key.family, &key.addr),
        ));
    }
    if key.port != 0 {
        let name = if key.role == ROLE_CLIENT {
            "network.peer.port"
        } else {
            "network.local.port"
        };
        l.push(attr(name, key.port));
    }
    l
}

#[cfg(test)]
mod tests {
    use agent_common::network::{AF_INET, ROLE_SERVER};

    use super::*;
    use crate::{
        metrics::model::{get, AttrValue},
        probes::network::reader::Holder,
    };

    fn key(tgid: u32, role: u8) -> SeriesKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        SeriesKey {
            tgid,
            port: 443,
            family: AF_INET,
            role,
            addr,
        }
    }

    fn stats(handshakes: &[u64], retrans: u64) -> SeriesStats {
        named(b"curl", handshakes, retrans)
    }

    /// Stats whose kernel entry was created by a process named `comm`.
    fn named(comm: &[u8], handshakes: &[u64], retrans: u64) -> SeriesStats {
        let mut s = SeriesStats::ZERO;
        s.comm[..comm.len()].copy_from_slice(comm);
        for h in handshakes {
            s.handshake.add(*h);
        }
        s.retransmits = retrans;
        s
    }

    /// A reading while process `start` (named `comm`) holds the pid.
    fn live(key: SeriesKey, s: SeriesStats, start: u64, comm: &str) -> Reading {
        Reading {
            key,
            stats: s,
            final_value: false,
            holder: Some(Holder {
                start,
                comm: comm.into(),
            }),
        }
    }

    /// A reading after the owner died.
    fn dead(key: SeriesKey, s: SeriesStats) -> Reading {
        Reading {
            key,
            stats: s,
            final_value: key.tgid != 0,
            holder: None,
        }
    }

    /// Names a series after the kernel's command name, marked by where it came from.
    fn attribution(_: &SeriesKey, s: &SeriesStats, live: bool) -> Attribution {
        let comm = comm_str(&s.comm);
        Attribution {
            exe_name: if live {
                comm
            } else {
                format!("{comm}(kernel)")
            },
            container_id: None,
            workload: None,
        }
    }

    fn value<'a>(f: &'a [Family], name: &str) -> &'a [Point] {
        &f.iter().find(|f| f.desc.name == name).unwrap().points
    }

    /// (executable name, handshakes) of every handshake point, sorted.
    fn handshakes(a: &Aggregator) -> Vec<(String, u64)> {
        let f = a.families();
        let mut out: Vec<(String, u64)> = value(&f, HANDSHAKE.name)
            .iter()
            .map(|p| {
                let Some(AttrValue::Str(exe)) = get(&p.labels, "process.executable.name") else {
                    panic!("no name: {:?}", p.labels)
                };
                let Value::Histogram(h) = &p.value else {
                    panic!()
                };
                (exe.to_string(), h.count)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn cumulative_across_deletion_and_recreation() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let k = key(7, ROLE_CLIENT);
        let mut at = attribution;
        assert!(a
            .ingest(
                vec![live(k, stats(&[100], 1), 50, "curl")],
                now,
                wall,
                &mut at
            )
            .is_empty());
        // Owner dead before the read: final, deletable.
        let finals = a.ingest(
            vec![dead(k, stats(&[100, 1_500_000], 2))],
            now,
            wall,
            &mut at,
        );
        assert_eq!(finals, vec![k]);
        // The kernel re-created the key (a socket outlived its owner, still dead): new entry
        // from zero, added on top.
        a.ingest(vec![dead(k, stats(&[], 3))], now, wall, &mut at);
        let f = a.families();
        let Value::Histogram(h) = &value(&f, HANDSHAKE.name)[0].value else {
            panic!()
        };
        assert_eq!(h.count, 2);
        assert_eq!(h.bounds.len() + 1, h.bucket_counts.len());
        // 100 µs -> bucket 7 (64, 128]; 1.5 s -> bucket 21 (1.05 s, 2.1 s].
        assert_eq!(h.bucket_counts[7], 1);
        assert_eq!(h.bucket_counts[21], 1);
        assert!((h.sum - 1.5001).abs() < 1e-9);
        assert_eq!(value(&f, RETRANSMITS.name)[0].value, Value::Counter(5.0));
        assert_eq!(a.total_handshakes(), 2);
        assert_eq!(a.pid_reused, 0);
        // Attributed once, while alive, and kept.
        assert_eq!(handshakes(&a), vec![("curl".to_string(), 2)]);
    }

    #[test]
    fn labels_by_role_and_other_series() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut s = stats(&[10], 0);
        s.failures[failure::REFUSED] = 2;
        a.ingest(
            vec![
                live(key(7, ROLE_CLIENT), s, 1, "curl"),
                live(key(8, ROLE_SERVER), stats(&[10], 0), 2, "curl"),
                dead(SeriesKey::default(), stats(&[10], 0)),
            ],
            now,
            wall,
            &mut attribution,
        );
        let f = a.families();
        let hs = value(&f, HANDSHAKE.name);
        assert_eq!(hs.len(), 3);
        let find = |pid: i64| {
            hs.iter()
                .find(|p| get(&p.labels, "process.pid") == Some(&AttrValue::Int(pid)))
                .unwrap()
        };
        let has = |l: &Labels, k: &'static str, v: AttrValue| l.contains(&(k.into(), v));
        let client = &find(7).labels;
        assert!(has(client, "network.peer.port", AttrValue::Int(443)));
        assert!(has(client, "network.peer.address", "10.1.2.3".into()));
        assert!(has(client, "network.tcp.handshake.role", "client".into()));
        let server = &find(8).labels;
        assert!(has(server, "network.local.port", AttrValue::Int(443)));
        assert!(has(server, "network.tcp.handshake.role", "server".into()));
        let other = hs
            .iter()
            .find(|p| get(&p.labels, FOLDED).is_some())
            .unwrap();
        assert_eq!(
            other.labels,
            vec![attr(FOLDED, FOLDED_OTHER), attr("network.transport", "tcp")]
        );
        let fails = value(&f, FAILURES.name);
        assert_eq!(fails.len(), 1);
        assert!(has(&fails[0].labels, "error.type", "refused".into()));
        assert_eq!(fails[0].value, Value::Counter(2.0));
    }

    #[test]
    fn exited_series_expire_after_retention() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        a.ingest(
            vec![dead(key(7, ROLE_CLIENT), stats(&[1], 0))],
            now,
            wall,
            &mut attribution,
        );
        a.expire(now + Duration::from_secs(30), Duration::from_secs(60));
        assert_eq!(a.tracked(), 1);
        a.expire(now + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!((a.tracked(), a.expired), (0, 1));
    }

    /// alpha holds pid 7, makes 3 connections and exits; beta gets pid 7 and makes 2 on the
    /// same key: alpha's series keeps alpha's name and its 3, beta's starts from zero.
    #[test]
    fn pid_reuse_after_exit_keeps_the_old_series_and_its_name() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let k = key(7, ROLE_CLIENT);
        let mut at = attribution;
        a.ingest(
            vec![live(k, named(b"alpha", &[10; 3], 0), 100, "alpha")],
            now,
            wall,
            &mut at,
        );
        let finals = a.ingest(
            vec![dead(k, named(b"alpha", &[10; 3], 0))],
            now,
            wall,
            &mut at,
        );
        assert_eq!(finals, vec![k]);
        // The entry was deleted; beta's connections create it again, from zero.
        a.ingest(
            vec![live(k, named(b"beta", &[10; 2], 0), 200, "beta")],
            now,
            wall,
            &mut at,
        );
        assert_eq!(
            handshakes(&a),
            vec![("alpha".to_string(), 3), ("beta".to_string(), 2)]
        );
        assert_eq!((a.pid_reused, a.pid_reused_within_interval), (1, 0));
        assert_eq!(a.total_handshakes(), 5);
        // beta goes on: only beta's series moves.
        a.ingest(
            vec![live(k, named(b"beta", &[10; 6], 0), 200, "beta")],
            now,
            wall,
            &mut at,
        );
        assert_eq!(
            handshakes(&a),
            vec![("alpha".to_string(), 3), ("beta".to_string(), 6)]
        );
        // alpha's retired series expires like any exited one.
        a.expire(now + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(handshakes(&a), vec![("beta".to_string(), 6)]);
    }

    /// beta lives and dies between two drains: never seen alive, yet its entry (created anew
    /// after alpha's was deleted) carries its own command name: a series of its own.
    #[test]
    fn short_lived_process_on_a_reused_pid_gets_its_own_series() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let k = key(7, ROLE_CLIENT);
        let mut at = attribution;
        a.ingest(
            vec![dead(k, named(b"alpha", &[10; 3], 0))],
            now,
            wall,
            &mut at,
        );
        a.ingest(
            vec![dead(k, named(b"beta", &[10; 5], 0))],
            now,
            wall,
            &mut at,
        );
        assert_eq!(
            handshakes(&a),
            vec![
                ("alpha(kernel)".to_string(), 3),
                ("beta(kernel)".to_string(), 5)
            ]
        );
        // A socket outliving alpha re-creates the entry with alpha's name: added on top.
        a.ingest(
            vec![dead(k, named(b"beta", &[10; 1], 0))],
            now,
            wall,
            &mut at,
        );
        assert_eq!(a.total_handshakes(), 9);
        assert_eq!(a.pid_reused, 1);
    }

    /// The pid changes hands between two drains while the kernel entry lives on: what the
    /// entry holds then is alpha's final value (marked), beta counts from there.
    #[test]
    fn pid_reuse_within_one_interval_is_marked() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let k = key(7, ROLE_CLIENT);
        let mut at = attribution;
        a.ingest(
            vec![live(k, named(b"alpha", &[10; 3], 0), 100, "alpha")],
            now,
            wall,
            &mut at,
        );
        a.ingest(
            vec![live(k, named(b"alpha", &[10; 7], 0), 200, "beta")],
            now,
            wall,
            &mut at,
        );
        assert_eq!((a.pid_reused, a.pid_reused_within_interval), (1, 1));
        a.ingest(
            vec![live(k, named(b"alpha", &[10; 10], 0), 200, "beta")],
            now,
            wall,
            &mut at,
        );
        // beta's entry was created by alpha (kernel name alpha, /proc name beta): attributed
        // from what the kernel captured, never from the new holder's /proc.
        assert_eq!(
            handshakes(&a),
            vec![("alpha".to_string(), 7), ("alpha(kernel)".to_string(), 3)]
        );
        // Deleting and recreating works from the new base on.
        let finals = a.ingest(
            vec![dead(k, named(b"alpha", &[10; 11], 0))],
            now,
            wall,
            &mut at,
        );
        assert_eq!(finals, vec![k]);
        assert_eq!(a.total_handshakes(), 11);
    }

    /// The same program again on the same pid: the new series replaces the old one on export
    /// (identical attributes would be one series twice), with its own start time.
    #[test]
    fn same_program_on_a_reused_pid_replaces_the_old_series() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let later = wall + Duration::from_secs(5);
        let k = key(7, ROLE_CLIENT);
        let mut at = attribution;
        a.ingest(
            vec![live(k, stats(&[10; 3], 0), 100, "curl")],
            now,
            wall,
            &mut at,
        );
        a.ingest(vec![dead(k, stats(&[10; 3], 0))], now, wall, &mut at);
        a.ingest(
            vec![live(k, stats(&[10], 0), 300, "curl")],
            now,
            later,
            &mut at,
        );
        let f = a.families();
        let hs = value(&f, HANDSHAKE.name);
        assert_eq!(hs.len(), 1, "{hs:?}");
        assert_eq!(hs[0].start_time, later);
        assert_eq!(handshakes(&a), vec![("curl".to_string(), 1)]);
    }
}
