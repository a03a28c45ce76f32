//! `bench profiler`: every CPU busy (`hotspots`), bare and under the profiler in each mode, in
//! an order rotated each round; slowdowns computed per round against that round's bare run;
//! then each mode's kernel cost per sample.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::{
    harness::{noise_note, rotation, verdict, Spread},
    host::{
        build_release, children_cpu_seconds, ensure_tracefs, online_cpus, peak_rss, program_costs,
        start_agent, thread_cpu_ns, thread_cpu_seconds_since,
    },
};
use crate::{
    setup,
    util::{self, root},
};

/// The profiler bench's conditions: label, sampling frequency (Hz) and mode.
const PROFILER_CONDITIONS: [(&str, u32, &str); 3] = [
    ("19 Hz aggregate", 19, "aggregate"),
    ("99 Hz aggregate", 99, "aggregate"),
    ("99 Hz stream", 99, "stream"),
];

/// Compiles `tests/workloads/hotspots.c` into `dir` (frame pointers all the way, so the
/// profiler walks its stacks as it would in production).
pub(super) fn build_hotspots(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("hotspots");
    util::run(
        Command::new("cc")
            .args([
                "-O2",
                "-g",
                "-pthread",
                "-Wl,--build-id",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
                "-o",
            ])
            .arg(&bin)
            .arg(root().join("tests/workloads/hotspots.c")),
    )?;
    Ok(bin)
}

/// One `hotspots` run.
#[derive(Clone, Copy)]
pub(super) struct HotspotsRun {
    /// Inner iterations (hot_three's and hot_one's together) per second.
    rate: f64,
    /// Inner iterations per CPU second of the workload: what a neighbour's CPU use does not
    /// move. The sampling interrupt and the programs it runs are charged to the interrupted
    /// task (this kernel has no IRQ time accounting), so the profiler's cost is in it.
    cpu_rate: f64,
    /// Wall seconds the run took.
    wall: f64,
}

/// Runs `hotspots` for `seconds` on `threads` threads.
pub(super) fn hotspots(bin: &Path, seconds: u64, threads: usize) -> Result<HotspotsRun> {
    let started = Instant::now();
    let cpu_before = children_cpu_seconds();
    let out = Command::new(bin)
        .args([seconds.to_string(), threads.to_string()])
        .output()
        .context("run hotspots")?;
    let cpu = children_cpu_seconds() - cpu_before;
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    let (Some(three), Some(one)) = (field("hot_three_iters"), field("hot_one_iters")) else {
        bail!("hotspots printed no result ({}): {text}", out.status);
    };
    Ok(HotspotsRun {
        rate: (three + one) / seconds as f64,
        cpu_rate: (three + one) / cpu.max(1e-9),
        wall,
    })
}

pub(super) fn run(seconds: u64, rounds: usize) -> Result<()> {
    setup::ensure(true)?;
    build_release()?;
    ensure_tracefs();
    let dir = std::env::temp_dir().join("agent-bench-profiler");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = profiler_in(&dir, seconds, rounds);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub(super) fn profiler_in(dir: &Path, seconds: u64, rounds: usize) -> Result<()> {
    let cpus = online_cpus();
    let bin = build_hotspots(dir)?;
    let out_dir = dir.join("output");
    let configs: Vec<PathBuf> = PROFILER_CONDITIONS
        .iter()
        .map(|(_, frequency, mode)| {
            let path = dir.join(format!("profiler-{frequency}-{mode}.yaml"));
            std::fs::write(
                &path,
                format!(
                    "probes:\n  syscalls:\n    enabled: false\n  network:\n    enabled: false\n  \
                     profiler:\n    frequency: {frequency}\n    mode: {mode}\n"
                ),
            )?;
            Ok(path)
        })
        .collect::<Result<_>>()?;
    let n = PROFILER_CONDITIONS.len();
    let (mut bare, mut bare_cpu) = (Vec::new(), Vec::new());
    // Per condition: throughput, throughput per CPU second, agent CPU share, peak RSS (the
    // highest of all rounds).
    let mut rate = vec![Vec::new(); n];
    let mut cpu_rate = vec![Vec::new(); n];
    let mut share = vec![Vec::new(); n];
    let mut rss = vec![0; n];
    hotspots(&bin, 1, cpus)?; // warm the page cache and CPU frequency
    for round in 0..rounds {
        // Bare and each agent condition, in an order rotated each round.
        for c in rotation(round, n + 1) {
            if c == 0 {
                let r = hotspots(&bin, seconds, cpus)?;
                bare.push(r.rate);
                bare_cpu.push(r.cpu_rate);
                continue;
            }
            let (i, config) = (c - 1, &configs[c - 1]);
            let a = start_agent(&out_dir, Some(config))?;
            let measured = (|| -> Result<_> {
                let before = thread_cpu_ns(a.pid())?;
                let r = hotspots(&bin, seconds, cpus)?;
                let cpu = thread_cpu_seconds_since(a.pid(), &before)?;
                Ok((r, cpu / (r.wall * cpus as f64), peak_rss(a.pid())?))
            })();
            a.stop()?;
            let (r, s, m) = measured?;
            rate[i].push(r.rate);
            cpu_rate[i].push(r.cpu_rate);
            share[i].push(s);
            rss[i] = rss[i].max(m);
        }
        let mut line = format!(
            "round {}/{rounds}: M iterations/s (per CPU s): bare {:.0} ({:.0})",
            round + 1,
            bare.last().unwrap() / 1e6,
            bare_cpu.last().unwrap() / 1e6
        );
        for (i, (label, ..)) in PROFILER_CONDITIONS.iter().enumerate() {
            line += &format!(
                ", {label} {:.0} ({:.0}, agent CPU {:.3}%)",
                rate[i].last().unwrap() / 1e6,
                cpu_rate[i].last().unwrap() / 1e6,
                share[i].last().unwrap() * 100.0
            );
        }
        eprintln!("{line}");
    }
    // Per round: the throughput each condition lost against that round's bare run, in %.
    let lost = |v: &[f64], base: &[f64]| {
        Spread::of(
            &v.iter()
                .zip(base)
                .map(|(r, b)| (1.0 - r / b) * 100.0)
                .collect::<Vec<_>>(),
        )
    };
    let slowdown: Vec<Spread> = rate.iter().map(|r| lost(r, &bare)).collect();
    let cpu_slowdown: Vec<Spread> = cpu_rate.iter().map(|r| lost(r, &bare_cpu)).collect();
    let share: Vec<Spread> = share
        .iter()
        .map(|s| Spread::of(s).map(|x| x * 100.0))
        .collect();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "CPU profiler: hotspots on {cpus} threads ({cpus} CPUs, all busy), {seconds} s per run, \
         {rounds} rounds in rotated order, a fresh agent (profiler only) per run; median \
         [min–max] over rounds, slowdowns per round against that round's bare run"
    );
    println!(
        "  bare: {} M iterations/s, {} M per CPU s",
        Spread::of(&bare).map(|x| x / 1e6).show(1),
        Spread::of(&bare_cpu).map(|x| x / 1e6).show(1)
    );
    println!(
        "  {:16} {:>28} {:>28} {:>24} {:>9}",
        "condition", "slowdown per wall s %", "slowdown per CPU s %", "agent CPU %", "peak RSS"
    );
    for (i, (label, ..)) in PROFILER_CONDITIONS.iter().enumerate() {
        println!(
            "  {label:16} {:>28} {:>28} {:>24} {:>5.1} MiB",
            format!("{} {}", slowdown[i].show(2), mark(&slowdown[i])),
            format!("{} {}", cpu_slowdown[i].show(2), mark(&cpu_slowdown[i])),
            share[i].show(3),
            mib(rss[i])
        );
    }
    println!(
        "  (slowdown: throughput lost vs bare, per wall second and per CPU second of the workload \
         (which a neighbour's CPU use does not move), `~` = within noise (the rounds' middle \
         half includes 0 or is wider than the median effect); agent CPU: the agent process's CPU seconds over wall seconds x \
         {cpus} CPUs, its kernel programs excluded: they run in the sampled task's context, so \
         their cost is in the slowdown; a profile is exported every 10 s, so a shorter run may \
         hold no export)"
    );
    let max_rss = rss.iter().copied().max().unwrap_or(0);
    println!(
        "  goal at 19 Hz: <= 0.5% slowdown per wall s: {} ({}); per CPU s: {} ({}); <= 64 MiB \
         RSS: {:.1} MiB peak ({})",
        verdict(&slowdown[0], 0.5),
        noise_note(&slowdown[0]),
        verdict(&cpu_slowdown[0], 0.5),
        noise_note(&cpu_slowdown[0]),
        mib(max_rss),
        if mib(max_rss) <= 64.0 {
            "met"
        } else {
            "NOT met"
        }
    );

    // The noise-free view: the kernel's own cost per sample of each mode's program, 99 Hz.
    let mut per_sample = Vec::new();
    for (i, prog) in [(1, "profile_aggregate"), (2, "profile_stream")] {
        // Samples the workload's run gets: every CPU, `frequency` times a second.
        let expected = seconds * cpus as u64 * u64::from(PROFILER_CONDITIONS[i].1);
        // Every run of the program is one sample (idle ones included, dropped at once; the
        // workload leaves none). The agent's own sample counter reaches /status only at its
        // one-second drains, so it cannot bound the same window as bpf_stats.
        let costs = program_costs(&[prog], Some(&configs[i]), &out_dir, "sample", || {
            hotspots(&bin, seconds, cpus)?;
            Ok(expected)
        })?;
        let (_, ns, cnt) = &costs[0];
        per_sample.push(*ns as f64 / (*cnt).max(1) as f64);
    }
    let (ka, ks) = (per_sample[0], per_sample[1]);
    let (ca, cs) = (share[1].median, share[2].median);
    // A program's share of each CPU: its ns per run x runs per second per CPU.
    let prog_share = |ns: f64, hz: f64| ns * hz / 1e9 * 100.0;
    println!("99 Hz, aggregate vs stream:");
    println!("  {:36} {:>11} {:>11}", "", "aggregate", "stream");
    println!("  {:36} {ka:>11.0} {ks:>11.0}", "kernel ns per program run");
    println!(
        "  {:36} {:>10.3}% {:>10.3}%",
        "programs' CPU share (ns x 99 Hz)",
        prog_share(ka, 99.0),
        prog_share(ks, 99.0)
    );
    println!("  {:36} {ca:>10.3}% {cs:>10.3}%", "agent process CPU share");
    println!(
        "  {:36} {:>10.2}% {:>10.2}%",
        "slowdown per wall s (median of rounds)", slowdown[1].median, slowdown[2].median
    );
    println!(
        "  {:36} {:>10.2}% {:>10.2}%",
        "slowdown per CPU s (median of rounds)", cpu_slowdown[1].median, cpu_slowdown[2].median
    );
    println!(
        "  at 19 Hz the aggregate program takes {:.4}% of each CPU (the sampling interrupt \
         itself not included)",
        prog_share(ka, 19.0)
    );
    // The cheaper mode by one measure, and by how much (the dearer one's cost over its).
    let cheaper = |a: f64, s: f64| {
        if a <= s {
            ("aggregate", s / a.max(1e-12))
        } else {
            ("stream", a / s.max(1e-12))
        }
    };
    let ((kernel, kx), (agent, ax)) = (cheaper(ka, ks), cheaper(ca, cs));
    if kernel == agent {
        println!(
            "  {kernel} is cheaper by both measures: kernel ns per sample ({kx:.2}x less), agent \
             process CPU ({ax:.2}x less)"
        );
    } else {
        println!(
            "  neither mode is cheaper by both measures: {kernel} in the kernel ({kx:.2}x less), \
             {agent} in the agent process ({ax:.2}x less)"
        );
    }
    Ok(())
}

/// `~` for an effect within noise, else nothing.
fn mark(effect: &Spread) -> &'static str {
    if noise_note(effect) == "within noise" {
        "~"
    } else {
        " "
    }
}
