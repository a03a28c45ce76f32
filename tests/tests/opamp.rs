//! OpAMP end to end: the real agent managed by `@elastic/mockopampserver` (a third-party
//! server, plain HTTP) and by the tests' own WebSocket server (`tests/opamp_server/server.py`:
//! Python `websockets` + protoc-generated messages, nothing shared with the agent's client).
//!
//! Deadlines are read from the agent's own timestamps on `/status` (`opamp.remote_config`:
//! received → applied). Tests that assert a deadline or a sample rate take `serial()`; the
//! others run in parallel with them (distinct ports and loopback addresses).

use std::{thread, time::Duration};

use integration_tests::{
    bpf_programs_of, free_port,
    opamp::{
        base64_decode, base64_encode, kv, profile_files, profile_windows, remote_status, window,
        MockOpamp, Spinner, Window, WsServer,
    },
    otlp::{log_records, metric_points, Sink, TestPki, TEST_CLIENT_CN},
    require_root, serial, tempdir, Agent,
};
use serde_json::{json, Value};

/// The capability bits the agent declares with remote config on: ReportsStatus,
/// AcceptsRemoteConfig, ReportsEffectiveConfig, ReportsOwnMetrics, ReportsOwnLogs,
/// AcceptsOpAMPConnectionSettings, AcceptsRestartCommand, ReportsHealth, ReportsRemoteConfig,
/// ReportsHeartbeat, ReportsConnectionSettingsStatus.
const CAPABILITIES: u64 =
    0x1 | 0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x1000 | 0x2000 | 0x8000;

/// The local config: the syscall probe (the profiler only with `profiler`), files for output,
/// OpAMP at `endpoint`; `opamp_extra` lines go under `opamp:`.
fn local(endpoint: &str, profiler: bool, opamp_extra: &str) -> String {
    let profiler = if profiler {
        "  profiler: {frequency: 19, interval: 1s, debug_info: false}\n"
    } else {
        "  profiler: {enabled: false}\n"
    };
    format!(
        "output: {{interval: 1s}}\nprobes:\n  network: {{enabled: false}}\n  syscalls: {{interval: 1s}}\n{profiler}opamp:\n  endpoint: {endpoint}\n{opamp_extra}"
    )
}

fn opamp(a: &Agent) -> Value {
    a.status()["opamp"].clone()
}

/// The instance uid, once the OpAMP client runs (it starts after the probes).
fn wait_uid(a: &Agent) -> String {
    a.wait_for(|a| opamp(a)["instance_uid"].is_string(), "the OpAMP client");
    opamp(a)["instance_uid"].as_str().unwrap().to_string()
}

fn syscall_programs(a: &Agent) -> usize {
    bpf_programs_of(a.child.id())
        .iter()
        .filter(|(_, n)| n.starts_with("syscalls_"))
        .count()
}

/// Waits until the remote config status on /status is `status` for a hash other than `not`.
fn wait_remote(a: &Agent, status: &str, not: Option<&str>) -> Value {
    a.wait_for(
        |a| {
            let rc = &opamp(a)["remote_config"];
            rc["status"] == status && rc["hash"].as_str() != not
        },
        &format!("remote config {status}"),
    );
    opamp(a)["remote_config"].clone()
}

/// received → applied on the agent's own clock, in ms.
fn apply_ms(rc: &Value) -> u64 {
    let ms = rc["applied_unix_ms"].as_u64().unwrap() - rc["received_unix_ms"].as_u64().unwrap();
    eprintln!(
        "remote config {}: received → applied in {ms} ms",
        rc["hash"]
    );
    ms
}

/// Waits until the profiler has symbolized once (the first symbolization of a debug build
/// reads every binary's symbols and takes seconds; a reload drains one last window).
fn wait_profiler_warm(a: &Agent) {
    a.wait_for(
        |a| {
            a.status()["maps"]["PROFILE_COUNTS"]["detail"]["symbol_lookups"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
        "the profiler's first symbolization",
    );
}

/// Profiler samples per second (not idle) at `hz`, from the pprof windows the agent wrote
/// (decoded by protoc); waits until they span `secs` seconds. Each window names its own
/// period, so windows of the old and the new frequency cannot mix.
fn sample_rate(a: &Agent, hz: u64, secs: f64) -> f64 {
    let period = 1_000_000_000 / hz;
    let dir = a.dir.join("out/profiles");
    let report = |(s, r): (f64, f64)| {
        eprintln!("profiler at {hz} Hz: {r:.1} samples/s over {s:.1} s");
        r
    };
    // (seconds covered, samples/s)
    let read = || {
        let w: Vec<Window> = profile_windows(&dir)
            .into_iter()
            .filter(|w| w.period_nanos == period)
            .collect();
        let s: f64 = w.iter().map(|w| w.duration_nanos as f64 / 1e9).sum();
        (
            s,
            w.iter().map(|w| w.samples).sum::<u64>() as f64 / s.max(1e-9),
        )
    };
    a.wait_for(
        |_| read().0 >= secs,
        &format!("{secs} s of profiles at {hz} Hz"),
    );
    report(read())
}

/// The next profile window the agent writes.
fn next_window(a: &Agent) -> Window {
    let dir = a.dir.join("out/profiles");
    let newest = profile_files(&dir).pop();
    a.wait_for(|_| profile_files(&dir).pop() != newest, "a new profile");
    let f = profile_files(&dir).pop().unwrap();
    a.wait_for(|_| window(&f).is_some(), "a complete profile file");
    window(&f).unwrap()
}

/// Bound for a remote config that reloads the profiler (received → applied). Most of it is the
/// profiler's own reload: it finishes the symbolization in progress, symbolizes its last window
/// and loads and verifies a new kernel object; in the debug build on the shared 2-CPU VM that
/// measured 0.6-2.2 s. Configs without a reload are held to 2 s.
const PROFILER_RELOAD_MS: u64 = 5000;

const DETACH: &str = "probes:\n  syscalls: {enabled: false}\n";
const DETACH_99HZ: &str = "probes:\n  syscalls: {enabled: false}\n  profiler: {frequency: 99}\n";
const BAD_FREQUENCY: &str =
    "probes:\n  syscalls: {enabled: false}\n  profiler: {frequency: 5000}\n";

/// Against a third-party server over plain HTTP: a full first report; remote configs applied
/// within 2 s of receipt (a probe detached, the profiler's frequency changed: its sample rate
/// follows); an invalid one FAILED while the previous one keeps running; the server, which
/// compares hashes, stops offering once the agent reports; ReportFullState after the server
/// lost its state; agent_disconnect at SIGTERM; the last applied config used at the next start
/// when the server is unreachable.
#[test]
fn mockopampserver_http_registration_remote_config_and_persistence() {
    require_root();
    let _g = serial();
    let mut mock = MockOpamp::start(Some(DETACH));
    let dir = tempdir();
    // Polls 5 s apart: a status sent at once is told from one that waited for the next poll.
    let cfg = local(&mock.endpoint(), true, "  heartbeat_interval: 5s\n");
    let agent = Agent::start_in(dir.clone(), &cfg, |_| {});
    let uid = wait_uid(&agent);
    assert_eq!(opamp(&agent)["transport"], "http");

    // Registration: the first message is a full report, so the mock never asks for one.
    let reqs = mock.wait_for("a first request", |r| !r.is_empty());
    assert!(reqs[0].full(), "{}", reqs[0].a2s);
    assert!(reqs[0].a2s.contains(&format!("'{uid}'")), "{}", reqs[0].a2s);
    assert!(mock.messages().iter().any(|m| m == "new active agent"));

    // The offered config: APPLIED within 2 s of receipt, the syscall probe detached.
    let rc = wait_remote(&agent, "APPLIED", None);
    assert!(
        apply_ms(&rc) <= 2000,
        "received → applied took {} ms",
        apply_ms(&rc)
    );
    assert_eq!(agent.status()["probes"]["syscalls"]["state"], "disabled");
    assert_eq!(syscall_programs(&agent), 0);
    let first_hash = rc["hash"].as_str().unwrap().to_string();
    // The server saw APPLYING then APPLIED with its hash, and stops offering.
    let reqs = mock.wait_for("APPLIED reported, then a request without an offer", |r| {
        r.iter()
            .position(|x| x.a2s.contains("status: 1,"))
            .is_some_and(|i| r[i + 1..].iter().any(|x| !x.offers_config()))
    });
    let applying = reqs
        .iter()
        .position(|x| x.a2s.contains("status: 2,"))
        .unwrap();
    let applied = reqs
        .iter()
        .position(|x| x.a2s.contains("status: 1,"))
        .unwrap();
    assert!(applying < applied);
    assert!(
        reqs[applying + 1..]
            .iter()
            .any(|x| x.a2s.contains("effectiveConfig:")),
        "the new effective config is reported"
    );
    assert!(!reqs.last().unwrap().offers_config());

    // A frequency change through the server's API: the profiler's sample rate follows.
    let _spin = Spinner::start();
    wait_profiler_warm(&agent);
    let r19 = sample_rate(&agent, 19, 3.0);
    mock.set_config(DETACH_99HZ);
    let rc = wait_remote(&agent, "APPLIED", Some(&first_hash));
    assert!(
        apply_ms(&rc) <= PROFILER_RELOAD_MS,
        "received → applied took {} ms",
        apply_ms(&rc)
    );
    let r99 = sample_rate(&agent, 99, 3.0);
    // One CPU is always busy (the spinner), two at most: 19-38/s at 19 Hz, 99-198/s at 99 Hz.
    assert!(
        r19 < 45.0 && r99 > 80.0,
        "samples/s at 19 Hz {r19:.1}, at 99 Hz {r99:.1}"
    );
    let good_hash = rc["hash"].as_str().unwrap().to_string();
    let config_hash = agent.status()["config_hash"].clone();

    // An invalid config: FAILED with the validation message; the previous config runs on.
    mock.set_config(BAD_FREQUENCY);
    let rc = wait_remote(&agent, "FAILED", Some(&good_hash));
    let err = rc["error"].as_str().unwrap();
    assert!(
        err.contains("probes.profiler.frequency: 5000 is out of range"),
        "{err}"
    );
    assert_eq!(agent.status()["config_hash"], config_hash);
    assert_eq!(agent.status()["probes"]["syscalls"]["state"], "disabled");
    let last = next_window(&agent);
    assert_eq!(last.period_nanos, 1_000_000_000 / 99, "still at 99 Hz");
    mock.wait_for("FAILED with the message reported", |r| {
        r.iter()
            .any(|x| x.a2s.contains("status: 3,") && x.a2s.contains("5000 is out of range"))
    });

    // Sequence numbers go up by one, so the server never had to ask for the full state.
    let reqs = mock.requests();
    let seqs: Vec<u64> = reqs.iter().filter_map(|r| r.seq()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(!reqs.iter().any(|r| r.asks_full_state()));

    // A restarted server lost every agent: it asks for the full state, and gets it.
    mock.wait_for("one more poll", |r| r.len() > reqs.len());
    mock.restart();
    let reqs = mock.wait_for("ReportFullState answered with a full report", |r| {
        r.iter()
            .position(|x| x.asks_full_state())
            .is_some_and(|i| r[i + 1..].iter().any(|x| x.full()))
    });
    assert!(
        !reqs[0].full(),
        "the first poll after the restart is a heartbeat"
    );

    // SIGTERM: the last message carries agent_disconnect.
    let mut agent = agent;
    assert!(agent.stop().success(), "{}", agent.stderr());
    mock.wait_for("agent_disconnect", |r| {
        r.last().is_some_and(|x| x.a2s.contains("agentDisconnect:"))
    });

    // Next start with the server gone: the stored remote config runs.
    mock.stop();
    let stored = std::fs::read_to_string(dir.join("out/opamp/remote-config.json")).unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["format_version"], 1);
    assert_eq!(stored["hash"], good_hash.as_str());
    let again = Agent::start_in(dir.clone(), &cfg, |_| {});
    assert_eq!(wait_uid(&again), uid, "the id is kept");
    let rc = opamp(&again)["remote_config"].clone();
    assert_eq!(rc["source"], "persisted");
    assert_eq!(rc["status"], "APPLIED");
    assert_eq!(rc["hash"], good_hash.as_str());
    // (The config hash differs: each start gets its own --status-addr.)
    assert_eq!(again.status()["probes"]["syscalls"]["state"], "disabled");
    let w = next_window(&again);
    assert_eq!(
        w.period_nanos,
        1_000_000_000 / 99,
        "the remote frequency, 99 Hz"
    );
    drop(again);
    drop(agent);
}

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

/// The effective config YAML an AgentToServer carries.
fn effective_yaml(m: &Value) -> Option<String> {
    let b =
        m["msg"]["effective_config"]["config_map"]["config_map"]["agent.yaml"]["body"].as_str()?;
    String::from_utf8(base64_decode(b)?).ok()
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
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
    let stored = std::fs::read_to_string(agent.dir.join("out/instance-id")).unwrap();
    assert_eq!(stored.trim(), new);
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

/// A remote config whose probe cannot attach (a cgroup that does not exist): the agent returns
/// to the last good config by itself and reports FAILED with why, never APPLIED. A new export
/// endpoint that fails for good within the grace period: APPLIED, then FAILED and back.
#[test]
fn websocket_rollback_when_a_probe_cannot_attach_or_an_export_endpoint_fails() {
    require_root();
    // The network probe attaches sock_ops to the cgroup2 root: one at a time.
    let _g = serial();
    let srv = WsServer::start();
    let cfg = format!(
        "output: {{interval: 1s}}\nprobes:\n  syscalls: {{enabled: false}}\n  profiler: {{enabled: false}}\n  network: {{interval: 1s}}\nopamp:\n  endpoint: {}\n  rollback_grace: 5s\n",
        srv.endpoint()
    );
    let agent = Agent::start(&cfg);
    agent.wait_ready();
    srv.wait_message(0, "a first report", |_| true);
    let config_hash = agent.status()["config_hash"].clone();
    let net = |a: &Agent| {
        bpf_programs_of(a.child.id())
            .iter()
            .filter(|(_, n)| n.starts_with("network_"))
            .count()
    };
    let attached = net(&agent);
    assert!(attached > 0, "{:?}", bpf_programs_of(agent.child.id()));

    let n = srv.events().len();
    srv.send(json!({"remote_yaml": {"body": "probes:\n  network: {cgroup: /sys/fs/cgroup/agent-opamp-test-missing}\n"}}));
    let failed = srv.wait_message(n, "FAILED", |m| {
        remote_status(m) == "RemoteConfigStatuses_FAILED"
    });
    let msg = failed["msg"]["remote_config_status"]["error_message"]
        .as_str()
        .unwrap();
    assert!(
        msg.contains("rolled back to the last good config: probe network failed"),
        "{msg}"
    );
    assert!(msg.contains("agent-opamp-test-missing"), "{msg}");
    let statuses: Vec<String> = srv.messages()[..]
        .iter()
        .map(remote_status)
        .filter(|s| !s.is_empty())
        .collect();
    assert!(
        !statuses.iter().any(|s| s == "RemoteConfigStatuses_APPLIED"),
        "{statuses:?}"
    );
    agent.wait_for(
        |a| a.status()["probes"]["network"]["state"] == "attached",
        "network attached again",
    );
    assert_eq!(agent.status()["config_hash"], config_hash);
    assert_eq!(net(&agent), attached);
    assert_eq!(opamp(&agent)["remote_config"]["rollbacks"], 1);
    assert!(
        !agent.dir.join("out/opamp/remote-config.json").exists(),
        "nothing good to keep"
    );

    // A new export endpoint that fails for good (the name does not resolve): APPLIED, then
    // within the grace period rolled back to local files.
    let n = srv.events().len();
    srv.send(json!({"remote_yaml": {"body": "export: {endpoint: 'http://agent-opamp-test.invalid:4318', interval: 1s}\n"}}));
    srv.wait_message(n, "APPLIED", |m| {
        remote_status(m) == "RemoteConfigStatuses_APPLIED"
    });
    let failed = srv.wait_message(n, "FAILED", |m| {
        remote_status(m) == "RemoteConfigStatuses_FAILED"
    });
    let msg = failed["msg"]["remote_config_status"]["error_message"]
        .as_str()
        .unwrap();
    assert!(
        msg.contains("rolled back to the last good config: export of"),
        "{msg}"
    );
    assert!(msg.contains("agent-opamp-test.invalid"), "{msg}");
    agent.wait_for(
        |a| a.status()["exporter"]["kind"] == "file",
        "local files again",
    );
    assert_eq!(agent.status()["config_hash"], config_hash);
    assert_eq!(opamp(&agent)["remote_config"]["rollbacks"], 2);
}

/// The Restart command: agent_disconnect, then the same process (same pid) comes back as a new
/// agent image with the same instance uid and a full report; SIGTERM ends with agent_disconnect
/// and a Close frame.
#[test]
fn websocket_restart_command_and_disconnect_on_sigterm() {
    require_root();
    let srv = WsServer::start();
    let mut agent = Agent::start(&local(&srv.endpoint(), false, ""));
    agent.wait_ready();
    let first = srv.wait_message(0, "a first report", |_| true);
    let uid = first["uid"].as_str().unwrap().to_string();
    let pid = agent.child.id();
    thread::sleep(Duration::from_secs(2));
    let up = agent.status()["uptime_seconds"].as_f64().unwrap();

    srv.send(json!({"command": {"type": "CommandType_Restart"}}));
    let again = srv.wait_message(0, "a report from the restarted agent", |m| m["conn"] == 2);
    let e = srv.events();
    let last1 = e
        .iter()
        .rev()
        .find(|x| x["ev"] == "a2s" && x["conn"] == 1)
        .unwrap();
    assert!(last1["msg"]["agent_disconnect"].is_object(), "{last1}");
    assert_eq!(
        e.iter()
            .find(|x| x["ev"] == "close" && x["conn"] == 1)
            .unwrap()["code"],
        1000
    );
    assert_eq!(again["uid"], uid.as_str());
    assert_eq!(again["seq"], 1, "a new process counts from 1");
    assert!(again["msg"]["agent_description"].is_object());
    assert_eq!(agent.child.id(), pid);
    agent.wait_ready();
    let st = agent.status();
    assert!(
        st["uptime_seconds"].as_f64().unwrap() < up,
        "a fresh process: {st}"
    );
    assert_eq!(st["probes"]["syscalls"]["state"], "attached");
    assert!(agent
        .stderr()
        .contains("restarting (OpAMP Restart command)"));

    let status = agent.stop();
    assert!(status.success(), "{status}");
    let e = srv.wait("the close of the last connection", |e| {
        e.iter().any(|x| x["ev"] == "close" && x["conn"] == 2)
    });
    let last = e.iter().rev().find(|x| x["ev"] == "a2s").unwrap();
    assert!(last["msg"]["agent_disconnect"].is_object(), "{last}");
    assert_eq!(
        e.iter().rev().find(|x| x["ev"] == "close").unwrap()["code"],
        1000
    );
}

/// An offered OpAMP endpoint is tried and kept when it answers (and stored); one that does not
/// connect is reported FAILED and the previous server stays.
#[test]
fn websocket_offered_endpoint_kept_only_if_it_connects() {
    require_root();
    let (one, two) = (WsServer::start(), WsServer::start());
    let agent = Agent::start(&local(&one.endpoint(), false, ""));
    one.wait_message(0, "a first report", |_| true);

    one.send(
        json!({"connection_settings": {"hash": base64_encode(b"move"), "opamp": {
        "destination_endpoint": two.endpoint(), "heartbeat_interval_seconds": "30"}}}),
    );
    let applied = two.wait_message(0, "APPLIED on the new server", |m| {
        m["msg"]["connection_settings_status"]["status"] == "ConnectionSettingsStatuses_APPLIED"
    });
    assert_eq!(
        base64_decode(
            applied["msg"]["connection_settings_status"]["last_connection_settings_hash"]
                .as_str()
                .unwrap()
        )
        .unwrap(),
        b"move"
    );
    let first2 = two.wait_message(0, "a first report", |_| true);
    assert!(first2["msg"]["agent_description"].is_object());
    let e1 = one.wait("the old connection closed", |e| {
        e.iter().any(|x| x["ev"] == "close")
    });
    assert!(
        e1.iter().rev().find(|x| x["ev"] == "a2s").unwrap()["msg"]["agent_disconnect"].is_object()
    );
    assert_eq!(opamp(&agent)["endpoint"], two.endpoint().as_str());
    let stored = std::fs::read_to_string(agent.dir.join("out/opamp/connection.json")).unwrap();
    assert!(stored.contains(&two.endpoint()), "{stored}");

    // Nothing listens there: FAILED, and back to the server it had.
    let dead = format!("ws://127.0.0.1:{}/v1/opamp", free_port());
    let n = two.events().len();
    two.send(
        json!({"connection_settings": {"hash": base64_encode(b"dead"), "opamp": {
        "destination_endpoint": dead, "heartbeat_interval_seconds": "30"}}}),
    );
    let failed = two.wait_message(n, "FAILED reported back", |m| {
        m["msg"]["connection_settings_status"]["status"] == "ConnectionSettingsStatuses_FAILED"
    });
    let why = failed["msg"]["connection_settings_status"]["error_message"]
        .as_str()
        .unwrap();
    assert!(
        why.contains("did not connect") && why.contains("kept the previous ones"),
        "{why}"
    );
    assert_eq!(opamp(&agent)["endpoint"], two.endpoint().as_str());
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

/// `agent check` reaches the server and says what it found; an unreachable one fails with a
/// fix.
#[test]
fn check_reaches_the_server_and_says_what_it_found() {
    require_root();
    let srv = WsServer::start();
    srv.reply(json!({"capabilities": "3", "remote_yaml": {"body": DETACH}}));
    let dir = tempdir();
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        "probes:\n  network: {enabled: false}\n  profiler: {enabled: false}\n",
    )
    .unwrap();
    let run = |endpoint: &str| {
        std::process::Command::new(integration_tests::agent_bin())
            .args(["check", "--config"])
            .arg(&cfg)
            .args(["--opamp-endpoint", endpoint])
            .output()
            .unwrap()
    };
    let out = run(&srv.endpoint());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("opamp"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(line.contains("answered over websocket"), "{line}");
    assert!(
        line.contains("server capabilities: AcceptsStatus, OffersRemoteConfig"),
        "{line}"
    );
    assert!(
        line.contains("offers a remote config") && line.contains("that this agent accepts"),
        "{line}"
    );
    // It said goodbye, under its own uid.
    let e = srv.wait("the check's disconnect", |e| {
        e.iter().any(|x| x["ev"] == "close")
    });
    let msgs: Vec<&Value> = e.iter().filter(|x| x["ev"] == "a2s").collect();
    assert!(msgs.last().unwrap()["msg"]["agent_disconnect"].is_object());

    let mut mock = MockOpamp::start(None);
    let out = run(&mock.endpoint());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("answered over http") && text.contains("no remote config offered"),
        "{text}"
    );
    mock.stop();

    let out = run(&format!("ws://127.0.0.1:{}/v1/opamp", free_port()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    let fail = text.lines().find(|l| l.starts_with("opamp")).unwrap();
    assert!(
        fail.contains("FAIL") && fail.contains("connecting to"),
        "{text}"
    );
    assert!(
        text.contains("fix: check that an OpAMP server listens at"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
