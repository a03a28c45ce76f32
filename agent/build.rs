//! Embeds the kernel object built by `cargo xtask build-ebpf`; a missing or stale object is a
//! build error naming the command to run.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

const OBJECT: &str = "agent.bpf.o";

fn newest_source(dir: &Path, newest: &mut SystemTime) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            newest_source(&p, newest);
        } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
            *newest = (*newest).max(m);
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    eprintln!("fix: run `cargo xtask build-ebpf` (or `cargo xtask run` / `cargo xtask test`, which do it)");
    std::process::exit(1);
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let object = match std::env::var_os("AGENT_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            // <target>/<profile>/build/agent-*/out, possibly with a <triple> level: find <target>.
            let target = out
                .ancestors()
                .find(|a| a.join("ebpf").join(OBJECT).exists())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.join("target"));
            target.join("ebpf").join(OBJECT)
        }
    };
    let sources = [
        root.join("agent-ebpf/src"),
        root.join("agent-ebpf/Cargo.toml"),
        root.join("agent-common/src"),
    ];
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-env-changed=AGENT_EBPF_OBJECT");

    let built = match fs::metadata(&object).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => fail(&format!("kernel object {} is missing", object.display())),
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    for s in &sources {
        if s.is_dir() {
            newest_source(s, &mut newest);
        } else if let Ok(m) = fs::metadata(s).and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    if newest > built {
        fail(&format!(
            "kernel object {} is older than the kernel sources (agent-ebpf/, agent-common/)",
            object.display()
        ));
    }
    fs::copy(&object, out.join(OBJECT)).expect("copy kernel object into OUT_DIR");
}
