//! Privileged end-to-end tests of the syscall latency probe: the real agent, the real kernel
//! object, real workloads, compared with libbpf-tools `syscount`.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::*;

/// Fast drains so the tests do not wait long; per-process series (whatever the default level),
/// every process individual (a paused workload must have its series on a busy host); only the
/// syscall probe (these tests count its programs).
const FAST: &str = "probes:\n  syscalls:\n    interval: 1s\n    aggregation: process\n    top_processes: 100000\n    retain_exited: 5m\n  network:\n    enabled: false\n  profiler:\n    enabled: false\noutput:\n  interval: 1s\n";

/// `FAST` with one more `probes.syscalls` field.
fn fast_with(field: &str) -> String {
    FAST.replace(
        "    retain_exited: 5m\n",
        &format!("    retain_exited: 5m\n    {field}\n"),
    )
}

#[test]
fn counts_a_known_number_of_syscalls_exactly() {
    require_root();
    let _g = serial();
    let agent = Agent::start(FAST);
    assert_exact_counts(&agent);
    let detail = &agent.status()["maps"]["SYSCALL_STATS"]["detail"];
    assert!(detail["fast_claims"].as_u64().unwrap() > 0, "{detail}");
}

/// The same exact counts with the fast table off: everything goes through the LRU hash.
#[test]
fn counts_exactly_with_the_fast_table_off() {
    require_root();
    let _g = serial();
    let agent = Agent::start(&fast_with("fast_slots: 0"));
    assert_exact_counts(&agent);
    let detail = &agent.status()["maps"]["SYSCALL_STATS"]["detail"];
    assert_eq!(detail["fast_claims"], 0, "{detail}");
}

/// One fast entry per CPU: keys collide, so a key's calls split between the table (on a CPU
/// where it holds the entry) and the LRU hash (elsewhere), and the reader must merge them.
#[test]
fn counts_exactly_when_keys_collide_in_the_fast_table() {
    require_root();
    let _g = serial();
    let agent = Agent::start(&fast_with("fast_slots: 1"));
    assert_exact_counts(&agent);
}

fn assert_exact_counts(agent: &Agent) {
    agent.wait_ready();

    let w = Workload::start("getppid", 200_000);
    let pid = w.pid.to_string();
    agent.wait_seen(&pid);
    w.go();
    let labels = [("syscall_name", "getppid"), ("process_pid", pid.as_str())];
    let samples = assert_eventually(
        agent,
        "process_syscall_duration_seconds_count",
        &labels,
        200_000.0,
    );

    let s = find(&samples, "process_syscall_duration_seconds_count", &labels).unwrap();
    assert_eq!(s.labels["process_executable_name"], "syscall-workload");
    // Latency plausible: getppid is a trivial call; its mean must lie between 10 ns and 100 µs
    // even under heavy load (the bound is loose because CI machines are shared and noisy).
    let sum = find(&samples, "process_syscall_duration_seconds_sum", &labels)
        .unwrap()
        .value;
    let mean = sum / 200_000.0;
    assert!(
        (10e-9..100e-6).contains(&mean),
        "mean getppid latency {mean} s"
    );
    // Buckets: cumulative, monotonic, +Inf equals the count.
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|b| b.name == "process_syscall_duration_seconds_bucket")
        .filter(|b| {
            labels
                .iter()
                .all(|(k, v)| b.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|b| {
            let le = b.labels["le"].as_str();
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                b.value,
            )
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    // /metrics writes every third log2 bound from 1.024 µs (status.histogram_buckets: coarse).
    assert_eq!(buckets.len(), 10, "{buckets:?}");
    assert_eq!(buckets[0].0, 1024e-9);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().unwrap().1, 200_000.0);
    // No getppid call took 1 s.
    assert_eq!(buckets.iter().find(|b| b.0 >= 1.0).unwrap().1, 200_000.0);

    // Errors by errno: close(-1) fails with EBADF every time.
    // The dynamic loader also closes fds at start-up: those finish before the workload waits,
    // so the count seen then plus 5,000 is exact.
    let e = Workload::start("badclose", 5_000);
    let epid = e.pid.to_string();
    let cl = [("syscall_name", "close"), ("process_pid", epid.as_str())];
    let count = "process_syscall_duration_seconds_count";
    agent.wait_for(
        |a| find(&a.metrics(), count, &cl).is_some(),
        "start-up close calls of the badclose workload",
    );
    let before = find(&agent.metrics(), count, &cl).unwrap().value;
    e.go();
    let el = [
        ("syscall_name", "close"),
        ("process_pid", epid.as_str()),
        ("error_type", "EBADF"),
    ];
    assert_eventually(agent, "process_syscall_errors_total", &el, 5_000.0);
    assert_eventually(agent, count, &cl, before + 5_000.0);

    // The probe's own accounting is exposed, the kernel's skipped runs included.
    let detail = &agent.status()["maps"]["SYSCALL_STATS"]["detail"];
    assert!(detail["recursion_misses"].is_u64(), "{detail}");
    assert!(detail["calls"].as_u64().unwrap() >= 205_000, "{detail}");
    let status = agent.status();
    assert_eq!(
        status["probes"]["syscalls"]["state"], "attached",
        "{status}"
    );
    assert!(
        status["maps"]["SYSCALL_STATS"]["processed"]
            .as_u64()
            .unwrap()
            >= 205_000,
        "{status}"
    );
}

#[test]
fn short_lived_processes_are_attributed_from_the_kernel() {
    require_root();
    let _g = serial();
    let agent = Agent::start(FAST);
    agent.wait_ready();
    // Runs and exits between two drains: /proc is gone by the time the agent drains, so the name
    // must come from what was captured when it exec'd.
    let out = Command::new(workload_bin())
        .args(["getppid", "1234"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("pid ")
        .to_string();
    let labels = [("syscall_name", "getppid"), ("process_pid", pid.as_str())];
    let samples = assert_eventually(
        &agent,
        "process_syscall_duration_seconds_count",
        &labels,
        1234.0,
    );
    let name = &find(&samples, "process_syscall_duration_seconds_count", &labels)
        .unwrap()
        .labels["process_executable_name"];
    // Named by its executable, as the semantic conventions define it (not the 15-character
    // command name), although it was gone before the drain: from its exec event.
    assert_eq!(name, "syscall-workload");
}

/// `syscount -L -p PID` (libbpf-tools) on the same workload run: parses the getppid row.
fn syscount_getppid(pid: u32, go: impl FnOnce()) -> (u64, f64) {
    // stdbuf: syscount's stdio is block-buffered on a pipe, and its banner says it is attached.
    let mut sc = Command::new("stdbuf")
        .args(["-oL", "syscount", "-L", "-p", &pid.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("syscount (libbpf-tools, installed by `cargo xtask setup --test-peers`)");
    // syscount prints its banner once attached.
    let mut stdout = std::io::BufReader::new(sc.stdout.take().unwrap());
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut banner).unwrap();
    assert!(banner.contains("Tracing syscalls"), "syscount: {banner}");
    go();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(sc.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    sc.wait().unwrap();
    let row = rest
        .lines()
        .find(|l| l.split_whitespace().next() == Some("getppid"))
        .unwrap_or_else(|| panic!("no getppid row in syscount output:\n{rest}"));
    let f: Vec<&str> = row.split_whitespace().collect();
    (f[1].parse().unwrap(), f[2].parse::<f64>().unwrap() * 1e-6)
}

#[test]
fn syscount_agrees_on_the_same_run() {
    require_root();
    let _g = serial();
    let agent = Agent::start(FAST);
    agent.wait_ready();
    let w = Workload::start("getppid", 100_000);
    let pid = w.pid;
    let p = pid.to_string();
    agent.wait_seen(&p);
    let (sc_count, sc_total) = syscount_getppid(pid, || {
        w.go();
    });
    let labels = [("syscall_name", "getppid"), ("process_pid", p.as_str())];
    let samples = assert_eventually(
        &agent,
        "process_syscall_duration_seconds_count",
        &labels,
        sc_count as f64,
    );
    assert_eq!(sc_count, 100_000);
    let ours = find(&samples, "process_syscall_duration_seconds_sum", &labels)
        .unwrap()
        .value;
    // Both tools time the same calls at the same moment, but each one's window includes part of
    // the other's probe, so the totals differ by those overheads; they must agree within 3x.
    let ratio = ours / sc_total;
    assert!(
        (1.0 / 3.0..3.0).contains(&ratio),
        "agent {ours} s vs syscount {sc_total} s"
    );
}

#[test]
fn clean_exit_detaches_every_program() {
    require_root();
    let _g = serial();
    let mut agent = Agent::start(FAST);
    agent.wait_ready();
    let ours = bpf_programs_of(agent.child.id());
    let names: Vec<&str> = ours.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        names.contains(&"syscalls_enter") && names.contains(&"syscalls_exit"),
        "{ours:?}"
    );
    let status = agent.stop();
    assert!(status.success(), "agent exit {status}\n{}", agent.stderr());
    // The kernel frees a program (RCU) shortly after its last fd closes: allow it 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = bpf_program_ids();
        let still: Vec<_> = ours.iter().filter(|(id, _)| left.contains(id)).collect();
        if still.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still loaded after exit: {still:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_detaches_and_reattaches_the_probe() {
    require_root();
    let _g = serial();
    let agent = Agent::start(FAST);
    agent.wait_ready();
    let before = agent.status()["config_hash"].as_str().unwrap().to_string();

    std::fs::write(
        &agent.config,
        FAST.replace("  syscalls:\n", "  syscalls:\n    enabled: false\n"),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for(
        |a| a.status()["probes"]["syscalls"]["state"] == "disabled",
        "probe disabled",
    );
    assert!(
        bpf_programs_of(agent.child.id()).is_empty(),
        "programs still attached after disable"
    );
    assert_ne!(agent.status()["config_hash"].as_str().unwrap(), before);

    // A broken config is rejected and changes nothing.
    std::fs::write(&agent.config, "probes:\n  syscalls:\n    enabled: maybe\n").unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for(
        |a| a.stderr().contains("reload rejected"),
        "reload rejected",
    );
    assert_eq!(agent.status()["probes"]["syscalls"]["state"], "disabled");

    std::fs::write(&agent.config, FAST).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for(
        |a| a.status()["probes"]["syscalls"]["state"] == "attached",
        "probe attached again",
    );
    assert_eq!(bpf_programs_of(agent.child.id()).len(), 4);
    assert_eq!(agent.status()["config_hash"].as_str().unwrap(), before);
}

#[test]
fn without_privilege_the_agent_runs_and_says_why() {
    require_root();
    let _g = serial();
    // nobody, no capabilities: loading must fail with a cause and a fix, and the agent must stay up.
    let agent = Agent::start_with(FAST, |c| {
        let argv: Vec<String> = std::iter::once(c.get_program().to_string_lossy().into_owned())
            .chain(c.get_args().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        let mut wrapped = Command::new("setpriv");
        wrapped.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]);
        wrapped.args(&argv);
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                wrapped.env(k, v);
            }
        }
        wrapped
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        *c = wrapped;
    });
    // The status endpoint answers while the probes are still starting.
    agent.wait_for(
        |a| a.status()["probes"]["syscalls"]["state"] != "starting",
        "the probe to settle",
    );
    let (code, body) = agent.get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("syscalls"), "{body}");
    let status = agent.status();
    let p = &status["probes"]["syscalls"];
    assert_eq!(p["state"], "failed", "{status}");
    assert!(
        p["error"]
            .as_str()
            .unwrap()
            .contains("Operation not permitted"),
        "{p}"
    );
    assert!(p["fix"].as_str().unwrap().contains("CAP_BPF"), "{p}");
    assert!(!agent.stderr().contains("panicked"));
}

#[test]
fn json_logs_and_local_output_files() {
    require_root();
    let _g = serial();
    let mut agent = Agent::start_with(FAST, |c| {
        c.env("AGENT_LOG_FORMAT", "json");
    });
    agent.wait_ready();
    // With no collector the data goes to <output-dir>/metrics.jsonl as OTLP JSON, one
    // ExportMetricsServiceRequest per line (every second here).
    let file = agent.dir.join("out/metrics.jsonl");
    let has_syscalls_batch = |_: &Agent| {
        std::fs::read_to_string(&file).is_ok_and(|t| {
            t.lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
                        .as_array()
                        .is_some_and(|ms| {
                            ms.iter().any(|m| {
                                m["name"] == "process.syscall.duration"
                                    && m["unit"] == "s"
                                    && m["histogram"]["dataPoints"].as_array().is_some()
                            })
                        })
                })
            })
        })
    };
    agent.wait_for(
        has_syscalls_batch,
        "OTLP JSON with process.syscall.duration in metrics.jsonl",
    );
    assert!(agent.stop().success());
    let log = agent.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("attached raw_syscalls")),
        "{log}"
    );
}
