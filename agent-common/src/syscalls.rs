//! Maps, keys and values of the syscall latency probe (`raw_syscalls` enter/exit).
//!
//! Layout invariants (both sides compile against these, so they cannot drift):
//! - `SYSCALL_STATS` is an LRU per-CPU hash `SyscallKey -> SyscallStats`; values are
//!   cumulative since the key was created. Userspace never resets them while the
//!   process lives, so reading is race-free; it deletes a key only after the process exited.
//! - Histogram bucket `b` counts latencies in `(2^(b-1), 2^b]` nanoseconds (bucket 0 is
//!   `[0, 1]`); the last bucket is open-ended. The bounds match Prometheus `le` and
//!   OTLP explicit-bucket bounds exactly.

use crate::COMM_LEN;

/// Number of log2 latency buckets; bucket `HIST_BUCKETS - 1` is the overflow (> 2^38 ns, ~275 s).
pub const HIST_BUCKETS: usize = 40;
/// Syscall numbers at or above this are ignored (and counted).
pub const MAX_SYSCALL_NR: u32 = 1024;
/// Default number of in-flight slots (a power of two); one slot per thread in a syscall,
/// indexed by `tid & (slots - 1)`.
pub const DEFAULT_INFLIGHT_SLOTS: u32 = 1 << 18;

/// Map names, shared so the loader and the programs agree.
pub const STATS_MAP: &str = "SYSCALL_STATS";
pub const ERRORS_MAP: &str = "SYSCALL_ERRORS";
pub const INFLIGHT_MAP: &str = "SYSCALL_INFLIGHT";
pub const COUNTERS_MAP: &str = "SYSCALL_COUNTERS";
/// Global (`.rodata`) holding `inflight slots - 1`.
pub const INFLIGHT_MASK_GLOBAL: &str = "SYSCALL_INFLIGHT_MASK";

/// Key of the aggregation map: one entry per (process, syscall).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    pub tgid: u32,
    pub nr: u32,
}

/// Cumulative latency histogram of one (process, syscall) on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallStats {
    pub count: u64,
    pub sum_ns: u64,
    /// Calls that returned an error (`-4095 <= ret < 0`).
    pub errors: u64,
    /// cgroup v2 id of the task when the entry was created (container attribution
    /// for processes that exited before userspace looked).
    pub cgroup_id: u64,
    /// Command name when the entry was created (attribution of short-lived processes).
    pub comm: [u8; COMM_LEN],
    pub buckets: [u64; HIST_BUCKETS],
}

impl SyscallStats {
    pub const ZERO: SyscallStats = SyscallStats {
        count: 0,
        sum_ns: 0,
        errors: 0,
        cgroup_id: 0,
        comm: [0; COMM_LEN],
        buckets: [0; HIST_BUCKETS],
    };
}

/// Key of the error map (LRU per-CPU hash): one entry per (process, syscall, errno); the value
/// is a cumulative `u64` count per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallErrorKey {
    pub tgid: u32,
    pub nr: u32,
    pub errno: u32,
    pub _pad: u32,
}

/// A syscall in flight on one thread (slot of `SYSCALL_INFLIGHT`). `tid == 0` means free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InFlight {
    pub tid: u32,
    pub nr: u32,
    pub start_ns: u64,
}

/// Indices into the per-CPU `SYSCALL_COUNTERS` array: the probe's own health counters.
pub mod counter {
    /// Unused (was: exits aggregated; userspace now derives that from the histograms, which
    /// keeps a per-CPU increment off the hot path).
    pub const RESERVED: u32 = 0;
    /// Exits whose enter was not seen: the call started before attach, or its slot was
    /// taken by another thread (see `SLOT_COLLISIONS`). These calls are not timed.
    /// (A new thread or process returning from clone/fork is counted in `CHILD_RETURNS`.)
    pub const UNMATCHED_EXITS: u32 = 1;
    /// Enters that found their slot held by another thread's call in flight.
    pub const SLOT_COLLISIONS: u32 = 2;
    /// New (process, syscall) entries that could not be inserted: the call is lost.
    pub const STATS_INSERT_FAILED: u32 = 3;
    /// New (process, syscall, errno) entries that could not be inserted.
    pub const ERRORS_INSERT_FAILED: u32 = 4;
    /// Syscall numbers outside `0..MAX_SYSCALL_NR`.
    pub const NR_OUT_OF_RANGE: u32 = 5;
    /// New (process, syscall) entries created (used to detect LRU evictions).
    pub const STATS_INSERTS: u32 = 6;
    /// Returns of a new child from clone/clone3/fork/vfork: an exit with no enter on that tid,
    /// and no call lost (the parent's call is timed).
    pub const CHILD_RETURNS: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

/// Bucket index of a latency in nanoseconds: `(2^(b-1), 2^b]`, clamped to the last bucket.
///
/// A six-step binary search: BPF has no count-leading-zeros instruction, and LLVM's generic
/// expansion of `leading_zeros` costs about 45 instructions on the syscall hot path.
#[inline(always)]
pub fn bucket_of(ns: u64) -> usize {
    let mut x = ns.saturating_sub(1);
    let mut b = 0usize;
    if x >= 1 << 32 {
        x >>= 32;
        b += 32;
    }
    if x >= 1 << 16 {
        x >>= 16;
        b += 16;
    }
    if x >= 1 << 8 {
        x >>= 8;
        b += 8;
    }
    if x >= 1 << 4 {
        x >>= 4;
        b += 4;
    }
    if x >= 1 << 2 {
        x >>= 2;
        b += 2;
    }
    if x >= 1 << 1 {
        x >>= 1;
        b += 1;
    }
    // x is now 1 (ns > 1) or 0 (ns <= 1): b + x = bit length of ns - 1.
    let b = b + x as usize;
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SyscallKey {}
    unsafe impl aya::Pod for super::SyscallStats {}
    unsafe impl aya::Pod for super::SyscallErrorKey {}
    unsafe impl aya::Pod for super::InFlight {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_inclusive_powers_of_two() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(4), 2);
        assert_eq!(bucket_of(5), 3);
        assert_eq!(bucket_of(1024), 10);
        assert_eq!(bucket_of(1025), 11);
        assert_eq!(bucket_of(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn bucket_matches_the_bit_length_definition() {
        let reference = |ns: u64| -> usize {
            if ns <= 1 {
                0
            } else {
                ((64 - (ns - 1).leading_zeros()) as usize).min(HIST_BUCKETS - 1)
            }
        };
        let mut ns = 0u64;
        while ns < 1 << 42 {
            for v in [ns, ns + 1, ns.saturating_sub(1), ns * 3 / 2] {
                assert_eq!(bucket_of(v), reference(v), "{v}");
            }
            ns = if ns == 0 { 1 } else { ns * 2 };
        }
        for v in 0..5000 {
            assert_eq!(bucket_of(v), reference(v), "{v}");
        }
    }

    #[test]
    fn value_layout_is_stable() {
        assert_eq!(core::mem::size_of::<SyscallKey>(), 8);
        assert_eq!(core::mem::size_of::<SyscallErrorKey>(), 16);
        assert_eq!(core::mem::size_of::<InFlight>(), 16);
        assert_eq!(core::mem::size_of::<SyscallStats>(), 48 + 8 * HIST_BUCKETS);
    }
}
