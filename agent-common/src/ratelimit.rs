//! Maps and values of the rate limiter (`cgroup_skb` ingress/egress token buckets, the
//! enforcement engine's `rate_limit` action).
//!
//! Layout invariants:
//! - `RL_LIMITS` is a hash `LimitKey -> Limit`, one entry per (target cgroup v2 id, direction).
//!   Userspace writes the rates and the burst; the kernel moves the two virtual clocks
//!   (`next_bytes_ns`, `next_packets_ns`, GCRA theoretical arrival times) with atomic adds and
//!   adds to the counters; nothing else writes them.
//! - A packet conforms when neither clock runs more than `burst_ns` ahead of now. Egress: a
//!   packet up to `2 * burst_ns` ahead still passes, with congestion notification (TCP reduces
//!   its window); beyond that it is dropped with congestion notification (TCP keeps the segment
//!   queued and backs off). Ingress: beyond `burst_ns` it is dropped. Refused packets do not
//!   move the clocks, so the long-run rate is the configured one.
//! - Every packet that runs the program ends in exactly one of the counters of `RL_COUNTERS`.

/// Hash of limits (see the module doc).
pub const LIMITS_MAP: &str = "RL_LIMITS";
/// Per-CPU array of `counter::*` totals (the program's own accounting).
pub const COUNTERS_MAP: &str = "RL_COUNTERS";

pub const EGRESS: u32 = 0;
pub const INGRESS: u32 = 1;

/// Deepest cgroup level searched for a limited ancestor (the root is level 0).
pub const MAX_LEVEL: u32 = 16;

/// cgroup_skb egress return codes (kernel `__cgroup_bpf_run_filter_skb`): bit 0 = keep the
/// packet, bit 1 = congestion notification (`NET_XMIT_CN` / `NET_XMIT_DROP` to the sender).
pub const RET_DROP: i32 = 0;
pub const RET_PASS: i32 = 1;
pub const RET_DROP_CN: i32 = 2;
pub const RET_PASS_CN: i32 = 3;

/// Indices into `RL_COUNTERS`.
pub mod counter {
    /// Packets seen by an attached program.
    pub const PACKETS: u32 = 0;
    /// Packets whose cgroup (or ancestor) has no limit in this direction (passed).
    pub const UNLIMITED: u32 = 1;
    pub const PASSED: u32 = 2;
    /// Passed with congestion notification (egress).
    pub const PASSED_CN: u32 = 3;
    pub const DROPPED: u32 = 4;
    pub const COUNT: u32 = 5;
    pub const NAMES: [&str; COUNT as usize] =
        ["packets", "unlimited", "passed", "passed_cn", "dropped"];
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// cgroup v2 id (the inode number of the cgroup's directory).
    pub cgroup_id: u64,
    /// `EGRESS` or `INGRESS`.
    pub direction: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    /// Bytes per second (IP packet bytes as `skb->len` counts them); 0 = no byte limit.
    pub bytes_per_second: u64,
    /// Packets per second (GSO segments counted one by one); 0 = no packet limit.
    pub packets_per_second: u64,
    /// How far (ns) a virtual clock may run ahead of now: the bucket depth in time
    /// (`burst_bytes * 1e9 / bytes_per_second`).
    pub burst_ns: u64,
    /// GCRA theoretical arrival time of the byte bucket (ktime ns); kernel-owned.
    pub next_bytes_ns: u64,
    /// The same for the packet bucket.
    pub next_packets_ns: u64,
    /// Counters (kernel-owned, atomic adds).
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub cn_packets: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

/// Nanoseconds a packet of `units` costs at `per_second` (0 when unlimited).
#[inline(always)]
pub fn cost_ns(units: u64, per_second: u64) -> u64 {
    (units * 1_000_000_000).checked_div(per_second).unwrap_or(0)
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::LimitKey {}
    unsafe impl aya::Pod for super::Limit {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<LimitKey>(), 16);
        assert_eq!(core::mem::size_of::<Limit>(), 80);
        assert_eq!(cost_ns(1500, 1_000_000), 1_500_000);
        assert_eq!(cost_ns(1, 0), 0);
    }
}
