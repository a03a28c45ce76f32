//! The effective export settings: the config file's `export` section overlaid by the standard
//! `OTEL_EXPORTER_OTLP_*` variables, resolved per signal as the OTLP exporter spec says.
//!
//! Precedence, highest first: per-signal variable, generic variable, per-signal config field,
//! generic config field, default. A generic endpoint gets the signal's path appended for HTTP
//! (`/v1/metrics`, `/v1/logs`, `/v1development/profiles`); a per-signal endpoint is used as-is.
//! gRPC endpoints are used as-is.

use std::{path::PathBuf, time::Duration};

use http::{HeaderName, HeaderValue, Uri};

use super::spool::Signal;
use crate::config::{Compression, ExportConfig, Protocol, Temporality, TlsConfig};

#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct SettingsError {
    pub cause: String,
    pub fix: String,
}

fn bad(var: &str, value: &str, problem: &str, fix: &str) -> SettingsError {
    SettingsError {
        cause: format!("{var}={value:?}: {problem}"),
        fix: fix.to_string(),
    }
}

/// Where and how one signal is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub signal: Signal,
    /// HTTP: the full URL to POST to. gRPC: the server's origin.
    pub url: Uri,
    pub protocol: Protocol,
    pub compression: Compression,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub tls: TlsConfig,
}

/// Everything the exporter needs; `targets` is empty when no endpoint is set (local files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub targets: Vec<Target>,
    pub interval: Duration,
    pub temporality: Temporality,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
}

impl Settings {
    pub fn target(&self, signal: Signal) -> Option<&Target> {
        self.targets.iter().find(|t| t.signal == signal)
    }
}

pub fn signal_name(s: Signal) -> &'static str {
    match s {
        Signal::Metrics => "metrics",
        Signal::Logs => "logs",
        Signal::Profiles => "profiles",
    }
}

/// The HTTP path of a signal.
pub fn http_path(s: Signal) -> &'static str {
    match s {
        Signal::Metrics => "/v1/metrics",
        Signal::Logs => "/v1/logs",
        Signal::Profiles => "/v1development/profiles",
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`, values percent-decoded.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        out.push((k.trim().to_string(), percent_decode(v.trim())?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Reads a variable, per-signal form first.
struct Env<'a, F: Fn(&str) -> Option<String>> {
    get: &'a F,
    signal: &'static str,
}

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    /// (variable name, value) of `OTEL_EXPORTER_OTLP_<SIGNAL>_<key>` or else the generic one.
    fn var(&self, key: &str) -> Option<(String, String, bool)> {
        let specific = format!("OTEL_EXPORTER_OTLP_{}_{key}", self.signal.to_uppercase());
        if let Some(v) = (self.get)(&specific).filter(|v| !v.trim().is_empty()) {
            return Some((specific, v, true));
        }
        let generic = format!("OTEL_EXPORTER_OTLP_{key}");
        (self.get)(&generic)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (generic, v, false))
    }
}

fn join_path(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

fn parse_uri(var: &str, value: &str) -> Result<Uri, SettingsError> {
    crate::config::check_url(value)
        .map_err(|p| bad(var, value, &p, "use a URL such as http://localhost:4318"))?;
    value.parse().map_err(|e| {
        bad(
            var,
            value,
            &format!("{e}"),
            "use a URL such as http://localhost:4318",
        )
    })
}

/// Resolves one signal; `None` when it has no endpoint anywhere.
fn resolve_signal(
    cfg: &ExportConfig,
    signal: Signal,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Target>, SettingsError> {
    let name = signal_name(signal);
    let env = Env { get, signal: name };
    let per_signal_cfg = match signal {
        Signal::Metrics => &cfg.metrics,
        Signal::Logs => &cfg.logs,
        Signal::Profiles => &cfg.profiles,
    };
    let protocol = match env.var("PROTOCOL") {
        Some((var, v, _)) => Protocol::parse(&v).ok_or_else(|| {
            bad(
                &var,
                &v,
                "unknown protocol",
                "use grpc, http/protobuf or http/json",
            )
        })?,
        None => cfg.protocol,
    };
    // (where it came from, endpoint text, used as-is?)
    let endpoint = match env.var("ENDPOINT") {
        Some((var, v, specific)) => Some((var, v, specific)),
        None if !per_signal_cfg.endpoint.is_empty() => Some((
            format!("export.{name}.endpoint"),
            per_signal_cfg.endpoint.clone(),
            true,
        )),
        None if !cfg.endpoint.is_empty() => {
            Some(("export.endpoint".to_string(), cfg.endpoint.clone(), false))
        }
        None => None,
    };
    let Some((source, endpoint, as_is)) = endpoint else {
        return Ok(None);
    };
    let url = if protocol == Protocol::Grpc || as_is {
        endpoint.clone()
    } else {
        join_path(&endpoint, http_path(signal))
    };
    let url = parse_uri(&source, &url)?;
    let compression = match env.var("COMPRESSION") {
        Some((var, v, _)) => match v.trim() {
            "gzip" => Compression::Gzip,
            "none" => Compression::None,
            _ => return Err(bad(&var, &v, "unknown compression", "use gzip or none")),
        },
        None => cfg.compression,
    };
    let timeout = match env.var("TIMEOUT") {
        Some((var, v, _)) => Duration::from_millis(
            v.trim()
                .parse()
                .map_err(|_| bad(&var, &v, "not a number of milliseconds", "use e.g. 10000"))?,
        ),
        None => cfg.timeout,
    };
    let mut pairs: Vec<(String, String)> = cfg
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some((var, v, _)) = env.var("HEADERS") {
        let parsed =
            parse_headers(&v).map_err(|p| bad(&var, &v, &p, "use key=value,key2=value2"))?;
        for (k, v) in parsed {
            pairs.retain(|(x, _)| !x.eq_ignore_ascii_case(&k));
            pairs.push((k, v));
        }
    }
    let mut headers = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let name = HeaderName::try_from(k.as_str()).map_err(|_| SettingsError {
            cause: format!("export header name {k:?} is not valid"),
            fix: "use letters, digits and dashes".into(),
        })?;
        let value = HeaderValue::try_from(v.as_str()).map_err(|_| SettingsError {
            cause: format!("export header {k} has a value that is not valid in HTTP"),
            fix: "use visible ASCII".into(),
        })?;
        headers.push((name, value));
    }
    let mut tls = cfg.tls.clone();
    if let Some((_, v, _)) = env.var("CERTIFICATE") {
        tls.ca_file = Some(PathBuf::from(v));
    }
    if let Some((_, v, _)) = env.var("CLIENT_CERTIFICATE") {
        tls.cert_file = Some(PathBuf::from(v));
    }
    if let Some((_, v, _)) = env.var("CLIENT_KEY") {
        tls.key_file = Some(PathBuf::from(v));
    }
    Ok(Some(Target {
        signal,
        url,
        protocol,
        compression,
        headers,
        timeout,
        tls,
    }))
}

/// Resolves every signal; `output_dir` places the default spool.
pub fn resolve(
    cfg: &ExportConfig,
    output_dir: &std::path::Path,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Settings, SettingsError> {
    let mut targets = Vec::new();
    for s in [Signal::Metrics, Signal::Logs, Signal::Profiles] {
        if let Some(t) = resolve_signal(cfg, s, &get)? {
            targets.push(t);
        }
    }
    Ok(Settings {
        targets,
        interval: cfg.interval,
        temporality: cfg.temporality,
        spool_dir: if cfg.spool.dir.as_os_str().is_empty() {
            output_dir.join("spool")
        } else {
            cfg.spool.dir.clone()
        },
        spool_max_bytes: cfg.spool.max_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn url(s: &Settings, sig: Signal) -> String {
        s.target(sig).unwrap().url.to_string()
    }

    #[test]
    fn no_endpoint_means_no_targets() {
        let s = resolve(&ExportConfig::default(), "out".as_ref(), env(&[])).unwrap();
        assert!(s.targets.is_empty());
        assert_eq!(s.spool_dir, PathBuf::from("out/spool"));
    }

    #[test]
    fn generic_endpoint_gets_signal_paths_for_http_not_grpc() {
        let s = resolve(
            &ExportConfig::default(),
            "o".as_ref(),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]),
        )
        .unwrap();
        assert_eq!(url(&s, Signal::Metrics), "http://collector:4318/v1/metrics");
        assert_eq!(url(&s, Signal::Logs), "http://collector:4318/v1/logs");
        assert_eq!(
            url(&s, Signal::Profiles),
            "http://collector:4318/v1development/profiles"
        );
        let s = resolve(
            &ExportConfig::default(),
            "o".as_ref(),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap();
        assert_eq!(url(&s, Signal::Metrics), "http://collector:4317/");
        assert_eq!(s.target(Signal::Metrics).unwrap().protocol, Protocol::Grpc);
    }

    #[test]
    fn per_signal_variables_win_and_are_used_as_is() {
        let mut cfg = ExportConfig {
            endpoint: "http://file:4318".into(),
            ..Default::default()
        };
        cfg.headers.insert("x-a".into(), "file".into());
        let s = resolve(
            &cfg,
            "o".as_ref(),
            env(&[
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/custom"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-a=env,x-b=a%20b"),
                ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ]),
        )
        .unwrap();
        assert_eq!(url(&s, Signal::Metrics), "http://m:9/custom");
        assert_eq!(url(&s, Signal::Logs), "http://file:4318/v1/logs");
        let m = s.target(Signal::Metrics).unwrap();
        assert_eq!(m.timeout, Duration::from_millis(2500));
        assert_eq!(m.compression, Compression::Gzip);
        assert_eq!(
            s.target(Signal::Logs).unwrap().compression,
            Compression::None
        );
        let h: Vec<(String, String)> = m
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            h,
            [("x-a".into(), "env".into()), ("x-b".into(), "a b".into())]
        );
    }

    #[test]
    fn bad_values_say_which_variable_and_how_to_fix() {
        let e = resolve(
            &ExportConfig::default(),
            "o".as_ref(),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http"),
            ]),
        )
        .unwrap_err();
        assert!(
            e.cause.contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{}",
            e.cause
        );
        assert!(e.fix.contains("http/protobuf"));
        let e = resolve(
            &ExportConfig::default(),
            "o".as_ref(),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")]),
        )
        .unwrap_err();
        assert!(
            e.cause.contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{}",
            e.cause
        );
    }
}
