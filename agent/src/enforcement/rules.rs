//! Rules as the engine runs them: each `RuleConfig` checked (every problem with its field path,
//! what is wrong and what is allowed) and compiled into a [`Rule`] — the condition with its
//! `for` in time, the scope, the action with parsed arguments, the effective mode, and the
//! defaults for cooldown, rate cap and TTL.

use std::{net::IpAddr, sync::Arc, time::Duration};

use humantime_serde::re::humantime::format_duration;

use super::{
    config::{ActionConfig, EnforcementConfig, HoldFor, Mode, RateConfig, RuleConfig},
    scope::Scope,
};
use crate::signals::Signal;

/// A field that cannot run: `path` is dotted with indices (`enforcement.rules[0].when.above`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}\nfix: {fix}")]
pub struct RuleError {
    pub path: String,
    pub problem: String,
    pub fix: String,
}

fn err(path: String, problem: impl Into<String>, fix: impl Into<String>) -> RuleError {
    RuleError {
        path,
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Threshold direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Above(f64),
    Below(f64),
}

impl Threshold {
    pub fn holds(self, v: f64) -> bool {
        match self {
            Threshold::Above(t) => v > t,
            Threshold::Below(t) => v < t,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// A signal beyond a threshold for `hold` (time covered by consecutive observations).
    Threshold {
        signal: Signal,
        syscall: Option<u32>,
        threshold: Threshold,
        hold: Duration,
    },
    /// An anomaly reported on `signal` with at least `min_score`.
    Anomaly {
        signal: Signal,
        syscall: Option<u32>,
        min_score: f64,
    },
}

impl Condition {
    pub fn signal(&self) -> Signal {
        match self {
            Condition::Threshold { signal, .. } | Condition::Anomaly { signal, .. } => *signal,
        }
    }

    pub fn syscall(&self) -> Option<u32> {
        match self {
            Condition::Threshold { syscall, .. } | Condition::Anomaly { syscall, .. } => *syscall,
        }
    }
}

/// Signals the `signal` action sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sig {
    Stop,
    Cont,
    Term,
    Kill,
}

impl Sig {
    pub fn parse(s: &str) -> Option<Sig> {
        let u = s.trim().to_ascii_uppercase();
        let u = u.strip_prefix("SIG").unwrap_or(&u);
        Some(match u {
            "STOP" | "19" => Sig::Stop,
            "CONT" | "18" => Sig::Cont,
            "TERM" | "15" => Sig::Term,
            "KILL" | "9" => Sig::Kill,
            _ => return None,
        })
    }

    pub fn number(self) -> i32 {
        match self {
            Sig::Stop => libc::SIGSTOP,
            Sig::Cont => libc::SIGCONT,
            Sig::Term => libc::SIGTERM,
            Sig::Kill => libc::SIGKILL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sig::Stop => "SIGSTOP",
            Sig::Cont => "SIGCONT",
            Sig::Term => "SIGTERM",
            Sig::Kill => "SIGKILL",
        }
    }
}

/// One direction of a rate limit, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub bytes_per_second: u64,
    pub packets_per_second: u64,
    /// Bucket depth in bytes (default applied).
    pub burst_bytes: u64,
}

impl Rate {
    /// The smallest default depth: one 64 KiB GSO packet plus one MTU-sized one.
    pub const MIN_BURST: u64 = 65_536 + 1_500;
    /// The default depth in time: 100 ms at the rate. On egress the program drops only past
    /// twice the depth (200 ms ahead); a TCP sender whose packet is dropped locally waits for
    /// its probe timer (at least `TCP_RTO_MIN`, 200 ms) before sending again, so a smaller
    /// depth loses that wait and the flow runs at about half the rate (measured: 0.46 x with
    /// 20 ms at 2 MB/s over loopback).
    pub const DEFAULT_BURST_DIVISOR: u64 = 10;

    fn from_config(c: &RateConfig) -> Rate {
        let burst = if c.burst_bytes > 0 {
            c.burst_bytes
        } else {
            (c.bytes_per_second / Self::DEFAULT_BURST_DIVISOR).max(Self::MIN_BURST)
        };
        Rate {
            bytes_per_second: c.bytes_per_second,
            packets_per_second: c.packets_per_second,
            burst_bytes: burst,
        }
    }

    /// The bucket depth in time (ns): how far the virtual clock may run ahead of now.
    pub fn burst_ns(&self) -> u64 {
        if self.bytes_per_second > 0 {
            (self.burst_bytes as u128 * 1_000_000_000 / self.bytes_per_second as u128) as u64
        } else {
            // Packets only: the same depth in packets, at least 2.
            let pkts = (self.burst_bytes / 1_500).max(2);
            (pkts as u128 * 1_000_000_000 / self.packets_per_second.max(1) as u128) as u64
        }
    }
}

/// An address prefix (IPv4 or IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn parse(s: &str) -> Option<Prefix> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = l.unwrap_or(max);
        (len <= max).then_some(Prefix { addr, len })
    }

    /// 16 bytes (IPv4 mapped) and the prefix length over those 128 bits.
    pub fn mapped(&self) -> ([u8; 16], u32) {
        match self.addr {
            IpAddr::V4(v4) => (
                agent_common::block::mapped_v4(v4.octets()),
                96 + u32::from(self.len),
            ),
            IpAddr::V6(v6) => (v6.octets(), u32::from(self.len)),
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.len == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `in_kernel`: the syscall at which the kernel sends it (`bpf_send_signal`).
    Signal {
        sig: Sig,
        in_kernel: Option<u32>,
    },
    Freeze,
    Thaw,
    Kill,
    CpuLimit {
        cpus: f64,
    },
    RateLimit {
        egress: Option<Rate>,
        ingress: Option<Rate>,
    },
    Block {
        peers: Vec<Prefix>,
        ports: Vec<u16>,
    },
    RestartContainer,
    Alert {
        webhook: Option<String>,
    },
    Degrade {
        profiler_frequency: Option<u32>,
        top_processes: Option<usize>,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Signal { .. } => "signal",
            Action::Freeze => "freeze",
            Action::Thaw => "thaw",
            Action::Kill => "kill",
            Action::CpuLimit { .. } => "cpu_limit",
            Action::RateLimit { .. } => "rate_limit",
            Action::Block { .. } => "block",
            Action::RestartContainer => "restart_container",
            Action::Alert { .. } => "alert",
            Action::Degrade { .. } => "degrade",
        }
    }

    /// Whether it limits something that is undone at TTL (and journaled before it acts).
    pub fn limits(&self) -> bool {
        matches!(
            self,
            Action::Signal { sig: Sig::Stop, .. }
                | Action::Freeze
                | Action::CpuLimit { .. }
                | Action::RateLimit { .. }
                | Action::Block { .. }
                | Action::Degrade { .. }
        )
    }

    /// Whether it acts on a cgroup (needs a cgroup, container or pod scope).
    pub fn on_cgroup(&self) -> bool {
        matches!(
            self,
            Action::Freeze
                | Action::Thaw
                | Action::Kill
                | Action::CpuLimit { .. }
                | Action::RateLimit { .. }
                | Action::Block { .. }
                | Action::RestartContainer
        )
    }

    /// Whether it acts on the process or cgroup matched (alert and degrade do not touch it).
    pub fn touches_target(&self) -> bool {
        !matches!(self, Action::Alert { .. } | Action::Degrade { .. })
    }

    /// A short description: `signal SIGSTOP`, `rate_limit egress 1000000 B/s`, ...
    pub fn describe(&self) -> String {
        match self {
            Action::Signal { sig, in_kernel } => match in_kernel {
                Some(nr) => format!(
                    "signal {} at {}",
                    sig.name(),
                    crate::probes::syscalls::names::syscall_name(*nr)
                ),
                None => format!("signal {}", sig.name()),
            },
            Action::CpuLimit { cpus } => format!("cpu_limit {cpus} CPUs"),
            Action::RateLimit { egress, ingress } => {
                let mut s = "rate_limit".to_string();
                for (d, r) in [("egress", egress), ("ingress", ingress)] {
                    if let Some(r) = r {
                        s.push_str(&format!(" {d}"));
                        if r.bytes_per_second > 0 {
                            s.push_str(&format!(" {} B/s", r.bytes_per_second));
                        }
                        if r.packets_per_second > 0 {
                            s.push_str(&format!(" {} packets/s", r.packets_per_second));
                        }
                    }
                }
                s
            }
            Action::Block { peers, ports } => {
                let p: Vec<String> = peers.iter().map(Prefix::to_string).collect();
                let mut s = format!("block {}", p.join(","));
                if !ports.is_empty() {
                    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                    s.push_str(&format!(" ports {}", ports.join(",")));
                }
                s
            }
            Action::Degrade {
                profiler_frequency,
                top_processes,
            } => {
                let mut s = "degrade".to_string();
                if let Some(f) = profiler_frequency {
                    s.push_str(&format!(" profiler_frequency {f}"));
                }
                if let Some(t) = top_processes {
                    s.push_str(&format!(" top_processes {t}"));
                }
                s
            }
            other => other.kind().to_string(),
        }
    }
}

/// A rule ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: Arc<str>,
    pub condition: Condition,
    pub scope: Scope,
    pub action: Action,
    pub cooldown: Duration,
    pub max_per_minute: u32,
    /// Set for limiting actions: when they are undone.
    pub ttl: Option<Duration>,
    /// Effective mode: the lower of the global mode and the rule's own.
    pub mode: Mode,
    pub persist: bool,
}

/// The TTL of a limiting action when the rule gives none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The cooldown of a non-limiting action when the rule gives none (limiting: its TTL).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_PER_MINUTE: u32 = 10;
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A syscall by name (`getppid`) or number.
pub fn syscall_number(s: &str) -> Option<u32> {
    use agent_common::syscalls::MAX_SYSCALL_NR;
    if let Ok(n) = s.parse::<u32>() {
        return (n < MAX_SYSCALL_NR).then_some(n);
    }
    (0..MAX_SYSCALL_NR).find(|nr| crate::probes::syscalls::names::syscall_name(*nr) == s)
}

/// What `enforcement.rules[i]` accepts, for the fix line.
pub const RULE_FIELDS: &str =
    "name, when, scope, action, cooldown, max_actions_per_minute, ttl, mode, persist";

/// Checks and compiles every rule; `syscall_interval` turns `for: N` intervals into time.
pub fn compile(c: &EnforcementConfig, syscall_interval: Duration) -> Result<Vec<Rule>, RuleError> {
    let mut out: Vec<Rule> = Vec::with_capacity(c.rules.len());
    for (i, r) in c.rules.iter().enumerate() {
        let rule = compile_one(
            r,
            &format!("enforcement.rules[{i}]"),
            c.mode,
            syscall_interval,
        )?;
        if out.iter().any(|o| o.name == rule.name) {
            return Err(err(
                format!("enforcement.rules[{i}].name"),
                format!("{:?} names two rules", r.name),
                "give every rule its own name (decisions and counters are keyed by it)",
            ));
        }
        out.push(rule);
    }
    Ok(out)
}

fn signal_of(name: &str, path: String) -> Result<Signal, RuleError> {
    Signal::parse(name).ok_or_else(|| {
        err(
            path,
            format!("{name:?} is not a signal the agent derives"),
            format!("use one of {}", Signal::all_names()),
        )
    })
}

fn compile_one(
    r: &RuleConfig,
    at: &str,
    global: Mode,
    syscall_interval: Duration,
) -> Result<Rule, RuleError> {
    let p = |f: &str| format!("{at}.{f}");
    if r.name.trim().is_empty() {
        return Err(err(
            p("name"),
            "is empty",
            "give the rule a name, e.g. stop-storm",
        ));
    }
    let w = &r.when;
    let syscall = match &w.syscall {
        None => None,
        Some(s) => Some(syscall_number(s).ok_or_else(|| {
            err(
                p("when.syscall"),
                format!("{s:?} is not an x86_64 syscall name or number"),
                "use a syscall name such as write or getppid, or its number",
            )
        })?),
    };
    let condition = match (&w.signal, &w.anomaly) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(err(
                p("when"),
                "needs exactly one of signal (a threshold) or anomaly",
                "use {signal: NAME, above: N, for: 2} or {anomaly: NAME}",
            ))
        }
        (Some(name), None) => {
            let signal = signal_of(name, p("when.signal"))?;
            let threshold = match (w.above, w.below) {
                (Some(a), None) => Threshold::Above(a.0),
                (None, Some(b)) => Threshold::Below(b.0),
                _ => {
                    return Err(err(
                        p("when"),
                        "a threshold needs exactly one of above or below",
                        format!("e.g. {{signal: {name}, above: 1000, for: 2}}"),
                    ))
                }
            };
            let (Threshold::Above(v) | Threshold::Below(v)) = threshold;
            if !v.is_finite() {
                let f = if w.above.is_some() { "above" } else { "below" };
                return Err(err(
                    p(&format!("when.{f}")),
                    "is not a finite number",
                    "use a number in the signal's unit",
                ));
            }
            if w.min_score.is_some() {
                return Err(err(
                    p("when.min_score"),
                    "applies to anomalies only",
                    "remove it, or use {anomaly: NAME, min_score: 0.5}",
                ));
            }
            let hold = match w.hold.unwrap_or(HoldFor::Intervals(1)) {
                HoldFor::Intervals(n) => syscall_interval * n,
                HoldFor::Time(d) => d,
            };
            if hold > Duration::from_secs(24 * 3600) {
                return Err(err(
                    p("when.for"),
                    format!("{} is longer than a day", format_duration(hold)),
                    "use a number of intervals or a duration up to 24h",
                ));
            }
            Condition::Threshold {
                signal,
                syscall,
                threshold,
                hold,
            }
        }
        (None, Some(name)) => {
            let signal = signal_of(name, p("when.anomaly"))?;
            for (f, set) in [
                ("above", w.above.is_some()),
                ("below", w.below.is_some()),
                ("for", w.hold.is_some()),
            ] {
                if set {
                    return Err(err(
                        p(&format!("when.{f}")),
                        "applies to thresholds only (an anomaly is judged by the detector)",
                        "remove it, or use {signal: NAME, above: N, for: 2}",
                    ));
                }
            }
            let min_score = w.min_score.map_or(0.0, |s| s.0);
            if !(0.0..=1.0).contains(&min_score) {
                return Err(err(
                    p("when.min_score"),
                    format!("{min_score} is not between 0 and 1"),
                    "use a score from 0 to 1, e.g. 0.5",
                ));
            }
            Condition::Anomaly {
                signal,
                syscall,
                min_score,
            }
        }
    };
    if syscall.is_some() && !condition.signal().per_syscall() {
        return Err(err(
            p("when.syscall"),
            format!("{} has no per-syscall series", condition.signal()),
            "use syscall only with process.syscall.rate, process.syscall.error_ratio or process.syscall.duration",
        ));
    }
    let scope = Scope::compile(&r.scope)
        .map_err(|(f, problem, fix)| err(p(&format!("scope.{f}")), problem, fix))?;
    let action = compile_action(&r.action, syscall, &p)?;
    if action.on_cgroup() && !scope.names_cgroup() {
        return Err(err(
            p("scope"),
            format!("the {} action acts on a cgroup, and the scope names none", action.kind()),
            "add cgroup, container or pod to the scope (a process scope can take signal, alert or degrade)",
        ));
    }
    if matches!(action, Action::RestartContainer)
        && r.scope.container.is_none()
        && r.scope.pod.is_none()
    {
        return Err(err(
            p("scope"),
            "restart_container needs a container or pod scope",
            "add container: <id> or pod: <uid> to the scope",
        ));
    }
    let ttl = if action.limits() {
        let t = r.ttl.unwrap_or(DEFAULT_TTL);
        if t.is_zero() || t > MAX_TTL {
            return Err(err(
                p("ttl"),
                format!("{} is out of range", format_duration(t)),
                "use a duration from 1s to 7d, e.g. 5m",
            ));
        }
        Some(t)
    } else {
        if r.ttl.is_some() {
            return Err(err(p("ttl"), format!("{} is not undone (it limits nothing)", action.describe()), "remove ttl; it applies to SIGSTOP, freeze, cpu_limit, rate_limit, block and degrade"));
        }
        None
    };
    if r.persist && !matches!(action, Action::RateLimit { .. } | Action::Block { .. }) {
        return Err(err(
            p("persist"),
            format!("{} has no kernel maps to pin", action.kind()),
            "remove persist; it applies to rate_limit and block",
        ));
    }
    let cooldown = r.cooldown.or(ttl).unwrap_or(DEFAULT_COOLDOWN);
    if cooldown > MAX_TTL {
        return Err(err(
            p("cooldown"),
            format!("{} is out of range", format_duration(cooldown)),
            "use a duration up to 7d",
        ));
    }
    let max_per_minute = r.max_actions_per_minute.unwrap_or(DEFAULT_MAX_PER_MINUTE);
    if max_per_minute == 0 || max_per_minute > 10_000 {
        return Err(err(
            p("max_actions_per_minute"),
            format!("{max_per_minute} is out of range"),
            "use a whole number from 1 to 10000, e.g. 10",
        ));
    }
    Ok(Rule {
        name: Arc::from(r.name.trim()),
        condition,
        scope,
        action,
        cooldown,
        max_per_minute,
        ttl,
        mode: r.mode.map_or(global, |m| m.min(global)),
        persist: r.persist,
    })
}

fn check_rate(r: &RateConfig, path: String) -> Result<Rate, RuleError> {
    if r.bytes_per_second == 0 && r.packets_per_second == 0 {
        return Err(err(
            path,
            "limits nothing",
            "set bytes_per_second and/or packets_per_second",
        ));
    }
    if r.bytes_per_second > 0 && r.bytes_per_second < 1_000 {
        return Err(err(
            format!("{path}.bytes_per_second"),
            format!("{} is below 1000", r.bytes_per_second),
            "use at least 1000 bytes per second",
        ));
    }
    Ok(Rate::from_config(r))
}

fn compile_action(
    a: &ActionConfig,
    syscall: Option<u32>,
    p: &dyn Fn(&str) -> String,
) -> Result<Action, RuleError> {
    Ok(match a {
        ActionConfig::Signal { signal } => {
            let sig = Sig::parse(signal).ok_or_else(|| {
                err(
                    p("action.signal"),
                    format!("{signal:?} is not a signal the action sends"),
                    "use SIGSTOP, SIGCONT, SIGTERM or SIGKILL",
                )
            })?;
            Action::Signal {
                sig,
                in_kernel: syscall,
            }
        }
        ActionConfig::Freeze {} => Action::Freeze,
        ActionConfig::Thaw {} => Action::Thaw,
        ActionConfig::Kill {} => Action::Kill,
        ActionConfig::CpuLimit { cpus } => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            if !(cpus.0 >= 0.01 && cpus.0 <= n.max(1.0) * 1024.0) {
                return Err(err(
                    p("action.cpus"),
                    format!("{} is out of range", cpus.0),
                    "use a number of CPUs from 0.01 up, e.g. 0.5",
                ));
            }
            Action::CpuLimit { cpus: cpus.0 }
        }
        ActionConfig::RateLimit { egress, ingress } => {
            if egress.is_none() && ingress.is_none() {
                return Err(err(
                    p("action"),
                    "rate_limit needs egress and/or ingress",
                    "e.g. {type: rate_limit, egress: {bytes_per_second: 1000000}}",
                ));
            }
            Action::RateLimit {
                egress: egress
                    .as_ref()
                    .map(|r| check_rate(r, p("action.egress")))
                    .transpose()?,
                ingress: ingress
                    .as_ref()
                    .map(|r| check_rate(r, p("action.ingress")))
                    .transpose()?,
            }
        }
        ActionConfig::Block { peers, ports } => {
            if peers.is_empty() {
                return Err(err(
                    p("action.peers"),
                    "is empty",
                    "list addresses or prefixes, e.g. [10.0.0.0/8, \"fd00::1\"]",
                ));
            }
            let mut out = Vec::with_capacity(peers.len());
            for (i, s) in peers.iter().enumerate() {
                out.push(Prefix::parse(s).ok_or_else(|| {
                    err(
                        p(&format!("action.peers[{i}]")),
                        format!("{s:?} is not an address or prefix"),
                        "use an IPv4 or IPv6 address, optionally /length, e.g. 10.1.0.0/16",
                    )
                })?);
            }
            if let Some(i) = ports.iter().position(|p| *p == 0) {
                return Err(err(
                    p(&format!("action.ports[{i}]")),
                    "0 is not a port",
                    "list ports 1-65535, or leave ports out for every port",
                ));
            }
            Action::Block {
                peers: out,
                ports: ports.clone(),
            }
        }
        ActionConfig::RestartContainer {} => Action::RestartContainer,
        ActionConfig::Alert { webhook } => {
            if let Some(w) = webhook {
                crate::config::check_url(w)
                    .map_err(|e| err(p("action.webhook"), e, "use an http:// or https:// URL"))?;
                if w.is_empty() {
                    return Err(err(
                        p("action.webhook"),
                        "is empty",
                        "use an http:// or https:// URL, or leave webhook out",
                    ));
                }
            }
            Action::Alert {
                webhook: webhook.clone(),
            }
        }
        ActionConfig::Degrade {
            profiler_frequency,
            top_processes,
        } => {
            if profiler_frequency.is_none() && top_processes.is_none() {
                return Err(err(
                    p("action"),
                    "degrade needs profiler_frequency and/or top_processes",
                    "e.g. {type: degrade, profiler_frequency: 9}",
                ));
            }
            if let Some(f) = profiler_frequency {
                if *f == 0 || *f > 999 {
                    return Err(err(
                        p("action.profiler_frequency"),
                        format!("{f} is out of range"),
                        "use 1 to 999 samples per second",
                    ));
                }
            }
            if let Some(t) = top_processes {
                if *t == 0 {
                    return Err(err(
                        p("action.top_processes"),
                        "0 is out of range",
                        "use at least 1",
                    ));
                }
            }
            Action::Degrade {
                profiler_frequency: *profiler_frequency,
                top_processes: *top_processes,
            }
        }
    })
}
