//! Decide and act: rules on the agent's own signals (thresholds held for a time, or anomalies
//! from detection) turned into actions in the kernel and on the host — safely (monitor mode by
//! default, never the agent, pid 1, kernel threads or the allowlist), audited (every decision
//! an OTLP log record, a `/status` entry and a counter), and undone when their time is up.
//!
//! - `config.rs`: the `enforcement:` section; `rules.rs`: checks with field paths and fixes,
//!   compiled rules (conditions with `for` in time, actions with parsed arguments);
//! - `scope.rs`: scopes and targets (`/proc/<pid>` read when a rule fires); `cgroup.rs`: the
//!   hierarchies and a target's own cgroup; `safety.rs`: what is never acted on;
//! - `engine.rs`: streaks, decisions, cooldown, rate cap, modes, TTLs; `engine/lifecycle.rs`:
//!   recovery at start, undo, shutdown; `engine/publish.rs`: metrics and `/status`;
//! - `journal.rs`: limiting actions written before they act (format-versioned); `pins.rs`:
//!   bpffs pins of `persist: true` limits;
//! - `actions/`: one file per action kind (the kernel objects of `rate_limit`, `block` and
//!   in-kernel `signal` are loaded on first use);
//! - `audit.rs`, `metrics.rs`, `status.rs`: the three outputs of a decision and the engine's
//!   state on `/status`.
//!
//! Wired only in `runtime.rs`: [`spawn`] with the signal and anomaly broadcasts, [`Handle::apply`]
//! on every config change, [`Handle::stop`] at shutdown.

pub mod actions;
pub mod audit;
pub mod cgroup;
pub mod config;
pub mod engine;
pub mod journal;
pub mod metrics;
pub mod pins;
pub mod rules;
pub mod safety;
pub mod scope;
pub mod status;

#[cfg(test)]
mod tests;

pub use config::{EnforcementConfig, Mode};
pub use engine::{Engine, Env, Settings};

use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinHandle,
};

use crate::signals::{AnomalyHub, SignalHub};

enum Ctl {
    Apply(Box<Settings>),
    Stop(oneshot::Sender<()>),
}

/// The running engine's control.
pub struct Handle {
    tx: mpsc::Sender<Ctl>,
    task: JoinHandle<()>,
}

impl Handle {
    /// Applies a new (validated) config: rules, modes, allowlist. Called from `Running::apply`,
    /// the one reload path (SIGHUP and OpAMP alike).
    pub async fn apply(&self, cfg: &crate::config::Config) {
        let _ = self.tx.send(Ctl::Apply(Box::new(Settings::of(cfg)))).await;
    }

    /// Undoes non-persistent limits and stops.
    pub async fn stop(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Ctl::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

/// Starts the engine on the signal and anomaly broadcasts, as a task of `rt` (the decision
/// runtime: [`crate::priority::DecisionRuntime`]).
pub fn spawn(
    env: Env,
    cfg: &crate::config::Config,
    signals: &SignalHub,
    anomalies: &AnomalyHub,
    rt: &tokio::runtime::Handle,
) -> Handle {
    let (tx, ctl) = mpsc::channel(8);
    // Subscribed before the first await: nothing published from now on is missed.
    let srx = signals.subscribe();
    let arx = anomalies.subscribe();
    let settings = Settings::of(cfg);
    let task = rt.spawn(async move {
        let engine = tokio::task::block_in_place(|| Engine::new(env, &settings));
        run(engine, srx, arx, ctl).await;
    });
    Handle { tx, task }
}

async fn run(
    mut e: Engine,
    mut srx: broadcast::Receiver<std::sync::Arc<crate::signals::SignalBatch>>,
    mut arx: broadcast::Receiver<std::sync::Arc<crate::signals::Anomaly>>,
    mut ctl: mpsc::Receiver<Ctl>,
) {
    let (mut signals_open, mut anomalies_open) = (true, true);
    loop {
        let wake = e.next_wake();
        tokio::select! {
            r = srx.recv(), if signals_open => match r {
                Ok(b) => tokio::task::block_in_place(|| { e.on_batch(&b); e.tick() }),
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(lost = n, "enforcement fell behind: {n} signal batches skipped"),
                Err(broadcast::error::RecvError::Closed) => signals_open = false,
            },
            r = arx.recv(), if anomalies_open => match r {
                Ok(a) => tokio::task::block_in_place(|| { e.on_anomaly(&a); e.tick() }),
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(lost = n, "enforcement fell behind: {n} anomalies skipped"),
                Err(broadcast::error::RecvError::Closed) => anomalies_open = false,
            },
            c = ctl.recv() => match c {
                Some(Ctl::Apply(s)) => tokio::task::block_in_place(|| e.reconfigure(&s)),
                Some(Ctl::Stop(reply)) => {
                    tokio::task::block_in_place(|| e.shutdown());
                    let _ = reply.send(());
                    return;
                }
                None => {
                    tokio::task::block_in_place(|| e.shutdown());
                    return;
                }
            },
            _ = tokio::time::sleep(wake) => tokio::task::block_in_place(|| e.tick()),
        }
    }
}
