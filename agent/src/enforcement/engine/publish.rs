//! The engine's outputs besides decisions: the metric batch, `/status` → `enforcement` and the
//! rule descriptions it shows.

use std::{collections::BTreeMap, time::Instant};

use super::{sample_syscall_text, Engine};
use crate::enforcement::{
    actions,
    journal::unix_ms,
    rules::{self, Condition},
    status::{
        ActiveStatus, DecisionPathStatus, DegradeStatus, EnforcementStatus, RateLimitStatus,
        RuleStatus,
    },
};
use crate::status::state::ComponentStatus;

impl Engine {
    /// Metrics batch, `/status` → `enforcement`, health.
    pub fn publish(&mut self) {
        self.last_publish = Instant::now();
        self.dirty = false;
        let mut active_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
        for a in &self.active {
            let k = rules_kind(&a.entry.kind);
            *active_by_kind.entry(k).or_default() += 1;
        }
        let mut kernel: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        let mut rate_limits = Vec::new();
        let rate_counters = self.kernel.loaded_rate().map(|r| {
            let c = r.counters();
            for (k, l) in r.entries() {
                rate_limits.push(RateLimitStatus {
                    cgroup_id: k.cgroup_id,
                    direction: actions::rate_limit::direction_name(k.direction),
                    bytes_per_second: l.bytes_per_second,
                    packets_per_second: l.packets_per_second,
                    burst_ns: l.burst_ns,
                    passed_packets: l.passed_packets,
                    passed_bytes: l.passed_bytes,
                    cn_packets: l.cn_packets,
                    dropped_packets: l.dropped_packets,
                    dropped_bytes: l.dropped_bytes,
                });
            }
            c
        });
        if let Some(c) = rate_counters {
            kernel.insert(
                "ratelimit",
                agent_common::ratelimit::counter::NAMES
                    .iter()
                    .copied()
                    .zip(c)
                    .collect(),
            );
        }
        let refusals = self.kernel.loaded_block().map(|b| {
            kernel.insert(
                "block",
                agent_common::block::counter::NAMES
                    .iter()
                    .copied()
                    .zip(b.counters())
                    .collect(),
            );
            b.refusals()
        });
        let mut armed = BTreeMap::new();
        if let Some(s) = self.kernel.loaded_signals() {
            kernel.insert(
                "signal",
                agent_common::signal::counter::NAMES
                    .iter()
                    .copied()
                    .zip(s.counters())
                    .collect(),
            );
            armed = s.armed().map(|(p, t)| (*p, unix_ms(*t))).collect();
        }
        let batch = self.telemetry.batch(
            &active_by_kind,
            rate_counters,
            refusals.as_deref().unwrap_or(&[]),
        );
        self.env.store.publish(batch);
        let mut decisions: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for ((r, o), n) in self.telemetry.decisions() {
            decisions
                .entry(r.to_string())
                .or_default()
                .insert(o.as_str(), *n);
        }
        let st = EnforcementStatus {
            mode: self.cfg.mode.as_str(),
            remote: match self.cfg.remote {
                crate::enforcement::config::RemoteBound::Deny => "deny",
                crate::enforcement::config::RemoteBound::Monitor => "monitor",
                crate::enforcement::config::RemoteBound::Enforce => "enforce",
            },
            rules: self
                .rules
                .iter()
                .map(|r| RuleStatus {
                    name: r.name.to_string(),
                    mode: r.mode.as_str(),
                    condition: describe_condition(&r.condition),
                    scope: r.scope.describe(),
                    action: r.action.describe(),
                })
                .collect(),
            active: self
                .active
                .iter()
                .map(|a| ActiveStatus {
                    journal_id: a.entry.id,
                    rule: a.entry.rule.clone(),
                    action: a.entry.action.clone(),
                    target: a.entry.target.clone(),
                    acted_unix_ms: a.entry.acted_unix_ms,
                    expires_unix_ms: a.entry.expires_unix_ms,
                    persist: a.entry.persist,
                })
                .collect(),
            rate_limits,
            armed_signals: armed,
            kernel,
            decisions,
            degrade: {
                let d = self.env.degrade.current();
                DegradeStatus {
                    profiler_frequency: d.profiler_frequency,
                    top_processes: d.top_processes,
                }
            },
            decision_path: {
                let (nice, threads) = crate::priority::current();
                DecisionPathStatus { nice, threads }
            },
            last_error: self.last_error.clone(),
        };
        self.env.state.set_enforcement(st);
        let healthy = self.journal.is_ok();
        self.env.state.set_component(
            "enforcement",
            ComponentStatus {
                healthy,
                status: if self.rules.is_empty() {
                    "idle".into()
                } else {
                    format!("{} ({} rules)", self.cfg.mode.as_str(), self.rules.len())
                },
                last_error: self.last_error.clone(),
                started: Some(self.env.state.started_at),
            },
        );
    }
}

pub(super) fn rules_kind(k: &str) -> &'static str {
    match k {
        "signal" => "signal",
        "freeze" => "freeze",
        "cpu_limit" => "cpu_limit",
        "rate_limit" => "rate_limit",
        "block" => "block",
        "degrade" => "degrade",
        _ => "other",
    }
}

pub(super) fn describe_condition(c: &Condition) -> String {
    match c {
        Condition::Threshold {
            signal,
            threshold,
            hold,
            ..
        } => {
            let (op, t) = match threshold {
                rules::Threshold::Above(t) => (">", t),
                rules::Threshold::Below(t) => ("<", t),
            };
            format!(
                "{signal}{} {op} {t} for {}",
                sample_syscall_text(c),
                humantime_serde::re::humantime::format_duration(*hold)
            )
        }
        Condition::Anomaly {
            signal, min_score, ..
        } => {
            format!(
                "anomaly on {signal}{} (score >= {min_score})",
                sample_syscall_text(c)
            )
        }
    }
}
