//! `bench enforce`: the time from the observation that fires a rule to its action in effect,
//! p50/p99 per action kind. The release agent runs one rule per action (SIGSTOP from userspace,
//! cgroup freeze, connect block, egress rate limit), each on a syscall storm in its own cgroup
//! v2 (`enf-bench-*`), firing again after each TTL + cooldown (1 s each) for the whole run. The
//! four rules run side by side in one agent, so no action kind always runs first or alone.
//! The storms keep every CPU busy, so the decision path competes with what it judges: the
//! agent runs at each `enforcement.nice` of [`NICES`] in turn (rounds, order rotated), and the
//! per-round ratio of the latencies shows what the priority is worth.
//!
//! The figure is the agent's own: `latency_seconds` of each `taken` decision on `/status`,
//! from the drain's kernel read (the observation) to the action in effect (the signal sent,
//! `cgroup.events` frozen, the block or limit map entry and link in place). It excludes the
//! drain interval itself (a threshold is only known at the drain).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{
    enforce_rate,
    harness::{noise_note, ratios, rotation, Spread},
    host::{build_release, ensure_tracefs, http_body, start_agent_on},
};
use crate::{build::bin_path, setup};

const ACTIONS: [(&str, &str); 4] = [
    ("signal", "{type: signal, signal: SIGSTOP}"),
    ("freeze", "{type: freeze}"),
    ("block", "{type: block, peers: [192.0.2.1/32], ports: [9]}"),
    (
        "rate_limit",
        "{type: rate_limit, egress: {bytes_per_second: 1000000}}",
    ),
];

fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .context("no cgroup2 mount")
}

/// The bench's cgroups and storms; everything killed and removed on drop.
struct Storms {
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Storms {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.dirs {
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The bench's agent config: only the syscall probe (1 s drains, per process) and `rules`
/// (YAML list items) in enforce mode.
fn write_config(path: &Path, nice: i32, rules: &str) -> Result<PathBuf> {
    std::fs::write(
        path,
        format!(
            "probes:\n  syscalls:\n    interval: 1s\n    aggregation: process\n  network:\n    \
             enabled: false\n  profiler:\n    enabled: false\nenforcement:\n  mode: enforce\n  \
             nice: {nice}\n  recent_decisions: 10000\n  rules:\n{rules}"
        ),
    )?;
    Ok(path.to_path_buf())
}

fn storm_in(storm: &Path, dir: &Path) -> Result<Child> {
    let procs = dir.join("cgroup.procs");
    let mut cmd = Command::new(storm);
    cmd.args(["getppid", "100000000000"])
        .stdout(Stdio::null())
        .stdin(Stdio::null());
    // SAFETY: the child only writes its own pid ("0") to the cgroup before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || std::fs::write(&procs, "0"));
    }
    cmd.spawn().context("start a storm")
}

/// The decision path's nice values compared side by side (`enforcement.nice`): the agent's
/// default, and the workloads' own priority.
const NICES: [i32; 2] = [-10, 0];

/// Latency rounds per nice value (each `seconds / LATENCY_ROUNDS` long).
const LATENCY_ROUNDS: usize = 3;

/// The stages of a taken decision on `/status`, in order: ms since the observation.
const STAGES: [&str; 5] = ["published", "derived", "received", "planned", "journaled"];

/// One `taken` decision: its rule, latency and [`STAGES`], ms.
struct Taken {
    rule: String,
    latency: f64,
    stages: [Option<f64>; STAGES.len()],
}

/// One agent at `nice` with the four rules on four storms for `seconds`: its taken decisions,
/// and every decision counted by (rule, outcome).
fn latency_round(
    root: &Path,
    tmp: &Path,
    storm: &Path,
    nice: i32,
    seconds: u64,
    tag: &str,
    outcomes: &mut BTreeMap<(String, String), u64>,
) -> Result<Vec<Taken>> {
    let mut storms = Storms {
        dirs: Vec::new(),
        children: Vec::new(),
    };
    let mut rules = String::new();
    for (kind, action) in ACTIONS {
        let path = format!("/enf-bench-{kind}-{}-{tag}", std::process::id());
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        storms.dirs.push(dir);
        rules.push_str(&format!(
            "    - name: {kind}\n      when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{cgroup: {path}}}\n      action: {action}\n      ttl: 1s\n      cooldown: 1s\n      \
             max_actions_per_minute: 60\n"
        ));
    }
    let config = write_config(&tmp.join(format!("agent-{tag}.yaml")), nice, &rules)?;
    let (agent, port) = start_agent_on(&tmp.join(format!("output-{tag}")), Some(&config))?;
    for dir in storms.dirs.clone() {
        storms.children.push(storm_in(storm, &dir)?);
    }
    thread::sleep(Duration::from_secs(seconds));
    let status = http_body(port, "/status").context("GET /status")?;
    drop(storms);
    agent.stop()?;
    let v: serde_json::Value = serde_json::from_str(&status)?;
    let mut taken = Vec::new();
    for d in v["decisions"].as_array().into_iter().flatten() {
        let rule = d["rule"].as_str().unwrap_or("?").to_string();
        let outcome = d["outcome"].as_str().unwrap_or("?").to_string();
        *outcomes.entry((rule.clone(), outcome.clone())).or_default() += 1;
        if outcome != "taken" {
            continue;
        }
        if let Some(l) = d["latency_seconds"].as_f64() {
            let stage = |k: &str| d["stages"][k].as_f64().map(|x| x * 1e3);
            taken.push(Taken {
                rule,
                latency: l * 1e3,
                stages: STAGES.map(stage),
            });
        }
    }
    Ok(taken)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The latency table of one condition: per action kind n, p50, p99, min, max; then where the
/// time went (the stages' p50 / p99).
fn print_condition(nice: i32, taken: &[Taken]) {
    println!("\nnice {nice}: observation -> action in effect, ms");
    print!(
        "{:<12} {:>5} {:>8} {:>8} {:>8} {:>8} ",
        "action", "n", "p50", "p99", "min", "max"
    );
    for st in STAGES {
        print!(" {st:>15}");
    }
    println!();
    for kind in ACTIONS.iter().map(|(k, _)| *k).chain(["all"]) {
        let of: Vec<&Taken> = taken
            .iter()
            .filter(|t| kind == "all" || t.rule == kind)
            .collect();
        let l = sorted(of.iter().map(|t| t.latency).collect());
        if l.is_empty() {
            println!("{kind:<12} {:>5} (no action taken)", 0);
            continue;
        }
        let cell = |i: usize| {
            let v = sorted(of.iter().filter_map(|t| t.stages[i]).collect());
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.1} / {:.1}", quantile(&v, 0.5), quantile(&v, 0.99))
            }
        };
        print!(
            "{kind:<12} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} ",
            l.len(),
            quantile(&l, 0.5),
            quantile(&l, 0.99),
            l[0],
            l[l.len() - 1],
        );
        for i in 0..STAGES.len() {
            print!(" {:>15}", cell(i));
        }
        println!();
    }
}

pub(super) fn run(seconds: u64, rounds: usize) -> Result<()> {
    setup::ensure(true)?;
    build_release()?;
    ensure_tracefs();
    let root = cgroup2_root()?;
    let tmp = std::env::temp_dir().join(format!("agent-bench-enforce-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let storm = tmp.join("enfbench");
    std::fs::copy(bin_path("release", "syscall-workload"), &storm)?;
    let per_round = (seconds / LATENCY_ROUNDS as u64).max(8);
    println!(
        "enforce: 4 rules (one per action) firing on 4 syscall storms (every CPU busy); the \
         decision path at nice {NICES:?} side by side, {LATENCY_ROUNDS} rounds of {per_round} s \
         each, order rotated..."
    );
    let mut taken: Vec<Vec<Taken>> = NICES.iter().map(|_| Vec::new()).collect();
    // Per round and condition: the p50 and p99 of every action of the round.
    let mut p50s: Vec<Vec<f64>> = NICES.iter().map(|_| Vec::new()).collect();
    let mut p99s: Vec<Vec<f64>> = NICES.iter().map(|_| Vec::new()).collect();
    let mut outcomes = BTreeMap::new();
    for round in 0..LATENCY_ROUNDS {
        for c in rotation(round, NICES.len()) {
            let tag = format!("r{round}n{c}");
            let t = latency_round(
                &root,
                &tmp,
                &storm,
                NICES[c],
                per_round,
                &tag,
                &mut outcomes,
            )?;
            let l = sorted(t.iter().map(|t| t.latency).collect());
            let (p50, p99) = if l.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                (quantile(&l, 0.5), quantile(&l, 0.99))
            };
            println!(
                "  round {round} nice {:>3}: {:>3} actions, p50 {p50:.1} ms, p99 {p99:.1} ms (load {})",
                NICES[c],
                l.len(),
                load_average()
            );
            p50s[c].push(p50);
            p99s[c].push(p99);
            taken[c].extend(t);
        }
    }
    println!(
        "\n(agent's own timestamps: the drain's kernel read to the action in effect; stages, \
         p50 / p99 ms since the observation: published = the probe published the drain's \
         activity, derived = the deriver made signals of it, received = the engine got them, \
         planned = target read and checked, journaled = the journal written; p99 with fewer \
         than 100 actions is the largest but one or the maximum: read it as such)"
    );
    for (c, nice) in NICES.iter().enumerate() {
        print_condition(*nice, &taken[c]);
    }
    for (name, per) in [("p50", &p50s), ("p99", &p99s)] {
        let r = Spread::of(&ratios(&per[1], &per[0]));
        println!(
            "\n{name} at nice {} / at nice {} per round: {} ({})",
            NICES[1],
            NICES[0],
            r.show(2),
            noise_note(&r.map(|x| x - 1.0))
        );
    }
    for (c, nice) in NICES.iter().enumerate() {
        let all = sorted(taken[c].iter().map(|t| t.latency).collect());
        if !all.is_empty() {
            println!(
                "goal p99 <= 100 ms at nice {nice}: {} (p99 of {} actions {:.1} ms)",
                if quantile(&all, 0.99) <= 100.0 {
                    "met"
                } else {
                    "NOT met"
                },
                all.len(),
                quantile(&all, 0.99)
            );
        }
    }
    println!("decisions by rule and outcome: {outcomes:?}");
    let rate = rate_part(&root, &tmp, &storm, rounds);
    let _ = std::fs::remove_dir_all(&tmp);
    rate
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The rate limiter's cost and accuracy (`enforce_rate.rs`), on an agent of its own.
fn rate_part(root: &Path, tmp: &Path, storm: &Path, rounds: usize) -> Result<()> {
    let s = enforce_rate::setup(root)?;
    let storms = Storms {
        dirs: s.dirs.clone(),
        children: Vec::new(),
    };
    let config = write_config(
        &tmp.join("agent-rate.yaml"),
        NICES[0],
        &enforce_rate::rules(&s.paths),
    )?;
    let (agent, port) = start_agent_on(&tmp.join("output-rate"), Some(&config))?;
    let r = enforce_rate::measure(port, &s, rounds, &|d| storm_in(storm, d));
    agent.stop()?;
    drop(storms);
    r
}
