//! `bench enforce`, second part: the rate limiter's per-packet cost and its accuracy. One
//! release agent limits the egress of three cgroups (`enf-bench-rate<i>-*`) at three rates
//! (each limit taken once, on a short syscall storm, with a TTL longer than the run); then each
//! round sends one TCP transfer from each cgroup to a loopback listener, in an order rotated
//! each round. Per transfer: the throughput the receiver measures (after the first second:
//! the bucket's burst and TCP's slow start left out) against the configured rate, and the
//! kernel's own cost of the egress program over it (`kernel.bpf_stats_enabled`:
//! `run_time_ns / run_cnt`, ns per packet; a GSO packet on loopback is one run).

use std::{
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    harness::{differences, noise_note, rotation, Spread},
    host::{http_body, program_stats},
};

/// One figure per round, per rate.
type PerRate = Vec<Vec<f64>>;

/// Configured egress rates, bytes per second.
const RATES: [u64; 3] = [1_000_000, 4_000_000, 16_000_000];
/// Seconds of sending per transfer (the first one is left out of the throughput).
const SEND_SECONDS: u64 = 4;
/// The egress program's name as the kernel keeps it (15 bytes).
const EGRESS_PROG: &str = "ratelimit_egress";

/// Payload bytes per second a sender in cgroup `procs` gets through (receiver's clock).
fn transfer(procs: &Path, secs: u64) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let script = format!(
        "import socket,time\ns=socket.create_connection(('127.0.0.1',{port}))\n\
         b=b'x'*65536\nend=time.time()+{secs}\nwhile time.time()<end:\n  s.sendall(b)\ns.close()\n"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]).stdin(Stdio::null());
    let procs = procs.to_path_buf();
    // SAFETY: the child only writes its own pid ("0") to the cgroup before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || std::fs::write(&procs, "0"));
    }
    let mut child = cmd.spawn().context("python3 sender")?;
    let (mut conn, _) = l.accept()?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut first, mut from, mut total, mut last) = (None, None, 0u64, Instant::now());
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        let t0 = *first.get_or_insert(now);
        total += n as u64;
        last = now;
        if from.is_none() && now.duration_since(t0) >= Duration::from_secs(1) {
            from = Some((now, total));
        }
    }
    child.wait()?;
    let Some((t1, b1)) = from else {
        bail!("the transfer lasted less than 1 s");
    };
    Ok((total - b1) as f64 / last.duration_since(t1).as_secs_f64())
}

/// The rules: one per rate, each on its own cgroup path.
pub(super) fn rules(paths: &[String]) -> String {
    let mut rules = String::new();
    for (i, (path, rate)) in paths.iter().zip(RATES).enumerate() {
        rules.push_str(&format!(
            "    - name: rate{i}\n      when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{cgroup: {path}}}\n      \
             action: {{type: rate_limit, egress: {{bytes_per_second: {rate}}}}}\n      ttl: 1h\n"
        ));
    }
    rules
}

/// Waits until the agent reports a limit taken by every rule `rate<i>`.
fn wait_taken(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = http_body(port, "/status").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        let taken =
            (0..RATES.len())
                .filter(|i| {
                    v["decisions"].as_array().into_iter().flatten().any(|d| {
                        d["rule"] == format!("rate{i}").as_str() && d["outcome"] == "taken"
                    })
                })
                .count();
        if taken == RATES.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {taken} of {} rate limits taken in 60 s", RATES.len());
        }
        thread::sleep(Duration::from_millis(200));
    }
}

pub(super) struct RateSetup {
    pub dirs: Vec<PathBuf>,
    pub paths: Vec<String>,
}

/// The three cgroups under the cgroup2 mount `root`.
pub(super) fn setup(root: &Path) -> Result<RateSetup> {
    let mut dirs = Vec::new();
    let mut paths = Vec::new();
    for i in 0..RATES.len() {
        let path = format!("/enf-bench-rate{i}-{}", std::process::id());
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        dirs.push(dir);
        paths.push(path);
    }
    Ok(RateSetup { dirs, paths })
}

/// Runs the rounds on an agent (status port `port`) whose rules are [`rules`]; the storms that
/// trigger them are started with `storm(dir)` and killed once every limit is taken.
pub(super) fn measure(
    port: u16,
    s: &RateSetup,
    rounds: usize,
    storm: &dyn Fn(&Path) -> Result<std::process::Child>,
) -> Result<()> {
    let mut storms = Vec::new();
    for d in &s.dirs {
        storms.push(storm(d)?);
    }
    let taken = wait_taken(port);
    for mut c in storms {
        let _ = c.kill();
        let _ = c.wait();
    }
    taken?;
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl).unwrap_or_default();
    std::fs::write(sysctl, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = (|| -> Result<(PerRate, PerRate)> {
        let mut ratio = vec![Vec::new(); RATES.len()];
        let mut ns_per_packet = vec![Vec::new(); RATES.len()];
        for round in 0..rounds {
            for i in rotation(round, RATES.len()) {
                let (ns0, cnt0) = program_stats(EGRESS_PROG)?;
                let bps = transfer(&s.dirs[i].join("cgroup.procs"), SEND_SECONDS)?;
                let (ns1, cnt1) = program_stats(EGRESS_PROG)?;
                ratio[i].push(bps / RATES[i] as f64);
                // The counters sum every program of that name: another agent's rate limiter
                // loaded or unloaded meanwhile makes the round unusable (NaN: left out).
                ns_per_packet[i].push(match (ns1.checked_sub(ns0), cnt1.checked_sub(cnt0)) {
                    (Some(ns), Some(cnt)) if cnt > 0 => ns as f64 / cnt as f64,
                    _ => f64::NAN,
                });
            }
        }
        Ok((ratio, ns_per_packet))
    })();
    let _ = std::fs::write(sysctl, before.trim());
    let (ratio, ns) = result?;
    println!(
        "\nrate limiter: {rounds} rounds, 3 egress rates side by side (order rotated each round), \
         a {SEND_SECONDS} s TCP transfer each (first second left out):"
    );
    println!(
        "{:>14} {:>26} {:>22} {:>14} {:>24}",
        "configured B/s",
        "measured B/s median [range]",
        "measured/configured",
        "accuracy",
        "egress ns/packet"
    );
    for i in 0..RATES.len() {
        let r = Spread::of(&ratio[i]);
        let m = r.map(|x| x * RATES[i] as f64);
        let off: Vec<f64> = ratio[i].iter().map(|x| x - 1.0).collect();
        println!(
            "{:>14} {:>26} {:>22} {:>14} {:>24}",
            RATES[i],
            m.show(0),
            r.show(3),
            noise_note(&Spread::of(&off)),
            Spread::of(&ns[i]).show(0)
        );
    }
    let d = Spread::of(&differences(&ns[RATES.len() - 1], &ns[0]));
    println!(
        "per-packet cost, highest minus lowest rate: {} ns per packet ({}); bpf_stats adds a \
         clock read on each side of every run",
        d.show(0),
        noise_note(&d)
    );
    println!(
        "accuracy \"within noise\": the rounds' middle half of measured/configured - 1 includes 0 \
         (or the offset is smaller than that spread)."
    );
    Ok(())
}
