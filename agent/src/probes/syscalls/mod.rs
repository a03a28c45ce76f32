//! The syscall latency probe: loads `syscalls.bpf.o` sized by the config, attaches the
//! `sys_enter`/`sys_exit` raw tracepoints (and the `sched_process_exec`/`sched_process_exit`
//! tracepoints that tell process incarnations apart), and drains the kernel histograms every
//! interval on its own thread: per-incarnation increments (`deltas.rs`) go to the activity
//! feed (signals, before any folding) and into the exported `process.syscall.duration` and
//! `process.syscall.errors` series (`series.rs`: top-N by activity, aggregation levels).
//!
//! Invariants: attached means both raw_syscalls hooks are attached (one alone is useless, so a
//! half attach is rolled back); without the sched hooks the probe is degraded (a pid reused
//! within one interval, or an exec, may mix) and says so; on stop the hooks are detached
//! *before* the final drain, so the last published values are complete; map sizes change only
//! by reloading the probe (the shared lifecycle in `probes/lifecycle.rs`); the aggregation
//! level changes by restarting the exported series (the kernel state is kept).

pub mod deltas;
pub mod hist;
pub mod identity;
pub mod names;
pub mod reader;
pub mod series;

use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::syscalls::{
    ProcEvent, COUNTERS_MAP, DEFAULT_EXEC_FILENAME_OFF, DEFAULT_GROUP_DEAD_OFF, ERRORS_MAP,
    ERRORS_OVERFLOW_MAP, EXEC_FILENAME_GLOBAL, EXIT_GROUP_DEAD_GLOBAL, FAST_MAP, FAST_SHIFT_GLOBAL,
    INFLIGHT_MAP, INFLIGHT_MASK_GLOBAL, NO_FIELD, OVERFLOW_MAP, PROC_EVENTS_MAP, PROC_GEN_MAP,
    STATS_MAP,
};
use aya::{
    maps::{MapData, RingBuf},
    programs::{RawTracePoint, TracePoint},
    Ebpf,
};

use self::{
    deltas::{Deltas, ProcDelta, ProcKey},
    identity::Identities,
    reader::Maps,
    series::{Identity, Limits, Series},
};
use super::lifecycle::{ProbeEnv, ProbeSpec, ProbeWorker, StartResult};
use super::waker::poll_readable;
use crate::{
    config::SyscallsConfig,
    ebpf::{self, tracefs, LoadError},
    metrics::{model::Batch, Store},
    signals::{Activity, ActivityBatch, ActivityHub, ProcessRef, SyscallActivity, SyscallDelta},
    status::state::{AgentState, HookStatus, MapStats},
};

pub const NAME: &str = "syscalls";
/// (program, raw tracepoint) pairs: both or none.
pub const HOOKS: [(&str, &str); 2] = [
    ("syscalls_enter", "sys_enter"),
    ("syscalls_exit", "sys_exit"),
];
/// (program, tracepoint category, name): process incarnations (optional).
pub const SCHED_HOOKS: [(&str, &str, &str); 2] = [
    ("syscalls_exec", "sched", "sched_process_exec"),
    ("syscalls_exit_group", "sched", "sched_process_exit"),
];

fn hook_name(tp: &str) -> String {
    format!("raw_tracepoint/{tp}")
}

/// Every hook, none attached.
fn detached_hooks() -> Vec<HookStatus> {
    HOOKS
        .iter()
        .map(|(_, tp)| hook_name(tp))
        .chain(
            SCHED_HOOKS
                .iter()
                .map(|(_, c, n)| format!("tracepoint/{c}/{n}")),
        )
        .map(|hook| HookStatus {
            hook,
            attached: false,
            error: None,
        })
        .collect()
}

/// Offsets of the sched tracepoint fields this kernel has (tracefs `format` files).
fn sched_offsets() -> (u32, u32) {
    let group_dead = tracefs::field_offset("sched", "sched_process_exit", "group_dead");
    let filename = tracefs::field_offset("sched", "sched_process_exec", "filename");
    if tracefs::find().is_none() {
        // Unknown: the defaults of current kernels (the hooks will not attach anyway).
        return (DEFAULT_GROUP_DEAD_OFF, DEFAULT_EXEC_FILENAME_OFF);
    }
    (group_dead.unwrap_or(NO_FIELD), filename.unwrap_or(NO_FIELD))
}

/// Loads the object sized by `cfg` and attaches the raw_syscalls hooks (required: on failure
/// nothing stays attached) and the sched hooks (optional: a failure marks its hook).
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
    let _ = tracefs::ensure();
    let (group_dead_off, filename_off) = sched_offsets();
    let mut hooks = detached_hooks();
    let mut bpf = ebpf::load(NAME, |l| {
        l.map_max_entries(STATS_MAP, cfg.max_entries)
            .map_max_entries(ERRORS_MAP, cfg.error_entries)
            .map_max_entries(INFLIGHT_MAP, cfg.inflight_slots)
            .map_max_entries(FAST_MAP, fast_entries)
            .map_max_entries(PROC_GEN_MAP, cfg.max_processes)
            .override_global(INFLIGHT_MASK_GLOBAL, &mask, true)
            .override_global(FAST_SHIFT_GLOBAL, &fast_shift, true)
            .override_global(EXIT_GROUP_DEAD_GLOBAL, &group_dead_off, true)
            .override_global(EXEC_FILENAME_GLOBAL, &filename_off, true);
    })
    .map_err(|e| (e, hooks.clone()))?;
    // The sched hooks first: generations must be tracked before any call is counted.
    for (i, (prog, category, event)) in SCHED_HOOKS.iter().enumerate() {
        let what = format!("attaching {prog} to tracepoint {category}/{event}");
        let result = (|| -> Result<(), LoadError> {
            tracefs::ensure().map_err(|e| {
                LoadError::new(
                    format!("{what}: {e}"),
                    "mount tracefs: mount -t tracefs tracefs /sys/kernel/tracing",
                )
            })?;
            let p: &mut TracePoint = ebpf::program(&mut bpf, NAME, prog)?;
            p.load()
                .map_err(|e| ebpf::explain(&format!("verifying {prog}"), &e))?;
            p.attach(category, event)
                .map_err(|e| ebpf::explain(&what, &e))?;
            Ok(())
        })();
        let h = &mut hooks[HOOKS.len() + i];
        match result {
            Ok(()) => h.attached = true,
            Err(e) => {
                tracing::warn!(probe = NAME, "{}; a pid reused within one drain interval, or an exec, may mix with what the pid was before", e.cause);
                tracing::warn!(probe = NAME, "fix: {}", e.fix);
                h.error = Some(e.cause);
            }
        }
    }
    for (i, (prog, tp)) in HOOKS.iter().enumerate() {
        let what = format!("attaching {} to {}", prog, hook_name(tp));
        let result = (|| -> Result<(), LoadError> {
            let p: &mut RawTracePoint = ebpf::program(&mut bpf, NAME, prog)?;
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

/// The syscall probe for the shared lifecycle.
pub struct Syscalls;

impl ProbeSpec for Syscalls {
    type Config = SyscallsConfig;
    type Worker = Drainer;
    const NAME: &'static str = NAME;
    const FEEDS_SIGNALS: bool = true;

    fn enabled(cfg: &SyscallsConfig) -> bool {
        cfg.enabled
    }

    fn needs_reload(a: &SyscallsConfig, b: &SyscallsConfig) -> bool {
        a.max_entries != b.max_entries
            || a.error_entries != b.error_entries
            || a.inflight_slots != b.inflight_slots
            || a.fast_slots != b.fast_slots
            || a.max_processes != b.max_processes
    }

    fn reload_reason() -> &'static str {
        "map sizes changed: reloading the probe (its series restart)"
    }

    fn detached_hooks(_: &SyscallsConfig) -> Vec<HookStatus> {
        detached_hooks()
    }

    fn start(cfg: &SyscallsConfig, env: &ProbeEnv) -> StartResult<Drainer> {
        let (mut bpf, hooks) = load_and_attach(cfg)?;
        let exit_hook = hooks[HOOKS.len() + 1].attached;
        let taken = (|| -> Result<_, LoadError> {
            let maps = Maps {
                stats: take(&mut bpf, STATS_MAP)?,
                errors: take(&mut bpf, ERRORS_MAP)?,
                counters: take(&mut bpf, COUNTERS_MAP)?,
                fast: if cfg.fast_slots > 0 {
                    Some(take(&mut bpf, FAST_MAP)?)
                } else {
                    None
                },
                overflow: take(&mut bpf, OVERFLOW_MAP)?,
                errors_overflow: take(&mut bpf, ERRORS_OVERFLOW_MAP)?,
                proc_gen: take(&mut bpf, PROC_GEN_MAP)?,
                exit_hook,
            };
            let events: RingBuf<MapData> = take(&mut bpf, PROC_EVENTS_MAP)?;
            Ok((maps, events))
        })();
        let (maps, events) = match taken {
            Ok(x) => x,
            Err(e) => return Err((e, hooks)),
        };
        let programs = program_fds(&bpf);
        let logger = ebpf::logger::spawn(NAME, &mut bpf);
        tracing::info!(probe = NAME, interval = ?cfg.interval, max_entries = cfg.max_entries, aggregation = cfg.aggregation.as_str(), "attached raw_syscalls sys_enter/sys_exit");
        let drainer = Drainer {
            bpf: Some(bpf),
            logger,
            maps,
            events,
            programs,
            warned_misses: Default::default(),
            cfg: cfg.clone(),
            deltas: Deltas::new(),
            series: Series::new(cfg.aggregation),
            ids: Identities::new(8192),
            known: HashMap::new(),
            last_folded: 0,
            last_read: (Instant::now(), SystemTime::now()),
            store: env.store.clone(),
            state: env.state.clone(),
            activity: env.activity.clone(),
        };
        Ok((drainer, hooks))
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

pub struct Drainer {
    /// The loaded object: dropping it detaches the programs (the maps were taken out of it).
    bpf: Option<Ebpf>,
    logger: Option<tokio::task::JoinHandle<()>>,
    maps: Maps,
    events: RingBuf<MapData>,
    /// Our programs' fds (clones), to read the kernel's recursion-miss counts.
    programs: Vec<aya::programs::ProgramFd>,
    warned_misses: std::cell::Cell<bool>,
    cfg: SyscallsConfig,
    deltas: Deltas,
    series: Series,
    ids: Identities,
    /// Identities of the live incarnations seen (fixed at first sight).
    known: HashMap<ProcKey, Identity>,
    /// The kernel's fold counters at the last drain (the overflow is read when they move).
    last_folded: u64,
    /// When the kernel maps were last read.
    last_read: (Instant, SystemTime),
    store: Arc<Store>,
    state: Arc<AgentState>,
    activity: ActivityHub,
}

impl ProbeWorker for Drainer {
    type Config = SyscallsConfig;

    fn period(&self) -> Duration {
        self.cfg.interval
    }

    /// Wakes for exec events, so the new incarnation is named while it still runs.
    fn wait(&mut self, timeout: Duration, wake: Option<BorrowedFd<'_>>) {
        let mut fds = vec![self.events.as_fd()];
        fds.extend(wake);
        let _ = poll_readable(&fds, timeout);
    }

    fn poll(&mut self) {
        self.read_events();
    }

    fn tick(&mut self) {
        self.drain_once();
    }

    fn retune(&mut self, cfg: &SyscallsConfig) {
        if cfg.aggregation != self.series.level() {
            tracing::info!(
                probe = NAME,
                aggregation = cfg.aggregation.as_str(),
                "aggregation changed: the exported syscall series restart"
            );
            self.series = Series::new(cfg.aggregation);
        }
        self.cfg = cfg.clone();
    }

    fn finish(mut self) {
        drop(self.bpf.take()); // detaches every program
        if let Some(l) = self.logger.take() {
            l.abort();
        }
        self.read_events();
        self.drain_once();
    }
}

impl Drainer {
    fn read_events(&mut self) {
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<ProcEvent>() {
                // SAFETY: the kernel wrote a whole ProcEvent (repr(C), plain data); the read is
                // unaligned-safe.
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ProcEvent) });
            }
        }
        for ev in events {
            let maps = &self.maps;
            self.ids.on_exec(&ev, |tgid| maps.current_gen(tgid));
        }
    }

    fn drain_once(&mut self) {
        let started = Instant::now();
        let counters = self.maps.counters();
        let folded = counters["stats_folded"] + counters["errors_folded"];
        let drained = match self.maps.drain(folded != self.last_folded) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(probe = NAME, "drain failed: {e}");
                return;
            }
        };
        self.last_folded = folded;
        let read_at = (Instant::now(), SystemTime::now());
        let (interval_start, elapsed) =
            (self.last_read.1, read_at.0.duration_since(self.last_read.0));
        self.last_read = read_at;

        let reader::Drained {
            stats,
            errors,
            overflow,
            stats_entries,
            error_entries,
            fast_entries,
            finals,
        } = drained;
        let proc_deltas = self.deltas.ingest(stats, errors);
        let overflow = match overflow {
            Some((s, e)) => self.deltas.overflow(s, e),
            None => Default::default(),
        };
        self.maps.delete(&finals);

        // Names at first sight, fixed for the incarnation's life.
        for d in &proc_deltas {
            if !self.known.contains_key(&d.proc) {
                let maps = &self.maps;
                let id = self
                    .ids
                    .resolve(d.proc, &d.comm, d.cgroup_id, |tgid| maps.current_gen(tgid));
                self.known.insert(d.proc, id);
            }
        }
        if self.activity.has_subscribers() {
            self.activity.publish(ActivityBatch {
                source: NAME,
                time: read_at.1,
                elapsed,
                published: SystemTime::now(),
                activity: Activity::Syscalls(
                    proc_deltas.iter().map(|d| self.activity_of(d)).collect(),
                ),
            });
        }
        let limits = Limits {
            top: self.cfg.top_processes,
            retain_exited: self.cfg.retain_exited,
        };
        let known = &self.known;
        self.series.ingest(
            &proc_deltas,
            |d| known.get(&d.proc).cloned().unwrap_or_default(),
            &overflow,
            &limits,
            read_at.0,
            interval_start,
        );
        for d in proc_deltas.iter().filter(|d| d.ended) {
            self.known.remove(&d.proc);
        }
        let families = self.series.families(names::syscall_name, names::errno_name);
        self.store.publish(Batch {
            source: NAME.to_string(),
            time: read_at.1,
            families,
        });
        self.report(&counters, stats_entries, error_entries, fast_entries);
        tracing::debug!(probe = NAME, entries = stats_entries, incarnations = proc_deltas.len(), took = ?started.elapsed(), "drained");
    }

    fn activity_of(&self, d: &ProcDelta) -> SyscallActivity {
        let id = self.known.get(&d.proc).cloned().unwrap_or_default();
        let mut syscalls: Vec<SyscallDelta> = d
            .stats
            .iter()
            .map(|(nr, a)| SyscallDelta {
                nr: *nr,
                calls: a.count,
                errors: a.errors,
                duration_ns: a.sum_ns,
            })
            .collect();
        // Errors counted by errno but whose calls were already in `stats` keep their calls there;
        // `errors` per syscall comes from the stats entries (the same calls).
        syscalls.retain(|s| s.calls > 0 || s.errors > 0);
        SyscallActivity {
            process: ProcessRef {
                pid: d.proc.tgid,
                gen: d.proc.gen,
                exe_name: id.exe_name,
                container_id: id.container_id,
                cgroup_id: d.cgroup_id,
            },
            syscalls,
            ended: d.ended,
        }
    }

    fn report(
        &self,
        k: &std::collections::BTreeMap<&'static str, u64>,
        stats_entries: u64,
        error_entries: u64,
        fast_entries: u64,
    ) {
        let acc = &self.series.accounting;
        let ids = &self.ids.stats;
        let mut detail: std::collections::BTreeMap<String, u64> =
            k.iter().map(|(n, v)| (n.to_string(), *v)).collect();
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
        let processed = self.series.total_calls();
        for (name, v) in [
            ("recursion_misses", recursion_misses),
            ("calls", processed),
            ("fast_entries", fast_entries),
            ("folded_calls", acc.folded_calls),
            ("overflow_calls", acc.overflow_calls),
            ("expired_series", acc.expired_series),
            ("owner_series", self.series.owner_series() as u64),
            ("tracked_incarnations", self.series.incarnations() as u64),
            ("kernel_keys_remembered", self.deltas.keys() as u64),
            ("recreated_entries", self.deltas.recreated),
            ("names_from_proc", ids.from_proc),
            ("names_from_exec_path", ids.from_exec_path),
            ("names_from_comm", ids.from_comm),
            ("exec_names_evicted", ids.exec_names_evicted),
        ] {
            detail.insert(name.into(), v);
        }
        // Calls that were not counted at all (untimed or skipped); folds into "other" are not
        // losses.
        let lost =
            k["unmatched_exits"] + k["slot_collisions"] + k["nr_out_of_range"] + recursion_misses;
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
                processed: self.series.total_errors(),
                lost: 0,
                entries: Some(error_entries),
                capacity: Some(self.cfg.error_entries as u64),
                detail: [("errors_folded".to_string(), k["errors_folded"])].into(),
            },
        );
    }
}
