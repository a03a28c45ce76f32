//! `agent check`: what this host lets the agent do, and why not where it does not.
//!
//! Every probe is tried for real (loaded, verified, attached, then detached), so "ok" means it
//! will run. The check fails (non-zero exit) when no probe can run, or when a configured OpAMP
//! server cannot be used (that row comes from `opamp::check`).

use std::{fmt::Write as _, fs, path::Path};

use crate::{
    config::Config,
    ebpf::{tracefs, LoadError},
    probes::{network, profiler, syscalls},
    procinfo,
    status::state::HookStatus,
};

/// Which user-stack walker works here: the DWARF unwinder is tried for real (verified,
/// attached, detached) whatever the config picks.
fn unwinder_row(prof: &crate::config::ProfilerConfig) -> Row {
    use crate::config::{ProfilerMode, ProfilerUnwinder};
    let dwarf = crate::config::ProfilerConfig {
        unwinder: ProfilerUnwinder::Dwarf,
        mode: ProfilerMode::Aggregate,
        ..prof.clone()
    };
    let configured = prof.unwinder.as_str();
    match profiler::session::Session::start(&dwarf) {
        Ok(_) => row(
            "profiler unwinder",
            Verdict::Ok,
            format!(
                "dwarf works (.eh_frame tables walked in the kernel, frame pointers where a \
                 binary has none); configured: {configured}"
            ),
            None,
        ),
        Err((e, _)) => row(
            "profiler unwinder",
            Verdict::Warn,
            format!(
                "frame pointers only: the DWARF unwinder cannot run ({})",
                e.cause
            ),
            Some(&e.fix),
        ),
    }
}

/// Loads, attaches and drops one probe; its hooks, or why it cannot run.
type ProbeAttempt<'a> = &'a dyn Fn() -> Result<Vec<HookStatus>, (LoadError, Vec<HookStatus>)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub item: String,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

fn row(item: &str, verdict: Verdict, detail: impl Into<String>, fix: Option<&str>) -> Row {
    Row {
        item: item.to_string(),
        verdict,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

/// Capabilities the agent uses, by number (linux/capability.h).
const CAPS: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load programs and create maps"),
    (38, "CAP_PERFMON", "tracing programs and perf events"),
    (
        21,
        "CAP_SYS_ADMIN",
        "older kernels, tracefs mount, some map types",
    ),
    (12, "CAP_NET_ADMIN", "network probes and enforcement"),
];

fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Runs every check. `probes_ok` tells whether at least one probe can run.
pub fn run(cfg: &Config) -> (Vec<Row>, bool) {
    let mut rows = Vec::new();
    let uname = nix_uname();
    rows.push(row("kernel", Verdict::Ok, uname, None));

    let btf = Path::new("/sys/kernel/btf/vmlinux");
    rows.push(if btf.exists() {
        row("btf", Verdict::Ok, btf.display().to_string(), None)
    } else {
        row(
            "btf",
            Verdict::Warn,
            "no /sys/kernel/btf/vmlinux",
            Some("probes here do not need BTF; later CO-RE probes will (CONFIG_DEBUG_INFO_BTF=y)"),
        )
    });

    rows.push(match tracefs::ensure() {
        Ok(p) => row("tracefs", Verdict::Ok, p.display().to_string(), None),
        Err(e) => row("tracefs", Verdict::Warn, e, Some("mount it: mount -t tracefs tracefs /sys/kernel/tracing (raw tracepoints work without it)")),
    });

    match effective_caps() {
        Some(caps) => {
            for (bit, name, why) in CAPS {
                let has = caps & (1u64 << bit) != 0;
                rows.push(if has {
                    row(&format!("capability {name}"), Verdict::Ok, *why, None)
                } else {
                    row(
                        &format!("capability {name}"),
                        Verdict::Warn,
                        format!("missing: needed to {why}"),
                        Some("run as root or grant it (securityContext.capabilities / AmbientCapabilities)"),
                    )
                });
            }
        }
        None => rows.push(row(
            "capabilities",
            Verdict::Warn,
            "cannot read CapEff from /proc/self/status",
            None,
        )),
    }

    rows.push(match procinfo::cgroup2_root() {
        Some(p) => row("cgroup v2", Verdict::Ok, p.display().to_string(), None),
        None => row(
            "cgroup v2",
            Verdict::Warn,
            "not mounted: container ids only from /proc/<pid>/cgroup",
            None,
        ),
    });

    rows.extend(kernel_features());

    let mut probes_ok = false;
    let sys = &cfg.probes.syscalls;
    let net = &cfg.probes.network;
    let prof = &cfg.probes.profiler;
    let attempts: [(&str, bool, ProbeAttempt); 3] = [
        ("syscalls", sys.enabled, &|| {
            syscalls::load_and_attach(sys).map(|(_, hooks)| hooks)
        }),
        ("network", net.enabled, &|| {
            network::load_and_attach(net).map(|(_, hooks)| hooks)
        }),
        ("profiler", prof.enabled, &|| {
            profiler::session::Session::start(prof).map(|s| s.hooks.clone())
        }),
    ];
    for (name, enabled, attempt) in attempts {
        let item = format!("probe {name}");
        if !enabled {
            rows.push(row(&item, Verdict::Warn, "disabled in the config", None));
            continue;
        }
        // The loaded object is dropped inside `attempt`: attached, then detached.
        match attempt() {
            Ok(hooks) => {
                probes_ok = true;
                let ok: Vec<_> = hooks
                    .iter()
                    .filter(|h| h.attached)
                    .map(|h| h.hook.as_str())
                    .collect();
                let failed: Vec<_> = hooks.iter().filter_map(|h| h.error.as_deref()).collect();
                rows.push(if failed.is_empty() {
                    row(
                        &item,
                        Verdict::Ok,
                        format!("{} attach", ok.join(", ")),
                        None,
                    )
                } else {
                    row(
                        &item,
                        Verdict::Warn,
                        format!("{} attach; {}", ok.join(", "), failed.join("; ")),
                        Some("the probe runs degraded; see the hook errors"),
                    )
                });
            }
            Err((e, _)) => rows.push(Row {
                item,
                verdict: Verdict::Fail,
                detail: e.cause,
                fix: Some(e.fix),
            }),
        }
    }
    if prof.enabled {
        rows.push(unwinder_row(prof));
    }
    rows.push(export_row(cfg));
    (rows, probes_ok)
}

/// Where data goes: the resolved OTLP targets, or local files; a bad `OTEL_EXPORTER_OTLP_*`
/// value fails with its cause and fix (the agent would fall back to files).
fn export_row(cfg: &Config) -> Row {
    match crate::export::settings::resolve(&cfg.export, &cfg.output.dir, |k| std::env::var(k).ok())
    {
        Ok(s) if s.targets.is_empty() => row(
            "export",
            Verdict::Ok,
            format!(
                "no endpoint: OTLP JSON lines under {}",
                cfg.output.dir.display()
            ),
            None,
        ),
        Ok(s) => row(
            "export",
            Verdict::Ok,
            s.targets
                .iter()
                .map(|t| format!("{} {}", t.protocol.as_str(), t.url))
                .collect::<Vec<_>>()
                .join(", "),
            None,
        ),
        Err(e) => Row {
            item: "export".into(),
            verdict: Verdict::Fail,
            detail: e.cause,
            fix: Some(e.fix),
        },
    }
}

/// Kernel features the agent's probes use or will use, probed by loading a minimal program or
/// creating a minimal map (aya's feature probes). Warnings only: no probe of today needs them.
fn kernel_features() -> Vec<Row> {
    use aya::{maps::MapType, programs::ProgramType, sys};
    let mut rows = Vec::new();
    let verdict = |item: &str, r: Option<bool>, used_for: &str| match r {
        Some(true) => row(item, Verdict::Ok, format!("supported ({used_for})"), None),
        Some(false) => row(
            item,
            Verdict::Warn,
            format!("not supported: {used_for} cannot run"),
            None,
        ),
        None => row(
            item,
            Verdict::Warn,
            "could not be probed (see the capability rows)",
            None,
        ),
    };
    for (name, map, used_for) in [
        ("feature ring buffer", MapType::RingBuf, "per-event streams"),
        (
            "feature stack trace map",
            MapType::StackTrace,
            "CPU profiler",
        ),
    ] {
        rows.push(verdict(name, sys::is_map_supported(map).ok(), used_for));
    }
    for (name, prog, used_for) in [
        (
            "feature perf_event programs",
            ProgramType::PerfEvent,
            "CPU profiler",
        ),
        (
            "feature sock_ops programs",
            ProgramType::SockOps,
            "TCP RTT callbacks",
        ),
        (
            "feature cgroup_skb programs",
            ProgramType::CgroupSkb,
            "enforcement",
        ),
        (
            "feature sched_cls programs",
            ProgramType::SchedClassifier,
            "TC enforcement",
        ),
    ] {
        rows.push(verdict(
            name,
            sys::is_program_supported(prog).ok(),
            used_for,
        ));
    }
    // kprobes need the kernel's kprobe PMU (CONFIG_KPROBES); the program type alone loads anyway.
    rows.push(
        if Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            row("feature kprobes", Verdict::Ok, "kprobe PMU present", None)
        } else {
            row(
                "feature kprobes",
                Verdict::Warn,
                "no kprobe PMU (CONFIG_KPROBES off): probes use tracepoints instead",
                None,
            )
        },
    );
    rows
}

fn nix_uname() -> String {
    let read = |f: &str| {
        fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} {}",
        read("/proc/sys/kernel/osrelease"),
        std::env::consts::ARCH
    )
}

/// The table as printed by `agent check`.
pub fn render(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.item.len()).max().unwrap_or(0).max(5);
    let mut out = format!("{:width$}  {:6}  DETAIL\n", "CHECK", "STATUS");
    for r in rows {
        let v = match r.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "{:width$}  {:6}  {}", r.item, v, r.detail);
        if let Some(fix) = &r.fix {
            let _ = writeln!(out, "{:width$}  {:6}  fix: {}", "", "", fix);
        }
    }
    out
}
