//! The command line: config printing and validation errors, preflight, version.

use std::process::Command;

use integration_tests::*;

fn agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn default_config_prints_and_validates() {
    let (code, yaml, _) = agent(&["config", "default"]);
    assert_eq!(code, 0);
    let dir = tempdir();
    let f = dir.join("default.yaml");
    std::fs::write(&f, &yaml).unwrap();
    let (code, out, err) = agent(&["config", "validate", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid"), "{out}");
}

#[test]
fn invalid_config_names_file_line_field_and_fix() {
    let dir = tempdir();
    let f = dir.join("bad.yaml");
    std::fs::write(
        &f,
        "log:\n  level: info\nprobes:\n  syscalls:\n    intervall: 5s\n",
    )
    .unwrap();
    let (code, _, err) = agent(&["config", "validate", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml:5"), "{err}");
    assert!(err.contains("intervall"), "{err}");
    assert!(err.contains("fix: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        2,
        "one line of cause, one of fix:\n{err}"
    );

    let (code, _, err) = agent(&[
        "config",
        "validate",
        dir.join("missing.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("missing.yaml") && err.contains("fix: "),
        "{err}"
    );
}

#[test]
fn version_prints() {
    let (code, out, _) = agent(&["version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("agent {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_reports_every_probe() {
    require_root();
    let _g = serial();
    let (code, out, err) = agent(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    for item in [
        "kernel",
        "btf",
        "tracefs",
        "capability CAP_BPF",
        "cgroup v2",
        "feature ring buffer",
        "feature perf_event programs",
        "feature kprobes",
        "probe syscalls",
        "probe profiler",
        "profiler unwinder",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(item)),
            "{item} missing:\n{out}"
        );
    }
    let probe = out
        .lines()
        .find(|l| l.starts_with("probe syscalls"))
        .unwrap();
    assert!(probe.contains(" ok "), "{probe}");
    // The DWARF unwinder was tried for real (this kernel takes it: perf_event + tail calls).
    let unwinder = out
        .lines()
        .find(|l| l.starts_with("profiler unwinder"))
        .unwrap();
    assert!(
        unwinder.contains(" ok ") && unwinder.contains("dwarf works"),
        "{unwinder}"
    );
}
