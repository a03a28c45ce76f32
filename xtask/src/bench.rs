//! Side-by-side overhead benchmarks: every condition runs in the same invocation, alternating,
//! and the report prints ratios (never a timed assertion).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
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
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Syscalls { calls, rounds } => syscalls(calls, rounds),
    }
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
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        self.0.wait()?;
        Ok(())
    }
}

fn start_agent(out_dir: &Path) -> Result<Stopper> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(bin_path("release", "agent"))
        .args([
            "run",
            "--status-addr",
            &format!("127.0.0.1:{port}"),
            "--output-dir",
        ])
        .arg(out_dir)
        .env("AGENT_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("start agent")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(port, "/readyz") != Some(200) {
        if Instant::now() > deadline {
            bail!("agent never became ready on port {port}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(Stopper(child))
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

/// (run_time_ns, run_cnt) of every loaded BPF program with this name.
fn program_stats(name: &str) -> Result<(u64, u64)> {
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

/// The kernel's own per-run cost of each program (`kernel.bpf_stats_enabled`, which adds a
/// clock read on each side of every run, so figures include ~that much instrumentation). A
/// separate run: stats must not inflate the timed rounds.
fn program_costs(calls: u64, out_dir: &Path) -> Result<()> {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl).unwrap_or_default();
    std::fs::write(sysctl, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = (|| -> Result<Vec<(&str, u64, u64)>> {
        let agent = start_agent(out_dir)?;
        let progs = ["syscalls_enter", "syscalls_exit"];
        let start: Vec<_> = progs
            .iter()
            .map(|p| program_stats(p))
            .collect::<Result<_>>()?;
        workload(calls)?;
        let end: Vec<_> = progs
            .iter()
            .map(|p| program_stats(p))
            .collect::<Result<_>>()?;
        agent.stop()?;
        Ok(progs
            .iter()
            .zip(start.iter().zip(end.iter()))
            .map(|(p, (a, b))| (*p, b.0 - a.0, b.1 - a.1))
            .collect())
    })();
    let _ = std::fs::write(sysctl, before.trim());
    println!("kernel-measured cost per program run (bpf_stats_enabled, separate run):");
    for (name, ns, cnt) in result? {
        println!(
            "  {name:16} {:8.1} ns over {cnt} runs",
            ns as f64 / cnt.max(1) as f64
        );
    }
    Ok(())
}

fn syscalls(calls: u64, rounds: usize) -> Result<()> {
    setup::ensure(true)?;
    build_ebpf()?;
    util::run(cargo().current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "agent",
        "--package",
        "integration-tests",
    ]))?;
    ensure_tracefs();
    let out_dir = std::env::temp_dir().join("agent-bench-output");
    let (mut bare, mut agent, mut syscount) = (Vec::new(), Vec::new(), Vec::new());
    workload(calls / 10)?; // warm the page cache and CPU frequency
    for round in 1..=rounds {
        bare.push(workload(calls)?);
        let a = start_agent(&out_dir)?;
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
    program_costs(calls, &out_dir)?;
    let _ = std::fs::remove_dir_all(out_dir);
    Ok(())
}
