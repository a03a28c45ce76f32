//! Where and how the client connects: the settings from the `opamp:` section, and the server's
//! OpAMPConnectionSettings / TelemetryConnectionSettings offers turned into settings of the same
//! shape (offered certificates and CAs are written as PEM files under
//! `<output.dir>/opamp/certs/`, mode 0600, so they are used exactly like configured ones and
//! survive restarts, as the spec asks of clients that accept certificates).

use std::{collections::BTreeMap, path::Path, time::Duration};

use super::{config::OpampConfig, wire::pb};
use crate::config::{Compression, TlsConfig};

/// Which transport an endpoint's scheme picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ws://`, `wss://`.
    WebSocket,
    /// `http://`, `https://`.
    Http,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::WebSocket => "websocket",
            Kind::Http => "http",
        }
    }
}

/// Everything needed to open one OpAMP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnSettings {
    pub endpoint: String,
    pub uri: http::Uri,
    pub kind: Kind,
    pub headers: BTreeMap<String, String>,
    pub tls: TlsConfig,
    pub compression: Compression,
    pub timeout: Duration,
    pub max_message_bytes: usize,
}

/// Parses an endpoint into its URI and transport.
pub fn parse_endpoint(endpoint: &str) -> Result<(http::Uri, Kind), String> {
    super::config::check_endpoint(endpoint)?;
    if endpoint.is_empty() {
        return Err("no OpAMP endpoint".to_string());
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL ({e})"))?;
    let kind = match uri.scheme_str() {
        Some("ws" | "wss") => Kind::WebSocket,
        _ => Kind::Http,
    };
    Ok((uri, kind))
}

impl ConnSettings {
    pub fn from_config(c: &OpampConfig) -> Result<ConnSettings, String> {
        let (uri, kind) = parse_endpoint(&c.endpoint)?;
        Ok(ConnSettings {
            endpoint: c.endpoint.clone(),
            uri,
            kind,
            headers: c.headers.clone(),
            tls: c.tls.clone(),
            compression: c.compression,
            timeout: c.timeout,
            max_message_bytes: usize::try_from(c.max_message_bytes).unwrap_or(usize::MAX),
        })
    }

    /// Whether the URL uses TLS (`wss://`, `https://`).
    pub fn secure(&self) -> bool {
        matches!(self.uri.scheme_str(), Some("wss" | "https"))
    }
}

/// The parts of a connection offer the agent supports, checked. Unsupported parts (a proxy,
/// disabling verification, TLS version or cipher limits) refuse the whole offer: using part of
/// it would connect in a way the server did not ask for.
fn check_tls_offer(tls: Option<&pb::TlsConnectionSettings>) -> Result<(), String> {
    let Some(t) = tls else { return Ok(()) };
    if t.insecure_skip_verify {
        return Err("insecure_skip_verify is not supported (TLS is always verified)".into());
    }
    if !t.min_version.is_empty() || !t.max_version.is_empty() || !t.cipher_suites.is_empty() {
        return Err(
            "TLS min_version, max_version and cipher_suites are not supported (rustls \
             defaults: TLS 1.2 and 1.3, safe suites)"
                .into(),
        );
    }
    if !t.ca_pem_contents.is_empty() && t.include_system_ca_certs_pool {
        return Err(
            "an offered CA together with the system CA pool is not supported: offer one of them"
                .into(),
        );
    }
    Ok(())
}

fn check_proxy(p: Option<&pb::ProxyConnectionSettings>) -> Result<(), String> {
    match p {
        Some(p) if !p.url.is_empty() => Err("proxy settings are not supported".into()),
        _ => Ok(()),
    }
}

fn headers_of(h: Option<&pb::Headers>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for x in h.map(|h| h.headers.as_slice()).unwrap_or_default() {
        http::HeaderName::from_bytes(x.key.as_bytes())
            .map_err(|_| format!("offered header {:?} is not a header name", x.key))?;
        http::HeaderValue::from_str(&x.value)
            .map_err(|_| format!("offered header {} has an invalid value", x.key))?;
        out.insert(x.key.clone(), x.value.clone());
    }
    Ok(out)
}

/// Writes one PEM file with mode 0600 (atomically: temporary file, then rename).
fn write_pem(path: &Path, pem: &[u8]) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(pem)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The TLS settings an offer asks for, its PEM contents stored under `certs` with names
/// starting with `name` (`opamp`, `own_metrics`, ...). `current` is kept where the offer says
/// nothing (no `tls` message); an absent certificate means no client certificate (spec:
/// "if omitted the client SHOULD NOT use a client-side certificate").
pub fn offered_tls(
    certs: &Path,
    name: &str,
    cert: Option<&pb::TlsCertificate>,
    tls: Option<&pb::TlsConnectionSettings>,
    current: &TlsConfig,
) -> Result<TlsConfig, String> {
    check_tls_offer(tls)?;
    let mut out = TlsConfig {
        ca_file: current.ca_file.clone(),
        cert_file: None,
        key_file: None,
    };
    if let Some(t) = tls {
        out.ca_file = None;
        if !t.ca_pem_contents.is_empty() {
            let p = certs.join(format!("{name}-ca.pem"));
            write_pem(&p, t.ca_pem_contents.as_bytes())?;
            out.ca_file = Some(p);
        }
    }
    if let Some(c) = cert.filter(|c| !c.cert.is_empty() || !c.private_key.is_empty()) {
        if c.cert.is_empty() || c.private_key.is_empty() {
            return Err("an offered certificate needs both cert and private_key".into());
        }
        let cp = certs.join(format!("{name}-cert.pem"));
        let kp = certs.join(format!("{name}-key.pem"));
        write_pem(&cp, &c.cert)?;
        write_pem(&kp, &c.private_key)?;
        // The offered chain and key must load before they replace anything.
        let probe = TlsConfig {
            ca_file: out.ca_file.clone(),
            cert_file: Some(cp.clone()),
            key_file: Some(kp.clone()),
        };
        crate::export::transport::client_tls(&probe).map_err(|e| e.cause)?;
        out.cert_file = Some(cp);
        out.key_file = Some(kp);
    }
    Ok(out)
}

/// New OpAMP settings from an OpAMPConnectionSettings offer; `None` when nothing that needs a
/// new connection changed (only the heartbeat interval, say).
pub fn opamp_offer(
    current: &ConnSettings,
    certs: &Path,
    o: &pb::OpAmpConnectionSettings,
) -> Result<Option<ConnSettings>, String> {
    check_proxy(o.proxy.as_ref())?;
    let endpoint = if o.destination_endpoint.is_empty() {
        current.endpoint.clone()
    } else {
        o.destination_endpoint.clone()
    };
    let (uri, kind) = parse_endpoint(&endpoint)?;
    let headers = if o.headers.is_some() {
        headers_of(o.headers.as_ref())?
    } else {
        current.headers.clone()
    };
    let tls = if o.certificate.is_some() || o.tls.is_some() {
        offered_tls(
            certs,
            "opamp",
            o.certificate.as_ref(),
            o.tls.as_ref(),
            &current.tls,
        )?
    } else {
        current.tls.clone()
    };
    let next = ConnSettings {
        endpoint,
        uri,
        kind,
        headers,
        tls,
        ..current.clone()
    };
    Ok((next != *current).then_some(next))
}

/// An OTLP/HTTP target for own telemetry from a TelemetryConnectionSettings offer; `None`
/// when the offer's endpoint is empty (stop sending).
pub fn telemetry_offer(
    certs: &Path,
    name: &str,
    signal: crate::export::spool::Signal,
    o: &pb::TelemetryConnectionSettings,
) -> Result<Option<crate::export::settings::Target>, String> {
    check_proxy(o.proxy.as_ref())?;
    if o.destination_endpoint.is_empty() {
        return Ok(None);
    }
    crate::config::check_url(&o.destination_endpoint)?;
    let url: http::Uri = o
        .destination_endpoint
        .parse()
        .map_err(|e| format!("{:?} is not a URL ({e})", o.destination_endpoint))?;
    let tls = offered_tls(
        certs,
        name,
        o.certificate.as_ref(),
        o.tls.as_ref(),
        &TlsConfig::default(),
    )?;
    let headers = headers_of(o.headers.as_ref())?
        .into_iter()
        .filter_map(|(k, v)| {
            Some((
                http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                http::HeaderValue::from_str(&v).ok()?,
            ))
        })
        .collect();
    Ok(Some(crate::export::settings::Target {
        signal,
        url,
        protocol: crate::config::Protocol::HttpProtobuf,
        compression: Compression::Gzip,
        headers,
        timeout: Duration::from_secs(10),
        tls,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> ConnSettings {
        ConnSettings::from_config(&OpampConfig {
            endpoint: "ws://127.0.0.1:4320/v1/opamp".into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn transports_from_schemes() {
        assert_eq!(
            parse_endpoint("wss://a/v1/opamp").unwrap().1,
            Kind::WebSocket
        );
        assert_eq!(
            parse_endpoint("http://a:4320/v1/opamp").unwrap().1,
            Kind::Http
        );
        assert!(parse_endpoint("").is_err());
    }

    #[test]
    fn heartbeat_only_offers_need_no_new_connection() {
        let dir = tempfile::tempdir().unwrap();
        let c = current();
        let o = pb::OpAmpConnectionSettings {
            destination_endpoint: c.endpoint.clone(),
            heartbeat_interval_seconds: 5,
            ..Default::default()
        };
        assert_eq!(opamp_offer(&c, dir.path(), &o), Ok(None));
        let o = pb::OpAmpConnectionSettings {
            destination_endpoint: "http://127.0.0.1:9/v1/opamp".into(),
            headers: Some(pb::Headers {
                headers: vec![pb::Header {
                    key: "authorization".into(),
                    value: "Bearer x".into(),
                }],
            }),
            ..Default::default()
        };
        let n = opamp_offer(&c, dir.path(), &o).unwrap().unwrap();
        assert_eq!(n.kind, Kind::Http);
        assert_eq!(n.headers["authorization"], "Bearer x");
    }

    #[test]
    fn unsupported_offers_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let c = current();
        let proxy = pb::OpAmpConnectionSettings {
            proxy: Some(pb::ProxyConnectionSettings {
                url: "http://proxy:3128".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(opamp_offer(&c, dir.path(), &proxy)
            .unwrap_err()
            .contains("proxy"));
        let insecure = pb::OpAmpConnectionSettings {
            tls: Some(pb::TlsConnectionSettings {
                insecure_skip_verify: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(opamp_offer(&c, dir.path(), &insecure)
            .unwrap_err()
            .contains("insecure_skip_verify"));
        let half = pb::OpAmpConnectionSettings {
            certificate: Some(pb::TlsCertificate {
                cert: b"x".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(opamp_offer(&c, dir.path(), &half).is_err());
    }

    #[test]
    fn telemetry_offers_are_otlp_http_targets() {
        let dir = tempfile::tempdir().unwrap();
        let o = pb::TelemetryConnectionSettings {
            destination_endpoint: "http://127.0.0.1:4318/v1/metrics".into(),
            ..Default::default()
        };
        let t = telemetry_offer(
            dir.path(),
            "own_metrics",
            crate::export::spool::Signal::Metrics,
            &o,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.url.path(), "/v1/metrics");
        assert_eq!(t.protocol, crate::config::Protocol::HttpProtobuf);
        let stop = pb::TelemetryConnectionSettings::default();
        assert_eq!(
            telemetry_offer(
                dir.path(),
                "own_metrics",
                crate::export::spool::Signal::Metrics,
                &stop
            ),
            Ok(None)
        );
        let bad = pb::TelemetryConnectionSettings {
            destination_endpoint: "ftp://x".into(),
            ..Default::default()
        };
        assert!(telemetry_offer(
            dir.path(),
            "own_logs",
            crate::export::spool::Signal::Logs,
            &bad
        )
        .is_err());
    }
}
