//! Privileged end-to-end tests of the `transform:` and `filter:` sections: the real agent, real
//! workloads, and the Python OTLP sink (PyPI `opentelemetry-proto`) as the receiver. What the
//! sink and `/metrics` get is checked against values computed outside the agent (`sha256sum`).

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{netns::*, otlp::*, *};
use serde_json::Value;

/// A bound for slow machines, not a timing assertion.
const WAIT: Duration = Duration::from_secs(60);

/// One probe, draining and exporting every second to the sink's HTTP port, plus `extra` YAML.
fn config(sink: &Sink, syscalls: bool, network: bool, extra: &str) -> String {
    format!(
        "probes:
  syscalls:
    enabled: {syscalls}
    interval: 1s
    aggregation: process
    top_processes: 100000
  network:
    enabled: {network}
    interval: 1s
  profiler:
    enabled: false
output:
  interval: 1s
export:
  endpoint: \"{}\"
  interval: 1s
  timeout: 5s
{extra}",
        sink.http_endpoint()
    )
}

fn start_agent(yaml: &str) -> Agent {
    let agent = Agent::start_with(yaml, |cmd| {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OTEL_") {
                cmd.env_remove(&k);
            }
        }
    });
    agent.wait_ready();
    agent
}

fn ctx(agent: &Agent, sink: &Sink) -> String {
    format!("\n{}\nagent log:\n{}", sink.tail(5), agent.stderr())
}

/// `sha256sum` of `s`: an independent hash to compare with the agent's `SHA256`.
fn sha256sum(s: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn attr_text(a: &BTreeMap<String, Value>, k: &str) -> Option<String> {
    a.get(k).map(text)
}

/// The issue's redaction statement, as written: the sink receives `SHA256("secretproc")` as the
/// executable name of a process whose binary is named `secretproc`, never the name itself, and
/// other processes' names pass unchanged; `/metrics` shows the same.
#[test]
fn redaction_hashes_the_executable_name_before_it_leaves() {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let agent = start_agent(&config(
        &sink,
        true,
        false,
        r#"transform:
  metric_statements:
    - context: datapoint
      statements:
        - set(attributes["process.executable.name"], SHA256(attributes["process.executable.name"])) where attributes["process.executable.name"] == "secretproc"
"#,
    ));
    // A workload whose executable is named secretproc, and one under its own name.
    let dir = tempdir();
    let secret = dir.join("secretproc");
    std::fs::copy(workload_bin(), &secret).unwrap();
    let run = |bin: &std::path::Path| {
        let mut child = Command::new(bin)
            .args(["getppid", "200000", "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let pid = line.trim().strip_prefix("pid ").unwrap().to_string();
        (child, out, pid)
    };
    let (mut c1, _o1, secret_pid) = run(&secret);
    let (mut c2, _o2, plain_pid) = run(&workload_bin());
    agent.wait_seen(&secret_pid);
    agent.wait_seen(&plain_pid);
    for c in [&mut c1, &mut c2] {
        writeln!(c.stdin.take().unwrap()).unwrap();
        assert!(c.wait().unwrap().success());
    }
    let hashed = sha256sum("secretproc");
    // The syscall families' names (detection's agent.anomaly.score also has a series for the
    // workload's short pre-exec incarnation, named as the test binary that forked it).
    let exe_of = |r: &[Value], pid: &str| -> Vec<Option<String>> {
        all_metric_points(r)
            .into_iter()
            .filter(|p| p.name.starts_with("process.syscall."))
            .filter(|p| attr_text(&p.attributes, "process.pid").as_deref() == Some(pid))
            .map(|p| attr_text(&p.attributes, "process.executable.name"))
            .collect()
    };
    let requests = sink
        .wait_for(WAIT, |r| {
            !exe_of(r, &secret_pid).is_empty() && !exe_of(r, &plain_pid).is_empty()
        })
        .unwrap_or_else(|_| panic!("no points for both workloads{}", ctx(&agent, &sink)));
    // The pid's incarnation before the fork's exec (the test binary, a few syscalls) keeps the
    // name it had then; every point of the exec'd workload carries the hash.
    let pre_exec = |n: &Option<String>| {
        n.as_deref()
            .is_some_and(|n| n != "secretproc" && n != "syscall-workload" && n != hashed)
    };
    let secret_names = exe_of(&requests, &secret_pid);
    assert!(
        secret_names
            .iter()
            .any(|n| n.as_deref() == Some(hashed.as_str()))
            && secret_names
                .iter()
                .all(|n| n.as_deref() == Some(hashed.as_str()) || pre_exec(n)),
        "pid {secret_pid} must carry SHA256(secretproc) = {hashed}: {secret_names:?}{}",
        ctx(&agent, &sink)
    );
    let plain_names = exe_of(&requests, &plain_pid);
    assert!(
        plain_names
            .iter()
            .any(|n| n.as_deref() == Some("syscall-workload"))
            && plain_names
                .iter()
                .all(|n| n.as_deref() == Some("syscall-workload") || pre_exec(n)),
        "other names pass unchanged: {plain_names:?}"
    );
    // Nothing that left carries the name: not the sink's requests, not /metrics.
    for line in sink.requests() {
        assert!(
            !line.to_string().contains("\"secretproc\""),
            "secretproc left the agent: {}",
            cut_line(&line)
        );
    }
    let (_, body) = agent.get("/metrics").unwrap();
    assert!(
        !body.contains("\"secretproc\""),
        "/metrics shows secretproc"
    );
    assert!(
        body.contains(&format!("process_executable_name=\"{hashed}\"")),
        "/metrics must show the hash"
    );
}

fn cut_line(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(2000).collect()
}

/// `delete_key` on both the network probe's metric points and its connection log records:
/// connections between two namespaces reach the sink without `network.peer.address`, with
/// their other attributes (`network.peer.port`) intact.
#[test]
fn delete_key_removes_the_peer_address_from_metrics_and_logs() {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let net = NetPair::new("ottl");
    let agent = start_agent(&config(
        &sink,
        false,
        true,
        r#"transform:
  metric_statements:
    - context: datapoint
      statements:
        - delete_key(attributes, "network.peer.address")
  log_statements:
    - context: log
      statements:
        - delete_key(attributes, "network.peer.address")
"#,
    ));
    let port = 8080u16;
    let server_addr = net.server_addr(false, port).to_string();
    let _srv = NsProcess::start(&net.server, &tcp_workload_bin(), &["server", &server_addr]);
    let cl = NsProcess::start(
        &net.client,
        &tcp_workload_bin(),
        &["connect", &server_addr, "--count", "3", "--rounds", "5"],
    );
    let pid = cl.pid.to_string();
    cl.finish();
    let ours_metric = |r: &[Value]| -> Vec<MetricPoint> {
        metric_points(r, "system.network.tcp.handshake.duration")
            .into_iter()
            .filter(|p| attr_text(&p.attributes, "process.pid").as_deref() == Some(&pid))
            .collect()
    };
    let ours_log = |r: &[Value]| -> Vec<LogRecord> {
        log_records(r)
            .into_iter()
            .filter(|x| attr_text(&x.attributes, "process.pid").as_deref() == Some(&pid))
            .collect()
    };
    let requests = sink
        .wait_for(WAIT, |r| {
            ours_metric(r).iter().any(|p| p.count() == 3)
                && ours_log(r)
                    .iter()
                    .any(|x| x.event_name == "tcp.connection.close")
        })
        .unwrap_or_else(|_| {
            panic!(
                "no handshakes or close records for pid {pid}{}",
                ctx(&agent, &sink)
            )
        });
    for p in ours_metric(&requests) {
        assert!(
            !p.attributes.contains_key("network.peer.address"),
            "{:?}",
            p.attributes
        );
        assert_eq!(
            attr_text(&p.attributes, "network.peer.port").as_deref(),
            Some("8080")
        );
    }
    for x in ours_log(&requests) {
        assert!(
            !x.attributes.contains_key("network.peer.address"),
            "{:?}",
            x.attributes
        );
        assert_eq!(
            attr_text(&x.attributes, "network.peer.port").as_deref(),
            Some("8080")
        );
    }
    // Nowhere, for anyone: every point and record that left.
    assert!(all_metric_points(&requests)
        .iter()
        .all(|p| !p.attributes.contains_key("network.peer.address")));
    assert!(log_records(&requests)
        .iter()
        .all(|x| !x.attributes.contains_key("network.peer.address")));
    let (_, body) = agent.get("/metrics").unwrap();
    assert!(
        !body.contains("network_peer_address"),
        "/metrics keeps the label"
    );
    // /status is a local diagnostic: it still shows the peer.
    let status = agent.status();
    let peer = net.server_ip(false).to_string();
    assert!(
        status["network"]["recent_connections"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["peer_address"] == peer.as_str()),
        "/status lost the peer address"
    );
}

/// A filter drops `process.syscall.errors` from the sink and `/metrics` while failing syscalls
/// happen; a SIGHUP with the filter removed brings the metric back (the section is reloaded).
#[test]
fn filter_drops_syscall_errors_until_reloaded_without_it() {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let base = config(&sink, true, false, "");
    let agent = start_agent(&format!(
        "{base}filter:\n  metrics:\n    metric:\n      - name == \"process.syscall.errors\"\n"
    ));
    let run_badclose = || {
        let w = Workload::start("badclose", 5000);
        let pid = w.pid.to_string();
        agent.wait_seen(&pid);
        w.go();
        pid
    };
    let pid = run_badclose();
    // The close series of that pid arrives (with its 5000 failed calls), its errors do not.
    let closes = |r: &[Value], pid: &str| {
        metric_points(r, "process.syscall.duration")
            .into_iter()
            .any(|p| {
                attr_text(&p.attributes, "process.pid").as_deref() == Some(pid)
                    && attr_text(&p.attributes, "syscall.name").as_deref() == Some("close")
                    // Plus the dynamic loader's own close calls at start-up.
                    && p.count() >= 5000
            })
    };
    let requests = sink
        .wait_for(WAIT, |r| closes(r, &pid))
        .unwrap_or_else(|_| panic!("no close series for {pid}{}", ctx(&agent, &sink)));
    // Two more exports after it, to be sure no later request carries the errors.
    let n = requests.len();
    let requests = sink
        .wait_for(WAIT, |r| r.len() >= n + 2)
        .unwrap_or_else(|_| panic!("exports stopped{}", ctx(&agent, &sink)));
    assert!(
        metric_points(&requests, "process.syscall.errors").is_empty(),
        "the filter must drop process.syscall.errors{}",
        ctx(&agent, &sink)
    );
    let (_, body) = agent.get("/metrics").unwrap();
    assert!(!body.contains("process_syscall_errors_total"));
    assert!(body.contains("process_syscall_duration_seconds_count"));

    // Reload without the filter: the errors (exactly the 5000 EBADF) come back.
    std::fs::write(&agent.config, &base).unwrap();
    agent.signal(libc::SIGHUP);
    let ebadf = |r: &[Value]| {
        metric_points(r, "process.syscall.errors")
            .into_iter()
            .any(|p| {
                attr_text(&p.attributes, "process.pid").as_deref() == Some(pid.as_str())
                    && attr_text(&p.attributes, "error.type").as_deref() == Some("EBADF")
                    && p.point["asDouble"].as_f64() == Some(5000.0)
            })
    };
    sink.wait_for(WAIT, ebadf).unwrap_or_else(|_| {
        panic!(
            "process.syscall.errors did not return after the reload{}",
            ctx(&agent, &sink)
        )
    });
}

/// A bad statement is rejected at load with the file, line, field and column, by `agent config
/// validate` and by a SIGHUP (which keeps the running config).
#[test]
fn invalid_statements_are_rejected_with_their_position() {
    let dir = tempdir();
    let file = dir.join("agent.yaml");
    std::fs::write(
        &file,
        "transform:\n  metric_statements:\n    - context: datapoint\n      statements:\n        - set(attributes[\"a\"], )\n",
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["config", "validate"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:5:11: transform.metric_statements[0].statements[0]: column 22: expected a value \
         (path, literal, converter, list or map), found ')' in `set(attributes[\"a\"], )`",
        file.display()
    );
    assert!(err.contains(&want), "got:\n{err}\nwant:\n{want}");
    assert!(
        err.contains("fix: correct the statement at that column"),
        "{err}"
    );
}
