//! Side-by-side overhead benchmarks: every condition runs in the same invocation, alternating,
//! and the report prints ratios (never a timed assertion).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::{
    build::{bin_path, build_ebpf},
    setup,
    util::{self, cargo, root},
};

/// The profiler bench's conditions: label, sampling frequency (Hz), mode and unwinder.
const PROFILER_CONDITIONS: [(&str, u32, &str, &str); 5] = [
    ("19 Hz dwarf", 19, "aggregate", "dwarf"),
    ("99 Hz dwarf", 99, "aggregate", "dwarf"),
    ("19 Hz fp", 19, "aggregate", "frame_pointers"),
    ("99 Hz fp", 99, "aggregate", "frame_pointers"),
    ("99 Hz stream", 99, "stream", "frame_pointers"),
];

#[derive(Subcommand)]
pub enum Which {
    /// getppid loop: bare vs under the agent vs under `syscount -L`, alternating rounds.
    Syscalls {
        /// Calls per run.
        #[arg(long, default_value_t = 2_000_000)]
        calls: u64,
        /// Rounds of (bare, agent, syscount); the median of each is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Loopback TCP request/response throughput: bare vs under the agent (network probe only),
    /// alternating rounds.
    Network {
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds of (bare, agent); the median of each is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Client connections (one thread each).
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Request and response size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// OTLP exporter: data points per second on one core and bytes on the wire per point, per
    /// protocol, into rotel (a Rust collector, blackhole exporter) on the other core.
    Export {
        /// Seconds per protocol.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Histogram series per export (each with a counter too).
        #[arg(long, default_value_t = 1000)]
        series: usize,
    },
    /// CPU profiler: a workload built without frame pointers keeping every CPU busy
    /// (`tests/workloads/hotspots.c`, -fomit-frame-pointer), bare vs under the agent (profiler
    /// only) with the DWARF unwinder and with frame pointers at 19 and 99 Hz, and 99 Hz
    /// stream, rotating rounds; then each condition's kernel cost per sample (bpf_stats) and
    /// the truncated share on /status.
    Profiler {
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rounds of (bare and every condition); medians and spreads are reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Syscalls { calls, rounds } => syscalls(calls, rounds),
        Which::Network {
            seconds,
            rounds,
            conns,
            size,
        } => network(seconds, rounds, conns, size),
        Which::Export { seconds, series } => export(seconds, series),
        Which::Profiler { seconds, rounds } => profiler(seconds, rounds),
    }
}

/// The `rotel-agent` binary the PyPI `rotel` package bundles (installed by `setup --test-peers`).
fn rotel_bin() -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("ROTEL_BIN") {
        return Ok(p.into());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .context("python3")?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !Path::new(&p).exists() {
        bail!("rotel is not installed: run `cargo xtask setup --test-peers`");
    }
    Ok(p.into())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn export(seconds: f64, series: usize) -> Result<()> {
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
             CPU 1, {seconds} s each:"
        );
        println!(
            "  {:15} {:6} {:>14} {:>16} {:>18}",
            "protocol", "gzip", "points/s", "wire B/point", "protobuf B/point"
        );
        for (protocol, compression) in [
            ("grpc", "gzip"),
            ("grpc", "none"),
            ("http/protobuf", "gzip"),
            ("http/protobuf", "none"),
            ("http/json", "gzip"),
            ("http/json", "none"),
        ] {
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
            println!(
                "  {protocol:15} {compression:6} {:>14.0} {:>16.1} {:>18.1}",
                field("points_per_second"),
                field("wire_bytes_per_point"),
                field("protobuf_bytes_per_point")
            );
        }
        Ok(())
    })();
    rotel.stop()?;
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs the workload to completion; returns its own measured ns per call.
fn workload(calls: u64) -> Result<f64> {
    let out = Command::new(bin_path("release", "syscall-workload"))
        .args(["getppid", &calls.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("done "))
        .and_then(|v| v.trim().parse().ok())
        .context("workload printed no timing")
}

fn ensure_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

struct Stopper(Child);

impl Stopper {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        self.0.wait()?;
        Ok(())
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the release agent (with `config`, else its embedded defaults) and waits for /readyz.
fn start_agent(out_dir: &Path, config: Option<&Path>) -> Result<Stopper> {
    start_agent_port(out_dir, config).map(|(a, _)| a)
}

/// [`start_agent`], also returning its status port.
fn start_agent_port(out_dir: &Path, config: Option<&Path>) -> Result<(Stopper, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new(bin_path("release", "agent"));
    cmd.args([
        "run",
        "--status-addr",
        &format!("127.0.0.1:{port}"),
        "--output-dir",
    ])
    .arg(out_dir)
    .env("AGENT_LOG_LEVEL", "warn")
    .stdout(Stdio::null());
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let agent = Stopper(cmd.spawn().context("start agent")?);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(port, "/readyz") != Some(200) {
        if Instant::now() > deadline {
            agent.stop()?;
            bail!("agent never became ready on port {port}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok((agent, port))
}

fn start_syscount() -> Result<Stopper> {
    // stdbuf: its banner (printed once attached) must not sit in a pipe buffer.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "syscount", "-L"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start syscount (libbpf-tools)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line)?;
    if !line.contains("Tracing") {
        bail!("syscount did not start: {line}");
    }
    // Keep draining its output so it never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    Ok(Stopper(child))
}

/// (run_time_ns, run_cnt) of every loaded BPF program with this name (the kernel keeps the
/// first 15 bytes: `profile_aggregate` shows as `profile_aggrega`).
fn program_stats(name: &str) -> Result<(u64, u64)> {
    let name = &name[..name.len().min(15)];
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // bpftool prints one JSON array; pick our programs' two counters without a JSON dependency.
    let (mut ns, mut cnt) = (0, 0);
    for prog in text.split("},{") {
        if !prog.contains(&format!("\"name\":\"{name}\"")) {
            continue;
        }
        let field = |key: &str| -> u64 {
            prog.split(&format!("\"{key}\":"))
                .nth(1)
                .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        ns += field("run_time_ns");
        cnt += field("run_cnt");
    }
    Ok((ns, cnt))
}

/// (program, run_time_ns, run_cnt) over one workload.
type Costs = Vec<(String, u64, u64)>;

/// The kernel's own per-run cost of each program (`kernel.bpf_stats_enabled`, which adds a
/// clock read on each side of every run, so figures include ~that much instrumentation). A
/// separate run: stats must not inflate the timed rounds. `workload` returns how many units
/// (calls, round trips, samples) it did; the cost per unit is printed too.
fn program_costs(
    progs: &[&str],
    config: Option<&Path>,
    out_dir: &Path,
    unit: &str,
    workload: impl FnOnce() -> Result<u64>,
) -> Result<Costs> {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl).unwrap_or_default();
    std::fs::write(sysctl, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = (|| -> Result<(Costs, u64)> {
        let agent = start_agent(out_dir, config)?;
        let measured = (|| -> Result<_> {
            let start: Vec<(u64, u64)> = progs
                .iter()
                .map(|p| program_stats(p))
                .collect::<Result<_>>()?;
            let units = workload()?;
            let end: Vec<(u64, u64)> = progs
                .iter()
                .map(|p| program_stats(p))
                .collect::<Result<_>>()?;
            Ok((start, units, end))
        })();
        agent.stop()?;
        let (start, units, end) = measured?;
        let costs = progs
            .iter()
            .zip(start.iter().zip(end.iter()))
            .map(|(p, (a, b))| (p.to_string(), b.0 - a.0, b.1 - a.1))
            .collect();
        Ok((costs, units))
    })();
    let _ = std::fs::write(sysctl, before.trim());
    let (costs, units) = result?;
    println!("kernel-measured cost per program run (bpf_stats_enabled, separate run):");
    for (name, ns, cnt) in &costs {
        println!(
            "  {name:20} {:8.1} ns over {cnt} runs = {:.1} ns and {:.2} runs per {unit}",
            *ns as f64 / (*cnt).max(1) as f64,
            *ns as f64 / units.max(1) as f64,
            *cnt as f64 / units.max(1) as f64
        );
    }
    Ok(costs)
}

/// The kernel objects, then the agent and the workloads in release mode.
fn build_release() -> Result<()> {
    build_ebpf()?;
    util::run(cargo().current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "agent",
        "--package",
        "integration-tests",
    ]))
}

fn syscalls(calls: u64, rounds: usize) -> Result<()> {
    setup::ensure(true)?;
    build_release()?;
    ensure_tracefs();
    let out_dir = std::env::temp_dir().join("agent-bench-output");
    let (mut bare, mut agent, mut syscount) = (Vec::new(), Vec::new(), Vec::new());
    workload(calls / 10)?; // warm the page cache and CPU frequency
    for round in 1..=rounds {
        bare.push(workload(calls)?);
        let a = start_agent(&out_dir, None)?;
        agent.push(workload(calls)?);
        a.stop()?;
        let s = start_syscount()?;
        syscount.push(workload(calls)?);
        s.stop()?;
        eprintln!(
            "round {round}/{rounds}: bare {:.1} ns, agent {:.1} ns, syscount -L {:.1} ns per call",
            bare.last().unwrap(),
            agent.last().unwrap(),
            syscount.last().unwrap()
        );
    }
    let (b, a, s) = (median(bare), median(agent), median(syscount));
    let (added_a, added_s) = (a - b, s - b);
    println!("getppid x {calls}, median of {rounds} alternating rounds (ns per call)");
    println!("  bare                 {b:8.1}");
    println!(
        "  agent                {a:8.1}  (+{added_a:.1} ns, {:.2}x bare)",
        a / b
    );
    println!(
        "  syscount -L          {s:8.1}  (+{added_s:.1} ns, {:.2}x bare)",
        s / b
    );
    let ratio = added_a / added_s;
    println!(
        "  agent adds {:.2}x what syscount -L adds (goal <= 0.50): {}",
        ratio,
        if ratio <= 0.5 { "met" } else { "NOT met" }
    );
    program_costs(
        &["syscalls_enter", "syscalls_exit"],
        None,
        &out_dir,
        "call",
        || workload(calls).map(|_| calls),
    )
    .map(|_| ())?;
    let _ = std::fs::remove_dir_all(out_dir);
    Ok(())
}

/// A loopback echo server (`tcp-workload server`) for the request/response runs.
fn start_echo_server(port: u16) -> Result<Stopper> {
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
struct RrRun {
    /// Round trips per second.
    rate: f64,
    /// CPU nanoseconds per round trip, client and server together (not the agent's).
    cpu_ns: f64,
}

/// One `tcp-workload rr` run against the echo server (pid `server`).
fn request_response(
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

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // pid (comm) state ppid ...: utime and stime are fields 14 and 15, the 12th and 13th after
    // the comm's closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/pid/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Peak resident set size of process `pid` in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmHWM in /proc/pid/status")
}

fn network(seconds: u64, rounds: usize, conns: usize, size: usize) -> Result<()> {
    build_release()?;
    let out_dir = std::env::temp_dir().join("agent-bench-output");
    let config = std::env::temp_dir().join("agent-bench-network.yaml");
    std::fs::write(&config, "probes:\n  syscalls:\n    enabled: false\n")?;
    let port = free_port()?;
    let server = start_echo_server(port)?;
    let result = (|| -> Result<()> {
        let (mut bare, mut agent, mut cpu, mut rss) = (Vec::new(), Vec::new(), Vec::new(), 0);
        let (mut bare_cpu, mut agent_cpu) = (Vec::new(), Vec::new());
        let srv = server.pid();
        request_response(port, srv, 1, conns, size)?; // warm the page cache and CPU frequency
        for round in 1..=rounds {
            let r = request_response(port, srv, seconds, conns, size)?;
            bare.push(r.rate);
            bare_cpu.push(r.cpu_ns);
            let a = start_agent(&out_dir, Some(&config))?;
            let cpu_before = cpu_seconds(a.pid())?;
            let r = request_response(port, srv, seconds, conns, size)?;
            agent.push(r.rate);
            agent_cpu.push(r.cpu_ns);
            cpu.push(cpu_seconds(a.pid())? - cpu_before);
            rss = rss.max(peak_rss(a.pid())?);
            a.stop()?;
            eprintln!(
                "round {round}/{rounds}: bare {:.0}, agent {:.0} round trips/s; CPU per round \
                 trip {:.0} / {:.0} ns; agent CPU {:.2} s",
                bare.last().unwrap(),
                agent.last().unwrap(),
                bare_cpu.last().unwrap(),
                agent_cpu.last().unwrap(),
                cpu.last().unwrap()
            );
        }
        let (b, a, c) = (median(bare), median(agent), median(cpu));
        let slowdown = (1.0 - a / b) * 100.0;
        let (bc, ac) = (median(bare_cpu), median(agent_cpu));
        println!(
            "TCP request/response over 127.0.0.1: {conns} connections x {size} B, {seconds} s \
             per run, median of {rounds} alternating rounds"
        );
        println!("  bare                 {b:12.0} round trips/s");
        println!(
            "  agent                {a:12.0} round trips/s  ({:.3}x bare, {slowdown:.2}% slowdown)",
            a / b
        );
        println!(
            "  CPU per round trip   {bc:12.0} ns bare, {ac:.0} ns with the agent ({:+.2}%; the \
             workload's own CPU time, which a noisy neighbour's steal does not inflate)",
            (ac / bc - 1.0) * 100.0
        );
        println!(
            "  agent CPU            {c:12.2} s per run ({:.1}% of one CPU), peak RSS {:.1} MiB",
            c / seconds as f64 * 100.0,
            rss as f64 / (1024.0 * 1024.0)
        );
        println!(
            "  (the agent process only: its kernel programs run in the workload's context, so \
             their cost is in the slowdown)"
        );
        println!(
            "  goal: <= 2% slowdown: {}",
            if slowdown <= 2.0 { "met" } else { "NOT met" }
        );
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

/// Online CPUs (the workload runs one thread on each).
fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Compiles `tests/workloads/hotspots.c` into `dir` without frame pointers (the code most
/// distributions and Rust release builds ship), so the profiler's unwinder does real work.
fn build_hotspots(dir: &Path) -> Result<PathBuf> {
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

/// CPU seconds (user + system) of every child waited for so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// One `hotspots` run.
#[derive(Clone, Copy)]
struct HotspotsRun {
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
fn hotspots(bin: &Path, seconds: u64, threads: usize) -> Result<HotspotsRun> {
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

/// CPU time so far of each thread of process `pid`, in nanoseconds
/// (`/proc/<pid>/task/<tid>/schedstat`: not rounded to clock ticks like `/proc/<pid>/stat`).
fn thread_cpu_ns(pid: u32) -> Result<std::collections::HashMap<u32, u64>> {
    let mut threads = std::collections::HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse().ok()) {
            threads.insert(tid, ns);
        }
    }
    Ok(threads)
}

/// CPU seconds process `pid` used since `before` (a [`thread_cpu_ns`] reading). A thread that
/// exited in between loses its share (the agent's threads live as long as it does).
fn thread_cpu_seconds_since(pid: u32, before: &std::collections::HashMap<u32, u64>) -> Result<f64> {
    Ok(thread_cpu_ns(pid)?
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / 1e9)
}

fn profiler(seconds: u64, rounds: usize) -> Result<()> {
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

/// Writes the agent config of a profiler condition (profiler only), exporting every
/// `interval`.
fn profiler_config(
    dir: &Path,
    (label, hz, mode, unwinder): (&str, u32, &str, &str),
    interval: &str,
) -> Result<PathBuf> {
    let path = dir.join(format!(
        "profiler-{}-{interval}.yaml",
        label.replace(' ', "-")
    ));
    std::fs::write(
        &path,
        format!(
            "probes:\n  syscalls:\n    enabled: false\n  network:\n    enabled: false\n  \
             profiler:\n    frequency: {hz}\n    mode: {mode}\n    unwinder: {unwinder}\n    \
             interval: {interval}\n"
        ),
    )?;
    Ok(path)
}

/// A whole-number field of the agent's /status JSON (the first one with that name).
fn status_number(port: u16, field: &str) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split(&format!("\"{field}\":"))
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Median and spread ((max - min) / median, in %) of one condition's rounds.
fn median_spread(v: &[f64]) -> (f64, f64) {
    let m = median(v.to_vec());
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    (m, if m > 0.0 { (hi - lo) / m * 100.0 } else { 0.0 })
}

fn profiler_in(dir: &Path, seconds: u64, rounds: usize) -> Result<()> {
    let cpus = online_cpus();
    let bin = build_hotspots(dir)?;
    let out_dir = dir.join("output");
    let configs: Vec<PathBuf> = PROFILER_CONDITIONS
        .iter()
        .map(|c| profiler_config(dir, *c, "10s"))
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
    for round in 1..=rounds {
        // Bare, then each agent condition; each round starts one further along, so no
        // condition always runs first.
        let mut line = format!("round {round}/{rounds}:");
        for k in 0..=n {
            let c = (k + round - 1) % (n + 1);
            if c == 0 {
                let r = hotspots(&bin, seconds, cpus)?;
                bare.push(r.rate);
                bare_cpu.push(r.cpu_rate);
                line += &format!(" bare {:.0}", r.rate / 1e6);
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
            line += &format!(
                ", {} {:.0} (agent CPU {:.3}%)",
                PROFILER_CONDITIONS[i].0,
                r.rate / 1e6,
                s * 100.0
            );
        }
        eprintln!("{line} (M iterations/s)");
    }
    let (b, b_spread) = median_spread(&bare);
    let (bc, bc_spread) = median_spread(&bare_cpu);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "CPU profiler: hotspots without frame pointers on {cpus} threads ({cpus} CPUs, all busy), \
         {seconds} s per run, {rounds} rotating rounds, a fresh agent (profiler only) per run"
    );
    println!(
        "  {:14} {:>10} {:>7} {:>9} {:>13} {:>7} {:>9} {:>10} {:>10}",
        "condition",
        "M iters/s",
        "spread",
        "slowdown",
        "M iters/CPU s",
        "spread",
        "slowdown",
        "agent CPU",
        "peak RSS"
    );
    println!(
        "  {:14} {:>10.1} {:>6.1}% {:>9} {:>13.1} {:>6.1}% {:>9} {:>10} {:>10}",
        "bare",
        b / 1e6,
        b_spread,
        "-",
        bc / 1e6,
        bc_spread,
        "-",
        "-",
        "-"
    );
    let mut slowdowns = Vec::new();
    for (i, (label, ..)) in PROFILER_CONDITIONS.iter().enumerate() {
        let (r, r_spread) = median_spread(&rate[i]);
        let (c, c_spread) = median_spread(&cpu_rate[i]);
        let (sh, _) = median_spread(&share[i]);
        let (slow, cslow) = ((1.0 - r / b) * 100.0, (1.0 - c / bc) * 100.0);
        // An effect smaller than the rounds' own spread is not told apart from noise.
        let noise = |x: f64, spread: f64| if x.abs() < spread { " ~" } else { "  " };
        println!(
            "  {label:14} {:>10.1} {:>6.1}% {:>7.2}%{} {:>13.1} {:>6.1}% {:>7.2}%{} {:>9.3}% {:>6.1} MiB",
            r / 1e6,
            r_spread,
            slow,
            noise(slow, r_spread.max(b_spread)),
            c / 1e6,
            c_spread,
            cslow,
            noise(cslow, c_spread.max(bc_spread)),
            sh * 100.0,
            mib(rss[i])
        );
        slowdowns.push((slow, cslow, sh, r_spread.max(b_spread)));
    }
    println!(
        "  (~: within noise, the effect is smaller than the rounds' spread; slowdown: throughput \
         lost vs bare, per wall second and per CPU second of the workload; agent CPU: the agent \
         process's CPU seconds over wall seconds x {cpus} CPUs, its kernel programs excluded: \
         they run in the sampled task's context, so their cost is in the slowdown)"
    );

    // Each condition's kernel cost per sample: bpf_stats around a separate run. Tail calls run
    // inside their caller's accounting: profile_dwarf's figure is the whole unwind's.
    let mut per_sample = Vec::new();
    for (i, (label, hz, mode, unwinder)) in PROFILER_CONDITIONS.iter().enumerate() {
        let prog = match (*mode, *unwinder) {
            ("stream", _) => "profile_stream",
            (_, "dwarf") => "profile_dwarf",
            _ => "profile_aggregate",
        };
        let expected = seconds * cpus as u64 * u64::from(*hz);
        let costs = program_costs(&[prog], Some(&configs[i]), &out_dir, "sample", || {
            hotspots(&bin, seconds, cpus)?;
            Ok(expected)
        })?;
        let (_, ns, cnt) = &costs[0];
        per_sample.push((*label, *hz, *ns as f64 / (*cnt).max(1) as f64));
    }

    // The truncated share on /status (host-wide: other processes add to it) with exports
    // every second, 19 Hz, per unwinder.
    let mut truncated = Vec::new();
    for unwinder in ["dwarf", "frame_pointers"] {
        let config = profiler_config(dir, ("trunc", 19, "aggregate", unwinder), "1s")?;
        let (a, port) = start_agent_port(&out_dir, Some(&config))?;
        let read = || {
            (
                status_number(port, "truncated_stacks").unwrap_or(0),
                status_number(port, "user_stacks").unwrap_or(0),
            )
        };
        let before = read();
        let r = hotspots(&bin, seconds, cpus);
        thread::sleep(Duration::from_millis(2500)); // the next export counts the last samples
        let after = read();
        a.stop()?;
        r?;
        let (t, u) = (after.0 - before.0, after.1 - before.1);
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
            "  {unwinder:14} {t} of {u} user stacks truncated on /status ({:.1}%), 19 Hz",
            *t as f64 / (*u).max(1) as f64 * 100.0
        );
    }
    let max_rss = rss.iter().copied().max().unwrap_or(0);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let (_, _, share19, _) = slowdowns[0];
    let dwarf_trunc = truncated
        .first()
        .map_or(100.0, |(_, t, u)| *t as f64 / (*u).max(1) as f64 * 100.0);
    println!(
        "  goal at 19 Hz dwarf: <= 1% CPU: agent {:.3}% + programs {:.4}% ({}); <= 64 MiB RSS: \
         {:.1} MiB peak over every condition ({}); < 5% truncated: {:.1}% ({})",
        share19 * 100.0,
        per_sample[0].2 * 19.0 / 1e9 * 100.0,
        met(share19 * 100.0 + per_sample[0].2 * 19.0 / 1e9 * 100.0 <= 1.0),
        mib(max_rss),
        met(mib(max_rss) <= 64.0),
        dwarf_trunc,
        met(dwarf_trunc < 5.0)
    );
    Ok(())
}
