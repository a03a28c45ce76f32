//! The syscall latency probe: loads `syscalls.bpf.o` sized by the config, attaches the
//! `sys_enter`/`sys_exit` raw tracepoints, and drains the kernel histograms every interval on
//! its own thread into `process.syscall.duration` and `process.syscall.errors`.
//!
//! Invariants: attached means both hooks are attached (one alone is useless, so a half attach is
//! rolled back); on stop the hooks are detached *before* the final drain, so the last published
//! values are complete; map sizes change only by reloading the probe.

pub mod aggregate;
pub mod names;
pub mod reader;

use std::{
    sync::{mpsc, Arc},
    thread,
    time::{Instant, SystemTime},
};

use agent_common::syscalls::{
    COUNTERS_MAP, ERRORS_MAP, FAST_MAP, FAST_SHIFT_GLOBAL, INFLIGHT_MAP, INFLIGHT_MASK_GLOBAL,
    STATS_MAP,
};
use aya::{programs::RawTracePoint, Ebpf};

use self::{
    aggregate::{Aggregator, Attribution, Limits},
    reader::Maps,
};
use crate::{
    config::SyscallsConfig,
    ebpf::{self, LoadError},
    metrics::{model::Batch, Store},
    procinfo::{self, ProcCache},
    status::state::{AgentState, HookStatus, MapStats, ProbeState},
};

pub const NAME: &str = "syscalls";
/// (program, raw tracepoint) pairs.
pub const HOOKS: [(&str, &str); 2] = [
    ("syscalls_enter", "sys_enter"),
    ("syscalls_exit", "sys_exit"),
];

enum Ctl {
    Config(SyscallsConfig),
    Stop,
}

struct Running {
    cfg: SyscallsConfig,
    bpf: Ebpf,
    logger: Option<tokio::task::JoinHandle<()>>,
    ctl: mpsc::Sender<Ctl>,
    thread: thread::JoinHandle<()>,
}

pub struct SyscallsProbe {
    store: Arc<Store>,
    state: Arc<AgentState>,
    running: Option<Running>,
}

fn hook_name(tp: &str) -> String {
    format!("raw_tracepoint/{tp}")
}

/// Every hook, none attached.
fn detached_hooks() -> Vec<HookStatus> {
    HOOKS
        .iter()
        .map(|(_, tp)| HookStatus {
            hook: hook_name(tp),
            attached: false,
            error: None,
        })
        .collect()
}

/// Loads the object sized by `cfg` and attaches both hooks. On failure nothing stays attached.
pub fn load_and_attach(
    cfg: &SyscallsConfig,
) -> Result<(Ebpf, Vec<HookStatus>), (LoadError, Vec<HookStatus>)> {
    let mask = cfg.inflight_slots - 1;
    // The fast table: `cpus × fast_slots` entries, or a 1-entry stub with the shift "off".
    let cpus = aya::util::nr_cpus().unwrap_or(1) as u32;
    let (fast_entries, fast_shift) = match cfg.fast_slots {
        0 => (1, 32u32),
        n => (cpus.saturating_mul(n), n.trailing_zeros()),
    };
    let mut hooks = detached_hooks();
    let mut bpf = ebpf::load(NAME, |l| {
        l.map_max_entries(STATS_MAP, cfg.max_entries)
            .map_max_entries(ERRORS_MAP, cfg.error_entries)
            .map_max_entries(INFLIGHT_MAP, cfg.inflight_slots)
            .map_max_entries(FAST_MAP, fast_entries)
            .override_global(INFLIGHT_MASK_GLOBAL, &mask, true)
            .override_global(FAST_SHIFT_GLOBAL, &fast_shift, true);
    })
    .map_err(|e| (e, hooks.clone()))?;
    for (i, (prog, tp)) in HOOKS.iter().enumerate() {
        let what = format!("attaching {} to {}", prog, hook_name(tp));
        let result = (|| -> Result<(), LoadError> {
            let p: &mut RawTracePoint = bpf
                .program_mut(prog)
                .ok_or_else(|| {
                    LoadError::new(
                        format!("{what}: program missing from the object"),
                        "rebuild with `cargo xtask build-ebpf`",
                    )
                })?
                .try_into()
                .map_err(|e| ebpf::explain(&what, &e))?;
            p.load()
                .map_err(|e| ebpf::explain(&format!("verifying {prog}"), &e))?;
            p.attach(tp).map_err(|e| ebpf::explain(&what, &e))?;
            Ok(())
        })();
        match result {
            Ok(()) => hooks[i].attached = true,
            Err(e) => {
                hooks[i].error = Some(e.cause.clone());
                // Dropping the object detaches whatever did attach.
                drop(bpf);
                for h in &mut hooks {
                    h.attached = false;
                }
                return Err((e, hooks));
            }
        }
    }
    Ok((bpf, hooks))
}

impl SyscallsProbe {
    pub fn new(store: Arc<Store>, state: Arc<AgentState>) -> Self {
        SyscallsProbe {
            store,
            state,
            running: None,
        }
    }

    /// Brings the probe in line with `cfg`: start, stop, reload (map sizes) or retune.
    pub fn apply(&mut self, cfg: &SyscallsConfig) {
        if !cfg.enabled {
            self.stop();
            self.store.remove(NAME);
            self.set_status(ProbeState::Disabled, None, vec![]);
            return;
        }
        if let Some(r) = &mut self.running {
            let resized = r.cfg.max_entries != cfg.max_entries
                || r.cfg.error_entries != cfg.error_entries
                || r.cfg.inflight_slots != cfg.inflight_slots
                || r.cfg.fast_slots != cfg.fast_slots;
            if !resized {
                let _ = r.ctl.send(Ctl::Config(cfg.clone()));
                r.cfg = cfg.clone();
                return;
            }
            tracing::info!(
                probe = NAME,
                "map sizes changed: reloading the probe (its series restart)"
            );
            self.stop();
        }
        self.start(cfg);
    }

    fn set_status(&self, state: ProbeState, err: Option<&LoadError>, hooks: Vec<HookStatus>) {
        super::report(&self.state, NAME, state, err, hooks);
    }

    fn start(&mut self, cfg: &SyscallsConfig) {
        self.set_status(ProbeState::Starting, None, vec![]);
        let (mut bpf, hooks) = match load_and_attach(cfg) {
            Ok(x) => x,
            Err((e, hooks)) => {
                super::report_failure(&self.state, NAME, &e, hooks);
                return;
            }
        };
        let maps = match take_maps(&mut bpf, cfg.fast_slots > 0) {
            Ok(m) => m,
            Err(e) => {
                super::report_failure(&self.state, NAME, &e, hooks);
                return;
            }
        };
        let programs = program_fds(&bpf);
        let logger = ebpf::logger::spawn(NAME, &mut bpf);
        let (tx, rx) = mpsc::channel();
        let drain = Drainer {
            maps,
            programs,
            warned_misses: Default::default(),
            cfg: cfg.clone(),
            agg: Aggregator::new(),
            cache: ProcCache::new(8192),
            store: self.store.clone(),
            state: self.state.clone(),
        };
        let thread = match super::spawn_drain(NAME, move || drain.run(rx)) {
            Ok(t) => t,
            Err(e) => {
                super::report_failure(&self.state, NAME, &e, hooks);
                return;
            }
        };
        tracing::info!(probe = NAME, interval = ?cfg.interval, max_entries = cfg.max_entries, "attached raw_syscalls sys_enter/sys_exit");
        self.set_status(ProbeState::Attached, None, hooks);
        self.running = Some(Running {
            cfg: cfg.clone(),
            bpf,
            logger,
            ctl: tx,
            thread,
        });
    }

    /// Detaches, then drains one last time so the final values are published.
    pub fn stop(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        drop(r.bpf); // detaches both programs
        if let Some(l) = r.logger {
            l.abort();
        }
        let _ = r.ctl.send(Ctl::Stop);
        let _ = r.thread.join();
        self.set_status(ProbeState::Detached, None, detached_hooks());
        tracing::info!(probe = NAME, "detached");
    }
}

fn program_fds(bpf: &Ebpf) -> Vec<aya::programs::ProgramFd> {
    HOOKS
        .iter()
        .filter_map(|(prog, _)| bpf.program(prog)?.fd().ok()?.try_clone().ok())
        .collect()
}

fn take<T>(bpf: &mut Ebpf, name: &str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    ebpf::take_map(bpf, NAME, name)
}

fn take_maps(bpf: &mut Ebpf, fast_on: bool) -> Result<Maps, LoadError> {
    Ok(Maps {
        stats: take(bpf, STATS_MAP)?,
        errors: take(bpf, ERRORS_MAP)?,
        counters: take(bpf, COUNTERS_MAP)?,
        fast: if fast_on {
            Some(take(bpf, FAST_MAP)?)
        } else {
            None
        },
    })
}

struct Drainer {
    maps: Maps,
    /// Our programs' fds (clones), to read the kernel's recursion-miss counts.
    programs: Vec<aya::programs::ProgramFd>,
    warned_misses: std::cell::Cell<bool>,
    cfg: SyscallsConfig,
    agg: Aggregator,
    cache: ProcCache,
    store: Arc<Store>,
    state: Arc<AgentState>,
}

impl Drainer {
    fn run(mut self, rx: mpsc::Receiver<Ctl>) {
        let mut next = Instant::now() + self.cfg.interval;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Ctl::Config(c)) => {
                    next = next.min(Instant::now() + c.interval);
                    self.cfg = c;
                }
                Ok(Ctl::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.drain_once();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.drain_once();
                    next = Instant::now() + self.cfg.interval;
                }
            }
        }
    }

    fn drain_once(&mut self) {
        let started = Instant::now();
        let drained = match self.maps.drain() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(probe = NAME, "drain failed: {e}");
                return;
            }
        };
        let limits = Limits {
            top_processes: self.cfg.top_processes,
            retain_exited: self.cfg.retain_exited,
        };
        let reader::Drained {
            stats,
            errors,
            stats_entries,
            error_entries,
            final_stats,
            final_errors,
            final_fast,
            fast_entries,
        } = drained;
        let cache = &mut self.cache;
        let finals = self.agg.ingest(
            stats,
            errors,
            &limits,
            Instant::now(),
            SystemTime::now(),
            |pid, comm, cgroup| {
                let info = cache.get(pid, comm, cgroup);
                Attribution {
                    exe_name: info.exe_name,
                    container_id: info.container_id,
                    workload: info.workload,
                }
            },
        );
        self.maps.delete(&final_stats, &final_errors, &final_fast);
        for pid in &finals {
            self.cache.forget(*pid);
        }
        // Tracked processes with no kernel entries left expire once they are gone.
        for pid in self.agg.live_pids() {
            if !procinfo::alive(pid) {
                self.agg.mark_exited(pid, Instant::now());
                self.cache.forget(pid);
            }
        }
        let families = self.agg.families(names::syscall_name, names::errno_name);
        self.store.publish(Batch {
            source: NAME.to_string(),
            time: SystemTime::now(),
            families,
        });
        self.report(stats_entries, error_entries, fast_entries);
        tracing::debug!(probe = NAME, entries = stats_entries, took = ?started.elapsed(), "drained");
    }

    fn report(&self, stats_entries: u64, error_entries: u64, fast_entries: u64) {
        let k = self.maps.counters();
        let acc = &self.agg.accounting;
        let mut detail: std::collections::BTreeMap<String, u64> =
            k.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        detail.insert("evictions_detected".into(), acc.evictions_detected);
        detail.insert("folded_processes".into(), acc.folded_processes);
        detail.insert("expired_processes".into(), acc.expired_processes);
        detail.insert("tracked_processes".into(), acc.tracked_processes);
        let processed = self.agg.total_calls();
        use std::os::fd::AsFd;
        let recursion_misses: u64 = self
            .programs
            .iter()
            .filter_map(|p| match ebpf::recursion_misses(p.as_fd()) {
                Ok(n) => Some(n),
                Err(e) => {
                    if !self.warned_misses.replace(true) {
                        tracing::warn!(probe = NAME, "cannot read program recursion misses: {e}");
                    }
                    None
                }
            })
            .sum();
        detail.insert("recursion_misses".into(), recursion_misses);
        detail.insert("calls".into(), processed);
        detail.insert("fast_entries".into(), fast_entries);
        let lost = k["unmatched_exits"]
            + k["slot_collisions"]
            + k["stats_insert_failed"]
            + k["nr_out_of_range"]
            + acc.evictions_detected
            + recursion_misses;
        self.state.set_map(
            STATS_MAP,
            MapStats {
                probe: NAME.into(),
                processed,
                lost,
                entries: Some(stats_entries),
                capacity: Some(self.cfg.max_entries as u64),
                detail,
            },
        );
        self.state.set_map(
            ERRORS_MAP,
            MapStats {
                probe: NAME.into(),
                processed: self.agg.total_errors(),
                lost: k["errors_insert_failed"],
                entries: Some(error_entries),
                capacity: Some(self.cfg.error_entries as u64),
                detail: Default::default(),
            },
        );
    }
}
