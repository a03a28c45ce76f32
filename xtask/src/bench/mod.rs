//! Side-by-side benchmarks: every condition runs in the same invocation, in an order rotated
//! from round to round (`harness`), and the report prints each figure with its spread over the
//! rounds, ratios computed per round, and "within noise" when an effect is smaller than that
//! spread (never a timed assertion). One file per bench; `host` holds what they share. The
//! soak bench runs the agent for minutes under a churn workload and reports its footprint.

mod detect;
mod enforce;
mod enforce_rate;
mod export;
mod harness;
mod host;
mod network;
mod profiler;
mod soak;
mod syscalls;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Which {
    /// getppid loop: bare vs under the agent vs under `syscount -L`, alternating rounds.
    Syscalls {
        /// Calls per run.
        #[arg(long, default_value_t = 2_000_000)]
        calls: u64,
        /// Rounds of (bare, agent, syscount); the median of each is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Loopback TCP request/response throughput: bare vs under the agent (network probe only),
    /// alternating rounds.
    Network {
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds of (bare, agent); the median of each is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Client connections (one thread each).
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Request and response size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// OTLP exporter: data points per second on one core and bytes on the wire per point, per
    /// protocol, into rotel (a Rust collector, blackhole exporter) on the other core.
    Export {
        /// Seconds per protocol and round.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds over every protocol (rotated); the median and range are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Histogram series per export (each with a counter too).
        #[arg(long, default_value_t = 1000)]
        series: usize,
    },
    /// CPU profiler: a workload built without frame pointers keeping every CPU busy
    /// (`tests/workloads/hotspots.c`, -fomit-frame-pointer), bare vs under the agent (profiler
    /// only) with the DWARF unwinder and with frame pointers at 19 and 99 Hz, and 99 Hz
    /// stream, rotating rounds, the agent's CPU split into warm-up and steady state (and a
    /// start without the unwind table cache); then each condition's kernel cost per sample
    /// (bpf_stats) and the truncated share on /status.
    Profiler {
        /// Seconds per run. The agent's warm-up (excluded from its steady state) runs up to
        /// the end of its first export (12 s: a fresh agent parses every binary it sampled
        /// then), so the steady state holds whole export intervals from 22 s on; shorter runs
        /// count the first quarter (at most 5 s) as warm-up.
        #[arg(long, default_value_t = 32)]
        seconds: u64,
        /// Rounds of (bare and every condition); medians and spreads are reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Soak: the release agent with every probe and the default config for N minutes under a
    /// churn workload (short-lived processes and exec wrappers, a loopback TCP connection storm,
    /// compiles); prints peak RSS, agent CPU per minute, series per metric family, /metrics
    /// size, output bytes per minute and every loss counter.
    Soak {
        /// Minutes of churn.
        #[arg(long, default_value_t = 5)]
        minutes: u64,
        /// An agent config file instead of the embedded defaults (e.g. `aggregation: process`).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Enforcement: time from the observation that fires a rule to its action in effect,
    /// p50/p99 for signal, freeze, block and rate_limit, side by side in one agent
    /// (`enforce.rs`); then the rate limiter's ns/packet and accuracy at three rates
    /// (`enforce_rate.rs`).
    Enforce {
        /// Seconds the rules keep firing per nice value, in 3 rounds (each rule about every
        /// 2-3 s).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Rounds of the rate limiter's accuracy and per-packet cost (3 rates each).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Anomaly detectors: ns per point and state bytes per detector, and the engine's points
    /// per second over 10,000 series (`detect.rs`).
    Detect {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Points per detector per round.
        #[arg(long, default_value_t = 1_000_000)]
        points: usize,
        #[arg(long, default_value_t = 10_000)]
        series: usize,
    },
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Syscalls { calls, rounds } => syscalls::run(calls, rounds),
        Which::Network {
            seconds,
            rounds,
            conns,
            size,
        } => network::run(seconds, rounds, conns, size),
        Which::Export {
            seconds,
            series,
            rounds,
        } => export::run(seconds, series, rounds),
        Which::Profiler { seconds, rounds } => profiler::run(seconds, rounds),
        Which::Soak { minutes, config } => soak::run(minutes, config.as_deref()),
        Which::Enforce { seconds, rounds } => enforce::run(seconds, rounds),
        Which::Detect {
            rounds,
            points,
            series,
        } => detect::run(rounds, points, series),
    }
}
