//! `agent detect-bench` (hidden; `cargo xtask bench detect` runs it once per round and does
//! the statistics): CPU time per point of each detector on one series, and of the engine over
//! many series (key lookup, detector, gate), with the memory per series.
//!
//! Times are this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time, so other
//! processes on the machine disturb them less.

use std::{
    hint::black_box,
    time::{Duration, UNIX_EPOCH},
};

use super::{
    config::{DetectionConfig, Signal, SignalSpec, Watch},
    engine::{Engine, SeriesKey},
    synthetic::Noise,
    Kind,
};

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Resident bytes of this process (`/proc/self/statm`).
fn rss() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * page)
}

/// A day-periodic series with noise, bursts and level shifts, one point a second.
fn workload(points: usize) -> Vec<(f64, f64)> {
    let mut noise = Noise::new(5);
    (0..points)
        .map(|i| {
            let t = 1.7e9 + i as f64;
            let day = (t / 86_400.0 * std::f64::consts::TAU).sin();
            let shift = if (i / 50_000) % 2 == 1 { 40.0 } else { 0.0 };
            let burst = if i % 9_973 == 0 { 300.0 } else { 0.0 };
            (
                t,
                1000.0 + 100.0 * day + shift + burst + 10.0 * noise.gauss(),
            )
        })
        .collect()
}

/// `(ns per point, state bytes)` of one detector over `points` points.
pub fn detector(kind: Kind, points: usize) -> (f64, usize) {
    let data = workload(points);
    let mut d = kind.build();
    let start = thread_cpu();
    let mut sum = 0.0;
    for &(t, x) in &data {
        sum += d.update(t, x);
    }
    let cpu = thread_cpu() - start;
    black_box(sum);
    (cpu * 1e9 / points as f64, d.state_bytes())
}

/// The engine with `series` series fed `rounds` points each, round-robin: `(points per CPU
/// second, detector bytes per series, resident bytes per series)`.
pub fn engine(series: usize, rounds: usize) -> (f64, usize, f64) {
    let data = workload(rounds + series);
    let cfg = DetectionConfig {
        signals: vec![Watch(SignalSpec::new(Signal::SyscallRate))],
        max_series: series,
        ..Default::default()
    };
    let keys: Vec<SeriesKey> = (0..series)
        .map(|i| {
            SeriesKey::new(
                Signal::SyscallRate,
                vec![
                    ("process.pid", (100_000 + i).to_string()),
                    ("process.executable.name", format!("worker-{}", i % 50)),
                ],
            )
        })
        .collect();
    let before = rss();
    let mut e = Engine::new(&cfg);
    let start = thread_cpu();
    let mut reports = 0usize;
    for r in 0..rounds {
        let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + r as u64);
        for (i, k) in keys.iter().enumerate() {
            reports += e.observe(k, time, data[r + i].1).is_some() as usize;
        }
    }
    let cpu = thread_cpu() - start;
    black_box(reports);
    let resident = rss().saturating_sub(before) as f64 / series as f64;
    let bytes = e.state_bytes() / series;
    ((series * rounds) as f64 / cpu, bytes, resident)
}

/// Runs the engine (first, on a fresh heap, so the resident growth is its own), then the
/// detectors in `order`, printing one line each:
/// `engine series S points_per_second R state_bytes B resident_bytes_per_series M` and
/// `detector NAME ns_per_point X state_bytes B`.
pub fn run(order: &[Kind], points: usize, series: usize, rounds: usize) {
    let (pps, bytes, resident) = engine(series, rounds);
    println!(
        "engine series {series} points_per_second {pps:.0} state_bytes {bytes} resident_bytes_per_series {resident:.0}"
    );
    for &k in order {
        let (ns, bytes) = detector(k, points);
        println!("detector {k} ns_per_point {ns:.2} state_bytes {bytes}");
    }
}
