//! Maps and events of the in-kernel signal sender (`raw_syscalls:sys_enter` with
//! `bpf_send_signal`, the enforcement engine's `signal` action when a rule names a syscall).
//!
//! Layout invariants: `SIG_TARGETS` (hash: tgid -> `SigTarget`) is written by userspace; the
//! program sends the signal at the target's next matching syscall entry (process context, so
//! the signal reaches that process), deletes the entry (one signal per arming) and reports the
//! send on `SIG_EVENTS`. A failed send is reported too (`result` < 0) and the entry stays.

pub const TARGETS_MAP: &str = "SIG_TARGETS";
pub const EVENTS_MAP: &str = "SIG_EVENTS";
pub const COUNTERS_MAP: &str = "SIG_COUNTERS";

/// `SigTarget::syscall` for "any syscall".
pub const ANY_SYSCALL: i64 = -1;

/// Indices into `SIG_COUNTERS`.
pub mod counter {
    pub const SENT: u32 = 0;
    pub const SEND_FAILED: u32 = 1;
    /// Events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 2;
    pub const COUNT: u32 = 3;
    pub const NAMES: [&str; COUNT as usize] = ["sent", "send_failed", "events_lost"];
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigTarget {
    /// Signal number (SIGSTOP = 19, ...).
    pub signal: u32,
    pub _pad: u32,
    /// Syscall number to wait for, or `ANY_SYSCALL`.
    pub syscall: i64,
    /// ktime when userspace armed it.
    pub armed_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigEvent {
    pub tgid: u32,
    pub signal: u32,
    pub syscall: i64,
    /// ktime of the send.
    pub sent_ns: u64,
    /// `bpf_send_signal`'s return (0 = sent).
    pub result: i64,
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::SigTarget {}
    unsafe impl aya::Pod for super::SigEvent {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::SigTarget>(), 24);
        assert_eq!(core::mem::size_of::<super::SigEvent>(), 32);
    }
}
