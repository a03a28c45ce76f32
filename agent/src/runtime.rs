//! `agent run`: wires config, probes, the metric store, the output writer, the status server and
//! the OpAMP client, applies new configs (SIGHUP, OpAMP remote config) through one function,
//! and shuts down cleanly on SIGINT/SIGTERM (or for an OpAMP Restart command).
//!
//! Invariants: a config that fails to load or validate on reload changes nothing (the old one
//! keeps running); every config change, whatever its source, goes through `Running::apply`;
//! shutdown sends OpAMP's `agent_disconnect` first, then detaches every probe before the final
//! drain and the final write.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    config::{Config, ConfigError, ExportConfig},
    detection::{config::DetectionConfig, task as detection},
    ebpf::tracefs,
    enforcement::actions::degrade::DegradeHub,
    export::{self, settings::Settings, Exporter},
    logging::LevelHandle,
    metrics::Store,
    opamp,
    output::OutputSettings,
    probes::Probes,
    selfprotect,
    signals::{ActivityHub, AnomalyHub, Demand, SignalHub},
    status::{self, state::AgentState, StatusContext},
    transform::{Pipeline, Transformer},
};

/// Command-line overrides; they win over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub status_addr: Option<SocketAddr>,
    pub output_dir: Option<PathBuf>,
    pub opamp_endpoint: Option<String>,
}

impl Overrides {
    /// File (or embedded default), then environment, then these flags; validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = Config::load(self.config.as_deref())?;
        self.apply_flags(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets what the flags give (over the file, the environment and any remote config).
    pub fn apply_flags(&self, cfg: &mut Config) {
        if let Some(a) = self.status_addr {
            cfg.status.listen = a;
        }
        if let Some(d) = &self.output_dir {
            cfg.output.dir = d.clone();
        }
        if let Some(e) = &self.opamp_endpoint {
            cfg.opamp.endpoint = e.clone();
        }
    }
}

/// A config to apply as one hot reload (what SIGHUP does), from the OpAMP client; `reply`
/// fires once it runs. `rebuild_exporter` restarts the exporter even if its settings are the
/// same (a new instance id).
pub struct ApplyRequest {
    pub config: Config,
    pub rebuild_exporter: bool,
    pub reply: oneshot::Sender<()>,
}

/// How `run` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGINT or SIGTERM.
    Stopped,
    /// The OpAMP server sent Restart: the caller re-executes the agent.
    Restart,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot install signal handlers: {0}\nfix: this is a bug; report it")]
    Signals(std::io::Error),
}

/// The export settings of `cfg` and the environment; on a bad `OTEL_EXPORTER_OTLP_*` value,
/// local files (nothing is lost) and the cause on `/status`.
fn export_settings(cfg: &Config, state: &AgentState) -> Settings {
    match export::settings::resolve(&cfg.export, &cfg.output.dir, |k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("export: {}; writing local files instead", e.cause);
            tracing::error!("fix: {}", e.fix);
            state.update_exporter(|x| x.last_error = Some(e.cause.clone()));
            let files = ExportConfig {
                spool: cfg.export.spool.clone(),
                ..Default::default()
            };
            export::settings::resolve(&files, &cfg.output.dir, |_| None)
                .expect("no endpoint cannot fail")
        }
    }
}

fn output_settings(cfg: &Config) -> OutputSettings {
    OutputSettings {
        dir: cfg.output.dir.clone(),
        interval: cfg.output.interval,
        max_file_bytes: cfg.output.max_file_bytes,
        max_files: cfg.output.max_files,
    }
}

fn spawn_writer(
    cfg: &Config,
    store: &Arc<Store>,
    state: &Arc<AgentState>,
    transform: &Arc<Transformer>,
) -> Exporter {
    export::spawn(
        export_settings(cfg, state),
        output_settings(cfg),
        store.clone(),
        state.clone(),
        transform.clone(),
    )
}

/// The `transform:`/`filter:` pipeline of a validated config.
fn pipeline(cfg: &Config) -> Pipeline {
    Pipeline::compile(&cfg.transform, &cfg.filter).unwrap_or_else(|e| {
        // Unreachable: validation compiled the same sections.
        tracing::error!("{}: {}; no transform applied", e.path, e.problem);
        Pipeline::default()
    })
}

/// Everything a config change touches.
struct Running {
    cfg: Config,
    state: Arc<AgentState>,
    store: Arc<Store>,
    log: LevelHandle,
    status_server: Option<StatusServer>,
    /// Always set, except while being replaced.
    writer: Option<Exporter>,
    probes: Arc<Mutex<Probes>>,
    /// The `transform:`/`filter:` pipeline shared by the exporter and `/metrics`.
    transform: Arc<Transformer>,
    /// The decision engine (always running; with no rules it decides nothing).
    enforcement: Option<crate::enforcement::Handle>,
    /// Caps on the agent's own sampling set by `degrade` actions; the probes run with them
    /// applied on top of the self-protection level ([`Running::probe_config`]).
    degrade: DegradeHub,
    /// The detection task's `detection:` section (it reconfigures itself on a change).
    detection: watch::Sender<DetectionConfig>,
    /// The self-protection level: probes run `selfprotect::degrade(cfg, level)`.
    level: selfprotect::Level,
    /// The self-protection task's section (it reconfigures itself on a change).
    self_protection: watch::Sender<selfprotect::SelfProtectionConfig>,
}

impl Running {
    /// Applies `new` (already validated) as one hot reload: log level, status endpoint, exporter
    /// (rebuilt when its settings change, or when `rebuild_exporter`), probes.
    async fn apply(&mut self, new: Config, rebuild_exporter: bool) {
        if let Err(e) = self.log.set(&new.log.level) {
            tracing::warn!("{e}");
        }
        if new.log.format != self.cfg.log.format {
            tracing::warn!("log.format changes take effect at restart");
        }
        if new.status != self.cfg.status {
            if let Some(s) = self.status_server.take() {
                s.stop().await;
            }
            self.status_server =
                start_status(&new, &self.state, &self.store, &self.transform).await;
        }
        let key = (export_settings(&new, &self.state), output_settings(&new));
        if rebuild_exporter || self.writer.as_ref().is_none_or(|w| w.key != key) {
            if let Some(w) = self.writer.take() {
                w.stop().await;
            }
            self.writer = Some(spawn_writer(
                &new,
                &self.store,
                &self.state,
                &self.transform,
            ));
        }
        if (&new.transform, &new.filter) != (&self.cfg.transform, &self.cfg.filter) {
            self.transform.set(pipeline(&new));
            tracing::info!("transform and filter statements reloaded");
        }
        self.run_degraded(&new).await;
        self.self_protection
            .send_if_modified(|c| std::mem::replace(c, new.self_protection.clone()) != *c);
        crate::priority::set_nice(new.enforcement.nice);
        if let Some(e) = &self.enforcement {
            e.apply(&new).await;
        }
        self.state.set_config_hash(new.hash());
        tracing::info!(config_hash = %new.hash(), "configuration applied");
        self.cfg = new;
    }

    /// What the probes run: `cfg` degraded to the self-protection level, then capped by the
    /// `degrade` actions in effect (the lower of the two wins).
    fn probe_config(&self, cfg: &Config) -> Config {
        self.degrade
            .current()
            .apply(&selfprotect::degrade(cfg, self.level))
    }

    /// Runs the probes and detection on `cfg` degraded to the self-protection level (and
    /// capped by `degrade` actions: [`Running::probe_config`]).
    async fn run_degraded(&self, cfg: &Config) {
        let eff = self.probe_config(cfg);
        apply_probes(&self.probes, &eff).await;
        self.detection.send_if_modified(|d| {
            let changed = *d != eff.detection;
            if changed {
                *d = eff.detection.clone();
            }
            changed
        });
    }

    /// Runs the probes at self-protection `level` (the configured config, degraded).
    async fn set_level(&mut self, level: selfprotect::Level) {
        if level == self.level {
            return;
        }
        self.level = level;
        let cfg = self.cfg.clone();
        self.run_degraded(&cfg).await;
        tracing::info!(
            level = level.as_str(),
            "probes re-applied for the self-protection level"
        );
    }
}

/// Runs until SIGINT or SIGTERM (or an OpAMP Restart command).
pub async fn run(cfg: Config, overrides: Overrides, log: LevelHandle) -> Result<Exit, RunError> {
    let mut sighup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    // A changed config file (a ConfigMap update) reloads as SIGHUP does.
    let _config_watch = overrides.config.clone().map(|p| {
        crate::config::watch::spawn(
            p,
            crate::config::watch::INTERVAL,
            crate::config::watch::sighup_self,
        )
    });

    // The last applied remote config, if OpAMP keeps one, runs from the start.
    let start = opamp::start_config(&overrides, cfg);
    let cfg = start.config.clone();
    tracing::info!(version = crate::VERSION, config_hash = %cfg.hash(), "agent starting");
    if let Err(e) = tracefs::ensure() {
        tracing::warn!("{e} (raw tracepoints do not need it)");
    }
    let state = Arc::new(AgentState::new(cfg.hash()));
    let store = Store::new();
    let transform = Transformer::new(pipeline(&cfg));

    let status_server = start_status(&cfg, &state, &store, &transform).await;
    let writer = spawn_writer(&cfg, &store, &state, &transform);

    // Per-process activity from the probes, and the signals derived from it.
    let activity = ActivityHub::new();
    let signals = SignalHub::new();
    let demand = Demand::default();
    // The decision path (drains that feed signals, the deriver, the engine) runs at
    // `enforcement.nice`, the deriver and the engine on a runtime of their own.
    crate::priority::set_nice(cfg.enforcement.nice);
    let decide = crate::priority::DecisionRuntime::start();
    let deriver = decide.handle().spawn(crate::signals::run_deriver(
        activity.clone(),
        signals.clone(),
        demand.clone(),
    ));
    // Anomalies, for the log, the exporter, /status and the decision engine.
    let anomalies = AnomalyHub::new();
    let (detection_tx, detection_rx) = watch::channel(cfg.detection.clone());
    let detection_task = tokio::spawn(detection::run(
        signals.clone(),
        detection_rx,
        detection::Outputs {
            state: state.clone(),
            store: store.clone(),
            anomalies: anomalies.clone(),
            demand: demand.clone(),
        },
    ));
    // Compiled unwind tables outlive the process (a restart loads instead of compiling).
    crate::probes::profiler::unwind::cache::use_output_dir(&cfg.output.dir, true);
    let probes = Arc::new(Mutex::new(Probes::new(
        store.clone(),
        state.clone(),
        activity.clone(),
    )));
    // The decision engine on signals and detection's anomalies (the same hub).
    let degrade = DegradeHub::new();
    let mut degraded = degrade.subscribe();
    let enforcement = crate::enforcement::spawn(
        crate::enforcement::Env {
            state: state.clone(),
            store: store.clone(),
            demand: demand.clone(),
            degrade: degrade.clone(),
            output_dir: cfg.output.dir.clone(),
            proc_root: PathBuf::from("/proc"),
        },
        &cfg,
        &signals,
        &anomalies,
        &decide.handle(),
    );
    apply_probes(&probes, &cfg).await;
    state.set_pipeline_running(true);
    tracing::info!("agent running");

    // Self-protection: measures the agent's cost and sends levels back to this loop.
    let (self_protection, self_protection_rx) = watch::channel(cfg.self_protection.clone());
    let (level_tx, mut level_rx) = mpsc::channel::<selfprotect::Level>(4);
    let self_protection_task = tokio::spawn(selfprotect::engine::run(
        self_protection_rx,
        selfprotect::engine::Outputs {
            state: state.clone(),
            store: store.clone(),
            levels: level_tx,
            on_change: {
                let state = state.clone();
                Box::new(move |c, pressure| {
                    state.publish_log_records([selfprotect::report::change_record(c, pressure)])
                })
            },
        },
    ));

    let mut r = Running {
        cfg,
        state,
        store,
        log,
        status_server,
        writer: Some(writer),
        probes,
        transform,
        enforcement: Some(enforcement),
        degrade,
        detection: detection_tx,
        level: selfprotect::Level::Normal,
        self_protection,
    };
    let (apply_tx, mut apply_rx) = mpsc::channel::<ApplyRequest>(4);
    let (running_tx, running_rx) = watch::channel(Arc::new(r.cfg.clone()));
    let mut opamp = opamp::spawn(
        &overrides,
        &start,
        &r.state,
        apply_tx.clone(),
        running_rx.clone(),
    );

    let exit = loop {
        tokio::select! {
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let remote = opamp.as_ref().and_then(|h| h.current_remote());
                let new = match opamp::remote_config::merged_config(&overrides, remote.as_ref()) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("reload rejected, keeping the running config: {}", e.cause);
                        tracing::error!("fix: {}", e.fix);
                        continue;
                    }
                };
                if new == r.cfg {
                    tracing::info!("configuration unchanged");
                    continue;
                }
                let opamp_changed = new.opamp != r.cfg.opamp;
                r.apply(new, false).await;
                running_tx.send_replace(Arc::new(r.cfg.clone()));
                if opamp_changed {
                    if let Some(h) = opamp.take() {
                        h.stop().await;
                    }
                    let start = opamp::Start { config: r.cfg.clone(), remote, remote_error: None };
                    opamp = opamp::spawn(&overrides, &start, &r.state, apply_tx.clone(), running_rx.clone());
                }
            }
            Some(level) = level_rx.recv() => r.set_level(level).await,
            Ok(()) = degraded.changed() => {
                let caps = *degraded.borrow_and_update();
                tracing::info!(?caps, "own sampling caps changed (degrade): reapplying the probes");
                let cfg = r.cfg.clone();
                r.run_degraded(&cfg).await;
            }
            Some(req) = apply_rx.recv() => {
                r.apply(req.config, req.rebuild_exporter).await;
                running_tx.send_replace(Arc::new(r.cfg.clone()));
                let _ = req.reply.send(());
            }
            e = async {
                match opamp.as_mut() {
                    Some(h) => h.finished().await,
                    None => std::future::pending().await,
                }
            } => if e == opamp::client::Exit::Restart { break Exit::Restart },
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break Exit::Stopped; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break Exit::Stopped; }
        }
    };

    if let Some(h) = opamp.take() {
        h.stop().await;
    }
    // Limits are undone while everything still runs (persistent ones stay pinned).
    if let Some(e) = r.enforcement.take() {
        e.stop().await;
    }
    r.state.set_pipeline_running(false);
    let p = r.probes.clone();
    let _ = tokio::task::spawn_blocking(move || p.lock().unwrap_or_else(|e| e.into_inner()).stop())
        .await;
    if let Some(w) = r.writer.take() {
        w.stop().await;
    }
    if let Some(s) = r.status_server {
        s.stop().await;
    }
    deriver.abort();
    drop(decide);
    detection_task.abort();
    self_protection_task.abort();
    tracing::info!("agent stopped; every probe detached");
    Ok(exit)
}

/// A running status server: its stop switch and task.
struct StatusServer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StatusServer {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn start_status(
    cfg: &Config,
    state: &Arc<AgentState>,
    store: &Arc<Store>,
    transform: &Arc<Transformer>,
) -> Option<StatusServer> {
    if !cfg.status.enabled {
        return None;
    }
    let listeners = match status::access::bind_all(&cfg.status).await {
        Ok(l) => l,
        Err(e) => {
            // The agent keeps collecting; only the endpoint is missing.
            tracing::error!("{e}");
            return None;
        }
    };
    let addrs: Vec<String> = listeners.addrs().iter().map(|a| a.to_string()).collect();
    tracing::info!(addr = %addrs.join(" "), routes = %status::ROUTES.join(" "), "status endpoint listening");
    let (tx, mut rx) = watch::channel(false);
    let ctx = StatusContext {
        state: state.clone(),
        store: store.clone(),
        version: crate::VERSION,
        buckets: match cfg.status.histogram_buckets {
            crate::config::HistogramBuckets::Full => crate::metrics::prometheus::Buckets::Full,
            crate::config::HistogramBuckets::Coarse => crate::metrics::prometheus::Buckets::Coarse,
        },
        transform: transform.clone(),
    };
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        if let Err(e) = status::access::serve_all(listeners, ctx, shutdown).await {
            tracing::error!("status endpoint stopped: {e}");
        }
    });
    Some(StatusServer { stop: tx, task })
}

async fn apply_probes(probes: &Arc<Mutex<Probes>>, cfg: &Config) {
    let p = probes.clone();
    let cfg = cfg.clone();
    // Loading runs the verifier: keep it off the async workers.
    let _ = tokio::task::spawn_blocking(move || {
        p.lock().unwrap_or_else(|e| e.into_inner()).apply(&cfg)
    })
    .await;
}
