//! The signal table: every signal the deriver produces, with its name, unit and key, shared by
//! detection watches and enforcement rules (config validation names the allowed ones from here).

use std::fmt;

/// A signal the agent derives per process (and, for syscall signals, per syscall on demand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// `process.syscall.rate`: calls per second (all syscalls, or one).
    SyscallRate,
    /// `process.syscall.error_ratio`: calls that failed / calls, in the interval.
    SyscallErrorRatio,
    /// `process.syscall.duration`: mean seconds per call in the interval.
    SyscallDuration,
    /// `system.network.tcp.connection.failure_rate`: failed connections per second.
    TcpFailureRate,
    /// `system.network.tcp.retransmit_ratio`: retransmitted / sent segments.
    TcpRetransmitRatio,
    /// `system.network.tcp.handshake.duration`: mean seconds per handshake in the interval.
    TcpHandshakeDuration,
    /// `process.cpu.utilization`: CPU time / (elapsed time × CPUs), 0..1.
    CpuUtilization,
    /// `process.memory.usage`: resident memory, bytes.
    MemoryUsage,
}

/// (signal, name, unit, what the value is).
pub const TABLE: &[(Signal, &str, &str, &str)] = &[
    (
        Signal::SyscallRate,
        "process.syscall.rate",
        "{call}/s",
        "syscalls per second of one process (all syscalls, or the one a watch or rule names)",
    ),
    (
        Signal::SyscallErrorRatio,
        "process.syscall.error_ratio",
        "1",
        "failed syscalls / syscalls in the interval",
    ),
    (
        Signal::SyscallDuration,
        "process.syscall.duration",
        "s",
        "mean time per syscall in the interval",
    ),
    (
        Signal::TcpFailureRate,
        "system.network.tcp.connection.failure_rate",
        "{connection}/s",
        "failed TCP connections per second of one process",
    ),
    (
        Signal::TcpRetransmitRatio,
        "system.network.tcp.retransmit_ratio",
        "1",
        "retransmitted / sent TCP segments of one process",
    ),
    (
        Signal::TcpHandshakeDuration,
        "system.network.tcp.handshake.duration",
        "s",
        "mean TCP handshake time in the interval",
    ),
    (
        Signal::CpuUtilization,
        "process.cpu.utilization",
        "1",
        "CPU time / (elapsed time x CPUs), from /proc/<pid>/stat",
    ),
    (
        Signal::MemoryUsage,
        "process.memory.usage",
        "By",
        "resident memory, from /proc/<pid>/statm",
    ),
];

impl Signal {
    pub fn name(self) -> &'static str {
        TABLE
            .iter()
            .find(|t| t.0 == self)
            .map(|t| t.1)
            .unwrap_or("")
    }

    pub fn unit(self) -> &'static str {
        TABLE
            .iter()
            .find(|t| t.0 == self)
            .map(|t| t.2)
            .unwrap_or("")
    }

    /// The signal named `name`, if any.
    pub fn parse(name: &str) -> Option<Signal> {
        TABLE.iter().find(|t| t.1 == name).map(|t| t.0)
    }

    /// Whether a watch or rule may name one syscall for this signal.
    pub fn per_syscall(self) -> bool {
        matches!(
            self,
            Signal::SyscallRate | Signal::SyscallErrorRatio | Signal::SyscallDuration
        )
    }

    /// Every signal name, comma-separated (for error messages).
    pub fn all_names() -> String {
        TABLE.iter().map(|t| t.1).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (s, name, _, _) in TABLE {
            assert_eq!(Signal::parse(name), Some(*s));
            assert_eq!(s.name(), *name);
        }
        assert_eq!(Signal::parse("process.syscall.rat"), None);
        assert!(Signal::all_names().contains("process.cpu.utilization"));
    }
}
