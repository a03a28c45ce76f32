//! CPU profiler: a perf_event program on the software `cpu-clock` event of every CPU samples
//! the running thread's user and kernel stacks.
//!
//! Two ways out of the kernel, both built so they can be measured side by side
//! (`cargo xtask bench profiler`):
//! - `profile_aggregate` (the default): stacks go into a stack map and the sample adds one to
//!   a (thread, user stack, kernel stack) counter; userspace drains a whole generation at once.
//! - `profile_stream`: each sample copies both stacks into a ring buffer record.
//! - `profile_dwarf` (unwinder `dwarf`/`auto`): like `profile_aggregate`, but the user stack is
//!   unwound from the tables userspace compiled from each file's `.eh_frame` (frame pointers
//!   for mappings without one) by `profile_unwind`, tail-called in steps of
//!   `FRAMES_PER_CALL` frames; the stack goes into `PROFILE_USTACKS` under its hash. Processes
//!   whose tables are not loaded yet are walked by frame pointer as `profile_aggregate` does.
//!
//! `profile_exec` (raw tracepoint `sched_process_exec`) forgets a process that execs, and
//! `profile_exit` (`sched_process_exit`) one whose main thread exits, so what runs under the pid
//! next is announced again through `PROFILE_PID_EVENTS` as a new incarnation.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

agent_ebpf::probe_object!();

#[cfg(target_arch = "bpf")]
mod probe {
    use agent_common::{
        profiler::{
            counter, stack_lost, PidEvent, SampleKey, StreamSample, EEXIST, ENOMEM,
            MAX_STACK_DEPTH, USER_STACK_UNWOUND,
        },
        unwind::{
            row_kind, UnwindFile, UnwindMapping, UnwindProc, UnwindRow, UnwindState, UserStack,
            FRAMES_PER_CALL, MAPPING_STEPS, NO_FILE, ROW_STEPS,
        },
    };
    use aya_ebpf::{
        bindings::{pt_regs, BPF_F_USER_STACK, BPF_NOEXIST},
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
            bpf_probe_read_user,
            generated::{
                bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_get_stack,
                bpf_ktime_get_boot_ns, bpf_task_pt_regs,
            },
        },
        macros::{map, perf_event, raw_tracepoint},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf, StackTrace},
        programs::{tracing::StackIdContext, PerfEventContext, RawTracePointContext},
        EbpfContext,
    };

    /// 1: keep samples of the idle task (pid 0). Set by the loader.
    #[no_mangle]
    static PROFILE_INCLUDE_IDLE: u32 = 0;

    #[map]
    static PROFILE_COUNTS_0: HashMap<SampleKey, u64> = HashMap::with_max_entries(16384, 0);
    #[map]
    static PROFILE_COUNTS_1: HashMap<SampleKey, u64> = HashMap::with_max_entries(16384, 0);
    #[map]
    static PROFILE_STACKS_0: StackTrace = StackTrace::with_max_entries(16384, 0);
    #[map]
    static PROFILE_STACKS_1: StackTrace = StackTrace::with_max_entries(16384, 0);

    /// `[0]`: the generation samples go to (0 or 1); flipped by userspace before each drain.
    #[map]
    static PROFILE_GEN: Array<u32> = Array::with_max_entries(1, 0);

    /// Processes userspace has been told about → their incarnation (announcement time).
    #[map]
    static PROFILE_PIDS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

    #[map]
    static PROFILE_PID_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

    /// Stream mode only.
    #[map]
    static PROFILE_SAMPLES: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

    #[map]
    static PROFILE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

    // The DWARF unwinder's maps: sized by the loader when the unwinder is on (1 entry else).
    /// Unwound user stacks by generation: hash → frames.
    #[map]
    static PROFILE_USTACKS_0: HashMap<u64, UserStack> = HashMap::with_max_entries(1, 0);
    #[map]
    static PROFILE_USTACKS_1: HashMap<u64, UserStack> = HashMap::with_max_entries(1, 0);
    #[map]
    static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, 0);
    #[map]
    static UNWIND_FILES: Array<UnwindFile> = Array::with_max_entries(1, 0);
    #[map]
    static UNWIND_MAPPINGS: Array<UnwindMapping> = Array::with_max_entries(1, 0);
    #[map]
    static UNWIND_PROCS: HashMap<u32, UnwindProc> = HashMap::with_max_entries(1, 0);
    #[map]
    static UNWIND_STATE: PerCpuArray<UnwindState> = PerCpuArray::with_max_entries(1, 0);
    /// `[0]`: `profile_unwind`, set by the loader.
    #[map]
    static UNWIND_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

    #[inline(always)]
    fn bump(idx: u32) {
        agent_ebpf::bump(&PROFILE_COUNTERS, idx);
    }

    /// Counts the sample and returns its (tgid, tid), or `None` for a dropped idle sample.
    #[inline(always)]
    fn who() -> Option<(u32, u32)> {
        bump(counter::SAMPLES);
        let id = bpf_get_current_pid_tgid();
        let (tgid, tid) = ((id >> 32) as u32, id as u32);
        if tgid == 0 && unsafe { core::ptr::read_volatile(&PROFILE_INCLUDE_IDLE) } == 0 {
            bump(counter::IDLE);
            return None;
        }
        Some((tgid, tid))
    }

    /// Tells userspace about a process the first time it is sampled with a user stack (since
    /// start, exec or a pid reuse); returns the incarnation its samples carry. 0: none (the
    /// idle task, kernel threads, a process past its exit with no address space left).
    #[inline(always)]
    fn announce(tgid: u32, has_user: bool) -> u64 {
        if tgid == 0 {
            return 0;
        }
        if let Some(inc) = PROFILE_PIDS.get_ptr(tgid) {
            return unsafe { *inc };
        }
        if !has_user {
            return 0;
        }
        let inc = unsafe { bpf_ktime_get_boot_ns() };
        if PROFILE_PIDS.insert(tgid, inc, BPF_NOEXIST as u64).is_err() {
            // Another CPU just announced it.
            return PROFILE_PIDS.get_ptr(tgid).map_or(inc, |p| unsafe { *p });
        }
        let ev = PidEvent {
            tgid,
            _pad: 0,
            incarnation: inc,
        };
        if PROFILE_PID_EVENTS.output::<PidEvent>(&ev, 0).is_err() {
            bump(counter::PID_EVENTS_FULL);
            // Try again on the next sample.
            let _ = PROFILE_PIDS.remove(tgid);
        }
        inc
    }

    #[perf_event]
    pub fn profile_aggregate(ctx: PerfEventContext) -> u32 {
        let _ = try_aggregate(&ctx);
        0
    }

    #[inline(always)]
    fn stack_id(ctx: &PerfEventContext, stacks: &StackTrace, flags: u64, collision: u32) -> i32 {
        match ctx.get_stackid(stacks, flags) {
            Ok(id) => id as i32,
            Err(e) => {
                if e == -EEXIST {
                    bump(collision);
                } else if e == -ENOMEM {
                    bump(counter::STACKS_FULL);
                }
                e
            }
        }
    }

    #[inline(never)]
    fn record(
        ctx: &PerfEventContext,
        counts: &HashMap<SampleKey, u64>,
        stacks: &StackTrace,
        tgid: u32,
        tid: u32,
    ) {
        let user_stack = if tgid == 0 {
            -14 // EFAULT: the idle task has no user stack
        } else {
            stack_id(
                ctx,
                stacks,
                BPF_F_USER_STACK as u64,
                counter::USER_COLLISIONS,
            )
        };
        let has_user = user_stack >= 0 || stack_lost(user_stack);
        if !has_user && tgid != 0 {
            bump(counter::USER_MISSING);
        }
        let incarnation = announce(tgid, has_user);
        let kernel_stack = stack_id(ctx, stacks, 0, counter::KERNEL_COLLISIONS);
        count(
            counts,
            &SampleKey {
                tgid,
                tid,
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                incarnation,
                user_hash: 0,
                user_stack,
                kernel_stack,
                comm: bpf_get_current_comm().unwrap_or_default(),
            },
        );
    }

    /// Adds one sample to `key`.
    #[inline(always)]
    fn count(counts: &HashMap<SampleKey, u64>, key: &SampleKey) {
        // A plain add is race-free: the key holds the thread id, and a thread runs on one CPU
        // at a time, so no two programs ever update one entry at once.
        if let Some(p) = counts.get_ptr_mut(key) {
            unsafe { *p += 1 };
            return;
        }
        if let Err(e) = counts.insert(key, 1u64, BPF_NOEXIST as u64) {
            if e == -EEXIST {
                // Another CPU inserted the key between the lookup and the insert.
                if let Some(p) = counts.get_ptr_mut(key) {
                    unsafe { *p += 1 };
                    return;
                }
            }
            bump(counter::COUNTS_FULL);
        }
    }

    fn try_aggregate(ctx: &PerfEventContext) -> Result<(), i32> {
        let Some((tgid, tid)) = who() else {
            return Ok(());
        };
        let gen = PROFILE_GEN.get(0).copied().unwrap_or(0);
        if gen == 0 {
            record(ctx, &PROFILE_COUNTS_0, &PROFILE_STACKS_0, tgid, tid)
        } else {
            record(ctx, &PROFILE_COUNTS_1, &PROFILE_STACKS_1, tgid, tid)
        }
        Ok(())
    }

    #[perf_event]
    pub fn profile_stream(ctx: PerfEventContext) -> u32 {
        let _ = try_stream(&ctx);
        0
    }

    const STACK_BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;

    fn try_stream(ctx: &PerfEventContext) -> Result<(), i32> {
        let Some((tgid, tid)) = who() else {
            return Ok(());
        };
        let Some(mut entry) = PROFILE_SAMPLES.reserve::<StreamSample>(0) else {
            bump(counter::STREAM_FULL);
            return Ok(());
        };
        let s = entry.as_mut_ptr();
        unsafe {
            (*s).tgid = tgid;
            (*s).tid = tid;
            (*s).cgroup_id = bpf_get_current_cgroup_id();
            (*s).comm = bpf_get_current_comm().unwrap_or_default();
            (*s).user_len = if tgid == 0 {
                -14
            } else {
                bpf_get_stack(
                    ctx.as_ptr(),
                    (*s).user.as_mut_ptr().cast(),
                    STACK_BYTES,
                    BPF_F_USER_STACK as u64,
                ) as i32
            };
            (*s).kernel_len = bpf_get_stack(
                ctx.as_ptr(),
                (*s).kernel.as_mut_ptr().cast(),
                STACK_BYTES,
                0,
            ) as i32;
            let has_user = (*s).user_len > 0;
            if !has_user && tgid != 0 {
                bump(counter::USER_MISSING);
            }
            (*s).incarnation = announce(tgid, has_user);
        }
        entry.submit(0);
        Ok(())
    }

    /// The sampled thread's user registers (saved at the top of its kernel stack when it
    /// entered the kernel, by this interrupt or a system call): (ip, sp, bp), or `None` for a
    /// thread that has no user mode (kernel threads).
    #[inline(always)]
    fn user_regs() -> Option<(u64, u64, u64)> {
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        let cs = unsafe { bpf_probe_read_kernel(&(*regs).cs) }.ok()?;
        if cs & 3 != 3 {
            return None;
        }
        let ip = unsafe { bpf_probe_read_kernel(&(*regs).rip) }.ok()?;
        let sp = unsafe { bpf_probe_read_kernel(&(*regs).rsp) }.ok()?;
        let bp = unsafe { bpf_probe_read_kernel(&(*regs).rbp) }.ok()?;
        Some((ip, sp, bp))
    }

    #[perf_event]
    pub fn profile_dwarf(ctx: PerfEventContext) -> u32 {
        let _ = try_dwarf(&ctx);
        0
    }

    fn try_dwarf(ctx: &PerfEventContext) -> Result<(), i32> {
        let Some((tgid, tid)) = who() else {
            return Ok(());
        };
        let regs = if tgid == 0 { None } else { user_regs() };
        if let Some((ip, sp, bp)) = regs {
            let inc = announce(tgid, true);
            let loaded = UNWIND_PROCS
                .get_ptr(tgid)
                .map(|p| unsafe { *p })
                .filter(|p| p.incarnation == inc && p.count > 0);
            match loaded {
                Some(p) => {
                    let st = UNWIND_STATE.get_ptr_mut(0).ok_or(0)?;
                    unsafe {
                        (*st).ip = ip;
                        (*st).sp = sp;
                        (*st).bp = bp;
                        (*st).incarnation = inc;
                        (*st).tgid = tgid;
                        (*st).tid = tid;
                        (*st).map_first = p.first;
                        (*st).map_count = p.count;
                        (*st).stack.len = 0;
                        UNWIND_PROGS.tail_call(ctx, 0);
                    }
                    // Only reached when the tail call failed.
                    bump(counter::TAIL_CALL_FAILED);
                }
                None => bump(counter::DWARF_NOT_LOADED),
            }
        }
        // Frame pointers: processes not loaded (yet), kernel threads, the idle task.
        let gen = PROFILE_GEN.get(0).copied().unwrap_or(0);
        if gen == 0 {
            record(ctx, &PROFILE_COUNTS_0, &PROFILE_STACKS_0, tgid, tid)
        } else {
            record(ctx, &PROFILE_COUNTS_1, &PROFILE_STACKS_1, tgid, tid)
        }
        Ok(())
    }

    /// How one unwind step ended.
    enum Step {
        Next,
        Stop(u32),
    }

    /// The mapping of the current process holding `addr` (bounded binary search).
    #[inline(always)]
    fn find_mapping(first: u32, count: u32, addr: u64) -> Option<UnwindMapping> {
        let (mut lo, mut hi) = (0u32, count);
        for _ in 0..MAPPING_STEPS + 1 {
            if lo >= hi {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            let m = UNWIND_MAPPINGS.get(first.wrapping_add(mid))?;
            if m.start <= addr {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return None;
        }
        let m = *UNWIND_MAPPINGS.get(first.wrapping_add(lo - 1))?;
        (addr < m.end).then_some(m)
    }

    /// The row of `file` covering table-relative `pc` (bounded binary search).
    #[inline(always)]
    fn find_row(file: &UnwindFile, pc: u32) -> Option<UnwindRow> {
        let (mut lo, mut hi) = (0u32, file.count);
        for _ in 0..ROW_STEPS + 1 {
            if lo >= hi {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            let r = UNWIND_ROWS.get(file.first.wrapping_add(mid))?;
            if r.pc <= pc {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return None;
        }
        UNWIND_ROWS.get(file.first.wrapping_add(lo - 1)).copied()
    }

    #[inline(always)]
    fn read_user(addr: u64) -> Option<u64> {
        unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
    }

    /// Records the current frame and moves to its caller.
    #[inline(always)]
    fn step(st: *mut UnwindState) -> Step {
        let (len, ip, sp, bp) = unsafe { ((*st).stack.len, (*st).ip, (*st).sp, (*st).bp) };
        if len as usize >= MAX_STACK_DEPTH {
            return Step::Stop(counter::STOP_DEPTH);
        }
        // Return addresses point after the call: look the caller's frame up inside the call.
        let lookup = if len == 0 { ip } else { ip.wrapping_sub(1) };
        let (first, count) = unsafe { ((*st).map_first, (*st).map_count) };
        let mapping = find_mapping(first, count, lookup);
        // Recorded even outside every known mapping (code mapped after the tables were
        // loaded, or garbage): userspace looks again, and cuts the stack there if it is.
        if let Some(slot) = unsafe { (*st).stack.pcs.get_mut(len as usize) } {
            *slot = ip;
        }
        unsafe { (*st).stack.len = len + 1 };
        let Some(m) = mapping else {
            return Step::Stop(counter::STOP_NO_MAPPING);
        };
        let file = if m.file == NO_FILE {
            None
        } else {
            UNWIND_FILES.get(m.file).copied().filter(|f| f.count > 0)
        };
        // The row, when the mapping has a table and it covers the address (a GAP row, or an
        // address before the first row, is code without CFI: frame pointers).
        let row = match file {
            Some(f) => {
                let rel = lookup.wrapping_sub(m.bias);
                if rel > u32::MAX as u64 {
                    return Step::Stop(counter::STOP_NO_ROW);
                }
                find_row(&f, rel as u32).filter(|r| r.kind != row_kind::GAP)
            }
            None => None,
        };
        let (cfa, new_bp) = match row {
            None => {
                // Frame pointers: the caller's rbp at [rbp], its return address above.
                if bp == 0 {
                    return Step::Stop(counter::STOP_ZERO);
                }
                let Some(saved) = read_user(bp) else {
                    return Step::Stop(counter::STOP_READ);
                };
                bump(counter::FRAMES_FP);
                (bp.wrapping_add(16), saved)
            }
            Some(row) => {
                let off = row.cfa_offset as u64;
                let cfa = match row.kind {
                    row_kind::CFA_RSP => sp.wrapping_add(off),
                    row_kind::CFA_RBP => bp.wrapping_add(off),
                    row_kind::PLT => sp.wrapping_add(if ip & 15 >= off { 16 } else { 8 }),
                    row_kind::END => return Step::Stop(counter::STOP_END),
                    _ => return Step::Stop(counter::STOP_NO_ROW),
                };
                let new_bp = if row.rbp_offset == 0 {
                    bp
                } else {
                    match read_user(cfa.wrapping_add((row.rbp_offset as i64 * 8) as u64)) {
                        Some(v) => v,
                        None => return Step::Stop(counter::STOP_READ),
                    }
                };
                bump(counter::FRAMES_TABLE);
                (cfa, new_bp)
            }
        };
        let Some(ra) = read_user(cfa.wrapping_sub(8)) else {
            return Step::Stop(counter::STOP_READ);
        };
        if ra == 0 {
            return Step::Stop(counter::STOP_ZERO);
        }
        unsafe {
            (*st).ip = ra;
            (*st).sp = cfa;
            (*st).bp = new_bp;
        }
        Step::Next
    }

    #[perf_event]
    pub fn profile_unwind(ctx: PerfEventContext) -> u32 {
        let _ = try_unwind(&ctx);
        0
    }

    fn try_unwind(ctx: &PerfEventContext) -> Result<(), i32> {
        let st = UNWIND_STATE.get_ptr_mut(0).ok_or(0)?;
        for _ in 0..FRAMES_PER_CALL {
            if let Step::Stop(why) = step(st) {
                bump(why);
                finish(ctx, st);
                return Ok(());
            }
        }
        unsafe { UNWIND_PROGS.tail_call(ctx, 0) };
        // The kernel's tail call limit (33) or a missing program: keep what was unwound.
        bump(counter::TAIL_CALL_FAILED);
        finish(ctx, st);
        Ok(())
    }

    /// Stores the unwound stack under its hash and counts the sample.
    // By reference on purpose: by value the 1 KiB stack would be copied onto the 512-byte BPF
    // stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    #[inline(never)]
    fn finish(ctx: &PerfEventContext, st: *mut UnwindState) {
        bump(counter::DWARF_SAMPLES);
        let gen = PROFILE_GEN.get(0).copied().unwrap_or(0);
        let (counts, ustacks, stacks) = if gen == 0 {
            (&PROFILE_COUNTS_0, &PROFILE_USTACKS_0, &PROFILE_STACKS_0)
        } else {
            (&PROFILE_COUNTS_1, &PROFILE_USTACKS_1, &PROFILE_STACKS_1)
        };
        let len = unsafe { (*st).stack.len };
        // FNV-1a over the frames; never 0 (0 means "no unwound stack").
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for i in 0..MAX_STACK_DEPTH {
            if i as u32 >= len {
                break;
            }
            let pc = unsafe { (*st).stack.pcs.get(i).copied().unwrap_or(0) };
            h = (h ^ pc).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let h = h | 1;
        let (user_hash, user_stack) = if len == 0 {
            (0, -14) // EFAULT: nothing unwound
        } else {
            match ustacks.insert(&h, unsafe { &(*st).stack }, BPF_NOEXIST as u64) {
                Ok(()) => (h, USER_STACK_UNWOUND),
                Err(e) if e == -EEXIST => (h, USER_STACK_UNWOUND),
                Err(_) => {
                    bump(counter::USTACKS_FULL);
                    (0, -ENOMEM)
                }
            }
        };
        let kernel_stack = stack_id(ctx, stacks, 0, counter::KERNEL_COLLISIONS);
        let (tgid, tid, incarnation) = unsafe { ((*st).tgid, (*st).tid, (*st).incarnation) };
        count(
            counts,
            &SampleKey {
                tgid,
                tid,
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                incarnation,
                user_hash,
                user_stack,
                kernel_stack,
                comm: bpf_get_current_comm().unwrap_or_default(),
            },
        );
    }

    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    pub fn profile_exec(_ctx: RawTracePointContext) -> u32 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let _ = PROFILE_PIDS.remove(tgid);
        let _ = UNWIND_PROCS.remove(tgid);
        0
    }

    /// Every thread's exit; only the main thread's (pid == tgid) ends the incarnation: its pid
    /// can be reused once it is reaped. (Other threads may still run: they re-announce it.)
    #[raw_tracepoint(tracepoint = "sched_process_exit")]
    pub fn profile_exit(_ctx: RawTracePointContext) -> u32 {
        let id = bpf_get_current_pid_tgid();
        let (tgid, pid) = ((id >> 32) as u32, id as u32);
        if tgid == pid {
            let _ = PROFILE_PIDS.remove(tgid);
            let _ = UNWIND_PROCS.remove(tgid);
        }
        0
    }
}
