//! Maps and values of the connection blocker (`cgroup_sock_addr` connect4/connect6, the
//! enforcement engine's `block` action).
//!
//! Layout invariants:
//! - Addresses are 16 bytes, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), in network order, on
//!   both sides: an IPv4 rule then matches an IPv4 connect and an IPv4-mapped connect on an IPv6
//!   socket alike.
//! - `BLOCK_CGROUPS` (hash: target cgroup v2 id -> rules on it) says which cgroups have rules;
//!   the program finds the caller's nearest such cgroup (its own, else its ancestors').
//! - `BLOCK_RULES` is an LPM trie over `BlockData` bytes in order (cgroup id, port, address):
//!   the prefix covers the cgroup id and the port (80 bits) plus the rule's address prefix.
//!   Port 0 is "any port": a connect is looked up with its port, then with port 0.
//! - Every refusal adds one to the rule's `refusals` (atomic) and to `BLOCK_REFUSALS` (LRU hash
//!   per process and peer; a full map evicts the least recently refused and the eviction shows
//!   as a smaller total than `counter::REFUSED`).

use crate::COMM_LEN;

pub const CGROUPS_MAP: &str = "BLOCK_CGROUPS";
pub const RULES_MAP: &str = "BLOCK_RULES";
pub const REFUSALS_MAP: &str = "BLOCK_REFUSALS";
pub const COUNTERS_MAP: &str = "BLOCK_COUNTERS";

/// Deepest cgroup level searched for a cgroup with rules (the root is level 0).
pub const MAX_LEVEL: u32 = 16;

/// Bits of the LPM key before the address: cgroup id (64) and port (16).
pub const PREFIX_BITS: u32 = 80;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Indices into `BLOCK_COUNTERS`.
pub mod counter {
    /// connect() calls seen by an attached program.
    pub const CONNECTS: u32 = 0;
    /// Refused with EPERM.
    pub const REFUSED: u32 = 1;
    /// A refusal whose per-process record could not be written.
    pub const RECORD_FAILED: u32 = 2;
    pub const COUNT: u32 = 3;
    pub const NAMES: [&str; COUNT as usize] = ["connects", "refused", "record_failed"];
}

/// The LPM trie's key data (`aya`'s `Key { prefix_len, data }` wraps it). Byte arrays only, so
/// the layout has no padding and both sides encode it alike.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockData {
    /// Target cgroup v2 id, big-endian (most significant byte first, so the prefix is the id).
    pub cgroup_id: [u8; 8],
    /// Peer port, network order; 0 = any port.
    pub port: [u8; 2],
    /// Peer address (IPv4-mapped for IPv4), network order.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockRule {
    /// The engine's id for the rule (journal entry), for the log.
    pub id: u64,
    /// Connects refused by this rule (kernel-owned, atomic adds).
    pub refusals: u64,
}

/// One (process, peer) whose connects were refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RefusalKey {
    pub tgid: u32,
    /// Peer port, host order.
    pub port: u16,
    /// `AF_INET` (IPv4, also when mapped on an IPv6 socket) or `AF_INET6`.
    pub family: u8,
    pub _pad: u8,
    /// The peer, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// The target cgroup whose rule refused it.
    pub cgroup_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusalStats {
    pub count: u64,
    /// ktime of the last refusal.
    pub last_ns: u64,
    /// The caller's command name when the entry was created.
    pub comm: [u8; COMM_LEN],
}

/// The IPv4-mapped form of an IPv4 address (network-order octets).
#[inline(always)]
pub fn mapped_v4(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Whether `addr` is IPv4-mapped (`::ffff:0:0/96`).
#[inline(always)]
pub fn is_mapped_v4(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::BlockData {}
    unsafe impl aya::Pod for super::BlockRule {}
    unsafe impl aya::Pod for super::RefusalKey {}
    unsafe impl aya::Pod for super::RefusalStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<BlockData>(), 26);
        assert_eq!(core::mem::size_of::<BlockRule>(), 16);
        assert_eq!(core::mem::size_of::<RefusalKey>(), 32);
        assert_eq!(core::mem::size_of::<RefusalStats>(), 32);
        let m = mapped_v4([10, 0, 0, 1]);
        assert!(is_mapped_v4(&m));
        assert!(!is_mapped_v4(&[0; 16]));
    }
}
