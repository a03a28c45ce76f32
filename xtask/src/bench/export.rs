//! `bench export`: the OTLP exporter's points per second and bytes per point into rotel, every
//! protocol once per round in an order rotated each round.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{
    harness::{rotation, Spread},
    host::{build_release, free_port, rotel_bin, wait_port, Stopper},
};
use crate::build::bin_path;

/// (protocol, compression) of each condition.
const CONDITIONS: [(&str, &str); 6] = [
    ("grpc", "gzip"),
    ("grpc", "none"),
    ("http/protobuf", "gzip"),
    ("http/protobuf", "none"),
    ("http/json", "gzip"),
    ("http/json", "none"),
];

pub(super) fn run(seconds: f64, series: usize, rounds: usize) -> Result<()> {
    build_release()?;
    let (grpc, http) = (free_port()?, free_port()?);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rotel = Command::new("taskset");
    rotel
        .args(["-c", if cpus > 1 { "1" } else { "0" }])
        .arg(rotel_bin()?)
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{http}"),
            "--otlp-grpc-max-recv-msg-size-mib",
            "64",
            "--exporter",
            "blackhole",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let rotel = Stopper(rotel.spawn().context("start rotel")?);
    let result = (|| -> Result<()> {
        wait_port(grpc)?;
        wait_port(http)?;
        println!(
            "OTLP export, {series} histogram series (40 buckets, 5 attributes) + {series} counters \
             per export, one request in flight, the exporter pinned to CPU 0, rotel (blackhole) on \
             CPU 1, {seconds} s each, {rounds} rounds in rotated order (median [min–max]):"
        );
        // Per condition: points/s of each round; bytes per point (deterministic) of the last.
        let mut rates = vec![Vec::new(); CONDITIONS.len()];
        let mut bytes = vec![(f64::NAN, f64::NAN); CONDITIONS.len()];
        for round in 0..rounds {
            for c in rotation(round, CONDITIONS.len()) {
                let (protocol, compression) = CONDITIONS[c];
                let url = if protocol == "grpc" {
                    format!("http://127.0.0.1:{grpc}")
                } else {
                    format!("http://127.0.0.1:{http}/v1/metrics")
                };
                let out = Command::new("taskset")
                    .args(["-c", "0"])
                    .arg(bin_path("release", "agent"))
                    .args([
                        "export-bench",
                        "--url",
                        &url,
                        "--protocol",
                        protocol,
                        "--compression",
                        compression,
                        "--series",
                        &series.to_string(),
                        "--seconds",
                        &seconds.to_string(),
                    ])
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let field = |k: &str| -> f64 {
                    text.split_whitespace()
                        .skip_while(|w| *w != k)
                        .nth(1)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN)
                };
                if !out.status.success() {
                    bail!(
                        "export-bench {protocol} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                rates[c].push(field("points_per_second"));
                bytes[c] = (
                    field("wire_bytes_per_point"),
                    field("protobuf_bytes_per_point"),
                );
            }
            eprintln!("round {}/{rounds} done", round + 1);
        }
        println!(
            "  {:15} {:6} {:>30} {:>16} {:>18}",
            "protocol", "gzip", "points/s", "wire B/point", "protobuf B/point"
        );
        for (c, (protocol, compression)) in CONDITIONS.iter().enumerate() {
            println!(
                "  {protocol:15} {compression:6} {:>30} {:>16.1} {:>18.1}",
                Spread::of(&rates[c]).show(0),
                bytes[c].0,
                bytes[c].1
            );
        }
        // OTTL transform (five statements) against encoding, CPU ns per point, on CPU 0.
        let out = Command::new("taskset")
            .args(["-c", "0"])
            .arg(crate::build::bin_path("release", "agent"))
            .args(["export-bench", "--transform", "--url", "-", "--series"])
            .arg(series.to_string())
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "export-bench --transform failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
        Ok(())
    })();
    rotel.stop()?;
    result
}
