//! `alert`: the decision's OTLP log record (every decision has one; an alert is a decision
//! whose action is the record) and, with `webhook`, an HTTP POST of the decision as JSON
//! (`application/json`, 5 s timeout, no retry: the log record is the durable copy). Sent on a
//! task of its own, so a slow receiver never delays the engine.

use std::time::Duration;

use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Posts `body` to `url` in the background; the result is logged.
pub fn post(url: String, body: Vec<u8>) {
    tokio::spawn(async move {
        match send(&url, body).await {
            Ok(status) if (200..300).contains(&status) => {
                tracing::debug!(url, status, "enforcement alert webhook delivered")
            }
            Ok(status) => {
                tracing::warn!(url, status, "enforcement alert webhook answered {status}")
            }
            Err(e) => tracing::warn!(url, "enforcement alert webhook failed: {e}"),
        }
    });
}

async fn send(url: &str, body: Vec<u8>) -> Result<u16, String> {
    let tls = crate::export::transport::client_tls(&crate::config::TlsConfig::default())
        .map_err(|e| e.cause)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}
