//! OpAMP over WebSocket against the tests' own server (`tests/opamp_server/server.py`: Python
//! `websockets` + protoc-generated messages, nothing shared with the agent's client): the first
//! report, remote configs and refusals, new_instance_uid, heartbeats, own telemetry, errors, the
//! message limit, client certificates. Deadlines are read from the agent's own timestamps; the
//! test that asserts them takes `serial()`.

use std::{thread, time::Duration};

use integration_tests::{
    opamp::{ws::WsServer, *},
    otlp::{log_records, metric_points, Sink, TestPki, TEST_CLIENT_CN},
    require_root, serial, Agent,
};
use serde_json::{json, Value};

/// The same over WebSocket, plus: header 0 on every message, the declared capabilities, the
/// description, redacted effective config and health in the first report; no answer to a
/// message that changes nothing; ReportFullState; refusals for several files, a bad value,
/// enforcement (the local default denies it) and local-only settings.
#[test]
fn websocket_registration_remote_config_and_refusals() {
    require_root();
    let _g = serial();
    let srv = WsServer::start();
    let cfg = local(
        &srv.endpoint(),
        true,
        "  headers: {authorization: Bearer s3cret-token}\n",
    );
    let agent = Agent::start(&cfg);
    let uid = wait_uid(&agent);
    assert_eq!(opamp(&agent)["transport"], "websocket");

    let first = srv.wait_message(0, "a first report", |_| true);
    let connect = srv
        .events()
        .into_iter()
        .find(|e| e["ev"] == "connect")
        .unwrap();
    assert_eq!(connect["headers"]["authorization"], "Bearer s3cret-token");
    assert_eq!(connect["headers"]["opamp-instance-uid"], uid.as_str());
    assert_eq!(first["uid"], uid.as_str());
    assert_eq!(first["seq"], 1);
    assert_eq!(first["caps"], CAPABILITIES);
    for f in [
        "agent_description",
        "health",
        "effective_config",
        "remote_config_status",
    ] {
        assert!(
            first["fields"].as_array().unwrap().iter().any(|x| x == f),
            "{f}: {first}"
        );
    }
    let d = &first["msg"]["agent_description"];
    assert_eq!(
        kv(&d["identifying_attributes"], "service.name").as_deref(),
        Some("agent")
    );
    assert_eq!(
        kv(&d["identifying_attributes"], "service.instance.id"),
        Some(uid.clone())
    );
    assert!(
        kv(&d["non_identifying_attributes"], "host.arch").is_some(),
        "{d}"
    );
    assert_eq!(
        kv(&d["non_identifying_attributes"], "os.type").as_deref(),
        Some("linux")
    );
    let body = effective_yaml(&first).unwrap();
    assert!(
        body.contains(&srv.endpoint()) && body.contains("<redacted>"),
        "{body}"
    );
    assert!(!body.contains("s3cret"), "{body}");
    let health = &first["msg"]["health"];
    for c in ["probes", "exporter", "detection", "enforcement"] {
        assert!(
            health["component_health_map"][c].is_object(),
            "{c}: {health}"
        );
    }
    assert_eq!(
        health["component_health_map"]["probes"]["component_health_map"]["syscalls"]["status"],
        "attached"
    );

    // Once settled, a message that changes nothing gets no answer (heartbeats are 30 s apart).
    agent.wait_for(
        |a| a.status()["exporter"]["healthy"] == true,
        "a first output write",
    );
    thread::sleep(Duration::from_millis(1500));
    let n = srv.events().len();
    srv.send(json!({}));
    thread::sleep(Duration::from_secs(2));
    let later: Vec<Value> = srv.events()[n..]
        .iter()
        .filter(|e| e["ev"] == "a2s")
        .cloned()
        .collect();
    assert!(later.is_empty(), "answered a no-op: {later:?}");

    // ReportFullState: the next message is a full report.
    let n = srv.events().len();
    srv.send(json!({"flags": "1"}));
    let full = srv.wait_message(n, "a full report", |_| true);
    assert!(
        full["msg"]["agent_description"].is_object() && full["msg"]["health"].is_object(),
        "{full}"
    );

    // A good config: APPLYING, then APPLIED with the server's hash, within 2 s; the syscall
    // probe is detached.
    let n = srv.events().len();
    srv.send(json!({"remote_yaml": {"body": DETACH}}));
    srv.wait_message(n, "APPLYING", |m| {
        remote_status(m) == "RemoteConfigStatuses_APPLYING"
    });
    let applied = srv.wait_message(n, "APPLIED", |m| {
        remote_status(m) == "RemoteConfigStatuses_APPLIED"
    });
    srv.wait_message(n, "the new effective config", |m| {
        effective_yaml(m).is_some_and(|y| y.contains("syscalls:\n    enabled: false"))
    });
    let rc = wait_remote(&agent, "APPLIED", None);
    assert!(
        apply_ms(&rc) <= 2000,
        "received → applied took {} ms",
        apply_ms(&rc)
    );
    assert_eq!(
        base64_decode(
            applied["msg"]["remote_config_status"]["last_remote_config_hash"]
                .as_str()
                .unwrap()
        )
        .unwrap(),
        hex_bytes(rc["hash"].as_str().unwrap())
    );
    assert_eq!(syscall_programs(&agent), 0);

    // The profiler's frequency: its sample rate follows.
    let _spin = Spinner::start();
    wait_profiler_warm(&agent);
    let r19 = sample_rate(&agent, 19, 3.0);
    let n = srv.events().len();
    srv.send(json!({"remote_yaml": {"body": DETACH_99HZ}}));
    srv.wait_message(n, "APPLIED", |m| {
        remote_status(m) == "RemoteConfigStatuses_APPLIED"
    });
    let rc = wait_remote(&agent, "APPLIED", rc["hash"].as_str());
    assert!(
        apply_ms(&rc) <= PROFILER_RELOAD_MS,
        "received → applied took {} ms",
        apply_ms(&rc)
    );
    let r99 = sample_rate(&agent, 99, 3.0);
    assert!(
        r19 < 45.0 && r99 > 80.0,
        "samples/s at 19 Hz {r19:.1}, at 99 Hz {r99:.1}"
    );
    let config_hash = agent.status()["config_hash"].clone();

    // Refusals: FAILED with why, and the running config stays.
    for (remote, want) in [
        (
            json!([{"key": "a.yaml", "body": "log: {level: debug}\n"}, {"key": "b.yaml", "body": "{}\n"}]),
            "the remote config has 2 files (a.yaml, b.yaml)",
        ),
        (
            json!({"body": BAD_FREQUENCY}),
            "probes.profiler.frequency: 5000 is out of range",
        ),
        (
            json!({"body": "enforcement: {mode: monitor}\n"}),
            "enforcement.remote (deny, the default) forbids",
        ),
        (
            json!({"body": "status: {listen: '0.0.0.0:9464'}\n"}),
            "changes status.listen",
        ),
        (
            json!({"body": "log: {level: debug}\n", "content_type": "application/json"}),
            "not YAML",
        ),
    ] {
        let n = srv.events().len();
        srv.send(json!({"remote_yaml": remote}));
        let failed = srv.wait_message(n, want, |m| {
            remote_status(m) == "RemoteConfigStatuses_FAILED"
        });
        let msg = failed["msg"]["remote_config_status"]["error_message"]
            .as_str()
            .unwrap();
        assert!(msg.contains(want), "{msg}");
        assert_eq!(agent.status()["config_hash"], config_hash);
    }

    let msgs = srv.messages();
    let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(!srv.events().iter().any(|e| e["ev"] == "bad_frame"));
}

/// new_instance_uid replaces the id everywhere (messages, /status, the id file, the OTLP
/// resource); the heartbeat interval the server offers is used; own metrics and logs go to the
/// endpoints the server offers (an OTLP sink decoding with the PyPI opentelemetry-proto).
#[test]
fn websocket_new_instance_uid_heartbeat_and_own_telemetry() {
    require_root();
    let srv = WsServer::start();
    let agent = Agent::start(&local(&srv.endpoint(), false, ""));
    srv.wait_message(0, "a first report", |_| true);

    let new = "01900000-0000-7000-8000-00000000beef";
    let n = srv.events().len();
    srv.send(json!({"new_uid": new}));
    let m = srv.wait_message(n, "a message with the new uid", |m| m["uid"] == new);
    let d = &m["msg"]["agent_description"]["identifying_attributes"];
    assert_eq!(kv(d, "service.instance.id").as_deref(), Some(new));
    agent.wait_for(|a| opamp(a)["instance_uid"] == new, "/status instance_uid");
    // The id file: a format line, then the id.
    let stored = std::fs::read_to_string(agent.dir.join("out/instance-id")).unwrap();
    assert_eq!(stored, format!("agent-instance-id 1\n{new}\n"));
    agent.wait_for(
        |a| {
            std::fs::read_to_string(a.dir.join("out/metrics.jsonl"))
                .ok()
                .and_then(|t| t.lines().last().map(str::to_string))
                .is_some_and(|l| l.contains(new))
        },
        "the OTLP resource's service.instance.id",
    );

    // Heartbeats every second once the server asks.
    let n = srv.events().len();
    srv.send(
        json!({"connection_settings": {"hash": base64_encode(b"hb1"), "opamp": {
        "destination_endpoint": srv.endpoint(), "heartbeat_interval_seconds": "1"}}}),
    );
    srv.wait_message(n, "connection settings APPLIED", |m| {
        m["msg"]["connection_settings_status"]["status"] == "ConnectionSettingsStatuses_APPLIED"
    });
    assert_eq!(opamp(&agent)["heartbeat_interval_seconds"], 1);
    let n = srv.events().len();
    thread::sleep(Duration::from_secs(5));
    let times: Vec<f64> = srv.events()[n..]
        .iter()
        .filter(|e| e["ev"] == "a2s")
        .map(|e| e["t"].as_f64().unwrap())
        .collect();
    // 1 s apart, counted from the last message sent: 4 or 5 in 5 s (bounds for a loaded VM).
    assert!((3..=7).contains(&times.len()), "{times:?}");
    assert!(times.windows(2).all(|w| w[1] - w[0] < 2.5), "{times:?}");
    assert!(
        !srv.events().iter().any(|e| e["ev"] == "close"),
        "no reconnect for a heartbeat change"
    );

    // Own telemetry to the offered endpoints.
    let sink = Sink::start(&[]);
    let base = sink.http_endpoint();
    let n = srv.events().len();
    srv.send(
        json!({"connection_settings": {"hash": base64_encode(b"own1"),
        "own_metrics": {"destination_endpoint": format!("{base}/v1/metrics")},
        "own_logs": {"destination_endpoint": format!("{base}/v1/logs")}}}),
    );
    srv.wait_message(n, "connection settings APPLIED", |m| {
        m["msg"]["connection_settings_status"]["status"] == "ConnectionSettingsStatuses_APPLIED"
    });
    // Something to log: a remote config.
    srv.send(json!({"remote_yaml": {"body": "probes:\n  syscalls: {interval: 2s}\n"}}));
    let reqs = sink
        .wait_for(Duration::from_secs(60), |r| {
            !metric_points(r, "process.cpu.time").is_empty()
                && log_records(r)
                    .iter()
                    .any(|l| l.record["body"]["stringValue"] == "applying the remote config")
        })
        .unwrap_or_else(|r| {
            panic!(
                "own telemetry never arrived: {} requests\n{}",
                r.len(),
                sink.tail(5)
            )
        });
    let p = &metric_points(&reqs, "process.cpu.time")[0];
    assert_eq!(p.resource["service.instance.id"], new);
    let l = log_records(&reqs)
        .into_iter()
        .find(|l| l.record["body"]["stringValue"] == "applying the remote config")
        .unwrap();
    assert_eq!(l.attributes["log.target"], "agent::opamp::apply");
    assert_eq!(l.record["severityText"], "INFO");
    let own = &opamp(&agent)["own_telemetry"];
    assert!(own["metrics_requests_sent"].as_u64().unwrap() >= 1, "{own}");
}

/// UNAVAILABLE with retry_after: agent_disconnect, close, and no new connection before the
/// delay; BAD_REQUEST is not retried; a message over the limit closes with 1009.
#[test]
fn websocket_unavailable_bad_request_and_message_limit() {
    require_root();
    let srv = WsServer::start();
    let agent = Agent::start(&local(
        &srv.endpoint(),
        false,
        "  max_message_bytes: 65536\n",
    ));
    srv.wait_message(0, "a first report", |_| true);
    let connects = |e: &[Value]| e.iter().filter(|x| x["ev"] == "connect").count();

    // UNAVAILABLE, retry after 3 s.
    srv.reply(
        json!({"error_response": {"type": "ServerErrorResponseType_Unavailable",
        "error_message": "busy", "retry_info": {"retry_after_nanoseconds": "3000000000"}}}),
    );
    srv.send(json!({"flags": "1"}));
    let e = srv.wait("a new connection", |e| connects(e) == 2);
    let sent = e
        .iter()
        .find(|x| x["ev"] == "sent" && x["msg"]["error_response"].is_object())
        .unwrap()["t"]
        .as_f64()
        .unwrap();
    let on1: Vec<&Value> = e.iter().filter(|x| x["conn"] == 1).collect();
    let last = on1.iter().rev().find(|x| x["ev"] == "a2s").unwrap();
    assert!(last["msg"]["agent_disconnect"].is_object(), "{last}");
    let close = on1.iter().find(|x| x["ev"] == "close").unwrap();
    assert_eq!(close["code"], 1000);
    let reconnect = e.iter().filter(|x| x["ev"] == "connect").nth(1).unwrap()["t"]
        .as_f64()
        .unwrap();
    let waited = reconnect - sent;
    assert!(
        (3.0..30.0).contains(&waited),
        "reconnected {waited:.2} s after UNAVAILABLE (retry_after 3 s)"
    );
    let first2 = srv.wait_message(0, "a full report on the new connection", |m| m["conn"] == 2);
    assert!(first2["msg"]["agent_description"].is_object(), "{first2}");
    assert!(agent.stderr().contains("the server is unavailable: busy"));
    // Health survives the reconnect: the same start and status times as before it.
    let before = srv
        .messages()
        .into_iter()
        .rev()
        .find(|m| m["conn"] == 1 && m["msg"]["health"].is_object())
        .unwrap();
    let probe = |m: &Value| {
        let p = &m["msg"]["health"]["component_health_map"]["probes"]["component_health_map"]
            ["syscalls"];
        (
            p["start_time_unix_nano"].clone(),
            p["status_time_unix_nano"].clone(),
            p["status"].clone(),
        )
    };
    assert_eq!(probe(&first2), probe(&before));
    assert_eq!(
        first2["msg"]["health"]["start_time_unix_nano"],
        before["msg"]["health"]["start_time_unix_nano"]
    );

    // BAD_REQUEST: not retried (nothing else changes; heartbeats are 30 s apart).
    thread::sleep(Duration::from_millis(1500));
    srv.reply(
        json!({"error_response": {"type": "ServerErrorResponseType_BadRequest",
        "error_message": "malformed"}}),
    );
    let n = srv.events().len();
    srv.send(json!({"flags": "1"}));
    srv.wait_message(n, "the full report", |m| {
        m["msg"]["agent_description"].is_object()
    });
    let n = srv.events().len();
    thread::sleep(Duration::from_secs(3));
    let after: Vec<Value> = srv.events()[n..].to_vec();
    assert!(
        after.iter().all(|x| x["ev"] != "a2s" && x["ev"] != "close"),
        "{after:?}"
    );
    assert!(agent
        .stderr()
        .contains("refused a message as malformed (not retried): malformed"));

    // Over the limit (65536 bytes): closed with 1009, then a new connection.
    srv.cmd(json!({"cmd": "send_raw", "size": 200_000}));
    let e = srv.wait("close 1009 and a new connection", |e| connects(e) == 3);
    let close = e
        .iter()
        .find(|x| x["ev"] == "close" && x["conn"] == 2)
        .unwrap();
    assert_eq!(close["code"], 1009, "{close}");
}

/// Client certificate rotation: over wss:// (the CA from opamp.tls), the server offers a client
/// certificate and a server that requires one; the agent moves there presenting it, stores it
/// (mode 0600) and reports APPLIED.
#[test]
fn websocket_tls_offered_client_certificate_is_used() {
    require_root();
    let pki = TestPki::new();
    let open = WsServer::start_tls(&pki, false);
    let strict = WsServer::start_tls(&pki, true);
    let cfg = local(
        &open.endpoint(),
        false,
        &format!("  tls: {{ca_file: {}}}\n", pki.ca.display()),
    );
    let agent = Agent::start(&cfg);
    open.wait_message(0, "a first report over TLS", |_| true);
    let pem = |p: &std::path::Path| base64_encode(&std::fs::read(p).unwrap());
    open.send(
        json!({"connection_settings": {"hash": base64_encode(b"cert1"), "opamp": {
        "destination_endpoint": strict.endpoint(), "heartbeat_interval_seconds": "30",
        "certificate": {"cert": pem(&pki.client_cert), "private_key": pem(&pki.client_key)}}}}),
    );
    strict.wait_message(0, "APPLIED over mutual TLS", |m| {
        m["msg"]["connection_settings_status"]["status"] == "ConnectionSettingsStatuses_APPLIED"
    });
    let connect = strict
        .events()
        .into_iter()
        .find(|e| e["ev"] == "connect")
        .unwrap();
    assert_eq!(connect["tls_client"], TEST_CLIENT_CN);
    let key = agent.dir.join("out/opamp/certs/opamp-key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(opamp(&agent)["endpoint"], strict.endpoint().as_str());
}
