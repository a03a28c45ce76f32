//! Syscall latency: `raw_syscalls` sys_enter/sys_exit raw tracepoints, aggregated in the kernel
//! into per-(process, syscall) log2 latency histograms. No per-syscall event leaves the kernel.
//!
//! Hot path: enter writes one array slot (an inlined array access, no hashing); exit reads it
//! back and adds to this CPU's fast-table entry for (tgid, nr), or, when another key holds that
//! entry, to the per-CPU LRU hash. Every miss is counted in `SYSCALL_COUNTERS`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

agent_ebpf::probe_object!();

#[cfg(target_arch = "bpf")]
mod probe {

    use agent_common::syscalls::{
        bucket_of, counter, fast_index, FastEntry, InFlight, SyscallErrorKey, SyscallKey,
        SyscallStats, DEFAULT_INFLIGHT_SLOTS, MAX_SYSCALL_NR,
    };
    use aya_ebpf::{
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
            generated::{bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_ktime_get_ns},
        },
        macros::{map, raw_tracepoint},
        maps::{Array, LruPerCpuHashMap, PerCpuArray},
        programs::RawTracePointContext,
    };
    use aya_log_ebpf::warn;

    /// `slots - 1`; set by the loader (`SYSCALL_INFLIGHT_MASK`) to match the array's size.
    #[no_mangle]
    static SYSCALL_INFLIGHT_MASK: u32 = DEFAULT_INFLIGHT_SLOTS - 1;

    #[map]
    static SYSCALL_INFLIGHT: Array<InFlight> = Array::with_max_entries(DEFAULT_INFLIGHT_SLOTS, 0);

    #[map]
    static SYSCALL_STATS: LruPerCpuHashMap<SyscallKey, SyscallStats> =
        LruPerCpuHashMap::with_max_entries(4096, 0);

    #[map]
    static SYSCALL_ERRORS: LruPerCpuHashMap<SyscallErrorKey, u64> =
        LruPerCpuHashMap::with_max_entries(4096, 0);

    /// `log2(fast slots per CPU)`, or 32 when the fast table is off; set by the loader.
    #[no_mangle]
    static SYSCALL_FAST_SHIFT: u32 = 32;

    #[map]
    static SYSCALL_FAST: Array<FastEntry> = Array::with_max_entries(1, 0);

    #[map]
    static SYSCALL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

    /// Per-CPU scratch value used to build a new stats entry off the 512-byte stack.
    #[map]
    static SYSCALL_SCRATCH: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(1, 0);

    const SYS_CLONE: u64 = 56;
    const SYS_FORK: u64 = 57;
    const SYS_VFORK: u64 = 58;
    const SYS_CLONE3: u64 = 435;
    /// Offset of `orig_ax` (the syscall number) in x86_64 `struct pt_regs`.
    const PT_REGS_ORIG_AX: usize = 15 * 8;
    const SYS_EXIT: u32 = 60;
    const SYS_EXIT_GROUP: u32 = 231;
    const MAX_ERRNO: i64 = 4095;

    #[inline(always)]
    fn bump(idx: u32) {
        agent_ebpf::bump(&SYSCALL_COUNTERS, idx);
    }

    #[inline(always)]
    fn slot_of(tid: u32) -> u32 {
        let mask = unsafe { core::ptr::read_volatile(&SYSCALL_INFLIGHT_MASK) };
        tid & mask
    }

    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn syscalls_enter(ctx: RawTracePointContext) -> i32 {
        try_syscalls_enter(&ctx).unwrap_or(0)
    }

    fn try_syscalls_enter(ctx: &RawTracePointContext) -> Result<i32, i64> {
        let nr: i64 = ctx.arg(1);
        if nr < 0 || nr >= MAX_SYSCALL_NR as i64 {
            bump(counter::NR_OUT_OF_RANGE);
            return Ok(0);
        }
        let nr = nr as u32;
        // These never return: a slot held for them would only cause false collisions.
        if nr == SYS_EXIT || nr == SYS_EXIT_GROUP {
            return Ok(0);
        }
        let tid = bpf_get_current_pid_tgid() as u32;
        let slot = SYSCALL_INFLIGHT.get_ptr_mut(slot_of(tid)).ok_or(0i64)?;
        let slot = unsafe { &mut *slot };
        if slot.tid != 0 && slot.tid != tid {
            bump(counter::SLOT_COLLISIONS);
        }
        slot.tid = tid;
        slot.nr = nr;
        slot.start_ns = unsafe { bpf_ktime_get_ns() };
        Ok(0)
    }

    /// A new thread/process returning 0 from clone/fork: not a lost call. Only the unmatched path
    /// pays for reading the registers.
    #[inline(always)]
    fn is_child_return(ctx: &RawTracePointContext) -> bool {
        let ret: i64 = ctx.arg(1);
        if ret != 0 {
            return false;
        }
        let regs: *const u8 = ctx.arg(0);
        let nr = unsafe { bpf_probe_read_kernel(regs.add(PT_REGS_ORIG_AX) as *const u64) };
        matches!(nr, Ok(SYS_CLONE | SYS_FORK | SYS_VFORK | SYS_CLONE3))
    }

    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn syscalls_exit(ctx: RawTracePointContext) -> i32 {
        try_syscalls_exit(&ctx).unwrap_or(0)
    }

    fn try_syscalls_exit(ctx: &RawTracePointContext) -> Result<i32, i64> {
        let now = unsafe { bpf_ktime_get_ns() };
        let pid_tgid = bpf_get_current_pid_tgid();
        let tid = pid_tgid as u32;
        let tgid = (pid_tgid >> 32) as u32;
        let slot = SYSCALL_INFLIGHT.get_ptr_mut(slot_of(tid)).ok_or(0i64)?;
        let slot = unsafe { &mut *slot };
        if slot.tid != tid {
            bump(if is_child_return(ctx) {
                counter::CHILD_RETURNS
            } else {
                counter::UNMATCHED_EXITS
            });
            return Ok(0);
        }
        let nr = slot.nr;
        let delta = now.saturating_sub(slot.start_ns);
        slot.tid = 0;

        let ret: i64 = ctx.arg(1);
        let failed = (-MAX_ERRNO..0).contains(&ret);
        let key = SyscallKey { tgid, nr };
        let bucket = bucket_of(delta);

        if !fast_add(&key, delta, bucket, failed) {
            match SYSCALL_STATS.get_ptr_mut(key) {
                Some(v) => add(unsafe { &mut *v }, delta, bucket, failed),
                None => insert_stats(ctx, &key, delta, bucket, failed),
            }
        }
        if failed {
            count_error(tgid, nr, (-ret) as u32);
        }
        Ok(0)
    }

    #[inline(always)]
    fn add(v: &mut SyscallStats, delta: u64, bucket: usize, failed: bool) {
        v.count += 1;
        v.sum_ns += delta;
        if failed {
            v.errors += 1;
        }
        if let Some(b) = v.buckets.get_mut(bucket) {
            *b += 1;
        }
    }

    /// Records who owns a new entry: the task's cgroup and command name, so processes that exit
    /// before userspace looks are still attributed.
    #[inline(always)]
    fn stamp_task(v: &mut SyscallStats) {
        v.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        v.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }

    /// The fast table: this CPU's entry for `key` (see `FastEntry`). Adds in place when the
    /// entry is `key`'s, claims it when free; returns false when another key holds it (or the
    /// table is off), and the caller uses the LRU hash.
    #[inline(always)]
    fn fast_add(key: &SyscallKey, delta: u64, bucket: usize, failed: bool) -> bool {
        let shift = unsafe { core::ptr::read_volatile(&SYSCALL_FAST_SHIFT) };
        if shift >= 32 {
            return false;
        }
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let idx = (cpu << shift) | fast_index(key, shift);
        let Some(e) = SYSCALL_FAST.get_ptr_mut(idx) else {
            return false;
        };
        let e = unsafe { &mut *e };
        if e.key.tgid == key.tgid && e.key.nr == key.nr {
            add(&mut e.stats, delta, bucket, failed);
            return true;
        }
        if e.key.tgid != 0 {
            return false;
        }
        // Claim: the stats were zeroed when the entry was freed; write the key last.
        stamp_task(&mut e.stats);
        add(&mut e.stats, delta, bucket, failed);
        e.key = *key;
        bump(counter::FAST_CLAIMS);
        true
    }

    #[inline(always)]
    fn insert_stats(
        ctx: &RawTracePointContext,
        key: &SyscallKey,
        delta: u64,
        bucket: usize,
        failed: bool,
    ) {
        let Some(scratch) = SYSCALL_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        let v = unsafe { &mut *scratch };
        *v = SyscallStats::ZERO;
        stamp_task(v);
        add(v, delta, bucket, failed);
        // By reference: a by-value copy would put 368 bytes on the 512-byte BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = SYSCALL_STATS.insert(key, &*v, 0);
        match inserted {
            Ok(()) => bump(counter::STATS_INSERTS),
            Err(e) => {
                bump(counter::STATS_INSERT_FAILED);
                warn!(
                    ctx,
                    "syscall stats insert failed for tgid {} nr {}: {}", key.tgid, key.nr, e
                );
            }
        }
    }

    #[inline(always)]
    fn count_error(tgid: u32, nr: u32, errno: u32) {
        let key = SyscallErrorKey {
            tgid,
            nr,
            errno,
            _pad: 0,
        };
        if let Some(c) = SYSCALL_ERRORS.get_ptr_mut(key) {
            unsafe { *c += 1 };
            return;
        }
        if SYSCALL_ERRORS.insert(key, 1u64, 0).is_err() {
            bump(counter::ERRORS_INSERT_FAILED);
        }
    }
}
