//! Embeds the kernel objects built by `cargo xtask build-ebpf` (one per file in
//! `agent-ebpf/src/bin/`); a missing or stale object is a build error naming the command to run.
//!
//! Reruns (and so recompiles the agent) only when an object's file or a kernel source changes:
//! build-ebpf rewrites an object only when its bytes change.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

fn newest_source(path: &Path, newest: &mut SystemTime) {
    if path.is_dir() {
        for e in fs::read_dir(path).into_iter().flatten().flatten() {
            newest_source(&e.path(), newest);
        }
    } else if let Ok(m) = fs::metadata(path).and_then(|m| m.modified()) {
        *newest = (*newest).max(m);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    eprintln!(
        "fix: run `cargo xtask build-ebpf` (`cargo xtask run` and `cargo xtask test` do it too)"
    );
    std::process::exit(1);
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-env-changed=AGENT_EBPF_DIR");
    // <target>/[<triple>/]<profile>/build/agent-*/out: the object dir is <target>/ebpf.
    let dir = std::env::var_os("AGENT_EBPF_DIR")
        .map(PathBuf::from)
        .or_else(|| out.ancestors().map(|a| a.join("ebpf")).find(|d| d.is_dir()))
        .unwrap_or_else(|| root.join("target/ebpf"));

    let sources = [
        root.join("agent-ebpf/src"),
        root.join("agent-ebpf/Cargo.toml"),
        root.join("agent-ebpf/build.rs"),
        root.join("agent-common/src"),
    ];
    let mut newest = SystemTime::UNIX_EPOCH;
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
        newest_source(s, &mut newest);
    }

    let mut probes: Vec<String> = fs::read_dir(root.join("agent-ebpf/src/bin"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    probes.sort();

    // `cargo xtask build-ebpf` touches this stamp on every run and rewrites an object only
    // when its bytes change; without a stamp (objects from elsewhere), the objects' own times.
    let stamp = fs::metadata(dir.join("built.stamp"))
        .and_then(|m| m.modified())
        .ok();
    let mut generated = String::from("/// Kernel objects by probe name, embedded at build time.\npub static OBJECTS: &[(&str, &[u8])] = &[\n");
    for probe in &probes {
        let object = dir.join(format!("{probe}.bpf.o"));
        println!("cargo:rerun-if-changed={}", object.display());
        let built = match fs::metadata(&object).and_then(|m| m.modified()) {
            Ok(t) => t,
            Err(_) => fail(&format!("kernel object {} is missing", object.display())),
        };
        if newest > stamp.unwrap_or(built).max(built) {
            fail(&format!(
                "kernel object {} is older than the kernel sources (agent-ebpf/, agent-common/)",
                object.display()
            ));
        }
        let copy = out.join(format!("{probe}.bpf.o"));
        fs::copy(&object, &copy).expect("copy kernel object into OUT_DIR");
        generated.push_str(&format!(
            "    ({probe:?}, aya::include_bytes_aligned!(concat!(env!(\"OUT_DIR\"), \"/{probe}.bpf.o\"))),\n"
        ));
    }
    generated.push_str("];\n");
    fs::write(out.join("objects.rs"), generated).expect("write objects.rs");
}
