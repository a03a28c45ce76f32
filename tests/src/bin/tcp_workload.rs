//! A TCP workload with known handshakes, bytes and failures, for the network probe's tests and
//! benchmark. Every line it prints is machine-readable and flushed at once.
//!
//! - `tcp-workload server ADDR:PORT [--reset] [--reuseport]`: listens (IPv4 or IPv6, e.g.
//!   `[fd00::2]:8080`; `[::]:PORT` is dual-stack: `IPV6_V6ONLY` off, IPv4 clients arrive as
//!   `::ffff:a.b.c.d`), prints `listening <pid>`, then `accepted <peer>` for each connection, and
//!   echoes every byte of it (one thread each) until EOF. With `--reset` it reads the first
//!   request, then closes with `SO_LINGER {on, 0}` so the peer gets an RST. With `--reuseport`
//!   the socket sets `SO_REUSEPORT`, so several servers can listen on one port (the kernel
//!   spreads connections between them).
//! - `tcp-workload connect ADDR:PORT --count N [--rounds R] [--size B] [--hold] [--hold-ms M]
//!   [--also ADDR2:PORT]`: prints `pid <pid>`, then makes N sequential connections (with
//!   `--also`, every second one to ADDR2); for each one
//!   `connect <i> <seconds> <local_port>`, R request/response rounds of B bytes,
//!   `bytes <i> sent=<n> received=<n>`, with `--hold` `holding <local_port>` and a wait for one
//!   line on stdin, with `--hold-ms` a sleep, then the close. A failed connect or round prints
//!   `error <i> <io::ErrorKind> <errno>` and the next connection follows (exit code 0).
//! - `tcp-workload rr ADDR:PORT --seconds S --size B --conns C`: C threads, one connection each
//!   to a `server`, ping-pong B bytes as fast as they can for S seconds; prints
//!   `rr <round trips> <round trips per second>`.

use std::{
    io::{self, BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

const USAGE: &str = "usage:
  tcp-workload server ADDR:PORT [--reset] [--reuseport]
  tcp-workload connect ADDR:PORT --count N [--rounds R] [--size B] [--hold] [--hold-ms M] [--also ADDR2:PORT]
  tcp-workload rr ADDR:PORT --seconds S --size B --conns C";

/// Prints one line and flushes it (the tests read these lines while the workload runs).
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

/// The command line after the subcommand and its address: `--flag [value]` pairs.
struct Flags(Vec<String>);

impl Flags {
    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    /// The value after `name`, parsed; `default` when absent; usage error when malformed.
    fn value<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> T {
        match self.0.iter().position(|a| a == name) {
            Some(i) => self
                .0
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage()),
            None => default.unwrap_or_else(|| usage()),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cmd), Some(addr)) = (
        args.get(1),
        args.get(2).and_then(|a| a.parse::<SocketAddr>().ok()),
    ) else {
        usage()
    };
    let flags = Flags(args[3..].to_vec());
    match cmd.as_str() {
        "server" => server(addr, flags.has("--reset"), flags.has("--reuseport")),
        "connect" => connect(
            addr,
            flags.0.iter().position(|a| a == "--also").map(|i| {
                flags
                    .0
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }),
            flags.value("--count", None),
            flags.value("--rounds", Some(0)),
            flags.value("--size", Some(0)),
            flags.has("--hold"),
            flags.value("--hold-ms", Some(0)),
        ),
        "rr" => rr(
            addr,
            flags.value("--seconds", None),
            flags.value("--size", None),
            flags.value("--conns", None),
        ),
        _ => usage(),
    }
}

/// Sets an int socket option; exits with the error when the kernel refuses it.
fn set_int_opt(fd: i32, level: i32, name: i32, value: i32, what: &str) {
    // SAFETY: setsockopt on a socket we own, with a valid int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!("{what}: {}", io::Error::last_os_error());
        std::process::exit(1);
    }
}

/// A listening socket on `addr`: `SO_REUSEADDR`, `SO_REUSEPORT` when asked, and for IPv6
/// `IPV6_V6ONLY` off (dual-stack, whatever `net.ipv6.bindv6only` says).
fn listen(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: socket(2); the fd is owned by the TcpListener built from it below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR");
    if reuseport {
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT");
    }
    // SAFETY: the sockaddr structs are fully initialized and live across the call.
    let rc = unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                libc::bind(
                    fd,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(a) => {
                set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0, "IPV6_V6ONLY");
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                libc::bind(
                    fd,
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our bound socket.
    if unsafe { libc::listen(fd, 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

fn server(addr: SocketAddr, reset: bool, reuseport: bool) {
    let listener = listen(addr, reuseport).unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1);
    });
    say!("listening {}", std::process::id());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if let Ok(peer) = conn.peer_addr() {
            say!("accepted {peer}");
        }
        thread::spawn(move || {
            if reset {
                reset_after_first_request(conn)
            } else {
                echo(conn)
            }
        });
    }
}

/// Echoes every byte back until EOF (or an error), then closes.
fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads the first request, then closes with a zero linger: the kernel sends an RST.
fn reset_after_first_request(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = conn.read(&mut buf);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid linger struct and its size.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!("SO_LINGER: {}", io::Error::last_os_error());
    }
    drop(conn);
}

fn error_line(i: u64, e: &io::Error) {
    say!("error {i} {:?} {}", e.kind(), e.raw_os_error().unwrap_or(0));
}

fn connect(
    addr: SocketAddr,
    also: Option<SocketAddr>,
    count: u64,
    rounds: u64,
    size: usize,
    hold: bool,
    hold_ms: u64,
) {
    say!("pid {}", std::process::id());
    let request = vec![0x5au8; size];
    let mut reply = vec![0u8; size];
    let stdin = io::stdin();
    for i in 0..count {
        let to = match also {
            Some(other) if i % 2 == 1 => other,
            _ => addr,
        };
        let start = Instant::now();
        let conn = TcpStream::connect(to);
        let took = start.elapsed().as_secs_f64();
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                error_line(i, &e);
                continue;
            }
        };
        let port = conn.local_addr().map(|a| a.port()).unwrap_or(0);
        say!("connect {i} {took:.6} {port}");
        let (mut sent, mut received) = (0usize, 0usize);
        let mut failed = None;
        for _ in 0..rounds {
            if let Err(e) = conn.write_all(&request) {
                failed = Some(e);
                break;
            }
            sent += size;
            match read_full(&mut conn, &mut reply) {
                Ok(n) if n == size => received += n,
                Ok(n) => {
                    received += n;
                    failed = Some(io::Error::from(io::ErrorKind::UnexpectedEof));
                    break;
                }
                Err((n, e)) => {
                    received += n;
                    failed = Some(e);
                    break;
                }
            }
        }
        say!("bytes {i} sent={sent} received={received}");
        if let Some(e) = failed {
            error_line(i, &e);
            continue;
        }
        if hold {
            say!("holding {port}");
            let mut line = String::new();
            let _ = stdin.lock().read_line(&mut line);
        }
        if hold_ms > 0 {
            thread::sleep(Duration::from_millis(hold_ms));
        }
        drop(conn);
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read, with them on error too.
fn read_full(conn: &mut TcpStream, buf: &mut [u8]) -> Result<usize, (usize, io::Error)> {
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((got, e)),
        }
    }
    Ok(got)
}

fn rr(addr: SocketAddr, seconds: f64, size: usize, conns: usize) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            thread::spawn(move || -> io::Result<u64> {
                let mut conn = TcpStream::connect(addr)?;
                conn.set_nodelay(true)?;
                let request = vec![0x5au8; size];
                let mut reply = vec![0u8; size];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    conn.write_all(&request)?;
                    conn.read_exact(&mut reply)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        match t.join().expect("client thread") {
            Ok(n) => total += n,
            Err(e) => {
                eprintln!("rr client: {e}");
                std::process::exit(1);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    say!("rr {total} {:.1} {:.6}", total as f64 / secs, cpu_seconds());
}

/// User + system CPU time this process has used (all threads), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: `usage` is a valid out-pointer for getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(usage.ru_utime) + t(usage.ru_stime)
}
