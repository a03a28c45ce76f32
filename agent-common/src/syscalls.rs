//! Maps, keys and values of the syscall latency probe (`raw_syscalls` enter/exit).
//!
//! Layout invariants (both sides compile against these, so they cannot drift):
//! - `SYSCALL_STATS` is a per-CPU hash `SyscallKey -> SyscallStats` (not LRU: a live process's
//!   entries are never pushed out); values are cumulative since the key was created. Userspace
//!   never resets them while the incarnation lives, so reading is race-free; it deletes a key
//!   only after its incarnation ended (exit, or exec: `SYSCALL_PROC_GEN` moved on). When the
//!   hash is full, a new key's calls go to `SYSCALL_OVERFLOW[nr]` (counted), so every call lands
//!   somewhere.
//! - Histogram bucket `b` counts latencies in `(2^(b-1), 2^b]` nanoseconds (bucket 0 is
//!   `[0, 1]`); the last bucket is open-ended. The bounds match Prometheus `le` and
//!   OTLP explicit-bucket bounds exactly.

use crate::COMM_LEN;

/// Number of log2 latency buckets; bucket `HIST_BUCKETS - 1` is the overflow (> 2^38 ns, ~275 s).
pub const HIST_BUCKETS: usize = 40;
/// Syscall numbers at or above this are ignored (and counted). x86_64 and ia32 numbers are below
/// 512; x32 calls carry bit 30 and land here.
pub const MAX_SYSCALL_NR: u32 = 512;
/// Default number of in-flight slots (a power of two); one slot per thread in a syscall,
/// indexed by `tid & (slots - 1)`.
pub const DEFAULT_INFLIGHT_SLOTS: u32 = 1 << 18;

/// Default entries per CPU of the fast table (a power of two; 0 turns it off).
pub const DEFAULT_FAST_SLOTS: u32 = 1024;

/// Map names, shared so the loader and the programs agree.
pub const STATS_MAP: &str = "SYSCALL_STATS";
pub const ERRORS_MAP: &str = "SYSCALL_ERRORS";
pub const INFLIGHT_MAP: &str = "SYSCALL_INFLIGHT";
pub const COUNTERS_MAP: &str = "SYSCALL_COUNTERS";
pub const FAST_MAP: &str = "SYSCALL_FAST";
/// Per-CPU array, one entry per syscall number: calls whose (process, syscall) found
/// `SYSCALL_STATS` full. Never full, so no call is lost for lack of an entry.
pub const OVERFLOW_MAP: &str = "SYSCALL_OVERFLOW";
/// Per-CPU array, one entry per syscall number: errors whose key found `SYSCALL_ERRORS` full.
pub const ERRORS_OVERFLOW_MAP: &str = "SYSCALL_ERRORS_OVERFLOW";
/// Hash `tgid -> generation` of every live process seen making a syscall (see [`ProcGen`]).
pub const PROC_GEN_MAP: &str = "SYSCALL_PROC_GEN";
/// Ring buffer of [`ProcEvent`]s (exec).
pub const PROC_EVENTS_MAP: &str = "SYSCALL_PROC_EVENTS";
/// Global (`.rodata`) holding `inflight slots - 1`.
pub const INFLIGHT_MASK_GLOBAL: &str = "SYSCALL_INFLIGHT_MASK";
/// Global (`.rodata`) holding `log2(fast slots per CPU)`, or 32 when the fast table is off.
pub const FAST_SHIFT_GLOBAL: &str = "SYSCALL_FAST_SHIFT";
/// Global (`.rodata`): offset of `group_dead` in the `sched_process_exit` tracepoint record,
/// or [`NO_FIELD`] on kernels without it (then a leader's exit stands for the group's).
pub const EXIT_GROUP_DEAD_GLOBAL: &str = "SYSCALL_EXIT_GROUP_DEAD_OFF";
/// Global (`.rodata`): offset of the `__data_loc char[] filename` field in the
/// `sched_process_exec` tracepoint record.
pub const EXEC_FILENAME_GLOBAL: &str = "SYSCALL_EXEC_FILENAME_OFF";
/// A tracepoint field this kernel does not have.
pub const NO_FIELD: u32 = u32::MAX;
/// `group_dead`'s offset in `sched_process_exit` on Linux 6.18 (read from tracefs at load).
pub const DEFAULT_GROUP_DEAD_OFF: u32 = 32;
/// `filename`'s offset in `sched_process_exec` (stable since 3.x; read from tracefs at load).
pub const DEFAULT_EXEC_FILENAME_OFF: u32 = 8;
/// Bytes of the exec'd path kept in an event.
pub const FILENAME_LEN: usize = 256;

/// Key of the aggregation maps: one entry per (process incarnation, syscall).
///
/// `gen` tells incarnations of one pid apart: it is the kernel time (ns) at which the process was
/// first seen making a syscall or last exec'd (`SYSCALL_PROC_GEN`), so a pid reused by a new
/// process, or a process that execs, starts new keys and what was measured before the change
/// stays with what the process was then. 0: unknown (the generation map was full).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    pub tgid: u32,
    pub nr: u32,
    pub gen: u64,
}

/// The generation of the process last seen on one CPU (`SYSCALL_GEN_CACHE`, per-CPU): valid
/// while the global exec/exit epoch (`SYSCALL_GEN_EPOCH`) has not moved, so the hot path reads
/// two arrays instead of hashing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenCache {
    pub tgid: u32,
    pub _pad: u32,
    pub epoch: u64,
    pub gen: u64,
}

/// Kinds of [`ProcEvent`].
pub const PROC_EVENT_EXEC: u32 = 1;

/// A process identity change, sent by the exec hook so userspace names the new incarnation
/// from `/proc` while it still runs (or from `filename` when it is already gone).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    /// The new incarnation's generation.
    pub gen: u64,
    /// The incarnation that exec'd (0 if it made no syscall since attach).
    pub old_gen: u64,
    pub time_ns: u64,
    /// The new command name.
    pub comm: [u8; COMM_LEN],
    /// The path given to execve (relative paths stay relative), NUL-terminated.
    pub filename: [u8; FILENAME_LEN],
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

/// One entry of the fast table `SYSCALL_FAST`: a plain array of `cpus × slots` entries, entry
/// `cpu × slots + fast_index(key)` owned by one key on one CPU. The kernel adds to it in place
/// when the key matches, claims it when free (`key.tgid == 0`), and otherwise falls back to the
/// hash: every call lands in exactly one place and nothing is ever moved, so the reader
/// never races a transfer. Only the owning CPU writes an entry (a run preempted mid-update
/// blocks re-entry on that CPU: the kernel skips it and counts a recursion miss).
///
/// Userspace frees an entry only after its process was dead before the read, with a single
/// write of zeroed stats and `key` = 0. `key` is the last field and the kernel's map copy runs
/// forward, so the free bytes of the tag land last: the kernel can claim only a fully written
/// entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FastEntry {
    pub stats: SyscallStats,
    pub key: SyscallKey,
}

/// Index of `key` within one CPU's share of the fast table (`shift` = log2 slots per CPU).
#[inline(always)]
pub fn fast_index(key: &SyscallKey, shift: u32) -> u32 {
    // Multiplicative hashing: the top `shift` bits of a 32-bit product spread pid and nr.
    let h = key.tgid.wrapping_mul(0x9E37_79B1) ^ key.nr.wrapping_mul(0x85EB_CA77);
    if shift == 0 {
        0
    } else {
        h >> (32 - shift)
    }
}

/// Key of the error map (per-CPU hash): one entry per (process incarnation, syscall, errno);
/// the value is a cumulative `u64` count per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallErrorKey {
    pub tgid: u32,
    pub nr: u32,
    pub errno: u32,
    pub _pad: u32,
    pub gen: u64,
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
    /// Fast-table entries claimed (a new key taking a free entry; rare path).
    pub const FAST_CLAIMS: u32 = 0;
    /// Exits whose enter was not seen: the call started before attach, or its slot was
    /// taken by another thread (see `SLOT_COLLISIONS`). These calls are not timed.
    /// (A new thread or process returning from clone/fork is counted in `CHILD_RETURNS`.)
    pub const UNMATCHED_EXITS: u32 = 1;
    /// Enters that found their slot held by another thread's call in flight.
    pub const SLOT_COLLISIONS: u32 = 2;
    /// Calls whose new (process, syscall) entry did not fit in `SYSCALL_STATS` (full): they are
    /// counted in `SYSCALL_OVERFLOW` (the "other" series), not lost.
    pub const STATS_FOLDED: u32 = 3;
    /// Errors whose new (process, syscall, errno) entry did not fit: counted in
    /// `SYSCALL_ERRORS_OVERFLOW` with errno unknown.
    pub const ERRORS_FOLDED: u32 = 4;
    /// Syscall numbers outside `0..MAX_SYSCALL_NR`.
    pub const NR_OUT_OF_RANGE: u32 = 5;
    /// New (process, syscall) entries created.
    pub const STATS_INSERTS: u32 = 6;
    /// Returns of a new child from clone/clone3/fork/vfork: an exit with no enter on that tid,
    /// and no call lost (the parent's call is timed).
    pub const CHILD_RETURNS: u32 = 7;
    /// Calls of processes whose generation could not be recorded (`SYSCALL_PROC_GEN` full):
    /// counted under generation 0, so a pid reused within one drain may mix.
    pub const GEN_UNKNOWN: u32 = 8;
    /// Exec events the ring buffer had no room for (the new incarnation is named from `/proc`
    /// at the next drain, or from its command name).
    pub const EVENTS_LOST: u32 = 9;
    /// Execs seen.
    pub const EXECS: u32 = 10;
    /// Process exits (whole thread groups) seen.
    pub const EXITS: u32 = 11;
    /// Number of counters.
    pub const COUNT: u32 = 12;
}

/// Bucket index of a latency in nanoseconds: `(2^(b-1), 2^b]`, clamped to the last bucket.
#[inline(always)]
pub fn bucket_of(ns: u64) -> usize {
    crate::hist::log2_bucket(ns, HIST_BUCKETS)
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SyscallKey {}
    unsafe impl aya::Pod for super::SyscallStats {}
    unsafe impl aya::Pod for super::SyscallErrorKey {}
    unsafe impl aya::Pod for super::InFlight {}
    unsafe impl aya::Pod for super::FastEntry {}
    unsafe impl aya::Pod for super::GenCache {}
    unsafe impl aya::Pod for super::ProcEvent {}
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
        assert_eq!(core::mem::size_of::<SyscallKey>(), 16);
        assert_eq!(core::mem::size_of::<SyscallErrorKey>(), 24);
        assert_eq!(core::mem::size_of::<InFlight>(), 16);
        assert_eq!(core::mem::size_of::<SyscallStats>(), 48 + 8 * HIST_BUCKETS);
        assert_eq!(core::mem::size_of::<FastEntry>(), 64 + 8 * HIST_BUCKETS);
        assert_eq!(core::mem::size_of::<ProcEvent>(), 48 + FILENAME_LEN);
        // The tag must be the last field (see FastEntry).
        assert_eq!(core::mem::offset_of!(FastEntry, key), 48 + 8 * HIST_BUCKETS);
    }

    #[test]
    fn fast_index_stays_in_range_and_spreads() {
        for shift in [0u32, 1, 4, 10, 16] {
            let mut seen = [false; 1 << 16];
            for tgid in 1..200u32 {
                for nr in 0..20u32 {
                    let i = fast_index(&SyscallKey { tgid, nr, gen: 0 }, shift);
                    assert!(i < 1 << shift, "{i} for shift {shift}");
                    seen[i as usize] = true;
                }
            }
            let used = seen.iter().filter(|s| **s).count();
            // 4,000 keys: a good spread fills nearly every slot of small tables.
            assert!(
                used >= ((1usize << shift) * 9 / 10).min(3000),
                "shift {shift}: {used}"
            );
        }
    }
}
