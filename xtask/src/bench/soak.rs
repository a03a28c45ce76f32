//! `bench soak`: the release agent with every probe on (the default config, or `--config`) while
//! `churn-workload` runs for N minutes: short-lived processes through exec wrappers, a loopback
//! TCP connection storm and compiles. Reports what a platform team would look at on day one:
//! peak RSS (the kernel's `VmHWM` and the agent's own `/status` figure), agent CPU per minute
//! and overall (`/proc/<pid>/task/*/schedstat`, nanoseconds), series per metric family and the
//! size of `/metrics`, output bytes per minute (files under the output dir, the spool
//! included), and every loss counter `/status` shows. Nothing is asserted: the figures go into
//! ARCHITECTURE.md.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::host::{
    build_release, ensure_tracefs, http_body, peak_rss, start_agent_on, thread_cpu_ns, Stopper,
};
use crate::{build::bin_path, setup};

const MIB: f64 = 1024.0 * 1024.0;

pub(super) fn run(minutes: u64, config: Option<&Path>) -> Result<()> {
    setup::ensure(true)?;
    build_release()?;
    ensure_tracefs();
    let dir = std::env::temp_dir().join("agent-bench-soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = soak(&dir, minutes.max(1), config);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// CPU seconds of every thread of `pid` so far (schedstat, ns resolution).
fn cpu_now(pid: u32) -> f64 {
    thread_cpu_ns(pid)
        .map(|t| t.values().sum::<u64>() as f64 / 1e9)
        .unwrap_or(f64::NAN)
}

/// `VmRSS` of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Series per metric family on a Prometheus text page: `_bucket`, `_sum` and `_count` lines
/// count as one series of their histogram (the `_count` line), every other sample line as one.
fn series_per_family(text: &str) -> BTreeMap<String, (u64, u64)> {
    // family -> (series, lines)
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let (family, is_series) = if let Some(f) = name.strip_suffix("_bucket") {
            (f, false)
        } else if let Some(f) = name.strip_suffix("_sum") {
            (f, false)
        } else if let Some(f) = name.strip_suffix("_count") {
            (f, true)
        } else {
            (name, true)
        };
        let e = out.entry(family.to_string()).or_default();
        e.0 += is_series as u64;
        e.1 += 1;
    }
    out
}

/// Every loss counter on `/status`: `maps.<map>.lost` and the detail entries of each map.
fn losses(status: &str) -> Vec<String> {
    // A small JSON walk without a JSON dependency in xtask: `/status` is printed by serde_json
    // in one line; pick `"maps":{...}` and list each map's `lost` and `detail`.
    let Some(start) = status.find("\"maps\":{") else {
        return vec!["(no maps on /status)".into()];
    };
    let body = &status[start + 8..];
    let mut depth = 1;
    let end = body
        .char_indices()
        .find_map(|(i, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(i)
        })
        .unwrap_or(body.len());
    let maps = &body[..end];
    let mut out = Vec::new();
    // Entries look like "NAME":{"probe":"x","processed":N,"lost":N,...,"detail":{...}}.
    let mut rest = maps;
    while let Some(q) = rest.find("\":{\"probe\"") {
        let name_start = rest[..q].rfind('"').map_or(0, |i| i + 1);
        let name = &rest[name_start..q];
        let entry = &rest[q..];
        let field = |k: &str| {
            entry
                .split(&format!("\"{k}\":"))
                .nth(1)
                .and_then(|v| v.split([',', '}']).next())
                .unwrap_or("?")
                .to_string()
        };
        let detail = entry
            .split("\"detail\":{")
            .nth(1)
            .and_then(|d| d.split('}').next())
            .unwrap_or_default()
            .replace('"', "");
        out.push(format!(
            "{name}: processed {} lost {} entries {}/{} ({detail})",
            field("processed"),
            field("lost"),
            field("entries"),
            field("capacity")
        ));
        rest = &entry[10..];
    }
    out
}

/// `"key":number` of the `"self"` object on `/status`.
fn self_field(status: &str, key: &str) -> Option<f64> {
    let s = status.split("\"self\":{").nth(1)?;
    s.split(&format!("\"{key}\":"))
        .nth(1)?
        .split([',', '}'])
        .next()?
        .parse()
        .ok()
}

fn soak(dir: &Path, minutes: u64, config: Option<&Path>) -> Result<()> {
    let out_dir = dir.join("output");
    let (agent, port) = start_agent_on(&out_dir, config)?;
    let pid = agent.pid();
    let started = Instant::now();
    let cpu0 = cpu_now(pid);
    let mut churn = Command::new(bin_path("release", "churn-workload"))
        .args(["--seconds", &(minutes * 60).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("start churn-workload")?;
    let mut lines = BufReader::new(churn.stdout.take().context("churn stdout")?).lines();
    if !lines
        .next()
        .transpose()?
        .is_some_and(|l| l.starts_with("pid "))
    {
        let _ = churn.kill();
        bail!("churn-workload did not start");
    }
    let churn = Stopper(churn);
    println!(
        "soak: the release agent ({}) under churn for {minutes} min (2 threads of process \
         starts through sh -c 'exec true' / env true / true, a loopback TCP storm at 300 \
         connections/s, cc -O2 -g -c and python3 -c 'import json' in turn)",
        config.map_or("default config".to_string(), |c| c.display().to_string())
    );
    println!(
        "  {:>6} {:>10} {:>10} {:>13} {:>12}",
        "minute", "RSS MiB", "peak MiB", "agent CPU %", "output MiB"
    );
    let (mut cpu_prev, mut out_prev) = (cpu0, dir_bytes(&out_dir));
    let mut per_minute = Vec::new();
    for m in 1..=minutes {
        let due = started + Duration::from_secs(m * 60);
        while Instant::now() < due {
            thread::sleep(Duration::from_millis(500));
        }
        let (cpu, out) = (cpu_now(pid), dir_bytes(&out_dir));
        let share = (cpu - cpu_prev) / 60.0 * 100.0;
        println!(
            "  {m:>6} {:>10.1} {:>10.1} {:>13.2} {:>12.2}",
            rss(pid) as f64 / MIB,
            peak_rss(pid)? as f64 / MIB,
            share,
            out.saturating_sub(out_prev) as f64 / MIB
        );
        per_minute.push(share);
        (cpu_prev, out_prev) = (cpu, out);
    }
    let summary = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("churn ")))
        .unwrap_or_default();
    let _ = churn.stop();
    let elapsed = started.elapsed().as_secs_f64();
    let total_cpu = cpu_now(pid) - cpu0;
    let metrics = http_body(port, "/metrics").unwrap_or_default();
    let status = http_body(port, "/status").unwrap_or_default();
    let hwm = peak_rss(pid)?;
    let out_total = dir_bytes(&out_dir);
    agent.stop()?;

    println!("  churn: {summary}");
    println!(
        "  peak RSS: {:.1} MiB (VmHWM), {:.1} MiB on /status self.peak_rss_bytes; RSS at the \
         end {:.1} MiB on /status (goal <= 64 MiB)",
        hwm as f64 / MIB,
        self_field(&status, "peak_rss_bytes").unwrap_or(f64::NAN) / MIB,
        self_field(&status, "rss_bytes").unwrap_or(f64::NAN) / MIB
    );
    let mut sorted = per_minute.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "  agent CPU: {:.2}% of one CPU overall ({:.1} s over {:.0} s), per minute {:.2}–{:.2}%",
        total_cpu / elapsed * 100.0,
        total_cpu,
        elapsed,
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  output: {:.2} MiB in all, {:.2} MiB per minute (files under the output dir, spool \
         included)",
        out_total as f64 / MIB,
        out_total as f64 / MIB / (elapsed / 60.0)
    );
    let families = series_per_family(&metrics);
    println!(
        "  /metrics: {} lines, {:.1} KiB; series per family (lines):",
        metrics.lines().count(),
        metrics.len() as f64 / 1024.0
    );
    let mut by_size: Vec<_> = families.iter().collect();
    by_size.sort_by_key(|(_, (s, l))| std::cmp::Reverse((*l, *s)));
    for (family, (series, lines)) in by_size {
        println!("    {family:60} {series:>7} ({lines})");
    }
    println!("  losses (/status maps):");
    for l in losses(&status) {
        println!("    {l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_count_histograms_once() {
        let text = "# HELP x_seconds h\nx_seconds_bucket{a=\"1\",le=\"1\"} 0\n\
                    x_seconds_bucket{a=\"1\",le=\"+Inf\"} 2\nx_seconds_sum{a=\"1\"} 1\n\
                    x_seconds_count{a=\"1\"} 2\ny_total{b=\"2\"} 5\ny_total{b=\"3\"} 1\nz 1\n";
        let f = series_per_family(text);
        assert_eq!(f["x_seconds"], (1, 4));
        assert_eq!(f["y_total"], (2, 2));
        assert_eq!(f["z"], (1, 1));
    }

    #[test]
    fn losses_and_self_from_status() {
        let status = r#"{"self":{"rss_bytes":10,"peak_rss_bytes":20},"maps":{"NET_SERIES":{"probe":"network","processed":5,"lost":1,"entries":3,"capacity":1024,"detail":{"a":1,"b":0}},"SYSCALL_STATS":{"probe":"syscalls","processed":9,"lost":0,"entries":null,"capacity":null,"detail":{}}}}"#;
        assert_eq!(self_field(status, "peak_rss_bytes"), Some(20.0));
        let l = losses(status);
        assert_eq!(
            l,
            [
                "NET_SERIES: processed 5 lost 1 entries 3/1024 (a:1,b:0)",
                "SYSCALL_STATS: processed 9 lost 0 entries null/null ()"
            ]
        );
    }
}
