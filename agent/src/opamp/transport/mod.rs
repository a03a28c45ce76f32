//! One open OpAMP connection, WebSocket (`ws.rs`) or plain HTTP (`http.rs`), behind the same
//! two calls: `send` an AgentToServer, `recv` the next ServerToAgent. Over HTTP each `send` is a
//! POST whose answer `recv` then returns; over WebSocket both directions are independent.
//!
//! `recv` is cancel-safe (the client selects on it).

pub mod http;
pub mod ws;

use std::time::Duration;

use super::{connection::ConnSettings, wire::pb};

/// Why a connection attempt or an exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub message: String,
    /// The server's own delay (HTTP `Retry-After`) before the next attempt.
    pub retry_after: Option<Duration>,
    /// The server refused our credentials (HTTP 401/403): the fix is local.
    pub unauthorized: bool,
}

impl TransportError {
    pub fn new(message: impl Into<String>) -> Self {
        TransportError {
            message: message.into(),
            retry_after: None,
            unauthorized: false,
        }
    }

    /// From an HTTP status the server answered with (upgrade refused, or a POST).
    pub fn from_status(what: &str, status: u16, retry_after: Option<Duration>, body: &str) -> Self {
        // One line: the body may be several (or an HTML page).
        let body: String = body
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(200)
            .collect();
        TransportError {
            message: format!("{what}: HTTP {status} {body}")
                .trim_end()
                .to_string(),
            retry_after,
            unauthorized: matches!(status, 401 | 403),
        }
    }
}

/// An open connection.
pub enum Conn {
    Ws(Box<ws::WsConn>),
    Http(Box<http::HttpConn>),
}

impl Conn {
    /// Connects (WebSocket: TCP, TLS, upgrade; HTTP: builds the client, nothing is sent).
    pub async fn open(s: &ConnSettings, uid: &str) -> Result<Conn, TransportError> {
        match s.kind {
            super::connection::Kind::WebSocket => ws::WsConn::connect(s, uid)
                .await
                .map(|c| Conn::Ws(Box::new(c))),
            super::connection::Kind::Http => {
                http::HttpConn::new(s, uid).map(|c| Conn::Http(Box::new(c)))
            }
        }
    }

    /// Sends one message (HTTP: waits for and keeps the answer).
    pub async fn send(&mut self, msg: &pb::AgentToServer) -> Result<(), TransportError> {
        match self {
            Conn::Ws(c) => c.send(msg).await,
            Conn::Http(c) => c.send(msg).await,
        }
    }

    /// The next message from the server.
    pub async fn recv(&mut self) -> Result<pb::ServerToAgent, TransportError> {
        match self {
            Conn::Ws(c) => c.recv().await,
            Conn::Http(c) => c.recv().await,
        }
    }

    /// Closes (WebSocket: a Close frame with status 1000, then waits briefly for the server's).
    pub async fn close(&mut self) {
        if let Conn::Ws(c) = self {
            c.close().await;
        }
    }

    /// The instance uid sent in the `OpAMP-Instance-UID` header from now on.
    pub fn set_uid(&mut self, uid: &str) {
        if let Conn::Http(c) = self {
            c.set_uid(uid);
        }
    }
}

/// `Retry-After` delay-seconds, when present.
pub fn retry_after(h: &::http::HeaderMap) -> Option<Duration> {
    h.get(::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::export::retry::parse_retry_after)
}

/// The error and its sources on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// A rustls config for this connection's TLS settings.
pub fn tls_config(s: &ConnSettings) -> Result<rustls::ClientConfig, TransportError> {
    crate::export::transport::client_tls(&s.tls).map_err(|e| {
        TransportError::new(format!(
            "{} (fix the files in opamp.tls, or the certificate the server offered)",
            e.cause
        ))
    })
}
