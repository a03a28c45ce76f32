//! `agent run`: wires config, probes, the metric store, the output writer and the status server,
//! reloads the config on SIGHUP and shuts down cleanly on SIGINT/SIGTERM.
//!
//! Invariants: a config that fails to load or validate on reload changes nothing (the old one
//! keeps running); shutdown detaches every probe before the final drain and the final write.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
    task::JoinHandle,
};

use crate::{
    config::{Config, ConfigError, ExportConfig},
    ebpf::tracefs,
    export::{self, settings::Settings, Exporter},
    logging::LevelHandle,
    metrics::Store,
    output::OutputSettings,
    probes::Probes,
    signals::ActivityHub,
    status::{self, state::AgentState, StatusContext},
    transform::{Pipeline, Transformer},
};

/// Command-line overrides; they win over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub status_addr: Option<SocketAddr>,
    pub output_dir: Option<PathBuf>,
}

impl Overrides {
    /// File (or embedded default), then environment, then these flags; validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(a) = self.status_addr {
            cfg.status.listen = a;
        }
        if let Some(d) = &self.output_dir {
            cfg.output.dir = d.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
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

/// Runs until SIGINT or SIGTERM.
pub async fn run(mut cfg: Config, overrides: Overrides, log: LevelHandle) -> Result<(), RunError> {
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

    tracing::info!(version = crate::VERSION, config_hash = %cfg.hash(), "agent starting");
    if let Err(e) = tracefs::ensure() {
        tracing::warn!("{e} (raw tracepoints do not need it)");
    }
    let state = Arc::new(AgentState::new(cfg.hash()));
    let store = Store::new();
    let transform = Transformer::new(pipeline(&cfg));

    let mut status_server = start_status(&cfg, &state, &store, &transform).await;
    let mut writer = spawn_writer(&cfg, &store, &state, &transform);

    let activity = ActivityHub::new();
    let probes = Arc::new(Mutex::new(Probes::new(
        store.clone(),
        state.clone(),
        activity.clone(),
    )));
    apply_probes(&probes, &cfg).await;
    state.set_pipeline_running(true);
    tracing::info!("agent running");

    loop {
        tokio::select! {
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let new = match overrides.load() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("reload rejected, keeping the running config: {}", e.cause());
                        tracing::error!("fix: {}", e.fix());
                        continue;
                    }
                };
                if new == cfg {
                    tracing::info!("configuration unchanged");
                    continue;
                }
                if let Err(e) = log.set(&new.log.level) {
                    tracing::warn!("{e}");
                }
                if new.log.format != cfg.log.format {
                    tracing::warn!("log.format changes take effect at restart");
                }
                if new.status != cfg.status {
                    if let Some(s) = status_server.take() {
                        s.stop().await;
                    }
                    status_server = start_status(&new, &state, &store, &transform).await;
                }
                if (export_settings(&new, &state), output_settings(&new)) != writer.key {
                    writer.stop().await;
                    writer = spawn_writer(&new, &store, &state, &transform);
                }
                if (&new.transform, &new.filter) != (&cfg.transform, &cfg.filter) {
                    transform.set(pipeline(&new));
                    tracing::info!("transform and filter statements reloaded");
                }
                apply_probes(&probes, &new).await;
                state.set_config_hash(new.hash());
                tracing::info!(config_hash = %new.hash(), "configuration applied");
                cfg = new;
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
        }
    }

    state.set_pipeline_running(false);
    let p = probes.clone();
    let _ = tokio::task::spawn_blocking(move || p.lock().unwrap_or_else(|e| e.into_inner()).stop())
        .await;
    writer.stop().await;
    if let Some(s) = status_server {
        s.stop().await;
    }
    tracing::info!("agent stopped; every probe detached");
    Ok(())
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
