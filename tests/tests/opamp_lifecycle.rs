//! OpAMP lifecycle over WebSocket: rollback to the last good config, the Restart command,
//! agent_disconnect at SIGTERM, offered OpAMP endpoints tried before they are kept.

use std::{thread, time::Duration};

use integration_tests::{
    bpf_programs_of, free_port,
    opamp::{ws::WsServer, *},
    require_root, serial, Agent,
};
use serde_json::json;

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
