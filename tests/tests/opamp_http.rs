//! OpAMP over plain HTTP against `@elastic/mockopampserver` (a third-party server), and `agent
//! check` against both servers. Deadlines are read from the agent's own timestamps on `/status`
//! (`opamp.remote_config`: received → applied); the test that asserts them takes `serial()`.

use integration_tests::{
    free_port,
    opamp::{mock::MockOpamp, ws::WsServer, *},
    require_root, serial, tempdir, Agent,
};
use serde_json::{json, Value};

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
    // The mock refuses WebSocket upgrades (501): said in one line, with the way out.
    let out = run(&mock.endpoint().replace("http://", "ws://"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let fail = text.lines().find(|l| l.starts_with("opamp")).unwrap();
    assert!(fail.contains("FAIL") && fail.contains("HTTP 501"), "{text}");
    assert!(text.contains("use its plain HTTP transport"), "{text}");
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
