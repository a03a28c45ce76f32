//! The `opamp:` section of the config: which OpAMP server manages this agent and how the client
//! reaches it, plus its checks and "what is allowed" hints (used by `config::validate`).
//!
//! The whole section is local-only: a remote config may not change it (the server moves the
//! client with ConnectionSettingsOffers instead, which are tried before they are kept).

use std::{collections::BTreeMap, time::Duration};

use humantime_serde::re::humantime::format_duration;
use serde::{Deserialize, Serialize};

use crate::config::{Compression, TlsConfig};

/// The OpAMP client's settings. No endpoint: OpAMP is off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpampConfig {
    /// `ws://`/`wss://` (WebSocket transport) or `http://`/`https://` (plain HTTP transport) URL
    /// of the server, e.g. `ws://localhost:4320/v1/opamp`; empty: OpAMP off.
    pub endpoint: String,
    /// Headers sent when connecting (WebSocket upgrade) or with every HTTP request, e.g.
    /// `authorization: "Bearer ..."`. Redacted in the effective config.
    pub headers: BTreeMap<String, String>,
    /// TLS for `wss://` and `https://`: the exporter's options.
    pub tls: TlsConfig,
    /// HTTP request bodies: gzip or none.
    pub compression: Compression,
    /// Heartbeat (and HTTP polling) interval until the server offers one
    /// (`OpAMPConnectionSettings.heartbeat_interval_seconds`).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Connecting, and waiting for one answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest ServerToAgent message taken; a WebSocket message beyond it closes the connection
    /// with status 1009 (message too big).
    pub max_message_bytes: u64,
    /// Accept remote configuration (AcceptsRemoteConfig). false: the agent only reports.
    pub accept_remote_config: bool,
    /// After a remote config is applied, how long a probe that fails to attach, or a new export
    /// endpoint that fails for good, rolls the agent back to the last good config.
    #[serde(with = "humantime_serde")]
    pub rollback_grace: Duration,
}

impl Default for OpampConfig {
    fn default() -> Self {
        OpampConfig {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            tls: TlsConfig::default(),
            compression: Compression::Gzip,
            heartbeat_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            max_message_bytes: 4 * 1024 * 1024,
            accept_remote_config: true,
            rollback_grace: Duration::from_secs(30),
        }
    }
}

impl OpampConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty()
    }
}

const HEARTBEAT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));
const TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(300));
const GRACE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));
const MESSAGE_BYTES: (u64, u64) = (64 * 1024, 256 * 1024 * 1024);

fn durations(l: (Duration, Duration), example: &str) -> String {
    format!(
        "a duration from {} to {}, e.g. {example}",
        format_duration(l.0),
        format_duration(l.1)
    )
}

/// What an `opamp.*` leaf field accepts, phrased to follow "use " (`None`: not one; the
/// sections' hints come from `config::validate`).
pub fn allowed(path: &str) -> Option<String> {
    Some(match path {
        "opamp.endpoint" => "a ws://, wss:// (WebSocket) or http://, https:// (plain HTTP) URL \
                             such as ws://localhost:4320/v1/opamp, or empty for no OpAMP"
            .to_string(),
        "opamp.headers" => "a mapping of header names to values".to_string(),
        "opamp.tls.ca_file" | "opamp.tls.cert_file" | "opamp.tls.key_file" => {
            "a path to a PEM file (a client certificate needs its key, and the key its \
             certificate)"
                .to_string()
        }
        "opamp.compression" => "gzip or none".to_string(),
        "opamp.heartbeat_interval" => durations(HEARTBEAT, "30s"),
        "opamp.timeout" => durations(TIMEOUT, "10s"),
        "opamp.max_message_bytes" => format!(
            "a number of bytes from {} (64 KiB) to {} (256 MiB), e.g. 4194304 (4 MiB)",
            MESSAGE_BYTES.0, MESSAGE_BYTES.1
        ),
        "opamp.accept_remote_config" => "true or false".to_string(),
        "opamp.rollback_grace" => durations(GRACE, "30s"),
        _ => return None,
    })
}

/// Checks an OpAMP endpoint: empty, or a ws/wss/http/https URL with a host.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(());
    }
    match url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("ws" | "wss" | "http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(())
        }
        Ok(_) => Err(format!(
            "{url:?} is not a ws://, wss://, http:// or https:// URL with a host"
        )),
        Err(e) => Err(format!("{url:?} is not a URL ({e})")),
    }
}

fn in_range(d: Duration, l: (Duration, Duration)) -> Result<(), String> {
    if d < l.0 || d > l.1 {
        return Err(format!("{} is out of range", format_duration(d)));
    }
    Ok(())
}

/// Checks one `opamp.*` field (sections and unconstrained fields pass).
pub fn check_field(c: &OpampConfig, path: &str) -> Result<(), String> {
    match path {
        "opamp.endpoint" => check_endpoint(&c.endpoint),
        "opamp.headers" => {
            for (k, v) in &c.headers {
                http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("{k:?} is not an HTTP header name"))?;
                http::HeaderValue::from_str(v)
                    .map_err(|_| format!("the value of {k} is not a valid HTTP header value"))?;
            }
            Ok(())
        }
        "opamp.tls.key_file" if c.tls.cert_file.is_some() != c.tls.key_file.is_some() => {
            Err("a client certificate needs both cert_file and key_file".to_string())
        }
        "opamp.heartbeat_interval" => in_range(c.heartbeat_interval, HEARTBEAT),
        "opamp.timeout" => in_range(c.timeout, TIMEOUT),
        "opamp.max_message_bytes" => {
            let n = c.max_message_bytes;
            if n < MESSAGE_BYTES.0 || n > MESSAGE_BYTES.1 {
                return Err(format!("{n} is out of range"));
            }
            Ok(())
        }
        "opamp.rollback_grace" => in_range(c.rollback_grace, GRACE),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_pick_a_transport_scheme() {
        for ok in [
            "",
            "ws://localhost:4320/v1/opamp",
            "wss://opamp.example.com/v1/opamp",
            "http://127.0.0.1:4320/v1/opamp",
            "https://x:1",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://x/v1/opamp",
            "localhost:4320",
            "ws:///v1/opamp",
            "not a url",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_and_pairs() {
        let mut c = OpampConfig::default();
        let leaves = [
            "opamp.endpoint",
            "opamp.headers",
            "opamp.tls.ca_file",
            "opamp.tls.cert_file",
            "opamp.tls.key_file",
            "opamp.compression",
            "opamp.heartbeat_interval",
            "opamp.timeout",
            "opamp.max_message_bytes",
            "opamp.accept_remote_config",
            "opamp.rollback_grace",
        ];
        for f in leaves {
            assert_eq!(check_field(&c, f), Ok(()), "{f}");
            assert!(allowed(f).is_some(), "{f}");
        }
        c.heartbeat_interval = Duration::ZERO;
        assert!(check_field(&c, "opamp.heartbeat_interval").is_err());
        c.tls.cert_file = Some("c.pem".into());
        assert!(check_field(&c, "opamp.tls.key_file").is_err());
        c.headers.insert("bad name".into(), "v".into());
        assert!(check_field(&c, "opamp.headers").is_err());
    }
}
