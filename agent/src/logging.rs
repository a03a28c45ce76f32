//! The agent's log: `tracing` with a level filter that can be swapped on reload, text or JSON,
//! and the `log` crate (aya's own messages) bridged in.

use tracing_subscriber::{
    layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Registry,
};

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level {level:?}: {reason}\nfix: use a level (error, warn, info, debug, trace) or directives like `info,agent=debug`")]
    Level { level: String, reason: String },
    #[error("cannot install the logger: {0}\nfix: this is a bug; report it")]
    Install(String),
}

/// Changes the level filter of the installed logger.
#[derive(Clone)]
pub struct LevelHandle(reload::Handle<EnvFilter, Registry>);

impl LevelHandle {
    pub fn set(&self, level: &str) -> Result<(), LoggingError> {
        let filter = parse(level)?;
        self.0
            .modify(|f| *f = filter)
            .map_err(|e| LoggingError::Install(e.to_string()))
    }
}

fn parse(level: &str) -> Result<EnvFilter, LoggingError> {
    // The `pprof` crate (self-profiling) logs every start and stop at info, with its source
    // path: quiet unless asked for by name.
    let directives = if level.contains("pprof") {
        level.to_string()
    } else {
        format!("{level},pprof=warn")
    };
    EnvFilter::try_new(&directives).map_err(|e| LoggingError::Level {
        level: level.to_string(),
        reason: e.to_string(),
    })
}

/// Installs the global logger (once). Logs go to stderr.
pub fn init(level: &str, format: LogFormat) -> Result<LevelHandle, LoggingError> {
    let (filter, handle) = reload::Layer::new(parse(level)?);
    // Own logs for an OpAMP-offered endpoint: a no-op until one is set.
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(crate::opamp::own::OwnLogsLayer);
    let result = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| LoggingError::Install(e.to_string()))?;
    // `try_init` installs the log→tracing bridge (tracing-subscriber's tracing-log feature) when
    // enabled; install it explicitly otherwise, ignoring "already set".
    let _ = tracing_log::LogTracer::init();
    Ok(LevelHandle(handle))
}
