//! `signal`: from userspace through a pidfd (the process is the one judged: its start time is
//! checked after the pidfd is open, so a reused pid is never signalled), or from the kernel at
//! the process's next matching syscall (`agent-ebpf/src/bin/signal.rs`, `bpf_send_signal`,
//! process context) when the rule names a syscall. The raw tracepoint is attached only while a
//! target is armed.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, SystemTime},
};

use agent_common::signal::{counter, SigEvent, SigTarget, COUNTERS_MAP, EVENTS_MAP, TARGETS_MAP};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint},
    Ebpf,
};

use crate::ebpf::{self, LoadError};

pub const PROBE: &str = "signal";
const PROG: &str = "signal_sys_enter";

/// The start time (clock ticks after boot) of `pid`, or `None` if it is gone.
pub fn start_ticks(pid: u32) -> Option<u64> {
    Some(stat(pid)?.starttime)
}

/// The process state letter (`R`, `S`, `T`, ...) of `pid`.
pub fn state(pid: u32) -> Option<char> {
    Some(stat(pid)?.state)
}

/// `/proc/<pid>/stat`, parsed by procfs from one `open(2)`.
fn stat(pid: u32) -> Option<procfs::process::Stat> {
    use procfs::FromRead;
    procfs::process::Stat::from_file(format!("/proc/{pid}/stat")).ok()
}

/// Sends `sig` to `pid` if it is still the process that started at `start_ticks`.
pub fn send(pid: u32, start: u64, sig: i32) -> Result<(), String> {
    // SAFETY: pidfd_open(2) takes a pid and flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(format!("pid {pid}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd pins the process: if the start time still matches now, the signal goes to it.
    if start_ticks(pid) != Some(start) {
        return Err(format!("pid {pid} is another process now (or exited)"));
    }
    // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        return Err(format!("pid {pid}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Monotonic ns (CLOCK_MONOTONIC, what `bpf_ktime_get_ns` reads).
fn ktime_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall time of a kernel ktime.
pub fn wall_of_ktime(k: u64) -> SystemTime {
    let now_k = ktime_now();
    let now = SystemTime::now();
    if k <= now_k {
        now - Duration::from_nanos(now_k - k)
    } else {
        now + Duration::from_nanos(k - now_k)
    }
}

/// One send the kernel made (or failed to make).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub pid: u32,
    pub signal: u32,
    pub syscall: i64,
    pub at: SystemTime,
    pub result: i64,
}

/// The in-kernel sender, loaded on first use.
pub struct KernelSignals {
    bpf: Ebpf,
    events: RingBuf<MapData>,
    link: Option<RawTracePointLinkId>,
    /// Armed pids → when armed.
    armed: HashMap<u32, SystemTime>,
}

impl KernelSignals {
    pub fn load() -> Result<KernelSignals, LoadError> {
        let mut bpf = ebpf::load(PROBE, |_| {})?;
        let p: &mut RawTracePoint = ebpf::program(&mut bpf, PROBE, PROG)?;
        p.load()
            .map_err(|e| ebpf::explain(&format!("loading {PROG}"), &e))?;
        let events = bpf.take_map(EVENTS_MAP).ok_or_else(|| {
            LoadError::new(
                format!("{EVENTS_MAP} missing"),
                "rebuild with `cargo xtask build-ebpf`",
            )
        })?;
        let events = RingBuf::try_from(events).map_err(|e| ebpf::explain(EVENTS_MAP, &e))?;
        Ok(KernelSignals {
            bpf,
            events,
            link: None,
            armed: HashMap::new(),
        })
    }

    fn targets(&mut self) -> Result<BpfHashMap<&mut MapData, u32, SigTarget>, String> {
        let m = self
            .bpf
            .map_mut(TARGETS_MAP)
            .ok_or_else(|| format!("{TARGETS_MAP} missing"))?;
        BpfHashMap::try_from(m).map_err(|e| e.to_string())
    }

    /// Arms `pid`: the kernel sends `sig` at its next `syscall`.
    pub fn arm(&mut self, pid: u32, sig: i32, syscall: u32) -> Result<(), String> {
        let t = SigTarget {
            signal: sig as u32,
            _pad: 0,
            syscall: i64::from(syscall),
            armed_ns: ktime_now(),
        };
        self.targets()?
            .insert(pid, t, 0)
            .map_err(|e| format!("cannot arm pid {pid}: {e}"))?;
        if self.link.is_none() {
            let p: &mut RawTracePoint =
                ebpf::program(&mut self.bpf, PROBE, PROG).map_err(|e| e.cause)?;
            let id = p
                .attach("sys_enter")
                .map_err(|e| ebpf::explain("attaching raw_tracepoint/sys_enter", &e).to_string())?;
            self.link = Some(id);
        }
        self.armed.insert(pid, SystemTime::now());
        Ok(())
    }

    /// Disarms `pid` (it exited, or the decision expired).
    pub fn disarm(&mut self, pid: u32) {
        let _ = self.targets().map(|mut t| t.remove(&pid));
        self.armed.remove(&pid);
        self.detach_if_idle();
    }

    fn detach_if_idle(&mut self) {
        if self.armed.is_empty() {
            if let Some(id) = self.link.take() {
                if let Ok(p) = ebpf::program::<RawTracePoint>(&mut self.bpf, PROBE, PROG) {
                    let _ = p.detach(id);
                }
            }
        }
    }

    pub fn armed(&self) -> impl Iterator<Item = (&u32, &SystemTime)> {
        self.armed.iter()
    }

    /// The sends since the last call.
    pub fn poll(&mut self) -> Vec<Sent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<SigEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole SigEvent; read unaligned from the ring.
            let ev: SigEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            out.push(Sent {
                pid: ev.tgid,
                signal: ev.signal,
                syscall: ev.syscall,
                at: wall_of_ktime(ev.sent_ns),
                result: ev.result,
            });
        }
        for s in &out {
            if s.result == 0 {
                self.armed.remove(&s.pid);
            }
        }
        if !out.is_empty() {
            self.detach_if_idle();
        }
        out
    }

    pub fn attached(&self) -> bool {
        self.link.is_some()
    }

    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        ebpf::per_cpu_counters(&self.bpf, COUNTERS_MAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_and_continue_a_child_through_a_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_ticks(pid).unwrap();
        send(pid, start, libc::SIGSTOP).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state(pid) != Some('T') && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(state(pid), Some('T'));
        // Another start time: refused, nothing sent.
        assert!(send(pid, start + 1, libc::SIGCONT).is_err());
        assert_eq!(state(pid), Some('T'));
        send(pid, start, libc::SIGCONT).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state(pid) == Some('T') && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_ne!(state(pid), Some('T'));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(send(pid, start, libc::SIGCONT).is_err(), "exited");
    }
}
