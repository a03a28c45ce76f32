//! Shared pieces of the agent's kernel programs. Each probe is one file under `src/bin/` and
//! builds into its own object (`<probe>.bpf.o`), so probes load, resize and fail independently.
#![cfg_attr(target_arch = "bpf", no_std)]

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
