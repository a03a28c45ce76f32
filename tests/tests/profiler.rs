//! The CPU profiler end to end: the real kernel program sampling a C workload whose two hot
//! functions take CPU 3:1, checked against `perf record` on the same workload at the same time,
//! and every output read back by tools that are not ours (`protoc --decode` for pprof, PyPI
//! `opentelemetry-proto` for OTLP, the SVG text for flame graphs).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use integration_tests::{
    bpf_programs_of,
    otlp::{text, Sink},
    profile_outputs::*,
    profiling::*,
    require_root, serial, tempdir, Agent,
};
use serde_json::Value;

/// hotspots' share of CPU time in `hot_three` (vs `hot_one`).
const EXPECTED: f64 = 0.75;

/// Config with only the profiler on.
const PROFILER_ONLY: &str = "probes:\n  syscalls: {enabled: false}\n  network: {enabled: false}\n";

fn start_hotspots(bin: &Path, seconds: u32) -> Child {
    let child = Command::new(bin)
        .arg(seconds.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start hotspots");
    // Let it get past exec and the loader.
    thread::sleep(Duration::from_millis(300));
    child
}

/// (hot_three, hot_one) leaf samples.
fn hot_counts(stacks: &[(Vec<String>, u64)]) -> (u64, u64) {
    (
        leaf_count(stacks, "hot_three"),
        leaf_count(stacks, "hot_one"),
    )
}

/// Asserts hot_three's share of the two is 0.75 within the binomial bound; returns the share
/// and the bound.
fn assert_three_to_one(three: u64, one: u64, who: &str) -> (f64, f64) {
    let (share, tol) = (
        ratio(three, one),
        proportion_tolerance(EXPECTED, three + one),
    );
    assert!(
        (share - EXPECTED).abs() <= tol,
        "{who}: hot_three share {share:.4} ({three}/{one}), expected {EXPECTED} ± {tol:.4}"
    );
    (share, tol)
}

/// Asserts that at least 95% of the hot samples walked up through run_loop to main (frame
/// pointers; a sample on a leaf's first instruction, before `push %rbp`, may skip a frame).
fn assert_hot_stacks_reach_main(stacks: &[(Vec<String>, u64)]) {
    let (three, one) = hot_counts(stacks);
    let to_main: u64 = stacks
        .iter()
        .filter(|(s, _)| {
            s.last().is_some_and(|l| l.starts_with("hot_"))
                && s.windows(2).any(|w| w == ["main", "run_loop"])
        })
        .map(|(_, n)| n)
        .sum();
    assert!(
        to_main * 100 >= (three + one) * 95,
        "{to_main} of {} hot stacks reach main: {stacks:?}",
        three + one
    );
}

/// The agent and `perf record` sample the same single-threaded run at 99 Hz for the same 8 s;
/// both see hot_three:hot_one at 3:1 within the binomial bound, and agree with each other.
#[test]
fn profile_matches_the_3_to_1_workload_and_perf() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_hotspots(&dir, true);
    let child = start_hotspots(&bin, 12);
    let pid = child.id();
    let perf_dir = dir.join("perf");
    let perf = thread::spawn(move || perf_record(pid, 8.0, 99, &perf_dir));
    let out = agent_profile(
        &dir,
        &["--duration", "8s", "--hz", "99", "--pid", &pid.to_string()],
        "folded",
    );
    let perf = perf.join().expect("perf thread");
    let stacks = folded(&std::fs::read_to_string(&out).unwrap());
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let (three, one) = hot_counts(&stacks);
    let (p3, p1) = (
        perf.self_counts.get("hot_three").copied().unwrap_or(0),
        perf.self_counts.get("hot_one").copied().unwrap_or(0),
    );
    eprintln!(
        "agent: {total} samples, hot_three {three}, hot_one {one}, share {:.4} ± {:.4}; \
         perf: {} samples, {p3}/{p1}, share {:.4} ± {:.4}",
        ratio(three, one),
        proportion_tolerance(EXPECTED, three + one),
        perf.total,
        ratio(p3, p1),
        proportion_tolerance(EXPECTED, p3 + p1),
    );
    // One thread for 8 s at 99 Hz gives at most ~792 samples (+1 for the tick at each edge);
    // a loaded machine gives fewer, never more.
    assert!(
        total <= 8 * 99 + 20,
        "{total} samples from one thread in 8 s"
    );
    assert!(three + one >= 200, "too few hot samples: {stacks:?}");
    // Only the workload's process (the pid filter), rooted at its executable name.
    assert!(
        stacks.iter().all(|(s, _)| s[0] == "hotspots-fp"),
        "{stacks:?}"
    );
    assert_hot_stacks_reach_main(&stacks);
    let (ours, tol) = assert_three_to_one(three, one, "agent");
    let (theirs, ptol) = assert_three_to_one(p3, p1, "perf");
    // Both sampled the same run: their shares differ by no more than both bounds allow.
    assert!(
        (ours - theirs).abs() <= tol + ptol,
        "agent {ours:.4} vs perf {theirs:.4}"
    );
    let _ = wait(child);
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait(mut c: Child) -> std::process::ExitStatus {
    c.wait().expect("wait")
}

/// pprof opens in protoc with the pprof schema; OTLP decodes with the reference Python package,
/// with the dictionary's zero entries, the sample and period types and a resource naming the
/// process, its executable and its build ID; the SVG names both hot functions.
#[test]
fn pprof_otlp_and_svg_outputs_decode_independently() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_hotspots(&dir, true);
    let build_id = build_id_of(&bin).expect("build id");
    // Lives past the three runs below on a loaded machine; killed at the end.
    let child = start_hotspots(&bin, 60);
    let pid = child.id().to_string();
    let args = ["--duration", "2s", "--hz", "99", "--pid", pid.as_str()];

    let pprof = agent_profile(&dir, &args, "pprof");
    let dump = protoc_decode(&pprof);
    let strings = string_table(&dump);
    assert_eq!(strings.first().map(String::as_str), Some(""), "{dump}");
    for s in [
        "samples",
        "count",
        "cpu",
        "nanoseconds",
        "hot_three",
        "hot_one",
        "main",
    ] {
        assert!(strings.iter().any(|x| x == s), "{s} missing: {strings:?}");
    }
    // 99 Hz: one sample stands for 1e9/99 ns of CPU.
    assert!(dump.contains("period: 10101010\n"), "{dump}");
    assert!(
        strings.contains(&build_id),
        "build id {build_id} in the mapping"
    );

    let otlp = agent_profile(&dir, &args, "otlp");
    let req = python_decode_otlp(&otlp);
    let dict = &req["dictionary"];
    for table in [
        "mappingTable",
        "locationTable",
        "functionTable",
        "linkTable",
        "attributeTable",
        "stackTable",
    ] {
        assert_eq!(
            dict[table][0],
            serde_json::json!({}),
            "{table}[0] is the zero entry"
        );
    }
    assert_eq!(dict["stringTable"][0], "");
    let procs = otlp_processes(&req);
    assert_eq!(procs.len(), 1, "only the --pid process");
    let (attrs, samples) = &procs[0];
    assert_eq!(text(&attrs["process.pid"]), pid);
    assert_eq!(text(&attrs["process.executable.name"]), "hotspots-fp");
    assert_eq!(text(&attrs["process.executable.build_id.gnu"]), build_id);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(text(&attrs["host.name"]), host.trim());
    let (three, one) = hot_counts(samples);
    assert!(three > 0 && one > 0, "{samples:?}");
    let profile = &req["resourceProfiles"][0]["scopeProfiles"][0]["profiles"][0];
    let st = |i: &Value| dict["stringTable"][i.as_u64().unwrap_or(0) as usize].clone();
    assert_eq!(st(&profile["sampleType"]["typeStrindex"]), "samples");
    assert_eq!(st(&profile["sampleType"]["unitStrindex"]), "count");
    assert_eq!(st(&profile["periodType"]["typeStrindex"]), "cpu");
    assert_eq!(st(&profile["periodType"]["unitStrindex"]), "nanoseconds");
    assert_eq!(text(&profile["period"]), "10101010");

    let svg = agent_profile(&dir, &args, "svg");
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<?xml") || svg.starts_with("<svg"),
        "{}",
        &svg[..100]
    );
    assert!(svg.contains("hot_three") && svg.contains("hot_one"));
    let mut child = child;
    let _ = child.kill();
    let _ = wait(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The running agent exports one profile per interval over OTLP; a process that ran for 2 s and
/// exited (its binary deleted too) long before the export is still named and symbolized.
#[test]
fn running_agent_exports_profiles_of_exited_processes() {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let dir = tempdir();
    let bin = build_hotspots(&dir, true);
    let build_id = build_id_of(&bin).unwrap();
    let agent = Agent::start(&format!(
        "{PROFILER_ONLY}  profiler: {{frequency: 99, interval: 6s}}\nexport:\n  endpoint: {}\n",
        sink.http_endpoint()
    ));
    agent.wait_ready();
    let child = start_hotspots(&bin, 2);
    let pid = child.id().to_string();
    assert!(wait(child).success());
    std::fs::remove_file(&bin).unwrap();
    let found = sink.wait_for(Duration::from_secs(60), |reqs| {
        reqs.iter().filter(|r| r["signal"] == "profiles").any(|r| {
            otlp_processes(&r["request"]).iter().any(|(a, _)| {
                text(&a["process.pid"]) == pid
                    && text(&a["process.executable.name"]) == "hotspots-fp"
            })
        })
    });
    let reqs = found.unwrap_or_else(|r| {
        panic!(
            "no profile holds pid {pid} as hotspots-fp: {} requests\n{}",
            r.len(),
            agent.stderr()
        )
    });
    // A sample taken between fork and exec belongs to the pre-exec incarnation (named after
    // this test's thread, as it was then); the program's own incarnation is the one checked.
    let incarnations: Vec<_> = reqs
        .iter()
        .filter(|r| r["signal"] == "profiles")
        .flat_map(|r| otlp_processes(&r["request"]))
        .filter(|(a, _)| text(&a["process.pid"]) == pid)
        .collect();
    let names: Vec<String> = incarnations
        .iter()
        .map(|(a, _)| text(&a["process.executable.name"]))
        .collect();
    let (attrs, samples) = incarnations
        .into_iter()
        .find(|(a, _)| text(&a["process.executable.name"]) == "hotspots-fp")
        .unwrap_or_else(|| panic!("pid {pid} exported only as {names:?}"));
    assert_eq!(text(&attrs["process.executable.build_id.gnu"]), build_id);
    let (three, one) = hot_counts(&samples);
    // ~1.7 s of one thread at 99 Hz.
    assert!(three + one >= 50, "{samples:?}");
    assert_three_to_one(three, one, "exported profile of the exited process");
    // Service resource attributes ride along; the kernel's own frames are in other processes'
    // stacks, never unnamed.
    assert!(text(&attrs["service.name"]).len() > 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/debug/flamegraph.svg?pid=P` shows that process only; bad requests get cause and fix;
/// `/debug/pprof/profile` is the agent's own CPU as gzipped pprof.
#[test]
fn flamegraph_and_self_profile_endpoints() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_hotspots(&dir, true);
    let agent = Agent::start(&format!("{PROFILER_ONLY}  profiler: {{frequency: 99}}\n"));
    agent.wait_ready();
    // Long enough to outlive both captures on a loaded machine (a capture ends at the drain
    // after its seconds, which a long symbolization in a debug build can delay); killed below.
    let mut child = start_hotspots(&bin, 60);
    let (code, svg) = agent
        .get(&format!(
            "/debug/flamegraph.svg?seconds=3&pid={}",
            child.id()
        ))
        .unwrap();
    assert_eq!(code, 200, "{svg}");
    assert!(svg.contains("hot_three") && svg.contains("hot_one"));
    assert!(svg.contains("hotspots-fp"));
    assert!(!svg.contains("swapper"), "other processes filtered out");
    let (code, host) = agent.get("/debug/flamegraph.svg?seconds=2").unwrap();
    assert_eq!(code, 200);
    assert!(
        host.contains("hotspots-fp"),
        "whole host includes the workload: {}",
        host.split("<title>")
            .skip(1)
            .filter_map(|t| t.split("</title>").next())
            .filter(|t| !t.contains(';'))
            .take(60)
            .collect::<Vec<_>>()
            .join(" | ")
    );

    let (code, body) = agent.get("/debug/flamegraph.svg?seconds=0").unwrap();
    assert_eq!(code, 400);
    assert!(
        body.contains("out of range") && body.contains("fix: use seconds=1"),
        "{body}"
    );
    let (code, body) = agent.get("/debug/flamegraph.svg?pid=999999999").unwrap();
    assert_eq!(code, 404);
    assert!(
        body.contains("does not exist") && body.contains("fix:"),
        "{body}"
    );

    // Self-profile: fetch raw bytes (gzip) with curl-free plain HTTP.
    let file = dir.join("self.pb.gz");
    let r = Command::new("python3")
        .args([
            "-c",
            "import sys, urllib.request; open(sys.argv[2], 'wb').write(urllib.request.urlopen(sys.argv[1]).read())",
            &format!("http://{}/debug/pprof/profile?seconds=2", agent.addr),
        ])
        .arg(&file)
        .status()
        .unwrap();
    assert!(r.success());
    let dump = protoc_decode(&file);
    let strings = string_table(&dump);
    assert!(strings.iter().any(|s| s == "samples"));
    assert!(
        dump.contains("sample {"),
        "the agent's threads were sampled: {dump}"
    );
    let _ = child.kill();
    let _ = wait(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the frame-pointer walker, a binary without frame pointers gives stacks that stop
/// early: they are counted as truncated; with frame pointers, stacks reach main and are not.
/// (The DWARF unwinder's own truncation figures: tests/tests/profiler_unwind.rs.)
#[test]
fn truncated_stacks_are_counted() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let fp = build_hotspots(&dir, true);
    let nofp = build_hotspots(&dir, false);
    let agent = Agent::start(&format!(
        "{PROFILER_ONLY}  profiler: {{frequency: 99, interval: 1s, unwinder: frame_pointers}}\n"
    ));
    agent.wait_ready();
    let counts = |a: &Agent| -> (u64, u64) {
        let d = &a.status()["maps"]["PROFILE_COUNTS"]["detail"];
        (
            d["truncated_stacks"].as_u64().unwrap_or(0),
            d["user_stacks"].as_u64().unwrap_or(0),
        )
    };
    let run = |bin: &Path| -> (u64, u64) {
        // Exports every second; wait for one after the run so its samples are counted.
        let before = counts(&agent);
        assert!(wait(start_hotspots(bin, 3)).success());
        thread::sleep(Duration::from_millis(2500));
        let after = counts(&agent);
        (after.0 - before.0, after.1 - before.1)
    };
    // Per process, exactly: every sample of the workload without frame pointers is truncated,
    // none with them.
    for (bin, truncated) in [(&nofp, true), (&fp, false)] {
        let child = start_hotspots(bin, 4);
        let out = agent_profile(
            &dir,
            &[
                "--duration",
                "2s",
                "--hz",
                "99",
                "--pid",
                &child.id().to_string(),
                "--unwinder",
                "frame_pointers",
            ],
            "folded",
        );
        let stacks = folded(&std::fs::read_to_string(out).unwrap());
        let total: u64 = stacks.iter().map(|(_, n)| n).sum();
        let marked: u64 = stacks
            .iter()
            .filter(|(s, _)| s.get(1).map(String::as_str) == Some("[truncated]"))
            .map(|(_, n)| n)
            .sum();
        // 2 s of one busy thread at 99 Hz: ~198 samples; a machine loaded by other builds
        // gives the workload half a CPU or less.
        assert!(total >= 60, "{stacks:?}");
        let expected = if truncated { total } else { 0 };
        assert_eq!(marked, expected, "{}: {stacks:?}", bin.display());
        assert!(wait(child).success());
    }
    // Host-wide, on /status: other processes add to the counters too (Rust or distro binaries
    // without frame pointers count as truncated), so only a lower bound holds: the workload
    // alone adds ~297 truncated samples (3 s at 99 Hz, one thread); 100 leaves room for a
    // loaded machine.
    let (t_nofp, u_nofp) = run(&nofp);
    eprintln!("host-wide during the run without frame pointers: {t_nofp} of {u_nofp} truncated");
    assert!(t_nofp >= 100, "{t_nofp} of {u_nofp}");
    let metrics = agent.get("/metrics").unwrap().1;
    assert!(
        metrics.contains("agent_profiler_stacks_total{truncated=\"true\"}"),
        "the count is on /metrics too"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP with `enabled: false` detaches every profiler program; enabling it again (at another
/// frequency) reattaches, and flame graphs work again.
#[test]
fn sighup_disables_and_reenables_the_profiler() {
    require_root();
    let _g = serial();
    let on = format!("{PROFILER_ONLY}  profiler: {{frequency: 19}}\n");
    let agent = Agent::start(&on);
    agent.wait_ready();
    let ours = |a: &Agent| -> Vec<String> {
        bpf_programs_of(a.child.id())
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| n.starts_with("profile_"))
            .collect()
    };
    // The kernel keeps 15 characters of a program name.
    let progs = ours(&agent);
    assert!(
        // The DWARF unwinder's entry and step (the default, `auto`), the identity hooks.
        [
            "profile_dwarf",
            "profile_unwind",
            "profile_exec",
            "profile_exit"
        ]
        .iter()
        .all(|p| progs.iter().any(|n| n == p)),
        "{progs:?}"
    );
    std::fs::write(&agent.config, on.replace("frequency: 19", "enabled: false")).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for(
        |a| a.status()["probes"]["profiler"]["state"] == "disabled",
        "profiler disabled",
    );
    assert!(ours(&agent).is_empty(), "{:?}", ours(&agent));
    let (code, body) = agent.get("/debug/flamegraph.svg?seconds=1").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("not running") && body.contains("fix: enable probes.profiler"));

    std::fs::write(&agent.config, on.replace("frequency: 19", "frequency: 49")).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for(
        |a| a.status()["probes"]["profiler"]["state"] == "attached",
        "profiler attached again",
    );
    assert!(!ours(&agent).is_empty());
    let (code, _) = agent.get("/debug/flamegraph.svg?seconds=1").unwrap();
    assert_eq!(code, 200);
}

/// `mode: stream` (one ring buffer record per sample, counted in userspace) sees the same
/// workload the same way as the default in-kernel aggregation.
#[test]
fn stream_mode_counts_the_same_workload() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_hotspots(&dir, true);
    let child = start_hotspots(&bin, 6);
    let pid = child.id().to_string();
    let out = agent_profile(
        &dir,
        &[
            "--duration",
            "4s",
            "--hz",
            "99",
            "--pid",
            &pid,
            "--mode",
            "stream",
        ],
        "folded",
    );
    let stacks = folded(&std::fs::read_to_string(out).unwrap());
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let (three, one) = hot_counts(&stacks);
    eprintln!("stream: {total} samples, hot_three {three}, hot_one {one}");
    assert!(
        total <= 4 * 99 + 20,
        "{total} samples from one thread in 4 s"
    );
    assert!(three + one >= 150, "{stacks:?}");
    assert_three_to_one(three, one, "stream mode");
    assert_hot_stacks_reach_main(&stacks);
    assert!(wait(child).success());
    let _ = std::fs::remove_dir_all(&dir);
}
