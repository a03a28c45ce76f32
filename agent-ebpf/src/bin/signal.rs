//! Signals from the kernel: a `raw_syscalls:sys_enter` raw tracepoint that sends a target
//! process its signal with `bpf_send_signal` at its next matching syscall, in process context
//! (so the signal reaches that process, before the syscall runs). Attached only while a target
//! is armed. See `agent_common::signal`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

agent_ebpf::probe_object!();

#[cfg(target_arch = "bpf")]
mod probe {
    use agent_common::signal::{counter, SigEvent, SigTarget, ANY_SYSCALL};
    use aya_ebpf::{
        helpers::{
            bpf_get_current_pid_tgid,
            generated::{bpf_ktime_get_ns, bpf_send_signal},
        },
        macros::{map, raw_tracepoint},
        maps::{HashMap, PerCpuArray, RingBuf},
        programs::RawTracePointContext,
    };

    #[map]
    static SIG_TARGETS: HashMap<u32, SigTarget> = HashMap::with_max_entries(1024, 0);
    #[map]
    static SIG_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);
    #[map]
    static SIG_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

    #[inline(always)]
    fn bump(idx: u32) {
        agent_ebpf::bump(&SIG_COUNTERS, idx);
    }

    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn signal_sys_enter(ctx: RawTracePointContext) -> i32 {
        try_signal_sys_enter(&ctx).unwrap_or(0)
    }

    fn try_signal_sys_enter(ctx: &RawTracePointContext) -> Result<i32, i64> {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let Some(t) = SIG_TARGETS.get_ptr(tgid) else {
            return Ok(0);
        };
        let t = unsafe { *t };
        let nr: i64 = ctx.arg(1);
        if t.syscall != ANY_SYSCALL && t.syscall != nr {
            return Ok(0);
        }
        let result = unsafe { bpf_send_signal(t.signal) };
        if result == 0 {
            bump(counter::SENT);
            let _ = SIG_TARGETS.remove(tgid);
        } else {
            bump(counter::SEND_FAILED);
        }
        let ev = SigEvent {
            tgid,
            signal: t.signal,
            syscall: nr,
            sent_ns: unsafe { bpf_ktime_get_ns() },
            result,
        };
        if SIG_EVENTS.output::<SigEvent>(&ev, 0).is_err() {
            bump(counter::EVENTS_LOST);
        }
        Ok(0)
    }
}
