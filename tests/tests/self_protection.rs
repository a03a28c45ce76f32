//! Self-protection end to end: a tiny CPU budget drives the agent down the levels one step at a
//! time (profiler off at emergency), a budget raised by SIGHUP brings it back up with hysteresis;
//! level, kernel-side costs and changes on /status and /metrics.

use std::time::Duration;

use integration_tests::{require_root, Agent};

const BASE: &str = "probes:
  syscalls: {interval: 1s, aggregation: process}
  network: {interval: 1s}
  profiler: {frequency: 99}
self_protection:
  interval: 1s
  escalate_after: 1
  recover_after: 2
  bpf_stats_percent: 50
";

fn level(a: &Agent) -> String {
    a.status()["self_protection"]["level"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The change records (newest first) as (time ns, from, to).
fn changes(a: &Agent) -> Vec<(u64, String, String)> {
    a.status()["self_protection"]["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["time_unix_nano"].as_u64().unwrap(),
                c["from"].as_str().unwrap().to_string(),
                c["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The (from, to) steps of `changes`, oldest first, and the smallest gap between two, in ns.
fn steps(changes: &[(u64, String, String)]) -> (Vec<(&str, &str)>, u64) {
    let steps = changes
        .iter()
        .rev()
        .map(|(_, f, t)| (f.as_str(), t.as_str()))
        .collect();
    let gap = changes
        .windows(2)
        .map(|w| w[0].0 - w[1].0)
        .min()
        .unwrap_or(u64::MAX);
    (steps, gap)
}

#[test]
fn over_budget_degrades_step_by_step_and_recovers_with_hysteresis() {
    require_root();
    // 1 millicore: a debug agent with three probes at 1 s and the profiler at 99 Hz is far over.
    let tight = format!("{BASE}  max_cpu_millicores: 1\n");
    let agent = Agent::start_with(&tight, |c| {
        c.env("AGENT_SELF_PROTECTION_ENABLED", "true");
    });
    agent.wait_for(|a| level(a) == "emergency", "self-protection at emergency");
    let s = agent.status();
    let sp = &s["self_protection"];
    // One step at a time, each over budget.
    let down = changes(&agent);
    let (down_steps, gap) = steps(&down);
    assert_eq!(
        down_steps,
        vec![
            ("normal", "light"),
            ("light", "moderate"),
            ("moderate", "heavy"),
            ("heavy", "emergency")
        ],
        "{sp}"
    );
    // escalate_after 1: one evaluation (1 s interval) between steps at least (>= 0.9 s, timer
    // slack allowed).
    assert!(gap >= 900_000_000, "steps {gap} ns apart: {sp}");
    assert_eq!(
        sp["shed"].as_array().unwrap().last().unwrap(),
        "syscall top_processes at most 5"
    );
    assert!(sp["pressure"].as_f64().unwrap() > 1.0, "{sp}");
    // The kernel side is measured: our programs and maps, their memory and run time.
    assert!(sp["kernel"]["programs"].as_u64().unwrap() >= 3, "{sp}");
    assert!(sp["kernel"]["maps"].as_u64().unwrap() >= 3, "{sp}");
    assert!(
        sp["kernel"]["map_bytes"].as_u64().unwrap() > 1 << 20,
        "{sp}"
    );
    assert!(sp["bpf_cpu_millicores"].as_f64().is_some(), "{sp}");
    // Emergency turns the profiler off; the syscall and network probes keep running.
    agent.wait_for(
        |a| a.status()["probes"]["profiler"]["state"] == "disabled",
        "profiler shed at emergency",
    );
    assert_eq!(s["probes"]["syscalls"]["state"], "attached", "{s}");
    let m = agent.metrics();
    let gauge = |name: &str| {
        m.iter()
            .find(|x| x.name == name)
            .map(|x| x.value)
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert_eq!(gauge("agent_self_protection_level"), 4.0);
    assert!(m
        .iter()
        .any(|x| x.name == "agent_ebpf_memory_bytes" && x.value > 0.0));

    // Each change is an OTLP log record (local logs.jsonl: no collector configured).
    agent.wait_for(
        |a| {
            std::fs::read_to_string(a.dir.join("out/logs.jsonl"))
                .map(|t| t.matches("agent.self_protection.level_change").count() >= 4)
                .unwrap_or(false)
        },
        "four level_change log records in logs.jsonl",
    );

    // A budget the agent cannot exceed: back up one level per two evaluations well under it.
    std::fs::write(
        &agent.config,
        format!("{BASE}  max_cpu_millicores: 64000\n  max_memory_bytes: 1099511627776\n"),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for(|a| level(a) == "normal", "self-protection back to normal");
    let all = changes(&agent);
    let (up_steps, gap) = steps(&all[..4]);
    assert_eq!(
        up_steps,
        vec![
            ("emergency", "heavy"),
            ("heavy", "moderate"),
            ("moderate", "light"),
            ("light", "normal")
        ]
    );
    // recover_after 2: two evaluations between steps back up.
    assert!(gap >= 1_800_000_000, "recovery steps {gap} ns apart");
    agent.wait_for(
        |a| a.status()["probes"]["profiler"]["state"] == "attached",
        "profiler back at normal",
    );
}

/// Off (the test default): no level is ever reported past normal whatever the cost, and the
/// section says so.
#[test]
fn disabled_reports_normal() {
    require_root();
    let agent = Agent::start(&format!(
        "{BASE}  max_cpu_millicores: 1\n  enabled: false\n"
    ));
    agent.wait_for(
        |a| a.status()["self_protection"]["enabled"] == false,
        "self_protection section",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(level(&agent), "normal");
    assert!(changes(&agent).is_empty());
}
