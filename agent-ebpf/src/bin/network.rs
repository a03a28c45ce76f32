//! TCP connections: a sock_ops program on the root cgroup times handshakes, samples smoothed RTT,
//! counts retransmits and measures lifetimes into per-series histograms, and sends one event per
//! connection open and close through a rate-bounded ring buffer; the `sock:inet_sk_error_report`
//! tracepoint classifies failures (refused, timeout, reset, ...). No kprobes.
//!
//! Callbacks used (sock_ops `op`): TCP_LISTEN (owner of a listener, process context, stored on
//! the listening socket itself), TCP_CONNECT (client start and owner, process context),
//! TIMEOUT_INIT on a request socket (SYN arrival at a listener), ACTIVE/PASSIVE_ESTABLISHED
//! (handshake end; turns on the STATE, RTT and RETRANS callbacks for the socket), RTT, RETRANS,
//! STATE (leaving ESTABLISHED, reaching CLOSE).
//!
//! Attribution of accepted connections: the listener's owner lives in socket storage created
//! with `BPF_F_CLONE`, so the kernel copies it into each socket the listener accepts (in
//! `sk_clone_lock`): a child is owned by the process that listened on *the socket that took
//! it*, also when several sockets share a port (`SO_REUSEPORT`). A request socket's cookie
//! becomes its child's cookie (`inet_csk_clone_lock`), which joins a SYN's arrival to its
//! handshake's end without reading addresses a request socket of a dual-stack listener does
//! not fill in for IPv4.
//!
//! Addresses: IPv4 connections on IPv6 sockets (`::ffff:a.b.c.d`) are recorded as IPv4
//! (`Tuple::unmap_v4`), in series keys, events and failure matching alike.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

agent_ebpf::probe_object!();

#[cfg(target_arch = "bpf")]
mod probe {
    use agent_common::network::{
        counter, failure, Conn, ConnEvent, LastClosed, Owner, PendingError, RateWindow, SeriesKey,
        SeriesStats, Tuple, AF_INET, AF_INET6, AGG_PEER, AGG_PORT, EVENT_CLOSE, EVENT_FAILURE,
        EVENT_OPEN, ROLE_CLIENT, ROLE_SERVER,
    };
    use aya_ebpf::{
        bindings::{
            bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_CLONE, BPF_F_NO_PREALLOC,
            BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
            BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB,
            BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
            BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
            BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_SOCK_OPS_TIMEOUT_INIT,
        },
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid,
            generated::{
                bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_coarse_ns,
                bpf_ktime_get_ns, bpf_sk_storage_delete, bpf_sk_storage_get,
            },
        },
        macros::{btf_map, map, sock_ops, tracepoint},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
        programs::{SockOpsContext, TracePointContext},
    };

    /// Reads one u32 of the context at a constant offset. Every context field is read this way,
    /// unconditionally: the verifier refuses loads through a context pointer the compiler has
    /// offset (which it does when a field is read on only some paths).
    macro_rules! field {
        ($ctx:expr, $($f:tt)+) => {
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ctx.ops).$($f)+)) }
        };
    }

    /// Aggregation level (`AGG_*`); set by the loader.
    #[no_mangle]
    static NET_AGGREGATION: u32 = AGG_PEER;
    /// Events each CPU may send per second; set by the loader.
    #[no_mangle]
    static NET_EVENTS_PER_CPU_SECOND: u64 = 1000;
    /// 1: turn on the per-ACK RTT callback for tracked sockets; set by the loader.
    #[no_mangle]
    static NET_RTT_ON: u32 = 1;
    /// Nanoseconds between two RTT samples of one connection; set by the loader.
    #[no_mangle]
    static NET_RTT_SAMPLE_NS: u64 = 1_000_000_000;

    #[map]
    static NET_SERIES: PerCpuHashMap<SeriesKey, SeriesStats> =
        PerCpuHashMap::with_max_entries(1024, 0);
    #[map]
    static NET_CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(65536, 0);
    /// A BTF map definition of socket storage whose values the kernel clones into accepted
    /// sockets (aya-ebpf's `SkStorage` sets no `BPF_F_CLONE`, and reads only sock_addr
    /// contexts). Fields are the libbpf `.maps` convention: types encode the attributes.
    #[repr(C)]
    pub struct ClonedSkStorage {
        r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
        key: *const i32,
        value: *const Owner,
        max_entries: *const [i32; 0],
        map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
    }
    // SAFETY: the fields are placeholders the loader reads from BTF; never dereferenced.
    unsafe impl Sync for ClonedSkStorage {}

    impl ClonedSkStorage {
        const fn new() -> Self {
            ClonedSkStorage {
                r#type: core::ptr::null(),
                key: core::ptr::null(),
                value: core::ptr::null(),
                max_entries: core::ptr::null(),
                map_flags: core::ptr::null(),
            }
        }

        #[inline(always)]
        fn as_ptr(&self) -> *mut core::ffi::c_void {
            core::ptr::from_ref(self).cast_mut().cast()
        }
    }

    /// The owner of each listening socket, cloned into the sockets it accepts.
    #[btf_map]
    static NET_LISTENER_OWNERS: ClonedSkStorage = ClonedSkStorage::new();
    /// SYN arrival time by the request socket's cookie (which its child socket keeps).
    #[map]
    static NET_SYNS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(8192, 0);
    #[map]
    static NET_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
    #[map]
    static NET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
    #[map]
    static NET_SCRATCH: PerCpuArray<SeriesStats> = PerCpuArray::with_max_entries(1, 0);
    /// Where an accepted connection's entry is built (off the 512-byte stack).
    #[map]
    static NET_CONN_SCRATCH: PerCpuArray<Conn> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static NET_LAST_CLOSED: PerCpuArray<LastClosed> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static NET_PENDING_ERROR: PerCpuArray<PendingError> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static NET_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);
    /// log2 of the RTT sampling gate's slots.
    const RTT_GATE_BITS: u32 = 12;
    /// Coarse time of the last RTT sample per gate slot (see `on_rtt`).
    #[map]
    static NET_RTT_GATE: Array<u64> = Array::with_max_entries(1 << RTT_GATE_BITS, 0);

    const TCP_ESTABLISHED: u32 = 1;
    const TCP_CLOSE: u32 = 7;
    const IPPROTO_TCP: u16 = 6;
    /// A socket error is matched to a close on the same CPU only within this window: both
    /// happen in one kernel call chain, microseconds apart.
    const MATCH_WINDOW_NS: u64 = 10_000_000;

    #[inline(always)]
    fn bump(idx: u32) {
        agent_ebpf::bump(&NET_COUNTERS, idx);
    }

    /// Credits the segments the socket sent since the connection's last credit (`segs_out`,
    /// read from the callback's context) to its series: every segment sent while tracked is
    /// credited exactly once, at the latest at the close. Callbacks of one socket run under
    /// its lock, so `conn` is not written concurrently.
    #[inline(always)]
    fn credit_segs(conn: &mut Conn, s: &mut SeriesStats, segs_out: u32) {
        s.segs_out += segs_out.wrapping_sub(conn.segs_out) as u64;
        conn.segs_out = segs_out;
    }

    #[inline(always)]
    fn now() -> u64 {
        unsafe { bpf_ktime_get_ns() }
    }

    #[sock_ops]
    pub fn network_sockops(ctx: SockOpsContext) -> u32 {
        let _ = try_network_sockops(&ctx);
        // 1: let the socket operation proceed unchanged.
        1
    }

    fn try_network_sockops(ctx: &SockOpsContext) -> Result<(), i64> {
        match field!(ctx, op) {
            BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ctx),
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(ctx),
            BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
                on_accepted(ctx)?;
                on_established(ctx)
            }
            BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(ctx),
            BPF_SOCK_OPS_TIMEOUT_INIT => on_timeout_init(ctx),
            BPF_SOCK_OPS_RTT_CB => on_rtt(ctx),
            BPF_SOCK_OPS_RETRANS_CB => on_retrans(ctx),
            BPF_SOCK_OPS_STATE_CB => on_state(ctx),
            _ => Ok(()),
        }
    }

    #[inline(always)]
    fn cookie(ctx: &SockOpsContext) -> u64 {
        unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) }
    }

    /// The context's full socket (null for request and time-wait sockets).
    #[inline(always)]
    fn full_sock(ctx: &SockOpsContext) -> *mut core::ffi::c_void {
        field!(ctx, __bindgen_anon_2.sk).cast()
    }

    /// The peer port in host order. The kernel stores it in network order; depending on the
    /// kernel version it sits in the low or the high 16 bits of `remote_port`.
    #[inline(always)]
    fn peer_port(raw: u32) -> u16 {
        let be = if raw > 0xffff {
            (raw >> 16) as u16
        } else {
            raw as u16
        };
        u16::from_be(be)
    }

    #[inline(always)]
    fn addr_bytes(v4: u32, v6: [u32; 4], family: u8) -> [u8; 16] {
        let mut out = [0u8; 16];
        if family == AF_INET {
            out[..4].copy_from_slice(&v4.to_ne_bytes());
        } else {
            out[..4].copy_from_slice(&v6[0].to_ne_bytes());
            out[4..8].copy_from_slice(&v6[1].to_ne_bytes());
            out[8..12].copy_from_slice(&v6[2].to_ne_bytes());
            out[12..].copy_from_slice(&v6[3].to_ne_bytes());
        }
        out
    }

    #[inline(always)]
    fn tuple(ctx: &SockOpsContext) -> Tuple {
        let family = field!(ctx, family) as u8;
        let remote4 = field!(ctx, remote_ip4);
        let local4 = field!(ctx, local_ip4);
        let remote6 = [
            field!(ctx, remote_ip6[0]),
            field!(ctx, remote_ip6[1]),
            field!(ctx, remote_ip6[2]),
            field!(ctx, remote_ip6[3]),
        ];
        let local6 = [
            field!(ctx, local_ip6[0]),
            field!(ctx, local_ip6[1]),
            field!(ctx, local_ip6[2]),
            field!(ctx, local_ip6[3]),
        ];
        let local_port = field!(ctx, local_port);
        let remote_port = field!(ctx, remote_port);
        let mut t = Tuple {
            local: addr_bytes(local4, local6, family),
            peer: addr_bytes(remote4, remote6, family),
            local_port: local_port as u16,
            peer_port: peer_port(remote_port),
            family,
            _pad: [0; 3],
        };
        t.unmap_v4();
        t
    }

    /// The current task, in process context (connect(), listen()).
    #[inline(always)]
    fn current_owner() -> Owner {
        Owner {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        }
    }

    #[inline(always)]
    fn series_key(owner: &Owner, t: &Tuple, role: u8) -> SeriesKey {
        let mode = unsafe { core::ptr::read_volatile(&NET_AGGREGATION) };
        let port = if role == ROLE_CLIENT {
            t.peer_port
        } else {
            t.local_port
        };
        SeriesKey {
            tgid: owner.tgid,
            port: if mode == AGG_PEER || mode == AGG_PORT {
                port
            } else {
                0
            },
            family: t.family,
            role,
            addr: if mode == AGG_PEER { t.peer } else { [0; 16] },
        }
    }

    /// This series' values on this CPU, created when new (with the owner's name); when the map
    /// is full, the "other" series (all-zero key) instead, and the fold is counted.
    #[inline(always)]
    fn series(key: &SeriesKey, owner: &Owner) -> Option<&'static mut SeriesStats> {
        if let Some(v) = NET_SERIES.get_ptr_mut(key) {
            return Some(unsafe { &mut *v });
        }
        let scratch = unsafe { &mut *NET_SCRATCH.get_ptr_mut(0)? };
        *scratch = SeriesStats::ZERO;
        scratch.cgroup_id = owner.cgroup_id;
        scratch.comm = owner.comm;
        #[allow(clippy::needless_borrows_for_generic_args)]
        if NET_SERIES.insert(key, &*scratch, 0).is_ok() {
            return NET_SERIES.get_ptr_mut(key).map(|v| unsafe { &mut *v });
        }
        bump(counter::SERIES_FOLDED);
        let other = SeriesKey::default();
        if let Some(v) = NET_SERIES.get_ptr_mut(other) {
            return Some(unsafe { &mut *v });
        }
        *scratch = SeriesStats::ZERO;
        #[allow(clippy::needless_borrows_for_generic_args)]
        if NET_SERIES.insert(&other, &*scratch, 0).is_err() {
            bump(counter::SERIES_INSERT_FAILED);
            return None;
        }
        NET_SERIES.get_ptr_mut(other).map(|v| unsafe { &mut *v })
    }

    /// listen(): the caller owns the socket; its owner is stored on the socket, to be cloned
    /// into every connection it accepts.
    #[inline(never)]
    fn on_listen(ctx: &SockOpsContext) -> Result<(), i64> {
        let sk = full_sock(ctx);
        if sk.is_null() {
            return Ok(());
        }
        let mut owner = current_owner();
        let stored = unsafe {
            bpf_sk_storage_get(
                NET_LISTENER_OWNERS.as_ptr(),
                sk,
                core::ptr::from_mut(&mut owner).cast(),
                BPF_SK_STORAGE_GET_F_CREATE.into(),
            )
        }
        .cast::<Owner>();
        if stored.is_null() {
            bump(counter::LISTENER_STORE_FAILED);
            return Ok(());
        }
        // An existing entry (listen() again after shutdown, or seeded from /proc) takes the
        // caller: it is the socket's owner now.
        unsafe { *stored = owner };
        Ok(())
    }

    /// The owner cloned from the listener into this accepted socket (then removed from it: it
    /// is copied into the connection's entry). `Owner::default()` (tgid 0) when unknown.
    #[inline(always)]
    fn listener_owner(ctx: &SockOpsContext) -> Owner {
        let sk = full_sock(ctx);
        if sk.is_null() {
            return Owner::default();
        }
        let map = NET_LISTENER_OWNERS.as_ptr();
        let p = unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), 0) }.cast::<Owner>();
        if p.is_null() {
            bump(counter::LISTENER_UNKNOWN);
            return Owner::default();
        }
        let owner = unsafe { *p };
        let _ = unsafe { bpf_sk_storage_delete(map, sk) };
        owner
    }

    /// A SYN reached a listener: the request socket's initial timeout is asked for. Full
    /// sockets ask too (at connect()); those are not SYN arrivals.
    #[inline(never)]
    fn on_timeout_init(ctx: &SockOpsContext) -> Result<(), i64> {
        if field!(ctx, is_fullsock) != 0 {
            return Ok(());
        }
        NET_SYNS.insert(cookie(ctx), now(), 0)?;
        Ok(())
    }

    /// A listener's child socket reached ESTABLISHED: it is tracked from here, owned by whoever
    /// listened on the socket that accepted it, timed from its SYN's arrival. Its own frame
    /// (called before `on_established`, not from it): the two would not fit in one 512-byte
    /// stack.
    #[inline(never)]
    fn on_accepted(ctx: &SockOpsContext) -> Result<(), i64> {
        let c = cookie(ctx);
        let start = match unsafe { NET_SYNS.get(c) } {
            Some(s) => *s,
            None => {
                bump(counter::SYN_MISSING);
                0
            }
        };
        let _ = NET_SYNS.remove(c);
        let conn = unsafe { &mut *NET_CONN_SCRATCH.get_ptr_mut(0).ok_or(0i64)? };
        conn.tuple = tuple(ctx);
        conn.owner = listener_owner(ctx);
        conn.series = series_key(&conn.owner, &conn.tuple, ROLE_SERVER);
        conn.start_ns = start;
        conn.established_ns = 0;
        conn.handshake_us = 0;
        conn.srtt_us = 0;
        conn.role = ROLE_SERVER;
        conn._pad = [0; 3];
        // Segments the child sent before it was tracked (none, usually) are not its series'.
        conn.segs_out = field!(ctx, segs_out);
        conn._pad2 = 0;
        track(ctx, conn)
    }

    #[inline(never)]
    fn on_connect(ctx: &SockOpsContext) -> Result<(), i64> {
        let t = tuple(ctx);
        let owner = current_owner();
        let conn = Conn {
            series: series_key(&owner, &t, ROLE_CLIENT),
            tuple: t,
            owner,
            start_ns: now(),
            established_ns: 0,
            handshake_us: 0,
            srtt_us: 0,
            role: ROLE_CLIENT,
            _pad: [0; 3],
            // Before the SYN: a socket that connects again after a failure keeps its count.
            segs_out: field!(ctx, segs_out),
            _pad2: 0,
        };
        track(ctx, &conn)
    }

    #[inline(always)]
    fn track(ctx: &SockOpsContext, conn: &Conn) -> Result<(), i64> {
        if NET_CONNS.insert(cookie(ctx), conn, 0).is_err() {
            bump(counter::CONNS_INSERT_FAILED);
            return Ok(());
        }
        bump(counter::CONNS_TRACKED);
        let rtt_on = unsafe { core::ptr::read_volatile(&NET_RTT_ON) } != 0;
        let flags = BPF_SOCK_OPS_STATE_CB_FLAG
            | BPF_SOCK_OPS_RETRANS_CB_FLAG
            | if rtt_on { BPF_SOCK_OPS_RTT_CB_FLAG } else { 0 };
        let current = field!(ctx, bpf_sock_ops_cb_flags);
        if ctx.set_cb_flags((current | flags) as i32).is_err() {
            bump(counter::CB_FLAGS_FAILED);
        }
        Ok(())
    }

    #[inline(never)]
    fn on_established(ctx: &SockOpsContext) -> Result<(), i64> {
        let t_now = now();
        let c = cookie(ctx);
        let Some(conn) = NET_CONNS.get_ptr_mut(c) else {
            bump(counter::CONN_MISSING);
            return Ok(());
        };
        let conn = unsafe { &mut *conn };
        conn.established_ns = t_now;
        if conn.start_ns != 0 {
            conn.handshake_us = (t_now - conn.start_ns) / 1000;
            if let Some(s) = series(&conn.series, &conn.owner) {
                s.handshake.add(conn.handshake_us);
            }
        }
        emit(EVENT_OPEN, c, conn, 0, 0, 0, 0, 0);
        Ok(())
    }

    #[inline(never)]
    /// Called at every RTT measurement (each ACK of new data): the hot path. The gate lets a
    /// connection through at most once per sample interval; the other calls cost four context
    /// loads, a multiply, an inlined array access and a coarse clock read — no helper call, no
    /// hash lookup. Connections that share a gate slot share its budget (one may skip a sample
    /// in that interval); a race between two CPUs can let one extra sample through.
    fn on_rtt(ctx: &SockOpsContext) -> Result<(), i64> {
        let h = field!(ctx, local_port)
            ^ field!(ctx, remote_port)
            ^ field!(ctx, remote_ip4)
            ^ field!(ctx, remote_ip6[3]);
        let slot = h.wrapping_mul(0x9E37_79B1) >> (32 - RTT_GATE_BITS);
        let Some(gate) = NET_RTT_GATE.get_ptr_mut(slot) else {
            return Ok(());
        };
        let gate = unsafe { &mut *gate };
        let period = unsafe { core::ptr::read_volatile(&NET_RTT_SAMPLE_NS) };
        let t = unsafe { bpf_ktime_get_coarse_ns() };
        if *gate != 0 && t.wrapping_sub(*gate) < period {
            return Ok(());
        }
        *gate = t;
        let Some(conn) = NET_CONNS.get_ptr_mut(cookie(ctx)) else {
            return Ok(());
        };
        let conn = unsafe { &mut *conn };
        let srtt_us = field!(ctx, srtt_us) >> 3;
        let segs_out = field!(ctx, segs_out);
        if let Some(s) = series(&conn.series, &conn.owner) {
            s.rtt.add(srtt_us as u64);
            credit_segs(conn, s, segs_out);
        }
        Ok(())
    }

    #[inline(never)]
    /// A retransmission: args are (seq, segments, tcp_transmit_skb's result). Counted in
    /// segments, as the kernel's `total_retrans` (and `TcpRetransSegs`) count them, whatever
    /// the result; the segments sent so far are credited at the same time, so the ratio of the
    /// two counters is never ahead of its denominator.
    fn on_retrans(ctx: &SockOpsContext) -> Result<(), i64> {
        let segs = field!(ctx, __bindgen_anon_1.args[1]);
        let segs_out = field!(ctx, segs_out);
        let Some(conn) = NET_CONNS.get_ptr_mut(cookie(ctx)) else {
            bump(counter::CONN_MISSING);
            return Ok(());
        };
        let conn = unsafe { &mut *conn };
        if let Some(s) = series(&conn.series, &conn.owner) {
            s.retransmits += segs as u64;
            credit_segs(conn, s, segs_out);
        }
        Ok(())
    }

    #[inline(never)]
    fn on_state(ctx: &SockOpsContext) -> Result<(), i64> {
        let old = field!(ctx, __bindgen_anon_1.args[0]);
        let new = field!(ctx, __bindgen_anon_1.args[1]);
        let srtt_us = field!(ctx, srtt_us) >> 3;
        let sent = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ops).bytes_acked)) };
        let received =
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ops).bytes_received)) };
        let retrans = field!(ctx, total_retrans);
        let segs_out = field!(ctx, segs_out);
        let c = cookie(ctx);
        let Some(conn) = NET_CONNS.get_ptr_mut(c) else {
            bump(counter::CONN_MISSING);
            return Ok(());
        };
        let conn = unsafe { &mut *conn };
        if old == TCP_ESTABLISHED {
            // What `ss -ti` shows while the connection is up, before FIN traffic adds samples.
            conn.srtt_us = srtt_us;
        }
        if new != TCP_CLOSE {
            return Ok(());
        }
        let t_now = now();
        let mut duration_us = 0;
        if let Some(s) = series(&conn.series, &conn.owner) {
            // The last credit: nothing this socket sends from here is its series'.
            credit_segs(conn, s, segs_out);
            if conn.established_ns != 0 {
                duration_us = (t_now - conn.established_ns) / 1000;
                s.duration.add(duration_us);
            }
        }
        // A socket error reported just before this close (ICMP errors report first).
        let mut error = 0i32;
        if let Some(p) = NET_PENDING_ERROR.get_ptr_mut(0) {
            let p = unsafe { &mut *p };
            if p.error != 0 && p.tuple == conn.tuple && t_now - p.time_ns < MATCH_WINDOW_NS {
                error = p.error;
                p.error = 0;
                count_failure(&conn.series, &conn.owner, error);
            }
        }
        emit(
            EVENT_CLOSE,
            c,
            conn,
            duration_us,
            sent,
            received,
            retrans,
            error,
        );
        if error == 0 {
            if let Some(l) = NET_LAST_CLOSED.get_ptr_mut(0) {
                let l = unsafe { &mut *l };
                l.tuple = conn.tuple;
                l.series = conn.series;
                l.owner = conn.owner;
                l.cookie = c;
                l.time_ns = t_now;
                l.role = conn.role;
            }
        }
        let _ = NET_CONNS.remove(c);
        Ok(())
    }

    #[inline(always)]
    fn count_failure(series_key: &SeriesKey, owner: &Owner, error: i32) {
        bump(counter::ERRORS_ATTRIBUTED);
        if let Some(s) = series(series_key, owner) {
            if let Some(f) = s.failures.get_mut(failure::of_errno(error)) {
                *f += 1;
            }
        }
    }

    /// Whether this CPU may send one more event this second.
    #[inline(always)]
    fn within_rate(t_now: u64) -> bool {
        let limit = unsafe { core::ptr::read_volatile(&NET_EVENTS_PER_CPU_SECOND) };
        let Some(w) = NET_RATE.get_ptr_mut(0) else {
            return false;
        };
        let w = unsafe { &mut *w };
        let second = t_now / 1_000_000_000;
        if w.second != second {
            w.second = second;
            w.sent = 0;
        }
        if w.sent >= limit {
            bump(counter::EVENTS_RATE_LIMITED);
            return false;
        }
        w.sent += 1;
        true
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn emit(
        kind: u8,
        cookie: u64,
        conn: &Conn,
        duration_us: u64,
        sent: u64,
        received: u64,
        retrans: u32,
        error: i32,
    ) {
        let t_now = now();
        if !within_rate(t_now) {
            return;
        }
        let Some(mut e) = NET_EVENTS.reserve::<ConnEvent>(0) else {
            bump(counter::EVENTS_RINGBUF_FULL);
            return;
        };
        let ev = unsafe { &mut *e.as_mut_ptr() };
        ev.kind = kind;
        ev.role = conn.role;
        ev.family = conn.tuple.family;
        ev._pad = 0;
        ev.error = error;
        ev.cookie = cookie;
        ev.time_ns = t_now;
        ev.owner = conn.owner;
        ev.tuple = conn.tuple;
        ev.handshake_us = conn.handshake_us;
        ev.duration_us = duration_us;
        ev.bytes_sent = sent;
        ev.bytes_received = received;
        ev.srtt_us = conn.srtt_us;
        ev.retransmits = retrans;
        e.submit(0);
        bump(counter::EVENTS_SENT);
    }

    // `sock:inet_sk_error_report` fields (see its `format` file; stable since 5.15).
    const ERR_OFF_ERROR: usize = 8;
    const ERR_OFF_SPORT: usize = 12;
    const ERR_OFF_DPORT: usize = 14;
    const ERR_OFF_FAMILY: usize = 16;
    const ERR_OFF_PROTOCOL: usize = 18;
    const ERR_OFF_SADDR: usize = 20;
    const ERR_OFF_DADDR: usize = 24;
    const ERR_OFF_SADDR_V6: usize = 28;
    const ERR_OFF_DADDR_V6: usize = 44;

    #[tracepoint(category = "sock", name = "inet_sk_error_report")]
    pub fn network_error_report(ctx: TracePointContext) -> u32 {
        let _ = try_network_error_report(&ctx);
        0
    }

    fn try_network_error_report(ctx: &TracePointContext) -> Result<(), i64> {
        let protocol: u16 = unsafe { ctx.read_at(ERR_OFF_PROTOCOL)? };
        if protocol != IPPROTO_TCP {
            return Ok(());
        }
        let error: i32 = unsafe { ctx.read_at(ERR_OFF_ERROR)? };
        let family: u16 = unsafe { ctx.read_at(ERR_OFF_FAMILY)? };
        let family = family as u8;
        let mut t = Tuple {
            local_port: unsafe { ctx.read_at::<u16>(ERR_OFF_SPORT)? },
            peer_port: unsafe { ctx.read_at::<u16>(ERR_OFF_DPORT)? },
            family,
            ..Tuple::default()
        };
        if family == AF_INET {
            t.local[..4].copy_from_slice(&unsafe { ctx.read_at::<[u8; 4]>(ERR_OFF_SADDR)? });
            t.peer[..4].copy_from_slice(&unsafe { ctx.read_at::<[u8; 4]>(ERR_OFF_DADDR)? });
        } else if family == AF_INET6 {
            t.local = unsafe { ctx.read_at(ERR_OFF_SADDR_V6)? };
            t.peer = unsafe { ctx.read_at(ERR_OFF_DADDR_V6)? };
        } else {
            return Ok(());
        }
        // As the sock_ops side records it: IPv4 on an IPv6 socket is IPv4.
        t.unmap_v4();
        let t_now = now();
        // The usual order: the state went to CLOSE on this CPU, then the error is reported.
        if let Some(l) = NET_LAST_CLOSED.get_ptr_mut(0) {
            let l = unsafe { &mut *l };
            if l.time_ns != 0 && l.tuple == t && t_now - l.time_ns < MATCH_WINDOW_NS {
                l.time_ns = 0;
                count_failure(&l.series, &l.owner, error);
                let conn = Conn {
                    series: l.series,
                    tuple: l.tuple,
                    owner: l.owner,
                    start_ns: 0,
                    established_ns: 0,
                    handshake_us: 0,
                    srtt_us: 0,
                    role: l.role,
                    _pad: [0; 3],
                    segs_out: 0,
                    _pad2: 0,
                };
                emit(EVENT_FAILURE, l.cookie, &conn, 0, 0, 0, 0, error);
                return Ok(());
            }
        }
        // Otherwise the close may follow (ICMP errors), or the socket is not ours.
        if let Some(p) = NET_PENDING_ERROR.get_ptr_mut(0) {
            let p = unsafe { &mut *p };
            p.tuple = t;
            p.time_ns = t_now;
            p.error = error;
            bump(counter::ERRORS_PENDING);
        }
        Ok(())
    }
}
