//! Value checks (ranges, formats) and the "what is allowed" text for every field.
//!
//! One table of limits feeds both the checks and the `fix:` hints, so they cannot disagree.

use std::time::Duration;

use humantime_serde::re::humantime::format_duration;
use tracing_subscriber::{filter::LevelFilter, EnvFilter};

use super::{
    error::{ConfigError, Source},
    model::Config,
};

/// Every section and leaf field, in file order (the order `validate` checks them).
pub(crate) const FIELDS: &[&str] = &[
    "log",
    "log.level",
    "log.format",
    "status",
    "status.enabled",
    "status.listen",
    "status.histogram_buckets",
    "status.debug_listen",
    "status.token_file",
    "output",
    "output.dir",
    "output.interval",
    "output.max_file_bytes",
    "output.max_files",
    "export",
    "export.endpoint",
    "export.protocol",
    "export.compression",
    "export.headers",
    "export.timeout",
    "export.interval",
    "export.temporality",
    "export.tls",
    "export.tls.ca_file",
    "export.tls.cert_file",
    "export.tls.key_file",
    "export.metrics",
    "export.metrics.endpoint",
    "export.logs",
    "export.logs.endpoint",
    "export.profiles",
    "export.profiles.endpoint",
    "export.spool",
    "export.spool.dir",
    "export.spool.max_bytes",
    "probes",
    "probes.syscalls",
    "probes.syscalls.enabled",
    "probes.syscalls.interval",
    "probes.syscalls.aggregation",
    "probes.syscalls.max_entries",
    "probes.syscalls.error_entries",
    "probes.syscalls.max_processes",
    "probes.syscalls.inflight_slots",
    "probes.syscalls.fast_slots",
    "probes.syscalls.top_processes",
    "probes.syscalls.retain_exited",
    "probes.network",
    "probes.network.enabled",
    "probes.network.interval",
    "probes.network.aggregation",
    "probes.network.rtt_histogram",
    "probes.network.rtt_sample_interval",
    "probes.network.max_series",
    "probes.network.max_connections",
    "probes.network.events_per_second",
    "probes.network.recent_connections",
    "probes.network.cgroup",
    "probes.network.retain_exited",
    "probes.profiler",
    "probes.profiler.enabled",
    "probes.profiler.frequency",
    "probes.profiler.interval",
    "probes.profiler.mode",
    "probes.profiler.max_entries",
    "probes.profiler.stack_entries",
    "probes.profiler.include_idle",
    "probes.profiler.max_processes",
    "probes.profiler.symbol_cache",
    "probes.profiler.debug_info",
    "probes.profiler.debug_info_max_bytes",
    "probes.profiler.symbolizer_files",
    "probes.profiler.unwinder",
    "probes.profiler.unwind_table_rows",
    "detection",
    "detection.enabled",
    "detection.warmup",
    "detection.signals",
    "detection.detector",
    "detection.threshold",
    "detection.hold_off",
    "detection.max_series",
    "detection.recent",
    "transform",
    "transform.error_mode",
    "transform.metric_statements",
    "transform.log_statements",
    "transform.profile_statements",
    "filter",
    "filter.error_mode",
    "filter.metrics",
    "filter.metrics.metric",
    "filter.metrics.datapoint",
    "filter.logs",
    "filter.logs.log_record",
    "opamp",
    "opamp.endpoint",
    "opamp.headers",
    "opamp.tls",
    "opamp.tls.ca_file",
    "opamp.tls.cert_file",
    "opamp.tls.key_file",
    "opamp.compression",
    "opamp.heartbeat_interval",
    "opamp.timeout",
    "opamp.max_message_bytes",
    "opamp.accept_remote_config",
    "opamp.rollback_grace",
    "self_protection",
    "self_protection.enabled",
    "self_protection.interval",
    "self_protection.max_cpu_millicores",
    "self_protection.max_memory_bytes",
    "self_protection.escalate_after",
    "self_protection.recover_after",
    "self_protection.recover_below_percent",
    "self_protection.bpf_stats_percent",
    "enforcement",
    "enforcement.mode",
    "enforcement.remote",
    "enforcement.allowlist",
    "enforcement.allowlist.defaults",
    "enforcement.allowlist.executables",
    "enforcement.allowlist.cgroups",
    "enforcement.allowlist.containers",
    "enforcement.recent_decisions",
    "enforcement.bpffs",
    "enforcement.nice",
    "enforcement.rules",
];

const SECOND: Duration = Duration::from_secs(1);
/// Fast-table entries per CPU: 0 (off) or a power of two up to this.
const FAST_SLOTS_MAX: u32 = 65_536;
const FAST_SLOTS_EXAMPLE: u32 = 1024;
const HOUR: Duration = Duration::from_secs(3600);

/// An inclusive range and an example value for the hint.
struct Limits<T> {
    min: T,
    max: T,
    example: T,
}

const OUTPUT_INTERVAL: Limits<Duration> = Limits {
    min: SECOND,
    max: HOUR,
    example: Duration::from_secs(10),
};
const MAX_FILE_BYTES: Limits<u64> = Limits {
    min: 64 * 1024,
    max: 1024 * 1024 * 1024,
    example: 16 * 1024 * 1024,
};
const MAX_FILES: Limits<u64> = Limits {
    min: 1,
    max: 100,
    example: 4,
};
const EXPORT_TIMEOUT: Limits<Duration> = Limits {
    min: Duration::from_millis(100),
    max: Duration::from_secs(300),
    example: Duration::from_secs(10),
};
const SPOOL_BYTES: Limits<u64> = Limits {
    min: 1024 * 1024,
    max: 64 * 1024 * 1024 * 1024,
    example: 256 * 1024 * 1024,
};
const SYSCALLS_INTERVAL: Limits<Duration> = Limits {
    min: SECOND,
    max: HOUR,
    example: Duration::from_secs(5),
};
const MAP_ENTRIES: Limits<u64> = Limits {
    min: 64,
    max: 1_048_576,
    example: 4096,
};
const INFLIGHT_SLOTS: Limits<u64> = Limits {
    min: 1024,
    max: 4_194_304,
    example: 262_144,
};
const TOP_PROCESSES: Limits<u64> = Limits {
    min: 1,
    max: 100_000,
    example: 100,
};
const EVENTS_PER_SECOND: Limits<u64> = Limits {
    min: 0,
    max: 1_000_000,
    example: 1000,
};
const RECENT_CONNECTIONS: Limits<u64> = Limits {
    min: 0,
    max: 10_000,
    example: 100,
};
const DEBUG_INFO_BYTES: Limits<u64> = Limits {
    min: 0,
    max: 1 << 40,
    example: 8 << 20,
};
const UNWIND_ROWS: Limits<u64> = Limits {
    min: 1024,
    max: 1 << 24,
    example: 1 << 21,
};
const SYMBOLIZER_FILES: Limits<u64> = Limits {
    min: 1,
    max: 65_536,
    example: 8,
};
const FREQUENCY: Limits<u64> = Limits {
    min: 1,
    max: 999,
    example: 19,
};
const MAX_PROCESSES: Limits<u64> = Limits {
    min: 16,
    max: 1_048_576,
    example: 1024,
};
const SYMBOL_CACHE: Limits<u64> = Limits {
    min: 1024,
    max: 16_777_216,
    example: 65_536,
};
const RETAIN_EXITED: Limits<Duration> = Limits {
    min: Duration::ZERO,
    max: HOUR,
    example: Duration::from_secs(60),
};

fn fields_of(section: &str) -> String {
    let prefix = if section.is_empty() {
        String::new()
    } else {
        format!("{section}.")
    };
    let names: Vec<&str> = FIELDS
        .iter()
        .filter_map(|f| f.strip_prefix(prefix.as_str()))
        .filter(|rest| !rest.contains('.'))
        .collect();
    names.join(", ")
}

fn durations(l: &Limits<Duration>) -> String {
    format!(
        "a duration from {} to {}, e.g. {}",
        format_duration(l.min),
        format_duration(l.max),
        format_duration(l.example)
    )
}

fn numbers(l: &Limits<u64>) -> String {
    format!(
        "a whole number from {} to {}, e.g. {}",
        l.min, l.max, l.example
    )
}

/// What a field (or section; `""` is the whole file) accepts, phrased to follow "use ".
pub(crate) fn allowed(path: &str) -> Option<String> {
    Some(match path {
        "" => format!("a mapping with the sections {}", fields_of("")),
        "log" | "status" | "output" | "export" | "export.tls" | "export.metrics"
        | "export.logs" | "export.profiles" | "export.spool" | "probes" | "probes.syscalls"
        | "probes.network" | "probes.profiler" | "transform" | "filter" | "filter.metrics"
        | "filter.logs" | "opamp" | "opamp.tls" | "self_protection" => {
            format!("a mapping with the fields {}", fields_of(path))
        }
        "log.level" => "a level (off, error, warn, info, debug, trace) or tracing filter \
                        directives like warn,agent=debug (a target needs a level: agent=debug)"
            .to_string(),
        "log.format" => "text or json".to_string(),
        "status.histogram_buckets" => "coarse or full".to_string(),
        "status.enabled"
        | "probes.syscalls.enabled"
        | "probes.network.enabled"
        | "probes.network.rtt_histogram"
        | "probes.profiler.enabled"
        | "probes.profiler.include_idle"
        | "probes.profiler.debug_info" => {
            "true or false".to_string()
        }
        "status.listen" => {
            "an IP:port address such as 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464".to_string()
        }
        "status.debug_listen" => "an IP:port address such as 127.0.0.1:9465 (another port than \
                                  status.listen), or null for none"
            .to_string(),
        "status.token_file" => {
            "a path to a file holding the bearer token, or null for none".to_string()
        }
        "output.dir" => "a directory path such as agent-output or /var/lib/agent".to_string(),
        "output.interval" => durations(&OUTPUT_INTERVAL),
        "output.max_file_bytes" => format!(
            "a number of bytes from {} (64 KiB) to {} (1 GiB), e.g. {} (16 MiB)",
            MAX_FILE_BYTES.min, MAX_FILE_BYTES.max, MAX_FILE_BYTES.example
        ),
        "output.max_files" => numbers(&MAX_FILES),
        "export.endpoint" | "export.metrics.endpoint" | "export.logs.endpoint"
        | "export.profiles.endpoint" => {
            "an http:// or https:// URL such as http://localhost:4318 (HTTP) or \
             http://localhost:4317 (gRPC), or empty for local files"
                .to_string()
        }
        "export.protocol" => "grpc, http/protobuf or http/json".to_string(),
        "export.compression" => "gzip or none".to_string(),
        "export.headers" => "a mapping of header names to values".to_string(),
        "export.timeout" => durations(&EXPORT_TIMEOUT),
        "export.interval" => durations(&OUTPUT_INTERVAL),
        "export.temporality" => "cumulative or delta".to_string(),
        "export.tls.ca_file" | "export.tls.cert_file" | "export.tls.key_file" => {
            "a path to a PEM file".to_string()
        }
        "export.spool.dir" => "a directory path, or empty for <output.dir>/spool".to_string(),
        "export.spool.max_bytes" => format!(
            "a number of bytes from {} (1 MiB) to {} (64 GiB), e.g. {} (256 MiB)",
            SPOOL_BYTES.min, SPOOL_BYTES.max, SPOOL_BYTES.example
        ),
        "probes.syscalls.interval" => durations(&SYSCALLS_INTERVAL),
        "probes.syscalls.aggregation" => "process, executable, container or host".to_string(),
        "probes.syscalls.max_entries" | "probes.syscalls.error_entries" => numbers(&MAP_ENTRIES),
        "probes.syscalls.max_processes" => numbers(&MAP_ENTRIES),
        "probes.syscalls.inflight_slots" => format!(
            "a power of two from {} to {}, e.g. {}",
            INFLIGHT_SLOTS.min, INFLIGHT_SLOTS.max, INFLIGHT_SLOTS.example
        ),
        "probes.syscalls.fast_slots" => format!(
            "0 (off) or a power of two up to {}, e.g. {}",
            FAST_SLOTS_MAX, FAST_SLOTS_EXAMPLE
        ),
        "probes.syscalls.top_processes" => numbers(&TOP_PROCESSES),
        "probes.syscalls.retain_exited" | "probes.network.retain_exited" => {
            durations(&RETAIN_EXITED)
        }
        "probes.network.interval" => durations(&SYSCALLS_INTERVAL),
        "probes.network.aggregation" => "peer, port or process".to_string(),
        "probes.network.rtt_sample_interval" => durations(&RETAIN_EXITED),
        "probes.network.max_series" | "probes.network.max_connections" => numbers(&MAP_ENTRIES),
        "probes.network.events_per_second" => numbers(&EVENTS_PER_SECOND),
        "probes.network.recent_connections" => numbers(&RECENT_CONNECTIONS),
        "probes.network.cgroup" => {
            "auto (the cgroup2 mount) or an absolute path to a cgroup v2 directory, e.g. /sys/fs/cgroup".to_string()
        }
        "probes.profiler.frequency" => format!(
            "samples per second per CPU, {} to {}, e.g. {} (99 for more detail)",
            FREQUENCY.min, FREQUENCY.max, FREQUENCY.example
        ),
        "probes.profiler.interval" => durations(&SYSCALLS_INTERVAL),
        "probes.profiler.mode" => "aggregate or stream".to_string(),
        "probes.profiler.max_entries" | "probes.profiler.stack_entries" => numbers(&MAP_ENTRIES),
        "probes.profiler.max_processes" => numbers(&MAX_PROCESSES),
        "probes.profiler.symbol_cache" => numbers(&SYMBOL_CACHE),
        "probes.profiler.debug_info_max_bytes" => format!(
            "a number of bytes from 0 (never DWARF) to {}, e.g. {} (8 MiB)",
            DEBUG_INFO_BYTES.max, DEBUG_INFO_BYTES.example
        ),
        "probes.profiler.symbolizer_files" => numbers(&SYMBOLIZER_FILES),
        "probes.profiler.unwinder" => "auto, frame_pointers or dwarf (dwarf needs mode: \
                                       aggregate)"
            .to_string(),
        "probes.profiler.unwind_table_rows" => numbers(&UNWIND_ROWS),
        "transform.error_mode" | "filter.error_mode" => "ignore, silent or propagate".to_string(),
        "transform.metric_statements" | "transform.log_statements" | "transform.profile_statements" => {
            "a list of groups, each with context (metric_statements: resource, scope, metric, \
             datapoint; log_statements: resource, scope, log; profile_statements: resource) and \
             statements (OTTL), optionally conditions and error_mode"
                .to_string()
        }
        "filter.metrics.metric" | "filter.metrics.datapoint" | "filter.logs.log_record" => {
            "a list of OTTL conditions (an item matching any of them is dropped)".to_string()
        }
        p if p.starts_with("opamp.") => return crate::opamp::config::allowed(p),
        p if p == "detection" || p.starts_with("detection.") => {
            return crate::detection::config::allowed(p)
        }
        p if p.starts_with("self_protection.") => return crate::selfprotect::config::allowed(p),
        p if p.starts_with("enforcement") => return crate::enforcement::config::allowed(p),
        _ => return None,
    })
}

/// The `fix:` text for a bad value at `path`.
pub(crate) fn fix_for(path: &str) -> String {
    match allowed(path) {
        Some(a) => format!("use {a}"),
        None => "see the comments in the default config for what each field accepts".to_string(),
    }
}

fn check_duration(d: Duration, l: &Limits<Duration>) -> Result<(), String> {
    if d < l.min || d > l.max {
        return Err(format!("{} is out of range", format_duration(d)));
    }
    Ok(())
}

fn check_number(n: u64, l: &Limits<u64>) -> Result<(), String> {
    if n < l.min || n > l.max {
        return Err(format!("{n} is out of range"));
    }
    Ok(())
}

/// Checks an endpoint: empty, or an http(s) URL with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(());
    }
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Ok(()),
        Ok(_) => Err(format!(
            "{url:?} is not an http:// or https:// URL with a host"
        )),
        Err(e) => Err(format!("{url:?} is not a URL ({e})")),
    }
}

/// Checks a tracing filter; stricter than `EnvFilter` about bare words: `verbose` or `warning`
/// would be taken as a target name (and silently enable everything for it), so a directive
/// without `=`, `[` or `::` must be a level.
pub(crate) fn check_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("is empty".to_string());
    }
    if let Err(e) = EnvFilter::try_new(level) {
        return Err(format!("{level:?} is not a valid filter ({e})"));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && directive.parse::<LevelFilter>().is_err() {
            return Err(format!("{directive:?} is not a level"));
        }
    }
    Ok(())
}

/// Checks one field (sections and fields without constraints always pass).
pub(crate) fn check_field(cfg: &Config, path: &str) -> Result<(), String> {
    let sys = &cfg.probes.syscalls;
    let net = &cfg.probes.network;
    let prof = &cfg.probes.profiler;
    match path {
        "log.level" => check_level(&cfg.log.level),
        "status.debug_listen" if cfg.status.debug_listen == Some(cfg.status.listen) => {
            Err(format!("{} is also status.listen", cfg.status.listen))
        }
        "output.dir" if cfg.output.dir.as_os_str().is_empty() => Err("is empty".to_string()),
        "output.interval" => check_duration(cfg.output.interval, &OUTPUT_INTERVAL),
        "output.max_file_bytes" => check_number(cfg.output.max_file_bytes, &MAX_FILE_BYTES),
        "output.max_files" => check_number(cfg.output.max_files.into(), &MAX_FILES),
        "export.endpoint" => check_url(&cfg.export.endpoint),
        "export.metrics.endpoint" => check_url(&cfg.export.metrics.endpoint),
        "export.logs.endpoint" => check_url(&cfg.export.logs.endpoint),
        "export.profiles.endpoint" => check_url(&cfg.export.profiles.endpoint),
        "export.timeout" => check_duration(cfg.export.timeout, &EXPORT_TIMEOUT),
        "export.interval" => check_duration(cfg.export.interval, &OUTPUT_INTERVAL),
        "export.spool.max_bytes" => check_number(cfg.export.spool.max_bytes, &SPOOL_BYTES),
        "probes.syscalls.interval" => check_duration(sys.interval, &SYSCALLS_INTERVAL),
        "probes.syscalls.max_entries" => check_number(sys.max_entries.into(), &MAP_ENTRIES),
        "probes.syscalls.error_entries" => check_number(sys.error_entries.into(), &MAP_ENTRIES),
        "probes.syscalls.max_processes" => check_number(sys.max_processes.into(), &MAP_ENTRIES),
        "probes.syscalls.inflight_slots" => {
            check_number(sys.inflight_slots.into(), &INFLIGHT_SLOTS)?;
            if !sys.inflight_slots.is_power_of_two() {
                return Err(format!("{} is not a power of two", sys.inflight_slots));
            }
            Ok(())
        }
        "probes.syscalls.fast_slots" => {
            let n = sys.fast_slots;
            if n != 0 && (!n.is_power_of_two() || n > FAST_SLOTS_MAX) {
                return Err(format!(
                    "{n} is not 0 or a power of two up to {FAST_SLOTS_MAX}"
                ));
            }
            Ok(())
        }
        "probes.syscalls.top_processes" => check_number(
            sys.top_processes.try_into().unwrap_or(u64::MAX),
            &TOP_PROCESSES,
        ),
        "probes.syscalls.retain_exited" => check_duration(sys.retain_exited, &RETAIN_EXITED),
        "probes.network.interval" => check_duration(net.interval, &SYSCALLS_INTERVAL),
        "probes.network.rtt_sample_interval" => {
            check_duration(net.rtt_sample_interval, &RETAIN_EXITED)
        }
        "probes.network.max_series" => check_number(net.max_series.into(), &MAP_ENTRIES),
        "probes.network.max_connections" => check_number(net.max_connections.into(), &MAP_ENTRIES),
        "probes.network.events_per_second" => {
            check_number(net.events_per_second.into(), &EVENTS_PER_SECOND)
        }
        "probes.network.recent_connections" => check_number(
            net.recent_connections.try_into().unwrap_or(u64::MAX),
            &RECENT_CONNECTIONS,
        ),
        "probes.network.cgroup"
            if !net.cgroup.is_absolute() && net.cgroup.as_os_str() != "auto" =>
        {
            Err(format!("{} is not an absolute path", net.cgroup.display()))
        }
        "probes.network.retain_exited" => check_duration(net.retain_exited, &RETAIN_EXITED),
        "probes.profiler.frequency" => check_number(prof.frequency.into(), &FREQUENCY),
        "probes.profiler.interval" => check_duration(prof.interval, &SYSCALLS_INTERVAL),
        "probes.profiler.max_entries" => check_number(prof.max_entries.into(), &MAP_ENTRIES),
        "probes.profiler.stack_entries" => check_number(prof.stack_entries.into(), &MAP_ENTRIES),
        "probes.profiler.max_processes" => check_number(
            prof.max_processes.try_into().unwrap_or(u64::MAX),
            &MAX_PROCESSES,
        ),
        "probes.profiler.symbol_cache" => check_number(
            prof.symbol_cache.try_into().unwrap_or(u64::MAX),
            &SYMBOL_CACHE,
        ),
        "probes.profiler.debug_info_max_bytes" => {
            check_number(prof.debug_info_max_bytes, &DEBUG_INFO_BYTES)
        }
        "probes.profiler.symbolizer_files" => check_number(
            prof.symbolizer_files.try_into().unwrap_or(u64::MAX),
            &SYMBOLIZER_FILES,
        ),
        "probes.profiler.unwinder"
            if prof.unwinder == super::ProfilerUnwinder::Dwarf
                && prof.mode == super::ProfilerMode::Stream =>
        {
            Err("dwarf is not available with mode: stream (it walks frame pointers)".to_string())
        }
        "probes.profiler.unwind_table_rows" => {
            check_number(prof.unwind_table_rows.into(), &UNWIND_ROWS)
        }
        p if p.starts_with("opamp.") => crate::opamp::config::check_field(&cfg.opamp, p),
        p if p.starts_with("self_protection.") => {
            crate::selfprotect::config::check_field(&cfg.self_protection, p)
        }
        p if p.starts_with("enforcement.") => {
            crate::enforcement::config::check_field(&cfg.enforcement, p)
        }
        _ => Ok(()),
    }
}

/// Checks every field in file order; the first problem found, not yet located in any file.
pub(crate) fn validate(cfg: &Config) -> Result<(), ConfigError> {
    for path in FIELDS {
        // The section checks itself (paths into its list of watches included).
        if *path == "detection" {
            if let Err(e) = cfg.detection.validate() {
                return Err(ConfigError::Invalid {
                    at: Box::new(Source::Unknown),
                    path: e.field,
                    problem: e.problem,
                    fix: format!("use {}", e.allowed),
                });
            }
        }
        if let Err(problem) = check_field(cfg, path) {
            return Err(ConfigError::Invalid {
                at: Box::new(Source::Unknown),
                path: (*path).to_string(),
                problem,
                fix: fix_for(path),
            });
        }
    }
    // Every enforcement rule, checked and compiled (`enforcement::rules`).
    if let Err(e) =
        crate::enforcement::rules::compile(&cfg.enforcement, cfg.probes.syscalls.interval)
    {
        return Err(ConfigError::Invalid {
            at: Box::new(Source::Unknown),
            path: e.path,
            problem: e.problem,
            fix: e.fix,
        });
    }
    // Every OTTL statement and condition, parsed and checked (`transform::config`).
    if let Err(e) = crate::transform::Pipeline::compile(&cfg.transform, &cfg.filter) {
        return Err(ConfigError::Invalid {
            at: Box::new(Source::Unknown),
            path: e.path,
            problem: e.problem,
            fix: e.fix,
        });
    }
    Ok(())
}
