//! Maps, keys, values and events of the TCP network probe (sock_ops + `sock:inet_sk_error_report`).
//!
//! Layout invariants (both sides compile against these, so they cannot drift):
//! - `NET_SERIES` is a per-CPU hash `SeriesKey -> SeriesStats`, cumulative since the key was
//!   created. When it is full, the kernel adds into the all-zero key (the "other" series) and
//!   counts the fold, so no measurement is lost. Userspace deletes a key only after its process
//!   exited and after reading it.
//! - Histograms hold microseconds in log2 buckets (`crate::hist::log2_bucket`): bucket `b` is
//!   `(2^(b-1), 2^b]` µs, the last bucket is open-ended.
//! - `NET_CONNS` (hash, socket cookie -> `Conn`) holds one entry per tracked connection, from
//!   connect()/accept to CLOSE; the kernel deletes it at CLOSE.
//! - Every `ConnEvent` starts with the same fixed header (`kind`, `role`, `family`, `error`).

use crate::COMM_LEN;

/// Log2 µs buckets: bucket 34 ends at 2^34 µs (4.8 h); bucket 35 is open-ended.
pub const HIST_BUCKETS: usize = 36;

pub const SERIES_MAP: &str = "NET_SERIES";
pub const CONNS_MAP: &str = "NET_CONNS";
/// Socket storage (`BPF_MAP_TYPE_SK_STORAGE`, `BPF_F_CLONE`): a listening socket's owner, cloned
/// by the kernel into every socket the listener accepts. Keyed by the socket itself, so two
/// processes listening on one port (`SO_REUSEPORT`) each own what their socket accepts.
pub const LISTENERS_MAP: &str = "NET_LISTENER_OWNERS";
pub const SYNS_MAP: &str = "NET_SYNS";
pub const EVENTS_MAP: &str = "NET_EVENTS";
pub const COUNTERS_MAP: &str = "NET_COUNTERS";
/// Global (`.rodata`): aggregation level, one of `AGG_*`.
pub const AGG_GLOBAL: &str = "NET_AGGREGATION";
/// Global (`.rodata`): events each CPU may emit per second (0 = no events).
pub const EVENT_RATE_GLOBAL: &str = "NET_EVENTS_PER_CPU_SECOND";
/// Global (`.rodata`): 1 to turn on the per-ACK RTT callback (the RTT histogram), 0 for none.
pub const RTT_ON_GLOBAL: &str = "NET_RTT_ON";
/// Global (`.rodata`): nanoseconds between two RTT samples of one connection (0 = every one).
pub const RTT_PERIOD_GLOBAL: &str = "NET_RTT_SAMPLE_NS";

/// Series per (process, role, family, peer address, port).
pub const AGG_PEER: u32 = 0;
/// Series per (process, role, family, port): no addresses.
pub const AGG_PORT: u32 = 1;
/// Series per (process, role, family).
pub const AGG_PROCESS: u32 = 2;

pub const ROLE_CLIENT: u8 = 1;
pub const ROLE_SERVER: u8 = 2;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Failure kinds, indices into `SeriesStats::failures`.
pub mod failure {
    pub const REFUSED: usize = 0;
    pub const TIMEOUT: usize = 1;
    pub const RESET: usize = 2;
    pub const HOST_UNREACHABLE: usize = 3;
    pub const NETWORK_UNREACHABLE: usize = 4;
    pub const ABORTED: usize = 5;
    pub const OTHER: usize = 6;
    pub const COUNT: usize = 7;
    /// `error.type` value of each kind.
    pub const NAMES: [&str; COUNT] = [
        "refused",
        "timeout",
        "reset",
        "host_unreachable",
        "network_unreachable",
        "aborted",
        "_OTHER",
    ];

    /// Failure kind of a socket error (positive errno, as `sk_err` holds it).
    #[inline(always)]
    pub fn of_errno(errno: i32) -> usize {
        match errno {
            111 => REFUSED,
            110 => TIMEOUT,
            104 => RESET,
            113 => HOST_UNREACHABLE,
            101 => NETWORK_UNREACHABLE,
            103 => ABORTED,
            _ => OTHER,
        }
    }
}

/// Key of one aggregated series. Fields left out by the aggregation level are zero; the
/// all-zero key is the "other" series that takes what does not fit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// Process: the connecting process (client) or the one that called listen() (server).
    pub tgid: u32,
    /// Client: the peer's port; server: the local listening port. Host byte order.
    pub port: u16,
    pub family: u8,
    pub role: u8,
    /// Peer address: 4 bytes for IPv4 (rest zero), 16 for IPv6; network byte order.
    pub addr: [u8; 16],
}

/// A log2 µs histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Hist {
    pub buckets: [u64; HIST_BUCKETS],
    pub sum_us: u64,
}

impl Hist {
    pub const ZERO: Hist = Hist {
        buckets: [0; HIST_BUCKETS],
        sum_us: 0,
    };

    #[inline(always)]
    pub fn add(&mut self, us: u64) {
        self.sum_us += us;
        let b = crate::hist::log2_bucket(us, HIST_BUCKETS);
        if let Some(c) = self.buckets.get_mut(b) {
            *c += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Cumulative measurements of one series on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SeriesStats {
    /// cgroup v2 id and command of the owner when the entry was created.
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// Segments retransmitted (the kernel's `total_retrans` increments: `segs` of each
    /// RETRANS callback; SYN retransmissions included).
    pub retransmits: u64,
    /// Segments sent (`tcp_sock.segs_out` increments: data, pure ACKs, SYN/FIN, and
    /// retransmissions), credited per connection at its RTT samples, retransmits and close.
    pub segs_out: u64,
    pub failures: [u64; failure::COUNT],
    /// SYN (client: connect(); server: SYN arrival) to ESTABLISHED.
    pub handshake: Hist,
    /// Smoothed RTT of each connection, sampled about once per sample interval (at the
    /// kernel's first RTT measurement after the interval has passed; see the kernel's gate).
    pub rtt: Hist,
    /// ESTABLISHED to CLOSE.
    pub duration: Hist,
}

impl SeriesStats {
    pub const ZERO: SeriesStats = SeriesStats {
        cgroup_id: 0,
        comm: [0; COMM_LEN],
        retransmits: 0,
        segs_out: 0,
        failures: [0; failure::COUNT],
        handshake: Hist::ZERO,
        rtt: Hist::ZERO,
        duration: Hist::ZERO,
    };
}

/// Who owns a socket: captured in process context (connect(), listen()).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Owner {
    pub tgid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// Addresses and ports of a connection; addresses in network byte order, ports in host order.
/// IPv4 connections carried by an IPv6 socket (IPv4-mapped `::ffff:a.b.c.d` addresses, as a
/// dual-stack `::` listener or a connect to `::ffff:127.0.0.1` gives) are stored as IPv4: see
/// [`Tuple::unmap_v4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub local: [u8; 16],
    pub peer: [u8; 16],
    pub local_port: u16,
    pub peer_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Whether a 16-byte address is IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2).
#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// Rewrites an IPv4-mapped address in place into its IPv4 form: its last 4 bytes first, the
/// rest zero. In place, byte by byte: no 16-byte temporaries on the 512-byte BPF stack.
#[inline(always)]
pub fn unmap_in_place(a: &mut [u8; 16]) {
    a[0] = a[12];
    a[1] = a[13];
    a[2] = a[14];
    a[3] = a[15];
    for b in a[4..].iter_mut() {
        *b = 0;
    }
}

impl Tuple {
    /// An IPv6 tuple whose peer is IPv4-mapped is an IPv4 connection (the kernel speaks IPv4
    /// on the wire): family `AF_INET`, both addresses in their 4-byte form. Everything else
    /// is left as it is.
    #[inline(always)]
    pub fn unmap_v4(&mut self) {
        if self.family == AF_INET6 && is_v4_mapped(&self.peer) {
            self.family = AF_INET;
            unmap_in_place(&mut self.peer);
            unmap_in_place(&mut self.local);
        }
    }
}

/// A tracked connection (`NET_CONNS`, keyed by socket cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub series: SeriesKey,
    pub tuple: Tuple,
    pub owner: Owner,
    /// Start of the handshake (0 when unknown).
    pub start_ns: u64,
    /// When the connection reached ESTABLISHED (0 until then).
    pub established_ns: u64,
    pub handshake_us: u64,
    /// Smoothed RTT when the connection left ESTABLISHED.
    pub srtt_us: u32,
    pub role: u8,
    pub _pad: [u8; 3],
    /// The socket's `segs_out` already credited to its series.
    pub segs_out: u32,
    pub _pad2: u32,
}

pub const EVENT_OPEN: u8 = 1;
pub const EVENT_CLOSE: u8 = 2;
/// A socket error reported for a connection that just closed (or is closing).
pub const EVENT_FAILURE: u8 = 3;

/// One per-connection event through the `NET_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub kind: u8,
    pub role: u8,
    pub family: u8,
    pub _pad: u8,
    /// Socket error (positive errno) of a failure event, else 0.
    pub error: i32,
    pub cookie: u64,
    /// `bpf_ktime_get_ns` when the event happened.
    pub time_ns: u64,
    pub owner: Owner,
    pub tuple: Tuple,
    pub handshake_us: u64,
    pub duration_us: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub srtt_us: u32,
    pub retransmits: u32,
}

/// The connection that closed last on this CPU, so a socket error reported right after the
/// close (the kernel sets the state to CLOSE, then reports) can be attributed to it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LastClosed {
    pub tuple: Tuple,
    pub series: SeriesKey,
    pub owner: Owner,
    pub cookie: u64,
    pub time_ns: u64,
    pub role: u8,
    pub _pad: [u8; 7],
}

/// A socket error reported before its connection closed (ICMP errors report first), to be
/// attributed at the close on this CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingError {
    pub tuple: Tuple,
    pub time_ns: u64,
    pub error: i32,
    pub _pad: u32,
}

/// Per-CPU event-rate window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RateWindow {
    pub second: u64,
    pub sent: u64,
}

/// Indices into the per-CPU `NET_COUNTERS` array: the probe's own health counters.
pub mod counter {
    /// New connections that could not be tracked (`NET_CONNS` full).
    pub const CONNS_INSERT_FAILED: u32 = 0;
    /// Series that did not fit in `NET_SERIES` and were added to the "other" series.
    pub const SERIES_FOLDED: u32 = 1;
    /// Measurements lost because even the "other" series could not be created.
    pub const SERIES_INSERT_FAILED: u32 = 2;
    /// Events not sent because this CPU reached its per-second budget.
    pub const EVENTS_RATE_LIMITED: u32 = 3;
    /// Events not sent because the ring buffer was full.
    pub const EVENTS_RINGBUF_FULL: u32 = 4;
    /// Callbacks for a socket we do not track (opened before the probe attached).
    pub const CONN_MISSING: u32 = 5;
    /// Server handshakes whose SYN was not seen (SYN cookies, or SYN before attach).
    pub const SYN_MISSING: u32 = 6;
    /// Socket errors held for a later close on the same CPU.
    pub const ERRORS_PENDING: u32 = 7;
    /// Socket errors attributed to a connection.
    pub const ERRORS_ATTRIBUTED: u32 = 8;
    /// Sockets whose callbacks (state, RTT, retransmit) could not be turned on.
    pub const CB_FLAGS_FAILED: u32 = 9;
    /// Connections tracked (client and server).
    pub const CONNS_TRACKED: u32 = 10;
    /// Events sent.
    pub const EVENTS_SENT: u32 = 11;
    /// Accepted connections whose listener has no owner (it listened before the probe
    /// attached and was not found in `/proc`): attributed to no process (`folded=unknown`).
    pub const LISTENER_UNKNOWN: u32 = 12;
    /// listen() calls whose owner could not be stored on the socket (no memory).
    pub const LISTENER_STORE_FAILED: u32 = 13;
    pub const COUNT: u32 = 14;
    pub const NAMES: [&str; COUNT as usize] = [
        "conns_insert_failed",
        "series_folded",
        "series_insert_failed",
        "events_rate_limited",
        "events_ringbuf_full",
        "conn_missing",
        "syn_missing",
        "errors_pending",
        "errors_attributed",
        "cb_flags_failed",
        "conns_tracked",
        "events_sent",
        "listener_unknown",
        "listener_store_failed",
    ];
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SeriesKey {}
    unsafe impl aya::Pod for super::SeriesStats {}
    unsafe impl aya::Pod for super::Conn {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::ConnEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        // Both sides compile against these; the sizes pin what the kernel object expects.
        assert_eq!(core::mem::size_of::<SeriesKey>(), 24);
        assert_eq!(core::mem::size_of::<Conn>(), 136);
        assert_eq!(
            core::mem::size_of::<SeriesStats>(),
            8 + COMM_LEN + 16 + 8 * failure::COUNT + 3 * 8 * (HIST_BUCKETS + 1)
        );
    }

    fn v6(a: [u8; 16]) -> Tuple {
        Tuple {
            local: a,
            peer: a,
            local_port: 1,
            peer_port: 2,
            family: AF_INET6,
            _pad: [0; 3],
        }
    }

    #[test]
    fn v4_mapped_tuples_become_ipv4() {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        let mut t = v6(mapped);
        t.unmap_v4();
        assert_eq!(t.family, AF_INET);
        assert_eq!(&t.peer[..4], &[127, 0, 0, 1]);
        assert_eq!(&t.peer[4..], &[0; 12]);
        assert_eq!(t.local, t.peer);
        assert_eq!((t.local_port, t.peer_port), (1, 2));
        // Applying it twice changes nothing more.
        let once = t;
        t.unmap_v4();
        assert_eq!(t, once);
    }

    #[test]
    fn real_ipv6_stays_ipv6() {
        // ::1, ::, ::127.0.0.1 (IPv4-compatible, deprecated, not mapped), ::ffff:0:1 prefix
        // variants that are not mapped.
        let mut compat = [0u8; 16];
        compat[12..].copy_from_slice(&[127, 0, 0, 1]);
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        let mut almost = [0u8; 16];
        almost[9] = 0xff;
        almost[10] = 0xff;
        almost[11] = 0xff;
        for a in [[0u8; 16], loopback, compat, almost] {
            let mut t = v6(a);
            t.unmap_v4();
            assert_eq!(t, v6(a), "{a:?}");
        }
        // An IPv4 tuple is left alone.
        let mut t = v6(loopback);
        t.family = AF_INET;
        let before = t;
        t.unmap_v4();
        assert_eq!(t, before);
    }
}
