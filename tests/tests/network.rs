//! Privileged end-to-end tests of the TCP network probe: the real agent, real connections between
//! two network namespaces (`tcp-workload`), and the kernel's own view to compare with (iptables
//! drop counters, `ss -ti`).

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{netns::*, *};
use serde_json::Value;

/// Only the network probe, fast drains so the tests do not wait long; every histogram bound
/// on /metrics (the tests read the 2^19 µs bucket).
const NETWORK: &str = "probes:
  syscalls:
    enabled: false
  network:
    interval: 1s
output:
  interval: 1s
status:
  histogram_buckets: full
";

const HANDSHAKE: &str = "system_network_tcp_handshake_duration_seconds";
const RETRANSMITS: &str = "system_network_tcp_retransmits_total";
const FAILURES: &str = "system_network_tcp_connection_failures_total";

/// The port the servers listen on (each test has namespaces of its own).
const PORT: u16 = 8080;

/// Starts the agent and waits until the probe is attached: connections made before that would
/// not be seen.
fn start_agent() -> Agent {
    start_agent_with("")
}

/// `start_agent` with one more `probes.network` field (e.g. `max_series: 64`).
fn start_agent_with(field: &str) -> Agent {
    let agent = Agent::start(&NETWORK.replace(
        "    interval: 1s\n",
        &format!("    interval: 1s\n    {field}\n"),
    ));
    agent.wait_ready();
    agent
}

/// The (le, cumulative count) buckets of one histogram series, sorted by `le`; checks that
/// they are cumulative, that every finite bound is 2^b µs, and that +Inf equals `_count`.
fn buckets(samples: &[Sample], family: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let name = format!("{family}_bucket");
    let mut b: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| {
            let le = s.labels["le"].as_str();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or_else(|_| panic!("le {le:?}"))
            };
            (le, s.value)
        })
        .collect();
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap());
    assert!(
        b.windows(2).all(|w| w[0].1 <= w[1].1),
        "not cumulative: {b:?}"
    );
    for (le, _) in b.iter().filter(|(le, _)| le.is_finite()) {
        let us = (le * 1e6).round() as u64;
        assert!(us.is_power_of_two(), "le {le} is not 2^b µs: {b:?}");
    }
    let count = find(samples, &format!("{family}_count"), labels).map(|s| s.value);
    assert_eq!(b.last().map(|x| x.0), Some(f64::INFINITY), "{b:?}");
    assert_eq!(b.last().map(|x| x.1), count, "+Inf vs _count: {b:?}");
    b
}

/// The cumulative count of the bucket whose bound is `le` seconds (bounds are printed in
/// decimal; the tolerance only absorbs the formatting of 2^b × 1e-6, buckets are 2x apart).
fn cumulative_at(b: &[(f64, f64)], le: f64) -> f64 {
    b.iter()
        .find(|(bound, _)| ((bound - le) / le).abs() < 1e-9)
        .unwrap_or_else(|| panic!("no bucket le={le}: {b:?}"))
        .1
}

/// Waits for the newest `/status` → `network.recent_connections` close event that `matches`;
/// panics with the events seen and the agent's log when none arrives within 60 s (a bound for
/// slow machines, not a timing assertion).
fn close_event(agent: &Agent, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = agent.status();
        let events = &status["network"]["recent_connections"];
        if let Some(e) = events
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["event"] == "close" && matches(e))
        {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no close event for {what} in {events:#}\nagent log:\n{}",
            agent.stderr()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

fn server(net: &NetPair, v6: bool, port: u16, extra: &[&str]) -> NsProcess {
    let addr = net.server_addr(v6, port).to_string();
    let args: Vec<&str> = ["server", addr.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    NsProcess::start(&net.server, &tcp_workload_bin(), &args)
}

fn client(net: &NetPair, v6: bool, port: u16, extra: &[&str]) -> NsProcess {
    let addr = net.server_addr(v6, port).to_string();
    let args: Vec<&str> = ["connect", addr.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    NsProcess::start(&net.client, &tcp_workload_bin(), &args)
}

#[test]
fn slow_handshakes_are_the_dropped_syns_ipv4() {
    slow_handshakes_are_the_dropped_syns(false);
}

#[test]
fn slow_handshakes_are_the_dropped_syns_ipv6() {
    slow_handshakes_are_the_dropped_syns(true);
}

/// Every third SYN to the server is dropped: each dropped SYN costs the client the initial
/// retransmission timeout (1 s) and counts one retransmit. The slow handshakes in the agent's
/// histogram must be exactly the connects the client itself timed as slow, and the retransmits
/// exactly the packets the DROP rule counted.
fn slow_handshakes_are_the_dropped_syns(v6: bool) {
    require_root();
    let _g = serial();
    let net = NetPair::new(if v6 { "hs6" } else { "hs4" });
    let agent = start_agent();
    let port = PORT.to_string();
    let rule = format!(
        "-A INPUT -p tcp --dport {PORT} --syn -m statistic --mode nth --every 3 --packet 0 -j DROP"
    );
    iptables(&net.server, v6, &rule.split(' ').collect::<Vec<_>>());
    let srv = server(&net, v6, PORT, &[]);
    let spid = srv.pid.to_string();
    let cl = client(
        &net,
        v6,
        PORT,
        &["--count", "12", "--rounds", "1", "--size", "16"],
    );
    let cpid = cl.pid.to_string();
    let lines = cl.finish();

    // `connect <i> <seconds> <local_port>`: a handshake whose SYN was dropped waits for the
    // initial RTO (1 s); one that was not takes micro- to milliseconds on a veth. Nothing lands
    // near 0.5 s, so the client's clock and the kernel's bucket bound (0.524288 s) agree.
    let secs: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("connect "))
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(secs.len(), 12, "{lines:?}");
    let echoed = lines
        .iter()
        .filter(|l| l.starts_with("bytes ") && l.ends_with(" sent=16 received=16"))
        .count();
    assert_eq!(echoed, 12, "{lines:?}");
    let slow = secs.iter().filter(|s| **s > 0.5).count() as f64;
    let drops = drop_rule_packets(&net.server, v6);
    // Without a drop the test would prove nothing about slow handshakes or retransmits.
    assert!(
        drops > 0 && slow > 0.0,
        "drops {drops}, slow {slow}: {lines:?}"
    );
    // The fixture's premise, from the client namespace's own counters: every retransmission
    // was of a dropped SYN (nothing else was lost on the veth).
    assert_eq!(nstat(&net.client, "TcpRetransSegs"), drops, "{lines:?}");

    let peer = net.server_ip(v6).to_string();
    let client_series = [
        ("process_pid", cpid.as_str()),
        ("process_executable_name", "tcp-workload"),
        ("network_tcp_handshake_role", "client"),
        ("network_type", family(v6)),
        ("network_transport", "tcp"),
        ("network_peer_address", peer.as_str()),
        ("network_peer_port", port.as_str()),
    ];
    let count = format!("{HANDSHAKE}_count");
    let samples = assert_eventually(&agent, &count, &client_series, 12.0);
    let b = buckets(&samples, HANDSHAKE, &client_series);
    let fast = cumulative_at(&b, 0.524288); // 2^19 µs
    assert_eq!(
        12.0 - fast,
        slow,
        "handshakes over 2^19 µs vs client-timed connects over 0.5 s {secs:?}: {b:?}\nagent log:\n{}",
        agent.stderr()
    );
    assert_eventually(&agent, RETRANSMITS, &client_series, drops as f64);

    // The server accepted all 12 (dropped SYNs never reach TCP), attributed to the listener.
    let client_ip = net.client_ip(v6).to_string();
    let server_series = [
        ("process_pid", spid.as_str()),
        ("process_executable_name", "tcp-workload"),
        ("network_tcp_handshake_role", "server"),
        ("network_type", family(v6)),
        ("network_transport", "tcp"),
        ("network_peer_address", client_ip.as_str()),
        ("network_local_port", port.as_str()),
    ];
    let samples = assert_eventually(&agent, &count, &server_series, 12.0);
    buckets(&samples, HANDSHAKE, &server_series);
}

/// The RTT the agent reports when a connection closes is the kernel's smoothed RTT, which `ss`
/// shows for the idle connection just before; the byte counts are exact, counted as the kernel
/// (and `ss`, `tcplife`) count them: `tcpi_bytes_acked` includes the SYN and the FIN sequence
/// numbers, `tcpi_bytes_received` the peer's FIN.
#[test]
fn rtt_and_bytes_agree_with_ss() {
    require_root();
    let _g = serial();
    let net = NetPair::new("rtt");
    let agent = start_agent();
    let _srv = server(&net, false, PORT, &[]);
    let mut cl = client(
        &net,
        false,
        PORT,
        &["--count", "1", "--rounds", "50", "--size", "1000", "--hold"],
    );
    let holding = cl.expect("holding ");
    let local_port: u16 = holding["holding ".len()..].parse().unwrap();
    // Idle: every request was answered (and so acked), nothing is in flight, the RTT is final.
    let ss_rtt = ss_rtt_us(&net.client, local_port)
        .unwrap_or_else(|| panic!("ss shows no established connection on port {local_port}"));
    cl.release();
    let pid = cl.pid;
    let lines = cl.finish();
    assert!(
        lines.contains(&"bytes 0 sent=50000 received=50000".to_string()),
        "{lines:?}"
    );

    let e = close_event(&agent, &format!("pid {pid} port {local_port}"), |e| {
        e["pid"] == pid && e["local_port"] == local_port
    });
    let ctx = format!("{e:#}\nagent log:\n{}", agent.stderr());
    assert_eq!(e["rtt_us"], ss_rtt, "ss said {ss_rtt} µs: {ctx}");
    assert_eq!(e["bytes_sent"], 50_000 + 2, "payload + SYN + FIN: {ctx}");
    assert_eq!(e["bytes_received"], 50_000 + 1, "payload + FIN: {ctx}");
    assert_eq!(e["role"], "client", "{ctx}");
    assert_eq!(e["family"], "ipv4", "{ctx}");
    assert_eq!(e["comm"], "tcp-workload", "{ctx}");
    assert_eq!(
        e["local_address"],
        net.client_ip(false).to_string(),
        "{ctx}"
    );
    assert_eq!(e["peer_address"], net.server_ip(false).to_string(), "{ctx}");
    assert_eq!(e["peer_port"], PORT, "{ctx}");
    assert!(e["error_type"].is_null(), "{ctx}");
    assert!(e["handshake_us"].is_u64(), "{ctx}");
    assert!(e["duration_us"].as_u64() > Some(0), "{ctx}");
}

/// A connect to a port nobody listens on: the server's kernel answers RST, connect() fails with
/// ECONNREFUSED, and the agent counts exactly one `refused` failure.
#[test]
fn refused_connect_counts_a_refused_failure() {
    require_root();
    let _g = serial();
    let net = NetPair::new("ref");
    let agent = start_agent();
    let closed = 9u16;
    let cl = client(&net, false, closed, &["--count", "1"]);
    let pid = cl.pid;
    let lines = cl.finish();
    assert!(
        lines.contains(&"error 0 ConnectionRefused 111".to_string()),
        "{lines:?}"
    );

    let p = pid.to_string();
    let peer = net.server_ip(false).to_string();
    let port = closed.to_string();
    let series = [
        ("process_pid", p.as_str()),
        ("error_type", "refused"),
        ("network_tcp_handshake_role", "client"),
        ("network_type", "ipv4"),
        ("network_peer_address", peer.as_str()),
        ("network_peer_port", port.as_str()),
    ];
    assert_eventually(&agent, FAILURES, &series, 1.0);
    let e = close_event(&agent, &format!("pid {pid}"), |e| {
        e["pid"] == pid && e["peer_port"] == closed
    });
    assert_eq!(
        e["error_type"],
        "refused",
        "{e:#}\nagent log:\n{}",
        agent.stderr()
    );
}

/// A server that aborts the connection (RST after the first request) is a `reset` failure; a
/// connect whose SYNs are all dropped is a `timeout` once the kernel gives up (after ~3 s with
/// `tcp_syn_retries=1`, instead of ~2 min with the default 6).
#[test]
fn reset_and_timeout_failures() {
    require_root();
    let _g = serial();
    let net = NetPair::new("rst");
    let agent = start_agent();
    let peer = net.server_ip(false).to_string();

    // Reset.
    let reset_port = PORT + 1;
    let _srv = server(&net, false, reset_port, &["--reset"]);
    let cl = client(
        &net,
        false,
        reset_port,
        &["--count", "1", "--rounds", "1", "--size", "16"],
    );
    let pid = cl.pid.to_string();
    let lines = cl.finish();
    assert!(
        lines.contains(&"error 0 ConnectionReset 104".to_string()),
        "{lines:?}"
    );
    let port = reset_port.to_string();
    let series = [
        ("process_pid", pid.as_str()),
        ("error_type", "reset"),
        ("network_tcp_handshake_role", "client"),
        ("network_peer_address", peer.as_str()),
        ("network_peer_port", port.as_str()),
    ];
    assert_eventually(&agent, FAILURES, &series, 1.0);

    // Timeout.
    let timeout_port = PORT + 2;
    let port = timeout_port.to_string();
    sysctl(&net.client, "net.ipv4.tcp_syn_retries", "1");
    let rule = format!("-A INPUT -p tcp --dport {timeout_port} --syn -j DROP");
    iptables(&net.server, false, &rule.split(' ').collect::<Vec<_>>());
    let retransmitted_before = nstat(&net.client, "TcpRetransSegs");
    let cl = client(&net, false, timeout_port, &["--count", "1"]);
    let pid = cl.pid.to_string();
    let lines = cl.finish();
    assert!(
        lines.contains(&"error 0 TimedOut 110".to_string()),
        "{lines:?}"
    );
    // Every SYN sent was dropped: the original and each retransmission (how many the kernel
    // sends before giving up depends on its version; 6.18 sends three in all).
    let syn_retransmits = nstat(&net.client, "TcpRetransSegs") - retransmitted_before;
    assert_eq!(drop_rule_packets(&net.server, false), syn_retransmits + 1);
    let series = [
        ("process_pid", pid.as_str()),
        ("error_type", "timeout"),
        ("network_tcp_handshake_role", "client"),
        ("network_peer_address", peer.as_str()),
        ("network_peer_port", port.as_str()),
    ];
    assert_eventually(&agent, FAILURES, &series, 1.0);
    // The SYN retransmissions of the failed connect are retransmits of the same client series.
    let client_series: Vec<(&str, &str)> = series
        .into_iter()
        .filter(|(k, _)| *k != "error_type")
        .collect();
    assert_eventually(&agent, RETRANSMITS, &client_series, syn_retransmits as f64);
}

/// Sum of `name` over every series matching `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// More series than `max_series`: the kernel adds what does not fit into the "other" series
/// and counts the folds, so no failure is lost. 70 processes (one series each) are refused once
/// each with `max_series: 64`: their series plus "other" must hold exactly 70 refusals, some
/// of them folded.
#[test]
fn series_beyond_max_series_fold_into_other_without_loss() {
    require_root();
    let _g = serial();
    let net = NetPair::new("fold");
    let agent = start_agent_with("max_series: 64");
    // All at once, so the map fills before a drain can free the series of exited clients.
    let clients: Vec<NsProcess> = (0..70)
        .map(|_| client(&net, false, 9, &["--count", "1"]))
        .collect();
    let pids: Vec<String> = clients.iter().map(|c| c.pid.to_string()).collect();
    for c in clients {
        c.finish();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let samples = agent.metrics();
        let ours: f64 = pids
            .iter()
            .map(|p| {
                sum(
                    &samples,
                    FAILURES,
                    &[("process_pid", p), ("error_type", "refused")],
                )
            })
            .sum();
        let other = sum(
            &samples,
            FAILURES,
            &[("agent_series_folded", "other"), ("error_type", "refused")],
        );
        let folded = agent.status()["maps"]["NET_SERIES"]["detail"]["series_folded"]
            .as_u64()
            .unwrap_or(0);
        if (ours + other == 70.0 && folded > 0) || Instant::now() > deadline {
            assert_eq!(
                ours + other,
                70.0,
                "ours {ours} + other {other}\n{}",
                agent.stderr()
            );
            assert!(other >= 1.0, "nothing folded into other");
            assert!(folded > 0, "no fold counted");
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Connection events are rate-bounded per CPU: with `events_per_second: 1`, each CPU sends at
/// most one event per one-second window, so a burst spanning T seconds lets at most
/// (ceil(T) + 1) x CPUs events through (for every process together); every event not sent is
/// counted. The histograms do not depend on events: all 30 handshakes are measured.
#[test]
fn connection_events_are_rate_bounded_and_drops_counted() {
    require_root();
    let _g = serial();
    let net = NetPair::new("rate");
    let agent = start_agent_with("events_per_second: 1");
    let _srv = server(&net, false, PORT, &[]);
    let started = Instant::now();
    let cl = client(&net, false, PORT, &["--count", "30"]);
    let pid = cl.pid;
    cl.finish();
    let windows = started.elapsed().as_secs_f64().ceil() as usize + 1;
    // The 30 handshakes are all measured: the histogram does not depend on events.
    let p = pid.to_string();
    assert_eventually(
        &agent,
        &format!("{HANDSHAKE}_count"),
        &[
            ("process_pid", p.as_str()),
            ("network_tcp_handshake_role", "client"),
        ],
        30.0,
    );
    let status = agent.status();
    let ours = status["network"]["recent_connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pid"] == pid)
        .count();
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        ours <= windows * cpus,
        "{ours} events passed, more than {windows} windows x {cpus} CPUs"
    );
    let limited = status["maps"]["NET_EVENTS"]["detail"]["events_rate_limited"]
        .as_u64()
        .unwrap_or(0);
    assert!(limited > 0, "{status:#}");
    assert_eq!(
        status["maps"]["NET_EVENTS"]["lost"].as_u64(),
        Some(
            limited
                + status["maps"]["NET_EVENTS"]["detail"]["events_ringbuf_full"]
                    .as_u64()
                    .unwrap_or(0)
        ),
    );
}

/// `aggregation: port` and `process` cut the series key in the kernel: the client's handshakes
/// land in one series without the peer address (port) or without any peer attribute (process),
/// and all 3 are counted.
#[test]
fn aggregation_levels_drop_peer_attributes() {
    require_root();
    let _g = serial();
    for (mode, present, absent) in [
        (
            "port",
            &["network_peer_port"][..],
            &["network_peer_address"][..],
        ),
        (
            "process",
            &[][..],
            &["network_peer_address", "network_peer_port"][..],
        ),
    ] {
        let net = NetPair::new(&format!("agg{}", &mode[..2]));
        let agent = start_agent_with(&format!("aggregation: {mode}"));
        let _srv = server(&net, false, PORT, &[]);
        let cl = client(&net, false, PORT, &["--count", "3"]);
        let p = cl.pid.to_string();
        cl.finish();
        let labels = [
            ("process_pid", p.as_str()),
            ("network_tcp_handshake_role", "client"),
        ];
        let samples = assert_eventually(&agent, &format!("{HANDSHAKE}_count"), &labels, 3.0);
        let ours: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == format!("{HANDSHAKE}_count") && s.labels.get("process_pid") == Some(&p)
            })
            .collect();
        assert_eq!(ours.len(), 1, "{mode}: one series expected: {ours:?}");
        for l in present {
            assert!(
                ours[0].labels.contains_key(*l),
                "{mode}: {l} missing: {ours:?}"
            );
        }
        for l in absent {
            assert!(
                !ours[0].labels.contains_key(*l),
                "{mode}: {l} present: {ours:?}"
            );
        }
    }
}

/// The server-side handshake count of one process's series (role server, every peer).
fn server_handshakes(agent: &Agent, pid: u32) -> f64 {
    let p = pid.to_string();
    sum(
        &agent.metrics(),
        &format!("{HANDSHAKE}_count"),
        &[
            ("process_pid", p.as_str()),
            ("network_tcp_handshake_role", "server"),
        ],
    )
}

/// Two processes listen on one port with `SO_REUSEPORT`; the kernel spreads 40 connections
/// between their sockets by a hash of each connection. Each server's handshakes are exactly
/// the connections it accepted, as it counted them itself (not all 40 to whoever listened
/// last, as a listener table keyed by port would say).
#[test]
fn reuseport_connections_belong_to_the_socket_that_took_them() {
    require_root();
    let _g = serial();
    let net = NetPair::new("nbrp");
    let agent = start_agent();
    let mut a = server(&net, false, PORT, &["--reuseport"]);
    let mut b = server(&net, false, PORT, &["--reuseport"]);
    let cl = client(&net, false, PORT, &["--count", "40"]);
    let connected = cl
        .finish()
        .iter()
        .filter(|l| l.starts_with("connect "))
        .count();
    assert_eq!(connected, 40);
    // Each server prints one `accepted` line per connection it took.
    let (mut took_a, mut took_b) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while took_a + took_b < 40 {
        assert!(
            Instant::now() < deadline,
            "servers reported {took_a} + {took_b} accepts"
        );
        let count = |p: &mut NsProcess| {
            p.ready_lines()
                .iter()
                .filter(|l| l.starts_with("accepted "))
                .count()
        };
        took_a += count(&mut a);
        took_b += count(&mut b);
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(took_a + took_b, 40);
    // Odds that one socket takes all 40 by the hash: 2^-39.
    assert!(took_a > 0 && took_b > 0, "{took_a} / {took_b}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (got_a, got_b) = (
            server_handshakes(&agent, a.pid),
            server_handshakes(&agent, b.pid),
        );
        if (got_a, got_b) == (took_a as f64, took_b as f64) || Instant::now() > deadline {
            assert_eq!(
                (got_a, got_b),
                (took_a as f64, took_b as f64),
                "server handshakes of pids {} / {} vs the connections each accepted\n{}",
                a.pid,
                b.pid,
                agent.stderr()
            );
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Every OTLP log record the agent wrote to `<output>/logs.jsonl` so far, as attribute maps
/// (string, int and bool values as text).
fn log_records(agent: &Agent) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(agent.dir.join("out/logs.jsonl")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("logs.jsonl line is JSON");
        for rl in v["resourceLogs"].as_array().into_iter().flatten() {
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for r in sl["logRecords"].as_array().into_iter().flatten() {
                    let attrs = r["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            let val = &a["value"];
                            let text = val["stringValue"]
                                .as_str()
                                .map(str::to_string)
                                .or_else(|| val["intValue"].as_str().map(str::to_string))
                                .or_else(|| val["intValue"].as_i64().map(|i| i.to_string()))
                                .unwrap_or_else(|| val.to_string());
                            (a["key"].as_str().unwrap_or_default().to_string(), text)
                        })
                        .collect();
                    out.push(attrs);
                }
            }
        }
    }
    out
}

/// A dual-stack server (`[::]:PORT`, `IPV6_V6ONLY` off) takes IPv4 clients; one client process
/// connects to the server's IPv4 address and to its IPv4-mapped form (`::ffff:a.b.c.d`) in
/// turn. The kernel speaks IPv4 on the wire for both, so both sides are reported as IPv4 with
/// the plain dotted address: one client series (all 4 handshakes) and one server series, none
/// IPv6, in /metrics, /status and the connection log records alike.
#[test]
fn dual_stack_ipv4_is_reported_as_ipv4() {
    require_root();
    let _g = serial();
    let net = NetPair::new("nbds");
    let agent = start_agent();
    let any = format!("[::]:{PORT}");
    let srv = NsProcess::start(&net.server, &tcp_workload_bin(), &["server", &any]);
    let server_v4 = net.server_ip(false);
    let IpAddr::V4(v4) = server_v4 else {
        unreachable!()
    };
    let mapped = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), PORT).to_string();
    let plain = SocketAddr::new(server_v4, PORT).to_string();
    let cl = NsProcess::start(
        &net.client,
        &tcp_workload_bin(),
        &[
            "connect", &plain, "--count", "4", "--rounds", "1", "--size", "16", "--also", &mapped,
        ],
    );
    let (cpid, spid) = (cl.pid, srv.pid);
    let lines = cl.finish();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("connect ")).count(),
        4,
        "{lines:?}"
    );
    let (c, s) = (cpid.to_string(), spid.to_string());
    let (server_ip, client_ip) = (server_v4.to_string(), net.client_ip(false).to_string());
    let port = PORT.to_string();
    let count = format!("{HANDSHAKE}_count");
    assert_eventually(
        &agent,
        &count,
        &[
            ("process_pid", c.as_str()),
            ("network_tcp_handshake_role", "client"),
            ("network_type", "ipv4"),
            ("network_peer_address", server_ip.as_str()),
            ("network_peer_port", port.as_str()),
        ],
        4.0,
    );
    let samples = assert_eventually(
        &agent,
        &count,
        &[
            ("process_pid", s.as_str()),
            ("network_tcp_handshake_role", "server"),
            ("network_type", "ipv4"),
            ("network_peer_address", client_ip.as_str()),
            ("network_local_port", port.as_str()),
        ],
        4.0,
    );
    // No second (IPv6) series for either process, in any network family (detection's
    // agent_anomaly_score has the processes too, without network attributes).
    let ours: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.name.starts_with("system_network_"))
        .filter(|x| [&c, &s].contains(&x.labels.get("process_pid").unwrap_or(&String::new())))
        .collect();
    assert!(!ours.is_empty());
    for x in &ours {
        assert_eq!(x.labels["network_type"], "ipv4", "{x:?}");
        assert!(!x.labels["network_peer_address"].contains(':'), "{x:?}");
    }
    assert_eq!(
        ours.iter().filter(|x| x.name == count).count(),
        2,
        "one client and one server series: {ours:#?}"
    );
    // /status: every open and close event of both processes, IPv4 on both ends.
    let status = agent.status();
    let events: Vec<&Value> = status["network"]["recent_connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pid"] == cpid || e["pid"] == spid)
        .collect();
    assert!(events.len() >= 8, "{events:#?}");
    for e in &events {
        assert_eq!(e["family"], "ipv4", "{e:#}");
        let (local, peer) = (e["local_address"].as_str(), e["peer_address"].as_str());
        let want = if e["pid"] == cpid {
            (client_ip.as_str(), server_ip.as_str())
        } else {
            (server_ip.as_str(), client_ip.as_str())
        };
        assert_eq!((local, peer), (Some(want.0), Some(want.1)), "{e:#}");
    }
    // The connection log records say the same (written every output interval, 1 s here).
    agent.wait_for(
        |a| {
            log_records(a)
                .iter()
                .filter(|r| r.get("process.pid") == Some(&c))
                .count()
                >= 8
        },
        "8 log records of the client",
    );
    for r in log_records(&agent)
        .iter()
        .filter(|r| [Some(&c), Some(&s)].contains(&r.get("process.pid")))
    {
        assert_eq!(
            r.get("network.type").map(String::as_str),
            Some("ipv4"),
            "{r:?}"
        );
        assert!(
            !r.get("network.peer.address").unwrap().contains(':'),
            "{r:?}"
        );
    }
}

/// A free pid well above the ones in use: where a test can place a process of its own.
fn free_pid() -> u32 {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (0..1000)
        .map(|i| (last + 5000 + i * 7) % max)
        .find(|p| *p > 300 && !std::path::Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

/// pid reuse: `nb-alpha` makes 3 connections and exits; `nb-beta`, started on the same pid,
/// makes 5 to the same server. The series the agent keeps for alpha stays alpha's (its name and
/// its 3); beta's is its own (5), not 8 under beta's name.
#[test]
fn pid_reuse_does_not_rename_or_merge_old_series() {
    require_root();
    let _g = serial();
    let net = NetPair::new("nbpr");
    let agent = start_agent();
    let _srv = server(&net, false, PORT, &[]);
    // Two names for the same program: the name is what the agent reports.
    let dir = tempdir();
    let (alpha, beta) = (dir.join("nb-alpha"), dir.join("nb-beta"));
    std::fs::copy(tcp_workload_bin(), &alpha).unwrap();
    std::fs::copy(tcp_workload_bin(), &beta).unwrap();
    let addr = net.server_addr(false, PORT).to_string();
    let pid = free_pid();
    let a = NsProcess::start_on_pid(
        &net.client,
        &alpha,
        &["connect", &addr, "--count", "3"],
        pid,
    );
    a.finish();
    let p = pid.to_string();
    let peer = net.server_ip(false).to_string();
    let series = |exe: &'static str| {
        [
            ("process_pid", p.clone()),
            ("process_executable_name", exe.to_string()),
            ("network_tcp_handshake_role", "client".to_string()),
            ("network_peer_address", peer.clone()),
        ]
    };
    let labels = |s: &[(&'static str, String); 4]| -> Vec<(&'static str, String)> { s.to_vec() };
    let count = format!("{HANDSHAKE}_count");
    let alpha_series = labels(&series("nb-alpha"));
    let alpha_ref: Vec<(&str, &str)> = alpha_series.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eventually(&agent, &count, &alpha_ref, 3.0);
    // The agent drains every second: 3 s lets at least two drains pass after alpha's exit, the
    // first of which finds it dead and deletes its kernel entry (an ordering wait, not a timing
    // assertion; a reuse within one interval is the marked case of the unit tests).
    thread::sleep(Duration::from_secs(3));
    let b = NsProcess::start_on_pid(&net.client, &beta, &["connect", &addr, "--count", "5"], pid);
    b.finish();
    let beta_series = labels(&series("nb-beta"));
    let beta_ref: Vec<(&str, &str)> = beta_series.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let samples = assert_eventually(&agent, &count, &beta_ref, 5.0);
    assert_eq!(
        find(&samples, &count, &alpha_ref).map(|s| s.value),
        Some(3.0),
        "alpha's series after beta ran on its pid\n{}",
        agent.stderr()
    );
    let reused = agent.status()["maps"]["NET_SERIES"]["detail"]["pid_reused"].as_u64();
    assert!(reused >= Some(1), "pid_reused {reused:?}");
}

/// Two servers already listening when the agent starts, on one port with `SO_REUSEPORT`: the
/// kernel never saw their listen(), so the agent finds them in /proc and writes each owner on
/// its own socket. Each one's handshakes are attributed to it, exactly what it accepted.
#[test]
fn listeners_from_before_the_start_are_attributed_per_socket() {
    require_root();
    let _g = serial();
    let net = NetPair::new("nbsd");
    let mut a = server(&net, false, PORT, &["--reuseport"]);
    let mut b = server(&net, false, PORT, &["--reuseport"]);
    let agent = start_agent();
    // Reported with the probe's first drain.
    agent.wait_for(
        |a| a.status()["maps"]["NET_SERIES"]["detail"]["listeners_seeded"].is_u64(),
        "the network probe's first report",
    );
    let seeded = agent.status()["maps"]["NET_SERIES"]["detail"]["listeners_seeded"].as_u64();
    assert!(seeded >= Some(2), "listeners_seeded {seeded:?}");
    client(&net, false, PORT, &["--count", "20"]).finish();
    let (mut took_a, mut took_b) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while took_a + took_b < 20 {
        assert!(Instant::now() < deadline, "{took_a} + {took_b} accepts");
        let count = |p: &mut NsProcess| {
            p.ready_lines()
                .iter()
                .filter(|l| l.starts_with("accepted "))
                .count()
        };
        took_a += count(&mut a);
        took_b += count(&mut b);
        thread::sleep(Duration::from_millis(50));
    }
    let want = (took_a as f64, took_b as f64);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = (
            server_handshakes(&agent, a.pid),
            server_handshakes(&agent, b.pid),
        );
        if got == want || Instant::now() > deadline {
            assert_eq!(got, want, "{}", agent.stderr());
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
}
