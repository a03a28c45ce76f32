//! Shared pieces of the agent's kernel programs. Each probe is one file under `src/bin/` and
//! builds into its own object (`<probe>.bpf.o`), so probes load, resize and fail independently.
#![cfg_attr(target_arch = "bpf", no_std)]
// Atomic adds on map values (the rate limiter's shared buckets): core's `AtomicU64` has no
// read-modify-write methods on the BPF target; the intrinsic lowers to `lock add`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

/// Declares the object's license (GPL-compatible, so every tracing helper is available) and its
/// panic handler (never called: the verifier rejects any reachable panic path).
#[macro_export]
macro_rules! probe_object {
    () => {
        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[cfg(target_arch = "bpf")]
        #[link_section = "license"]
        #[no_mangle]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

        #[cfg(not(target_arch = "bpf"))]
        fn main() {
            eprintln!(
                "kernel programs only build for bpfel-unknown-none: run `cargo xtask build-ebpf`"
            );
        }
    };
}

/// Adds one to a per-CPU health counter.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn bump(counters: &aya_ebpf::maps::PerCpuArray<u64>, idx: u32) {
    if let Some(p) = counters.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

/// Atomically adds `v` to `*p` (a map value shared between CPUs). The previous value is not
/// returned: that lowers to the BPF ISA v1 `lock add` (`BPF_XADD`), which every kernel with
/// BPF has; a fetch-add would need ISA v3.
///
/// # Safety
/// `p` must point to a live, 8-byte-aligned map value.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn atomic_add(p: *mut u64, v: u64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    let _ = atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v);
}
