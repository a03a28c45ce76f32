//! `bench network`: loopback TCP request/response throughput bare and under the agent (the
//! two in a rotated order each round), the slowdown computed per round, then the kernel
//! programs' own cost per round trip.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{
    harness::{noise_note, ratios, rotation, verdict, Spread},
    host::{build_release, cpu_seconds, free_port, peak_rss, program_costs, start_agent, Stopper},
};
use crate::build::bin_path;

/// A loopback echo server (`tcp-workload server`) for the request/response runs.
pub(super) fn start_echo_server(port: u16) -> Result<Stopper> {
    let mut child = Command::new(bin_path("release", "tcp-workload"))
        .args(["server", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .context("start tcp-workload server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let server = Stopper(child);
    if !line.starts_with("listening ") {
        server.stop()?;
        bail!("tcp-workload server did not start: {line:?}");
    }
    Ok(server)
}

/// One `tcp-workload rr` run against the echo server.
pub(super) struct RrRun {
    /// Round trips per second.
    pub(super) rate: f64,
    /// CPU nanoseconds per round trip, client and server together (not the agent's).
    pub(super) cpu_ns: f64,
}

/// One `tcp-workload rr` run against the echo server (pid `server`).
pub(super) fn request_response(
    port: u16,
    server: u32,
    seconds: u64,
    conns: usize,
    size: usize,
) -> Result<RrRun> {
    let server_before = cpu_seconds(server)?;
    let out = Command::new(bin_path("release", "tcp-workload"))
        .args([
            "rr",
            &format!("127.0.0.1:{port}"),
            "--seconds",
            &seconds.to_string(),
            "--size",
            &size.to_string(),
            "--conns",
            &conns.to_string(),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let server_cpu = cpu_seconds(server)? - server_before;
    let fields: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("rr "))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [total, rate, client_cpu] = fields[..] else {
        bail!("tcp-workload rr printed no result ({}): {text}", out.status);
    };
    Ok(RrRun {
        rate,
        cpu_ns: (client_cpu + server_cpu) * 1e9 / total.max(1.0),
    })
}

pub(super) fn run(seconds: u64, rounds: usize, conns: usize, size: usize) -> Result<()> {
    build_release()?;
    let out_dir = std::env::temp_dir().join("agent-bench-output");
    let config = std::env::temp_dir().join("agent-bench-network.yaml");
    std::fs::write(&config, "probes:\n  syscalls:\n    enabled: false\n")?;
    let port = free_port()?;
    let server = start_echo_server(port)?;
    let result = (|| -> Result<()> {
        // [bare, agent]: round trips/s and CPU ns per round trip, per round.
        let (mut rate, mut rt_cpu): ([Vec<f64>; 2], [Vec<f64>; 2]) = Default::default();
        let (mut cpu, mut rss) = (Vec::new(), 0);
        let srv = server.pid();
        request_response(port, srv, 1, conns, size)?; // warm the page cache and CPU frequency
        for round in 0..rounds {
            for c in rotation(round, 2) {
                let r = if c == 0 {
                    request_response(port, srv, seconds, conns, size)?
                } else {
                    let a = start_agent(&out_dir, Some(&config))?;
                    let measured = (|| -> Result<_> {
                        let cpu_before = cpu_seconds(a.pid())?;
                        let r = request_response(port, srv, seconds, conns, size)?;
                        Ok((r, cpu_seconds(a.pid())? - cpu_before, peak_rss(a.pid())?))
                    })();
                    a.stop()?;
                    let (r, c, m) = measured?;
                    cpu.push(c);
                    rss = rss.max(m);
                    r
                };
                rate[c].push(r.rate);
                rt_cpu[c].push(r.cpu_ns);
            }
            eprintln!(
                "round {}/{rounds} ({} first): bare {:.0}, agent {:.0} round trips/s; CPU per \
                 round trip {:.0} / {:.0} ns; agent CPU {:.2} s",
                round + 1,
                if round % 2 == 0 { "bare" } else { "agent" },
                rate[0][round],
                rate[1][round],
                rt_cpu[0][round],
                rt_cpu[1][round],
                cpu[round]
            );
        }
        // Per round: the throughput the agent's run lost against that round's bare run.
        let slowdown = Spread::of(
            &ratios(&rate[1], &rate[0])
                .iter()
                .map(|r| (1.0 - r) * 100.0)
                .collect::<Vec<_>>(),
        );
        let cpu_added = Spread::of(
            &ratios(&rt_cpu[1], &rt_cpu[0])
                .iter()
                .map(|r| (r - 1.0) * 100.0)
                .collect::<Vec<_>>(),
        );
        let c = Spread::of(&cpu);
        println!(
            "TCP request/response over 127.0.0.1: {conns} connections x {size} B, {seconds} s \
             per run, {rounds} rounds in rotated order, median [min–max] over rounds; ratios \
             per round against that round's bare run"
        );
        println!(
            "  bare                 {:>26} round trips/s",
            Spread::of(&rate[0]).show(0)
        );
        println!(
            "  agent                {:>26} round trips/s",
            Spread::of(&rate[1]).show(0)
        );
        println!(
            "  slowdown             {:>26} %  ({})",
            slowdown.show(2),
            noise_note(&slowdown)
        );
        println!(
            "  CPU per round trip   {:>26} ns bare, {} ns with the agent: {} % ({}; the \
             workload's own CPU time, which a noisy neighbour's steal does not inflate)",
            Spread::of(&rt_cpu[0]).show(0),
            Spread::of(&rt_cpu[1]).show(0),
            cpu_added.show(2),
            noise_note(&cpu_added)
        );
        println!(
            "  agent CPU            {:>26} s per run ({:.1}% of one CPU), peak RSS {:.1} MiB",
            c.show(2),
            c.median / seconds as f64 * 100.0,
            rss as f64 / (1024.0 * 1024.0)
        );
        println!(
            "  (the agent process only: its kernel programs run in the workload's context, so \
             their cost is in the slowdown)"
        );
        println!("  goal: <= 2% slowdown: {}", verdict(&slowdown, 2.0));
        // The noise-free view: what the kernel programs themselves cost per round trip, against
        // the CPU time a round trip takes (the load keeps every CPU busy).
        let mut rate = 0.0;
        let costs = program_costs(
            &["network_sockops", "network_error_r"],
            Some(&config),
            &out_dir,
            "round trip",
            || {
                rate = request_response(port, srv, seconds, conns, size)?.rate;
                Ok((rate * seconds as f64) as u64)
            },
        )?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let prog_ns_per_rt: f64 =
            costs.iter().map(|c| c.1 as f64).sum::<f64>() / (rate * seconds as f64).max(1.0);
        let cpu_ns_per_rt = cpus * 1e9 / rate.max(1.0);
        println!(
            "  programs' cost: {prog_ns_per_rt:.0} ns per round trip of {cpu_ns_per_rt:.0} ns CPU \
             ({cpus} CPUs / {rate:.0} round trips/s): {:.2}% estimated slowdown",
            prog_ns_per_rt / cpu_ns_per_rt * 100.0
        );
        Ok(())
    })();
    server.stop()?;
    let _ = std::fs::remove_dir_all(out_dir);
    let _ = std::fs::remove_file(config);
    result
}
