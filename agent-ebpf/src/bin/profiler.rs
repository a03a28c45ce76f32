//! CPU profiler: a perf_event program on the software `cpu-clock` event of every CPU samples
//! the running thread's user and kernel stacks.
//!
//! Two ways out of the kernel, both built so they can be measured side by side
//! (`cargo xtask bench profiler`):
//! - `profile_aggregate` (the default): stacks go into a stack map and the sample adds one to
//!   a (thread, user stack, kernel stack) counter; userspace drains a whole generation at once.
//! - `profile_stream`: each sample copies both stacks into a ring buffer record.
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
    use agent_common::profiler::{
        counter, stack_lost, PidEvent, SampleKey, StreamSample, EEXIST, ENOMEM, MAX_STACK_DEPTH,
    };
    use aya_ebpf::{
        bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid,
            generated::{bpf_get_current_cgroup_id, bpf_get_stack, bpf_ktime_get_boot_ns},
        },
        macros::{map, perf_event, raw_tracepoint},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
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
        let key = SampleKey {
            tgid,
            tid,
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            incarnation,
            user_stack,
            kernel_stack,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
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

    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    pub fn profile_exec(_ctx: RawTracePointContext) -> u32 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let _ = PROFILE_PIDS.remove(tgid);
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
        }
        0
    }
}
