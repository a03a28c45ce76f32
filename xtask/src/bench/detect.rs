//! `cargo xtask bench detect`: the anomaly detectors' CPU time per point and state per series,
//! and the engine's throughput over many series, from `agent detect-bench` runs (one process
//! per round, detectors in a rotated order each round). Per-round ratios against the default
//! detector give the spread; nothing is asserted.

use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    build::{bin_path, build_ebpf},
    util::{self, cargo, root},
};

#[derive(Default)]
struct Detector {
    name: String,
    ns: Vec<f64>,
    bytes: usize,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

fn field<T: std::str::FromStr>(line: &str, key: &str) -> Result<T> {
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == key {
            return it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("bad {key} in {line:?}"));
        }
    }
    bail!("no {key} in {line:?}")
}

pub fn run(rounds: usize, points: usize, series: usize) -> Result<()> {
    build_ebpf()?;
    util::run(
        cargo()
            .current_dir(root())
            .args(["build", "--release", "--package", "agent"]),
    )?;
    let agent = bin_path("release", "agent");
    let listed = Command::new(&agent)
        .args(["detect", "--list"])
        .output()
        .context("agent detect --list")?;
    let mut detectors: Vec<Detector> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(|n| Detector {
            name: n.to_string(),
            ..Default::default()
        })
        .collect();
    if detectors.is_empty() {
        bail!("`agent detect --list` listed no detectors");
    }
    let (mut engine_pps, mut engine_bytes, mut resident) = (Vec::new(), 0, Vec::new());
    let rounds = rounds.max(1);
    eprintln!(
        "{rounds} rounds: {} detectors × {points} points, then {series} series × 100 points",
        detectors.len()
    );
    for r in 0..rounds {
        let n = detectors.len();
        let order: Vec<&str> = (0..n)
            .map(|i| detectors[(i + r) % n].name.as_str())
            .collect();
        let out = Command::new(&agent)
            .arg("detect-bench")
            .arg(format!("--order={}", order.join(",")))
            .args(["--points", &points.to_string()])
            .args(["--series", &series.to_string()])
            .output()
            .context("agent detect-bench")?;
        if !out.status.success() {
            bail!(
                "agent detect-bench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with("detector ") {
                let name: String = field(line, "detector")?;
                let d = detectors
                    .iter_mut()
                    .find(|d| d.name == name)
                    .ok_or_else(|| anyhow!("unlisted detector {name}"))?;
                d.ns.push(field(line, "ns_per_point")?);
                d.bytes = field(line, "state_bytes")?;
            } else if line.starts_with("engine ") {
                engine_pps.push(field(line, "points_per_second")?);
                engine_bytes = field(line, "state_bytes")?;
                resident.push(field(line, "resident_bytes_per_series")?);
            }
        }
    }
    let base = detectors[0].ns.clone();
    println!(
        "{:<12} {:>22} {:>26} {:>12}",
        "detector",
        "ns/point (min–max)",
        format!("vs {} (min–max)", detectors[0].name),
        "state bytes"
    );
    for d in &detectors {
        let (lo, hi) = spread(&d.ns);
        let ratios: Vec<f64> = d.ns.iter().zip(&base).map(|(a, b)| a / b).collect();
        let (rlo, rhi) = spread(&ratios);
        let noise = if rlo <= 1.0 && 1.0 <= rhi && d.name != detectors[0].name {
            " within noise"
        } else {
            ""
        };
        println!(
            "{:<12} {:>22} {:>26} {:>12}",
            d.name,
            format!("{:.1} ({lo:.1}–{hi:.1})", median(&d.ns)),
            format!("{:.2} ({rlo:.2}–{rhi:.2}){noise}", median(&ratios)),
            d.bytes
        );
    }
    let (lo, hi) = spread(&engine_pps);
    println!(
        "engine, {series} series: {:.2} M points per CPU second ({:.2}–{:.2}), {:.0} ns/point; \
         detector state {engine_bytes} B/series, resident {:.0} B/series (median)",
        median(&engine_pps) / 1e6,
        lo / 1e6,
        hi / 1e6,
        1e9 / median(&engine_pps),
        median(&resident)
    );
    println!("(thread CPU time; other builds on the machine still disturb caches and clocks)");
    Ok(())
}
