//! What self-protection shows: the `/status` section, the metric batch (level and kernel-side
//! costs) and the OTLP log record of a level change.

use std::{collections::VecDeque, time::SystemTime};

use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue},
    logs::v1::{LogRecord, SeverityNumber},
};
use serde::Serialize;

use super::{cost::KernelCost, level::Level};
use crate::{
    export::resource::kv_value,
    metrics::model::{attr, Batch, Desc, Family, Kind, Point, Value},
};

/// The source name of the metric batch.
pub const SOURCE: &str = "self_protection";
/// Level changes `/status` keeps, newest first.
pub const RECENT_CHANGES: usize = 20;

pub const LEVEL: Desc = Desc {
    name: "agent.self_protection.level",
    unit: "{level}",
    help: "Self-protection level: 0 normal, 1 light, 2 moderate, 3 heavy, 4 emergency.",
    kind: Kind::Gauge,
};
pub const PRESSURE: Desc = Desc {
    name: "agent.self_protection.pressure",
    unit: "1",
    help: "The agent's cost over its tightest budget (CPU or memory) at the last evaluation; above 1 is over budget.",
    kind: Kind::Gauge,
};
pub const BPF_CPU: Desc = Desc {
    name: "agent.ebpf.cpu.utilization",
    unit: "1",
    help: "CPU (in cores) the agent's eBPF programs ran for, charged to the traced workloads; measured in a sampled window of each interval.",
    kind: Kind::Gauge,
};
pub const BPF_MEMORY: Desc = Desc {
    name: "agent.ebpf.memory",
    unit: "By",
    help: "Kernel memory charged for the agent's eBPF maps and programs (fdinfo memlock), by ebpf.object (map, program).",
    kind: Kind::Gauge,
};

/// One level change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LevelChange {
    pub time_unix_nano: u64,
    pub from: Level,
    pub to: Level,
    /// e.g. `cpu 43.0m over 20m budget` or `within 70% of budgets`.
    pub reason: String,
}

/// `/status` → `self_protection`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SelfProtectionStatus {
    pub enabled: bool,
    pub level: Level,
    /// What the level sheds (`degrade::shed`).
    pub shed: Vec<&'static str>,
    /// Cost over the tightest budget at the last evaluation (above 1: over budget).
    pub pressure: f64,
    /// The agent's user + system CPU, millicores, over the last interval.
    pub cpu_millicores: f64,
    /// Its eBPF programs' run time, millicores (`None`: not measured, see `bpf_stats_error`).
    pub bpf_cpu_millicores: Option<f64>,
    pub rss_bytes: u64,
    pub max_cpu_millicores: u32,
    pub max_memory_bytes: u64,
    pub kernel: KernelCost,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_stats_error: Option<String>,
    /// Newest first, at most [`RECENT_CHANGES`].
    pub changes: VecDeque<LevelChange>,
}

/// The metric batch of one evaluation.
pub fn batch(s: &SelfProtectionStatus, start: SystemTime, now: SystemTime) -> Batch {
    let point = |labels, value| Point {
        labels,
        value,
        start_time: start,
    };
    let mut families = vec![
        Family {
            desc: LEVEL,
            points: vec![point(Vec::new(), Value::Gauge(s.level.index().into()))],
        },
        Family {
            desc: PRESSURE,
            points: vec![point(Vec::new(), Value::Gauge(s.pressure))],
        },
        Family {
            desc: BPF_MEMORY,
            points: vec![
                point(
                    vec![attr("ebpf.object", "map")],
                    Value::Gauge(s.kernel.map_bytes as f64),
                ),
                point(
                    vec![attr("ebpf.object", "program")],
                    Value::Gauge(s.kernel.program_bytes as f64),
                ),
            ],
        },
    ];
    if let Some(m) = s.bpf_cpu_millicores {
        families.push(Family {
            desc: BPF_CPU,
            points: vec![point(Vec::new(), Value::Gauge(m / 1000.0))],
        });
    }
    Batch {
        source: SOURCE.to_string(),
        time: now,
        families,
    }
}

/// The OTLP log record of a level change: `event.name` = `agent.self_protection.level_change`,
/// attributes `agent.self_protection.level` (new), `.previous_level`, `.reason`, `.pressure`.
pub fn change_record(c: &LevelChange, pressure: f64) -> LogRecord {
    let worse = c.to > c.from;
    LogRecord {
        time_unix_nano: c.time_unix_nano,
        observed_time_unix_nano: c.time_unix_nano,
        severity_number: if worse {
            SeverityNumber::Warn as i32
        } else {
            SeverityNumber::Info as i32
        },
        severity_text: if worse { "WARN" } else { "INFO" }.to_string(),
        event_name: "agent.self_protection.level_change".to_string(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(format!(
                "self-protection {} -> {}: {}",
                c.from.as_str(),
                c.to.as_str(),
                c.reason
            ))),
        }),
        attributes: vec![
            kv_value(
                "agent.self_protection.level",
                any_value::Value::StringValue(c.to.as_str().to_string()),
            ),
            kv_value(
                "agent.self_protection.previous_level",
                any_value::Value::StringValue(c.from.as_str().to_string()),
            ),
            kv_value(
                "agent.self_protection.reason",
                any_value::Value::StringValue(c.reason.clone()),
            ),
            kv_value(
                "agent.self_protection.pressure",
                any_value::Value::DoubleValue(pressure),
            ),
        ],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn a_change_record_names_both_levels_and_is_a_warning_when_worse() {
        let c = LevelChange {
            time_unix_nano: 7,
            from: Level::Normal,
            to: Level::Light,
            reason: "cpu 40.0m over 20m budget".into(),
        };
        let r = change_record(&c, 2.0);
        assert_eq!(r.event_name, "agent.self_protection.level_change");
        assert_eq!(r.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(r.time_unix_nano, 7);
        let get = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            get("agent.self_protection.level"),
            Some(any_value::Value::StringValue("light".into()))
        );
        let back = change_record(
            &LevelChange {
                from: Level::Light,
                to: Level::Normal,
                ..c
            },
            0.1,
        );
        assert_eq!(back.severity_number, SeverityNumber::Info as i32);
    }

    #[test]
    fn the_batch_carries_the_level_and_bpf_cpu_only_when_measured() {
        let mut s = SelfProtectionStatus {
            level: Level::Heavy,
            ..Default::default()
        };
        let b = batch(&s, UNIX_EPOCH, UNIX_EPOCH);
        assert_eq!(b.families[0].points[0].value, Value::Gauge(3.0));
        assert!(b.families.iter().all(|f| f.desc.name != BPF_CPU.name));
        s.bpf_cpu_millicores = Some(5.0);
        let b = batch(&s, UNIX_EPOCH, UNIX_EPOCH);
        let f = b
            .families
            .iter()
            .find(|f| f.desc.name == BPF_CPU.name)
            .unwrap();
        assert_eq!(f.points[0].value, Value::Gauge(0.005));
    }
}
