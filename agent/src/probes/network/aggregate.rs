//! Cumulative network series from kernel readings, and the metric families they export.
//!
//! Invariants: an exported value never goes backwards while the series is exported. A series
//! whose kernel entry was deleted (owner exited) keeps its final value (`frozen`); if the kernel
//! creates the key again (a socket outlived its owner), the new entry starts from zero and is
//! added on top. Series of exited owners are dropped after `retain_exited`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::network::{failure, Hist, SeriesKey, SeriesStats, HIST_BUCKETS, ROLE_CLIENT};

use super::{
    events::{addr_string, family_name, role_name},
    reader::{add, Reading},
};
use crate::{
    metrics::model::{Desc, Family, Histogram, Kind, Labels, Point, Value},
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
pub struct Attribution {
    pub exe_name: String,
    pub container_id: Option<String>,
    /// Container runtime and pod (`crate::k8s`), labelled beside `container.id`.
    pub workload: Option<crate::k8s::Workload>,
}

struct Series {
    /// Sum of the kernel entries that were deleted (final values).
    frozen: SeriesStats,
    /// The current kernel entry's value (zero when it has none).
    live: SeriesStats,
    first_seen: SystemTime,
    /// When the owner was found dead (its kernel entry then deleted).
    exited: Option<Instant>,
}

#[derive(Default)]
pub struct Aggregator {
    series: HashMap<SeriesKey, Series>,
    /// Series dropped after their owner exited and the retention passed.
    pub expired: u64,
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
        bucket_counts: h.buckets.to_vec(),
        sum: h.sum_us as f64 * 1e-6,
        count: h.count(),
    }
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one drain's readings; returns the keys whose kernel entries may now be deleted.
    pub fn ingest(
        &mut self,
        readings: Vec<Reading>,
        now: Instant,
        wall: SystemTime,
    ) -> Vec<SeriesKey> {
        let mut finals = Vec::new();
        for r in readings {
            let s = self.series.entry(r.key).or_insert_with(|| Series {
                frozen: SeriesStats::ZERO,
                live: SeriesStats::ZERO,
                first_seen: wall,
                exited: None,
            });
            if r.final_value {
                add(&mut s.frozen, &r.stats);
                s.live = SeriesStats::ZERO;
                s.exited.get_or_insert(now);
                finals.push(r.key);
            } else {
                s.live = r.stats;
                s.exited = None;
            }
        }
        finals
    }

    /// Drops series whose owner exited more than `retain` ago.
    pub fn expire(&mut self, now: Instant, retain: Duration) {
        let before = self.series.len();
        self.series
            .retain(|_, s| s.exited.is_none_or(|t| now.duration_since(t) < retain));
        self.expired += (before - self.series.len()) as u64;
    }

    pub fn tracked(&self) -> usize {
        self.series.len()
    }

    /// Cumulative totals of one series.
    fn total(s: &Series) -> SeriesStats {
        let mut t = s.frozen;
        add(&mut t, &s.live);
        t
    }

    /// Handshakes measured over every series (for the map's `processed` count).
    pub fn total_handshakes(&self) -> u64 {
        self.series
            .values()
            .map(|s| Self::total(s).handshake.count())
            .sum()
    }

    /// The five families, one point per series (histograms without samples are left out).
    pub fn families(
        &self,
        mut attribute: impl FnMut(&SeriesKey, &SeriesStats) -> Attribution,
    ) -> Vec<Family> {
        let bounds = bucket_bounds_seconds();
        let mut handshake = Vec::new();
        let mut rtt = Vec::new();
        let mut duration = Vec::new();
        let mut retransmits = Vec::new();
        let mut failures = Vec::new();
        let mut keys: Vec<&SeriesKey> = self.series.keys().collect();
        keys.sort();
        for key in keys {
            let s = &self.series[key];
            let t = Self::total(s);
            let labels = labels(key, &t, &mut attribute);
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
                    l.push(("error.type", failure::NAMES[kind].to_string()));
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
fn labels(
    key: &SeriesKey,
    stats: &SeriesStats,
    attribute: &mut impl FnMut(&SeriesKey, &SeriesStats) -> Attribution,
) -> Labels {
    if *key == SeriesKey::default() {
        return vec![
            ("process.pid", "other".to_string()),
            ("network.transport", "tcp".to_string()),
        ];
    }
    let mut l: Labels = Vec::with_capacity(9);
    if key.tgid == 0 {
        // A server socket whose listen() was not seen (listening before the agent started).
        l.push(("process.pid", "unknown".to_string()));
        l.push(("process.executable.name", "unknown".to_string()));
    } else {
        let a = attribute(key, stats);
        l.push(("process.pid", key.tgid.to_string()));
        l.push((
            "process.executable.name",
            if a.exe_name.is_empty() {
                comm_str(&stats.comm)
            } else {
                a.exe_name
            },
        ));
        if let Some(c) = a.container_id {
            l.push(("container.id", c));
        }
        l.extend(crate::k8s::pod_labels(a.workload.as_ref()));
    }
    l.push((
        "network.tcp.handshake.role",
        role_name(key.role).to_string(),
    ));
    l.push(("network.transport", "tcp".to_string()));
    l.push(("network.type", family_name(key.family).to_string()));
    if key.addr != [0; 16] {
        l.push(("network.peer.address", addr_string(key.family, &key.addr)));
    }
    if key.port != 0 {
        let name = if key.role == ROLE_CLIENT {
            "network.peer.port"
        } else {
            "network.local.port"
        };
        l.push((name, key.port.to_string()));
    }
    l
}

#[cfg(test)]
mod tests {
    use agent_common::network::{AF_INET, ROLE_SERVER};

    use super::*;

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
        let mut s = SeriesStats::ZERO;
        for h in handshakes {
            s.handshake.add(*h);
        }
        s.retransmits = retrans;
        s
    }

    fn reading(key: SeriesKey, s: SeriesStats, final_value: bool) -> Reading {
        Reading {
            key,
            stats: s,
            final_value,
        }
    }

    fn attr(_: &SeriesKey, _: &SeriesStats) -> Attribution {
        Attribution {
            exe_name: "curl".into(),
            container_id: None,
            workload: None,
        }
    }

    fn value<'a>(f: &'a [Family], name: &str) -> &'a [Point] {
        &f.iter().find(|f| f.desc.name == name).unwrap().points
    }

    #[test]
    fn cumulative_across_deletion_and_recreation() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let k = key(7, ROLE_CLIENT);
        assert!(a
            .ingest(vec![reading(k, stats(&[100], 1), false)], now, wall)
            .is_empty());
        // Owner dead before the read: final, deletable.
        let finals = a.ingest(
            vec![reading(k, stats(&[100, 1_500_000], 2), true)],
            now,
            wall,
        );
        assert_eq!(finals, vec![k]);
        // The kernel re-created the key (a socket outlived its owner): new entry from zero.
        a.ingest(vec![reading(k, stats(&[], 3), false)], now, wall);
        let f = a.families(attr);
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
    }

    #[test]
    fn labels_by_role_and_other_series() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut s = stats(&[10], 0);
        s.failures[failure::REFUSED] = 2;
        a.ingest(
            vec![
                reading(key(7, ROLE_CLIENT), s, false),
                reading(key(8, ROLE_SERVER), stats(&[10], 0), false),
                reading(SeriesKey::default(), stats(&[10], 0), false),
            ],
            now,
            wall,
        );
        let f = a.families(attr);
        let hs = value(&f, HANDSHAKE.name);
        assert_eq!(hs.len(), 3);
        let find = |pid: &str| {
            hs.iter()
                .find(|p| {
                    p.labels
                        .iter()
                        .any(|(k, v)| *k == "process.pid" && v == pid)
                })
                .unwrap()
        };
        let client = &find("7").labels;
        assert!(client.contains(&("network.peer.port", "443".into())));
        assert!(client.contains(&("network.peer.address", "10.1.2.3".into())));
        assert!(client.contains(&("network.tcp.handshake.role", "client".into())));
        let server = &find("8").labels;
        assert!(server.contains(&("network.local.port", "443".into())));
        assert!(server.contains(&("network.tcp.handshake.role", "server".into())));
        assert_eq!(find("other").labels.len(), 2);
        let fails = value(&f, FAILURES.name);
        assert_eq!(fails.len(), 1);
        assert!(fails[0].labels.contains(&("error.type", "refused".into())));
        assert_eq!(fails[0].value, Value::Counter(2.0));
    }

    #[test]
    fn exited_series_expire_after_retention() {
        let mut a = Aggregator::new();
        let (now, wall) = (Instant::now(), SystemTime::now());
        a.ingest(
            vec![reading(key(7, ROLE_CLIENT), stats(&[1], 0), true)],
            now,
            wall,
        );
        a.expire(now + Duration::from_secs(30), Duration::from_secs(60));
        assert_eq!(a.tracked(), 1);
        a.expire(now + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!((a.tracked(), a.expired), (0, 1));
    }
}
