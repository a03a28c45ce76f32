//! The probes the agent runs, brought in line with the config at start and on every reload.
//!
//! Invariants: each probe owns its kernel object; a probe that fails to start is reported (state,
//! cause, fix) and the others keep running; `stop` detaches everything.

pub mod network;
pub mod profiler;
pub mod syscalls;

use std::{sync::Arc, thread};

use crate::{
    config::Config,
    ebpf::LoadError,
    metrics::Store,
    status::state::{AgentState, HookStatus, ProbeState, ProbeStatus},
};

/// Records probe `name`'s state for `/status` and `/readyz`, with cause and fix from `err`.
pub(crate) fn report(
    state: &AgentState,
    name: &str,
    s: ProbeState,
    err: Option<&LoadError>,
    hooks: Vec<HookStatus>,
) {
    state.set_probe(
        name,
        ProbeStatus {
            state: s,
            error: err.map(|e| e.cause.clone()),
            fix: err.map(|e| e.fix.clone()),
            hooks,
        },
    );
}

/// Logs why probe `name` cannot run (cause, then fix) and records it as failed.
pub(crate) fn report_failure(
    state: &AgentState,
    name: &str,
    e: &LoadError,
    hooks: Vec<HookStatus>,
) {
    tracing::error!(probe = name, "{}", e.cause);
    tracing::error!(probe = name, "fix: {}", e.fix);
    report(state, name, ProbeState::Failed, Some(e), hooks);
}

/// Starts probe `name`'s drain thread (`<name>-drain`).
pub(crate) fn spawn_drain(
    name: &str,
    run: impl FnOnce() + Send + 'static,
) -> Result<thread::JoinHandle<()>, LoadError> {
    thread::Builder::new()
        .name(format!("{name}-drain"))
        .spawn(run)
        .map_err(|e| {
            LoadError::new(
                format!("cannot start the {name} drain thread: {e}"),
                "raise the thread limit (ulimit -u)",
            )
        })
}

pub struct Probes {
    syscalls: syscalls::SyscallsProbe,
    network: network::NetworkProbe,
    profiler: profiler::ProfilerProbe,
}

impl Probes {
    pub fn new(store: Arc<Store>, state: Arc<AgentState>) -> Self {
        Probes {
            syscalls: syscalls::SyscallsProbe::new(store.clone(), state.clone()),
            network: network::NetworkProbe::new(store, state.clone()),
            profiler: profiler::ProfilerProbe::new(state),
        }
    }

    /// Starts, stops, reloads or retunes each probe to match `cfg`.
    pub fn apply(&mut self, cfg: &Config) {
        self.syscalls.apply(&cfg.probes.syscalls);
        self.network.apply(&cfg.probes.network);
        self.profiler.apply(&cfg.probes.profiler);
    }

    /// Detaches every probe (final drains included).
    pub fn stop(&mut self) {
        self.syscalls.stop();
        self.network.stop();
        self.profiler.stop();
    }
}
