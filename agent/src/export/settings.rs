//! The effective export settings: the config file's `export` section overlaid by the standard
//! `OTEL_EXPORTER_OTLP_*` variables, resolved per signal as the OTLP exporter spec says.
//!
//! Precedence, highest first: per-signal variable, generic variable, per-signal config field,
//! generic config field, default. A generic endpoint gets the signal's path appended for HTTP
//! (`/v1/metrics`, `/v1/logs`, `/v1development/profiles`) appended to its path, its query kept
//! (see [`endpoint_url`]); a per-signal endpoint is used as-is. gRPC endpoints are used as-is.
//! Endpoints are parsed as URLs, never joined as text.

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

/// The URL a signal is sent to, from an endpoint parsed as a URL (RFC 3986, by `http::Uri`):
/// with `signal_path`, the path is appended to the endpoint's own path (one `/` between them)
/// and the query is kept after it, as the OTLP exporter spec's "signal path appended to the
/// base URL" means; without, the endpoint is used as it is. A `#fragment` is never sent (it is
/// not part of an HTTP request target) and does not move the path.
///
/// `http://h:4318/otlp?tenant=t1` + `/v1/metrics` → `http://h:4318/otlp/v1/metrics?tenant=t1`.
pub fn endpoint_url(endpoint: &str, signal_path: Option<&str>) -> Result<Uri, String> {
    crate::config::check_url(endpoint)?;
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL ({e})"))?;
    // `http::Uri` accepts any digits as a port (and then reports none): check it is a u16.
    if let Some(a) = uri.authority() {
        let host_port = a.as_str().rsplit('@').next().unwrap_or_default();
        let port = host_port
            .rsplit_once(']')
            .map_or(host_port, |(_, rest)| rest)
            .rsplit_once(':')
            .map(|(_, p)| p);
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            if p.parse::<u16>().map_or(true, |n| n == 0) {
                return Err(format!(
                    "{endpoint:?}: port {p} is not a port number (1-65535)"
                ));
            }
        }
    }
    let mut parts = uri.into_parts();
    let (path, query) = match &parts.path_and_query {
        Some(pq) => (pq.path().to_string(), pq.query().map(str::to_string)),
        None => ("/".to_string(), None),
    };
    let path = match signal_path {
        Some(signal) => format!("{}{signal}", path.trim_end_matches('/')),
        None => path,
    };
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|e| format!("{endpoint:?}: the path {target:?} is not valid ({e})"))?,
    );
    Uri::from_parts(parts).map_err(|e| format!("{endpoint:?} is not a URL ({e})"))
}

fn parse_uri(var: &str, value: &str, signal_path: Option<&str>) -> Result<Uri, SettingsError> {
    endpoint_url(value, signal_path).map_err(|p| {
        bad(
            var,
            value,
            &p,
            "use a URL such as http://localhost:4318 or https://collector:4318/otlp?tenant=t1",
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
    let signal_path = (protocol != Protocol::Grpc && !as_is).then(|| http_path(signal));
    let url = parse_uri(&source, &endpoint, signal_path)?;
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

    /// The URL metrics go to with only `OTEL_EXPORTER_OTLP_ENDPOINT=endpoint` (HTTP) set.
    fn generic_metrics_url(endpoint: &str) -> String {
        let s = resolve(
            &ExportConfig::default(),
            "o".as_ref(),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]),
        )
        .unwrap_or_else(|e| panic!("{endpoint}: {} / {}", e.cause, e.fix));
        url(&s, Signal::Metrics)
    }

    #[test]
    fn generic_endpoint_is_parsed_as_a_url() {
        for (endpoint, want) in [
            // The query stays a query, after the signal path.
            (
                "http://host:4318/otlp?tenant=t1",
                "http://host:4318/otlp/v1/metrics?tenant=t1",
            ),
            (
                "http://host:4318?tenant=t1&x=a%20b",
                "http://host:4318/v1/metrics?tenant=t1&x=a%20b",
            ),
            // A fragment is never sent and does not move the path.
            (
                "http://host:4318/otlp#frag",
                "http://host:4318/otlp/v1/metrics",
            ),
            ("http://host:4318#frag", "http://host:4318/v1/metrics"),
            (
                "http://host:4318/otlp?t=1#frag",
                "http://host:4318/otlp/v1/metrics?t=1",
            ),
            // Trailing slashes: one `/` between the base path and the signal path.
            ("http://host:4318/otlp/", "http://host:4318/otlp/v1/metrics"),
            ("http://host:4318//", "http://host:4318/v1/metrics"),
            ("http://host:4318", "http://host:4318/v1/metrics"),
            // IPv6 literal hosts.
            ("http://[::1]:4318", "http://[::1]:4318/v1/metrics"),
            (
                "https://[fd00::2]:4318/p?q=1",
                "https://[fd00::2]:4318/p/v1/metrics?q=1",
            ),
        ] {
            assert_eq!(generic_metrics_url(endpoint), want, "{endpoint}");
        }
        // Every signal gets its own path, the query after it.
        let s = resolve(
            &ExportConfig::default(),
            "o".as_ref(),
            env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://host:4318/otlp?tenant=t1",
            )]),
        )
        .unwrap();
        assert_eq!(
            url(&s, Signal::Logs),
            "http://host:4318/otlp/v1/logs?tenant=t1"
        );
        assert_eq!(
            url(&s, Signal::Profiles),
            "http://host:4318/otlp/v1development/profiles?tenant=t1"
        );
    }

    #[test]
    fn per_signal_and_grpc_endpoints_are_used_as_is() {
        let s = resolve(
            &ExportConfig::default(),
            "o".as_ref(),
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "http://m:9/custom/?tenant=t1#frag",
                ),
                ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://[::1]:9"),
            ]),
        )
        .unwrap();
        assert_eq!(url(&s, Signal::Metrics), "http://m:9/custom/?tenant=t1");
        assert_eq!(url(&s, Signal::Logs), "http://[::1]:9/");
        assert!(s.target(Signal::Profiles).is_none());
        let s = resolve(
            &ExportConfig::default(),
            "o".as_ref(),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://[fd00::2]:4317/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap();
        assert_eq!(url(&s, Signal::Logs), "https://[fd00::2]:4317/");
        // The config file's per-signal endpoint too.
        let mut cfg = ExportConfig {
            endpoint: "http://file:4318/base?a=1".into(),
            ..Default::default()
        };
        cfg.logs.endpoint = "http://logs:4318/exact?b=2".into();
        let s = resolve(&cfg, "o".as_ref(), env(&[])).unwrap();
        assert_eq!(url(&s, Signal::Logs), "http://logs:4318/exact?b=2");
        assert_eq!(
            url(&s, Signal::Metrics),
            "http://file:4318/base/v1/metrics?a=1"
        );
    }

    #[test]
    fn bad_urls_give_cause_and_fix() {
        for endpoint in [
            "localhost:4318",
            "http://",
            "ftp://host:21",
            "http://ho st:4318",
            "http://[::1:4318",
            "http://host:99999",
        ] {
            let e = resolve(
                &ExportConfig::default(),
                "o".as_ref(),
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]),
            )
            .map(|s| url(&s, Signal::Metrics))
            .expect_err(endpoint);
            assert!(
                e.cause.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT=") && !e.cause.contains('\n'),
                "{endpoint}: {}",
                e.cause
            );
            assert!(e.fix.contains("http://localhost:4318"), "{}", e.fix);
        }
    }
}
