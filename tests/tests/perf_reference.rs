//! Proves the `perf` reference for the CPU profiler tests: `perf` samples the `hotspots` workload,
//! its frame-pointer stacks reach `main`, and `hot_three` gets 3/4 of the two hot functions'
//! samples within the statistical bound.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use integration_tests::{profiling::*, require_root, tempdir};

/// hotspots' share of CPU time in `hot_three` (vs `hot_one`).
const EXPECTED: f64 = 0.75;

#[test]
fn perf_sees_the_3_to_1_hotspots_with_stacks_to_main() {
    require_root();
    let dir = tempdir();
    let bin = build_hotspots(&dir, true);
    assert!(build_id_of(&bin).is_some(), "hotspots has a GNU build id");

    let child = Command::new(&bin)
        .arg("8")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start hotspots");
    // Let it get going before attaching.
    thread::sleep(Duration::from_millis(300));
    let profile = perf_record(child.id(), 5.0, 99, &dir);
    let out = child.wait_with_output().expect("wait for hotspots");
    assert!(out.status.success(), "hotspots: {}", out.status);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.starts_with("hotspots: "), "{summary}");

    let three = profile.self_counts.get("hot_three").copied().unwrap_or(0);
    let one = profile.self_counts.get("hot_one").copied().unwrap_or(0);
    let n = three + one;
    let got = ratio(three, one);
    let tol = proportion_tolerance(EXPECTED, n);
    eprintln!(
        "perf: {} samples, hot_three {three}, hot_one {one}, ratio {got:.4} (expected \
         {EXPECTED} ± {tol:.4}); hotspots said: {}",
        profile.total,
        summary.trim()
    );
    assert!(
        three > 0 && one > 0,
        "both hot functions sampled: {profile:?}"
    );
    // ~495 samples expected (5 s at 99 Hz); far fewer means perf or the machine misbehaved.
    assert!(
        n >= 200,
        "too few samples in the hot functions ({n} of {})",
        profile.total
    );

    // The frame-pointer walk from the hot leaves reaches main.
    let hot_stacks: Vec<_> = profile
        .stacks
        .iter()
        .filter(|(s, _)| s[0] == "hot_three")
        .collect();
    let to_main: u64 = hot_stacks
        .iter()
        .filter(|(s, _)| s.iter().any(|f| f == "main"))
        .map(|(_, c)| c)
        .sum();
    assert!(
        to_main > 0,
        "no hot_three stack reaches main: {hot_stacks:?}"
    );
    // Only a sample taken on a leaf's first instruction (before `push %rbp`) can skip a frame.
    assert!(
        to_main * 100 >= three * 95,
        "{to_main} of {three} hot_three stacks reach main: {hot_stacks:?}"
    );
    assert!(
        hot_stacks.iter().any(|(s, _)| s.starts_with(&[
            "hot_three".into(),
            "run_loop".into(),
            "main".into()
        ])),
        "hot_three <- run_loop <- main: {hot_stacks:?}"
    );
    assert!(profile.inclusive["main"] >= to_main);

    assert!(
        (got - EXPECTED).abs() <= tol,
        "hot_three share {got:.4} over {n} samples, expected {EXPECTED} ± {tol:.4}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
