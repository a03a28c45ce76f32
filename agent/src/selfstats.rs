//! The agent's own resource use (CPU, memory, threads, fds from `/proc/self`) and its pipeline
//! counters (eBPF events processed/lost per map, output batches/bytes), as a metric batch.
//!
//! Invariants: sampling never fails — a value that cannot be read is reported as 0; the batch is
//! computed on demand (per scrape) and is not stored.

use std::time::SystemTime;

use serde::Serialize;

use crate::{
    metrics::model::{attr, Batch, Desc, Family, Kind, Labels, Point, Value},
    status::state::AgentState,
};

/// The source name of [`batch`]'s output.
pub const SOURCE: &str = "agent";

pub const CPU_TIME: Desc = Desc {
    name: "process.cpu.time",
    unit: "s",
    help: "CPU time consumed by the agent (user + system).",
    kind: Kind::Counter,
};
pub const MEMORY_USAGE: Desc = Desc {
    name: "process.memory.usage",
    unit: "By",
    help: "Resident memory of the agent (VmRSS).",
    kind: Kind::Gauge,
};
pub const MEMORY_PEAK: Desc = Desc {
    name: "agent.memory.peak",
    unit: "By",
    help: "Peak resident memory of the agent (VmHWM).",
    kind: Kind::Gauge,
};
pub const THREADS: Desc = Desc {
    name: "process.thread.count",
    unit: "{thread}",
    help: "Threads of the agent process.",
    kind: Kind::Gauge,
};
pub const OPEN_FDS: Desc = Desc {
    name: "process.open_file_descriptor.count",
    unit: "{fd}",
    help: "Open file descriptors of the agent process.",
    kind: Kind::Gauge,
};
pub const UPTIME: Desc = Desc {
    name: "agent.uptime",
    unit: "s",
    help: "Time since the agent started.",
    kind: Kind::Gauge,
};
pub const EVENTS_PROCESSED: Desc = Desc {
    name: "agent.ebpf.events.processed",
    unit: "{event}",
    help: "Kernel events aggregated or read, per probe and map.",
    kind: Kind::Counter,
};
pub const EVENTS_LOST: Desc = Desc {
    name: "agent.ebpf.events.lost",
    unit: "{event}",
    help: "Kernel events that could not be accounted (insert failures, evictions, drops), per probe and map.",
    kind: Kind::Counter,
};
pub const PROFILER_STACKS: Desc = Desc {
    name: "agent.profiler.stacks",
    unit: "{sample}",
    help: "Profiler samples with a user stack, and (truncated=\"true\") those whose stack did not reach a process or thread entry point (no frame pointers, or deeper than 127 frames).",
    kind: Kind::Counter,
};
pub const MAP_ENTRIES: Desc = Desc {
    name: "agent.ebpf.map.entries",
    unit: "{entry}",
    help: "Entries in use in an eBPF map, per probe and map.",
    kind: Kind::Gauge,
};
pub const OUTPUT_BATCHES: Desc = Desc {
    name: "agent.output.batches",
    unit: "{batch}",
    help: "Metric batches written by the exporter.",
    kind: Kind::Counter,
};
pub const OUTPUT_BYTES: Desc = Desc {
    name: "agent.output.bytes",
    unit: "By",
    help: "Bytes written by the exporter.",
    kind: Kind::Counter,
};

pub const EXPORT_REQUESTS: Desc = Desc {
    name: "agent.export.requests",
    unit: "{request}",
    help: "OTLP export requests by signal and outcome (sent, retried, spooled, dropped, failed).",
    kind: Kind::Counter,
};
pub const EXPORT_POINTS: Desc = Desc {
    name: "agent.export.points",
    unit: "{point}",
    help: "Data points and log records by signal and outcome (sent, dropped, failed, rejected).",
    kind: Kind::Counter,
};
pub const EXPORT_QUEUED: Desc = Desc {
    name: "agent.export.queued",
    unit: "{request}",
    help: "OTLP requests waiting in the on-disk spool, by signal.",
    kind: Kind::Gauge,
};

/// Resource use of the current process.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SelfStats {
    /// utime + stime.
    pub cpu_seconds: f64,
    /// VmRSS.
    pub rss_bytes: u64,
    /// VmHWM.
    pub peak_rss_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
}

/// Reads `/proc/self` (through procfs: `stat` for CPU and threads, `status` for VmRSS and
/// VmHWM, `fd/` for descriptors); anything unreadable is 0.
pub fn sample() -> SelfStats {
    let mut s = SelfStats::default();
    let Ok(me) = procfs::process::Process::myself() else {
        return s;
    };
    if let Ok(stat) = me.stat() {
        s.cpu_seconds = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second().max(1) as f64;
        s.threads = stat.num_threads.max(0) as u64;
    }
    if let Ok(status) = me.status() {
        s.rss_bytes = status.vmrss.unwrap_or(0) * 1024;
        s.peak_rss_bytes = status.vmhwm.unwrap_or(0) * 1024;
    }
    if let Ok(n) = me.fd_count() {
        s.open_fds = n as u64;
    }
    s
}

/// The agent's self-metrics (source [`SOURCE`]); `start` is the start of the cumulative
/// window of its counters (normally `state.started_at`).
pub fn batch(stats: &SelfStats, state: &AgentState, start: SystemTime) -> Batch {
    let point = |labels: Labels, value: Value| Point {
        labels,
        value,
        start_time: start,
    };
    let single = |desc: Desc, value: Value| Family {
        desc,
        points: vec![point(Vec::new(), value)],
    };

    let mut families = vec![
        single(CPU_TIME, Value::Counter(stats.cpu_seconds)),
        single(MEMORY_USAGE, Value::Gauge(stats.rss_bytes as f64)),
        single(MEMORY_PEAK, Value::Gauge(stats.peak_rss_bytes as f64)),
        single(THREADS, Value::Gauge(stats.threads as f64)),
        single(OPEN_FDS, Value::Gauge(stats.open_fds as f64)),
        single(UPTIME, Value::Gauge(state.started.elapsed().as_secs_f64())),
    ];

    let maps = state.maps();
    let labels =
        |map: &str, probe: &str| -> Labels { vec![attr("probe", probe), attr("map", map)] };
    let mut processed = Family {
        desc: EVENTS_PROCESSED,
        points: Vec::new(),
    };
    let mut lost = Family {
        desc: EVENTS_LOST,
        points: Vec::new(),
    };
    let mut entries = Family {
        desc: MAP_ENTRIES,
        points: Vec::new(),
    };
    for (name, m) in &maps {
        processed.points.push(point(
            labels(name, &m.probe),
            Value::Counter(m.processed as f64),
        ));
        lost.points
            .push(point(labels(name, &m.probe), Value::Counter(m.lost as f64)));
        if let Some(n) = m.entries {
            entries
                .points
                .push(point(labels(name, &m.probe), Value::Gauge(n as f64)));
        }
    }
    if let Some(d) = maps.get("PROFILE_COUNTS").map(|m| &m.detail) {
        let n = |k: &str| d.get(k).copied().unwrap_or(0) as f64;
        let truncated = n("truncated_stacks");
        families.push(Family {
            desc: PROFILER_STACKS,
            points: vec![
                point(vec![attr("truncated", "true")], Value::Counter(truncated)),
                point(
                    vec![attr("truncated", "false")],
                    Value::Counter((n("user_stacks") - truncated).max(0.0)),
                ),
            ],
        });
    }
    families.push(processed);
    families.push(lost);
    if !entries.points.is_empty() {
        families.push(entries);
    }

    let exporter = state.exporter();
    families.push(single(
        OUTPUT_BATCHES,
        Value::Counter(exporter.batches_written as f64),
    ));
    families.push(single(
        OUTPUT_BYTES,
        Value::Counter(exporter.bytes_written as f64),
    ));

    if !exporter.signals.is_empty() {
        let mut requests = Family {
            desc: EXPORT_REQUESTS,
            points: Vec::new(),
        };
        let mut points = Family {
            desc: EXPORT_POINTS,
            points: Vec::new(),
        };
        let mut queued = Family {
            desc: EXPORT_QUEUED,
            points: Vec::new(),
        };
        for (signal, st) in &exporter.signals {
            let l = |outcome: &str| -> Labels {
                vec![attr("signal", signal.as_str()), attr("outcome", outcome)]
            };
            for (outcome, v) in [
                ("sent", st.sent_requests),
                ("retried", st.retried),
                ("spooled", st.spooled),
                ("dropped", st.dropped),
                ("failed", st.failed),
            ] {
                requests
                    .points
                    .push(point(l(outcome), Value::Counter(v as f64)));
            }
            for (outcome, v) in [
                ("sent", st.sent_points),
                ("dropped", st.dropped_points),
                ("failed", st.failed_points),
                ("rejected", st.rejected),
            ] {
                points
                    .points
                    .push(point(l(outcome), Value::Counter(v as f64)));
            }
            queued.points.push(point(
                vec![attr("signal", signal.as_str())],
                Value::Gauge(st.queued_requests as f64),
            ));
        }
        families.extend([requests, points, queued]);
    }

    Batch {
        source: SOURCE.to_string(),
        time: SystemTime::now(),
        families,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{metrics::prometheus, status::state::MapStats};

    #[test]
    fn samples_own_process() {
        let _keep = std::fs::File::open("/proc/self/stat").unwrap();
        let s = sample();
        assert!(s.rss_bytes > 0, "{s:?}");
        assert!(s.peak_rss_bytes >= s.rss_bytes, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
        // stdin/out/err may be closed under a harness, but `_keep` is open.
        assert!(s.open_fds >= 1, "{s:?}");
        assert!(s.cpu_seconds >= 0.0 && s.cpu_seconds < 1e6, "{s:?}");
        // Burn some CPU: the counter must not go down.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(sample().cpu_seconds >= s.cpu_seconds);
    }

    #[test]
    fn batch_has_every_family_with_prometheus_names() {
        let state = AgentState::new("h".into());
        state.set_map(
            "SYSCALL_STATS",
            MapStats {
                probe: "syscalls".into(),
                processed: 10,
                lost: 2,
                entries: Some(5),
                capacity: Some(100),
                ..Default::default()
            },
        );
        state.update_exporter(|e| {
            e.batches_written = 3;
            e.bytes_written = 4096;
        });
        let stats = SelfStats {
            cpu_seconds: 1.5,
            rss_bytes: 1024,
            peak_rss_bytes: 2048,
            threads: 4,
            open_fds: 9,
        };
        let b = batch(&stats, &state, state.started_at);
        assert_eq!(b.source, "agent");
        let names: Vec<String> = b
            .families
            .iter()
            .map(|f| prometheus::metric_name(&f.desc))
            .collect();
        assert_eq!(
            names,
            [
                "process_cpu_time_seconds_total",
                "process_memory_usage_bytes",
                "agent_memory_peak_bytes",
                "process_thread_count",
                "process_open_file_descriptor_count",
                "agent_uptime_seconds",
                "agent_ebpf_events_processed_total",
                "agent_ebpf_events_lost_total",
                "agent_ebpf_map_entries",
                "agent_output_batches_total",
                "agent_output_bytes_total",
            ]
        );
        let text = prometheus::encode(&[Arc::new(b)]);
        for line in [
            "process_cpu_time_seconds_total 1.5\n",
            "process_memory_usage_bytes 1024\n",
            "agent_memory_peak_bytes 2048\n",
            "process_thread_count 4\n",
            "process_open_file_descriptor_count 9\n",
            "agent_ebpf_events_processed_total{probe=\"syscalls\",map=\"SYSCALL_STATS\"} 10\n",
            "agent_ebpf_events_lost_total{probe=\"syscalls\",map=\"SYSCALL_STATS\"} 2\n",
            "agent_ebpf_map_entries{probe=\"syscalls\",map=\"SYSCALL_STATS\"} 5\n",
            "agent_output_batches_total 3\n",
            "agent_output_bytes_total 4096\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
