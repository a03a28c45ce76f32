//! The probes the agent runs, brought in line with the config at start and on every reload.
//!
//! Invariants: each probe owns its kernel object (on its drain thread, see `lifecycle.rs`); a
//! probe that fails to start is reported (state, cause, fix) and the others keep running; `stop`
//! detaches everything.

pub mod lifecycle;
pub mod network;
pub mod profiler;
pub mod syscalls;
pub mod waker;

use std::sync::Arc;

use self::lifecycle::{ProbeEnv, ProbeHandle};
use crate::{config::Config, metrics::Store, signals::ActivityHub, status::state::AgentState};

/// Every probe, each behind the shared lifecycle.
pub struct Probes {
    syscalls: ProbeHandle<syscalls::Syscalls>,
    network: ProbeHandle<network::Network>,
    profiler: ProbeHandle<profiler::Profiler>,
}

impl Probes {
    pub fn new(store: Arc<Store>, state: Arc<AgentState>, activity: ActivityHub) -> Self {
        let env = ProbeEnv {
            store,
            state,
            activity,
            runtime: tokio::runtime::Handle::try_current().ok(),
            waker: None,
        };
        Probes {
            syscalls: ProbeHandle::new(env.clone()),
            network: ProbeHandle::new(env.clone()),
            profiler: ProbeHandle::new(env),
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
