//! The probes the agent runs, brought in line with the config at start and on every reload.
//!
//! Invariants: each probe owns its kernel object; a probe that fails to start is reported (state,
//! cause, fix) and the others keep running; `stop` detaches everything.

pub mod network;
pub mod syscalls;

use std::sync::Arc;

use crate::{config::Config, metrics::Store, status::state::AgentState};

pub struct Probes {
    syscalls: syscalls::SyscallsProbe,
    network: network::NetworkProbe,
}

impl Probes {
    pub fn new(store: Arc<Store>, state: Arc<AgentState>) -> Self {
        Probes {
            syscalls: syscalls::SyscallsProbe::new(store.clone(), state.clone()),
            network: network::NetworkProbe::new(store, state),
        }
    }

    /// Starts, stops, reloads or retunes each probe to match `cfg`.
    pub fn apply(&mut self, cfg: &Config) {
        self.syscalls.apply(&cfg.probes.syscalls);
        self.network.apply(&cfg.probes.network);
    }

    /// Detaches every probe (final drains included).
    pub fn stop(&mut self) {
        self.syscalls.stop();
        self.network.stop();
    }
}
