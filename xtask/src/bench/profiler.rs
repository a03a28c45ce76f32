//! `bench profiler`: every CPU busy (`hotspots`, built without frame pointers), bare and under
//! the profiler with the DWARF and the frame-pointer unwinder, in an order rotated each round;
//! slowdowns computed per round against that round's bare run; the agent's CPU split into its
//! warm-up (a fresh agent up to the end of its first export: BPF load, unwind tables, first
//! snapshots, every sampled binary parsed; with and without the unwind table cache on disk) and
//! its steady state (the rest of the run);
//! then each condition's kernel cost per sample and the truncated share on /status.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::{
    harness::{noise_note, rotation, verdict, Spread},
    host::{
        build_release, children_cpu_seconds, ensure_tracefs, http_body, online_cpus, peak_rss,
        program_costs, start_agent_on, thread_cpu_ns, thread_cpu_seconds_since,
    },
};
use crate::{
    build::bin_path,
    setup,
    util::{self, root},
};

/// A profiler condition: label, sampling frequency (Hz), mode, unwinder, and whether the agent
/// starts without its unwind table cache (`<output dir>/unwind-cache` deleted first).
type Condition = (&'static str, u32, &'static str, &'static str, bool);

/// The profiler bench's conditions.
const PROFILER_CONDITIONS: [Condition; 6] = [
    ("19 Hz dwarf", 19, "aggregate", "dwarf", false),
    ("19 Hz dwarf cold", 19, "aggregate", "dwarf", true),
    ("99 Hz dwarf", 99, "aggregate", "dwarf", false),
    ("19 Hz fp", 19, "aggregate", "frame_pointers", false),
    ("99 Hz fp", 99, "aggregate", "frame_pointers", false),
    ("99 Hz stream", 99, "stream", "frame_pointers", false),
];

/// The agent's profile export interval (the default `probes.profiler.interval`).
const EXPORT_INTERVAL: u64 = 10;

/// Seconds of a run counted as the agent's warm-up (the rest is its steady state): up to the
/// end of the first export (its interval after the start, plus 2 s to symbolize: a fresh agent
/// parses every binary it has sampled then, which later exports do not repeat), when the run
/// leaves at least one whole export interval after it; else the first quarter, at most 5 s
/// (the steady part then includes the first export, an overestimate).
fn warmup_seconds(seconds: u64) -> u64 {
    let first_export = EXPORT_INTERVAL + 2;
    if seconds >= first_export + EXPORT_INTERVAL {
        first_export
    } else {
        (seconds / 4).clamp(1, 5)
    }
}

/// Compiles `tests/workloads/hotspots.c` into `dir` without frame pointers (the code most
/// distributions and Rust release builds ship), so the profiler's unwinder does real work.
pub(super) fn build_hotspots(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("hotspots-nofp");
    util::run(
        Command::new("cc")
            .args([
                "-O2",
                "-g",
                "-pthread",
                "-Wl,--build-id",
                "-fomit-frame-pointer",
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
}

/// Runs `hotspots` for `seconds` on `threads` threads.
pub(super) fn hotspots(bin: &Path, seconds: u64, threads: usize) -> Result<HotspotsRun> {
    let cpu_before = children_cpu_seconds();
    let out = Command::new(bin)
        .args([seconds.to_string(), threads.to_string()])
        .output()
        .context("run hotspots")?;
    let cpu = children_cpu_seconds() - cpu_before;
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

/// Writes the agent config of a profiler condition (profiler only).
fn profiler_config(dir: &Path, (label, hz, mode, unwinder, _): Condition) -> Result<PathBuf> {
    let path = dir.join(format!("profiler-{}.yaml", label.replace(' ', "-")));
    std::fs::write(
        &path,
        format!(
            "probes:\n  syscalls:\n    enabled: false\n  network:\n    enabled: false\n  \
             profiler:\n    frequency: {hz}\n    mode: {mode}\n    unwinder: {unwinder}\n"
        ),
    )?;
    Ok(path)
}

/// `(truncated, total)` samples of the `hotspots` process in one `agent profile --pid` run
/// of `seconds` at 19 Hz with `unwinder`, read from its folded output (a truncated stack hangs
/// under `[truncated]`, right below the executable). Per process, so other processes on a
/// shared host do not count; the process's first samples, before its tables load, are walked
/// by frame pointer and count too.
fn truncated_share(
    dir: &Path,
    bin: &Path,
    seconds: u64,
    cpus: usize,
    unwinder: &str,
) -> Result<(u64, u64)> {
    // The workload outlives the profile, which takes a moment to load before it samples.
    let mut workload = Command::new(bin)
        .args([(seconds + 10).to_string(), cpus.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("run hotspots")?;
    let output = dir.join(format!("truncated-{unwinder}.folded"));
    let status = Command::new(bin_path("release", "agent"))
        .arg("profile")
        .args(["--duration", &format!("{seconds}s"), "--hz", "19"])
        .args(["--pid", &workload.id().to_string(), "--unwinder", unwinder])
        .args(["--format", "folded", "--output"])
        .arg(&output)
        .stderr(Stdio::null())
        .status();
    let _ = workload.kill();
    let _ = workload.wait();
    if !status.context("run agent profile")?.success() {
        bail!("agent profile --unwinder {unwinder} failed");
    }
    let (mut truncated, mut total) = (0, 0);
    for line in std::fs::read_to_string(&output)?.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let count: u64 = count.parse().unwrap_or(0);
        total += count;
        if stack.split(';').nth(1) == Some("[truncated]") {
            truncated += count;
        }
    }
    Ok((truncated, total))
}

/// A `/status` counter of the profiler (`maps.PROFILE_COUNTS.detail.<name>`), 0 if absent.
fn status_counter(port: u16, name: &str) -> u64 {
    http_body(port, "/status")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["maps"]["PROFILE_COUNTS"]["detail"][name].as_u64())
        .unwrap_or(0)
}

/// One agent run's figures.
struct AgentRun {
    run: HotspotsRun,
    /// Agent CPU over the first [`warmup_seconds`] and over the rest, as shares of every CPU.
    warmup: f64,
    steady: f64,
    rss: u64,
    /// `unwind_load_ms` and `unwind_cfi_ms` at the end of the run.
    load_ms: u64,
    cfi_ms: u64,
}

/// Starts an agent with `config`, runs the workload for `seconds` under it, and splits the
/// agent's CPU into warm-up and steady state.
fn agent_run(
    out_dir: &Path,
    config: &Path,
    bin: &Path,
    seconds: u64,
    cpus: usize,
) -> Result<AgentRun> {
    let (a, port) = start_agent_on(out_dir, Some(config))?;
    let measured = (|| -> Result<_> {
        let warm = warmup_seconds(seconds);
        let before = thread_cpu_ns(a.pid())?;
        let started = Instant::now();
        let workload = {
            let bin = bin.to_path_buf();
            std::thread::spawn(move || hotspots(&bin, seconds, cpus))
        };
        std::thread::sleep(std::time::Duration::from_secs(warm));
        let mid = thread_cpu_ns(a.pid())?;
        let mid_at = Instant::now();
        let warm_cpu = thread_cpu_seconds_since(a.pid(), &before)?;
        let warm_wall = mid_at.duration_since(started).as_secs_f64();
        let run = workload
            .join()
            .map_err(|_| anyhow::anyhow!("hotspots thread panicked"))??;
        let steady_cpu = thread_cpu_seconds_since(a.pid(), &mid)?;
        let steady_wall = mid_at.elapsed().as_secs_f64();
        Ok(AgentRun {
            run,
            warmup: warm_cpu / (warm_wall * cpus as f64),
            steady: steady_cpu / (steady_wall * cpus as f64),
            rss: peak_rss(a.pid())?,
            load_ms: status_counter(port, "unwind_load_ms"),
            cfi_ms: status_counter(port, "unwind_cfi_ms"),
        })
    })();
    a.stop()?;
    measured
}

pub(super) fn profiler_in(dir: &Path, seconds: u64, rounds: usize) -> Result<()> {
    let cpus = online_cpus();
    let bin = build_hotspots(dir)?;
    let out_dir = dir.join("output");
    let configs: Vec<PathBuf> = PROFILER_CONDITIONS
        .iter()
        .map(|c| profiler_config(dir, *c))
        .collect::<Result<_>>()?;
    let n = PROFILER_CONDITIONS.len();
    let (mut bare, mut bare_cpu) = (Vec::new(), Vec::new());
    // Per condition: throughput, throughput per CPU second, agent CPU share (warm-up, steady
    // state), table load and CFI milliseconds, peak RSS (the highest of all rounds).
    let mut rate = vec![Vec::new(); n];
    let mut cpu_rate = vec![Vec::new(); n];
    let mut warm = vec![Vec::new(); n];
    let mut share = vec![Vec::new(); n];
    let mut load_ms = vec![Vec::new(); n];
    let mut cfi_ms = vec![Vec::new(); n];
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
            let i = c - 1;
            if PROFILER_CONDITIONS[i].4 {
                let _ = std::fs::remove_dir_all(out_dir.join("unwind-cache"));
            }
            let r = agent_run(&out_dir, &configs[i], &bin, seconds, cpus)?;
            rate[i].push(r.run.rate);
            cpu_rate[i].push(r.run.cpu_rate);
            warm[i].push(r.warmup);
            share[i].push(r.steady);
            load_ms[i].push(r.load_ms as f64);
            cfi_ms[i].push(r.cfi_ms as f64);
            rss[i] = rss[i].max(r.rss);
        }
        let mut line = format!(
            "round {}/{rounds}: M iterations/s (per CPU s): bare {:.0} ({:.0})",
            round + 1,
            bare.last().unwrap() / 1e6,
            bare_cpu.last().unwrap() / 1e6
        );
        for (i, (label, ..)) in PROFILER_CONDITIONS.iter().enumerate() {
            line += &format!(
                ", {label} {:.0} ({:.0}, agent CPU warm-up {:.2}% steady {:.3}%, tables {} ms)",
                rate[i].last().unwrap() / 1e6,
                cpu_rate[i].last().unwrap() / 1e6,
                warm[i].last().unwrap() * 100.0,
                share[i].last().unwrap() * 100.0,
                load_ms[i].last().unwrap()
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
    let pct = |v: &[Vec<f64>]| -> Vec<Spread> {
        v.iter().map(|s| Spread::of(s).map(|x| x * 100.0)).collect()
    };
    let steady_raw = share.clone();
    let (warm, share) = (pct(&warm), pct(&share));
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let w = warmup_seconds(seconds);
    println!(
        "CPU profiler: hotspots without frame pointers on {cpus} threads ({cpus} CPUs, all busy), {seconds} s per run, \
         {rounds} rounds in rotated order, a fresh agent (profiler only) per run; median \
         [min–max] over rounds, slowdowns per round against that round's bare run"
    );
    println!(
        "  bare: {} M iterations/s, {} M per CPU s",
        Spread::of(&bare).map(|x| x / 1e6).show(1),
        Spread::of(&bare_cpu).map(|x| x / 1e6).show(1)
    );
    println!(
        "  {:17} {:>26} {:>26} {:>22} {:>22} {:>18} {:>9}",
        "condition",
        "slowdown per wall s %",
        "slowdown per CPU s %",
        format!("agent CPU % 0-{w} s"),
        format!("agent CPU % {w}-{seconds} s"),
        "tables ms (CFI)",
        "peak RSS"
    );
    for (i, (label, ..)) in PROFILER_CONDITIONS.iter().enumerate() {
        println!(
            "  {label:17} {:>26} {:>26} {:>22} {:>22} {:>18} {:>5.1} MiB",
            format!("{} {}", slowdown[i].show(2), mark(&slowdown[i])),
            format!("{} {}", cpu_slowdown[i].show(2), mark(&cpu_slowdown[i])),
            warm[i].show(2),
            share[i].show(3),
            format!(
                "{:.0} ({:.0})",
                Spread::of(&load_ms[i]).median,
                Spread::of(&cfi_ms[i]).median
            ),
            mib(rss[i])
        );
    }
    // The steady state against the frame-pointer walk at the same frequency, per round: what
    // the DWARF unwinder's userspace half adds once its tables are loaded.
    for (d, f) in [(0, 3), (2, 4)] {
        let diff = Spread::of(
            &steady_raw[d]
                .iter()
                .zip(&steady_raw[f])
                .map(|(a, b)| (a - b) * 100.0)
                .collect::<Vec<_>>(),
        );
        println!(
            "  steady agent CPU, {} minus {}: {} percentage points ({})",
            PROFILER_CONDITIONS[d].0,
            PROFILER_CONDITIONS[f].0,
            diff.show(3),
            noise_note(&diff)
        );
    }
    println!(
        "  (slowdown: throughput lost vs bare, per wall second and per CPU second of the workload \
         (which a neighbour's CPU use does not move), `~` = within noise (the rounds' middle \
         half includes 0 or is wider than the median effect); agent CPU: the agent process's \
         CPU seconds over wall seconds x {cpus} CPUs in the first {w} s of the workload (warm-up: \
         a fresh agent loads its programs, snapshots every process it samples, loads their \
         unwind tables and, in its first export, parses every binary it sampled; `cold`: \
         without the table cache on disk) and in the rest of the run (steady state); its kernel programs are excluded: they run in the sampled task's \
         context, so their cost is in the slowdown; tables: unwind_load_ms (CFI: the part spent \
         evaluating .eh_frame) at the end of the run; a profile is exported every 10 s, so a \
         shorter run may hold no export)"
    );

    // Each condition's kernel cost per sample: bpf_stats around a separate run. Tail calls run
    // inside their caller's accounting: profile_dwarf's figure is the whole unwind's.
    let mut per_sample = Vec::new();
    for (i, (label, hz, mode, unwinder, cold)) in PROFILER_CONDITIONS.iter().enumerate() {
        if *cold {
            continue; // the same programs as the warm condition
        }
        let prog = match (*mode, *unwinder) {
            ("stream", _) => "profile_stream",
            (_, "dwarf") => "profile_dwarf",
            _ => "profile_aggregate",
        };
        // Samples the workload's run gets: every CPU, `frequency` times a second. Every run of
        // the program is one sample (idle ones included, dropped at once; the workload leaves
        // none). The agent's own sample counter reaches /status only at its one-second
        // drains, so it cannot bound the same window as bpf_stats.
        let expected = seconds * cpus as u64 * u64::from(*hz);
        let costs = program_costs(&[prog], Some(&configs[i]), &out_dir, "sample", || {
            hotspots(&bin, seconds, cpus)?;
            Ok(expected)
        })?;
        let (_, ns, cnt) = &costs[0];
        per_sample.push((*label, *hz, *ns as f64 / (*cnt).max(1) as f64));
    }

    // The truncated share of the workload's own samples, per unwinder, 19 Hz.
    let mut truncated = Vec::new();
    for unwinder in ["dwarf", "frame_pointers"] {
        let (t, u) = truncated_share(dir, &bin, seconds, cpus, unwinder)?;
        truncated.push((unwinder, t, u));
    }

    println!("kernel cost per sample and truncated stacks:");
    for (label, hz, ns) in &per_sample {
        println!(
            "  {label:14} {ns:>8.0} ns per sample = {:.4}% of each CPU at {hz} Hz",
            ns * f64::from(*hz) / 1e9 * 100.0
        );
    }
    for (unwinder, t, u) in &truncated {
        println!(
            "  {unwinder:14} {t} of {u} samples of hotspots truncated ({:.1}%), 19 Hz, \
             `agent profile --pid`",
            *t as f64 / (*u).max(1) as f64 * 100.0
        );
    }
    let max_rss = rss.iter().copied().max().unwrap_or(0);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    // The ceiling is on the profiler's whole CPU: the agent process plus the kernel
    // programs (which run in the sampled tasks' context).
    let programs19 = per_sample[0].2 * 19.0 / 1e9 * 100.0;
    let total19 = share[0].map(|x| x + programs19);
    let dwarf_trunc = truncated
        .first()
        .map_or(100.0, |(_, t, u)| *t as f64 / (*u).max(1) as f64 * 100.0);
    println!(
        "  goal at 19 Hz dwarf: <= 1% CPU: steady agent {} + programs {programs19:.4}% = {} ({}); \
         warm-up (first {w} s) {}, cold {}; \
         slowdown per CPU s {} ({}); <= 64 MiB RSS: {:.1} MiB peak over every condition ({}); \
         < 5% truncated: {dwarf_trunc:.1}% ({})",
        share[0].show(3),
        total19.show(3),
        verdict(&total19, 1.0),
        warm[0].show(2),
        warm[1].show(2),
        cpu_slowdown[0].show(2),
        noise_note(&cpu_slowdown[0]),
        mib(max_rss),
        met(mib(max_rss) <= 64.0),
        met(dwarf_trunc < 5.0)
    );
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
