//! The `self_protection:` section of the config: the agent's own budgets and how quickly it
//! steps between protection levels (checked by `config::validate` through [`check_field`]).

use std::time::Duration;

use humantime_serde::re::humantime::format_duration;
use serde::{Deserialize, Serialize};

/// Budgets and hysteresis of self-protection (hot-reloadable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfProtectionConfig {
    /// Watch the agent's cost and degrade when it is over budget. false: always `normal`.
    pub enabled: bool,
    /// How often the cost is measured (one evaluation of the budgets).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// CPU budget in millicores (thousandths of one core, as Kubernetes writes CPU): the
    /// agent's user + system time plus its eBPF programs' run time (`run_time_ns`, which the
    /// kernel charges to the traced workloads). 20 = 2 % of one core.
    pub max_cpu_millicores: u32,
    /// Resident memory budget (VmRSS), bytes.
    pub max_memory_bytes: u64,
    /// Consecutive evaluations over budget before stepping one level down.
    pub escalate_after: u32,
    /// Consecutive evaluations under `recover_below_percent` of every budget before stepping
    /// one level back up.
    pub recover_after: u32,
    /// Share of the budgets, in percent, under which an evaluation counts towards recovery.
    pub recover_below_percent: u32,
    /// Share of each interval, in percent, during which the kernel's eBPF run-time accounting
    /// (`BPF_ENABLE_STATS`) is on; it costs two clock reads per program run, so it is sampled.
    /// 0: not measured.
    pub bpf_stats_percent: u32,
}

impl Default for SelfProtectionConfig {
    fn default() -> Self {
        SelfProtectionConfig {
            enabled: true,
            interval: Duration::from_secs(5),
            max_cpu_millicores: 20,
            max_memory_bytes: 64 * 1024 * 1024,
            escalate_after: 2,
            recover_after: 6,
            recover_below_percent: 70,
            bpf_stats_percent: 20,
        }
    }
}

const INTERVAL: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(600));
const MILLICORES: (u64, u64) = (1, 64_000);
const MEMORY: (u64, u64) = (8 * 1024 * 1024, 1 << 40);
const STEPS: (u64, u64) = (1, 1000);
const PERCENT: (u64, u64) = (0, 100);

fn numbers(l: (u64, u64), example: &str) -> String {
    format!("a whole number from {} to {}, e.g. {example}", l.0, l.1)
}

/// What a `self_protection.*` leaf field accepts, phrased to follow "use " (`None`: not one).
pub fn allowed(path: &str) -> Option<String> {
    Some(match path {
        "self_protection.enabled" => "true or false".to_string(),
        "self_protection.interval" => format!(
            "a duration from {} to {}, e.g. 5s",
            format_duration(INTERVAL.0),
            format_duration(INTERVAL.1)
        ),
        "self_protection.max_cpu_millicores" => numbers(MILLICORES, "20 (2 % of one core)"),
        "self_protection.max_memory_bytes" => numbers(MEMORY, "67108864 (64 MiB)"),
        "self_protection.escalate_after" | "self_protection.recover_after" => numbers(STEPS, "3"),
        "self_protection.recover_below_percent" => numbers((1, 100), "70"),
        "self_protection.bpf_stats_percent" => numbers(PERCENT, "20"),
        _ => return None,
    })
}

fn in_range(n: u64, l: (u64, u64)) -> Result<(), String> {
    if n < l.0 || n > l.1 {
        return Err(format!("{n} is out of range"));
    }
    Ok(())
}

/// Checks one `self_protection.*` field (the section and unconstrained fields pass).
pub fn check_field(c: &SelfProtectionConfig, path: &str) -> Result<(), String> {
    match path {
        "self_protection.interval" => {
            if c.interval < INTERVAL.0 || c.interval > INTERVAL.1 {
                return Err(format!("{} is out of range", format_duration(c.interval)));
            }
            Ok(())
        }
        "self_protection.max_cpu_millicores" => in_range(c.max_cpu_millicores.into(), MILLICORES),
        "self_protection.max_memory_bytes" => in_range(c.max_memory_bytes, MEMORY),
        "self_protection.escalate_after" => in_range(c.escalate_after.into(), STEPS),
        "self_protection.recover_after" => in_range(c.recover_after.into(), STEPS),
        "self_protection.recover_below_percent" => {
            in_range(c.recover_below_percent.into(), (1, 100))
        }
        "self_protection.bpf_stats_percent" => in_range(c.bpf_stats_percent.into(), PERCENT),
        _ => Ok(()),
    }
}

#[cfg(test)]
const LEAVES: &[&str] = &[
    "self_protection.enabled",
    "self_protection.interval",
    "self_protection.max_cpu_millicores",
    "self_protection.max_memory_bytes",
    "self_protection.escalate_after",
    "self_protection.recover_after",
    "self_protection.recover_below_percent",
    "self_protection.bpf_stats_percent",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_every_leaf_has_a_hint() {
        let c = SelfProtectionConfig::default();
        for f in LEAVES {
            assert_eq!(check_field(&c, f), Ok(()), "{f}");
            assert!(allowed(f).is_some(), "{f}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let mut c = SelfProtectionConfig {
            max_cpu_millicores: 0,
            ..Default::default()
        };
        assert!(check_field(&c, "self_protection.max_cpu_millicores").is_err());
        c.interval = Duration::from_millis(10);
        assert!(check_field(&c, "self_protection.interval").is_err());
        c.bpf_stats_percent = 101;
        assert!(check_field(&c, "self_protection.bpf_stats_percent").is_err());
        c.recover_below_percent = 0;
        assert!(check_field(&c, "self_protection.recover_below_percent").is_err());
    }
}
