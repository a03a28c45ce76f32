//! OpAMP servers for the OpAMP tests, neither sharing code with the agent's client:
//!
//! - [`mock::MockOpamp`]: `@elastic/mockopampserver` (npm), a third-party OpAMP server over plain HTTP,
//!   run from its own CLI: `-F` offers a config file, `-T` (test mode) adds
//!   `POST /api/agentConfigMap` to change the offer while it runs. Its CLI always listens on
//!   port 4320, so each server gets its own loopback address (127.x.y.z) instead of its own
//!   port. Its debug log (bunyan JSON on stdout) holds every request and answer.
//! - [`ws::WsServer`]: `tests/opamp_server/server.py`, a WebSocket OpAMP server (none is
//!   installable) on the PyPI `websockets` package and `protoc`-generated Python messages,
//!   scripted through stdin and reporting every message as a JSON line.
//!
//! Both installed by `cargo xtask setup --test-peers`.

//!
//! `pprof.rs` reads the profile windows the agent writes (its profiler's frequency and sample
//! rate); the rest here are helpers the OpAMP test files share.

pub mod mock;
pub mod pprof;
pub mod ws;

use std::{sync::Arc, thread};

use serde_json::Value;

use crate::{bpf_programs_of, Agent};
use pprof::{profile_files, profile_windows, window, Window};

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

/// The capability bits the agent declares with remote config on: ReportsStatus,
/// AcceptsRemoteConfig, ReportsEffectiveConfig, ReportsOwnMetrics, ReportsOwnLogs,
/// AcceptsOpAMPConnectionSettings, AcceptsRestartCommand, ReportsHealth, ReportsRemoteConfig,
/// ReportsHeartbeat, ReportsConnectionSettingsStatus.
pub const CAPABILITIES: u64 =
    0x1 | 0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x1000 | 0x2000 | 0x8000;

/// The local config: the syscall probe (the profiler only with `profiler`), files for output,
/// OpAMP at `endpoint`; `opamp_extra` lines go under `opamp:`.
pub fn local(endpoint: &str, profiler: bool, opamp_extra: &str) -> String {
    let profiler = if profiler {
        "  profiler: {frequency: 19, interval: 1s, debug_info: false}\n"
    } else {
        "  profiler: {enabled: false}\n"
    };
    format!(
        "output: {{interval: 1s}}\nprobes:\n  network: {{enabled: false}}\n  syscalls: {{interval: 1s}}\n{profiler}opamp:\n  endpoint: {endpoint}\n{opamp_extra}"
    )
}

pub fn opamp(a: &Agent) -> Value {
    a.status()["opamp"].clone()
}

/// The instance uid, once the OpAMP client runs (it starts after the probes).
pub fn wait_uid(a: &Agent) -> String {
    a.wait_for(|a| opamp(a)["instance_uid"].is_string(), "the OpAMP client");
    opamp(a)["instance_uid"].as_str().unwrap().to_string()
}

pub fn syscall_programs(a: &Agent) -> usize {
    bpf_programs_of(a.child.id())
        .iter()
        .filter(|(_, n)| n.starts_with("syscalls_"))
        .count()
}

/// Waits until the remote config status on /status is `status` for a hash other than `not`.
pub fn wait_remote(a: &Agent, status: &str, not: Option<&str>) -> Value {
    a.wait_for(
        |a| {
            let rc = &opamp(a)["remote_config"];
            rc["status"] == status && rc["hash"].as_str() != not
        },
        &format!("remote config {status}"),
    );
    opamp(a)["remote_config"].clone()
}

/// received → applied on the agent's own clock, in ms.
pub fn apply_ms(rc: &Value) -> u64 {
    let ms = rc["applied_unix_ms"].as_u64().unwrap() - rc["received_unix_ms"].as_u64().unwrap();
    eprintln!(
        "remote config {}: received → applied in {ms} ms",
        rc["hash"]
    );
    ms
}

/// Waits until the profiler has symbolized once (the first symbolization of a debug build
/// reads every binary's symbols and takes seconds; a reload drains one last window).
pub fn wait_profiler_warm(a: &Agent) {
    a.wait_for(
        |a| {
            a.status()["maps"]["PROFILE_COUNTS"]["detail"]["symbol_lookups"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
        "the profiler's first symbolization",
    );
}

/// Profiler samples per second (not idle) at `hz`, from the pprof windows the agent wrote
/// (decoded by protoc); waits until they span `secs` seconds. Each window names its own
/// period, so windows of the old and the new frequency cannot mix.
pub fn sample_rate(a: &Agent, hz: u64, secs: f64) -> f64 {
    let period = 1_000_000_000 / hz;
    let dir = a.dir.join("out/profiles");
    let report = |(s, r): (f64, f64)| {
        eprintln!("profiler at {hz} Hz: {r:.1} samples/s over {s:.1} s");
        r
    };
    // (seconds covered, samples/s)
    let read = || {
        let w: Vec<Window> = profile_windows(&dir)
            .into_iter()
            .filter(|w| w.period_nanos == period)
            .collect();
        let s: f64 = w.iter().map(|w| w.duration_nanos as f64 / 1e9).sum();
        (
            s,
            w.iter().map(|w| w.samples).sum::<u64>() as f64 / s.max(1e-9),
        )
    };
    a.wait_for(
        |_| read().0 >= secs,
        &format!("{secs} s of profiles at {hz} Hz"),
    );
    report(read())
}

/// The next profile window the agent writes.
pub fn next_window(a: &Agent) -> Window {
    let dir = a.dir.join("out/profiles");
    let newest = profile_files(&dir).pop();
    a.wait_for(|_| profile_files(&dir).pop() != newest, "a new profile");
    let f = profile_files(&dir).pop().unwrap();
    a.wait_for(|_| window(&f).is_some(), "a complete profile file");
    window(&f).unwrap()
}

/// Bound for a remote config that reloads the profiler (received → applied). Most of it is the
/// profiler's own reload: it finishes the symbolization in progress, symbolizes its last window
/// and loads and verifies a new kernel object; in the debug build on the shared 2-CPU VM that
/// measured 0.6-2.2 s. Configs without a reload are held to 2 s.
pub const PROFILER_RELOAD_MS: u64 = 5000;

pub const DETACH: &str = "probes:\n  syscalls: {enabled: false}\n";
pub const DETACH_99HZ: &str =
    "probes:\n  syscalls: {enabled: false}\n  profiler: {frequency: 99}\n";
pub const BAD_FREQUENCY: &str =
    "probes:\n  syscalls: {enabled: false}\n  profiler: {frequency: 5000}\n";

/// The effective config YAML an AgentToServer carries.
pub fn effective_yaml(m: &Value) -> Option<String> {
    let b =
        m["msg"]["effective_config"]["config_map"]["config_map"]["agent.yaml"]["body"].as_str()?;
    String::from_utf8(base64_decode(b)?).ok()
}

pub fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}
