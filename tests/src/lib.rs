//! Helpers for the privileged integration tests: start the real agent binary, talk to its status
//! endpoint, parse Prometheus text, run workloads, and inspect loaded BPF programs.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

/// Tests that load probes run one at a time: they compare global kernel state.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Panics with a clear message unless running as root (the tests load BPF programs).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("privileged integration test: run as root (`sudo cargo xtask test`)");
    }
}

fn workspace_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The agent binary: `$AGENT_BIN`, else `target/debug/agent`.
pub fn agent_bin() -> PathBuf {
    let p = std::env::var_os("AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target().join("debug/agent"));
    assert!(
        p.exists(),
        "agent binary {} missing: run `cargo xtask test` (it builds it)",
        p.display()
    );
    p
}

pub fn workload_bin() -> PathBuf {
    let p = workspace_target().join("debug/syscall-workload");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask test`",
        p.display()
    );
    p
}

/// A copy of the syscall workload named `name` in `dir` (so its executable name is `name`).
pub fn workload_copy(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(workload_bin(), &p).expect("copy the workload");
    p
}

/// The TCP workload (`tcp-workload`), built beside `syscall-workload`.
pub fn tcp_workload_bin() -> PathBuf {
    let p = workspace_target().join("debug/tcp-workload");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask test`",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One Prometheus sample.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition (no exemplars, no timestamps).
pub fn parse_prom(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((n, rest)) => {
                let mut labels = BTreeMap::new();
                let mut rest = rest.trim_end_matches('}');
                while let Some((k, v)) = rest.split_once("=\"") {
                    let mut val = String::new();
                    let mut chars = v.char_indices();
                    let mut end = v.len();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, e)) = chars.next() {
                                    val.push(if e == 'n' { '\n' } else { e });
                                }
                            }
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    labels.insert(k.trim_start_matches(',').to_string(), val);
                    rest = &v[end..];
                }
                (n.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Finds the one sample with this name whose labels include every `(k, v)` given.
pub fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// A running agent; stopped with SIGTERM on drop.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    stderr: std::sync::Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `agent run` with this YAML config on a free loopback port; waits for /healthz.
    pub fn start(config_yaml: &str) -> Agent {
        Self::start_with(config_yaml, |_| {})
    }

    pub fn start_with(config_yaml: &str, tweak: impl FnOnce(&mut Command)) -> Agent {
        Self::start_in(tempdir(), config_yaml, tweak)
    }

    /// As `start_with`, with this output directory (instance id, spool) instead of a fresh
    /// one: a second agent on the same directory is a restart.
    pub fn start_at(
        config_yaml: &str,
        output_dir: Option<&Path>,
        tweak: impl FnOnce(&mut Command),
    ) -> Agent {
        Self::start_inner(tempdir(), config_yaml, output_dir, tweak)
    }

    /// As `start_with`, in `dir` (config `dir/agent.yaml`, output `dir/out`): a second agent
    /// in the same directory finds what the first one left (instance id, spool, OpAMP state).
    pub fn start_in(dir: PathBuf, config_yaml: &str, tweak: impl FnOnce(&mut Command)) -> Agent {
        Self::start_inner(dir, config_yaml, None, tweak)
    }

    fn start_inner(
        dir: PathBuf,
        config_yaml: &str,
        output_dir: Option<&Path>,
        tweak: impl FnOnce(&mut Command),
    ) -> Agent {
        let config = dir.join("agent.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "--config"])
            .arg(&config)
            .arg("--status-addr")
            .arg(addr.to_string())
            .arg("--output-dir")
            .arg(output_dir.map_or_else(|| dir.join("out"), Path::to_path_buf))
            .env("AGENT_LOG_LEVEL", "info,agent=debug")
            // Tests measure probes at the intervals and rates their config names; a debug build
            // is far over the default 2 % CPU budget and would be degraded under them. The
            // self-protection tests turn it back on.
            .env("AGENT_SELF_PROTECTION_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("start agent");
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let agent = Agent {
            child,
            addr,
            dir,
            config,
            stderr,
        };
        agent.wait_for(
            |a| a.get("/healthz").map(|(s, _)| s == 200).unwrap_or(false),
            "/healthz",
        );
        agent
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn metrics(&self) -> Vec<Sample> {
        let (code, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        parse_prom(&body)
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status").expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Polls `cond` every 200 ms for up to 60 s (a bound for slow CI machines, not a timing
    /// assertion); panics with the agent's log when it never holds.
    /// Waits until `/readyz` answers 200 (every enabled probe attached).
    pub fn wait_ready(&self) {
        self.wait_for(
            |a| a.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false),
            "/readyz 200",
        );
    }

    /// Waits until the agent has attributed `pid` while it was alive (any series for it on
    /// /metrics), so that its executable name comes from /proc.
    pub fn wait_seen(&self, pid: &str) {
        self.wait_for(
            |a| {
                a.metrics()
                    .iter()
                    .any(|s| s.labels.get("process_pid").map(String::as_str) == Some(pid))
            },
            &format!("a series for pid {pid}"),
        );
    }

    pub fn wait_for(&self, cond: impl Fn(&Agent) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            if self.exited() {
                thread::sleep(Duration::from_millis(200)); // let the log reader catch up
                panic!("agent exited before: {what}\nagent log:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!("agent never reached: {what}\nagent log:\n{}", self.stderr());
    }

    /// Whether the agent has exited (a zombie not yet reaped), without reaping it.
    pub fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .map(|stat| {
                // pid (comm) STATE ...: the state follows the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    == Some("Z")
            })
            .unwrap_or(true)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().expect("wait agent")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory under the system temp dir.
pub fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("agent-it-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A workload started paused: it has printed its pid and waits for `go()`.
pub struct Workload {
    pub child: Child,
    pub pid: u32,
    out: BufReader<std::process::ChildStdout>,
}

impl Workload {
    pub fn start(kind: &str, count: u64) -> Workload {
        Workload::start_args(&workload_bin(), &[kind, &count.to_string()])
    }

    /// `bin` (the workload or a renamed copy) with `args`, waiting for `go`.
    pub fn start_args(bin: &Path, args: &[&str]) -> Workload {
        let mut child = Command::new(bin)
            .args(args)
            .arg("--wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start workload");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let pid = line.trim().strip_prefix("pid ").unwrap().parse().unwrap();
        Workload { child, pid, out }
    }

    /// Releases the workload and waits for it to finish; returns its ns per call.
    pub fn go(mut self) -> f64 {
        writeln!(self.child.stdin.take().unwrap()).unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(self.child.wait().unwrap().success());
        line.trim().strip_prefix("done ").unwrap().parse().unwrap()
    }
}

/// BPF programs (id, name) that process `pid` holds through a program or link fd, read from
/// `/proc/<pid>/fdinfo` (kernel truth; Debian's bpftool cannot show owning pids).
pub fn bpf_programs_of(pid: u32) -> Vec<(u64, String)> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let names = bpf_program_names();
    ids.into_iter()
        .map(|id| (id, names.get(&id).cloned().unwrap_or_default()))
        .collect()
}

fn bpf_program_names() -> BTreeMap<u64, String> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool (installed by `cargo xtask setup --test-peers`)");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                p["name"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// Every loaded BPF program id.
pub fn bpf_program_ids() -> Vec<u64> {
    bpf_program_names().into_keys().collect()
}

pub mod netns;

/// Polls the agent until `name{labels}` equals `want` (or 60 s pass), then asserts equality so
/// a wrong count fails with the value seen.
pub fn assert_eventually(
    agent: &Agent,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let samples = agent.metrics();
        let got = find(&samples, name, labels).map(|s| s.value);
        if got == Some(want) || Instant::now() > deadline {
            assert_eq!(
                got,
                Some(want),
                "{name}{labels:?}\nagent log:\n{}",
                agent.stderr()
            );
            return samples;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

pub mod deploy;
pub mod opamp;
pub mod otlp;
pub mod profile_outputs;
pub mod profiling;
