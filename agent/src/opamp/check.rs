//! `agent check` for OpAMP: connects to the configured server as the agent would, sends one
//! status report (under a throwaway instance uid, so the running agent's identity is not
//! touched) and `agent_disconnect`, and says what the server answered: its capabilities, a
//! remote config offer (and whether this agent would accept it), connection settings offers,
//! errors.

use std::time::{Duration, Instant};

use super::{
    capabilities,
    connection::ConnSettings,
    describe, remote_config,
    transport::Conn,
    wire::{self, pb},
};
use crate::{
    config::Config,
    preflight::{Row, Verdict},
    runtime::Overrides,
};

fn row(verdict: Verdict, detail: String, fix: Option<String>) -> Row {
    Row {
        item: "opamp".to_string(),
        verdict,
        detail,
        fix,
    }
}

/// One row about the OpAMP server, or `None` when no endpoint is configured.
pub async fn run(cfg: &Config, o: &Overrides) -> Option<Row> {
    if !cfg.opamp.enabled() {
        return None;
    }
    let s = match ConnSettings::from_config(&cfg.opamp) {
        Ok(s) => s,
        Err(e) => {
            return Some(row(
                Verdict::Fail,
                e,
                Some("set opamp.endpoint to a ws://, wss://, http:// or https:// URL".into()),
            ))
        }
    };
    let uid = *uuid::Uuid::now_v7().as_bytes();
    let uid_text = wire::uid_text(&uid);
    let started = Instant::now();
    let mut conn = match Conn::open(&s, &uid_text).await {
        Ok(c) => c,
        Err(e) => return Some(unreachable(&s, &e.message, e.unauthorized)),
    };
    let caps = capabilities(&cfg.opamp);
    let mut d = describe::description(&uid_text, |k| std::env::var(k).ok());
    d.non_identifying_attributes.push(pb::KeyValue {
        key: "agent.check".into(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue("true".into())),
        }),
    });
    let report = pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num: 1,
        capabilities: caps,
        agent_description: Some(d),
        effective_config: Some(describe::effective_config(cfg)),
        remote_config_status: Some(pb::RemoteConfigStatus::default()),
        ..Default::default()
    };
    let answer = async {
        conn.send(&report).await?;
        tokio::time::timeout(s.timeout, conn.recv())
            .await
            .map_err(|_| {
                super::transport::TransportError::new(format!("no answer within {:?}", s.timeout))
            })?
    }
    .await;
    let took = started.elapsed();
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return Some(unreachable(&s, &e.message, e.unauthorized)),
    };
    let bye = pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num: 2,
        capabilities: caps,
        agent_disconnect: Some(pb::AgentDisconnect {}),
        ..Default::default()
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.send(&bye)).await;
    conn.close().await;
    Some(describe_answer(&s, took, &answer, o))
}

fn unreachable(s: &ConnSettings, why: &str, unauthorized: bool) -> Row {
    let refused_upgrade = why.starts_with("WebSocket upgrade")
        && ["HTTP 400", "HTTP 404", "HTTP 405", "HTTP 426", "HTTP 501"]
            .iter()
            .any(|c| why.contains(c));
    let fix = if refused_upgrade {
        format!(
            "the server does not take OpAMP over WebSocket at {}: check the path, or use its \
             plain HTTP transport (http:// or https://)",
            s.endpoint
        )
    } else if unauthorized {
        "the server refused the credentials: set what it expects in opamp.headers (e.g. \
         authorization) or opamp.tls"
            .to_string()
    } else {
        format!(
            "check that an OpAMP server listens at {} ({} transport) and that this host reaches it; \
             `agent run` keeps retrying with backoff",
            s.endpoint,
            s.kind.name()
        )
    };
    row(Verdict::Fail, why.to_string(), Some(fix))
}

fn describe_answer(s: &ConnSettings, took: Duration, a: &pb::ServerToAgent, o: &Overrides) -> Row {
    let mut parts = vec![format!(
        "{} answered over {} in {} ms",
        s.endpoint,
        s.kind.name(),
        took.as_millis()
    )];
    if let Some(e) = &a.error_response {
        let kind = match pb::ServerErrorResponseType::try_from(e.r#type) {
            Ok(pb::ServerErrorResponseType::BadRequest) => "BAD_REQUEST",
            Ok(pb::ServerErrorResponseType::Unavailable) => "UNAVAILABLE",
            _ => "UNKNOWN",
        };
        parts.push(format!("with error {kind}: {}", e.error_message));
        return row(
            Verdict::Fail,
            parts.join("; "),
            Some(
                "see the server's log; UNAVAILABLE clears by itself (the agent waits and retries)"
                    .into(),
            ),
        );
    }
    let caps = wire::server_capability_names(a.capabilities);
    parts.push(if caps.is_empty() {
        "server capabilities not stated".to_string()
    } else {
        format!("server capabilities: {}", caps.join(", "))
    });
    let mut verdict = Verdict::Ok;
    let mut fix = None;
    match &a.remote_config {
        None => parts.push("no remote config offered".into()),
        Some(rc) => match remote_config::from_offer(rc).and_then(|doc| {
            remote_config::merged_config(o, Some(&doc)).map(|c| (doc, c))
        }) {
            Ok((doc, c)) => parts.push(format!(
                "offers a remote config (hash {}, {} bytes {}) that this agent accepts (config hash {})",
                super::status::hex(&doc.hash),
                doc.body.len(),
                if doc.content_type.is_empty() { "untyped" } else { &doc.content_type },
                &c.hash()[..12]
            )),
            Err(e) => {
                verdict = Verdict::Warn;
                parts.push(format!("offers a remote config this agent refuses: {}", e.cause));
                fix = Some(format!("fix the remote config on the server: {}", e.fix));
            }
        },
    }
    if let Some(cs) = &a.connection_settings {
        let mut offered = Vec::new();
        if let Some(op) = &cs.opamp {
            offered.push(format!(
                "opamp ({}heartbeat {} s)",
                if op.destination_endpoint.is_empty() {
                    String::new()
                } else {
                    format!("{}, ", op.destination_endpoint)
                },
                op.heartbeat_interval_seconds
            ));
        }
        if let Some(m) = &cs.own_metrics {
            offered.push(format!("own metrics to {}", m.destination_endpoint));
        }
        if let Some(l) = &cs.own_logs {
            offered.push(format!("own logs to {}", l.destination_endpoint));
        }
        if !offered.is_empty() {
            parts.push(format!(
                "offers connection settings: {}",
                offered.join(", ")
            ));
        }
    }
    if a.flags & wire::FLAG_REPORT_FULL_STATE != 0 {
        parts.push("asked for a full state report".into());
    }
    row(verdict, parts.join("; "), fix)
}
