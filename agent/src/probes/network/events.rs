//! Per-connection events from the `NET_EVENTS` ring buffer, decoded into `/status` records.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::network::{
    failure, ConnEvent, AF_INET, EVENT_CLOSE, EVENT_FAILURE, EVENT_OPEN, ROLE_CLIENT,
};

use crate::{procinfo::comm_str, status::state::ConnRecord};

/// Text form of an address as the kernel stores it (network byte order; IPv4 in 4 bytes).
pub fn addr_string(family: u8, addr: &[u8; 16]) -> String {
    if family == AF_INET {
        Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()
    } else {
        Ipv6Addr::from(*addr).to_string()
    }
}

pub fn family_name(family: u8) -> &'static str {
    if family == AF_INET {
        "ipv4"
    } else {
        "ipv6"
    }
}

pub fn role_name(role: u8) -> &'static str {
    if role == ROLE_CLIENT {
        "client"
    } else {
        "server"
    }
}

/// Converts kernel monotonic time (`bpf_ktime_get_ns`) into wall-clock time.
pub struct Clock {
    /// Wall-clock time minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as i128;
        Clock {
            offset_ns: wall - mono,
        }
    }

    pub fn unix_nanos(&self, ktime_ns: u64) -> u64 {
        (ktime_ns as i128 + self.offset_ns).max(0) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Decodes one ring-buffer record; `None` for a short or unknown record.
pub fn decode(bytes: &[u8], clock: &Clock) -> Option<ConnRecord> {
    if bytes.len() < std::mem::size_of::<ConnEvent>() {
        return None;
    }
    // SAFETY: the kernel wrote a whole `ConnEvent` (checked length); read unaligned.
    let e: ConnEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let event = match e.kind {
        EVENT_OPEN => "open",
        EVENT_CLOSE => "close",
        EVENT_FAILURE => "failure",
        _ => return None,
    };
    let established = e.handshake_us != 0 || e.duration_us != 0;
    // The kernel already records IPv4 on IPv6 sockets as IPv4; an older object may not.
    let mut t = e.tuple;
    t.unmap_v4();
    let t = &t;
    Some(ConnRecord {
        event,
        time_unix_nano: clock.unix_nanos(e.time_ns),
        cookie: e.cookie,
        pid: e.owner.tgid,
        comm: comm_str(&e.owner.comm),
        role: role_name(e.role),
        family: family_name(t.family),
        local_address: addr_string(t.family, &t.local),
        local_port: t.local_port,
        peer_address: addr_string(t.family, &t.peer),
        peer_port: t.peer_port,
        handshake_us: (e.handshake_us != 0).then_some(e.handshake_us),
        duration_us: (e.kind == EVENT_CLOSE && established).then_some(e.duration_us),
        rtt_us: (e.srtt_us != 0).then_some(e.srtt_us as u64),
        bytes_sent: e.bytes_sent,
        bytes_received: e.bytes_received,
        retransmits: e.retransmits,
        error_type: (e.error != 0).then(|| failure::NAMES[failure::of_errno(e.error)]),
    })
}

#[cfg(test)]
mod tests {
    use agent_common::network::{Owner, Tuple, AF_INET6, ROLE_SERVER};

    use super::*;

    fn event(kind: u8) -> ConnEvent {
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[10, 0, 0, 2]);
        ConnEvent {
            kind,
            role: ROLE_CLIENT,
            family: AF_INET,
            _pad: 0,
            error: 0,
            cookie: 7,
            time_ns: 1_000,
            owner: Owner {
                tgid: 42,
                _pad: 0,
                cgroup_id: 1,
                comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            },
            tuple: Tuple {
                local,
                peer,
                local_port: 40000,
                peer_port: 80,
                family: AF_INET,
                _pad: [0; 3],
            },
            handshake_us: 120,
            duration_us: 5_000,
            bytes_sent: 10,
            bytes_received: 20,
            srtt_us: 33,
            retransmits: 1,
        }
    }

    fn bytes(e: &ConnEvent) -> Vec<u8> {
        let p = (e as *const ConnEvent).cast::<u8>();
        unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<ConnEvent>()) }.to_vec()
    }

    #[test]
    fn decodes_a_close_event() {
        let r = decode(&bytes(&event(EVENT_CLOSE)), &Clock { offset_ns: 5 }).unwrap();
        assert_eq!(r.event, "close");
        assert_eq!(r.time_unix_nano, 1_005);
        assert_eq!((r.pid, r.comm.as_str()), (42, "curl"));
        assert_eq!((r.role, r.family), ("client", "ipv4"));
        assert_eq!(
            (r.local_address.as_str(), r.local_port),
            ("10.0.0.1", 40000)
        );
        assert_eq!((r.peer_address.as_str(), r.peer_port), ("10.0.0.2", 80));
        assert_eq!(r.handshake_us, Some(120));
        assert_eq!(r.duration_us, Some(5_000));
        assert_eq!(r.rtt_us, Some(33));
        assert_eq!((r.bytes_sent, r.bytes_received, r.retransmits), (10, 20, 1));
        assert_eq!(r.error_type, None);
    }

    #[test]
    fn failures_and_short_records() {
        let mut e = event(EVENT_FAILURE);
        e.error = 111;
        e.role = ROLE_SERVER;
        e.tuple.family = AF_INET6;
        e.tuple.peer = Ipv6Addr::LOCALHOST.octets();
        let r = decode(&bytes(&e), &Clock::new()).unwrap();
        assert_eq!(r.error_type, Some("refused"));
        assert_eq!((r.role, r.family), ("server", "ipv6"));
        assert_eq!(r.peer_address, "::1");
        assert_eq!(r.duration_us, None);
        assert!(decode(&bytes(&e)[..10], &Clock::new()).is_none());
        // IPv4 carried by an IPv6 socket reads as IPv4.
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        e.kind = EVENT_OPEN;
        e.tuple.peer = mapped;
        e.tuple.local = mapped;
        let r = decode(&bytes(&e), &Clock::new()).unwrap();
        assert_eq!(r.family, "ipv4");
        assert_eq!(
            (r.peer_address.as_str(), r.local_address.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        e.kind = 99;
        assert!(decode(&bytes(&e), &Clock::new()).is_none());
    }
}
