//! Kernel object build, release run, the full test run and lints.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{
    setup,
    util::{cargo, is_root, root, run, target_dir},
};

pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// `cargo +nightly <subcommand>` on the kernel crate for the BPF target.
fn nightly_ebpf(subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args([
            "+nightly",
            subcommand,
            "--package",
            "agent-ebpf",
            "--target",
            EBPF_TARGET,
        ])
        .args(["-Z", "build-std=core", "--release"])
        // A host RUSTFLAGS (e.g. -C target-cpu=native) must not leak into the BPF build.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC");
    cmd
}

/// One kernel object per file in `agent-ebpf/src/bin/`.
fn probe_names() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(root().join("agent-ebpf/src/bin"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "rs") {
            names.push(p.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Builds `agent-ebpf` and copies each probe's object to `<target>/ebpf/<probe>.bpf.o`, where
/// the agent's build script picks them up.
pub fn build_ebpf() -> Result<()> {
    setup::ensure(false)?;
    run(&mut nightly_ebpf("build")).context("kernel crate build failed")?;
    let dest_dir = target_dir().join("ebpf");
    std::fs::create_dir_all(&dest_dir)?;
    for probe in probe_names()? {
        let built = target_dir().join(EBPF_TARGET).join("release").join(&probe);
        let dest = dest_dir.join(format!("{probe}.bpf.o"));
        std::fs::copy(&built, &dest).with_context(|| format!("copy {built:?} to {dest:?}"))?;
        eprintln!("kernel object: {}", dest.display());
    }
    Ok(())
}

/// The path of a built binary of this workspace.
pub fn bin_path(profile: &str, name: &str) -> std::path::PathBuf {
    target_dir().join(profile).join(name)
}

pub fn run_agent(args: &[String]) -> Result<()> {
    build_ebpf()?;
    run(cargo()
        .current_dir(root())
        .args(["build", "--release", "--package", "agent"]))?;
    let agent = bin_path("release", "agent");
    let mut cmd = if is_root() {
        Command::new(&agent)
    } else {
        eprintln!("the agent needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN): using sudo");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&agent);
        c
    };
    run(cmd.arg("run").args(args))
}

pub fn test(args: &[String]) -> Result<()> {
    setup::ensure(true)?;
    build_ebpf()?;
    // Integration tests start the real agent binary and a workload binary.
    run(cargo().current_dir(root()).args(["build", "--bins"]))?;
    run(cargo()
        .current_dir(root())
        .arg("test")
        .args(args)
        .env("AGENT_BIN", bin_path("debug", "agent")))
}

pub fn lint() -> Result<()> {
    build_ebpf()?;
    run(cargo()
        .current_dir(root())
        .args(["fmt", "--all", "--check"]))?;
    run(cargo()
        .current_dir(root())
        .args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run(nightly_ebpf("clippy").args(["--", "-D", "warnings"]))
}
