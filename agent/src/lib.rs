//! The agent library: everything `agent` (the binary) runs, exposed for tests.

pub mod alloc;
pub mod config;
pub mod detection;
pub mod ebpf;
pub mod enforcement;
pub mod export;
pub mod k8s;
pub mod logging;
pub mod metrics;
pub mod opamp;
pub mod ottl;
pub mod output;
pub mod persist;
pub mod preflight;
pub mod priority;
pub mod probes;
pub mod procinfo;
pub mod profile;
pub mod runtime;
pub mod selfprotect;
pub mod selfstats;
pub mod signals;
pub mod status;
pub mod transform;

/// The agent's version (the crate version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
