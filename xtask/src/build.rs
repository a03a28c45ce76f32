//! Kernel object build, release run, the full test run and lints.

use std::{path::Path, process::Command};

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
/// the agent's build script picks them up. An object is written only when its bytes changed, so
/// its mtime (which the agent's build script watches) moves only then and an unchanged kernel
/// crate never makes cargo rebuild the agent.
///
/// Objects linked with BTF (`bpf-linker --btf`, the network probe's: its socket-storage map
/// needs BTF) lose `.BTF.ext` and their DWARF here: aya 0.14 sends the func_info of `.BTF.ext`
/// for programs whose functions it has linked from `.text`, which the kernel refuses ("number
/// of funcs in func_info doesn't match number of subprogs"); the map and type BTF stays.
pub fn build_ebpf() -> Result<()> {
    setup::ensure(false)?;
    run(&mut nightly_ebpf("build")).context("kernel crate build failed")?;
    let dest_dir = target_dir().join("ebpf");
    std::fs::create_dir_all(&dest_dir)?;
    for probe in probe_names()? {
        let built = target_dir().join(EBPF_TARGET).join("release").join(&probe);
        let dest = dest_dir.join(format!("{probe}.bpf.o"));
        let bytes = object_bytes(&built).with_context(|| format!("prepare {built:?}"))?;
        if std::fs::read(&dest).ok().as_deref() == Some(&bytes[..]) {
            eprintln!("kernel object: {} (unchanged)", dest.display());
            continue;
        }
        // Written whole then renamed: the agent's build never sees half an object.
        let tmp = dest.with_extension("o.tmp");
        std::fs::write(&tmp, &bytes).with_context(|| format!("write {tmp:?}"))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("rename to {dest:?}"))?;
        eprintln!("kernel object: {}", dest.display());
    }
    // When the objects were last built from the sources (written every time, watched by
    // nobody): the agent's build script compares the kernel sources against it, not against
    // the objects' own mtimes, which move only when their bytes do.
    std::fs::write(dest_dir.join(BUILT_STAMP), b"")?;
    Ok(())
}

/// File under `<target>/ebpf/` touched by every successful `build-ebpf`.
pub const BUILT_STAMP: &str = "built.stamp";

/// The bytes of a linked kernel object as the agent embeds it (see [`build_ebpf`]).
fn object_bytes(built: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(built)?;
    // The section name appears in the section-name string table of any object that has it.
    if !bytes.windows(9).any(|w| w == b".BTF.ext\0") {
        return Ok(bytes);
    }
    let stripped = built.with_extension("stripped.o");
    let objcopy = Path::new(setup::LLVM_PREFIX).join("bin/llvm-objcopy");
    run(Command::new(&objcopy)
        .args([
            "--remove-section=.BTF.ext",
            "--remove-section=.rel.BTF.ext",
            "--strip-debug",
        ])
        .arg(built)
        .arg(&stripped))
    .with_context(|| format!("{} (installed by `cargo xtask setup`)", objcopy.display()))?;
    let out = std::fs::read(&stripped)?;
    let _ = std::fs::remove_file(&stripped);
    Ok(out)
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
