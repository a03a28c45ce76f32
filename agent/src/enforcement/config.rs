//! The `enforcement:` config section: the global mode, what a remote config may set, the
//! allowlist, and the rules. Plain data (`Clone + Eq`, swapped whole on reload); the checks
//! with field paths and fixes are in `rules.rs` (`compile`).
//!
//! ```yaml
//! enforcement:
//!   mode: enforce
//!   rules:
//!     - name: stop-storm
//!       when: {signal: process.syscall.rate, above: 50000, for: 2}
//!       scope: {executable: storm}
//!       action: {type: signal, signal: SIGSTOP}
//!       ttl: 8s
//! ```

use std::{fmt, path::PathBuf, time::Duration};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A number from the YAML file, compared by bit pattern so the config stays `Eq` (a reload
/// that changes nothing is recognised as such).
#[derive(Clone, Copy, Debug, Default, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Float(pub f64);

impl PartialEq for Float {
    fn eq(&self, o: &Self) -> bool {
        self.0.to_bits() == o.0.to_bits()
    }
}
impl Eq for Float {}

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Act or only record. `monitor` is the default everywhere; a rule can only lower the global
/// mode (a rule set to `monitor` stays so under a global `enforce`, and a global `monitor`
/// keeps every rule in monitor mode: one switch turns all acting off).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record each decision ("would act"), change nothing.
    #[default]
    Monitor,
    /// Act.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

/// `enforcement.remote`: the most a remote config (OpAMP) may set (local file only).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RemoteBound {
    /// A remote config may not contain `enforcement` (the default).
    #[default]
    Deny,
    /// Modes up to `monitor`.
    Monitor,
    /// Any mode.
    Enforce,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforcementConfig {
    pub mode: Mode,
    /// What a remote config may set (see `opamp::remote_config::bound_enforcement`).
    pub remote: RemoteBound,
    pub allowlist: Allowlist,
    /// Decisions kept for `/status` → `decisions` (newest first).
    pub recent_decisions: usize,
    /// Where kernel maps and links of `persist: true` limits are pinned (a bpffs directory).
    pub bpffs: PathBuf,
    /// Nice value of the decision path's threads (drains that feed signals, the deriver, the
    /// engine), -20 to 19; set per thread with setpriority(2) ([`crate::priority`]).
    /// Local-only: a remote config may not raise the agent's priority.
    pub nice: i32,
    pub rules: Vec<RuleConfig>,
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        EnforcementConfig {
            mode: Mode::Monitor,
            remote: RemoteBound::Deny,
            allowlist: Allowlist::default(),
            recent_decisions: 100,
            bpffs: PathBuf::from("/sys/fs/bpf/agent"),
            nice: crate::priority::DEFAULT_NICE,
            rules: Vec::new(),
        }
    }
}

/// What no rule may act on, besides what is always protected (the agent itself, pid 1, kernel
/// threads, the cgroups holding the agent or pid 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Allowlist {
    /// Keep the built-in list (`safety::DEFAULT_EXECUTABLES`: kubelet, container runtimes,
    /// sshd, systemd, ...) besides the entries below.
    pub defaults: bool,
    /// Executable names (`process.executable.name`, or the command name); a trailing `*`
    /// matches a prefix.
    pub executables: Vec<String>,
    /// cgroup v2 paths (as in `/proc/<pid>/cgroup`, e.g. `/system.slice/ssh.service`); each
    /// covers its subtree.
    pub cgroups: Vec<String>,
    /// Container ids (full, or a prefix of at least 12 hex digits).
    pub containers: Vec<String>,
}

impl Default for Allowlist {
    fn default() -> Self {
        Allowlist {
            defaults: true,
            executables: Vec::new(),
            cgroups: Vec::new(),
            containers: Vec::new(),
        }
    }
}

/// One rule as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub when: WhenConfig,
    #[serde(default)]
    pub scope: ScopeConfig,
    pub action: ActionConfig,
    /// Time after an action on a target during which the rule does not act on it again.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub cooldown: Option<Duration>,
    /// Most actions (or "would act" records) per minute of this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_actions_per_minute: Option<u32>,
    /// When a limiting action is undone.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Lowers the global mode for this rule (`monitor`); absent: the global mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Keep kernel limits (rate_limit, block) across agent restarts: their maps and links are
    /// pinned under `enforcement.bpffs`, and undone at TTL by whichever agent runs then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persist: bool,
}

/// `for`: consecutive drain intervals of the syscall probe (a number), or a duration. Kept in
/// time either way (intervals are multiplied by `probes.syscalls.interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldFor {
    Intervals(u32),
    Time(Duration),
}

impl Serialize for HoldFor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HoldFor::Intervals(n) => s.serialize_u32(*n),
            HoldFor::Time(d) => {
                s.serialize_str(&humantime_serde::re::humantime::format_duration(*d).to_string())
            }
        }
    }
}

impl<'de> Deserialize<'de> for HoldFor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HoldFor;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of syscall probe intervals (e.g. 2) or a duration (e.g. 10s)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HoldFor, E> {
                u32::try_from(v)
                    .map(HoldFor::Intervals)
                    .map_err(|_| E::custom(format!("{v} intervals is too many")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HoldFor, E> {
                if v < 0 {
                    return Err(E::custom(format!("{v} is negative")));
                }
                self.visit_u64(v as u64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HoldFor, E> {
                humantime_serde::re::humantime::parse_duration(v)
                    .map(HoldFor::Time)
                    .map_err(|e| E::custom(format!("{v:?} is not a duration ({e})")))
            }
        }
        d.deserialize_any(V)
    }
}

/// The condition: a threshold on a signal held for a time, or an anomaly on a signal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhenConfig {
    /// A signal of the deriver's table (`signals::names::TABLE`) for a threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// A signal name: the rule fires on the detector's anomalies on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
    /// One syscall (name or number) for the `process.syscall.*` signals; with a `signal`
    /// action, the signal is sent from the kernel at this syscall.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub above: Option<Float>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub below: Option<Float>,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldFor>,
    /// Anomalies at or above this score only (0..1); default: every reported anomaly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_score: Option<Float>,
}

/// What a rule applies to; every field given must match (AND).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScopeConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `process.executable.name` (a trailing `*` matches a prefix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// A cgroup v2 path (`/proc/<pid>/cgroup`'s `0::` line, e.g. `/kubepods.slice/...`); its
    /// subtree matches. Cgroup actions act on this cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// `container.id` (full, or a prefix of at least 12 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `k8s.pod.uid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// One direction of a rate limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// IP bytes per second (as the kernel counts `skb->len`); 0: no byte limit.
    pub bytes_per_second: u64,
    /// Packets per second; 0: no packet limit.
    pub packets_per_second: u64,
    /// Bucket depth in bytes; 0: the default (max(64 KiB + 1 packet, 100 ms at the rate)).
    pub burst_bytes: u64,
}

/// The action, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    /// A signal to the process: SIGSTOP (undone by SIGCONT at TTL), SIGCONT, SIGTERM, SIGKILL.
    Signal { signal: String },
    /// Freeze the target's cgroup (`cgroup.freeze`; v1 `freezer.state`); thawed at TTL.
    Freeze {},
    /// Thaw the target's cgroup.
    Thaw {},
    /// Kill every process of the target's cgroup (`cgroup.kill`).
    Kill {},
    /// CPU bandwidth of the target's cgroup (`cpu.max`; v1 `cpu.cfs_quota_us`), in CPUs;
    /// restored at TTL.
    CpuLimit { cpus: Float },
    /// Bandwidth of the target's cgroup in the kernel (cgroup_skb token buckets); removed at
    /// TTL.
    RateLimit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        egress: Option<RateConfig>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ingress: Option<RateConfig>,
    },
    /// Refuse connects from the target's cgroup to these peers (cgroup_sock_addr); removed
    /// at TTL.
    Block {
        /// Addresses or CIDR prefixes, IPv4 or IPv6.
        peers: Vec<String>,
        /// Peer ports; empty: every port.
        #[serde(default)]
        ports: Vec<u16>,
    },
    /// End the container's processes so its runtime restarts it.
    RestartContainer {},
    /// An OTLP log record, and with `webhook` an HTTP POST of the decision as JSON.
    Alert {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook: Option<String>,
    },
    /// Lower the agent's own sampling; restored at TTL.
    Degrade {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profiler_frequency: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_processes: Option<usize>,
    },
}

impl ActionConfig {
    /// The `type` word.
    pub fn kind(&self) -> &'static str {
        match self {
            ActionConfig::Signal { .. } => "signal",
            ActionConfig::Freeze {} => "freeze",
            ActionConfig::Thaw {} => "thaw",
            ActionConfig::Kill {} => "kill",
            ActionConfig::CpuLimit { .. } => "cpu_limit",
            ActionConfig::RateLimit { .. } => "rate_limit",
            ActionConfig::Block { .. } => "block",
            ActionConfig::RestartContainer {} => "restart_container",
            ActionConfig::Alert { .. } => "alert",
            ActionConfig::Degrade { .. } => "degrade",
        }
    }
}

/// What a field of the section accepts, phrased to follow "use " (`config::validate` asks).
pub fn allowed(path: &str) -> Option<String> {
    Some(match path {
        "enforcement" => "a mapping with the fields mode, remote, allowlist, recent_decisions, bpffs, nice, rules".into(),
        "enforcement.mode" => "monitor (record decisions, change nothing) or enforce".into(),
        "enforcement.remote" => "deny (a remote config may not set enforcement), monitor (modes up to monitor) or enforce".into(),
        "enforcement.allowlist" => "a mapping with the fields defaults, executables, cgroups, containers".into(),
        "enforcement.allowlist.defaults" => "true or false".into(),
        "enforcement.allowlist.executables" => "a list of executable names (a trailing * matches a prefix)".into(),
        "enforcement.allowlist.cgroups" => "a list of cgroup v2 paths such as /system.slice/ssh.service".into(),
        "enforcement.allowlist.containers" => "a list of container ids (64 hex digits, or a prefix of at least 12)".into(),
        "enforcement.recent_decisions" => "a whole number from 0 to 10000, e.g. 100".into(),
        "enforcement.nice" => "a nice value from -20 (highest priority) to 19, e.g. -10 (the default); 0 leaves the decision path at the workloads' priority".into(),
        "enforcement.bpffs" => "an absolute directory on the BPF filesystem, e.g. /sys/fs/bpf/agent".into(),
        "enforcement.rules" => format!(
            "a list of rules, each with {} (see the default config)",
            super::rules::RULE_FIELDS
        ),
        p if p.starts_with("enforcement.rules") => format!(
            "a rule with {}; when: {{signal: NAME, above|below: N, for: INTERVALS|DURATION}} or {{anomaly: NAME}}; action: {{type: signal|freeze|thaw|kill|cpu_limit|rate_limit|block|restart_container|alert|degrade, ...}}",
            super::rules::RULE_FIELDS
        ),
        _ => return None,
    })
}

/// Range checks of the section's plain fields (the rules are checked by `rules::compile`).
pub fn check_field(c: &EnforcementConfig, path: &str) -> Result<(), String> {
    match path {
        "enforcement.recent_decisions" if c.recent_decisions > 10_000 => {
            Err(format!("{} is out of range", c.recent_decisions))
        }
        "enforcement.nice" if !(-20..=19).contains(&c.nice) => {
            Err(format!("{} is out of range", c.nice))
        }
        "enforcement.bpffs" if !c.bpffs.is_absolute() => {
            Err(format!("{} is not an absolute path", c.bpffs.display()))
        }
        "enforcement.allowlist.executables" => match c
            .allowlist
            .executables
            .iter()
            .find(|e| e.is_empty() || *e == "*")
        {
            Some(e) => Err(format!("{e:?} would allowlist every process")),
            None => Ok(()),
        },
        "enforcement.allowlist.cgroups" => {
            match c.allowlist.cgroups.iter().find(|g| !g.starts_with('/')) {
                Some(g) => Err(format!("{g:?} is not a cgroup path (it starts with /)")),
                None => Ok(()),
            }
        }
        "enforcement.allowlist.containers" => match c
            .allowlist
            .containers
            .iter()
            .find(|id| id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            Some(id) => Err(format!(
                "{id:?} is not a container id or a prefix of at least 12 hex digits"
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_rule_parses_as_written() {
        let y = "mode: enforce\nrules:\n  - name: stop-storm\n    when: {signal: process.syscall.rate, above: 50000, for: 2}\n    scope: {executable: storm}\n    action: {type: signal, signal: SIGSTOP}\n    ttl: 8s\n";
        let c: EnforcementConfig = serde_yaml_ng::from_str(y).unwrap();
        assert_eq!(c.mode, Mode::Enforce);
        let r = &c.rules[0];
        assert_eq!(r.when.hold, Some(HoldFor::Intervals(2)));
        assert_eq!(r.when.above, Some(Float(50000.0)));
        assert_eq!(r.scope.executable.as_deref(), Some("storm"));
        assert_eq!(
            r.action,
            ActionConfig::Signal {
                signal: "SIGSTOP".into()
            }
        );
        assert_eq!(r.ttl, Some(Duration::from_secs(8)));
        // Round trip through the serializer (the effective config, the hash).
        let back: EnforcementConfig =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let t: WhenConfig = serde_yaml_ng::from_str("{for: 1500ms}").unwrap();
        assert_eq!(t.hold, Some(HoldFor::Time(Duration::from_millis(1500))));
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let e = serde_yaml_ng::from_str::<ActionConfig>("{type: freeze, x: 1}").unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
        let e = serde_yaml_ng::from_str::<ActionConfig>("{type: explode}").unwrap_err();
        assert!(e.to_string().contains("unknown variant `explode`"), "{e}");
        let e = serde_yaml_ng::from_str::<WhenConfig>("{for: -1}").unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
    }
}
