//! Maps, keys and events of the CPU profiler (perf_event `cpu-clock` sampling).
//!
//! Layout invariants (both sides compile against these, so they cannot drift):
//! - Two generations of (`PROFILE_COUNTS_<g>`, `PROFILE_STACKS_<g>`): the program writes into the
//!   generation `PROFILE_GEN[0]` names; userspace flips it, waits for in-flight programs, then
//!   reads and clears the other one. No sample is lost or counted twice by a drain.
//! - A stack id is only meaningful in the generation that produced it.
//! - `PROFILE_PIDS` remembers which processes userspace was told about, and as what: each
//!   announcement starts an *incarnation* (the boot-clock time of the announcement), carried by
//!   every sample of it. A process that execs, and a process whose main thread exits (its pid may
//!   be reused), is forgotten, so what runs under that pid next is announced again as a new
//!   incarnation: samples before and after an exec or a pid reuse never share a key, and each
//!   is symbolized with the mappings of what the process was when it was sampled.

use crate::COMM_LEN;

/// Deepest stack `bpf_get_stackid`/`bpf_get_stack` return (`PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

pub const COUNTS_MAP: [&str; 2] = ["PROFILE_COUNTS_0", "PROFILE_COUNTS_1"];
pub const STACKS_MAP: [&str; 2] = ["PROFILE_STACKS_0", "PROFILE_STACKS_1"];
pub const GEN_MAP: &str = "PROFILE_GEN";
pub const PIDS_MAP: &str = "PROFILE_PIDS";
pub const PID_EVENTS_MAP: &str = "PROFILE_PID_EVENTS";
pub const SAMPLES_MAP: &str = "PROFILE_SAMPLES";
pub const COUNTERS_MAP: &str = "PROFILE_COUNTERS";
/// Global (`.rodata`): 1 to sample the idle task (pid 0) too.
pub const INCLUDE_IDLE_GLOBAL: &str = "PROFILE_INCLUDE_IDLE";

/// Program names: in-kernel aggregation (the default) or one ring buffer record per sample.
pub const PROG_AGGREGATE: &str = "profile_aggregate";
pub const PROG_STREAM: &str = "profile_stream";
/// `sched:sched_process_exec`: forgets the process so its new mappings are announced.
pub const PROG_EXEC: &str = "profile_exec";
/// `sched:sched_process_exit`: forgets a process whose main thread exits (its pid may be
/// reused by another process).
pub const PROG_EXIT: &str = "profile_exit";

/// Indices of `PROFILE_COUNTERS` (per-CPU, cumulative).
pub mod counter {
    /// Samples taken (idle ones included).
    pub const SAMPLES: u32 = 0;
    /// Samples of the idle task, dropped (unless idle sampling is on).
    pub const IDLE: u32 = 1;
    /// Samples lost because the counts map was full.
    pub const COUNTS_FULL: u32 = 2;
    /// User stacks lost: the stack map bucket held another stack (`-EEXIST`).
    pub const USER_COLLISIONS: u32 = 3;
    /// Kernel stacks lost the same way.
    pub const KERNEL_COLLISIONS: u32 = 4;
    /// User stacks that could not be walked at all (no user context, or a fault).
    pub const USER_MISSING: u32 = 5;
    /// Streamed samples lost because the ring buffer was full.
    pub const STREAM_FULL: u32 = 6;
    /// New-process events lost because their ring buffer was full.
    pub const PID_EVENTS_FULL: u32 = 7;
    /// Stack maps full (`-ENOMEM`/`-E2BIG` from get_stackid).
    pub const STACKS_FULL: u32 = 8;
    /// DWARF unwinder: samples it unwound (the rest of these counters too).
    pub const DWARF_SAMPLES: u32 = 9;
    /// Samples of processes whose tables were not loaded yet: frame pointers walked instead.
    pub const DWARF_NOT_LOADED: u32 = 10;
    /// Frames unwound from a table, and by frame pointer (a mapping without one).
    pub const FRAMES_TABLE: u32 = 11;
    pub const FRAMES_FP: u32 = 12;
    /// Why unwinds ended: the outermost frame (clean), a zero return address or frame
    /// pointer (clean), an address in no known mapping (userspace decides), no row or an
    /// unsupported rule, a failed read of the stack, the depth limit, and tail calls that
    /// failed (the unwind ends where it is).
    pub const STOP_END: u32 = 13;
    pub const STOP_ZERO: u32 = 14;
    pub const STOP_NO_MAPPING: u32 = 15;
    pub const STOP_NO_ROW: u32 = 16;
    pub const STOP_READ: u32 = 17;
    pub const STOP_DEPTH: u32 = 18;
    pub const TAIL_CALL_FAILED: u32 = 19;
    /// Unwound stacks lost because `PROFILE_USTACKS` was full.
    pub const USTACKS_FULL: u32 = 20;
    pub const COUNT: u32 = 21;
}

/// `bpf_get_stackid` errors that mean the stack existed but was not stored.
pub const EEXIST: i32 = 17;
pub const ENOMEM: i32 = 12;

/// A negative stack id that means the stack was lost (bucket taken by another stack, or the
/// map full), as opposed to there being no stack (a kernel thread's user stack, a user-mode
/// sample's kernel stack).
#[inline(always)]
pub fn stack_lost(id: i32) -> bool {
    id == -EEXIST || id == -ENOMEM
}

/// `SampleKey::user_stack` of a stack the DWARF unwinder produced (see `user_hash`).
pub const USER_STACK_UNWOUND: i32 = i32::MIN;

/// Key of the in-kernel aggregation: one entry per (thread, user stack, kernel stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub tgid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    /// The process's incarnation (see the module docs).
    pub incarnation: u64,
    /// With `user_stack == USER_STACK_UNWOUND`: the key of the user stack in this generation's
    /// `PROFILE_USTACKS` (the DWARF unwinder's stacks). 0 otherwise.
    pub user_hash: u64,
    /// Stack id in this generation's stack map, [`USER_STACK_UNWOUND`], or a negative errno
    /// (no user stack).
    pub user_stack: i32,
    /// Stack id, or a negative errno (no kernel stack: the sample hit user mode).
    pub kernel_stack: i32,
    pub comm: [u8; COMM_LEN],
}

/// One sample streamed through `PROFILE_SAMPLES` (stream mode): header then both stacks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StreamSample {
    pub tgid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub incarnation: u64,
    /// Bytes of `user` filled (a multiple of 8), or a negative errno.
    pub user_len: i32,
    /// Bytes of `kernel` filled, or a negative errno.
    pub kernel_len: i32,
    pub comm: [u8; COMM_LEN],
    pub user: [u64; MAX_STACK_DEPTH],
    pub kernel: [u64; MAX_STACK_DEPTH],
}

/// A process userspace has not seen since it started (or exec'd): snapshot its mappings now,
/// if `PROFILE_PIDS` still holds this incarnation (else it already exec'd or exited).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidEvent {
    pub tgid: u32,
    pub _pad: u32,
    /// Boot-clock nanoseconds of the announcement (`bpf_ktime_get_boot_ns`).
    pub incarnation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(core::mem::size_of::<SampleKey>(), 56);
        assert_eq!(core::mem::size_of::<PidEvent>(), 16);
        assert_eq!(
            core::mem::size_of::<StreamSample>(),
            48 + 2 * 8 * MAX_STACK_DEPTH
        );
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SampleKey {}
    unsafe impl aya::Pod for super::PidEvent {}
}
