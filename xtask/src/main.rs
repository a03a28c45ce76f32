//! `cargo xtask`: the project's build tasks (toolchain bootstrap, kernel object, run, tests, benchmarks).

mod bench;
mod build;
mod image;
mod nab;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks; run as `cargo xtask <task>`")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs, idempotently (nightly rust-src, LLVM 22, bpf-linker);
    /// `--test-peers` adds the tools the tests compare against (bpftool, syscount, iproute2).
    Setup {
        #[arg(long)]
        test_peers: bool,
    },
    /// Build the kernel object (agent-ebpf) that the agent embeds.
    BuildEbpf,
    /// Set up, build everything in release mode and run the agent with its embedded defaults.
    Run {
        /// Arguments after `--` go to `agent run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up (with test peers), build, and run every test: unit and privileged integration.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy -D warnings` on every crate, the kernel one included.
    Lint,
    /// Score a detector on the NAB corpus (`../shared/nab`): swept, shipped-threshold and
    /// `alert`-column scores per profile.
    Nab(nab::Args),
    /// The container image (deploy/Dockerfile) with podman, from local base images.
    Image(image::ImageArgs),
    /// Side-by-side overhead benchmarks.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup { test_peers } => setup::ensure(test_peers),
        Task::BuildEbpf => build::build_ebpf(),
        Task::Run { args } => build::run_agent(&args),
        Task::Test { args } => build::test(&args),
        Task::Lint => build::lint(),
        Task::Nab(args) => nab::run(args),
        Task::Image(args) => image::run_image(args),
        Task::Bench { which } => bench::run(which),
    }
}
