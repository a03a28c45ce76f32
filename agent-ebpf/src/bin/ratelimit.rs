//! Per-cgroup bandwidth limits: `cgroup_skb` egress and ingress programs attached to each
//! limited cgroup (v2), each packet charged to a GCRA token bucket in bytes/s and packets/s.
//!
//! Egress signals congestion instead of only dropping: a packet a little over the rate passes
//! with congestion notification (TCP enters CWR and shrinks its window), one far over is
//! dropped with congestion notification (TCP keeps the segment queued and backs off, no loss
//! recovery). Ingress can only drop. Buckets live in `RL_LIMITS`, keyed by the limited cgroup's
//! id: the socket's own cgroup, else its nearest limited ancestor. See `agent_common::ratelimit`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

agent_ebpf::probe_object!();

#[cfg(target_arch = "bpf")]
mod probe {
    use agent_common::ratelimit::{
        cost_ns, counter, Limit, LimitKey, EGRESS, INGRESS, MAX_LEVEL, RET_DROP, RET_DROP_CN,
        RET_PASS, RET_PASS_CN,
    };
    use aya_ebpf::{
        helpers::generated::{bpf_ktime_get_ns, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
        macros::{cgroup_skb, map},
        maps::{HashMap, PerCpuArray},
        programs::SkBuffContext,
    };

    /// Pinned under `enforcement.bpffs` by userspace while a `persist: true` limit lives.
    #[map]
    static RL_LIMITS: HashMap<LimitKey, Limit> = HashMap::with_max_entries(4096, 0);
    #[map]
    static RL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

    #[inline(always)]
    fn bump(idx: u32) {
        agent_ebpf::bump(&RL_COUNTERS, idx);
    }

    /// Adds `v` to a field of a map value (atomic: several CPUs charge one bucket).
    #[inline(always)]
    fn add(p: *mut u64, v: u64) {
        // SAFETY: `p` is a field of a map value, valid and 8-aligned while the program runs.
        unsafe { agent_ebpf::atomic_add(p, v) }
    }

    /// How far (ns) a virtual clock runs ahead of `now` (0 when behind).
    #[inline(always)]
    fn ahead_of(clock: *const u64, now: u64) -> u64 {
        // SAFETY: as in `add`.
        unsafe { core::ptr::read_volatile(clock) }.saturating_sub(now)
    }

    /// Charges `cost` to a virtual clock: an idle clock (behind now) first moves to now, then
    /// the cost is added atomically, so concurrent charges from several CPUs all count. The
    /// move to now is a plain store: it races only with charges made while the clock was
    /// behind now, i.e. on an idle bucket.
    #[inline(always)]
    fn charge(clock: *mut u64, cost: u64, now: u64) {
        // SAFETY: as in `add`.
        unsafe {
            if core::ptr::read_volatile(clock) < now {
                core::ptr::write_volatile(clock, now);
            }
        }
        add(clock, cost);
    }

    /// The limit of the socket's cgroup, else of its nearest limited ancestor.
    #[inline(always)]
    fn limit_of(ctx: &SkBuffContext, direction: u32) -> Option<*mut Limit> {
        let skb = ctx.skb.skb;
        let id = unsafe { bpf_skb_cgroup_id(skb.cast()) };
        let mut key = LimitKey {
            cgroup_id: id,
            direction,
            _pad: 0,
        };
        if let Some(l) = RL_LIMITS.get_ptr_mut(key) {
            return Some(l);
        }
        let mut level = MAX_LEVEL;
        while level > 0 {
            let a = unsafe { bpf_skb_ancestor_cgroup_id(skb.cast(), level as i32) };
            if a != 0 && a != id {
                key.cgroup_id = a;
                if let Some(l) = RL_LIMITS.get_ptr_mut(key) {
                    return Some(l);
                }
            }
            level -= 1;
        }
        None
    }

    fn verdict(ctx: &SkBuffContext, direction: u32) -> i32 {
        bump(counter::PACKETS);
        let Some(l) = limit_of(ctx, direction) else {
            bump(counter::UNLIMITED);
            return RET_PASS;
        };
        let l = unsafe { &mut *l };
        let bytes = ctx.len() as u64;
        let segs = unsafe { (*ctx.skb.skb).gso_segs }.max(1) as u64;
        let now = unsafe { bpf_ktime_get_ns() };
        let burst = l.burst_ns;
        let byte_cost = cost_ns(bytes, l.bytes_per_second);
        let pkt_cost = cost_ns(segs, l.packets_per_second);
        // Decided on the clocks as read (two CPUs may both pass on one reading: the decision
        // is lenient by one packet, the accounting exact), charged only when passed.
        let mut ahead = 0;
        if byte_cost > 0 {
            ahead = ahead_of(&l.next_bytes_ns, now);
        }
        if pkt_cost > 0 {
            ahead = ahead.max(ahead_of(&l.next_packets_ns, now));
        }
        let limit = if direction == EGRESS {
            2 * burst
        } else {
            burst
        };
        if ahead > limit {
            add(&mut l.dropped_packets, segs);
            add(&mut l.dropped_bytes, bytes);
            bump(counter::DROPPED);
            return if direction == EGRESS {
                RET_DROP_CN
            } else {
                RET_DROP
            };
        }
        if byte_cost > 0 {
            charge(&mut l.next_bytes_ns, byte_cost, now);
        }
        if pkt_cost > 0 {
            charge(&mut l.next_packets_ns, pkt_cost, now);
        }
        add(&mut l.passed_packets, segs);
        add(&mut l.passed_bytes, bytes);
        if ahead > burst {
            add(&mut l.cn_packets, segs);
            bump(counter::PASSED_CN);
            return RET_PASS_CN;
        }
        bump(counter::PASSED);
        RET_PASS
    }

    // The attach type in the section (`cgroup_skb/egress`): the verifier allows the
    // congestion-notification return codes (2, 3) only with expected_attach_type egress.
    #[cgroup_skb(egress)]
    pub fn ratelimit_egress(ctx: SkBuffContext) -> i32 {
        verdict(&ctx, EGRESS)
    }

    #[cgroup_skb(ingress)]
    pub fn ratelimit_ingress(ctx: SkBuffContext) -> i32 {
        // Ingress can only pass (1) or drop (0): bit 0 of the verdict (bit 1, congestion
        // notification, is never set for ingress, but the verifier cannot see that through
        // the shared `verdict`).
        verdict(&ctx, INGRESS) & 1
    }
}
