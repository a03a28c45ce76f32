//! The WebSocket transport (spec "WebSocket Transport"): TCP, rustls for `wss://` (the
//! exporter's TLS settings), the HTTP upgrade with the configured headers, then binary messages
//! each starting with the 0x00 header varint. A message larger than `max_message_bytes` closes
//! the connection with status 1009 (message too big).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{
        self,
        client::IntoClientRequest,
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};

use super::{chain, retry_after, tls_config, TransportError};
use crate::opamp::{
    connection::ConnSettings,
    wire::{self, pb},
};

/// The data of a chunked HTTP body (best effort: stops at anything malformed).
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n || !rest.is_char_boundary(n) {
            break;
        }
        out.push_str(&rest[..n]);
        raw = rest[n..].trim_start_matches("\r\n");
    }
    out
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct WsConn {
    ws: WebSocketStream<Box<dyn Io>>,
    endpoint: String,
    timeout: std::time::Duration,
    limit: usize,
}

impl WsConn {
    pub async fn connect(s: &ConnSettings, uid: &str) -> Result<WsConn, TransportError> {
        match tokio::time::timeout(s.timeout, Self::connect_inner(s, uid)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::new(format!(
                "connecting to {}: no answer within {:?}",
                s.endpoint, s.timeout
            ))),
        }
    }

    async fn connect_inner(s: &ConnSettings, uid: &str) -> Result<WsConn, TransportError> {
        let what = |e: &dyn std::fmt::Display| {
            TransportError::new(format!("connecting to {}: {e}", s.endpoint))
        };
        let host = s.uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = s
            .uri
            .port_u16()
            .unwrap_or(if s.secure() { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| what(&e))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = if s.secure() {
            let cfg = tls_config(s)?;
            let name =
                rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| what(&e))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| what(&chain(&e)))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let mut req = s
            .endpoint
            .as_str()
            .into_client_request()
            .map_err(|e| what(&e))?;
        let h = req.headers_mut();
        for (k, v) in &s.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                h.insert(k, v);
            }
        }
        h.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("agent/", env!("CARGO_PKG_VERSION"))),
        );
        if let Ok(v) = http::HeaderValue::from_str(uid) {
            h.insert("OpAMP-Instance-UID", v);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(s.max_message_bytes))
            .max_frame_size(Some(s.max_message_bytes));
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => {
                    let mut body = resp
                        .body()
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .into_owned();
                    // tungstenite hands over a chunked body as it came: drop the size line.
                    let chunked = resp
                        .headers()
                        .get(http::header::TRANSFER_ENCODING)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
                    if chunked {
                        body = dechunk(&body);
                    }
                    TransportError::from_status(
                        &format!("WebSocket upgrade at {}", s.endpoint),
                        resp.status().as_u16(),
                        retry_after(resp.headers()),
                        &body,
                    )
                }
                e => what(&chain(&e)),
            })?;
        Ok(WsConn {
            ws,
            endpoint: s.endpoint.clone(),
            timeout: s.timeout,
            limit: s.max_message_bytes,
        })
    }

    pub async fn send(&mut self, msg: &pb::AgentToServer) -> Result<(), TransportError> {
        let frame = wire::encode_frame(msg);
        match tokio::time::timeout(self.timeout, self.ws.send(Message::Binary(frame.into()))).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TransportError::new(format!(
                "sending to {}: {}",
                self.endpoint,
                chain(&e)
            ))),
            Err(_) => Err(TransportError::new(format!(
                "sending to {}: not written within {:?}",
                self.endpoint, self.timeout
            ))),
        }
    }

    /// The next ServerToAgent. Messages with a bad header or body are skipped (logged); a
    /// message over the limit closes the connection with 1009.
    pub async fn recv(&mut self) -> Result<pb::ServerToAgent, TransportError> {
        loop {
            let m = match self.ws.next().await {
                None => {
                    return Err(TransportError::new(format!(
                        "{} closed the connection",
                        self.endpoint
                    )))
                }
                Some(Ok(m)) => m,
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    let reason = format!("message too big: over {} bytes", self.limit);
                    let _ = tokio::time::timeout(
                        self.timeout,
                        self.ws.close(Some(CloseFrame {
                            code: CloseCode::Size,
                            reason: reason.clone().into(),
                        })),
                    )
                    .await;
                    return Err(TransportError::new(format!(
                        "{}: {e} (opamp.max_message_bytes is {}); closed with 1009",
                        self.endpoint, self.limit
                    )));
                }
                Some(Err(e)) => {
                    return Err(TransportError::new(format!(
                        "receiving from {}: {}",
                        self.endpoint,
                        chain(&e)
                    )))
                }
            };
            match m {
                Message::Binary(b) => match wire::decode_frame(&b) {
                    Ok(msg) => return Ok(msg),
                    Err(e) => {
                        tracing::warn!(endpoint = %self.endpoint, "ignoring a malformed message: {e}")
                    }
                },
                Message::Close(frame) => {
                    let why = frame
                        .map(|f| {
                            format!(" (status {}, {:?})", u16::from(f.code), f.reason.as_str())
                        })
                        .unwrap_or_default();
                    return Err(TransportError::new(format!(
                        "{} closed the connection{why}",
                        self.endpoint
                    )));
                }
                Message::Text(_) => {
                    tracing::warn!(endpoint = %self.endpoint, "ignoring a text message (OpAMP messages are binary)")
                }
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// A Close frame (1000), then the server's Close, briefly.
    pub async fn close(&mut self) {
        let t = self.timeout.min(std::time::Duration::from_secs(2));
        let _ = tokio::time::timeout(t, async {
            let _ = self
                .ws
                .close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "agent disconnecting".into(),
                }))
                .await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunked_refusals_read_as_text() {
        assert_eq!(
            super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(super::dechunk("zz\r\nx"), "");
    }
}
