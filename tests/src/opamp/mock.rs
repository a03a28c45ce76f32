//! `@elastic/mockopampserver` (npm), a third-party OpAMP server over plain HTTP, run from its
//! own CLI: `-F` offers a config file, `-T` (test mode) adds `POST /api/agentConfigMap` to change
//! the offer while it runs. Its CLI always listens on port 4320, so each server gets its own
//! loopback address (127.x.y.z) instead of its own port. Its debug log (bunyan JSON on stdout)
//! holds every request and answer.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::tempdir;

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
