//! Network namespace fixture for the network probe's tests: two namespaces joined by a veth
//! pair (IPv4 and IPv6), commands run inside them (`ip netns exec`), iptables rules and their
//! counters, sysctls, `ss` readings, and processes started in a namespace.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::Duration,
};

/// Two namespaces, `agt-<tag>-c` (client) and `agt-<tag>-s` (server), joined by a veth pair
/// (`veth0` on each side): 10.231.<n>.1/24 and fd00:231:<n>::1/64 on the client side, `.2` and
/// `::2` on the server side, `lo` up in both. Dropping it deletes both namespaces (and so the
/// veth pair).
pub struct NetPair {
    pub client: String,
    pub server: String,
    /// The third IPv4 octet and the IPv6 /64 number, derived from the tag.
    pub n: u8,
}

impl NetPair {
    pub fn new(tag: &str) -> NetPair {
        // FNV-1a over the tag: different tests get different subnets (they are isolated in
        // their own namespaces anyway; distinct subnets keep the agent's series apart).
        let hash = tag.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        let pair = NetPair {
            client: format!("agt-{tag}-c"),
            server: format!("agt-{tag}-s"),
            n: (hash % 254 + 1) as u8,
        };
        // Left over from a run that was killed before its Drop ran.
        for ns in [&pair.client, &pair.server] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        ip(&["netns", "add", &pair.client]);
        ip(&["netns", "add", &pair.server]);
        ip(&[
            "link",
            "add",
            "veth0",
            "netns",
            &pair.client,
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &pair.server,
        ]);
        // Links up before the addresses: an IPv6 address added to a down link is not ready when
        // the link comes up (measured here: the first neighbor solicitation goes unanswered and
        // the first IPv6 connect waits for the 1 s SYN retransmission).
        for ns in [&pair.client, &pair.server] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", "veth0", "up"]);
        }
        for (ns, host) in [(&pair.client, 1), (&pair.server, 2)] {
            let v4 = format!("{}/24", pair.host_ip(false, host));
            let v6 = format!("{}/64", pair.host_ip(true, host));
            ip(&["-n", ns, "addr", "add", &v4, "dev", "veth0"]);
            // nodad: the IPv6 address is usable at once instead of after duplicate detection.
            ip(&["-n", ns, "addr", "add", &v6, "dev", "veth0", "nodad"]);
        }
        pair
    }

    /// The client side's address.
    pub fn client_ip(&self, v6: bool) -> IpAddr {
        self.host_ip(v6, 1)
    }

    /// The server side's address.
    pub fn server_ip(&self, v6: bool) -> IpAddr {
        self.host_ip(v6, 2)
    }

    /// `server_ip(v6):port`.
    pub fn server_addr(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_ip(v6), port)
    }

    fn host_ip(&self, v6: bool, host: u8) -> IpAddr {
        let n = self.n;
        if v6 {
            // The text `fd00:231:<n>::<host>` as given to `ip` (so <n> reads as hex digits).
            IpAddr::V6(format!("fd00:231:{n}::{host}").parse().unwrap())
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 231, n, host))
        }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec NS ARGS...`: a command that runs inside the namespace (`ip` execs it, so its
/// pid is the command's own).
pub fn exec<S: AsRef<std::ffi::OsStr>>(ns: &str, args: &[S]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// `iptables RULE_ARGS` (`ip6tables` for `v6`) in the namespace, e.g.
/// `["-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP"]`; panics when it fails.
pub fn iptables(ns: &str, v6: bool, rule_args: &[&str]) {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    run(exec(ns, &[tool]).args(rule_args));
}

/// Packets the DROP rules of the INPUT chain have dropped (summed over every DROP rule; the
/// tests add one), from `iptables -L INPUT -v -x -n`.
pub fn drop_rule_packets(ns: &str, v6: bool) -> u64 {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let text = run(&mut exec(ns, &[tool, "-L", "INPUT", "-v", "-x", "-n"]));
    parse_drop_packets(&text).unwrap_or_else(|| panic!("no DROP rule in INPUT:\n{text}"))
}

/// Sums the `pkts` column of the DROP rows of an `iptables -L CHAIN -v -x -n` listing.
fn parse_drop_packets(listing: &str) -> Option<u64> {
    let counts: Vec<u64> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"DROP")).then(|| f[0].parse().expect("pkts column"))
        })
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Sets a sysctl inside the namespace (`net.*` keys are per namespace), e.g.
/// `sysctl(ns, "net.ipv4.tcp_syn_retries", "1")`.
pub fn sysctl(ns: &str, key: &str, value: &str) {
    run(&mut exec(ns, &["sysctl", "-w", &format!("{key}={value}")]));
}

/// The namespace's own SNMP counter `name` (e.g. `TcpRetransSegs`), absolute, from
/// `nstat -asz` (absolute values, no history file written).
pub fn nstat(ns: &str, name: &str) -> u64 {
    let text = run(&mut exec(ns, &["nstat", "-asz", name]));
    parse_nstat(&text, name).unwrap_or_else(|| panic!("no {name} in nstat output:\n{text}"))
}

fn parse_nstat(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
    })
}

/// The kernel's smoothed RTT in µs of the established TCP connection with this local port in
/// the namespace, from `ss -tinH state established sport = :PORT`; None when there is no such
/// connection. ss prints `rtt:<tcpi_rtt / 1000 with %g>/<rttvar>`: six significant digits, so
/// round(ms × 1000) is tcpi_rtt (srtt_us >> 3) exactly, for any RTT below 1000 s.
pub fn ss_rtt_us(ns: &str, local_port: u16) -> Option<u64> {
    let filter = format!("sport = :{local_port}");
    let text = run(&mut exec(
        ns,
        &["ss", "-tinH", "state", "established", filter.as_str()],
    ));
    parse_ss_rtt_us(&text)
}

/// The first `rtt:<ms>/<var>` field of `ss -ti` output, in µs.
fn parse_ss_rtt_us(text: &str) -> Option<u64> {
    text.split_whitespace()
        .filter_map(|f| f.strip_prefix("rtt:"))
        .filter_map(|v| v.split('/').next()?.parse::<f64>().ok())
        .map(|ms| (ms * 1000.0).round() as u64)
        .next()
}

/// A process started in a namespace that prints machine-readable lines: its first line ends
/// with its pid (`pid <pid>`, `listening <pid>`). Killed on drop.
pub struct NsProcess {
    pub child: Child,
    pub pid: u32,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every line read so far (for failure messages).
    pub seen: Vec<String>,
}

/// How long to wait for one line before declaring the process stuck: a bound for slow machines,
/// not a timing assertion.
const LINE_WAIT: Duration = Duration::from_secs(60);

impl NsProcess {
    pub fn start(ns: &str, program: &Path, args: &[&str]) -> NsProcess {
        let child = exec(ns, &[program.as_os_str()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} in {ns}: {e}", program.display()));
        Self::wrap(child, ns, program, args)
    }

    /// `start`, on process id `pid` (`/proc/sys/kernel/ns_last_pid` set to `pid - 1` just
    /// before the fork): retried while other processes on the host take the pid first; panics
    /// after 200 tries. `pid` must be free.
    pub fn start_on_pid(ns: &str, program: &Path, args: &[&str], pid: u32) -> NsProcess {
        for _ in 0..200 {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} is taken"
            );
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                .expect("write /proc/sys/kernel/ns_last_pid (root in the initial pid namespace)");
            let mut child = exec(ns, &[program.as_os_str()])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("start {} in {ns}: {e}", program.display()));
            if child.id() == pid {
                return Self::wrap(child, ns, program, args);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start {} on pid {pid}", program.display());
    }

    fn wrap(mut child: Child, ns: &str, program: &Path, args: &[&str]) -> NsProcess {
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = NsProcess {
            child,
            pid: 0,
            stdin,
            lines,
            seen: Vec::new(),
        };
        let first = p
            .next_line()
            .unwrap_or_else(|| panic!("{} {args:?} in {ns} printed nothing", program.display()));
        p.pid = first
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("first line has no pid: {first:?}"));
        p
    }

    /// The next line, or None once the process closed its stdout.
    pub fn next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(LINE_WAIT) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "pid {}: no line for {LINE_WAIT:?}; so far: {:?}",
                self.pid, self.seen
            ),
        }
    }

    /// The lines printed so far that were not read yet, without waiting.
    pub fn ready_lines(&mut self) -> Vec<String> {
        let lines: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(lines.iter().cloned());
        lines
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str) -> String {
        loop {
            match self.next_line() {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => {}
                None => panic!(
                    "pid {} ended without a {prefix:?} line: {:?}",
                    self.pid, self.seen
                ),
            }
        }
    }

    /// Sends one line on its stdin (releases a `--hold`).
    pub fn release(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin).expect("write to the workload's stdin");
    }

    /// Closes its stdin, reads every remaining line, waits for it and checks it succeeded;
    /// returns every line it printed (the first included).
    pub fn finish(mut self) -> Vec<String> {
        self.stdin = None;
        while self.next_line().is_some() {}
        let status = self.child.wait().expect("wait for the workload");
        assert!(status.success(), "workload {status}: {:?}", self.seen);
        std::mem::take(&mut self.seen)
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_packets_from_an_iptables_listing() {
        let listing = "Chain INPUT (policy ACCEPT 0 packets, 0 bytes)
    pkts      bytes target     prot opt in     out     source               destination
       6      360 DROP       6    --  *      *       0.0.0.0/0            0.0.0.0/0            tcp dpt:8080 flags:0x17/0x02 statistic mode nth every 3
";
        assert_eq!(parse_drop_packets(listing), Some(6));
        assert_eq!(
            parse_drop_packets("Chain INPUT (policy ACCEPT 0 packets, 0 bytes)\n"),
            None
        );
    }

    #[test]
    fn counter_from_nstat() {
        let text = "#kernel\nTcpRetransSegs                  6                  0.0\n";
        assert_eq!(parse_nstat(text, "TcpRetransSegs"), Some(6));
        assert_eq!(parse_nstat(text, "TcpExtTCPSynRetrans"), None);
    }

    #[test]
    fn rtt_from_ss_info() {
        let text = "0      0      10.231.99.1:34204 10.231.99.2:8080
\t bbr wscale:10,10 rto:204 rtt:0.01/0.003 ato:40 mss:1448 bbr:(bw:1448000000bps,mrtt:0.008,pacing_gain:2.88672) minrtt:0.008 snd_wnd:70656
";
        assert_eq!(parse_ss_rtt_us(text), Some(10));
        assert_eq!(parse_ss_rtt_us("rtt:1.234/0.5"), Some(1234));
        assert_eq!(parse_ss_rtt_us("rtt:0.057/0.02"), Some(57));
        assert_eq!(parse_ss_rtt_us(""), None);
    }
}
