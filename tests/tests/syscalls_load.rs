//! The syscall probe under the shapes a busy host has: many processes competing for the top-N,
//! promotions and demotions, aggregation levels, a reused pid, exec wrappers, cgroup moves, and
//! threads on several CPUs hitting one key at once. Every count here is exact.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use integration_tests::*;

/// Only the syscall probe, 1 s drains; `{level}` and `{top}` filled in by `config`.
const BASE: &str = "probes:\n  syscalls:\n    interval: {interval}\n    aggregation: {level}\n    top_processes: {top}\n    retain_exited: 2m\n  network:\n    enabled: false\n  profiler:\n    enabled: false\noutput:\n  interval: 1s\n";

fn config(level: &str, top: u32, interval: &str) -> String {
    BASE.replace("{level}", level)
        .replace("{top}", &top.to_string())
        .replace("{interval}", interval)
}

const COUNT: &str = "process_syscall_duration_seconds_count";

/// The calls of `syscall` summed over every exported series (processes, groups and `other`).
fn sum_all(samples: &[Sample], syscall: &str) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == COUNT && s.labels.get("syscall_name").map(String::as_str) == Some(syscall)
        })
        .map(|s| s.value)
        .sum()
}

/// The count of `syscall` in the series with exactly these extra labels.
fn count_of(samples: &[Sample], syscall: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut l = vec![("syscall_name", syscall)];
    l.extend_from_slice(labels);
    find(samples, COUNT, &l).map(|s| s.value)
}

fn wait_value(agent: &Agent, what: &str, want: f64, get: impl Fn(&[Sample]) -> f64) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let samples = agent.metrics();
        let got = get(&samples);
        if got == want {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {got} != {want}\n{}",
            agent.stderr()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// 150 idle processes, then one process making 200,000 getppid calls: with 100 individual
/// slots per interval, the busy one gets its own series, whole (issue 10, "what was seen" 2).
#[test]
fn the_busiest_process_has_its_own_series_among_many_idle_ones() {
    require_root();
    let _g = serial();
    let agent = Agent::start(&config("process", 100, "1s"));
    agent.wait_ready();
    let mut sleepers: Vec<Child> = (0..150)
        .map(|_| {
            Command::new("sleep")
                .arg("40")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let w = Workload::start("getppid", 200_000);
    let pid = w.pid.to_string();
    w.go();
    wait_value(&agent, "the busy process's own series", 200_000.0, |s| {
        count_of(s, "getppid", &[("process_pid", &pid)]).unwrap_or(0.0)
    });
    for s in &mut sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

/// Eight workloads with 2 individual slots: owners are promoted and demoted from drain to
/// drain, yet the sum over every series is exactly the calls made, and no series goes back.
#[test]
fn sums_stay_exact_across_promotions_and_demotions() {
    require_root();
    let _g = serial();
    let agent = Agent::start(&config("process", 2, "1s"));
    agent.wait_ready();
    let before = sum_all(&agent.metrics(), "personality");
    let mut total = 0u64;
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let mut check_monotonic = |samples: &[Sample]| {
        for s in samples.iter().filter(|s| s.name == COUNT) {
            let key = format!("{:?}", s.labels);
            if let Some(prev) = last.get(&key) {
                assert!(s.value >= *prev, "{key} went from {prev} to {}", s.value);
            }
            last.insert(key, s.value);
        }
    };
    for round in 0..8u64 {
        let n = 20_000 + round * 7_919;
        let ws: Vec<Workload> = (0..(round % 3 + 1))
            .map(|_| Workload::start("personality", n))
            .collect();
        total += n * ws.len() as u64;
        for w in ws {
            w.go();
        }
        check_monotonic(&agent.metrics());
        thread::sleep(Duration::from_millis(300 * (round % 4)));
    }
    let samples = wait_value(
        &agent,
        "personality over all series",
        before + total as f64,
        |s| sum_all(s, "personality"),
    );
    check_monotonic(&samples);
    let detail = &agent.status()["maps"]["SYSCALL_STATS"]["detail"];
    assert!(detail["folded_calls"].as_u64() > Some(0), "{detail}");
}

/// A private cgroup v2 directory whose name is a container id, removed on drop.
struct Container {
    dir: PathBuf,
    id: String,
}

impl Container {
    fn new(tag: u32) -> Container {
        let root = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount");
        let id = format!("{:08x}{:056x}", tag, std::process::id());
        let dir = root.join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        Container { dir, id }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `bin personality n` to completion inside `cgroup` (through a shell that moves itself
/// there and execs).
fn run_in_cgroup(bin: &Path, n: u64, cgroup: &Path) {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} personality {n}",
        cgroup.display(),
        bin.display()
    );
    let st = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

/// The same calls at each level: the sums are exact, and each level keeps only its attributes.
#[test]
fn aggregation_levels_keep_exact_sums() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let alpha = workload_copy(&dir, "lvl-alpha");
    let beta = workload_copy(&dir, "lvl-beta");
    let c = Container::new(1);
    for level in ["executable", "container", "host"] {
        let agent = Agent::start(&config(level, 100, "1s"));
        agent.wait_ready();
        let before = agent.metrics();
        let base =
            |labels: &[(&str, &str)]| count_of(&before, "personality", labels).unwrap_or(0.0);
        let (ba, bb, bc, ball) = (
            base(&[("process_executable_name", "lvl-alpha")]),
            base(&[("process_executable_name", "lvl-beta")]),
            base(&[("container_id", &c.id)]),
            sum_all(&before, "personality"),
        );
        for _ in 0..2 {
            Workload::start_args(&alpha, &["personality", "3000"]).go();
        }
        Workload::start_args(&beta, &["personality", "5000"]).go();
        run_in_cgroup(&alpha, 7000, &c.dir);
        let samples = wait_value(&agent, level, ball + 18_000.0, |s| {
            sum_all(s, "personality")
        });
        let points: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == COUNT
                    && s.labels.get("syscall_name").map(String::as_str) == Some("personality")
            })
            .collect();
        assert!(
            points.iter().all(|s| !s.labels.contains_key("process_pid")),
            "{level}: {points:?}"
        );
        match level {
            "executable" => {
                // Host processes of one executable form one series; the container keeps its own.
                let a = count_of(
                    &samples,
                    "personality",
                    &[("process_executable_name", "lvl-alpha")],
                );
                assert_eq!(a, Some(ba + 6000.0), "{points:?}");
                let b = count_of(
                    &samples,
                    "personality",
                    &[("process_executable_name", "lvl-beta")],
                );
                assert_eq!(b, Some(bb + 5000.0), "{points:?}");
                let inside = count_of(
                    &samples,
                    "personality",
                    &[
                        ("process_executable_name", "lvl-alpha"),
                        ("container_id", &c.id),
                    ],
                );
                assert_eq!(inside, Some(bc + 7000.0), "{points:?}");
            }
            "container" => {
                assert!(points
                    .iter()
                    .all(|s| !s.labels.contains_key("process_executable_name")));
                let inside = count_of(&samples, "personality", &[("container_id", &c.id)]);
                assert_eq!(inside, Some(bc + 7000.0), "{points:?}");
            }
            _ => {
                assert!(points.iter().all(|s| s.labels.len() == 1), "{points:?}");
            }
        }
    }
}

/// Runs `bin getppid n` and returns its pid once it has exited.
fn run_to_exit(bin: &Path, n: u64) -> u32 {
    let out = Command::new(bin)
        .args(["getppid", &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("pid ")
        .parse()
        .unwrap()
}

/// `alpha` makes 300,000 getppid calls and exits; `beta` starts on the same pid (through
/// `ns_last_pid`) and makes 500,000, within one drain interval: two series, each exact, each
/// named after what the pid was then (issue 10, "pid reuse").
#[test]
fn a_reused_pid_keeps_what_each_process_did() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let alpha = workload_copy(&dir, "alpha");
    let beta = workload_copy(&dir, "beta");
    let agent = Agent::start(&config("process", 100_000, "5s"));
    agent.wait_ready();
    // Another process may take the pid first: retry until beta lands on alpha's pid.
    let mut reused = None;
    for _ in 0..30 {
        let pid = run_to_exit(&alpha, 300_000);
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let got = run_to_exit(&beta, 500_000);
        if got == pid {
            reused = Some(pid);
            break;
        }
    }
    let pid = reused
        .expect("beta never started on alpha's pid")
        .to_string();
    let samples = wait_value(&agent, "beta's series", 500_000.0, |s| {
        count_of(
            s,
            "getppid",
            &[("process_pid", &pid), ("process_executable_name", "beta")],
        )
        .unwrap_or(0.0)
    });
    assert_eq!(
        count_of(
            &samples,
            "getppid",
            &[("process_pid", &pid), ("process_executable_name", "alpha")]
        ),
        Some(300_000.0)
    );
}

/// Short-lived exec wrappers: `sh -c 'exec prog'`, `env prog`, and a shell that moves itself
/// into a container's cgroup and execs. The calls of `prog` are named `prog` (and carry the
/// container id), not after the wrapper (issue 10, "exec wrappers").
#[test]
fn exec_wrappers_are_named_by_what_they_exec() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let prog = workload_copy(&dir, "wrapped-prog");
    let c = Container::new(2);
    let agent = Agent::start(&config("process", 100_000, "1s"));
    agent.wait_ready();
    let before = count_of(
        &agent.metrics(),
        "personality",
        &[("process_executable_name", "wrapped-prog")],
    );
    assert_eq!(before, None);
    let p = prog.display().to_string();
    let runs: [(&str, Vec<String>); 2] = [
        (
            "sh",
            vec!["-c".into(), format!("exec {p} personality 1111")],
        ),
        ("env", vec![p.clone(), "personality".into(), "2222".into()]),
    ];
    let mut pids = Vec::new();
    for (bin, args) in &runs {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(out.status.success());
        pids.push(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("pid ")
                .to_string(),
        );
    }
    run_in_cgroup(&prog, 3333, &c.dir);
    let samples = wait_value(&agent, "wrapped-prog's calls", 6666.0, |s| {
        s.iter()
            .filter(|x| {
                x.name == COUNT
                    && x.labels.get("syscall_name").map(String::as_str) == Some("personality")
                    && x.labels.get("process_executable_name").map(String::as_str)
                        == Some("wrapped-prog")
            })
            .map(|x| x.value)
            .sum()
    });
    for (pid, n) in pids.iter().zip([1111.0, 2222.0]) {
        assert_eq!(
            count_of(
                &samples,
                "personality",
                &[
                    ("process_pid", pid),
                    ("process_executable_name", "wrapped-prog")
                ]
            ),
            Some(n),
            "{pid}"
        );
    }
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.name == COUNT && x.labels.get("container_id") == Some(&c.id))
        .collect();
    assert!(
        inside.iter().any(
            |x| x.labels.get("process_executable_name").map(String::as_str) == Some("wrapped-prog")
                && x.labels["syscall_name"] == "personality"
                && x.value == 3333.0
        ),
        "{inside:?}"
    );
    // No wrapper is named for the calls it exec'd into.
    for wrapper in ["sh", "dash", "env", "bash"] {
        assert_eq!(
            count_of(
                &samples,
                "personality",
                &[("process_executable_name", wrapper)]
            ),
            None,
            "{wrapper}"
        );
    }
}

/// The class of issue 10's item 8: threads × CPUs × syscalls × drain timing. Each run starts
/// `threads` threads released together by a barrier, two or more of them calling the same
/// syscall (one key from several CPUs at once), at a different offset from the drain tick; the
/// per-process counts must be exact in every run.
#[test]
fn threads_count_exactly_in_every_run() {
    require_root();
    let _g = serial();
    let agent = Agent::start(&config("process", 100_000, "1s"));
    agent.wait_ready();
    let runs = [(3u64, 30_000u64), (6, 20_000), (9, 10_000), (4, 50_000)];
    for (i, (threads, calls)) in runs.iter().cycle().take(12).enumerate() {
        let w = Workload::start_args(
            &workload_bin(),
            &["threads", &threads.to_string(), &calls.to_string()],
        );
        let pid = w.pid.to_string();
        // Vary where in the 1 s drain cycle the burst lands.
        thread::sleep(Duration::from_millis(83 * i as u64 % 1000));
        w.go();
        for (k, kind) in ["getppid", "getpgid", "getsid"].iter().enumerate() {
            let per_kind = (0..*threads).filter(|t| t % 3 == k as u64).count() as f64;
            let what = format!("run {i}: {kind} of pid {pid}");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut history = Vec::new();
            loop {
                let samples = agent.metrics();
                let got = count_of(&samples, kind, &[("process_pid", &pid)]).unwrap_or(0.0);
                history.push((
                    got,
                    samples
                        .iter()
                        .filter(|s| s.name == COUNT && s.labels.get("process_pid") == Some(&pid))
                        .count(),
                ));
                if got == per_kind * *calls as f64 {
                    break;
                }
                if Instant::now() > deadline {
                    let ours: Vec<String> = samples
                        .iter()
                        .filter(|s| {
                            s.name == COUNT
                                && (s.labels.get("process_pid") == Some(&pid)
                                    || s.labels.get("syscall_name").map(String::as_str)
                                        == Some(kind))
                        })
                        .map(|s| format!("{:?} {}", s.labels, s.value))
                        .collect();
                    eprintln!("history: {history:?}");
                    panic!(
                        "{what}: {got}\nseries of the pid:\n{}\nstatus: {}",
                        ours.join("\n"),
                        agent.status()["maps"]
                    );
                }
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let detail = &agent.status()["maps"]["SYSCALL_STATS"]["detail"];
    assert_eq!(detail["stats_folded"], 0, "{detail}");
}

/// A process whose executable name has a space, a newline and a byte that is not UTF-8: it is
/// attributed (the invalid byte as U+FFFD), `/metrics` stays one sample per line, and every
/// line of the local OTLP JSON output stays one valid JSON document.
#[test]
fn odd_process_names_are_attributed_without_breaking_outputs() {
    use std::os::unix::ffi::OsStrExt;
    require_root();
    let _g = serial();
    let dir = tempdir();
    let name = std::ffi::OsStr::from_bytes(b"odd name\nwith\xffbyte");
    let odd = dir.join(name);
    std::fs::copy(workload_bin(), &odd).unwrap();
    let agent = Agent::start(&config("process", 100_000, "1s"));
    agent.wait_ready();
    let w = Workload::start_args(&odd, &["personality", "4321"]);
    let pid = w.pid.to_string();
    w.go();
    let want_name = "odd name\nwith\u{fffd}byte";
    wait_value(&agent, "the odd process's series", 4321.0, |s| {
        count_of(
            s,
            "personality",
            &[
                ("process_pid", &pid),
                ("process_executable_name", want_name),
            ],
        )
        .unwrap_or(0.0)
    });
    // Every non-comment line of the exposition is `name{labels} value`.
    let (_, text) = agent.get("/metrics").unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'),
            "broken line: {line:?}"
        );
    }
    // The local OTLP JSON lines (no collector configured): one document per line, the name
    // inside.
    let metrics = agent.dir.join("out").join("metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        let docs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.200}")))
            .collect();
        if docs
            .iter()
            .any(|d| d.to_string().contains("odd name\\nwith\u{fffd}byte"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the odd name never reached metrics.jsonl"
        );
        thread::sleep(Duration::from_millis(500));
    }
}
