//! The agent library: everything `agent` (the binary) runs, exposed for tests.

pub mod config;
pub mod ebpf;
pub mod export;
pub mod logging;
pub mod metrics;
pub mod opamp;
pub mod output;
pub mod preflight;
pub mod probes;
pub mod procinfo;
pub mod profile;
pub mod runtime;
pub mod selfstats;
pub mod status;

/// The agent's version (the crate version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
