//! Connection blocking: `cgroup_sock_addr` connect4/connect6 programs attached to each blocked
//! cgroup (v2) refuse a connect() to a blocked peer with EPERM, before any SYN leaves, and count
//! each refusal per rule and per (process, peer). IPv4 rules are stored IPv4-mapped, so they
//! also match a connect to `::ffff:a.b.c.d` on an IPv6 socket. See `agent_common::block`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

agent_ebpf::probe_object!();

#[cfg(target_arch = "bpf")]
mod probe {
    use agent_common::block::{
        counter, is_mapped_v4, mapped_v4, BlockData, BlockRule, RefusalKey, RefusalStats, AF_INET,
        AF_INET6, MAX_LEVEL, PREFIX_BITS,
    };
    use aya_ebpf::{
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid,
            generated::{
                bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_ktime_get_ns,
            },
        },
        macros::{cgroup_sock_addr, map},
        maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray},
        programs::SockAddrContext,
    };

    /// Target cgroup id -> number of rules on it. The maps holding rules are pinned under
    /// `enforcement.bpffs` by userspace while a `persist: true` block lives.
    #[map]
    static BLOCK_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);
    #[map]
    static BLOCK_RULES: LpmTrie<BlockData, BlockRule> = LpmTrie::with_max_entries(4096, 0);
    #[map]
    static BLOCK_REFUSALS: LruHashMap<RefusalKey, RefusalStats> =
        LruHashMap::with_max_entries(4096, 0);
    #[map]
    static BLOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

    /// sock_addr return codes: 1 lets the call go on, 0 fails it with EPERM.
    const ALLOW: i32 = 1;
    const REFUSE: i32 = 0;

    #[inline(always)]
    fn bump(idx: u32) {
        agent_ebpf::bump(&BLOCK_COUNTERS, idx);
    }

    /// The caller's cgroup if it has rules, else its nearest ancestor with rules.
    #[inline(always)]
    fn target_cgroup() -> Option<u64> {
        let id = unsafe { bpf_get_current_cgroup_id() };
        if BLOCK_CGROUPS.get_ptr(id).is_some() {
            return Some(id);
        }
        let mut level = MAX_LEVEL;
        while level > 0 {
            let a = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
            if a != 0 && a != id && BLOCK_CGROUPS.get_ptr(a).is_some() {
                return Some(a);
            }
            level -= 1;
        }
        None
    }

    #[inline(always)]
    fn rule(cgroup: u64, port: u16, addr: &[u8; 16]) -> Option<*mut BlockRule> {
        let key = Key::new(
            PREFIX_BITS + 128,
            BlockData {
                cgroup_id: cgroup.to_be_bytes(),
                port: port.to_be_bytes(),
                addr: *addr,
            },
        );
        BLOCK_RULES
            .get(&key)
            .map(|r| core::ptr::from_ref(r).cast_mut())
    }

    /// Refuses (0) when a rule of the caller's cgroup covers `addr`:`port`; counts it.
    #[inline(always)]
    fn check(addr: [u8; 16], port: u16) -> i32 {
        bump(counter::CONNECTS);
        let Some(cgroup) = target_cgroup() else {
            return ALLOW;
        };
        let Some(r) = rule(cgroup, port, &addr).or_else(|| rule(cgroup, 0, &addr)) else {
            return ALLOW;
        };
        // SAFETY: a map value, valid and 8-aligned while the program runs.
        unsafe { agent_ebpf::atomic_add(&mut (*r).refusals, 1) };
        bump(counter::REFUSED);
        record(cgroup, addr, port);
        REFUSE
    }

    #[inline(always)]
    fn record(cgroup: u64, addr: [u8; 16], port: u16) {
        let key = RefusalKey {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            port,
            family: if is_mapped_v4(&addr) {
                AF_INET
            } else {
                AF_INET6
            },
            _pad: 0,
            addr,
            cgroup_id: cgroup,
        };
        let now = unsafe { bpf_ktime_get_ns() };
        if let Some(s) = BLOCK_REFUSALS.get_ptr_mut(key) {
            // SAFETY: as above.
            unsafe { agent_ebpf::atomic_add(&mut (*s).count, 1) };
            unsafe { (*s).last_ns = now };
            return;
        }
        let stats = RefusalStats {
            count: 1,
            last_ns: now,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        if BLOCK_REFUSALS.insert(key, stats, 0).is_err() {
            bump(counter::RECORD_FAILED);
        }
    }

    #[cgroup_sock_addr(connect4)]
    pub fn block_connect4(ctx: SockAddrContext) -> i32 {
        let sa = ctx.sock_addr;
        // user_ip4 and user_port are in network order.
        let ip = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip4)) };
        let port = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_port)) };
        check(mapped_v4(ip.to_ne_bytes()), u16::from_be(port as u16))
    }

    #[cgroup_sock_addr(connect6)]
    pub fn block_connect6(ctx: SockAddrContext) -> i32 {
        let sa = ctx.sock_addr;
        // Context fields are read at constant offsets only (the verifier's rule).
        let w = unsafe {
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[3])),
            ]
        };
        let mut addr = [0u8; 16];
        addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
        addr[12..16].copy_from_slice(&w[3].to_ne_bytes());
        let port = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_port)) };
        check(addr, u16::from_be(port as u16))
    }
}
