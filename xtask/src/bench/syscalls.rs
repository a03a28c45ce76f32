//! `bench syscalls`: a getppid loop bare, under the agent and under `syscount -L`, the three
//! in a rotated order each round; the cost each adds is computed per round against that round's
//! bare run.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    thread,
};

use anyhow::{bail, Context, Result};

use super::{
    harness::{differences, noise_note, ratios, rotation, verdict, Spread},
    host::{build_release, ensure_tracefs, program_costs, start_agent, Stopper},
};
use crate::{build::bin_path, setup};

/// Runs the workload to completion; returns its own measured ns per call.
pub(super) fn workload(calls: u64) -> Result<f64> {
    let out = Command::new(bin_path("release", "syscall-workload"))
        .args(["getppid", &calls.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("done "))
        .and_then(|v| v.trim().parse().ok())
        .context("workload printed no timing")
}

pub(super) fn start_syscount() -> Result<Stopper> {
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

pub(super) fn run(calls: u64, rounds: usize) -> Result<()> {
    setup::ensure(true)?;
    build_release()?;
    ensure_tracefs();
    let out_dir = std::env::temp_dir().join("agent-bench-output");
    // ns per call: bare, agent, syscount -L.
    let mut ns: [Vec<f64>; 3] = Default::default();
    const NAMES: [&str; 3] = ["bare", "agent", "syscount -L"];
    workload(calls / 10)?; // warm the page cache and CPU frequency
    for round in 0..rounds {
        for c in rotation(round, 3) {
            let v = match c {
                0 => workload(calls)?,
                1 => {
                    let a = start_agent(&out_dir, None)?;
                    let v = workload(calls);
                    a.stop()?;
                    v?
                }
                _ => {
                    let s = start_syscount()?;
                    let v = workload(calls);
                    s.stop()?;
                    v?
                }
            };
            ns[c].push(v);
        }
        let order: Vec<&str> = rotation(round, 3).map(|c| NAMES[c]).collect();
        eprintln!(
            "round {}/{rounds} ({}): bare {:.1} ns, agent {:.1} ns, syscount -L {:.1} ns per call",
            round + 1,
            order.join(", "),
            ns[0][round],
            ns[1][round],
            ns[2][round]
        );
    }
    let [bare, agent, syscount] = &ns;
    let added_a = differences(agent, bare);
    let added_s = differences(syscount, bare);
    let ratio = Spread::of(&ratios(&added_a, &added_s));
    println!(
        "getppid x {calls}, {rounds} rounds in rotated order: ns per call, median [min–max] over \
         rounds; added ns and ratios computed per round against that round's bare run"
    );
    println!("  bare           {:>24}", Spread::of(bare).show(1));
    for (name, v, added) in [
        ("agent", agent, &added_a),
        ("syscount -L", syscount, &added_s),
    ] {
        let added = Spread::of(added);
        println!(
            "  {name:14} {:>24}   adds {} ns ({})",
            Spread::of(v).show(1),
            added.show(1),
            noise_note(&added)
        );
    }
    println!(
        "  agent adds {} x what syscount -L adds (goal <= 0.50): {}",
        ratio.show(2),
        verdict(&ratio, 0.5)
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
