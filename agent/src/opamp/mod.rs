//! OpAMP (Open Agent Management Protocol, spec v0.18.0): the agent managed by an OpAMP server —
//! status, health and effective config reported; remote config merged, applied, rolled back;
//! own telemetry sent where the server says; moved to offered connection settings; restarted on
//! command. A client of our own (no Rust OpAMP client is published), on prost and
//! tokio-tungstenite.
//!
//! - `config.rs`: the `opamp:` section. `connection.rs`: connection settings and offers.
//! - `wire.rs`: framing, codec, capability bits. `transport/`: WebSocket and HTTP connections.
//! - `state.rs`: the one pending status message. `client.rs`: the connection loop.
//!   `offers.rs`: connection settings offers.
//! - `remote_config.rs`: offers → merged, validated, bounded config. `apply.rs`: apply,
//!   grace period, rollback. `persist.rs`: what survives a restart.
//! - `health.rs`: ComponentHealth. `describe.rs`: AgentDescription, EffectiveConfig.
//! - `own.rs`: own metrics and logs. `status.rs`: `/status` → `opamp`.
//! - `check.rs`: `agent check`. `restart.rs`: re-exec on the Restart command.
//!
//! Wired only in `runtime.rs`: the client asks the runtime to apply configs through
//! [`crate::runtime::ApplyRequest`] and sees every applied config on a watch channel.

pub mod apply;
pub mod check;
pub mod client;
pub mod config;
pub mod connection;
pub mod describe;
pub mod health;
pub mod offers;
pub mod own;
pub mod persist;
pub mod remote_config;
pub mod restart;
pub mod state;
pub mod status;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use self::{
    client::{Engine, Exit},
    config::OpampConfig,
    connection::ConnSettings,
    persist::{ConnectionStore, RemoteStore},
    remote_config::RemoteDoc,
    wire::agent_caps as caps,
};
use crate::{
    config::Config,
    runtime::{ApplyRequest, Overrides},
    status::state::AgentState,
};

/// The capabilities this agent declares: only what it does.
///
/// Declared: ReportsStatus, ReportsEffectiveConfig, ReportsHealth, ReportsHeartbeat,
/// ReportsOwnMetrics, ReportsOwnLogs, AcceptsOpAMPConnectionSettings (endpoint, headers,
/// client certificate, CA, heartbeat), ReportsConnectionSettingsStatus, AcceptsRestartCommand,
/// and with `accept_remote_config` AcceptsRemoteConfig + ReportsRemoteConfig.
/// Not declared: AcceptsPackages / ReportsPackageStatuses (no signed package download),
/// ReportsOwnTraces (the agent makes no traces), AcceptsOtherConnectionSettings (no named
/// destinations besides the exporter, which remote config sets), ReportsAvailableComponents.
pub fn capabilities(c: &OpampConfig) -> u64 {
    let mut bits = caps::REPORTS_STATUS
        | caps::REPORTS_EFFECTIVE_CONFIG
        | caps::REPORTS_HEALTH
        | caps::REPORTS_HEARTBEAT
        | caps::REPORTS_OWN_METRICS
        | caps::REPORTS_OWN_LOGS
        | caps::ACCEPTS_OPAMP_CONNECTION_SETTINGS
        | caps::REPORTS_CONNECTION_SETTINGS_STATUS
        | caps::ACCEPTS_RESTART_COMMAND;
    if c.accept_remote_config {
        bits |= caps::ACCEPTS_REMOTE_CONFIG | caps::REPORTS_REMOTE_CONFIG;
    }
    bits
}

/// The config to start with and the remote config inside it.
pub struct Start {
    pub config: Config,
    /// The stored remote config merged into `config`.
    pub remote: Option<RemoteDoc>,
    /// A stored remote config that no longer applies (hash, why): reported as FAILED.
    pub remote_error: Option<(Vec<u8>, String)>,
}

/// At start: the last applied remote config (stored under the output dir) merged over the local
/// config, so an unreachable server leaves the agent as the fleet last configured it.
pub fn start_config(o: &Overrides, local: Config) -> Start {
    let none = |config| Start {
        config,
        remote: None,
        remote_error: None,
    };
    if !local.opamp.enabled() || !local.opamp.accept_remote_config {
        return none(local);
    }
    let Some(doc) = RemoteStore::new(&local.output.dir).load() else {
        return none(local);
    };
    match remote_config::merged_config(o, Some(&doc)) {
        Ok(c) => {
            tracing::info!(
                config_hash = %c.hash(),
                "OpAMP: starting with the last applied remote config"
            );
            Start {
                config: c,
                remote: Some(doc),
                remote_error: None,
            }
        }
        Err(e) => {
            tracing::warn!(
                "OpAMP: the stored remote config no longer applies: {}; starting with the local config",
                e.cause
            );
            Start {
                config: local,
                remote: None,
                remote_error: Some((doc.hash, e.to_string())),
            }
        }
    }
}

/// A running OpAMP client.
pub struct Handle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Exit>,
    own: JoinHandle<()>,
    worker: JoinHandle<()>,
    current: Arc<Mutex<Option<RemoteDoc>>>,
    /// The `opamp:` section it runs with.
    pub config: OpampConfig,
}

impl Handle {
    /// The remote config inside the running config (SIGHUP reloads keep it).
    pub fn current_remote(&self) -> Option<RemoteDoc> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when the client ends on its own: the server asked for a restart.
    pub async fn finished(&mut self) -> Exit {
        match (&mut self.task).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("OpAMP client stopped: {e}");
                std::future::pending().await
            }
        }
    }

    /// Sends `agent_disconnect`, closes, stops own telemetry.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if !self.task.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.own).await;
        self.worker.abort();
    }
}

fn uid_bytes(text: &str) -> [u8; 16] {
    uuid::Uuid::try_parse(text)
        .map(|u| *u.as_bytes())
        .unwrap_or_else(|_| *uuid::Uuid::now_v7().as_bytes())
}

/// Starts the client for `start` (the config running now). `None` when OpAMP is off or its
/// endpoint is unusable (logged, and the agent runs without it).
pub fn spawn(
    overrides: &Overrides,
    start: &Start,
    state: &Arc<AgentState>,
    apply: mpsc::Sender<ApplyRequest>,
    running: watch::Receiver<Arc<Config>>,
) -> Option<Handle> {
    let cfg = &start.config;
    let oc = cfg.opamp.clone();
    if !oc.enabled() {
        state.set_opamp(None);
        return None;
    }
    let local = match ConnSettings::from_config(&oc) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("OpAMP off: {e}\nfix: set opamp.endpoint to a ws:// or http:// URL");
            return None;
        }
    };
    let out = cfg.output.dir.clone();
    let (settings, stored_hb) = match ConnectionStore::new(&out).load(&local) {
        Some((s, hb)) => {
            tracing::info!(endpoint = %s.endpoint, "OpAMP: using the connection settings the server offered earlier");
            (s, hb)
        }
        None => (local.clone(), None),
    };
    let uid_text = crate::export::resource::instance_id(&out);
    let mut reporter = state::Reporter::new(uid_bytes(&uid_text), capabilities(&oc));
    let mut last_remote_hash = None;
    let mut rc_status = status::RemoteConfigState {
        status: "UNSET",
        ..Default::default()
    };
    if let Some(doc) = &start.remote {
        reporter.set_remote(wire::pb::RemoteConfigStatus {
            last_remote_config_hash: doc.hash.clone(),
            status: wire::pb::RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        });
        last_remote_hash = Some(doc.hash.clone());
        rc_status.hash = Some(status::hex(&doc.hash));
        rc_status.status = "APPLIED";
        rc_status.source = Some("persisted");
    } else if let Some((hash, msg)) = &start.remote_error {
        reporter.set_remote(wire::pb::RemoteConfigStatus {
            last_remote_config_hash: hash.clone(),
            status: wire::pb::RemoteConfigStatuses::Failed as i32,
            error_message: msg.clone(),
        });
        last_remote_hash = Some(hash.clone());
        rc_status.hash = Some(status::hex(hash));
        rc_status.status = "FAILED";
        rc_status.error = Some(msg.clone());
        rc_status.source = Some("persisted");
    }
    let heartbeat = stored_hb
        .map(|s| (s > 0).then(|| Duration::from_secs(s)))
        .unwrap_or(Some(oc.heartbeat_interval));
    state.set_opamp(Some(status::OpampStatus {
        endpoint: settings.endpoint.clone(),
        transport: settings.kind.name(),
        instance_uid: uid_text,
        capabilities: wire::agent_capability_names(capabilities(&oc)),
        heartbeat_interval_seconds: heartbeat.map(|d| d.as_secs()),
        remote_config: rc_status,
        connection_settings: status::ConnectionSettingsState {
            status: "UNSET",
            ..Default::default()
        },
        ..Default::default()
    }));

    let (stop, stop_rx) = watch::channel(false);
    let (jobs_tx, jobs_rx) = watch::channel(None);
    let (outcomes_tx, outcomes_rx) = mpsc::channel(16);
    let (own_tx, own_rx) = watch::channel(own::OwnTargets::default());
    let current = Arc::new(Mutex::new(start.remote.clone()));
    let worker = apply::Worker {
        overrides: overrides.clone(),
        state: state.clone(),
        apply: apply.clone(),
        running: running.clone(),
        current: current.clone(),
        store: RemoteStore::new(&out),
        grace: oc.rollback_grace,
        outcomes: outcomes_tx,
    };
    let worker = tokio::spawn(worker.run(jobs_rx));
    let own = tokio::spawn(own::run(
        state.clone(),
        out.clone(),
        own_rx,
        stop_rx.clone(),
    ));
    let engine = Engine {
        local,
        settings,
        local_heartbeat: oc.heartbeat_interval,
        heartbeat,
        reporter,
        health: health::HealthTracker::default(),
        state: state.clone(),
        output_dir: out,
        apply,
        running,
        jobs: jobs_tx,
        outcomes: outcomes_rx,
        own: own_tx,
        accept_remote: oc.accept_remote_config,
        last_remote_hash,
        last_offer_hash: None,
        failures: 0,
    };
    tracing::info!(endpoint = %oc.endpoint, "OpAMP client starting");
    let task = tokio::spawn(engine.run(stop_rx));
    Some(Handle {
        stop,
        task,
        own,
        worker,
        current,
        config: oc,
    })
}
