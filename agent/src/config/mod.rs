//! The agent's configuration: one YAML file (or the embedded default), environment overrides,
//! validation, and errors that point at the file, line, column and field path.
//!
//! Every field has a default and unknown fields are rejected. The config is swapped whole on
//! reload (SIGHUP, done by the caller), so `Config` is plain data: `Clone + PartialEq`.
//!
//! - `model.rs`: the structs and their defaults.
//! - `load.rs`: `Config::{from_yaml, load, apply_env, validate, to_yaml, hash}` and parser
//!   errors.
//! - `env.rs`: the `AGENT_*` environment overrides.
//! - `validate.rs`: ranges and formats, and the "what is allowed" hints.
//! - `locate.rs`: finds a field's line in the YAML text.
//! - `error.rs`: `ConfigError`.
//! - `watch.rs`: reload when the file (a mounted ConfigMap) changes.

mod env;
mod error;
mod load;
mod locate;
mod model;
mod validate;
pub mod watch;

#[cfg(test)]
mod tests;

pub use env::ENV_OVERRIDES;
pub use error::{ConfigError, Source};
pub use load::DEFAULT_ORIGIN;
pub use model::{
    Aggregation, Compression, Config, ExportConfig, HistogramBuckets, LogConfig, LogFormat,
    NetworkConfig, OutputConfig, ProbesConfig, ProfilerConfig, ProfilerMode, ProfilerUnwinder,
    Protocol, SignalConfig, SpoolConfig, StatusConfig, SyscallAggregation, SyscallsConfig,
    Temporality, TlsConfig,
};
pub use validate::check_url;

/// The embedded default config, commented for users; parses to exactly `Config::default()`.
pub const DEFAULT_YAML: &str = include_str!("default.yaml");
