//! Self-protection: the agent watches its own cost (CPU with its eBPF programs' run time, RSS,
//! kernel map memory) against budgets and sheds sampling level by level (normal → light →
//! moderate → heavy → emergency), stepping back with hysteresis when the load falls.
//!
//! - `config.rs`: the `self_protection:` section and its checks.
//! - `level.rs`: the levels and the ladder (one step at a time, hysteresis).
//! - `degrade.rs`: what each level sheds, as a pure function of the configured config.
//! - `cost.rs`: the agent's kernel-side cost from its eBPF descriptors' fdinfo.
//! - `engine.rs`: the task (measure, decide, publish, send the level to the runtime).
//! - `report.rs`: `/status`, the metric batch and the level-change log record.
//!
//! Invariants: the runtime applies `degrade(configured, level)` on every reload and level
//! change, so a reload never silently undoes a degradation and a level never outlives its
//! cause past `recover_after` evaluations; enforcement is never degraded.

pub mod config;
pub mod cost;
pub mod degrade;
pub mod engine;
pub mod level;
pub mod report;

pub use config::SelfProtectionConfig;
pub use degrade::degrade;
pub use level::Level;
