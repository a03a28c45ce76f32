//! The engine's metric batch (source `enforcement`): `agent.enforcement.decisions` by rule and
//! outcome, `agent.enforcement.latency` (observation → action in effect), active limits, the
//! rate limiter's packet outcomes, and the blocker's refusals as
//! `system.network.tcp.connection.failures` with `error.type=blocked` — the network probe's
//! family, with its attributes (process, container and pod, client role, transport, type, peer
//! address and port), so a blocked connect counts where failed connects are read.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::SystemTime,
};

use agent_common::block::{is_mapped_v4, RefusalKey, RefusalStats, AF_INET};

use super::audit::Outcome;
use crate::{
    metrics::model::{attr, Batch, Desc, Family, Histogram, Kind, Labels, Point, Value},
    probes::network::aggregate::FAILURES,
};

pub const SOURCE: &str = "enforcement";

pub const DECISIONS: Desc = Desc {
    name: "agent.enforcement.decisions",
    unit: "{decision}",
    help: "Enforcement decisions by rule and outcome (taken, monitor, cooldown, rate_cap, allowlist, protected, active, failed, undone).",
    kind: Kind::Counter,
};
pub const LATENCY: Desc = Desc {
    name: "agent.enforcement.latency",
    unit: "s",
    help: "Time from the observation that fired a rule (the drain's kernel read) to its action in effect.",
    kind: Kind::Histogram,
};
pub const ACTIVE: Desc = Desc {
    name: "agent.enforcement.active",
    unit: "{limit}",
    help: "Limiting actions in effect (journaled, undone at their TTL).",
    kind: Kind::Gauge,
};
pub const RATE_LIMIT_PACKETS: Desc = Desc {
    name: "agent.enforcement.rate_limit.packets",
    unit: "{packet}",
    help: "Packets through the rate limiter's programs by outcome (passed, passed_cn: passed with congestion notification, dropped, unlimited).",
    kind: Kind::Counter,
};

/// Latency bucket bounds, seconds: 1 ms to 10 s.
const BOUNDS: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Who a refusal series belongs to (resolved once, while the process lives).
#[derive(Clone)]
struct Owner {
    exe: String,
    workload: Option<crate::k8s::Workload>,
}

pub struct Telemetry {
    start: SystemTime,
    decisions: BTreeMap<(Arc<str>, Outcome), u64>,
    latency: BTreeMap<(Arc<str>, &'static str), Histogram>,
    owners: HashMap<u32, Owner>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry {
            start: SystemTime::now(),
            decisions: BTreeMap::new(),
            latency: BTreeMap::new(),
            owners: HashMap::new(),
        }
    }

    pub fn count(&mut self, rule: &Arc<str>, o: Outcome) {
        *self.decisions.entry((rule.clone(), o)).or_default() += 1;
    }

    pub fn latency(&mut self, rule: &Arc<str>, action: &'static str, seconds: f64) {
        let h = self
            .latency
            .entry((rule.clone(), action))
            .or_insert_with(|| Histogram {
                bounds: Arc::from(&BOUNDS[..]),
                bucket_counts: vec![0; BOUNDS.len() + 1].into(),
                sum: 0.0,
                count: 0,
            });
        let b = BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BOUNDS.len());
        Arc::make_mut(&mut h.bucket_counts)[b] += 1;
        h.sum += seconds;
        h.count += 1;
    }

    /// The decisions counted so far, for tests and `/status`.
    pub fn decisions(&self) -> &BTreeMap<(Arc<str>, Outcome), u64> {
        &self.decisions
    }

    fn point(&self, labels: Labels, value: Value) -> Point {
        Point {
            labels,
            value,
            start_time: self.start,
        }
    }

    /// The whole batch.
    pub fn batch(
        &mut self,
        active: &BTreeMap<&'static str, u64>,
        rate_counters: Option<[u64; agent_common::ratelimit::counter::COUNT as usize]>,
        refusals: &[(RefusalKey, RefusalStats)],
    ) -> Batch {
        let mut fams = Vec::new();
        let pts = self
            .decisions
            .iter()
            .map(|((r, o), n)| {
                self.point(
                    vec![attr("rule", r.to_string()), attr("outcome", o.as_str())],
                    Value::Counter(*n as f64),
                )
            })
            .collect();
        fams.push(Family {
            desc: DECISIONS,
            points: pts,
        });
        let pts = self
            .latency
            .iter()
            .map(|((r, a), h)| {
                self.point(
                    vec![attr("rule", r.to_string()), attr("action", *a)],
                    Value::Histogram(h.clone()),
                )
            })
            .collect();
        fams.push(Family {
            desc: LATENCY,
            points: pts,
        });
        fams.push(Family {
            desc: ACTIVE,
            points: active
                .iter()
                .map(|(a, n)| self.point(vec![attr("action", *a)], Value::Gauge(*n as f64)))
                .collect(),
        });
        if let Some(c) = rate_counters {
            use agent_common::ratelimit::counter::{NAMES, PACKETS};
            fams.push(Family {
                desc: RATE_LIMIT_PACKETS,
                points: NAMES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i as u32 != PACKETS)
                    .map(|(i, n)| {
                        self.point(vec![attr("outcome", *n)], Value::Counter(c[i] as f64))
                    })
                    .collect(),
            });
        }
        if !refusals.is_empty() {
            let mut points = Vec::with_capacity(refusals.len());
            for (k, s) in refusals {
                let labels = self.refusal_labels(k, s);
                points.push(self.point(labels, Value::Counter(s.count as f64)));
            }
            fams.push(Family {
                desc: FAILURES,
                points,
            });
        }
        Batch {
            source: SOURCE.into(),
            time: SystemTime::now(),
            families: fams,
        }
    }

    /// The network probe's failure attributes for one (process, peer), `error.type=blocked`.
    fn refusal_labels(&mut self, k: &RefusalKey, s: &RefusalStats) -> Labels {
        let owner = self
            .owners
            .entry(k.tgid)
            .or_insert_with(|| Owner {
                exe: crate::procinfo::exe_name(k.tgid)
                    .unwrap_or_else(|| crate::procinfo::comm_str(&s.comm)),
                workload: crate::procinfo::workload(k.tgid),
            })
            .clone();
        let mut l: Labels = vec![
            attr("process.pid", k.tgid),
            attr("process.executable.name", owner.exe),
        ];
        if let Some(w) = &owner.workload {
            l.push(attr("container.id", w.container.container_id.clone()));
        }
        l.extend(crate::k8s::pod_labels(owner.workload.as_ref()));
        l.push(attr("network.tcp.handshake.role", "client"));
        l.push(attr("network.transport", "tcp"));
        let (ty, addr) = if k.family == AF_INET && is_mapped_v4(&k.addr) {
            (
                "ipv4",
                Ipv4Addr::new(k.addr[12], k.addr[13], k.addr[14], k.addr[15]).to_string(),
            )
        } else {
            ("ipv6", Ipv6Addr::from(k.addr).to_string())
        };
        l.push(attr("network.type", ty));
        l.push(attr("network.peer.address", addr));
        l.push(attr("network.peer.port", k.port));
        l.push(attr("error.type", "blocked"));
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::get;

    #[test]
    fn decisions_latency_and_blocked_failures() {
        let mut t = Telemetry::new();
        let r: Arc<str> = "r".into();
        t.count(&r, Outcome::Taken);
        t.count(&r, Outcome::Taken);
        t.count(&r, Outcome::Cooldown);
        t.latency(&r, "signal", 0.004);
        t.latency(&r, "signal", 20.0);
        let key = RefusalKey {
            tgid: std::process::id(),
            port: 443,
            family: AF_INET,
            _pad: 0,
            addr: agent_common::block::mapped_v4([10, 0, 0, 9]),
            cgroup_id: 1,
        };
        let b = t.batch(
            &BTreeMap::new(),
            None,
            &[(
                key,
                RefusalStats {
                    count: 3,
                    ..Default::default()
                },
            )],
        );
        let fam = |n: &str| b.families.iter().find(|f| f.desc.name == n).unwrap();
        let d = fam("agent.enforcement.decisions");
        assert_eq!(d.points.len(), 2);
        assert_eq!(d.points[0].value, Value::Counter(2.0));
        let Value::Histogram(h) = &fam("agent.enforcement.latency").points[0].value else {
            panic!()
        };
        assert_eq!(
            (h.count, h.bucket_counts[2], h.bucket_counts[13]),
            (2, 1, 1)
        );
        let f = fam("system.network.tcp.connection.failures");
        let p = &f.points[0];
        assert_eq!(p.value, Value::Counter(3.0));
        assert_eq!(
            get(&p.labels, "error.type").unwrap().as_str(),
            Some("blocked")
        );
        assert_eq!(
            get(&p.labels, "network.peer.address").unwrap().as_str(),
            Some("10.0.0.9")
        );
        assert_eq!(
            get(&p.labels, "network.type").unwrap().as_str(),
            Some("ipv4")
        );
        assert_eq!(f.desc, FAILURES);
    }
}
