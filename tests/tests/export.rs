//! Privileged end-to-end tests of the OTLP exporter: the real agent sends to receivers that do
//! not share its code — the Python sink (`tests/otlp_sink/sink.py`, PyPI `opentelemetry-proto`)
//! directly, or rotel (a real collector) in between — over http/protobuf, http/json and gRPC.
//! Checked: exact syscall counts arrive, resource and data point attributes, headers and
//! compression, connection logs, retries after 503/UNAVAILABLE, a 30 s outage that loses
//! nothing, and TLS with a private CA and client certificates.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_tests::{netns::*, otlp::*, *};
use serde_json::{json, Value};

/// The export interval the tests configure, in seconds.
const INTERVAL_S: u64 = 1;

/// How long the tests wait for something that should take a few intervals (a bound for slow
/// machines, not a timing assertion).
const WAIT: Duration = Duration::from_secs(60);

/// getppid calls of each workload.
const CALLS: u64 = 100_000;

/// Environment of a Kubernetes pod (downward API), turned into `k8s.*` resource attributes.
const K8S: [(&str, &str); 4] = [
    ("K8S_NODE_NAME", "node-7"),
    ("K8S_POD_NAME", "agent-x7k2p"),
    ("K8S_POD_UID", "0d4c2f7e-2b1a-4b8e-9d55-6f1a2c3b4d5e"),
    ("K8S_NAMESPACE", "observability"),
];

/// Which probe the agent runs besides the exporter.
#[derive(Clone, Copy)]
enum Probe {
    Syscalls,
    Network,
}

/// The agent's config: one probe draining every second, and the exporter sending every
/// second to `endpoint` with header `x-test: abc`.
fn config(endpoint: &str, protocol: &str, compression: &str, probe: Probe) -> String {
    let (syscalls, network) = match probe {
        Probe::Syscalls => (true, false),
        Probe::Network => (false, true),
    };
    format!(
        "probes:
  syscalls:
    enabled: {syscalls}
    interval: 1s
    aggregation: process
    top_processes: 100000
    retain_exited: 5m
  network:
    enabled: {network}
    interval: 1s
output:
  interval: 1s
export:
  endpoint: \"{endpoint}\"
  protocol: {protocol}
  compression: {compression}
  headers: {{x-test: abc}}
  interval: {INTERVAL_S}s
  timeout: 5s
  temporality: cumulative
"
    )
}

/// Starts the agent with `env` on top of the test's environment less every `OTEL_*` and
/// `K8S_*` variable (so the machine's own cannot change what is tested), and waits for
/// /readyz.
fn start_agent(yaml: &str, env: &[(&str, &str)]) -> Agent {
    let agent = Agent::start_with(yaml, |cmd| {
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name.starts_with("OTEL_") || name.starts_with("K8S_") {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
    });
    agent.wait_ready();
    agent
}

/// What every failure message ends with: the sink's last lines and the agent's log.
fn ctx(agent: &Agent, sink: &Sink) -> String {
    format!("\n{}\nagent log:\n{}", sink.tail(5), agent.stderr())
}

fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The `process.syscall.duration` points of `pid`'s getppid series (matched by text, so that
/// a pid sent with the wrong type is still found and reported as such).
fn getppid_points(requests: &[Value], pid: &str) -> Vec<MetricPoint> {
    metric_points(requests, "process.syscall.duration")
        .into_iter()
        .filter(|p| {
            p.attributes.get("process.pid").map(text).as_deref() == Some(pid)
                && p.attributes.get("syscall.name").map(text).as_deref() == Some("getppid")
        })
        .collect()
}

/// Runs a getppid workload of `CALLS` calls and waits until the sink holds a point of its
/// series with exactly that count; checks the series is cumulative (counts never go down and
/// never exceed `CALLS`) and returns the requests and that point.
fn exact_count_arrives(agent: &Agent, sink: &Sink) -> (String, Vec<Value>, MetricPoint) {
    let w = Workload::start("getppid", CALLS);
    let pid = w.pid.to_string();
    agent.wait_seen(&pid);
    w.go();
    let requests = sink
        .wait_for(WAIT, |r| {
            getppid_points(r, &pid).iter().any(|p| p.count() >= CALLS)
        })
        .unwrap_or_else(|r| {
            let counts: Vec<u64> = getppid_points(&r, &pid).iter().map(|p| p.count()).collect();
            panic!(
                "no process.syscall.duration point for pid {pid} reached {CALLS} \
                 (its counts: {counts:?}){}",
                ctx(agent, sink)
            )
        });
    let mut points = getppid_points(&requests, &pid);
    points.sort_by_key(|p| p.time());
    let counts: Vec<u64> = points.iter().map(|p| p.count()).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]) && counts.iter().all(|c| *c <= CALLS),
        "cumulative counts of pid {pid} must grow to exactly {CALLS}: {counts:?}{}",
        ctx(agent, sink)
    );
    let point = points.into_iter().find(|p| p.count() == CALLS).unwrap();
    (pid, requests, point)
}

/// An attribute's value, `null` when absent.
fn attr(attributes: &BTreeMap<String, Value>, key: &str) -> Value {
    attributes.get(key).cloned().unwrap_or(Value::Null)
}

/// One metric point on one line, for messages.
fn show(p: &MetricPoint) -> String {
    format!(
        "{} ({}, unit {:?}, temporality {:?}, scope {:?}) {} {}\nresource {}",
        p.name,
        p.kind,
        p.unit,
        p.temporality,
        p.scope,
        serde_json::to_string(&p.attributes).unwrap(),
        p.point,
        serde_json::to_string(&p.resource).unwrap()
    )
}

/// The `process.syscall.duration` point: unit, temporality, attributes, bucket layout.
fn check_histogram_point(p: &MetricPoint, pid: &str, c: &str) {
    let c = format!("\n{}{c}", show(p));
    assert_eq!(p.kind, "histogram", "{c}");
    assert_eq!(p.unit, "s", "{c}");
    assert_eq!(p.temporality, Some(2), "cumulative: {c}");
    assert_eq!(p.scope, "agent", "{c}");
    let a = &p.attributes;
    let pid: i64 = pid.parse().unwrap();
    assert_eq!(attr(a, "process.pid"), json!(pid), "an int: {c}");
    assert_eq!(
        attr(a, "process.executable.name"),
        json!("syscall-workload"),
        "{c}"
    );
    assert_eq!(attr(a, "syscall.name"), json!("getppid"), "{c}");
    let bounds: Vec<f64> = p.point["explicitBounds"]
        .as_array()
        .unwrap_or_else(|| panic!("no explicitBounds: {c}"))
        .iter()
        .map(|b| b.as_f64().unwrap())
        .collect();
    assert!(
        !bounds.is_empty() && bounds.windows(2).all(|w| w[0] < w[1]),
        "bounds must ascend: {c}"
    );
    let buckets: Vec<u64> = p.point["bucketCounts"]
        .as_array()
        .unwrap_or_else(|| panic!("no bucketCounts: {c}"))
        .iter()
        .map(|b| u64_of(b).unwrap())
        .collect();
    assert_eq!(buckets.len(), bounds.len() + 1, "{c}");
    assert_eq!(buckets.iter().sum::<u64>(), CALLS, "{c}");
    // No getppid call took 1 s.
    let below_1s: u64 = bounds
        .iter()
        .zip(&buckets)
        .filter(|(b, _)| **b <= 1.0)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(below_1s, CALLS, "{c}");
    // The same loose plausibility bound as the syscall tests: 10 ns to 100 µs per call.
    let mean = p.point["sum"].as_f64().unwrap_or(0.0) / CALLS as f64;
    assert!((10e-9..100e-6).contains(&mean), "mean {mean} s: {c}");
    assert!(
        p.start_time() > 0 && p.start_time() <= p.time(),
        "start {} time {}: {c}",
        p.start_time(),
        p.time()
    );
}

/// The agent's resource attributes; `k8s`: the `K8S` environment was set.
fn check_resource(r: &BTreeMap<String, Value>, k8s: bool, c: &str) {
    let c = format!("\nresource {}{c}", serde_json::to_string(r).unwrap());
    assert_eq!(r.get("service.name"), Some(&json!("agent")), "{c}");
    let version = r
        .get("service.version")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(
        version.starts_with(env!("CARGO_PKG_VERSION")),
        "service.version {version:?}: {c}"
    );
    for key in ["service.instance.id", "host.id"] {
        assert!(
            r.get(key)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty()),
            "{key}: {c}"
        );
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(r.get("host.name"), Some(&json!(hostname.trim())), "{c}");
    assert_eq!(r.get("os.type"), Some(&json!("linux")), "{c}");
    for (var, key) in [
        ("K8S_NODE_NAME", "k8s.node.name"),
        ("K8S_POD_NAME", "k8s.pod.name"),
        ("K8S_POD_UID", "k8s.pod.uid"),
        ("K8S_NAMESPACE", "k8s.namespace.name"),
    ] {
        let want = K8S.iter().find(|(k, _)| *k == var).unwrap().1;
        if k8s {
            assert_eq!(r.get(key), Some(&json!(want)), "{c}");
        } else {
            assert_eq!(r.get(key), None, "no {var} in the environment: {c}");
        }
    }
}

/// The agent sends straight to the sink over `protocol` with `compression`: the workload's
/// exact count arrives, with the agent's resource (Kubernetes attributes from the
/// environment), the configured header, the protocol and the compression asked for.
fn metrics_reach_the_sink(protocol: &str, compression: &str) {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let endpoint = match protocol {
        "grpc" => sink.grpc_endpoint(),
        _ => sink.http_endpoint(),
    };
    let agent = start_agent(
        &config(&endpoint, protocol, compression, Probe::Syscalls),
        &K8S,
    );
    let (pid, requests, point) = exact_count_arrives(&agent, &sink);
    let c = ctx(&agent, &sink);
    check_histogram_point(&point, &pid, &c);
    check_resource(&point.resource, true, &c);
    // Every metrics request came the configured way.
    for line in requests.iter().filter(|l| l["signal"] == "metrics") {
        let shown = || format!("{}{c}", cut_json(line));
        assert_eq!(line["transport"], protocol, "{}", shown());
        assert_eq!(line["gzip"], compression == "gzip", "{}", shown());
        assert_eq!(line["headers"]["x-test"], "abc", "{}", shown());
    }
}

/// A request line without its (long) request, for messages.
fn cut_json(line: &Value) -> String {
    let mut l = line.clone();
    if let Some(o) = l.as_object_mut() {
        o.remove("request");
    }
    l.to_string()
}

#[test]
fn metrics_reach_the_python_sink_over_http_protobuf_gzip() {
    metrics_reach_the_sink("http/protobuf", "gzip");
}

#[test]
fn metrics_reach_the_python_sink_over_http_json_gzip() {
    metrics_reach_the_sink("http/json", "gzip");
}

#[test]
fn metrics_reach_the_python_sink_over_grpc_gzip() {
    metrics_reach_the_sink("grpc", "gzip");
}

/// The standard variables configure the exporter over an empty `export` section:
/// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is the full URL, used as is (were `/v1/metrics`
/// appended, the sink would answer 404 and nothing would arrive), and wins over
/// OTEL_EXPORTER_OTLP_ENDPOINT for metrics; PROTOCOL, HEADERS and COMPRESSION apply.
#[test]
fn otel_environment_variables_configure_the_exporter() {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let other = Sink::start(&[]);
    let yaml = "probes:
  syscalls:
    interval: 1s
    aggregation: process
    top_processes: 100000
    retain_exited: 5m
  network:
    enabled: false
output:
  interval: 1s
export:
  interval: 1s
";
    let metrics_url = format!("{}/v1/metrics", sink.http_endpoint());
    let agent = start_agent(
        yaml,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                other.http_endpoint().as_str(),
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-test=env,x-other=def"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ],
    );
    let (pid, requests, point) = exact_count_arrives(&agent, &sink);
    let c = ctx(&agent, &sink);
    check_histogram_point(&point, &pid, &c);
    check_resource(&point.resource, false, &c);
    for line in requests.iter().filter(|l| l["signal"] == "metrics") {
        let shown = || format!("{}{c}", cut_json(line));
        assert_eq!(line["transport"], "http/json", "{}", shown());
        assert_eq!(line["gzip"], false, "{}", shown());
        assert_eq!(line["headers"]["x-test"], "env", "{}", shown());
        assert_eq!(line["headers"]["x-other"], "def", "{}", shown());
    }
    let elsewhere = other
        .requests()
        .iter()
        .filter(|l| l["signal"] == "metrics")
        .count();
    assert_eq!(
        elsewhere,
        0,
        "metrics went to OTEL_EXPORTER_OTLP_ENDPOINT:\n{}{c}",
        other.tail(3)
    );
}

/// agent → rotel (a real collector; its OTLP/gRPC receiver, then its OTLP/HTTP one, gzip both
/// ways) → sink: the exact count arrives through it, with the agent's resource.
#[test]
fn through_rotel_grpc_and_http_with_gzip() {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let rotel = Rotel::start(sink.grpc_port);
    for (protocol, endpoint) in [
        ("grpc", rotel.grpc_endpoint()),
        ("http/protobuf", rotel.http_endpoint()),
    ] {
        let agent = start_agent(&config(&endpoint, protocol, "gzip", Probe::Syscalls), &[]);
        let (pid, requests, point) = exact_count_arrives(&agent, &sink);
        let c = format!(
            "\nagent → rotel over {protocol}{}\nrotel log:\n{}",
            ctx(&agent, &sink),
            rotel.log()
        );
        check_histogram_point(&point, &pid, &c);
        check_resource(&point.resource, false, &c);
        // It came through rotel (its exporter's user agent), compressed as rotel was told.
        let line = &requests[point.request];
        let agent_header = text(&line["headers"]["user-agent"]).to_lowercase();
        assert!(
            agent_header.contains("rotel"),
            "not from rotel: {}{c}",
            cut_json(line)
        );
        assert_eq!(line["gzip"], true, "{}{c}", cut_json(line));
    }
}

/// A connection made by `tcp-workload` (10 rounds of 100 bytes each way, between two network
/// namespaces) arrives as an open and a close log record with the right process, peer and
/// bytes (as the kernel counts them: the SYN and FIN take a sequence number each, see
/// tests/tests/network.rs); a refused connect as a close record with `error.type` refused.
#[test]
fn logs_carry_connection_events() {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let net = NetPair::new("otlp");
    let agent = start_agent(
        &config(
            &sink.http_endpoint(),
            "http/protobuf",
            "gzip",
            Probe::Network,
        ),
        &[],
    );
    let port = 8080u16;
    let server_addr = net.server_addr(false, port).to_string();
    let _srv = NsProcess::start(&net.server, &tcp_workload_bin(), &["server", &server_addr]);
    let cl = NsProcess::start(
        &net.client,
        &tcp_workload_bin(),
        &[
            "connect",
            &server_addr,
            "--count",
            "1",
            "--rounds",
            "10",
            "--size",
            "100",
        ],
    );
    let pid = cl.pid;
    let lines = cl.finish();
    assert!(
        lines.contains(&"bytes 0 sent=1000 received=1000".to_string()),
        "{lines:?}"
    );
    // `connect <i> <seconds> <local_port>`
    let local_port: u16 = lines
        .iter()
        .find_map(|l| l.strip_prefix("connect 0 "))
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no connect line: {lines:?}"));

    let ours = |r: &LogRecord, event: &str| {
        r.event_name == event
            && r.attributes.get("process.pid").map(text) == Some(pid.to_string())
            && r.attributes.get("network.local.port").map(text) == Some(local_port.to_string())
    };
    let requests = sink
        .wait_for(WAIT, |r| {
            let records = log_records(r);
            records.iter().any(|x| ours(x, "tcp.connection.close"))
                && records.iter().any(|x| ours(x, "tcp.connection.open"))
        })
        .unwrap_or_else(|r| {
            let events: Vec<(String, BTreeMap<String, Value>)> = log_records(&r)
                .into_iter()
                .map(|x| (x.event_name, x.attributes))
                .collect();
            panic!(
                "no open and close records for pid {pid} port {local_port}; records: \
                 {events:#?}{}",
                ctx(&agent, &sink)
            )
        });
    let records = log_records(&requests);
    let close = records
        .iter()
        .find(|x| ours(x, "tcp.connection.close"))
        .unwrap();
    let c = format!("\n{}{}", show_record(close), ctx(&agent, &sink));
    let a = &close.attributes;
    assert_eq!(attr(a, "process.pid"), json!(pid), "an int: {c}");
    assert_eq!(
        attr(a, "network.peer.address"),
        json!(net.server_ip(false).to_string()),
        "{c}"
    );
    assert_eq!(text(&attr(a, "network.peer.port")), port.to_string(), "{c}");
    assert_eq!(
        attr(a, "network.tcp.handshake.role"),
        json!("client"),
        "{c}"
    );
    assert_eq!(
        text(&attr(a, "tcp.bytes_sent")),
        "1002",
        "payload + SYN + FIN: {c}"
    );
    assert_eq!(
        text(&attr(a, "tcp.bytes_received")),
        "1001",
        "payload + FIN: {c}"
    );
    assert_eq!(text(&attr(a, "tcp.retransmits")), "0", "{c}");
    assert!(
        a.get("tcp.rtt_us")
            .and_then(|v| i64_of(v).or(v.as_f64().map(|f| f as i64)))
            .is_some_and(|v| v > 0),
        "{c}"
    );
    assert!(!a.contains_key("error.type"), "{c}");
    assert!(
        u64_of(&close.record["timeUnixNano"]).is_some_and(|t| t > 0),
        "{c}"
    );
    assert_eq!(close.scope, "agent", "{c}");
    check_resource(&close.resource, false, &c);

    // A refused connect: the close carries the failure.
    let refused = NsProcess::start(
        &net.client,
        &tcp_workload_bin(),
        &[
            "connect",
            &net.server_addr(false, 9).to_string(),
            "--count",
            "1",
        ],
    );
    let rpid = refused.pid.to_string();
    let lines = refused.finish();
    assert!(
        lines.contains(&"error 0 ConnectionRefused 111".to_string()),
        "{lines:?}"
    );
    let failed = |r: &LogRecord| {
        r.event_name == "tcp.connection.close"
            && r.attributes.get("process.pid").map(text).as_deref() == Some(rpid.as_str())
            && r.attributes.contains_key("error.type")
    };
    let requests = sink
        .wait_for(WAIT, |r| log_records(r).iter().any(failed))
        .unwrap_or_else(|_| {
            panic!(
                "no close record with error.type for pid {rpid}{}",
                ctx(&agent, &sink)
            )
        });
    let records = log_records(&requests);
    let record = records.iter().find(|r| failed(r)).unwrap();
    assert_eq!(
        attr(&record.attributes, "error.type"),
        json!("refused"),
        "{}{}",
        show_record(record),
        ctx(&agent, &sink)
    );
    assert_eq!(
        text(&attr(&record.attributes, "network.peer.port")),
        "9",
        "{}{}",
        show_record(record),
        ctx(&agent, &sink)
    );
}

/// One log record on one line, for messages.
fn show_record(r: &LogRecord) -> String {
    format!(
        "{} (scope {:?}) {} {}\nresource {}",
        r.event_name,
        r.scope,
        serde_json::to_string(&r.attributes).unwrap(),
        r.record,
        serde_json::to_string(&r.resource).unwrap()
    )
}

/// The agent's `/status` → `exporter.signals.<signal>.<field>`.
fn delivery(agent: &Agent, signal: &str, field: &str) -> Option<u64> {
    agent.status()["exporter"]["signals"][signal][field].as_u64()
}

/// The sink fails the first two requests (HTTP 503 with `Retry-After: 1`, or gRPC UNAVAILABLE
/// with a RetryInfo of 1 s). The data of each rejected request must arrive exactly once
/// afterwards (every point of it, by series and timestamps), and /status must count the
/// retries and no drop. For HTTP, each retry of rejected data must come at least the
/// Retry-After second after the rejection.
fn retries_deliver_once(protocol: &str) {
    require_root();
    let _g = serial();
    let sink = Sink::start(&["--fail-first", "2"]);
    let endpoint = match protocol {
        "grpc" => sink.grpc_endpoint(),
        _ => sink.http_endpoint(),
    };
    // Few series (top 5 processes): the test is about requests, not their size.
    let yaml = config(&endpoint, protocol, "gzip", Probe::Syscalls)
        .replace("    top_processes: 100000\n", "    top_processes: 5\n");
    let agent = start_agent(&yaml, &[]);
    // Until both rejections happened and every point they held was accepted since.
    let delivered = |rejected: &[Value]| {
        sink.with_requests(|accepted| {
            let counts = key_counts(accepted);
            rejected.len() == 2
                && rejected
                    .iter()
                    .all(|r| point_keys(r).iter().all(|k| counts.contains_key(k)))
        })
    };
    let deadline = Instant::now() + WAIT;
    while !delivered(&sink.rejected()) {
        assert!(
            Instant::now() < deadline,
            "the rejected data never arrived{}",
            ctx(&agent, &sink)
        );
        thread::sleep(Duration::from_millis(250));
    }
    let c = ctx(&agent, &sink);
    let rejected = sink.rejected();
    let counts = sink.with_requests(key_counts);
    assert!(
        rejected.iter().any(|r| !point_keys(r).is_empty()),
        "the rejected requests held no point: the test proves nothing{c}"
    );
    let lines = sink.lines();
    for r in &rejected {
        assert_eq!(r["signal"], "metrics", "{}{c}", cut_json(r));
        let keys = point_keys(r);
        for k in &keys {
            let n = counts.get(k).copied().unwrap_or(0);
            assert_eq!(
                n, 1,
                "point {k} of a rejected request accepted {n} times{c}"
            );
        }
        if protocol == "grpc" || keys.is_empty() {
            continue;
        }
        // The next attempt carrying any of its points (rejected again or not).
        let at = u64_of(&r["received_unix_nano"]).unwrap();
        let next = lines
            .iter()
            .filter(|l| u64_of(&l["received_unix_nano"]).unwrap() > at)
            .find(|l| point_keys(l).iter().any(|k| keys.contains(k)))
            .and_then(|l| u64_of(&l["received_unix_nano"]))
            .unwrap();
        assert!(
            next - at >= 1_000_000_000,
            "retried {} ms after a 503 with Retry-After: 1{c}",
            (next - at) / 1_000_000
        );
    }
    agent.wait_for(
        |a| delivery(a, "metrics", "retried").is_some_and(|n| n >= 2),
        "/status exporter.signals.metrics.retried >= 2",
    );
    let status = agent.status();
    let metrics = &status["exporter"]["signals"]["metrics"];
    assert_eq!(metrics["dropped"].as_u64(), Some(0), "{metrics:#}{c}");
    assert!(
        metrics["sent_requests"].as_u64() >= Some(1),
        "{metrics:#}{c}"
    );
    assert!(metrics["sent_points"].as_u64() >= Some(1), "{metrics:#}{c}");
}

/// The keys (series and times) of every metric point of one request.
fn point_keys(line: &Value) -> HashSet<String> {
    all_metric_points(std::slice::from_ref(line))
        .iter()
        .map(MetricPoint::key)
        .collect()
}

/// How many of these requests hold each point key.
fn key_counts(requests: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in requests {
        for k in point_keys(line) {
            *counts.entry(k).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn retries_honour_retry_after() {
    retries_deliver_once("http/protobuf");
}

#[test]
fn grpc_unavailable_is_retried() {
    retries_deliver_once("grpc");
}

/// Series the outage test may follow, best first: present at every export whatever the
/// machine does.
const STEADY: [&str; 3] = [
    "agent.ebpf.events.processed",
    "process.cpu.time",
    "process.memory.usage",
];

/// A series present at every export so far: at least 4 points, no time twice, consecutive
/// times at most 2 intervals apart. A `STEADY` one when there is one.
fn steady_series(requests: &[Value]) -> Option<String> {
    let mut series: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
    for p in all_metric_points(requests) {
        series
            .entry(p.series())
            .or_insert_with(|| (p.name.clone(), Vec::new()))
            .1
            .push(p.time());
    }
    let eligible: Vec<(&String, &String)> = series
        .iter()
        .filter(|(_, (_, times))| {
            let mut t = times.clone();
            t.sort_unstable();
            t.len() >= 4 && gaps_ok(&t) && t.windows(2).all(|w| w[0] != w[1])
        })
        .map(|(key, (name, _))| (key, name))
        .collect();
    STEADY
        .iter()
        .find_map(|want| eligible.iter().find(|(_, name)| name == want))
        .or_else(|| eligible.first())
        .map(|(key, _)| (*key).clone())
}

/// No two consecutive (sorted) times more than 2 export intervals apart.
fn gaps_ok(sorted: &[u64]) -> bool {
    sorted
        .windows(2)
        .all(|w| w[1] - w[0] <= 2 * INTERVAL_S * 1_000_000_000)
}

/// The times of one series' points, sorted.
fn series_times(requests: &[Value], series: &str) -> Vec<u64> {
    let mut t: Vec<u64> = all_metric_points(requests)
        .iter()
        .filter(|p| p.series() == series)
        .map(MetricPoint::time)
        .collect();
    t.sort_unstable();
    t
}

/// The sink is down for 30 s and comes back on the same port: what the agent could not send
/// waited in its spool and arrives, so the one series followed has a point for every export
/// from its first to its last, and none twice.
///
/// The bound: the agent stamps each export with the time it runs, every `interval` (1 s).
/// On a loaded machine an export may run late, but the next one is due one interval after
/// the previous due time, so two consecutive points of a series lie at most 2 intervals apart
/// unless an export was lost. "None twice": the sink stops gracefully (a request is either
/// recorded and answered or neither), so a resend of delivered data would be the agent's
/// fault. The 60 s after the restart bound the agent's retry backoff plus the replay of ~30
/// spooled exports.
#[test]
fn a_30_second_outage_loses_nothing() {
    require_root();
    let _g = serial();
    let mut sink = Sink::start(&[]);
    // Few series (top 5 processes), so the 100-odd exports stay small.
    let yaml = config(
        &sink.http_endpoint(),
        "http/protobuf",
        "gzip",
        Probe::Syscalls,
    )
    .replace("    top_processes: 100000\n", "    top_processes: 5\n");
    let agent = start_agent(&yaml, &[]);
    let before = sink
        .wait_for(WAIT, |r| {
            r.iter().filter(|l| l["signal"] == "metrics").count() >= 6
        })
        .unwrap_or_else(|_| panic!("fewer than 6 exports{}", ctx(&agent, &sink)));
    let series = steady_series(&before).unwrap_or_else(|| {
        let names: std::collections::BTreeSet<String> = all_metric_points(&before)
            .into_iter()
            .map(|p| p.series())
            .collect();
        panic!(
            "no series present at every export in {names:#?}{}",
            ctx(&agent, &sink)
        )
    });
    eprintln!("following {series}");

    sink.stop();
    let stopped = now_unix_nanos();
    thread::sleep(Duration::from_secs(30));
    let spooled = delivery(&agent, "metrics", "spooled");
    sink.restart();
    let restarted = now_unix_nanos();

    let requests = sink
        .wait_for(WAIT, |r| {
            let t = series_times(r, &series);
            t.last().is_some_and(|last| *last >= restarted) && gaps_ok(&t)
        })
        .unwrap_or_else(|r| {
            let t = series_times(&r, &series);
            panic!(
                "{series} after the outage (stopped at {stopped}, restarted at {restarted}): \
                 times {t:?}{}",
                ctx(&agent, &sink)
            )
        });
    let times = series_times(&requests, &series);
    let c = format!(
        "\n{series}: stopped at {stopped}, restarted at {restarted}, times {times:?}{}",
        ctx(&agent, &sink)
    );
    let mut distinct = times.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), times.len(), "a point arrived twice{c}");
    assert!(gaps_ok(&times), "a gap of more than 2 intervals{c}");
    assert!(times[0] < stopped, "the series starts before the outage{c}");

    let status = agent.status();
    let metrics = &status["exporter"]["signals"]["metrics"];
    assert!(
        spooled.is_some_and(|n| n > 0) || metrics["spooled"].as_u64() > Some(0),
        "spooled during the outage: {spooled:?}; now: {metrics:#}{c}"
    );
    assert_eq!(metrics["dropped"].as_u64(), Some(0), "{metrics:#}{c}");
}

/// Runs `tests/otlp_sink/send.py ARGS` (a Python OTLP client): one metrics request, a
/// histogram `test.duration` of `--count` observations tagged `--tag`.
fn send(args: &[&str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_sink/send.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "send.py {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test peers themselves, without the agent (no root needed): the sink decodes what a
/// Python client sends over each transport, with and without gzip, keeps its ports and file
/// across a restart, fails the first requests when told, and rotel forwards to it.
#[test]
fn the_sink_and_rotel_receive_what_a_python_client_sends() {
    let mut sink = Sink::start(&[]);
    let http = format!("127.0.0.1:{}", sink.http_port);
    let grpc = format!("127.0.0.1:{}", sink.grpc_port);
    let cases = [
        ("http/protobuf", false, &http, 1),
        ("http/protobuf", true, &http, 2),
        ("http/json", false, &http, 3),
        ("http/json", true, &http, 4),
        ("grpc", false, &grpc, 5),
        ("grpc", true, &grpc, 6),
    ];
    for (transport, gzip, addr, count) in cases {
        let count = count.to_string();
        let mut args = vec!["--count", &count, "--header", "x-test=abc"];
        args.extend(match transport {
            "grpc" => ["--grpc", addr.as_str(), "--tag", transport],
            _ => ["--http", addr.as_str(), "--protocol", transport],
        });
        if gzip {
            args.push("--gzip");
        }
        send(&args);
    }
    let requests = sink.requests();
    assert_eq!(requests.len(), 6, "{}", sink.tail(6));
    for (i, (transport, gzip, _, count)) in cases.into_iter().enumerate() {
        let line = &requests[i];
        assert_eq!(line["signal"], "metrics", "{line}");
        assert_eq!(line["transport"], transport, "{line}");
        assert_eq!(line["gzip"], gzip, "{line}");
        assert_eq!(line["headers"]["x-test"], "abc", "{line}");
        let points = metric_points(std::slice::from_ref(line), "test.duration");
        assert_eq!(points.len(), 1, "{line}");
        assert_eq!(points[0].count(), count, "{line}");
        assert_eq!(points[0].temporality, Some(2), "{line}");
        assert_eq!(points[0].unit, "s", "{line}");
        assert_eq!(points[0].resource["service.name"], "send.py", "{line}");
    }

    // A restart keeps the ports and the file.
    let ports = (sink.http_port, sink.grpc_port);
    sink.stop();
    sink.restart();
    assert_eq!((sink.http_port, sink.grpc_port), ports);
    send(&["--http", &http, "--count", "7"]);
    send(&["--grpc", &grpc, "--count", "8"]);
    let counts: Vec<u64> = metric_points(&sink.requests(), "test.duration")
        .iter()
        .map(MetricPoint::count)
        .collect();
    assert_eq!(counts, [1, 2, 3, 4, 5, 6, 7, 8]);

    // --fail-first: refused requests are written as rejected, then the rest is accepted.
    let failing = Sink::start(&["--fail-first", "1"]);
    let fhttp = format!("127.0.0.1:{}", failing.http_port);
    let fgrpc = format!("127.0.0.1:{}", failing.grpc_port);
    let refused = |args: &[&str]| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_sink/send.py");
        let out = std::process::Command::new(python())
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let said = refused(&["--http", &fhttp, "--count", "1"]);
    assert!(
        said.contains("503") && said.contains("Retry-After"),
        "{said}"
    );
    send(&["--http", &fhttp, "--count", "2"]);
    let said = refused(&["--grpc", &fgrpc, "--count", "3"]);
    assert!(said.contains("UNAVAILABLE"), "{said}");
    send(&["--grpc", &fgrpc, "--count", "4"]);
    let rejected: Vec<(String, u64)> = failing
        .rejected()
        .iter()
        .map(|l| {
            (
                text(&l["rejected"]),
                metric_points(std::slice::from_ref(l), "test.duration")[0].count(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [("503".to_string(), 1), ("UNAVAILABLE".to_string(), 3)]
    );
    let accepted: Vec<u64> = metric_points(&failing.requests(), "test.duration")
        .iter()
        .map(MetricPoint::count)
        .collect();
    assert_eq!(accepted, [2, 4]);

    // rotel: gRPC and HTTP in, gzip; out to the sink over gRPC, then over HTTP.
    for (forward, port, transport) in [
        ("grpc", sink.grpc_port, "grpc"),
        ("http", sink.http_port, "http/protobuf"),
    ] {
        let rotel = Rotel::start_forwarding(port, forward);
        let tag_grpc = format!("rotel-{forward}-grpc");
        let tag_http = format!("rotel-{forward}-http");
        let rgrpc = format!("127.0.0.1:{}", rotel.grpc_port);
        let rhttp = format!("127.0.0.1:{}", rotel.http_port);
        send(&[
            "--grpc", &rgrpc, "--gzip", "--count", "9", "--tag", &tag_grpc,
        ]);
        send(&[
            "--http", &rhttp, "--gzip", "--count", "10", "--tag", &tag_http,
        ]);
        let tagged = |r: &[Value], tag: &str| {
            metric_points(r, "test.duration")
                .into_iter()
                .find(|p| p.attributes.get("test.tag") == Some(&json!(tag)))
        };
        let requests = sink
            .wait_for(WAIT, |r| {
                tagged(r, &tag_grpc).is_some() && tagged(r, &tag_http).is_some()
            })
            .unwrap_or_else(|_| panic!("rotel forwarded nothing\n{}", rotel.log()));
        for (tag, count) in [(&tag_grpc, 9), (&tag_http, 10)] {
            let p = tagged(&requests, tag).unwrap();
            assert_eq!(p.count(), count);
            let line = &requests[p.request];
            assert_eq!(line["transport"], transport, "{line}");
            assert_eq!(line["gzip"], true, "{line}");
            assert!(
                text(&line["headers"]["user-agent"])
                    .to_lowercase()
                    .contains("rotel"),
                "{line}"
            );
        }
    }
}

/// The profiles path: one small CPU profile (`agent export-profile`, the exporter's own
/// transport) reaches the sink over HTTP and gRPC, gzipped, and the sink's independent decoder
/// finds the dictionary (zero entries first) and the sample.
#[test]
fn profiles_reach_the_sink_over_http_and_grpc() {
    let sink = Sink::start(&[]);
    for (protocol, url) in [
        (
            "http/protobuf",
            format!("{}/v1development/profiles", sink.http_endpoint()),
        ),
        ("grpc", sink.grpc_endpoint()),
    ] {
        let out = std::process::Command::new(agent_bin())
            .args(["export-profile", "--url", &url, "--protocol", protocol])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{protocol}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            sink.tail(5)
        );
        let transport = protocol.to_string();
        let requests = sink
            .wait_for(WAIT, |r| {
                r.iter()
                    .any(|x| x["signal"] == "profiles" && x["transport"] == transport.as_str())
            })
            .unwrap_or_else(|_| panic!("no {protocol} profile at the sink{}", sink.tail(5)));
        let got = requests
            .iter()
            .find(|x| x["signal"] == "profiles" && x["transport"] == transport.as_str())
            .unwrap();
        assert_eq!(got["gzip"], true, "{got}");
        let req = &got["request"];
        let strings = &req["dictionary"]["stringTable"];
        assert_eq!(strings[0], "", "zero entry first: {req}");
        let profile = &req["resourceProfiles"][0]["scopeProfiles"][0]["profiles"][0];
        let name = |i: &Value| strings[u64_of(i).unwrap_or(0) as usize].clone();
        assert_eq!(
            name(&profile["sampleType"]["typeStrindex"]),
            "samples",
            "{req}"
        );
        assert_eq!(
            name(&profile["sampleType"]["unitStrindex"]),
            "count",
            "{req}"
        );
        assert_eq!(name(&profile["periodType"]["typeStrindex"]), "cpu", "{req}");
        assert_eq!(
            u64_of(&profile["samples"][0]["values"][0]),
            Some(3),
            "{req}"
        );
        let service = attributes(&req["resourceProfiles"][0]["resource"]["attributes"]);
        assert_eq!(text(&service["service.name"]), "agent", "{req}");
    }
}

/// The spool survives an agent restart: with no collector, one agent spools its exports and
/// stops; a second agent on the same output directory finds them and delivers them, in order,
/// once the collector is up. Every export the first agent made while running arrives (gaps
/// between its points never exceed 2 x interval), and none twice. Bound: the export made at
/// shutdown may be the only one after the last interval tick (at-least-once across a crash
/// is not exercised here: the stop is clean).
#[test]
fn spooled_data_survives_an_agent_restart() {
    require_root();
    let _g = serial();
    let mut sink = Sink::start(&[]);
    sink.stop();
    let out = tempdir();
    // The harness gives each agent its own output dir (--output-dir); the spool is shared.
    let yaml = config(
        &sink.http_endpoint(),
        "http/protobuf",
        "gzip",
        Probe::Network,
    ) + &format!("  spool:\n    dir: {}\n", out.join("spool").display());
    let mut first = start_agent(&yaml, &[]);
    let started = now_unix_nanos();
    thread::sleep(Duration::from_secs(6));
    let spooled_before = delivery(&first, "metrics", "queued_requests").unwrap_or(0);
    assert!(first.stop().success(), "{}", first.stderr());
    let stopped = now_unix_nanos();
    assert!(
        spooled_before >= 4,
        "{spooled_before} requests queued\n{}",
        first.stderr()
    );

    sink.restart();
    let second = start_agent(&yaml, &[]);
    // `agent.uptime` is exported at every interval; the first agent's points are older than
    // its stop.
    let old = |r: &[Value]| -> Vec<u64> {
        let mut t: Vec<u64> = all_metric_points(r)
            .iter()
            .filter(|p| p.name == "agent.uptime")
            .map(MetricPoint::time)
            .filter(|t| *t >= started.saturating_sub(2_000_000_000) && *t <= stopped)
            .collect();
        t.sort_unstable();
        t
    };
    let requests = sink
        .wait_for(WAIT, |r| old(r).len() as u64 >= spooled_before)
        .unwrap_or_else(|r| {
            let all: Vec<u64> = all_metric_points(&r)
                .iter()
                .filter(|p| p.name == "agent.uptime")
                .map(MetricPoint::time)
                .collect();
            panic!(
                "the first agent's {spooled_before} spooled exports (made between {started} and \
                 {stopped}) did not arrive: {:?}; agent.uptime times seen: {all:?}{}",
                old(&r),
                ctx(&second, &sink)
            )
        });
    let times = old(&requests);
    let c = format!("\ntimes {times:?}{}", ctx(&second, &sink));
    let mut distinct = times.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), times.len(), "a point arrived twice{c}");
    assert!(gaps_ok(&times), "a gap in the first agent's exports{c}");
}

/// `config()` for the TLS sink, with an `export.tls` section of these files (none: no
/// section, so the agent trusts the built-in web roots only).
fn tls_config(endpoint: &str, protocol: &str, files: &[(&str, &std::path::Path)]) -> String {
    let mut yaml = config(endpoint, protocol, "gzip", Probe::Syscalls);
    if !files.is_empty() {
        yaml.push_str("  tls:\n");
        for (key, path) in files {
            yaml.push_str(&format!("    {key}: \"{}\"\n", path.display()));
        }
    }
    yaml
}

/// TLS end to end with a private CA: the sink speaks HTTPS and gRPC over TLS with a
/// certificate for `localhost` signed by a throwaway CA, and requires a client certificate
/// signed by it. The agent, given the CA (`export.tls.ca_file`) and its client certificate
/// (`cert_file`, `key_file`), delivers the workload's exact count over http/protobuf, then
/// over gRPC, and every metrics request came over TLS with that client certificate.
#[test]
fn tls_with_a_private_ca_and_client_certificate() {
    require_root();
    let _g = serial();
    let pki = TestPki::new();
    let sink = Sink::start_tls(&pki, true, &[]);
    for protocol in ["http/protobuf", "grpc"] {
        let endpoint = match protocol {
            "grpc" => sink.grpc_endpoint(),
            _ => sink.http_endpoint(),
        };
        assert!(endpoint.starts_with("https://localhost:"), "{endpoint}");
        let yaml = tls_config(
            &endpoint,
            protocol,
            &[
                ("ca_file", &pki.ca),
                ("cert_file", &pki.client_cert),
                ("key_file", &pki.client_key),
            ],
        );
        let agent = start_agent(&yaml, &[]);
        let (pid, requests, point) = exact_count_arrives(&agent, &sink);
        let c = format!("\nover {protocol}{}", ctx(&agent, &sink));
        check_histogram_point(&point, &pid, &c);
        assert_eq!(requests[point.request]["transport"], protocol, "{c}");
        for line in requests
            .iter()
            .filter(|l| l["signal"] == "metrics" && l["transport"] == protocol)
        {
            let shown = || format!("{}{c}", cut_json(line));
            assert_eq!(line["tls"], true, "{}", shown());
            assert_eq!(line["tls_client"], TEST_CLIENT_CN, "{}", shown());
            assert_eq!(line["gzip"], true, "{}", shown());
            assert_eq!(line["headers"]["x-test"], "abc", "{}", shown());
        }
        let status = agent.status();
        let metrics = &status["exporter"]["signals"]["metrics"];
        assert_eq!(metrics["dropped"].as_u64(), Some(0), "{metrics:#}{c}");
    }
}

/// Without `export.tls.ca_file` the agent trusts the built-in web roots only, so it cannot
/// verify the sink's certificate (signed by a private CA): nothing arrives, /status shows a
/// certificate error as the metrics' `last_error` and counts retries (a TLS failure at connect
/// is a retryable transport error), and the agent keeps running. Over http/protobuf and
/// gRPC. Then, with the CA file and no client certificate (the sink asks for none), the
/// same sink receives over both.
#[test]
fn tls_without_the_private_ca_fails_verification_and_retries() {
    require_root();
    let _g = serial();
    let pki = TestPki::new();
    let sink = Sink::start_tls(&pki, false, &[]);
    let endpoint = |protocol: &str| match protocol {
        "grpc" => sink.grpc_endpoint(),
        _ => sink.http_endpoint(),
    };
    let metrics_over = |requests: &[Value], protocol: &str| {
        requests
            .iter()
            .filter(|l| l["signal"] == "metrics" && l["transport"] == protocol)
            .count()
    };
    for protocol in ["http/protobuf", "grpc"] {
        let agent = start_agent(&tls_config(&endpoint(protocol), protocol, &[]), &[]);
        agent.wait_for(
            |a| delivery(a, "metrics", "retried").is_some_and(|n| n >= 2),
            "/status exporter.signals.metrics.retried >= 2",
        );
        let status = agent.status();
        let metrics = &status["exporter"]["signals"]["metrics"];
        let c = format!("\nover {protocol}: {metrics:#}{}", ctx(&agent, &sink));
        let error = metrics["last_error"].as_str().unwrap_or("").to_lowercase();
        eprintln!("{protocol} last_error: {}", metrics["last_error"]);
        assert!(
            error.contains("certificate")
                && (error.contains("unknownissuer") || error.contains("unknown issuer")),
            "last_error must name the unverifiable certificate{c}"
        );
        assert_eq!(metrics["sent_requests"].as_u64(), Some(0), "{c}");
        assert_eq!(metrics_over(&sink.requests(), protocol), 0, "{c}");
        assert!(!agent.exited(), "{c}");
        assert_eq!(agent.get("/readyz").map(|(s, _)| s).ok(), Some(200), "{c}");
    }
    assert!(
        sink.log().contains("TLS handshake with"),
        "the sink saw no failed handshake\n{}",
        sink.tail(3)
    );

    for protocol in ["http/protobuf", "grpc"] {
        let agent = start_agent(
            &tls_config(&endpoint(protocol), protocol, &[("ca_file", &pki.ca)]),
            &[],
        );
        let requests = sink
            .wait_for(WAIT, |r| metrics_over(r, protocol) > 0)
            .unwrap_or_else(|_| {
                panic!(
                    "nothing over {protocol} with the CA file{}",
                    ctx(&agent, &sink)
                )
            });
        let line = requests
            .iter()
            .find(|l| l["signal"] == "metrics" && l["transport"] == protocol)
            .unwrap();
        let c = format!("{}{}", cut_json(line), ctx(&agent, &sink));
        assert_eq!(line["tls"], true, "{c}");
        assert_eq!(
            line["tls_client"],
            Value::Null,
            "no client certificate: {c}"
        );
    }
}
