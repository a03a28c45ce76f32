//! Sends one encoded OTLP request to its target over gRPC (tonic) or HTTP (hyper, protobuf or
//! JSON), with gzip, TLS and headers, and classifies the answer by the spec: accepted (maybe
//! partially), retryable (with the server's delay when given), or permanent.
//!
//! Requests arrive as protobuf bytes (the spool's format): HTTP/protobuf and gRPC send them as
//! they are; JSON re-encodes them from the decoded message.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
    metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    profiles::v1development::{ExportProfilesServiceRequest, ExportProfilesServiceResponse},
};
use prost::Message;
use tonic::{codec::CompressionEncoding, transport::Channel};

use super::{
    retry,
    settings::{signal_name, Target},
    spool::Signal,
};
use crate::config::{Compression, Protocol};

/// Largest response body read (partial-success messages are small).
const MAX_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{message}")]
    Retryable {
        message: String,
        after: Option<Duration>,
    },
    #[error("{message}")]
    Permanent { message: String },
}

/// The collector took the request; `rejected` items were refused (partial success).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    pub rejected: i64,
    pub message: String,
}

/// A target that cannot be set up (bad TLS files, bad URL).
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct SetupError {
    pub cause: String,
    pub fix: String,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

enum Kind {
    Grpc(Channel),
    Http(HttpClient),
}

pub struct Transport {
    target: Target,
    kind: Kind,
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|e| SetupError {
        cause: format!("cannot read the TLS {what} {}: {e}", path.display()),
        fix: "fix the path in export.tls or OTEL_EXPORTER_OTLP_CERTIFICATE / _CLIENT_*".into(),
    })
}

fn rustls_config(target: &Target) -> Result<rustls::ClientConfig, SetupError> {
    client_tls(&target.tls)
}

/// A rustls client config (ring) from PEM files: `ca_file` replaces the built-in web roots,
/// `cert_file` + `key_file` are the client identity. Shared with the OpAMP client.
pub fn client_tls(tls: &crate::config::TlsConfig) -> Result<rustls::ClientConfig, SetupError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| SetupError {
        cause: format!("the TLS {what} is not usable: {e}"),
        fix: "give PEM files (CA bundle, client certificate and its key)".into(),
    };
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(p) => {
            let pem = read_file(p, "CA file")?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| bad("CA file", &e))?;
                roots.add(c).map_err(|e| bad("CA file", &e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("setup", &e))?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read_file(c, "client certificate")?)
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad("client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(&read_file(k, "client key")?)
                .map_err(|e| bad("client key", &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("client certificate", &e))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(SetupError {
            cause: "a TLS client certificate needs its key (and the key its certificate)".into(),
            fix: "set both export.tls.cert_file and export.tls.key_file".into(),
        }),
    }
}

fn grpc_channel(target: &Target) -> Result<Channel, SetupError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut ep = Endpoint::from_shared(target.url.to_string())
        .map_err(|e| SetupError {
            cause: format!("export endpoint {}: {e}", target.url),
            fix: "use a URL such as http://localhost:4317".into(),
        })?
        .timeout(target.timeout)
        .connect_timeout(target.timeout);
    if target.url.scheme_str() == Some("https") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(p) = &target.tls.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_file(p, "CA file")?));
        }
        if let (Some(c), Some(k)) = (&target.tls.cert_file, &target.tls.key_file) {
            tls = tls.identity(Identity::from_pem(
                read_file(c, "client certificate")?,
                read_file(k, "client key")?,
            ));
        }
        ep = ep.tls_config(tls).map_err(|e| SetupError {
            cause: format!("TLS setup for {}: {e}", target.url),
            fix: "check the TLS files in export.tls".into(),
        })?;
    }
    Ok(ep.connect_lazy())
}

impl Transport {
    pub fn new(target: &Target) -> Result<Transport, SetupError> {
        let kind = match target.protocol {
            Protocol::Grpc => Kind::Grpc(grpc_channel(target)?),
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(rustls_config(target)?)
                    .https_or_http()
                    .enable_http1()
                    .build();
                Kind::Http(Client::builder(TokioExecutor::new()).build(connector))
            }
        };
        Ok(Transport {
            target: target.clone(),
            kind,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends one request (protobuf bytes of the signal's `Export*ServiceRequest`).
    pub async fn send(&self, body: &[u8]) -> Result<Accepted, SendError> {
        match &self.kind {
            Kind::Grpc(ch) => self.send_grpc(ch.clone(), body).await,
            Kind::Http(client) => self.send_http(client, body).await,
        }
    }

    /// Sends the spooled protobuf bytes as they are (no decode and re-encode), to the signal's
    /// `Export` method; the answer is decoded for its partial success.
    async fn send_grpc(&self, ch: Channel, body: &[u8]) -> Result<Accepted, SendError> {
        let t = &self.target;
        let mut grpc = tonic::client::Grpc::new(ch)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(MAX_RESPONSE);
        if t.compression == Compression::Gzip {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let what = |status: &tonic::Status| {
            format!(
                "gRPC {} to {}: {:?} {}",
                signal_name(t.signal),
                t.url,
                status.code(),
                status.message()
            )
        };
        grpc.ready().await.map_err(|e| SendError::Retryable {
            message: format!(
                "gRPC {} to {}: {}",
                signal_name(t.signal),
                t.url,
                error_chain(&e)
            ),
            after: None,
        })?;
        let request = self.grpc_request(Bytes::copy_from_slice(body))?;
        macro_rules! call {
            ($path:expr, $resp:ty, $rejected:ident) => {
                grpc.unary(
                    request,
                    http::uri::PathAndQuery::from_static($path),
                    RawCodec::<$resp>::default(),
                )
                .await
                .map(|r| {
                    let p = r.into_inner().partial_success.unwrap_or_default();
                    Accepted {
                        rejected: p.$rejected,
                        message: p.error_message,
                    }
                })
            };
        }
        let result = match t.signal {
            Signal::Metrics => call!(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                ExportMetricsServiceResponse,
                rejected_data_points
            ),
            Signal::Logs => call!(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                ExportLogsServiceResponse,
                rejected_log_records
            ),
            Signal::Profiles => call!(
                "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
                ExportProfilesServiceResponse,
                rejected_profiles
            ),
        };
        result.map_err(|status| {
            let after = retry::grpc_retry_delay(status.details());
            let message = what(&status);
            if retry::grpc_retryable(status.code(), after.is_some()) {
                SendError::Retryable { message, after }
            } else {
                SendError::Permanent { message }
            }
        })
    }

    fn grpc_request<T>(&self, msg: T) -> Result<tonic::Request<T>, SendError> {
        use tonic::metadata::{MetadataKey, MetadataValue};
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.target.timeout);
        for (k, v) in &self.target.headers {
            let key = MetadataKey::from_bytes(k.as_str().as_bytes()).map_err(|e| {
                SendError::Permanent {
                    message: format!("header {k} cannot be gRPC metadata: {e}"),
                }
            })?;
            let value = v
                .to_str()
                .ok()
                .and_then(|s| MetadataValue::try_from(s).ok())
                .ok_or_else(|| SendError::Permanent {
                    message: format!("header {k} has a value gRPC metadata cannot carry"),
                })?;
            req.metadata_mut().insert(key, value);
        }
        Ok(req)
    }

    async fn send_http(&self, client: &HttpClient, body: &[u8]) -> Result<Accepted, SendError> {
        let t = &self.target;
        let json = t.protocol == Protocol::HttpJson;
        let payload = if json {
            to_json(t.signal, body)?
        } else {
            body.to_vec()
        };
        let payload = match t.compression {
            Compression::Gzip => gzip(&payload),
            Compression::None => payload,
        };
        let mut req = http::Request::post(t.url.clone())
            .header(
                http::header::CONTENT_TYPE,
                if json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                },
            )
            .header(
                http::header::USER_AGENT,
                concat!("agent/", env!("CARGO_PKG_VERSION")),
            );
        if t.compression == Compression::Gzip {
            req = req.header(http::header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &t.headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| SendError::Permanent {
                message: format!("building the request: {e}"),
            })?;
        let what = format!("HTTP {} to {}", signal_name(t.signal), t.url);
        let resp = match tokio::time::timeout(t.timeout, client.request(req)).await {
            Err(_) => {
                return Err(SendError::Retryable {
                    message: format!("{what}: no answer within {:?}", t.timeout),
                    after: None,
                })
            }
            Ok(Err(e)) => {
                return Err(SendError::Retryable {
                    message: format!("{what}: {}", error_chain(&e)),
                    after: None,
                })
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry::parse_retry_after);
        let json_reply = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = tokio::time::timeout(
            t.timeout,
            Limited::new(resp.into_body(), MAX_RESPONSE).collect(),
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(partial(t.signal, &body, json_reply).unwrap_or_default());
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let message = format!("{what}: status {status} {}", text.trim());
        if retry::http_retryable(status) {
            Err(SendError::Retryable { message, after })
        } else {
            Err(SendError::Permanent { message })
        }
    }
}

/// A gRPC codec that sends already-encoded protobuf bytes and decodes the answer as `D`.
struct RawCodec<D>(std::marker::PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        RawCodec(std::marker::PhantomData)
    }
}

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

struct MessageDecoder<D>(std::marker::PhantomData<D>);

impl<D: Message + Default> tonic::codec::Decoder for MessageDecoder<D> {
    type Item = D;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<D>, tonic::Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable answer: {e}")))
    }
}

impl<D: Message + Default + Send + 'static> tonic::codec::Codec for RawCodec<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = MessageDecoder<D>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> MessageDecoder<D> {
        MessageDecoder(std::marker::PhantomData)
    }
}

fn undecodable(e: prost::DecodeError) -> SendError {
    SendError::Permanent {
        message: format!("a spooled request does not decode: {e}"),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// OTLP/JSON of a protobuf-encoded request.
pub fn to_json(signal: Signal, body: &[u8]) -> Result<Vec<u8>, SendError> {
    let json = match signal {
        Signal::Metrics => {
            serde_json::to_vec(&ExportMetricsServiceRequest::decode(body).map_err(undecodable)?)
        }
        Signal::Logs => {
            serde_json::to_vec(&ExportLogsServiceRequest::decode(body).map_err(undecodable)?)
        }
        Signal::Profiles => {
            serde_json::to_vec(&ExportProfilesServiceRequest::decode(body).map_err(undecodable)?)
        }
    };
    json.map_err(|e| SendError::Permanent {
        message: format!("encoding OTLP/JSON: {e}"),
    })
}

/// The partial success in a 2xx answer, if any.
fn partial(signal: Signal, body: &[u8], json: bool) -> Option<Accepted> {
    if body.is_empty() {
        return None;
    }
    macro_rules! read {
        ($resp:ty, $rejected:ident) => {{
            let r: $resp = if json {
                serde_json::from_slice(body).ok()?
            } else {
                <$resp>::decode(body).ok()?
            };
            let p = r.partial_success?;
            Some(Accepted {
                rejected: p.$rejected,
                message: p.error_message,
            })
        }};
    }
    match signal {
        Signal::Metrics => read!(ExportMetricsServiceResponse, rejected_data_points),
        Signal::Logs => read!(ExportLogsServiceResponse, rejected_log_records),
        Signal::Profiles => read!(ExportProfilesServiceResponse, rejected_profiles),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;

    use super::*;

    #[test]
    fn partial_success_is_read_from_protobuf_and_json() {
        let resp = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 3,
                error_message: "bad points".into(),
            }),
        };
        let a = partial(Signal::Metrics, &resp.encode_to_vec(), false).unwrap();
        assert_eq!((a.rejected, a.message.as_str()), (3, "bad points"));
        let json = serde_json::to_vec(&resp).unwrap();
        let a = partial(Signal::Metrics, &json, true).unwrap();
        assert_eq!(a.rejected, 3);
        assert_eq!(partial(Signal::Metrics, b"", false), None);
    }

    #[test]
    fn json_and_gzip_round_trip() {
        let req = ExportMetricsServiceRequest::default();
        let json = to_json(Signal::Metrics, &req.encode_to_vec()).unwrap();
        assert_eq!(json, b"{\"resourceMetrics\":[]}");
        let z = gzip(b"hello hello hello");
        let mut out = String::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(z.as_slice())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello hello hello");
    }
}
