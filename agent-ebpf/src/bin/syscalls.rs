//! Syscall latency: `raw_syscalls` sys_enter/sys_exit raw tracepoints, aggregated in the kernel
//! into per-(process, syscall) log2 latency histograms. No per-syscall event leaves the kernel.
//!
//! Hot path: enter writes one array slot (an inlined array access, no hashing); exit reads it
//! back, finds the process's generation (a per-CPU cache checked against a global epoch, the
//! hash `SYSCALL_PROC_GEN` on a miss), and adds to this CPU's fast-table entry for
//! (tgid, gen, nr), or, when another key holds that entry, to the per-CPU hash; when the hash is
//! full, to `SYSCALL_OVERFLOW[nr]`. Every miss is counted in `SYSCALL_COUNTERS`.
//!
//! Identity: `sched_process_exec` gives the process a new generation (and sends an event so
//! userspace names the new incarnation); `sched_process_exit` of a whole thread group forgets
//! it, so a pid reused later starts a new generation at its first syscall.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

agent_ebpf::probe_object!();

#[cfg(target_arch = "bpf")]
mod probe {

    use agent_common::syscalls::{
        bucket_of, counter, fast_index, FastEntry, GenCache, InFlight, ProcEvent, SyscallErrorKey,
        SyscallKey, SyscallStats, DEFAULT_EXEC_FILENAME_OFF, DEFAULT_GROUP_DEAD_OFF,
        DEFAULT_INFLIGHT_SLOTS, FILENAME_LEN, MAX_SYSCALL_NR, NO_FIELD, PROC_EVENT_EXEC,
    };
    use aya_ebpf::{
        bindings::BPF_NOEXIST,
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
            bpf_probe_read_kernel_str_bytes,
            generated::{bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_ktime_get_ns},
        },
        macros::{map, raw_tracepoint, tracepoint},
        maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
        programs::{RawTracePointContext, TracePointContext},
        EbpfContext,
    };

    /// `slots - 1`; set by the loader (`SYSCALL_INFLIGHT_MASK`) to match the array's size.
    #[no_mangle]
    static SYSCALL_INFLIGHT_MASK: u32 = DEFAULT_INFLIGHT_SLOTS - 1;

    #[map]
    static SYSCALL_INFLIGHT: Array<InFlight> = Array::with_max_entries(DEFAULT_INFLIGHT_SLOTS, 0);

    #[map]
    static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallStats> =
        PerCpuHashMap::with_max_entries(4096, 0);

    #[map]
    static SYSCALL_ERRORS: PerCpuHashMap<SyscallErrorKey, u64> =
        PerCpuHashMap::with_max_entries(4096, 0);

    #[map]
    static SYSCALL_OVERFLOW: PerCpuArray<SyscallStats> =
        PerCpuArray::with_max_entries(MAX_SYSCALL_NR, 0);

    #[map]
    static SYSCALL_ERRORS_OVERFLOW: PerCpuArray<u64> =
        PerCpuArray::with_max_entries(MAX_SYSCALL_NR, 0);

    /// tgid -> generation of every live process seen making a syscall (or exec'ing).
    #[map]
    static SYSCALL_PROC_GEN: HashMap<u32, u64> = HashMap::with_max_entries(32768, 0);

    /// Moves (to the current time) at every exec and exit, invalidating `SYSCALL_GEN_CACHE`.
    #[map]
    static SYSCALL_GEN_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

    #[map]
    static SYSCALL_GEN_CACHE: PerCpuArray<GenCache> = PerCpuArray::with_max_entries(1, 0);

    #[map]
    static SYSCALL_PROC_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

    #[no_mangle]
    static SYSCALL_EXIT_GROUP_DEAD_OFF: u32 = DEFAULT_GROUP_DEAD_OFF;

    #[no_mangle]
    static SYSCALL_EXEC_FILENAME_OFF: u32 = DEFAULT_EXEC_FILENAME_OFF;

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
        let gen = generation(tgid, now);
        let key = SyscallKey { tgid, nr, gen };
        let bucket = bucket_of(delta);

        if !fast_add(&key, delta, bucket, failed) {
            match SYSCALL_STATS.get_ptr_mut(key) {
                Some(v) => add(unsafe { &mut *v }, delta, bucket, failed),
                None => insert_stats(&key, delta, bucket, failed),
            }
        }
        if failed {
            count_error(&key, (-ret) as u32);
        }
        Ok(0)
    }

    /// The generation of process `tgid`: this CPU's cached one while no exec or exit happened
    /// since it was cached; else from `SYSCALL_PROC_GEN`, created (at `now`) on first sight.
    /// Two threads creating it at once agree: the insert is `BPF_NOEXIST` and the loser reads
    /// the winner's value.
    #[inline(always)]
    fn generation(tgid: u32, now: u64) -> u64 {
        let epoch = match SYSCALL_GEN_EPOCH.get_ptr(0) {
            Some(e) => unsafe { core::ptr::read_volatile(e) },
            None => 0,
        };
        let Some(cache) = SYSCALL_GEN_CACHE.get_ptr_mut(0) else {
            return 0;
        };
        let cache = unsafe { &mut *cache };
        if cache.tgid == tgid && cache.epoch == epoch && cache.gen != 0 {
            return cache.gen;
        }
        let gen = match unsafe { SYSCALL_PROC_GEN.get(tgid) } {
            Some(g) => *g,
            None => {
                if SYSCALL_PROC_GEN
                    .insert(tgid, now, BPF_NOEXIST as u64)
                    .is_ok()
                {
                    now
                } else {
                    match unsafe { SYSCALL_PROC_GEN.get(tgid) } {
                        Some(g) => *g,
                        None => {
                            bump(counter::GEN_UNKNOWN);
                            return 0;
                        }
                    }
                }
            }
        };
        cache.tgid = tgid;
        cache.epoch = epoch;
        cache.gen = gen;
        gen
    }

    /// Invalidates every CPU's generation cache.
    #[inline(always)]
    fn move_epoch(now: u64) {
        if let Some(e) = SYSCALL_GEN_EPOCH.get_ptr_mut(0) {
            unsafe { core::ptr::write_volatile(e, now) };
        }
    }

    /// `sched_process_exec`: the process is a new incarnation from here on.
    #[tracepoint(category = "sched", name = "sched_process_exec")]
    pub fn syscalls_exec(ctx: TracePointContext) -> u32 {
        try_syscalls_exec(&ctx).unwrap_or(0)
    }

    fn try_syscalls_exec(ctx: &TracePointContext) -> Result<u32, i64> {
        let now = unsafe { bpf_ktime_get_ns() };
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        bump(counter::EXECS);
        let old_gen = unsafe { SYSCALL_PROC_GEN.get(tgid) }.copied().unwrap_or(0);
        SYSCALL_PROC_GEN
            .insert(tgid, now, 0)
            .map_err(|e| e as i64)?;
        move_epoch(now);
        let Some(mut entry) = SYSCALL_PROC_EVENTS.reserve::<ProcEvent>(0) else {
            bump(counter::EVENTS_LOST);
            return Ok(0);
        };
        let e = entry.as_mut_ptr();
        unsafe {
            (*e).kind = PROC_EVENT_EXEC;
            (*e).tgid = tgid;
            (*e).gen = now;
            (*e).old_gen = old_gen;
            (*e).time_ns = now;
            (*e).comm = bpf_get_current_comm().unwrap_or([0; 16]);
            (*e).filename[0] = 0;
            let off = core::ptr::read_volatile(&SYSCALL_EXEC_FILENAME_OFF);
            if off != NO_FIELD {
                // `__data_loc`: the low 16 bits are the string's offset in the record.
                if let Ok(loc) = ctx.read_at::<u32>(off as usize) {
                    let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
                    let dst = &mut (*e).filename;
                    if bpf_probe_read_kernel_str_bytes(src, &mut dst[..FILENAME_LEN]).is_err() {
                        dst[0] = 0;
                    }
                }
            }
        }
        entry.submit(0);
        Ok(0)
    }

    /// `sched_process_exit`: when the whole thread group is dead, forget its generation (a
    /// reused pid starts a new one).
    #[tracepoint(category = "sched", name = "sched_process_exit")]
    pub fn syscalls_exit_group(ctx: TracePointContext) -> u32 {
        try_syscalls_exit_group(&ctx).unwrap_or(0)
    }

    fn try_syscalls_exit_group(ctx: &TracePointContext) -> Result<u32, i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
        let off = unsafe { core::ptr::read_volatile(&SYSCALL_EXIT_GROUP_DEAD_OFF) };
        let group_dead = if off == NO_FIELD {
            // Older kernels: the leader's exit stands for the group's.
            tid == tgid
        } else {
            unsafe { ctx.read_at::<u8>(off as usize)? != 0 }
        };
        if !group_dead {
            return Ok(0);
        }
        bump(counter::EXITS);
        let _ = SYSCALL_PROC_GEN.remove(tgid);
        move_epoch(unsafe { bpf_ktime_get_ns() });
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
        if e.key.tgid == key.tgid && e.key.nr == key.nr && e.key.gen == key.gen {
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

    /// A new (process, syscall) entry; when the hash is full, the call goes to the overflow
    /// entry of its syscall (the "other" series), counted.
    #[inline(always)]
    fn insert_stats(key: &SyscallKey, delta: u64, bucket: usize, failed: bool) {
        let Some(scratch) = SYSCALL_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        let v = unsafe { &mut *scratch };
        *v = SyscallStats::ZERO;
        stamp_task(v);
        add(v, delta, bucket, failed);
        // By reference: a by-value copy would put 368 bytes on the 512-byte BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = SYSCALL_STATS.insert(key, &*v, BPF_NOEXIST as u64);
        match inserted {
            Ok(()) => bump(counter::STATS_INSERTS),
            Err(_) => {
                // Another CPU may have created it since our lookup: add there.
                if let Some(v) = SYSCALL_STATS.get_ptr_mut(key) {
                    add(unsafe { &mut *v }, delta, bucket, failed);
                    return;
                }
                bump(counter::STATS_FOLDED);
                if let Some(o) = SYSCALL_OVERFLOW.get_ptr_mut(key.nr) {
                    add(unsafe { &mut *o }, delta, bucket, failed);
                }
            }
        }
    }

    #[inline(always)]
    fn count_error(key: &SyscallKey, errno: u32) {
        let k = SyscallErrorKey {
            tgid: key.tgid,
            nr: key.nr,
            errno,
            _pad: 0,
            gen: key.gen,
        };
        if let Some(c) = SYSCALL_ERRORS.get_ptr_mut(k) {
            unsafe { *c += 1 };
            return;
        }
        if SYSCALL_ERRORS.insert(k, 1u64, BPF_NOEXIST as u64).is_ok() {
            return;
        }
        if let Some(c) = SYSCALL_ERRORS.get_ptr_mut(k) {
            unsafe { *c += 1 };
            return;
        }
        bump(counter::ERRORS_FOLDED);
        if let Some(c) = SYSCALL_ERRORS_OVERFLOW.get_ptr_mut(key.nr) {
            unsafe { *c += 1 };
        }
    }
}
