//! What each process did in one drain interval, per process incarnation and before any top-N
//! folding or aggregation level: the feed of the signal deriver (detection, decision engine).
//!
//! Invariants: every value is an increment over `elapsed`, the time measured between the two
//! kernel reads that bound the interval (not the nominal drain interval); an incarnation is one
//! `(pid, gen)`: a reused pid or an exec starts a new one.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

/// One process incarnation, named as it was when it ran.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    pub pid: u32,
    /// Tells incarnations of one pid apart, within one probe's batches (0 when unknown).
    /// Syscalls: the kernel's generation (ns since boot of the incarnation's first syscall or
    /// its exec). Network: the process's start time (`/proc/<pid>/stat` `starttime`, clock
    /// ticks after boot). The two probes' values for one process differ.
    pub gen: u64,
    /// `process.executable.name`: base name of `/proc/<pid>/exe` (semantic conventions).
    pub exe_name: Arc<str>,
    pub container_id: Option<Arc<str>>,
    /// cgroup v2 id of the process when first seen (0 if unknown).
    pub cgroup_id: u64,
}

/// One syscall's increments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallDelta {
    /// Syscall number (x86_64).
    pub nr: u32,
    pub calls: u64,
    pub errors: u64,
    /// Time spent in these calls, ns.
    pub duration_ns: u64,
}

/// What one incarnation did in the interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallActivity {
    pub process: ProcessRef,
    /// Per syscall, sorted by `nr`; only syscalls with calls or errors.
    pub syscalls: Vec<SyscallDelta>,
    /// The incarnation ended (exit, or exec into a new one) before this read.
    pub ended: bool,
}

impl SyscallActivity {
    pub fn calls(&self) -> u64 {
        self.syscalls.iter().map(|s| s.calls).sum()
    }
    pub fn errors(&self) -> u64 {
        self.syscalls.iter().map(|s| s.errors).sum()
    }
    pub fn duration_ns(&self) -> u64 {
        self.syscalls.iter().map(|s| s.duration_ns).sum()
    }
}

/// One process's TCP increments: its network series (every peer, port and role) summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkDelta {
    /// Handshakes completed (client and server).
    pub handshakes: u64,
    /// Their summed duration, µs.
    pub handshake_us: u64,
    /// Connections that failed (every `error.type`).
    pub failures: u64,
    /// Segments retransmitted.
    pub retransmits: u64,
    /// Segments sent, retransmissions included.
    pub segments_out: u64,
}

impl NetworkDelta {
    pub fn is_empty(&self) -> bool {
        *self == NetworkDelta::default()
    }
}

/// What one process did on TCP in the interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkActivity {
    pub process: ProcessRef,
    pub delta: NetworkDelta,
    /// The process exited (or another took its pid) before this read.
    pub ended: bool,
}

/// What one probe's drain saw.
#[derive(Clone, Debug)]
pub enum Activity {
    Syscalls(Vec<SyscallActivity>),
    Network(Vec<NetworkActivity>),
}

/// One drain's activity.
#[derive(Clone, Debug)]
pub struct ActivityBatch {
    /// The probe (`syscalls`, `network`).
    pub source: &'static str,
    /// When the kernel maps were read (the observation time).
    pub time: SystemTime,
    /// Measured time since the previous read of the same probe.
    pub elapsed: Duration,
    /// When the probe published it (after the read: attribution, names), for the decision
    /// path's latency stages.
    pub published: SystemTime,
    pub activity: Activity,
}
