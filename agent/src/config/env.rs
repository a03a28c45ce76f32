//! Environment variable overrides for the common settings (`AGENT_LOG_LEVEL`, ...).
//!
//! They apply on top of the file; an empty variable is ignored. A bad value is an error naming
//! the variable, the value and what is allowed.

use std::{net::SocketAddr, path::PathBuf};

use humantime_serde::re::humantime::parse_duration;

use super::{
    error::{ConfigError, Source},
    model::{Config, LogFormat},
    validate::{check_field, fix_for},
};

/// The environment overrides: (variable, dotted field path).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("AGENT_LOG_LEVEL", "log.level"),
    ("AGENT_LOG_FORMAT", "log.format"),
    ("AGENT_STATUS_ADDR", "status.listen"),
    ("AGENT_STATUS_DEBUG_ADDR", "status.debug_listen"),
    ("AGENT_OUTPUT_DIR", "output.dir"),
    ("AGENT_SYSCALLS_ENABLED", "probes.syscalls.enabled"),
    ("AGENT_SYSCALLS_INTERVAL", "probes.syscalls.interval"),
    ("AGENT_NETWORK_ENABLED", "probes.network.enabled"),
    ("AGENT_PROFILER_ENABLED", "probes.profiler.enabled"),
    ("AGENT_PROFILER_FREQUENCY", "probes.profiler.frequency"),
    ("AGENT_OPAMP_ENDPOINT", "opamp.endpoint"),
    ("AGENT_SELF_PROTECTION_ENABLED", "self_protection.enabled"),
];

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Sets `path` from the text `value`; the problem when it does not parse.
fn set(cfg: &mut Config, path: &str, value: &str) -> Result<(), String> {
    match path {
        "log.level" => cfg.log.level = value.to_string(),
        "log.format" => {
            cfg.log.format = match value.to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(format!("{value:?} is not a log format")),
            }
        }
        "status.listen" => {
            cfg.status.listen = value
                .parse::<SocketAddr>()
                .map_err(|e| format!("{value:?} is not an IP:port address ({e})"))?
        }
        "status.debug_listen" => {
            cfg.status.debug_listen = Some(
                value
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("{value:?} is not an IP:port address ({e})"))?,
            )
        }
        "output.dir" => cfg.output.dir = PathBuf::from(value),
        "probes.syscalls.enabled" => {
            cfg.probes.syscalls.enabled =
                parse_bool(value).ok_or_else(|| format!("{value:?} is not true or false"))?
        }
        "probes.syscalls.interval" => {
            cfg.probes.syscalls.interval =
                parse_duration(value).map_err(|e| format!("{value:?} is not a duration ({e})"))?
        }
        "probes.network.enabled" => {
            cfg.probes.network.enabled =
                parse_bool(value).ok_or_else(|| format!("{value:?} is not true or false"))?
        }
        "probes.profiler.enabled" => {
            cfg.probes.profiler.enabled =
                parse_bool(value).ok_or_else(|| format!("{value:?} is not true or false"))?
        }
        "probes.profiler.frequency" => {
            cfg.probes.profiler.frequency = value
                .parse()
                .map_err(|_| format!("{value:?} is not a whole number"))?
        }
        "opamp.endpoint" => cfg.opamp.endpoint = value.to_string(),
        "self_protection.enabled" => {
            cfg.self_protection.enabled =
                parse_bool(value).ok_or_else(|| format!("{value:?} is not true or false"))?
        }
        other => unreachable!("no env override for {other}"),
    }
    Ok(())
}

/// The overrides that `get` sets (non-empty): (variable, field path, value).
pub(crate) fn present(
    get: &impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, &'static str, String)> {
    ENV_OVERRIDES
        .iter()
        .filter_map(|(var, path)| get(var).filter(|v| !v.is_empty()).map(|v| (*var, *path, v)))
        .collect()
}

/// Applies the overrides found by `get` (e.g. `|k| std::env::var(k).ok()`). Each value must
/// parse and pass its field's check; otherwise nothing after it is applied.
pub(crate) fn apply(
    cfg: &mut Config,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (var, path, value) in present(&get) {
        if let Err(problem) = set(cfg, path, &value).and_then(|()| check_field(cfg, path)) {
            return Err(ConfigError::Invalid {
                at: Box::new(Source::Env {
                    var: var.to_string(),
                    value,
                }),
                path: path.to_string(),
                problem,
                fix: format!("{}, or unset {var}", fix_for(path)),
            });
        }
    }
    Ok(())
}
