//! `cargo xtask image`: the container image of `deploy/Dockerfile`, built with podman from
//! local base images, so no registry is needed.
//!
//! - The runtime base (`localhost/agent-base:bookworm`) is a Debian root with glibc and libgcc
//!   only, made by `mmdebstrap --variant=extract` from Debian's packages and `podman import`ed;
//!   made once, reused after.
//! - Default: the release binary is built on this host (`build-ebpf`, `cargo build --release`)
//!   and put into the `prebuilt` stage. `--binary FILE` takes a binary built elsewhere.
//! - `--full`: the Dockerfile's `build` stage builds the binary inside the image build from a
//!   build base (`--build-base`, default `localhost/agent-build:bookworm`; with a registry,
//!   `docker.io/library/rust:1-bookworm`). Without a registry, `--make-build-base` makes that
//!   base from Debian's packages plus this host's rustup toolchains (several GB, minutes).
//!
//! RUN steps use `--isolation chroot`: no OCI runtime is needed to build (crun refuses hosts
//! whose cgroup v2 hierarchy holds controllers while v1 is mounted, like the development VM).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    build, setup,
    util::{cargo, output, root, run, target_dir},
};

pub const RUNTIME_BASE: &str = "localhost/agent-base:bookworm";
pub const BUILD_BASE: &str = "localhost/agent-build:bookworm";
const SUITE: &str = "bookworm";
/// The binary links only these (see `ldd target/release/agent`).
const RUNTIME_PACKAGES: &str = "libc6,libgcc-s1,base-files,netbase";
/// The host's CA certificates (Debian layout), lent to `--full` builds.
const HOST_CA_DIR: &str = "/etc/ssl/certs";
/// Fixed timestamps in the base: the same packages give the same layer.
const SOURCE_DATE_EPOCH: &str = "1700000000";

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Image name and tag (default localhost/agent:<version>).
    #[arg(long)]
    tag: Option<String>,
    /// Put this binary into the `prebuilt` stage instead of building one.
    #[arg(long, conflicts_with = "full")]
    binary: Option<PathBuf>,
    /// Build the binary inside the image build (the Dockerfile's `build` stage).
    #[arg(long)]
    full: bool,
    /// The `build` stage's base image (with --full).
    #[arg(long, default_value = BUILD_BASE)]
    build_base: String,
    /// Make `localhost/agent-build:bookworm` from Debian's packages and this host's rustup
    /// toolchains first (with --full).
    #[arg(long)]
    make_build_base: bool,
}

fn image_exists(name: &str) -> bool {
    Command::new("podman")
        .args(["image", "exists", name])
        .status()
        .is_ok_and(|s| s.success())
}

/// podman and mmdebstrap from Debian's packages when missing.
pub fn ensure_tools() -> Result<()> {
    let mut missing = Vec::new();
    for (bin, pkg) in [
        ("podman", "podman"),
        ("mmdebstrap", "mmdebstrap"),
        ("runc", "runc"),
    ] {
        if output(Command::new("which").arg(bin)).is_none() {
            missing.push(pkg);
        }
    }
    setup::apt_install(&missing)
}

/// The runtime base image, made with mmdebstrap and imported when missing.
pub fn ensure_runtime_base() -> Result<()> {
    if image_exists(RUNTIME_BASE) {
        return Ok(());
    }
    let dir = target_dir().join("image");
    std::fs::create_dir_all(&dir)?;
    let tar = dir.join("agent-base.tar");
    eprintln!("making the runtime base {RUNTIME_BASE} with mmdebstrap ({RUNTIME_PACKAGES})");
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=extract", "--mode=root"])
        .arg(format!("--include={RUNTIME_PACKAGES}"))
        .arg("--dpkgopt=path-exclude=/usr/share/{doc,man,locale,info}/*")
        .arg(SUITE)
        .arg(&tar)
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH))
    .context("mmdebstrap needs Debian's package mirror (apt-get works here?)")?;
    run(Command::new("podman")
        .arg("import")
        .arg(&tar)
        .arg(RUNTIME_BASE))?;
    let _ = std::fs::remove_file(&tar);
    Ok(())
}

/// A Debian root with a C toolchain and apt (for the build stage's `cargo xtask setup`), plus
/// this host's rustup home and cargo binaries: the README's toolchain, without a download.
fn make_build_base() -> Result<()> {
    let home = |var: &str, dflt: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap_or_default()).join(dflt))
    };
    let rustup = home("RUSTUP_HOME", ".rustup");
    let cargo_home = home("CARGO_HOME", ".cargo");
    let dir = target_dir().join("image");
    std::fs::create_dir_all(&dir)?;
    let tar = dir.join("agent-build.tar");
    eprintln!(
        "making the build base {BUILD_BASE} (Debian + {})",
        rustup.display()
    );
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=apt", "--mode=root"])
        .arg("--include=ca-certificates,gcc,libc6-dev,git,sudo,pkg-config")
        .arg(format!(
            "--customize-hook=mkdir -p \"$1/usr/local/rustup\" \"$1/usr/local/cargo/bin\" && cp -a {}/. \"$1/usr/local/rustup/\" && cp -a {}/bin/. \"$1/usr/local/cargo/bin/\" && rm -f \"$1/usr/local/cargo/bin/bpf-linker\"",
            rustup.display(),
            cargo_home.display()
        ))
        .arg(SUITE)
        .arg(&tar))?;
    run(Command::new("podman")
        .arg("import")
        .args(["--change", "ENV RUSTUP_HOME=/usr/local/rustup"])
        .args(["--change", "ENV CARGO_HOME=/usr/local/cargo"])
        .args([
            "--change",
            "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .arg(&tar)
        .arg(BUILD_BASE))?;
    let _ = std::fs::remove_file(&tar);
    Ok(())
}

pub fn run_image(args: ImageArgs) -> Result<()> {
    ensure_tools()?;
    ensure_runtime_base()?;
    let version = env!("CARGO_PKG_VERSION");
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("localhost/agent:{version}"));
    let dockerfile = root().join("deploy/Dockerfile");
    let mut cmd = Command::new("podman");
    cmd.args(["build", "--pull=never", "--isolation=chroot"])
        .arg("--file")
        .arg(&dockerfile)
        .args(["--tag", &tag]);
    if args.full {
        if args.make_build_base && !image_exists(BUILD_BASE) {
            make_build_base()?;
        }
        if !image_exists(&args.build_base) && args.build_base == BUILD_BASE {
            bail!(
                "no build base image {BUILD_BASE}\nfix: add --make-build-base (from Debian and this host's toolchain), or pass --build-base docker.io/library/rust:1-bookworm where a registry is reachable"
            );
        }
        cmd.args(["--build-arg", &format!("BUILD_BASE={}", args.build_base)])
            .args(["--network", "host"]);
        // The build downloads crates: trust what this host trusts (a TLS-inspecting proxy's
        // CA, as on the development VM), read-only and only while building.
        if Path::new(HOST_CA_DIR).join("ca-certificates.crt").exists() {
            cmd.args(["--volume", &format!("{HOST_CA_DIR}:{HOST_CA_DIR}:ro")]);
        }
        cmd.args(["--target", "runtime"]).arg(root());
    } else {
        let binary = match args.binary {
            Some(b) => b,
            None => {
                build::build_ebpf()?;
                run(cargo().current_dir(root()).args([
                    "build",
                    "--release",
                    "--package",
                    "agent",
                ]))?;
                build::bin_path("release", "agent")
            }
        };
        let ctx = target_dir().join("image/context");
        let _ = std::fs::remove_dir_all(&ctx);
        std::fs::create_dir_all(&ctx)?;
        std::fs::copy(&binary, ctx.join("agent"))
            .with_context(|| format!("copy {}", binary.display()))?;
        cmd.args(["--target", "prebuilt"]).arg(&ctx);
    }
    run(&mut cmd)?;
    eprintln!("image: {tag}");
    Ok(())
}
