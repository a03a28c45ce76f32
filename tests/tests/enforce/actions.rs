//! The actions not covered above, each in cgroups (and a listener) of its own. Serial like
//! the rest: run in parallel (four agents and their storms on 2 CPUs), rate limits and TTLs of
//! the other tests went wrong in one run — not understood yet, so not risked: `kill`, `cpu_limit` (v1
//! `cpu.cfs_quota_us` on this hybrid host), `alert` with a webhook and its OTLP record, a
//! signal sent by the kernel at a named syscall, an ingress limit, an egress packet limit,
//! `persist: true` across an agent restart, and `degrade`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::*;

/// Waits up to `secs` for `child` to exit; its status.
fn wait_exit(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `kill` (v2 `cgroup.kill`): the storm and a quiet process of the same cgroup both end with
/// SIGKILL; the cgroup is empty. Nothing to undo: no journal entry, no expiry.
#[test]
fn kill_ends_every_process_of_the_cgroup() {
    require_root();
    let _g = serial();
    let cg = Cgroup::new("kill");
    let agent = Agent::start(&config(
        false,
        &format!(
            "enforcement:\n  mode: enforce\n  rules:\n    - name: kill-storm\n      \
             when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{cgroup: {}}}\n      action: {{type: kill}}\n",
            cg.path
        ),
    ));
    agent.wait_ready();
    let mut quiet = cg.spawn(Command::new("sleep").arg("1000"));
    let mut storm = Storm::start_in("enfkill", &cg);
    let taken = wait_decision(&agent, "kill-storm", "taken");
    assert!(
        taken["detail"].as_str().unwrap().contains("cgroup.kill"),
        "{taken}"
    );
    assert!(
        taken.get("journal_id").is_none(),
        "kill is not undone: {taken}"
    );
    for c in [&mut storm.child, &mut quiet] {
        let s = wait_exit(c, 5).unwrap_or_else(|| panic!("still running after {taken}"));
        assert_eq!(s.signal(), Some(libc::SIGKILL), "{s:?}");
    }
    let procs = std::fs::read_to_string(cg.dir.join("cgroup.procs")).unwrap();
    assert!(procs.trim().is_empty(), "left in the cgroup: {procs}");
}

/// The v1 `cpu` hierarchy's mount point (this host: `/sys/fs/cgroup/cpu`).
fn cpu_v1_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut f = post.split_whitespace();
        (f.next()? == "cgroup" && f.nth(1)?.split(',').any(|o| o == "cpu"))
            .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
    })
}

/// User + system CPU ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// `cpu_limit` on a hybrid host: the v1 `cpu.cfs_quota_us` of the storm's own cgroup is set to
/// 0.2 CPU and the storm's usage over 3 s stays at most the quota plus 25 % (the kernel's
/// 5 ms bandwidth slices and 10 ms tick accounting on a 3 s window; a loaded host can only
/// lower the figure, so the lower bound is only "still runs"); the previous quota (-1) is
/// written back at the TTL.
#[test]
fn cpu_limit_holds_the_quota_then_restores_it() {
    require_root();
    let _g = serial();
    let Some(v1) = cpu_v1_root() else {
        eprintln!("no v1 cpu hierarchy: this host has cpu.max (covered by unit tests)");
        return;
    };
    let cg = Cgroup::new("cpu");
    let v1_dir = v1.join(cg.path.trim_start_matches('/'));
    std::fs::create_dir_all(&v1_dir).unwrap();
    struct RmDir(PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            for _ in 0..50 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _rm = RmDir(v1_dir.clone());
    let period: f64 = std::fs::read_to_string(v1_dir.join("cpu.cfs_period_us"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let before = std::fs::read_to_string(v1_dir.join("cpu.cfs_quota_us")).unwrap();
    let agent = Agent::start(&config(
        false,
        &format!(
            "enforcement:\n  mode: enforce\n  rules:\n    - name: cpu-storm\n      \
             when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{cgroup: {}}}\n      action: {{type: cpu_limit, cpus: 0.2}}\n      ttl: 10s\n",
            cg.path
        ),
    ));
    agent.wait_ready();
    let (mut cmd, _dir) = Storm::command("enfcpu");
    let v1_procs = v1_dir.join("cgroup.procs");
    // SAFETY: as `Cgroup::spawn` (the child writes its own pid to the v1 cgroup, then `spawn`
    // below moves it to the v2 one).
    unsafe {
        cmd.pre_exec(move || std::fs::write(&v1_procs, "0"));
    }
    let storm = Storm {
        child: cg.spawn(&mut cmd),
        _dir,
    };
    let taken = wait_decision(&agent, "cpu-storm", "taken");
    let quota = std::fs::read_to_string(v1_dir.join("cpu.cfs_quota_us")).unwrap();
    assert_eq!(
        quota.trim(),
        ((0.2 * period).round() as u64).to_string(),
        "{taken}"
    );
    let (t0, c0) = (Instant::now(), cpu_ticks(storm.pid()));
    thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(storm.pid()) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    eprintln!("storm CPU under a 0.2 CPU quota: {used:.3}");
    assert!(used <= 0.2 * 1.25 && used > 0.02, "{used} CPU: {taken}");
    // The storm ends before the TTL: still running, it would trigger the rule again at the
    // first drain after the undo (the cooldown, = TTL, allows it at once), and the quota read
    // below would race that new limit.
    drop(storm);
    let undone = wait_undone(&agent, &taken);
    assert_undone_at_ttl(&taken, &undone, 10);
    let after = std::fs::read_to_string(v1_dir.join("cpu.cfs_quota_us")).unwrap();
    assert_eq!(after.trim(), before.trim(), "restored: {undone}");
}

/// A one-shot HTTP listener: the first request's body, answered 200.
fn webhook() -> (u16, mpsc::Receiver<(String, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let mut s = s;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let _ = tx.send((head, String::from_utf8(body).unwrap()));
    });
    (port, rx)
}

/// `alert` with a webhook: the test's listener receives the decision as a JSON POST (rule,
/// outcome, target pid), and the OTLP sink the same decision as an `agent.decision` record.
#[test]
fn alert_posts_the_decision_and_exports_its_log_record() {
    require_root();
    let _g = serial();
    let sink = Sink::start(&[]);
    let (port, rx) = webhook();
    let agent = Agent::start(&config(
        false,
        &format!(
            "export:\n  endpoint: \"{}\"\n  interval: 1s\nenforcement:\n  mode: enforce\n  rules:\n    \
             - name: alert-storm\n      when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{executable: enfalert}}\n      \
             action: {{type: alert, webhook: \"http://127.0.0.1:{port}/hook\"}}\n",
            sink.http_endpoint()
        ),
    ));
    agent.wait_ready();
    let storm = Storm::start("enfalert");
    let taken = wait_decision(&agent, "alert-storm", "taken");
    let (head, body) = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no webhook POST after {taken}"));
    assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let posted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(posted["rule"], "alert-storm", "{posted}");
    assert_eq!(posted["outcome"], "taken", "{posted}");
    assert_eq!(posted["target"]["pid"], storm.pid(), "{posted}");
    assert_eq!(posted["seq"], taken["seq"], "{posted}");
    let requests = sink
        .wait_for(Duration::from_secs(60), |r| {
            log_records(r).iter().any(|x| {
                x.event_name == "agent.decision"
                    && x.attributes.get("agent.decision.rule").map(text).as_deref()
                        == Some("alert-storm")
            })
        })
        .unwrap_or_else(|_| panic!("no agent.decision record for alert-storm"));
    let records = log_records(&requests);
    let rec = records
        .iter()
        .find(|x| {
            x.attributes.get("agent.decision.rule").map(text).as_deref() == Some("alert-storm")
        })
        .unwrap();
    assert_eq!(
        rec.attributes.get("process.pid").map(text),
        Some(storm.pid().to_string())
    );
    assert_eq!(
        rec.attributes
            .get("agent.decision.action")
            .map(text)
            .as_deref(),
        Some("alert")
    );
}

/// A rule naming a syscall stops the storm from the kernel (`bpf_send_signal` at its next
/// `getppid`): the decision says the kernel sent it, its latency is the kernel's send time;
/// state `T`, then SIGCONT at the TTL.
#[test]
fn a_rule_naming_a_syscall_signals_from_the_kernel() {
    require_root();
    let _g = serial();
    let agent = Agent::start(&config(
        false,
        "enforcement:\n  mode: enforce\n  rules:\n    - name: ksig\n      \
         when: {signal: process.syscall.rate, syscall: getppid, above: 50000, for: 1}\n      \
         scope: {executable: enfksig}\n      action: {type: signal, signal: SIGSTOP}\n      ttl: 6s\n",
    ));
    agent.wait_ready();
    let storm = Storm::start("enfksig");
    let taken = wait_decision(&agent, "ksig", "taken");
    let detail = taken["detail"].as_str().unwrap();
    assert!(
        detail.contains("the kernel sent signal 19") && detail.contains("getppid"),
        "{taken}"
    );
    assert_eq!(taken["target"]["pid"], storm.pid(), "{taken}");
    let latency = taken["latency_seconds"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&latency), "{taken}");
    assert!(stopped(storm.pid(), true), "stopped: {taken}");
    let undone = wait_undone(&agent, &taken);
    assert_undone_at_ttl(&taken, &undone, 6);
    assert!(stopped(storm.pid(), false), "continued after {undone}");
}

/// The ingress limit: a receiver in the cgroup reads a TCP transfer sent from outside it.
/// Ingress can only drop (TCP recovers by retransmission), so the bound is looser than
/// egress's: between 50 % and 110 % of the rate.
fn ingress_throughput(cg: &Cgroup, secs: u64) -> f64 {
    let port = free_port();
    let script = format!(
        "import socket,time\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         l.bind(('127.0.0.1',{port}))\nl.listen(1)\nprint('ready',flush=True)\nc,_=l.accept()\n\
         t0=None\nb0=0\ntot=0\nlast=0\nwhile True:\n  d=c.recv(1<<20)\n  if not d: break\n  now=time.time()\n  \
         tot+=len(d)\n  last=now\n  if t0 is None: t0=now\n  if b0==0 and now-t0>=1: (t1,b0)=(now,tot)\n\
         print((tot-b0)/(last-t1),flush=True)\n"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]).stdout(Stdio::piped());
    let mut child = cg.spawn(&mut cmd);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let buf = vec![b'x'; 65536];
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        s.write_all(&buf).unwrap();
    }
    drop(s);
    line.clear();
    out.read_line(&mut line).unwrap();
    child.wait().unwrap();
    line.trim().parse().unwrap()
}

/// An ingress byte limit: a receiver in the cgroup gets a TCP transfer sent from outside it
/// at between 50 % and 110 % of the rate (ingress can only drop; TCP recovers by
/// retransmission, so it settles below the rate: 0.60-0.65 measured here); the kernel counts
/// its drops; after the TTL the limit is gone.
#[test]
fn ingress_rate_limit_holds_its_rate() {
    require_root();
    let _g = serial();
    let cg = Cgroup::new("ratein");
    let rate = 2_000_000u64;
    let agent = Agent::start(&config(
        false,
        &format!(
            "enforcement:\n  mode: enforce\n  rules:\n    - name: rate-in\n      \
             when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{cgroup: {}}}\n      \
             action: {{type: rate_limit, ingress: {{bytes_per_second: {rate}}}}}\n      ttl: 20s\n",
            cg.path
        ),
    ));
    agent.wait_ready();
    let storm = Storm::start_in("enfratein", &cg);
    let taken = wait_decision(&agent, "rate-in", "taken");
    drop(storm);
    let got = ingress_throughput(&cg, 5);
    eprintln!("ingress {got:.0} B/s for {rate}");
    assert!(
        (0.5..=1.1).contains(&(got / rate as f64)),
        "ingress {got} B/s for {rate}: {taken}"
    );
    let st = agent.status()["enforcement"]["rate_limits"].clone();
    assert!(
        st.as_array()
            .unwrap()
            .iter()
            .any(|l| l["direction"] == "ingress" && l["dropped_packets"].as_u64() > Some(0)),
        "ingress drops: {st}"
    );
    let undone = wait_undone(&agent, &taken);
    assert_undone_at_ttl(&taken, &undone, 20);
    let free = ingress_throughput(&cg, 2);
    assert!(free > 5.0 * rate as f64, "{free} B/s after {undone}");
}

/// Datagrams a sender in `cg` gets through to a UDP receiver on loopback while it sends for
/// `secs` as fast as it can: (all received, the rate from 1 s after the first to the last).
/// The first second (the bucket's burst) is left out of the rate.
fn udp_packets_from(cg: &Cgroup, secs: u64) -> (u64, f64) {
    let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = r.local_addr().unwrap().port();
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         end=time.time()+{secs}\nwhile time.time()<end:\n  s.sendto(b'x'*100,('127.0.0.1',{port}))\n"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    let child = cg.spawn(&mut cmd);
    let mut buf = [0u8; 2048];
    let (mut n, mut first, mut from, mut last) = (0u64, None::<Instant>, None, Instant::now());
    while r.recv(&mut buf).is_ok() {
        let now = Instant::now();
        n += 1;
        last = now;
        let t0 = *first.get_or_insert(now);
        if from.is_none() && now.duration_since(t0) >= Duration::from_secs(1) {
            from = Some((now, n));
        }
        // After the sender ends, one quiet second ends the count.
        r.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    }
    child.wait_with_output().unwrap();
    let (t1, n1) = from.expect("datagrams for more than 1 s");
    (n, (n - n1) as f64 / last.duration_since(t1).as_secs_f64())
}

/// An egress packet limit (`packets_per_second`): a UDP sender in the cgroup, sending as fast
/// as it can, gets 500 datagrams/s through within 10 % after the first second (the bucket's
/// burst); every datagram the receiver got is one the kernel program passed (exact: the
/// sender is the cgroup's only traffic, and loopback loses nothing at this rate); the rest it
/// dropped and counted.
#[test]
fn egress_packet_rate_limit_holds_its_rate() {
    require_root();
    let _g = serial();
    let cg = Cgroup::new("ratepps");
    let rate = 500u64;
    let agent = Agent::start(&config(
        false,
        &format!(
            "enforcement:\n  mode: enforce\n  rules:\n    - name: rate-pps\n      \
             when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{cgroup: {}}}\n      \
             action: {{type: rate_limit, egress: {{packets_per_second: {rate}}}}}\n      ttl: 30s\n",
            cg.path
        ),
    ));
    agent.wait_ready();
    let storm = Storm::start_in("enfratepps", &cg);
    let taken = wait_decision(&agent, "rate-pps", "taken");
    drop(storm);
    let (received, got) = udp_packets_from(&cg, 4);
    eprintln!("egress {got:.0} packets/s for {rate} ({received} received)");
    assert!(
        (0.9..=1.1).contains(&(got / rate as f64)),
        "egress {got} packets/s for {rate}: {taken}"
    );
    // `/status` is republished every few seconds: wait for the counters to catch up.
    let limit = || {
        let st = agent.status()["enforcement"]["rate_limits"].clone();
        st.as_array()
            .unwrap()
            .iter()
            .find(|l| l["direction"] == "egress" && l["packets_per_second"] == rate)
            .unwrap_or_else(|| panic!("the limit on /status: {st}"))
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut l = limit();
    while l["passed_packets"].as_u64() < Some(received) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        l = limit();
    }
    let limit = l;
    assert_eq!(limit["passed_packets"].as_u64(), Some(received), "{limit}");
    assert!(
        limit["dropped_packets"].as_u64() > Some(received),
        "{limit}"
    );
}

/// `persist: true`: a block survives the agent's shutdown (pinned map and links under the
/// test's own bpffs directory: connects from the cgroup still fail with no agent running); the
/// next agent on the same output directory takes it over and undoes it at the TTL, unpinning
/// everything.
#[test]
fn a_persistent_block_survives_a_restart_and_is_undone_later() {
    require_root();
    let _g = serial();
    let cg = Cgroup::new("persist");
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/enf-persist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bpffs);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let out = tempdir();
    let rules = format!(
        "enforcement:\n  mode: enforce\n  bpffs: {}\n  rules:\n    - name: block-persist\n      \
         when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
         scope: {{cgroup: {}}}\n      action: {{type: block, peers: [127.0.0.1/32], ports: [{port}]}}\n      \
         ttl: 45s\n      persist: true\n",
        bpffs.display(),
        cg.path
    );
    let mut first = Agent::start_at(&config(false, &rules), Some(&out), |_| {});
    first.wait_ready();
    let storm = Storm::start_in("enfpersist", &cg);
    let taken = wait_decision(&first, "block-persist", "taken");
    drop(storm);
    assert_eq!(connect_from(&cg, "127.0.0.1", port, false), libc::EPERM);
    assert!(first.stop().success());
    let pinned: Vec<String> = std::fs::read_dir(&bpffs)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !pinned.is_empty(),
        "nothing pinned under {}",
        bpffs.display()
    );
    // No agent: the kernel still refuses.
    assert_eq!(
        connect_from(&cg, "127.0.0.1", port, false),
        libc::EPERM,
        "pinned: {pinned:?}"
    );
    let second = Agent::start_at(
        &config(
            false,
            &format!("enforcement:\n  bpffs: {}\n", bpffs.display()),
        ),
        Some(&out),
        |_| {},
    );
    second.wait_for(
        |a| {
            a.status()["enforcement"]["active"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x["rule"] == "block-persist"))
        },
        "the persistent block taken over",
    );
    assert_eq!(connect_from(&cg, "127.0.0.1", port, false), libc::EPERM);
    let undone = wait_decision(&second, "block-persist", "undone");
    assert_eq!(undone["journal_id"], taken["journal_id"], "{undone}");
    assert_eq!(connect_from(&cg, "127.0.0.1", port, false), 0, "{undone}");
    // The maps stay pinned while this agent runs; its shutdown, with nothing persistent left,
    // unpins them.
    let mut second = second;
    assert!(second.stop().success());
    let left: Vec<_> = std::fs::read_dir(&bpffs)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "still pinned: {left:?}");
    let _ = std::fs::remove_dir(&bpffs);
}

/// The agent's log with ANSI colour codes stripped.
fn plain_log(agent: &Agent) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in agent.stderr().chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// `degrade`: the profiler's frequency capped at 5 Hz while the limit holds — `/status` →
/// `enforcement.degrade` says so, and the profiler itself logs its new frequency — then
/// restored at the TTL (the cap gone, the profiler back at 49 Hz).
#[test]
fn degrade_lowers_the_profiler_frequency_until_the_ttl() {
    require_root();
    let _g = serial();
    let agent = Agent::start(
        "probes:\n  syscalls:\n    interval: 1s\n    aggregation: process\n  network:\n    enabled: false\n  \
         profiler:\n    enabled: true\n    frequency: 49\noutput:\n  interval: 1s\n\
         enforcement:\n  mode: enforce\n  rules:\n    - name: degrade-storm\n      \
         when: {signal: process.syscall.rate, above: 50000, for: 1}\n      \
         scope: {executable: enfdegrade}\n      action: {type: degrade, profiler_frequency: 5}\n      \
         ttl: 8s\n      cooldown: 1h\n",
    );
    agent.wait_ready();
    let storm = Storm::start("enfdegrade");
    let taken = wait_decision(&agent, "degrade-storm", "taken");
    agent.wait_for(
        |a| a.status()["enforcement"]["degrade"]["profiler_frequency"] == 5,
        "profiler_frequency 5 on /status",
    );
    let changed = |a: &Agent, hz: u32| {
        plain_log(a).lines().any(|l| {
            l.contains("sampling frequency changed") && l.contains(&format!("frequency={hz}"))
        })
    };
    agent.wait_for(|a| changed(a, 5), "the profiler at 5 Hz");
    // The kernel's own pace: with the storm keeping a CPU busy, 49 Hz would give at least 49
    // samples/s; at 5 Hz at most 5 per CPU per second (x1.5: one more 1 s drain's worth can
    // land in the 4 s window).
    let processed = |a: &Agent| a.status()["maps"]["PROFILE_COUNTS"]["processed"].as_u64();
    let (t0, n0) = (Instant::now(), processed(&agent).unwrap());
    thread::sleep(Duration::from_secs(4));
    let rate = (processed(&agent).unwrap() - n0) as f64 / t0.elapsed().as_secs_f64();
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    assert!(
        rate <= cpus * 5.0 * 1.5 + 1.0,
        "{rate} samples/s at 5 Hz on {cpus} CPUs"
    );
    drop(storm);
    let undone = wait_undone(&agent, &taken);
    assert_undone_at_ttl(&taken, &undone, 8);
    assert!(
        agent.status()["enforcement"]["degrade"]["profiler_frequency"].is_null(),
        "{undone}"
    );
    agent.wait_for(|a| changed(a, 49), "the profiler back at 49 Hz");
}

/// The project's local base image (`cargo xtask setup --test-peers` builds it).
const IMAGE: &str = "localhost/agent-base:bookworm";

/// `podman ARGS` with runc, its stdout; panics with stderr on failure.
fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .expect("podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A podman container removed on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `restart_container` with a real runtime: a podman container (runc, cgroupfs driver: its
/// own v2 cgroup `/libpod_parent/libpod-<id>`) storms; the action ends its processes
/// (`cgroup.kill`) and podman's `--restart=always` starts it again — a new pid, RestartCount 1.
/// ~10 s of podman start-up on this VM.
#[test]
fn restart_container_ends_a_podman_container_and_its_runtime_restarts_it() {
    require_root();
    let _g = serial();
    let exists = Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        eprintln!("no {IMAGE}: run `cargo xtask setup --test-peers`; skipped");
        return;
    }
    let dir = tempdir();
    let bin = workload_copy(&dir, "enfrestart");
    let name = format!("enf-restart-{}", std::process::id());
    let volume = format!("{}:/enfrestart:ro", bin.display());
    let _c = Container(name.clone());
    // nofile/nproc: podman's defaults exceed this VM's hard limits.
    let id = podman(&[
        "run",
        "-d",
        "--restart=always",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        &volume,
        "--name",
        &name,
        IMAGE,
        "/enfrestart",
        "getppid",
        "100000000000",
    ]);
    let agent = Agent::start(&config(
        false,
        &format!(
            "enforcement:\n  mode: enforce\n  rules:\n    - name: restart-storm\n      \
             when: {{signal: process.syscall.rate, above: 50000, for: 1}}\n      \
             scope: {{container: {id}}}\n      action: {{type: restart_container}}\n      \
             cooldown: 1h\n"
        ),
    ));
    agent.wait_ready();
    let taken = wait_decision(&agent, "restart-storm", "taken");
    assert_eq!(taken["target"]["container_id"], id.as_str(), "{taken}");
    assert!(
        taken["detail"].as_str().unwrap().contains("cgroup.kill"),
        "{taken}"
    );
    let old = taken["target"]["pid"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = podman(&[
            "inspect",
            &name,
            "--format",
            "{{.RestartCount}} {{.State.Pid}}",
        ]);
        let mut f = s.split_whitespace();
        let (count, pid): (u64, u64) = (
            f.next().unwrap().parse().unwrap(),
            f.next().unwrap().parse().unwrap(),
        );
        if count >= 1 && pid != 0 && pid != old {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted: {s} after {taken}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}
