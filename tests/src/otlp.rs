//! OTLP receivers for the export tests, independent of the agent's own OTLP code: the Python
//! sink (`tests/otlp_sink/sink.py`, decoding with PyPI `opentelemetry-proto`) that writes every
//! request it receives as a JSON line, rotel (a real OTLP collector, PyPI `rotel`) forwarding to
//! it, and helpers to walk the decoded requests (metric points, log records, attributes).
//!
//! Both are installed by `cargo xtask setup --test-peers` (`python3 -m pip install`). `TestPki`
//! makes throwaway certificates with the `openssl` CLI for the TLS tests.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::tempdir;

/// The Python interpreter that has the test peers' packages: `$PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// `tests/otlp_sink/sink.py`.
pub fn sink_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_sink/sink.py")
}

/// A free loopback TCP port below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), so that no outgoing connection can take it while a
/// receiver is down (a connect to 127.0.0.1:P from the ephemeral port P would even connect to
/// itself and hold the port), and a receiver restarted on it finds it free.
pub fn listen_port() -> u16 {
    static NEXT: Mutex<u32> = Mutex::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u32, low.saturating_sub(10_000));
    if span < 100 {
        return crate::free_port();
    }
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Different test processes start at different places (pid), one process walks on.
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        *next += 1;
        let port = (first + (seed.wrapping_add(*next)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {first}..{low}");
}

/// Appends a child's output lines to `log` (and echoes them, with `prefix`, to the test's
/// captured output).
fn collect_lines(pipe: impl Read + Send + 'static, prefix: &'static str, log: &Arc<Mutex<String>>) {
    let log = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.starts_with(prefix) {
                eprintln!("{line}");
            } else {
                eprintln!("{prefix} {line}");
            }
            log.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn cut(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &line[..end], line.len())
}

/// The Python OTLP sink: OTLP/HTTP and OTLP/gRPC receivers that write each decoded request as
/// one JSON line (see `sink.py` for the line's fields). Killed on drop; `stop()` and
/// `restart()` simulate an outage (same ports, same output file).
pub struct Sink {
    pub http_port: u16,
    pub grpc_port: u16,
    /// The JSON lines file.
    pub out: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
    /// Both ports speak TLS (`start_tls`).
    tls: bool,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    cache: Mutex<Lines>,
}

/// The sink's lines parsed so far, and the file offset they end at (the file only grows).
#[derive(Default)]
struct Lines {
    offset: u64,
    accepted: Vec<Value>,
    rejected: Vec<Value>,
}

impl Sink {
    /// Starts `python3 tests/otlp_sink/sink.py --out <tempfile> EXTRA_ARGS` (e.g.
    /// `["--fail-first", "2"]`) on free ports; returns once it listens on both.
    pub fn start(extra_args: &[&str]) -> Sink {
        Self::start_with(extra_args.iter().map(|s| s.to_string()).collect(), false)
    }

    /// As `start`, with both ports speaking TLS with `pki`'s server certificate (for
    /// `localhost` and 127.0.0.1); `client_certs`: both also require a client certificate
    /// signed by `pki`'s CA. The endpoints become `https://localhost:<port>`, and each line
    /// holds `"tls": true` and `"tls_client"` (the client certificate's common name).
    pub fn start_tls(pki: &TestPki, client_certs: bool, extra_args: &[&str]) -> Sink {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut args = vec![
            "--tls-cert".to_string(),
            path(&pki.server_cert),
            "--tls-key".to_string(),
            path(&pki.server_key),
        ];
        if client_certs {
            args.extend(["--tls-client-ca".to_string(), path(&pki.ca)]);
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Self::start_with(args, true)
    }

    fn start_with(args: Vec<String>, tls: bool) -> Sink {
        let dir = tempdir();
        let mut sink = Sink {
            http_port: 0,
            grpc_port: 0,
            out: dir.join("sink.jsonl"),
            dir,
            args,
            tls,
            child: None,
            log: Arc::default(),
            cache: Mutex::default(),
        };
        let mut failures = String::new();
        for _ in 0..5 {
            sink.http_port = listen_port();
            sink.grpc_port = listen_port();
            match sink.spawn() {
                Ok(()) => return sink,
                // A port taken between the check and the bind: other ports.
                Err(e) => failures.push_str(&format!("{e}\n")),
            }
        }
        panic!("the OTLP sink did not start:\n{failures}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let script = sink_script();
        let mut child = Command::new(python())
            .arg(&script)
            .arg("--out")
            .arg(&self.out)
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--grpc-port", &self.grpc_port.to_string()])
            .args(&self.args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} {}: {e}", python(), script.display()));
        collect_lines(child.stderr.take().unwrap(), "[sink]", &self.log);
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {} // keep the pipe open until the sink exits
        });
        // Importing grpc and the protos takes about a second; 60 s is a bound for slow
        // machines.
        let line = rx.recv_timeout(Duration::from_secs(60)).ok().flatten();
        let want = format!("listening http={} grpc={}", self.http_port, self.grpc_port);
        if line.as_deref() == Some(want.as_str()) {
            self.child = Some(child);
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        thread::sleep(Duration::from_millis(200)); // let the log reader catch up
        let log = self.log.lock().unwrap().clone();
        if log.contains("No module named") {
            panic!(
                "the OTLP sink's Python packages are missing (run `cargo xtask setup \
                 --test-peers`):\n{log}"
            );
        }
        Err(format!("sink said {line:?}, expected {want:?}:\n{log}"))
    }

    /// `http://127.0.0.1:<http_port>` (the agent appends `/v1/metrics`, `/v1/logs`);
    /// `https://localhost:<http_port>` with TLS.
    pub fn http_endpoint(&self) -> String {
        self.endpoint(self.http_port)
    }

    /// `http://127.0.0.1:<grpc_port>`; `https://localhost:<grpc_port>` with TLS.
    pub fn grpc_endpoint(&self) -> String {
        self.endpoint(self.grpc_port)
    }

    fn endpoint(&self, port: u16) -> String {
        if self.tls {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        }
    }

    /// Stops the sink gracefully (SIGTERM: its ports close, the requests it already received
    /// are answered, then it exits; see `sink.py`) and waits for it; SIGKILL after 20 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("[sink] did not stop within 20 s of SIGTERM: killed");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the sink again on the same ports, appending to the same file.
    pub fn restart(&mut self) {
        self.stop();
        // The ports were free a moment ago and lie outside the ephemeral range; a bind can
        // still fail briefly, so try for 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("the OTLP sink did not restart: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// The requests answered with success, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        self.with_requests(|r| r.to_vec())
    }

    /// The requests that `--fail-first` rejected (lines with `rejected`), in arrival order.
    pub fn rejected(&self) -> Vec<Value> {
        self.read_new();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rejected
            .clone()
    }

    /// Every line written so far, rejected requests included, in arrival order.
    pub fn lines(&self) -> Vec<Value> {
        let mut all = self.requests();
        all.extend(self.rejected());
        all.sort_by_key(|l| u64_of(&l["received_unix_nano"]).unwrap_or(0));
        all
    }

    /// Runs `f` on the requests answered with success so far, without copying them (the file
    /// is read incrementally: only what was appended since the last call is parsed).
    pub fn with_requests<T>(&self, f: impl FnOnce(&[Value]) -> T) -> T {
        self.read_new();
        f(&self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accepted)
    }

    fn read_new(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(mut file) = File::open(&self.out) else {
            return;
        };
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(cache.offset)).is_err() || file.read_to_end(&mut new).is_err()
        {
            return;
        }
        // Only whole lines: the sink may be writing the last one.
        let whole = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in new[..whole]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let value: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "sink line is not JSON ({e}): {}",
                    String::from_utf8_lossy(line)
                )
            });
            if value.get("rejected").is_some_and(|r| !r.is_null()) {
                cache.rejected.push(value);
            } else {
                cache.accepted.push(value);
            }
        }
        cache.offset += whole as u64;
    }

    /// Polls the accepted requests every 250 ms until `cond` holds: `Ok(requests)`, or
    /// `Err(requests)` when `timeout` passes first.
    pub fn wait_for(
        &self,
        timeout: Duration,
        cond: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>, Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.with_requests(&cond) {
                return Ok(self.requests());
            }
            if Instant::now() > deadline {
                return Err(self.requests());
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// The sink's own log (stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The last `n` lines written (each cut to 2,000 bytes) and the last lines of its log,
    /// for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let lines: Vec<String> = last_lines(&text, n).lines().map(|l| cut(l, 2000)).collect();
        format!(
            "sink {} ({} lines), last {n}:\n{}\nsink log (last 20 lines):\n{}",
            self.out.display(),
            text.lines().count(),
            lines.join("\n"),
            last_lines(&self.log(), 20)
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.tail(10));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The common name of `TestPki`'s client certificate (what the sink records as `tls_client`).
pub const TEST_CLIENT_CN: &str = "agent test client";

/// A throwaway PKI made with the `openssl` CLI (`$OPENSSL`, else `openssl`) in a temporary
/// directory, removed on drop: a CA, a server certificate for `localhost` and 127.0.0.1
/// (subjectAltName) and a client certificate (common name `TEST_CLIENT_CN`), both signed by
/// the CA. EC P-256 keys (PKCS#8 PEM, unencrypted), valid for 2 days from now, X.509 v3 with
/// the extensions WebPKI verifiers insist on (CA:TRUE and keyCertSign on the CA, CA:FALSE and
/// serverAuth or clientAuth on the leaves).
pub struct TestPki {
    pub dir: PathBuf,
    /// The CA certificate (PEM): the `export.tls.ca_file` that makes the sink trusted.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

const PKI_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = agent test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempdir();
        std::fs::write(dir.join("openssl.cnf"), PKI_CONFIG).unwrap();
        let openssl = std::env::var("OPENSSL").unwrap_or_else(|_| "openssl".to_string());
        // `openssl WORDS... [-subj SUBJECT]` in the directory (file names are relative to it).
        let run = |words: &str, subject: Option<&str>| {
            let mut cmd = Command::new(&openssl);
            cmd.current_dir(&dir)
                .args(words.split_whitespace())
                .args(subject.map(|s| ["-subj", s]).into_iter().flatten())
                .stdin(Stdio::null());
            let out = cmd.output().unwrap_or_else(|e| {
                panic!("{openssl}: {e} (the TLS tests make certificates with the openssl CLI)")
            });
            assert!(
                out.status.success(),
                "{cmd:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        run(
            &format!(
                "req -x509 -config openssl.cnf -extensions ca {key} -keyout ca.key -out ca.pem \
                 -days 2"
            ),
            Some("/CN=agent test CA"),
        );
        for (name, cn, serial) in [
            ("server", "localhost", "0x5e17"),
            ("client", TEST_CLIENT_CN, "0xc11e"),
        ] {
            run(
                &format!("req -new -config openssl.cnf {key} -keyout {name}.key -out {name}.csr"),
                Some(&format!("/CN={cn}")),
            );
            run(
                &format!(
                    "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} \
                     -days 2 -extfile openssl.cnf -extensions {name} -out {name}.pem"
                ),
                None,
            );
        }
        TestPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `rotel-agent` binary that the PyPI `rotel` package bundles: `$ROTEL_BIN`, else found
/// through `python3`.
pub fn rotel_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROTEL_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new(python())
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python()));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.exists(),
        "rotel (PyPI) missing: run `cargo xtask setup --test-peers`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// rotel: a real OTLP collector with an OTLP/gRPC and an OTLP/HTTP receiver, forwarding
/// everything (gzip-compressed) to a sink. Killed on drop. The command line (PyPI `rotel`
/// 0.0.1a15, whose bundled binary says `rotel 0.0.1-alpha10`):
///
/// ```text
/// rotel-agent start --otlp-grpc-endpoint 127.0.0.1:G --otlp-http-endpoint 127.0.0.1:H \
///   --exporter otlp --otlp-exporter-endpoint http://127.0.0.1:SINK_PORT \
///   --otlp-exporter-protocol grpc|http --otlp-exporter-compression gzip \
///   --otlp-grpc-max-recv-msg-size-mib 64 --pid-file DIR/rotel.pid --log-file DIR/rotel.log
/// ```
///
/// Its receivers take gzip over both transports; its HTTP exporter appends `/v1/metrics`,
/// `/v1/logs`. Its OTLP/JSON receiver is not usable: it answers 200 but forwards histograms
/// without their data points (and rejects snake_case field names), so send it protobuf.
pub struct Rotel {
    pub grpc_port: u16,
    pub http_port: u16,
    child: Child,
    log: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Rotel {
    /// Forwards to the sink's gRPC port (`sink.grpc_port`) over OTLP/gRPC.
    pub fn start(forward_to_sink_port: u16) -> Rotel {
        Self::start_forwarding(forward_to_sink_port, "grpc")
    }

    /// Forwards to `127.0.0.1:port` over `protocol`: `grpc` (the sink's gRPC port) or `http`
    /// (the sink's HTTP port; rotel appends `/v1/metrics`, `/v1/logs`).
    pub fn start_forwarding(port: u16, protocol: &str) -> Rotel {
        let dir = tempdir();
        let (grpc_port, http_port) = (listen_port(), listen_port());
        let mut cmd = Command::new(rotel_bin());
        cmd.arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .args(["--exporter", "otlp"])
            .args([
                "--otlp-exporter-endpoint",
                &format!("http://127.0.0.1:{port}"),
            ])
            .args(["--otlp-exporter-protocol", protocol])
            .args(["--otlp-exporter-compression", "gzip"])
            .args(["--otlp-grpc-max-recv-msg-size-mib", "64"])
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{shown}: {e}"));
        let log = Arc::default();
        collect_lines(child.stdout.take().unwrap(), "[rotel]", &log);
        collect_lines(child.stderr.take().unwrap(), "[rotel]", &log);
        let mut rotel = Rotel {
            grpc_port,
            http_port,
            child,
            log,
            dir,
        };
        // Ready when both receivers accept connections (60 s: a bound for slow machines).
        let deadline = Instant::now() + Duration::from_secs(60);
        let up = |p: u16| {
            let addr = SocketAddr::from(([127, 0, 0, 1], p));
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        };
        while !(up(grpc_port) && up(http_port)) {
            let exited = !matches!(rotel.child.try_wait(), Ok(None));
            if exited || Instant::now() > deadline {
                thread::sleep(Duration::from_millis(200));
                panic!("rotel did not start: {shown}\n{}", rotel.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
        rotel
    }

    /// `http://127.0.0.1:<grpc_port>`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:<http_port>`.
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "rotel log (last 20 lines):\n{}",
                last_lines(&self.log(), 20)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An OTLP `AnyValue` as plain JSON: strings, numbers (`intValue`, which protobuf's JSON
/// mapping writes as a string, becomes a number), booleans, arrays, objects; bytes stay base64.
pub fn any_value(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(i) = v.get("intValue") {
        return i64_of(i).map(Value::from).unwrap_or_else(|| i.clone());
    }
    if let Some(d) = v.get("doubleValue") {
        return d.as_f64().map(Value::from).unwrap_or_else(|| d.clone());
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(b) = v.get("bytesValue") {
        return b.clone();
    }
    if let Some(a) = v.get("arrayValue") {
        return Value::Array(
            a["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(any_value)
                .collect(),
        );
    }
    if let Some(kv) = v.get("kvlistValue") {
        return Value::Object(attributes(&kv["values"]).into_iter().collect());
    }
    Value::Null // an empty AnyValue
}

/// A list of OTLP `KeyValue`s (`attributes`) as key → plain JSON value (`any_value`).
pub fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv["key"].as_str()?.to_string(), any_value(&kv["value"]))))
        .collect()
}

/// A 64-bit integer written as a number or (protobuf's JSON mapping) as a decimal string.
pub fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// See `u64_of`.
pub fn i64_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// A value as text: a string as is, anything else as JSON (so `8080` and `"8080"` compare
/// alike).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// One data point of a metric, with everything around it.
#[derive(Clone, Debug)]
pub struct MetricPoint {
    /// Index of the request (line) it came in.
    pub request: usize,
    pub resource: BTreeMap<String, Value>,
    pub scope: String,
    pub name: String,
    pub unit: String,
    /// `histogram`, `sum`, `gauge`, `exponentialHistogram` or `summary`.
    pub kind: String,
    /// `aggregationTemporality` (1 delta, 2 cumulative) for histograms and sums.
    pub temporality: Option<i64>,
    /// `isMonotonic` for sums.
    pub monotonic: Option<bool>,
    pub attributes: BTreeMap<String, Value>,
    /// The data point as decoded (`count`, `sum`, `bucketCounts`, `explicitBounds`,
    /// `asInt`/`asDouble`, `timeUnixNano`, ...).
    pub point: Value,
}

impl MetricPoint {
    /// `timeUnixNano` (0 when absent).
    pub fn time(&self) -> u64 {
        u64_of(&self.point["timeUnixNano"]).unwrap_or(0)
    }

    /// `startTimeUnixNano` (0 when absent).
    pub fn start_time(&self) -> u64 {
        u64_of(&self.point["startTimeUnixNano"]).unwrap_or(0)
    }

    /// A histogram's `count` (protobuf's JSON mapping leaves out a 0).
    pub fn count(&self) -> u64 {
        u64_of(&self.point["count"]).unwrap_or(0)
    }

    /// Metric name and attributes: what identifies a series within one resource.
    pub fn series(&self) -> String {
        format!(
            "{}{}",
            self.name,
            serde_json::to_string(&self.attributes).unwrap()
        )
    }

    /// The series and the point's times: the same point sent twice has the same key.
    pub fn key(&self) -> String {
        format!("{} {}..{}", self.series(), self.start_time(), self.time())
    }
}

const METRIC_KINDS: [&str; 5] = [
    "histogram",
    "sum",
    "gauge",
    "exponentialHistogram",
    "summary",
];

/// Every data point of metrics named `name` in these requests (metrics requests only).
pub fn metric_points(requests: &[Value], name: &str) -> Vec<MetricPoint> {
    walk_metrics(requests, Some(name))
}

/// Every data point of every metric in these requests.
pub fn all_metric_points(requests: &[Value]) -> Vec<MetricPoint> {
    walk_metrics(requests, None)
}

fn walk_metrics(requests: &[Value], name: Option<&str>) -> Vec<MetricPoint> {
    let mut out = Vec::new();
    for (i, line) in requests.iter().enumerate() {
        if line["signal"] != "metrics" {
            continue;
        }
        for rm in array(&line["request"]["resourceMetrics"]) {
            let resource = attributes(&rm["resource"]["attributes"]);
            for sm in array(&rm["scopeMetrics"]) {
                let scope = sm["scope"]["name"].as_str().unwrap_or("").to_string();
                for m in array(&sm["metrics"]) {
                    let metric_name = m["name"].as_str().unwrap_or("");
                    if name.is_some_and(|n| n != metric_name) {
                        continue;
                    }
                    for kind in METRIC_KINDS {
                        let data = &m[kind];
                        if data.is_null() {
                            continue;
                        }
                        for p in array(&data["dataPoints"]) {
                            out.push(MetricPoint {
                                request: i,
                                resource: resource.clone(),
                                scope: scope.clone(),
                                name: metric_name.to_string(),
                                unit: m["unit"].as_str().unwrap_or("").to_string(),
                                kind: kind.to_string(),
                                temporality: i64_of(&data["aggregationTemporality"]),
                                monotonic: data["isMonotonic"].as_bool(),
                                attributes: attributes(&p["attributes"]),
                                point: p.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

fn array(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// One log record, with everything around it.
#[derive(Clone, Debug)]
pub struct LogRecord {
    /// Index of the request (line) it came in.
    pub request: usize,
    pub resource: BTreeMap<String, Value>,
    pub scope: String,
    /// The record's `eventName`, else its `event.name` attribute, else "".
    pub event_name: String,
    pub attributes: BTreeMap<String, Value>,
    /// The record as decoded (`timeUnixNano`, `severityNumber`, `body`, ...).
    pub record: Value,
}

/// Every log record in these requests (logs requests only).
pub fn log_records(requests: &[Value]) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for (i, line) in requests.iter().enumerate() {
        if line["signal"] != "logs" {
            continue;
        }
        for rl in array(&line["request"]["resourceLogs"]) {
            let resource = attributes(&rl["resource"]["attributes"]);
            for sl in array(&rl["scopeLogs"]) {
                let scope = sl["scope"]["name"].as_str().unwrap_or("").to_string();
                for r in array(&sl["logRecords"]) {
                    let attributes = attributes(&r["attributes"]);
                    let event_name = r["eventName"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .or_else(|| attributes.get("event.name")?.as_str())
                        .unwrap_or("")
                        .to_string();
                    out.push(LogRecord {
                        request: i,
                        resource: resource.clone(),
                        scope: scope.clone(),
                        event_name,
                        attributes,
                        record: r.clone(),
                    });
                }
            }
        }
    }
    out
}
