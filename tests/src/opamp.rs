//! OpAMP servers for the OpAMP tests, neither sharing code with the agent's client:
//!
//! - [`MockOpamp`]: `@elastic/mockopampserver` (npm), a third-party OpAMP server over plain HTTP,
//!   run from its own CLI: `-F` offers a config file, `-T` (test mode) adds
//!   `POST /api/agentConfigMap` to change the offer while it runs. Its CLI always listens on
//!   port 4320, so each server gets its own loopback address (127.x.y.z) instead of its own
//!   port. Its debug log (bunyan JSON on stdout) holds every request and answer.
//! - [`WsServer`]: `tests/opamp_server/server.py`, a WebSocket OpAMP server (none is
//!   installable) on the PyPI `websockets` package and `protoc`-generated Python messages,
//!   scripted through stdin and reporting every message as a JSON line.
//!
//! Both installed by `cargo xtask setup --test-peers`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{otlp::python, tempdir};

/// The port mockopampserver's CLI listens on.
pub const MOCK_PORT: u16 = 4320;

/// A loopback address whose port 4320 is free (each mock server gets its own address).
fn free_loopback_4320() -> String {
    static NEXT: Mutex<u32> = Mutex::new(0);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let base = std::process::id() % 200;
    for _ in 0..10_000 {
        *next += 1;
        let n = *next;
        let host = format!("127.{}.{}.{}", 20 + base, (n / 250) % 250, 1 + n % 250);
        if TcpListener::bind((host.as_str(), MOCK_PORT)).is_ok() {
            return host;
        }
    }
    panic!("no loopback address with port {MOCK_PORT} free");
}

/// A plain HTTP/1.1 POST; returns (status, body).
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Removes ANSI color escapes (the mock's log prints messages with `util.inspect` colors).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `2026-11-30T04:59:50.062Z` as Unix milliseconds.
pub fn iso_ms(s: &str) -> Option<u64> {
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let (hh, mm, ss, ms) = (n(11, 13)?, n(14, 16)?, n(17, 19)?, n(20, 23)?);
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms).ok()
}

/// One request the mock server handled, from its log.
#[derive(Clone, Debug)]
pub struct MockRequest {
    /// When the mock logged it (Unix ms).
    pub time_ms: u64,
    /// The AgentToServer as the mock printed it (`util.inspect`, colors removed).
    pub a2s: String,
    /// The ServerToAgent it answered.
    pub s2a: String,
}

impl MockRequest {
    /// `sequenceNum` of the AgentToServer.
    pub fn seq(&self) -> Option<u64> {
        let i = self.a2s.find("sequenceNum: ")? + "sequenceNum: ".len();
        self.a2s[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// A full report: it describes the agent and its remote config status.
    pub fn full(&self) -> bool {
        self.a2s.contains("agentDescription:") && self.a2s.contains("remoteConfigStatus:")
    }

    pub fn offers_config(&self) -> bool {
        self.s2a.contains("remoteConfig:")
    }

    pub fn asks_full_state(&self) -> bool {
        // ServerToAgentFlags_ReportFullState = 1 (printed as a number, or a BigInt `1n`).
        ["flags: 1,", "flags: 1\n", "flags: 1n"]
            .iter()
            .any(|f| self.s2a.contains(f))
    }
}

/// `mockopampserver --hostname 127.x.y.z -T [-F =@file;type=application/yaml]`.
pub struct MockOpamp {
    child: Option<Child>,
    pub host: String,
    log: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl MockOpamp {
    /// Starts a mock server offering `config` (YAML, content type application/yaml) when given.
    pub fn start(config: Option<&str>) -> MockOpamp {
        let mut m = MockOpamp {
            child: None,
            host: free_loopback_4320(),
            log: Arc::default(),
            dir: tempdir(),
        };
        m.spawn(config);
        m
    }

    fn spawn(&mut self, config: Option<&str>) {
        let mut cmd = Command::new("mockopampserver");
        cmd.args(["--hostname", &self.host, "-T", "--log-level", "debug"]);
        if let Some(yaml) = config {
            let file = self.dir.join("remote.yaml");
            std::fs::write(&file, yaml).unwrap();
            cmd.arg("-F")
                .arg(format!("=@{};type=application/yaml", file.display()));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("mockopampserver: {e}\nfix: cargo xtask setup --test-peers (npm install -g @elastic/mockopampserver)")
            });
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = self.log.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains("OpAMP server listening") {
            assert!(
                Instant::now() < deadline,
                "mockopampserver did not start:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{MOCK_PORT}/v1/opamp", self.host)
    }

    fn addr(&self) -> SocketAddr {
        format!("{}:{MOCK_PORT}", self.host).parse().unwrap()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log's JSON records.
    pub fn records(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every OpAMP request handled, in order.
    pub fn requests(&self) -> Vec<MockRequest> {
        self.records()
            .iter()
            .filter(|r| r["msg"] == "request")
            .map(|r| MockRequest {
                time_ms: iso_ms(r["time"].as_str().unwrap_or("")).unwrap_or(0),
                a2s: strip_ansi(r["req"]["body"].as_str().unwrap_or("")),
                s2a: strip_ansi(r["res"]["body"].as_str().unwrap_or("")),
            })
            .collect()
    }

    /// Log messages (`msg` fields) in order.
    pub fn messages(&self) -> Vec<String> {
        self.records()
            .iter()
            .filter_map(|r| r["msg"].as_str().map(str::to_string))
            .collect()
    }

    /// Offers `yaml` from now on (test mode's `POST /api/agentConfigMap`).
    pub fn set_config(&self, yaml: &str) {
        let body = json!({"": {"body": yaml, "contentType": "application/yaml"}}).to_string();
        let (code, text) = http_post(
            self.addr(),
            "/api/agentConfigMap",
            "application/json",
            body.as_bytes(),
        )
        .expect("POST /api/agentConfigMap");
        assert_eq!(code, 204, "{text}");
    }

    /// Polls the requests until `cond` holds (60 s bound for slow machines).
    pub fn wait_for(&self, what: &str, cond: impl Fn(&[MockRequest]) -> bool) -> Vec<MockRequest> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.requests();
            if cond(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "mock OpAMP server never saw: {what}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// A fresh server process on the same address: it has lost every agent's state.
    pub fn restart(&mut self) {
        self.stop();
        *self.log.lock().unwrap() = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind((self.host.as_str(), MOCK_PORT)).is_err() {
            assert!(Instant::now() < deadline, "port {MOCK_PORT} not freed");
            thread::sleep(Duration::from_millis(50));
        }
        self.spawn(None);
    }
}

impl Drop for MockOpamp {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tests/opamp_server/server.py`.
pub fn ws_server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("opamp_server/server.py")
}

/// Python messages generated by `protoc` from the vendored `proto/opamp/*.proto` (once per test
/// process).
fn python_protos() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempdir();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/opamp");
        let out = Command::new("protoc")
            .arg(format!("--python_out={}", dir.display()))
            .arg(format!("-I{}", src.display()))
            .args(["opamp.proto", "anyvalue.proto"])
            .output()
            .expect("protoc (cargo xtask setup --test-peers installs it)");
        assert!(
            out.status.success(),
            "protoc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// The WebSocket OpAMP server of the tests.
pub struct WsServer {
    child: Child,
    stdin: Mutex<ChildStdin>,
    pub port: u16,
    tls: bool,
    events: Arc<Mutex<Vec<Value>>>,
    log: Arc<Mutex<String>>,
}

impl WsServer {
    pub fn start() -> WsServer {
        Self::start_with(&[])
    }

    /// Over TLS with `pki`'s server certificate (`wss://localhost:<port>`); `client_certs`:
    /// a client certificate signed by `pki`'s CA is required (its CN in `connect` events).
    pub fn start_tls(pki: &crate::otlp::TestPki, client_certs: bool) -> WsServer {
        let p = |p: &Path| p.to_string_lossy().into_owned();
        let mut args = vec![
            "--tls-cert".to_string(),
            p(&pki.server_cert),
            "--tls-key".to_string(),
            p(&pki.server_key),
        ];
        if client_certs {
            args.extend(["--tls-client-ca".to_string(), p(&pki.ca)]);
        }
        let mut s = Self::start_with(&args);
        s.tls = true;
        s
    }

    fn start_with(args: &[String]) -> WsServer {
        let mut child = Command::new(python())
            .arg(ws_server_script())
            .arg("--proto-dir")
            .arg(python_protos())
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 tests/opamp_server/server.py");
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let log: Arc<Mutex<String>> = Arc::default();
        let (ev, out) = (events.clone(), child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["ev"] != "a2s" {
                        eprintln!("[opamp-ws] {line}");
                    }
                    ev.lock().unwrap().push(v);
                }
            }
        });
        let (l, err) = (log.clone(), child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[opamp-ws] {line}");
                l.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let stdin = Mutex::new(child.stdin.take().unwrap());
        let mut s = WsServer {
            child,
            stdin,
            port: 0,
            tls: false,
            events,
            log,
        };
        let ev = s.wait("listening", |e| e.iter().any(|x| x["ev"] == "listening"));
        s.port = ev.iter().find(|x| x["ev"] == "listening").unwrap()["port"]
            .as_u64()
            .unwrap() as u16;
        s
    }

    pub fn endpoint(&self) -> String {
        if self.tls {
            format!("wss://localhost:{}/v1/opamp", self.port)
        } else {
            format!("ws://127.0.0.1:{}/v1/opamp", self.port)
        }
    }

    /// Sends one command (see server.py).
    pub fn cmd(&self, c: Value) {
        let mut s = self.stdin.lock().unwrap();
        writeln!(s, "{c}").unwrap();
        s.flush().unwrap();
    }

    /// Answers the next AgentToServer with `msg`.
    pub fn reply(&self, msg: Value) {
        self.cmd(json!({"cmd": "reply", "msg": msg}));
    }

    /// Pushes `msg` now.
    pub fn send(&self, msg: Value) {
        self.cmd(json!({"cmd": "send", "msg": msg}));
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// The AgentToServer messages received, in order.
    pub fn messages(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["ev"] == "a2s")
            .collect()
    }

    /// Polls the events until `cond` holds (60 s bound for slow machines).
    pub fn wait(&self, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let e = self.events();
            if cond(&e) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "OpAMP WebSocket server never saw: {what}\nlog:\n{}\nevents: {}",
                self.log.lock().unwrap(),
                e.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for an AgentToServer after the first `after` events that matches `pred`; returns
    /// it.
    pub fn wait_message(&self, after: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let e = self.wait(what, |e| {
            e.iter().skip(after).any(|x| x["ev"] == "a2s" && pred(x))
        });
        e.into_iter()
            .skip(after)
            .find(|x| x["ev"] == "a2s" && pred(x))
            .unwrap()
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `remote_config` status an AgentToServer carries (`RemoteConfigStatuses_APPLIED`, ...),
/// or "" without one.
pub fn remote_status(msg: &Value) -> String {
    msg["msg"]["remote_config_status"]["status"]
        .as_str()
        .unwrap_or(if msg["msg"]["remote_config_status"].is_object() {
            "RemoteConfigStatuses_UNSET"
        } else {
            ""
        })
        .to_string()
}

/// A thread that keeps one CPU busy until dropped (so the profiler's sample rate is known).
pub struct Spinner {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Spinner {
    pub fn start() -> Spinner {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut x = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        });
        Spinner {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Standard base64 (with or without padding) to bytes; `None` for anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Standard base64 with padding.
pub fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(A[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The value of a string attribute in an OpAMP KeyValue list (protobuf JSON).
pub fn kv(list: &Value, key: &str) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|k| k["key"] == key)?
        .get("value")?
        .get("string_value")?
        .as_str()
        .map(str::to_string)
}

/// One exported profile window (a pprof file the agent wrote under `<out>/profiles/`), read
/// with `gzip -dc | protoc --decode perftools.profiles.Profile`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Nanoseconds per sample: 1e9 / the profiler's frequency.
    pub period_nanos: u64,
    pub duration_nanos: u64,
    /// Samples in the window (the first value of every sample).
    pub samples: u64,
}

fn decode_pprof(gz: &Path) -> Option<String> {
    let raw = Command::new("gzip").arg("-dc").arg(gz).output().ok()?;
    if !raw.status.success() {
        return None; // still being written
    }
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/pprof");
    let mut child = Command::new("protoc")
        .args(["--decode", "perftools.profiles.Profile", "-I"])
        .arg(&proto_dir)
        .arg("profile.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("protoc (cargo xtask setup --test-peers)");
    let wrote = child.stdin.take().unwrap().write_all(&raw.stdout);
    let out = child.wait_with_output().ok()?;
    wrote.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pprof files in `profiles_dir`, oldest first (named by their start time).
pub fn profile_files(profiles_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(profiles_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    files.sort();
    files
}

/// One pprof file as a [`Window`] (`None` while it is being written).
pub fn window(file: &Path) -> Option<Window> {
    let text = decode_pprof(file)?;
    let field = |name: &str| -> u64 {
        text.lines()
            .filter(|l| !l.starts_with(' '))
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    // In each `sample {` block the first `value:` is the count.
    let mut samples = 0;
    let mut first = false;
    for l in text.lines() {
        let t = l.trim();
        if t == "sample {" {
            first = true;
        } else if first {
            if let Some(v) = t.strip_prefix("value: ") {
                samples += v.parse::<u64>().unwrap_or(0);
                first = false;
            }
        }
    }
    Some(Window {
        period_nanos: field("period: "),
        duration_nanos: field("duration_nanos: "),
        samples,
    })
}

/// Every profile window in `profiles_dir`, oldest first.
pub fn profile_windows(profiles_dir: &Path) -> Vec<Window> {
    profile_files(profiles_dir)
        .iter()
        .filter_map(|f| window(f))
        .collect()
}
