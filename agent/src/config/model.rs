//! The configuration data model: the structs that one YAML file maps onto, and their defaults.
//!
//! Every struct takes `#[serde(default)]` (a missing field keeps its default) and
//! `#[serde(deny_unknown_fields)]` (a typo is an error, not a silently ignored setting).
//! Value checks (ranges, formats) live in `validate.rs`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The whole agent configuration. Swapped as a unit on reload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub status: StatusConfig,
    pub output: OutputConfig,
    pub export: ExportConfig,
    pub probes: ProbesConfig,
    /// Local anomaly detection on the derived per-process signals (`detection::config`).
    pub detection: crate::detection::config::DetectionConfig,
    /// OTTL statements applied to everything that leaves the agent (`transform::config`).
    pub transform: crate::transform::TransformConfig,
    /// OTTL conditions that drop metrics, points and log records before they leave.
    pub filter: crate::transform::FilterConfig,
    /// OpAMP remote management (local-only: a remote config cannot change it).
    pub opamp: crate::opamp::config::OpampConfig,
    /// The agent's own budgets and how it degrades past them (`selfprotect`).
    pub self_protection: crate::selfprotect::SelfProtectionConfig,
    /// Rules that act on what the agent observes (`enforcement::config`); monitor mode by
    /// default.
    pub enforcement: crate::enforcement::EnforcementConfig,
}

/// The agent's own log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive set, e.g. `info` or `warn,agent=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The spelling used in the YAML file and in `AGENT_LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP status endpoint (/healthz /readyz /status /metrics, and /debug/ profiling).
///
/// `/status` and `/debug/*` (they name every process and cost CPU per request) answer only on
/// a loopback listener, or with `Authorization: Bearer <token>` when `token_file` is set; the
/// other routes answer on every listener (see `status::access`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Histogram buckets on `/metrics`: every kernel bound, or every third (OTLP always gets
    /// every bound).
    pub histogram_buckets: HistogramBuckets,
    /// A second listener serving every route, e.g. 127.0.0.1:9465 beside a pod-IP `listen`.
    pub debug_listen: Option<SocketAddr>,
    /// A file whose content (trimmed) is the bearer token that opens /status and /debug/* on a
    /// non-loopback listener.
    pub token_file: Option<PathBuf>,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9464)),
            histogram_buckets: HistogramBuckets::Coarse,
            debug_listen: None,
            token_file: None,
        }
    }
}

/// How many histogram buckets `/metrics` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistogramBuckets {
    /// Every bound (40 lines per syscall latency series).
    Full,
    /// Every third log2 bound from 1 µs to 17 s (10 lines), exact at each kept bound.
    #[default]
    Coarse,
}

/// Local output files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub max_file_bytes: u64,
    pub max_files: u32,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            dir: PathBuf::from("agent-output"),
            interval: Duration::from_secs(10),
            max_file_bytes: 16 * 1024 * 1024,
            max_files: 4,
        }
    }
}

/// Kernel probes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbesConfig {
    pub syscalls: SyscallsConfig,
    pub network: NetworkConfig,
    pub profiler: ProfilerConfig,
}

/// The syscall probe (raw_syscalls sys_enter/sys_exit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyscallsConfig {
    pub enabled: bool,
    /// How often userspace drains the kernel maps.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// What the exported series are keyed by (the kernel and the signal deriver always keep
    /// processes).
    pub aggregation: SyscallAggregation,
    /// Kernel map size, (process, syscall) pairs; beyond it, new pairs go to "other".
    pub max_entries: u32,
    /// Kernel map size, (process, syscall, errno) triples.
    pub error_entries: u32,
    /// Kernel map size: live processes whose generation is kept (pid reuse and exec tell
    /// incarnations apart).
    pub max_processes: u32,
    /// In-flight syscall slots; a power of two.
    pub inflight_slots: u32,
    /// Fast-table entries per CPU (a power of two, or 0 for none): per-(process, syscall)
    /// histograms reached without a hash lookup; keys that collide use the LRU map.
    pub fast_slots: u32,
    /// Series owners (processes, executables or containers, by `aggregation`) exported
    /// individually per drain: the busiest of the interval; the rest add to "other".
    pub top_processes: usize,
    /// How long an exited process's final series stay exported.
    #[serde(with = "humantime_serde")]
    pub retain_exited: Duration,
}

impl Default for SyscallsConfig {
    fn default() -> Self {
        SyscallsConfig {
            enabled: true,
            interval: Duration::from_secs(5),
            aggregation: SyscallAggregation::Executable,
            max_entries: 4096,
            error_entries: 4096,
            max_processes: 32_768,
            inflight_slots: 262_144,
            fast_slots: 1024,
            top_processes: 100,
            retain_exited: Duration::from_secs(60),
        }
    }
}

/// What exported syscall series are keyed by, besides the syscall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyscallAggregation {
    /// Process (pid, executable name, container id).
    Process,
    /// Executable name and container id (pids dropped).
    #[default]
    Executable,
    /// Container id (host processes: none).
    Container,
    /// Nothing: one series per syscall for the whole host.
    Host,
}

impl SyscallAggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            SyscallAggregation::Process => "process",
            SyscallAggregation::Executable => "executable",
            SyscallAggregation::Container => "container",
            SyscallAggregation::Host => "host",
        }
    }
}

/// What a network series is keyed by (besides process, role and address family).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Peer address and port (client: the server's port; server: the listening port).
    #[default]
    Peer,
    /// Port only (client: the server's port; server: the listening port).
    Port,
    /// Process only.
    Process,
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Peer => "peer",
            Aggregation::Port => "port",
            Aggregation::Process => "process",
        }
    }
}

/// The TCP network probe (sock_ops on the root cgroup + `sock:inet_sk_error_report`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub enabled: bool,
    /// How often userspace drains the kernel histograms.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub aggregation: Aggregation,
    /// The RTT histogram (a sock_ops callback on every ACK of new data); off saves that cost.
    pub rtt_histogram: bool,
    /// Smallest time between two RTT samples of one connection (0: every RTT measurement).
    #[serde(with = "humantime_serde")]
    pub rtt_sample_interval: Duration,
    /// Kernel map size: series (beyond it, measurements go to one "other" series).
    pub max_series: u32,
    /// Kernel map size: connections tracked at once.
    pub max_connections: u32,
    /// Per-connection events each CPU may send per second (0: none).
    pub events_per_second: u32,
    /// How many recent connection events `/status` shows.
    pub recent_connections: usize,
    /// The cgroup v2 directory the sock_ops program attaches to (all sockets below it);
    /// `auto`: the cgroup2 mount.
    pub cgroup: PathBuf,
    /// How long an exited process's final series stay exported.
    #[serde(with = "humantime_serde")]
    pub retain_exited: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            enabled: true,
            interval: Duration::from_secs(5),
            aggregation: Aggregation::Peer,
            rtt_histogram: true,
            rtt_sample_interval: Duration::from_secs(1),
            max_series: 1024,
            max_connections: 65_536,
            events_per_second: 1000,
            recent_connections: 100,
            cgroup: PathBuf::from("auto"),
            retain_exited: Duration::from_secs(60),
        }
    }
}

/// How profiler samples leave the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfilerMode {
    /// Counted in the kernel per (thread, user stack, kernel stack); drained every second.
    #[default]
    Aggregate,
    /// Each sample's stacks go through a ring buffer and are counted in userspace.
    Stream,
}

impl ProfilerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfilerMode::Aggregate => "aggregate",
            ProfilerMode::Stream => "stream",
        }
    }
}

/// How the profiler walks user stacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfilerUnwinder {
    /// DWARF tables where the kernel program loads (aggregate mode), else frame pointers.
    #[default]
    Auto,
    /// The kernel's frame-pointer walk only.
    FramePointers,
    /// Unwind tables compiled from `.eh_frame`, walked in the kernel (frame pointers where a
    /// mapping has none); the probe fails if the program does not load.
    Dwarf,
}

impl ProfilerUnwinder {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfilerUnwinder::Auto => "auto",
            ProfilerUnwinder::FramePointers => "frame_pointers",
            ProfilerUnwinder::Dwarf => "dwarf",
        }
    }
}

/// The CPU profiler (perf_event `cpu-clock` on every CPU; user + kernel stacks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilerConfig {
    pub enabled: bool,
    /// Samples per second per CPU.
    pub frequency: u32,
    /// How often a symbolized profile is exported.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub mode: ProfilerMode,
    /// Kernel map size: distinct (thread, stacks) counted between two drains (1–5 s: drains
    /// are spaced so that the sample rate fills at most 1/32 of the smaller map between two).
    pub max_entries: u32,
    /// Kernel stack map size (distinct stacks between two drains); collisions are counted.
    pub stack_entries: u32,
    /// Sample the idle task too (pid 0, `swapper`).
    pub include_idle: bool,
    /// Processes whose mappings are cached (for symbolizing after they exit).
    pub max_processes: usize,
    /// Symbolized addresses cached.
    pub symbol_cache: usize,
    /// Read DWARF (source lines, inlined functions) where binaries have it; false: ELF symbols
    /// only (less memory for large unstripped binaries).
    pub debug_info: bool,
    /// Files whose DWARF sections are larger than this (bytes, uncompressed) get ELF symbols
    /// only: parsing their DWARF costs about its size in memory.
    pub debug_info_max_bytes: u64,
    /// Parsed files (symbol tables, DWARF) kept between exports, within 16 MiB of symbol
    /// indexes and DWARF together; the least recently used beyond either bound are dropped and
    /// parsed again when next needed.
    pub symbolizer_files: usize,
    /// How user stacks are walked.
    pub unwinder: ProfilerUnwinder,
    /// Kernel array of unwind table rows (8 bytes each), shared by every loaded file; the
    /// least recently used files are evicted when it is full.
    pub unwind_table_rows: u32,
}

impl Default for ProfilerConfig {
    fn default() -> Self {
        ProfilerConfig {
            enabled: true,
            frequency: 19,
            interval: Duration::from_secs(10),
            mode: ProfilerMode::Aggregate,
            max_entries: 16_384,
            stack_entries: 16_384,
            include_idle: false,
            max_processes: 1024,
            symbol_cache: 16_384,
            debug_info: true,
            debug_info_max_bytes: 8 << 20,
            symbolizer_files: 32,
            unwinder: ProfilerUnwinder::Auto,
            unwind_table_rows: 1 << 21,
        }
    }
}

/// OTLP transport protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            "http/json" => Some(Protocol::HttpJson),
            _ => None,
        }
    }
}

/// Request body compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// Metric temporality of exported sums and histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    #[default]
    Cumulative,
    Delta,
}

/// TLS for OTLP connections (`https://` endpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA bundle to trust instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key (mutual TLS).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Per-signal override of the endpoint (used as-is: for HTTP the full URL).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalConfig {
    pub endpoint: String,
}

/// The on-disk spool that holds data the collector has not taken yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory; empty: `<output.dir>/spool`.
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::new(),
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// OTLP export. No endpoint (here or in `OTEL_EXPORTER_OTLP_*`): OTLP JSON lines files under
/// `output.dir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    pub endpoint: String,
    pub protocol: Protocol,
    pub compression: Compression,
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub temporality: Temporality,
    pub tls: TlsConfig,
    pub metrics: SignalConfig,
    pub logs: SignalConfig,
    pub profiles: SignalConfig,
    pub spool: SpoolConfig,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            endpoint: String::new(),
            protocol: Protocol::HttpProtobuf,
            compression: Compression::Gzip,
            headers: Default::default(),
            timeout: Duration::from_secs(10),
            interval: Duration::from_secs(10),
            temporality: Temporality::Cumulative,
            tls: TlsConfig::default(),
            metrics: SignalConfig::default(),
            logs: SignalConfig::default(),
            profiles: SignalConfig::default(),
            spool: SpoolConfig::default(),
        }
    }
}
