//! The plain HTTP transport (spec "Plain HTTP Transport"): each AgentToServer is a POST of
//! `application/x-protobuf` (gzip when configured) to the endpoint, with the configured headers
//! and `OpAMP-Instance-UID`; the answer body is the ServerToAgent. The exporter's client stack
//! (hyper + rustls). One request at a time: the client waits for each answer.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use super::{chain, retry_after, tls_config, TransportError};
use crate::{
    config::Compression,
    opamp::{
        connection::ConnSettings,
        wire::{self, pb},
    },
};

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct HttpConn {
    client: HttpClient,
    s: ConnSettings,
    uid: String,
    /// The answer to the last POST, until `recv` takes it.
    answer: Option<pb::ServerToAgent>,
}

fn gunzip(b: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad gzip body: {e}"))?;
    if out.len() > limit {
        return Err(format!("answer over {limit} bytes once decompressed"));
    }
    Ok(out)
}

impl HttpConn {
    pub fn new(s: &ConnSettings, uid: &str) -> Result<HttpConn, TransportError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(s)?)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpConn {
            client: Client::builder(TokioExecutor::new()).build(connector),
            s: s.clone(),
            uid: uid.to_string(),
            answer: None,
        })
    }

    pub fn set_uid(&mut self, uid: &str) {
        self.uid = uid.to_string();
    }

    pub async fn send(&mut self, msg: &pb::AgentToServer) -> Result<(), TransportError> {
        use prost::Message as _;
        let s = &self.s;
        let body = msg.encode_to_vec();
        let gzip = s.compression == Compression::Gzip;
        let body = if gzip {
            crate::export::transport::gzip(&body)
        } else {
            body
        };
        let mut req = http::Request::post(s.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(http::header::ACCEPT_ENCODING, "gzip")
            .header(
                http::header::USER_AGENT,
                concat!("agent/", env!("CARGO_PKG_VERSION")),
            )
            .header("OpAMP-Instance-UID", self.uid.as_str());
        if gzip {
            req = req.header(http::header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &s.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| TransportError::new(format!("building the request: {e}")))?;
        let what = format!("POST {}", s.endpoint);
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| TransportError::new(format!("{what}: {}", chain(&e))))?;
            let status = resp.status().as_u16();
            let after = retry_after(resp.headers());
            let gz = resp
                .headers()
                .get(http::header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let body = Limited::new(resp.into_body(), s.max_message_bytes)
                .collect()
                .await
                .map_err(|e| {
                    TransportError::new(format!(
                        "{what}: answer not read: {e} (opamp.max_message_bytes is {})",
                        s.max_message_bytes
                    ))
                })?
                .to_bytes();
            if status != 200 {
                return Err(TransportError::from_status(
                    &what,
                    status,
                    after,
                    &String::from_utf8_lossy(&body),
                ));
            }
            let body = if gz {
                gunzip(&body, s.max_message_bytes)
                    .map_err(|e| TransportError::new(format!("{what}: {e}")))?
            } else {
                body.to_vec()
            };
            wire::decode(&body).map_err(|e| TransportError::new(format!("{what}: {e}")))
        };
        match tokio::time::timeout(s.timeout, exchange).await {
            Ok(Ok(m)) => {
                self.answer = Some(m);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransportError::new(format!(
                "{what}: no answer within {:?}",
                s.timeout
            ))),
        }
    }

    /// The answer to the last POST; pending until there is one.
    pub async fn recv(&mut self) -> Result<pb::ServerToAgent, TransportError> {
        match self.answer.take() {
            Some(m) => Ok(m),
            None => std::future::pending().await,
        }
    }
}
