//! Connection events of the network probe to OTLP log records (`ExportLogsServiceRequest`):
//! one record per open or close, event name `tcp.connection.open` / `tcp.connection.close`
//! (`tcp.connection.failure` for a socket error), with the connection's numbers as attributes.
//! Records engines make themselves (detection's `agent.anomaly`) travel in the same requests.

use std::{sync::Arc, time::SystemTime};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value, AnyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};

use super::{
    metrics::{scope, unix_nanos},
    resource::{kv, kv_int},
};
use crate::status::state::ConnRecord;

fn record(r: &ConnRecord, observed: u64) -> LogRecord {
    // 13 fixed attributes and up to 4 optional ones: sized once, not doubled by a push (under
    // a connection storm an export holds thousands of these).
    let mut attrs = Vec::with_capacity(17);
    attrs.extend([
        kv_int("process.pid", r.pid as i64),
        kv("process.executable.name", r.comm.clone()),
        kv("network.transport", "tcp"),
        kv("network.type", r.family),
        kv("network.tcp.handshake.role", r.role),
        kv("network.local.address", r.local_address.clone()),
        kv_int("network.local.port", r.local_port as i64),
        kv("network.peer.address", r.peer_address.clone()),
        kv_int("network.peer.port", r.peer_port as i64),
        kv_int("tcp.bytes_sent", r.bytes_sent as i64),
        kv_int("tcp.bytes_received", r.bytes_received as i64),
        kv_int("tcp.retransmits", r.retransmits as i64),
        kv_int("tcp.socket_cookie", r.cookie as i64),
    ]);
    for (key, v) in [
        ("tcp.handshake_us", r.handshake_us),
        ("tcp.duration_us", r.duration_us),
        ("tcp.rtt_us", r.rtt_us),
    ] {
        if let Some(v) = v {
            attrs.push(kv_int(key, v as i64));
        }
    }
    if let Some(e) = r.error_type {
        attrs.push(kv("error.type", e));
    }
    let (severity, text) = if r.error_type.is_some() || r.event == "failure" {
        (SeverityNumber::Warn, "WARN")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    let body = format!(
        "tcp {} {} {}:{} -> {}:{} pid {}",
        r.event, r.role, r.local_address, r.local_port, r.peer_address, r.peer_port, r.pid
    );
    LogRecord {
        time_unix_nano: r.time_unix_nano,
        observed_time_unix_nano: observed,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body)),
        }),
        attributes: attrs,
        event_name: format!("tcp.connection.{}", r.event),
        ..Default::default()
    }
}

/// Requests of at most `max_records` records each; returns (request, records).
pub fn encode(
    records: &[ConnRecord],
    resource: &Resource,
    now: SystemTime,
    max_records: usize,
) -> Vec<(ExportLogsServiceRequest, u64)> {
    encode_with(records, &[], resource, now, max_records)
}

/// [`encode`] of connection events followed by records engines built (`AgentState::
/// publish_log_records`), in requests of at most `max_records` records each.
pub fn encode_with(
    records: &[ConnRecord],
    built: &[Arc<LogRecord>],
    resource: &Resource,
    now: SystemTime,
    max_records: usize,
) -> Vec<(ExportLogsServiceRequest, u64)> {
    requests(records, built, resource, now, max_records).collect()
}

/// The requests of [`encode_with`], each built only when the iterator reaches it: the exporter
/// writes and drops one before the next exists, so an export of 10,000 connection events holds
/// one request of `max_records` records at a time, not all of them (heaptrack under the soak
/// churn: 24 MB of log records at the peak when all were built at once).
pub fn requests<'a>(
    records: &'a [ConnRecord],
    built: &'a [Arc<LogRecord>],
    resource: &'a Resource,
    now: SystemTime,
    max_records: usize,
) -> impl Iterator<Item = (ExportLogsServiceRequest, u64)> + 'a {
    let observed = unix_nanos(now);
    let max = max_records.max(1);
    let total = records.len() + built.len();
    (0..total).step_by(max).map(move |start| {
        let end = (start + max).min(total);
        let log_records: Vec<LogRecord> = (start..end)
            .map(|i| match records.get(i) {
                Some(r) => record(r, observed),
                None => LogRecord::clone(&built[i - records.len()]),
            })
            .collect();
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        (req, (end - start) as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(event: &'static str, error_type: Option<&'static str>) -> ConnRecord {
        ConnRecord {
            event,
            time_unix_nano: 42,
            cookie: 7,
            pid: 99,
            comm: "curl".into(),
            role: "client",
            family: "ipv4",
            local_address: "10.0.0.1".into(),
            local_port: 40000,
            peer_address: "10.0.0.2".into(),
            peer_port: 80,
            handshake_us: Some(120),
            duration_us: Some(5000),
            rtt_us: None,
            bytes_sent: 10,
            bytes_received: 20,
            retransmits: 1,
            error_type,
        }
    }

    #[test]
    fn records_carry_the_connection_and_split_by_size() {
        let rs: Vec<ConnRecord> = (0..5).map(|_| conn("close", None)).collect();
        let out = encode(&rs, &Resource::default(), SystemTime::now(), 2);
        assert_eq!(out.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [2, 2, 1]);
        let r = &out[0].0.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(r.event_name, "tcp.connection.close");
        assert_eq!(r.time_unix_nano, 42);
        assert_eq!(r.severity_number, SeverityNumber::Info as i32);
        let get = |k: &str| r.attributes.iter().find(|a| a.key == k).cloned();
        assert_eq!(get("process.pid"), Some(kv_int("process.pid", 99)));
        assert_eq!(
            get("network.peer.port"),
            Some(kv_int("network.peer.port", 80))
        );
        assert_eq!(
            get("tcp.handshake_us"),
            Some(kv_int("tcp.handshake_us", 120))
        );
        assert_eq!(get("tcp.rtt_us"), None);
        let failed = encode(
            &[conn("close", Some("refused"))],
            &Resource::default(),
            SystemTime::now(),
            10,
        );
        let r = &failed[0].0.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(r.severity_number, SeverityNumber::Warn as i32);
        assert!(r.attributes.contains(&kv("error.type", "refused")));
    }

    #[test]
    fn requests_are_built_one_at_a_time_in_order_across_both_sources() {
        let rs: Vec<ConnRecord> = (0..3).map(|_| conn("open", None)).collect();
        let built = vec![Arc::new(LogRecord {
            event_name: "agent.anomaly".into(),
            ..Default::default()
        })];
        let names = |req: &ExportLogsServiceRequest| -> Vec<String> {
            req.resource_logs[0].scope_logs[0]
                .log_records
                .iter()
                .map(|r| r.event_name.clone())
                .collect()
        };
        let resource = Resource::default();
        let mut it = requests(&rs, &built, &resource, SystemTime::now(), 2);
        let (first, n) = it.next().expect("a first request");
        assert_eq!(n, 2);
        assert_eq!(
            names(&first),
            ["tcp.connection.open", "tcp.connection.open"]
        );
        // The second spans the end of the connection events and the built record.
        let (second, n) = it.next().expect("a second request");
        assert_eq!(n, 2);
        assert_eq!(names(&second), ["tcp.connection.open", "agent.anomaly"]);
        assert!(it.next().is_none());
        // One attribute vector per record, sized for all of them: no doubling on a push.
        let a = &first.resource_logs[0].scope_logs[0].log_records[0].attributes;
        assert!(a.capacity() <= 17, "capacity {}", a.capacity());
        assert_eq!(
            requests(&[], &[], &Resource::default(), SystemTime::now(), 2).count(),
            0
        );
    }
}
