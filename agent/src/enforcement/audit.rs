//! Audit records: every decision (taken, or skipped: monitor mode, cooldown, rate cap,
//! allowlist, protected, already active; failed) and every undo, as one [`DecisionRecord`] that
//! goes three ways: an OTLP log record (`event.name` = `agent.decision`, through the exporter's
//! logs path), `/status` → `decisions` (recent, newest first), and the
//! `agent.enforcement.decisions` counters by rule and outcome (`metrics.rs`).

use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, KeyValue},
    logs::v1::{LogRecord, SeverityNumber},
};
use serde::Serialize;

use crate::export::resource::kv_value;

/// What became of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acted.
    Taken,
    /// Monitor mode: recorded what it would do, changed nothing.
    Monitor,
    /// The rule acted on this target less than its cooldown ago.
    Cooldown,
    /// The rule reached its actions per minute.
    RateCap,
    /// The target is on the allowlist.
    Allowlist,
    /// The target is always protected (the agent, pid 1, kernel threads, their cgroups, the
    /// root cgroup, an ancestor of other workloads).
    Protected,
    /// A limit of this kind is already in effect on the target.
    Active,
    /// The action failed (the reason says why); nothing stays changed.
    Failed,
    /// A limit was undone (TTL, shutdown, or a predecessor's expired limit at start).
    Undone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Taken => "taken",
            Outcome::Monitor => "monitor",
            Outcome::Cooldown => "cooldown",
            Outcome::RateCap => "rate_cap",
            Outcome::Allowlist => "allowlist",
            Outcome::Protected => "protected",
            Outcome::Active => "active",
            Outcome::Failed => "failed",
            Outcome::Undone => "undone",
        }
    }
}

/// The process (and cgroup) a decision was about.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TargetRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// One decision or undo.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// Sequence number of this agent run.
    pub seq: u64,
    pub time_unix_nano: u64,
    pub rule: String,
    /// The rule's effective mode (`monitor`, `enforce`).
    pub mode: &'static str,
    pub outcome: Outcome,
    /// Why it was skipped or failed; what an undo did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub scope: String,
    /// The condition that held: `process.syscall.rate 61234.5 > 50000 for 2s`.
    pub trigger: String,
    /// The signal's name and the observed value.
    pub signal: String,
    pub value: f64,
    /// What the action does (or would do): `signal SIGSTOP`, `freeze`, ...
    pub action: String,
    /// What it did (`taken`): `SIGSTOP sent to pid 4242`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub target: TargetRecord,
    /// The observation time of the value that fired the rule (the drain's kernel read, or the
    /// anomaly's observation).
    pub observed_unix_nano: u64,
    /// When the action was in effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acted_unix_nano: Option<u64>,
    /// `acted - observed`, seconds (the enforcement latency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_seconds: Option<f64>,
    /// When a limiting action is undone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_unix_nano: Option<u64>,
    /// The journal entry of a limiting action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_id: Option<u64>,
    /// Where the latency went (`taken`; `/status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<Stages>,
}

/// The stages of one taken decision, seconds since the observation (the agent's own clock):
/// the probe published the drain's activity, the deriver made signals of it, the engine
/// received them (for an anomaly: only this one, the others 0), the target was read and
/// checked (plan), the journal was written. The action was in effect at `latency_seconds`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Stages {
    /// The probe published the drain's activity (after attribution and names).
    pub published: f64,
    /// The signal deriver turned it into signals (`/proc` CPU and memory read).
    pub derived: f64,
    pub received: f64,
    pub planned: f64,
    pub journaled: f64,
}

fn s(k: &str, v: impl Into<String>) -> KeyValue {
    kv_value(k, any_value::Value::StringValue(v.into()))
}

fn i(k: &str, v: i64) -> KeyValue {
    kv_value(k, any_value::Value::IntValue(v))
}

fn d(k: &str, v: f64) -> KeyValue {
    kv_value(k, any_value::Value::DoubleValue(v))
}

impl DecisionRecord {
    /// The OTLP log record: `event.name` `agent.decision`, body the one-line summary.
    pub fn log_record(&self) -> LogRecord {
        let mut attrs = vec![
            s("agent.decision.rule", &self.rule),
            s("agent.decision.outcome", self.outcome.as_str()),
            s("agent.decision.mode", self.mode),
            s("agent.decision.action", &self.action),
            s("agent.decision.scope", &self.scope),
            s("agent.decision.trigger", &self.trigger),
            s("agent.decision.signal", &self.signal),
            d("agent.decision.value", self.value),
            i(
                "agent.decision.observed_time_unix_nano",
                self.observed_unix_nano as i64,
            ),
        ];
        if let Some(r) = &self.reason {
            attrs.push(s("agent.decision.reason", r));
        }
        if let Some(x) = &self.detail {
            attrs.push(s("agent.decision.detail", x));
        }
        if let Some(l) = self.latency_seconds {
            attrs.push(d("agent.decision.latency", l));
        }
        if let Some(e) = self.expires_unix_nano {
            attrs.push(i("agent.decision.expires_time_unix_nano", e as i64));
        }
        if let Some(j) = self.journal_id {
            attrs.push(i("agent.decision.journal_id", j as i64));
        }
        let t = &self.target;
        if let Some(p) = t.pid {
            attrs.push(i("process.pid", i64::from(p)));
        }
        if let Some(e) = &t.executable {
            attrs.push(s("process.executable.name", e));
        }
        if let Some(c) = &t.container_id {
            attrs.push(s("container.id", c));
        }
        if let Some(u) = &t.pod_uid {
            attrs.push(s("k8s.pod.uid", u));
        }
        if let Some(g) = &t.cgroup {
            attrs.push(s("agent.decision.cgroup", g));
        }
        let (sev, text) = match self.outcome {
            Outcome::Taken | Outcome::Undone => (SeverityNumber::Warn, "WARN"),
            Outcome::Failed => (SeverityNumber::Error, "ERROR"),
            _ => (SeverityNumber::Info, "INFO"),
        };
        LogRecord {
            time_unix_nano: self.time_unix_nano,
            observed_time_unix_nano: self.time_unix_nano,
            severity_number: sev as i32,
            severity_text: text.into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(self.summary())),
            }),
            attributes: attrs,
            event_name: "agent.decision".into(),
            ..Default::default()
        }
    }

    /// `rule stop-storm: taken: signal SIGSTOP on pid 42 (storm): process.syscall.rate ...`
    pub fn summary(&self) -> String {
        let mut who = String::new();
        if let Some(p) = self.target.pid {
            who.push_str(&format!(" pid {p}"));
        }
        if let Some(e) = &self.target.executable {
            who.push_str(&format!(" ({e})"));
        }
        if let Some(g) = &self.target.cgroup {
            who.push_str(&format!(" cgroup {g}"));
        }
        let mut s = format!(
            "rule {}: {}: {} on{}: {}",
            self.rule,
            self.outcome.as_str(),
            self.action,
            who,
            self.trigger
        );
        if let Some(r) = &self.reason {
            s.push_str(&format!(" ({r})"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_carry_the_decision() {
        let r = DecisionRecord {
            seq: 1,
            time_unix_nano: 5,
            rule: "stop-storm".into(),
            mode: "enforce",
            outcome: Outcome::Taken,
            reason: None,
            scope: "executable=storm".into(),
            trigger: "process.syscall.rate 60000 > 50000 for 2s".into(),
            signal: "process.syscall.rate".into(),
            value: 60000.0,
            action: "signal SIGSTOP".into(),
            detail: Some("SIGSTOP sent to pid 42".into()),
            target: TargetRecord {
                pid: Some(42),
                executable: Some("storm".into()),
                ..Default::default()
            },
            observed_unix_nano: 3,
            acted_unix_nano: Some(4),
            latency_seconds: Some(1e-9),
            expires_unix_nano: Some(8_000_000_004),
            journal_id: Some(1),
            stages: None,
        };
        let l = r.log_record();
        assert_eq!(l.event_name, "agent.decision");
        assert_eq!(l.severity_number, SeverityNumber::Warn as i32);
        let get = |k: &str| l.attributes.iter().find(|a| a.key == k).cloned();
        assert_eq!(
            get("agent.decision.outcome"),
            Some(s("agent.decision.outcome", "taken"))
        );
        assert_eq!(get("process.pid"), Some(i("process.pid", 42)));
        assert_eq!(
            r.summary(),
            "rule stop-storm: taken: signal SIGSTOP on pid 42 (storm): process.syscall.rate 60000 > 50000 for 2s"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["outcome"], "taken");
        assert_eq!(j["target"]["pid"], 42);
        assert!(j.get("reason").is_none());
    }
}
