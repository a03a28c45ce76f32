//! Benchmarks (filled in below).
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Which {
    /// getppid loop: bare vs under the agent vs under `syscount -L`.
    Syscalls,
}

pub fn run(_which: Which) -> Result<()> {
    anyhow::bail!("not yet")
}
