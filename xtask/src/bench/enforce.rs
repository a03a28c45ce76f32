//! `bench enforce`: the time from the observation that fires a rule to its action in effect,
//! p50/p99 per action kind. The release agent runs one rule per action (SIGSTOP from userspace,
//! cgroup freeze, connect block, egress rate limit), each on a syscall storm in its own cgroup
//! v2 (`enf-bench-*`), firing again after each TTL + cooldown (1 s each) for the whole run. The
//! four rules run side by side in one agent, so no action kind always runs first or alone.
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
    harness::Spread,
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
fn write_config(path: &Path, rules: &str) -> Result<PathBuf> {
    std::fs::write(
        path,
        format!(
            "probes:\n  syscalls:\n    interval: 1s\n    aggregation: process\n  network:\n    \
             enabled: false\n  profiler:\n    enabled: false\nenforcement:\n  mode: enforce\n  \
             recent_decisions: 10000\n  rules:\n{rules}"
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

pub(super) fn run(seconds: u64, rounds: usize) -> Result<()> {
    setup::ensure(true)?;
    build_release()?;
    ensure_tracefs();
    let root = cgroup2_root()?;
    let tmp = std::env::temp_dir().join(format!("agent-bench-enforce-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let storm = tmp.join("enfbench");
    std::fs::copy(bin_path("release", "syscall-workload"), &storm)?;
    let mut storms = Storms {
        dirs: Vec::new(),
        children: Vec::new(),
    };
    let mut rules = String::new();
    for (kind, action) in ACTIONS {
        let path = format!("/enf-bench-{kind}-{}", std::process::id());
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        storms.dirs.push(dir);
        rules.push_str(&format!(
            "    - name: {kind}\n      when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{cgroup: {path}}}\n      action: {action}\n      ttl: 1s\n      cooldown: 1s\n      \
             max_actions_per_minute: 60\n"
        ));
    }
    let config = write_config(&tmp.join("agent.yaml"), &rules)?;
    let (agent, port) = start_agent_on(&tmp.join("output"), Some(&config))?;
    for dir in storms.dirs.clone() {
        storms.children.push(storm_in(&storm, &dir)?);
    }
    println!("enforce: 4 rules (one per action) firing on syscall storms for {seconds} s...");
    thread::sleep(Duration::from_secs(seconds));
    let status = http_body(port, "/status").context("GET /status")?;
    drop(storms);
    agent.stop()?;
    let v: serde_json::Value = serde_json::from_str(&status)?;
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // Per rule: the stages (received, planned, journaled), ms since the observation.
    let mut stages: BTreeMap<String, [Vec<f64>; 3]> = BTreeMap::new();
    let mut outcomes: BTreeMap<(String, String), u64> = BTreeMap::new();
    for d in v["decisions"].as_array().into_iter().flatten() {
        let rule = d["rule"].as_str().unwrap_or("?").to_string();
        let outcome = d["outcome"].as_str().unwrap_or("?").to_string();
        *outcomes.entry((rule.clone(), outcome.clone())).or_default() += 1;
        if outcome == "taken" {
            if let Some(l) = d["latency_seconds"].as_f64() {
                by.entry(rule.clone()).or_default().push(l * 1e3);
            }
            let st = stages.entry(rule).or_default();
            for (i, k) in ["received", "planned", "journaled"].iter().enumerate() {
                if let Some(x) = d["stages"][k].as_f64() {
                    st[i].push(x * 1e3);
                }
            }
        }
    }
    println!(
        "\nobservation -> action in effect, ms (agent's own timestamps; {seconds} s run, machine \
         load shared with other builds):"
    );
    println!(
        "{:<12} {:>5} {:>8} {:>8} {:>8} {:>8}",
        "action", "n", "p50", "p99", "min", "max"
    );
    for (kind, _) in ACTIONS {
        let mut l = by.remove(kind).unwrap_or_default();
        if l.is_empty() {
            println!("{kind:<12} {:>5} (no action taken)", 0);
            continue;
        }
        l.sort_by(f64::total_cmp);
        let s = Spread::of(&l);
        println!(
            "{kind:<12} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            l.len(),
            quantile(&l, 0.5),
            quantile(&l, 0.99),
            s.min,
            s.max
        );
    }
    println!(
        "\nwhere the time went: p50 / p99 of each stage, ms since the observation (received: the \
         engine got the drain's signals; planned: target read and checked; journaled: the \
         journal synced; then the action):"
    );
    println!(
        "{:<12} {:>17} {:>17} {:>17}",
        "action", "received", "planned", "journaled"
    );
    for (kind, _) in ACTIONS {
        let Some(st) = stages.get_mut(kind) else {
            continue;
        };
        let cell = |v: &mut Vec<f64>| {
            if v.is_empty() {
                return "-".to_string();
            }
            v.sort_by(f64::total_cmp);
            format!("{:.2} / {:.2}", quantile(v, 0.5), quantile(v, 0.99))
        };
        let [a, b, c] = st;
        println!("{kind:<12} {:>17} {:>17} {:>17}", cell(a), cell(b), cell(c));
    }
    println!(
        "\np99 with fewer than 100 actions is the largest but one or the maximum: read it as such."
    );
    println!("decisions by rule and outcome: {outcomes:?}");
    let rate = rate_part(&root, &tmp, &storm, rounds);
    let _ = std::fs::remove_dir_all(&tmp);
    rate
}

/// The rate limiter's cost and accuracy (`enforce_rate.rs`), on an agent of its own.
fn rate_part(root: &Path, tmp: &Path, storm: &Path, rounds: usize) -> Result<()> {
    let s = enforce_rate::setup(root)?;
    let storms = Storms {
        dirs: s.dirs.clone(),
        children: Vec::new(),
    };
    let config = write_config(&tmp.join("agent-rate.yaml"), &enforce_rate::rules(&s.paths))?;
    let (agent, port) = start_agent_on(&tmp.join("output-rate"), Some(&config))?;
    let r = enforce_rate::measure(port, &s, rounds, &|d| storm_in(storm, d));
    agent.stop()?;
    drop(storms);
    r
}
