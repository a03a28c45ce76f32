//! What every bench needs from the host: the release build, the agent started and stopped,
//! ports, `/proc` readings of a process's CPU and memory, and the kernel's own per-program cost
//! (`bpf_stats`).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    build::{bin_path, build_ebpf},
    util::{self, cargo, root},
};

/// The `rotel-agent` binary the PyPI `rotel` package bundles (installed by `setup --test-peers`).
pub(super) fn rotel_bin() -> Result<std::path::PathBuf> {
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

pub(super) fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub(super) fn ensure_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
}

pub(super) fn http_status(port: u16, path: &str) -> Option<u16> {
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

/// A child process stopped with SIGINT (and waited for) by `stop`.
pub(super) struct Stopper(pub(super) Child);

impl Stopper {
    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }

    pub(super) fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        self.0.wait()?;
        Ok(())
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the release agent (with `config`, else its embedded defaults) and waits for /readyz.
pub(super) fn start_agent(out_dir: &Path, config: Option<&Path>) -> Result<Stopper> {
    Ok(start_agent_on(out_dir, config)?.0)
}

/// `start_agent`, also returning the status endpoint's port. Self-protection is off unless
/// the caller's environment sets `AGENT_SELF_PROTECTION_ENABLED` (a bench measures the cost of
/// the config it names; self-protection would change that config under it).
pub(super) fn start_agent_on(out_dir: &Path, config: Option<&Path>) -> Result<(Stopper, u16)> {
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
    if std::env::var_os("AGENT_SELF_PROTECTION_ENABLED").is_none() {
        cmd.env("AGENT_SELF_PROTECTION_ENABLED", "false");
    }
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

/// The body of `GET path` on the local status port (HTTP/1.0: no chunked encoding), or `None`
/// when the answer is not a 200.
pub(super) fn http_body(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
}

/// (run_time_ns, run_cnt) of every loaded BPF program with this name (the kernel keeps the
/// first 15 bytes: `profile_aggregate` shows as `profile_aggrega`).
pub(super) fn program_stats(name: &str) -> Result<(u64, u64)> {
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
pub(super) type Costs = Vec<(String, u64, u64)>;

/// The kernel's own per-run cost of each program (`kernel.bpf_stats_enabled`, which adds a
/// clock read on each side of every run, so figures include ~that much instrumentation). A
/// separate run: stats must not inflate the timed rounds. `workload` returns how many units
/// (calls, round trips, samples) it did; the cost per unit is printed too.
pub(super) fn program_costs(
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
pub(super) fn build_release() -> Result<()> {
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

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/<pid>/stat`.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
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
pub(super) fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmHWM in /proc/pid/status")
}

/// Online CPUs (the workload runs one thread on each).
pub(super) fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// CPU seconds (user + system) of every child waited for so far.
pub(super) fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// CPU time so far of each thread of process `pid`, in nanoseconds
/// (`/proc/<pid>/task/<tid>/schedstat`: not rounded to clock ticks like `/proc/<pid>/stat`).
pub(super) fn thread_cpu_ns(pid: u32) -> Result<std::collections::HashMap<u32, u64>> {
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
pub(super) fn thread_cpu_seconds_since(
    pid: u32,
    before: &std::collections::HashMap<u32, u64>,
) -> Result<f64> {
    Ok(thread_cpu_ns(pid)?
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / 1e9)
}
