//! One running profiler object: loads `profiler.bpf.o`, attaches a `cpu-clock` perf event on
//! every online CPU, drains the kernel's counts every tick and answers new-process events.
//!
//! Used by the probe (continuous) and by `agent profile` (one shot).
//!
//! Invariants: a drain flips the generation, waits for programs already running on the old one
//! to finish (they run with preemption off, for microseconds), then reads and empties it, so a
//! sample is counted exactly once; dropping the session detaches everything.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, BorrowedFd},
    time::{Duration, Instant, SystemTime},
};

use agent_common::profiler::{
    counter, stack_lost, PidEvent, SampleKey, StreamSample, COUNTERS_MAP, COUNTS_MAP, GEN_MAP,
    INCLUDE_IDLE_GLOBAL, MAX_STACK_DEPTH, PIDS_MAP, PID_EVENTS_MAP, PROG_AGGREGATE, PROG_EXEC,
    PROG_EXIT, PROG_STREAM, SAMPLES_MAP, STACKS_MAP, USER_STACK_UNWOUND,
};
use agent_common::unwind::PROG_DWARF;
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        PerfEvent, RawTracePoint,
    },
    Ebpf,
};

use super::{
    procmaps::{Incarnations, ProcKey, ProcMaps},
    raw::{RawProfile, RawStack, StackInterner},
    symbolize::Symbolizer,
    unwind::{self, Unwind},
};
use crate::{
    config::{ProfilerConfig, ProfilerMode, ProfilerUnwinder},
    ebpf::{self, LoadError, ReadError},
    export::metrics::unix_nanos,
    probes::waker::poll_readable,
    profile::Profile,
    status::state::HookStatus,
};

pub const NAME: &str = "profiler";

/// Names and order of `PROFILE_COUNTERS` as `/status` shows them.
pub const COUNTER_NAMES: [(&str, u32); counter::COUNT as usize] = [
    ("samples", counter::SAMPLES),
    ("idle_dropped", counter::IDLE),
    ("counts_full", counter::COUNTS_FULL),
    ("user_stack_collisions", counter::USER_COLLISIONS),
    ("kernel_stack_collisions", counter::KERNEL_COLLISIONS),
    ("user_stack_missing", counter::USER_MISSING),
    ("stream_ringbuf_full", counter::STREAM_FULL),
    ("pid_events_full", counter::PID_EVENTS_FULL),
    ("stack_map_full", counter::STACKS_FULL),
    ("dwarf_samples", counter::DWARF_SAMPLES),
    ("dwarf_not_loaded", counter::DWARF_NOT_LOADED),
    ("frames_from_tables", counter::FRAMES_TABLE),
    ("frames_from_frame_pointers", counter::FRAMES_FP),
    ("unwind_stop_end", counter::STOP_END),
    ("unwind_stop_zero", counter::STOP_ZERO),
    ("unwind_stop_no_mapping", counter::STOP_NO_MAPPING),
    ("unwind_stop_no_row", counter::STOP_NO_ROW),
    ("unwind_stop_read", counter::STOP_READ),
    ("unwind_stop_depth", counter::STOP_DEPTH),
    ("unwind_tail_call_failed", counter::TAIL_CALL_FAILED),
    ("unwind_stacks_full", counter::USTACKS_FULL),
];

fn perf_hook(cpu: u32) -> String {
    format!("perf_event/cpu-clock/cpu{cpu}")
}

const EXEC_HOOK: &str = "raw_tracepoint/sched_process_exec";
const EXIT_HOOK: &str = "raw_tracepoint/sched_process_exit";
/// Longest a wait spends loading unwind tables before it drains again.
const LOAD_BUDGET: Duration = Duration::from_millis(200);

/// Pseudo-hooks on `/status` naming the user-stack walker in use.
pub const UNWINDER_DWARF: &str = "unwinder/dwarf";
pub const UNWINDER_FP: &str = "unwinder/frame_pointers";

/// The kernel's `PROFILE_PIDS`: which incarnation of each pid it announced.
struct KernelPids(HashMap<MapData, u32, u64>);

impl Incarnations for KernelPids {
    fn current(&self, pid: u32) -> Option<u64> {
        self.0.get(&pid, 0).ok()
    }

    /// Announces `pid` from userspace (unless the kernel already did): the boot-clock time the
    /// kernel would have used.
    fn announce(&mut self, pid: u32) -> Option<u64> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
        let inc = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
        // BPF_NOEXIST (1): only if the kernel has not announced it.
        match self.0.insert(pid, inc, 1) {
            Ok(()) => Some(inc),
            Err(_) => self.current(pid),
        }
    }
}

struct Maps {
    counts: [HashMap<MapData, SampleKey, u64>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    gen: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    pid_events: RingBuf<MapData>,
    samples: Option<RingBuf<MapData>>,
}

/// Counts of one session's userspace side.
#[derive(Clone, Copy, Debug, Default)]
pub struct DrainStats {
    pub drains: u64,
    /// Distinct (thread, stacks) keys read in the last drain.
    pub last_entries: u64,
    /// Samples read from the kernel (both modes).
    pub samples_read: u64,
    /// Streamed records that were malformed (should stay 0).
    pub bad_records: u64,
    pub pid_events: u64,
    /// Samples folded into one key per process because a window was full.
    pub window_folded: u64,
}

pub struct Session {
    bpf: Ebpf,
    maps: Maps,
    /// Incarnations whose unwind tables are still to load.
    to_load: std::collections::VecDeque<ProcKey>,
    /// Only this process is snapshotted (see [`Session::only`]).
    only: Option<u32>,
    /// The DWARF unwinder, when it runs.
    pub unwind: Option<Unwind>,
    pub hooks: Vec<HookStatus>,
    mode: ProfilerMode,
    generation: u32,
    interner: StackInterner,
    pub procs: ProcMaps,
    pub symbolizer: Symbolizer,
    window: RawProfile,
    pub period_nanos: u64,
    /// The sampling program and its cpu-clock links, one per sampled CPU (replaced by
    /// [`Session::set_frequency`]).
    prog_name: &'static str,
    perf_links: Vec<(u32, aya::programs::perf_event::PerfEventLinkId)>,
    pub stats: DrainStats,
    pub max_entries: u32,
    /// cgroup id → container id, for processes that exited unseen.
    cgroups: crate::procinfo::ProcCache,
}

impl Session {
    /// Loads and attaches. Fails only when no CPU could be sampled; a missing exec hook is
    /// reported in `hooks` (mappings are then refreshed on misses only).
    pub fn start(cfg: &ProfilerConfig) -> Result<Session, (LoadError, Vec<HookStatus>)> {
        let dwarf =
            cfg.unwinder != ProfilerUnwinder::FramePointers && cfg.mode == ProfilerMode::Aggregate;
        if !dwarf {
            return Self::start_with(cfg, false);
        }
        match Self::start_with(cfg, true) {
            Err((e, _)) if cfg.unwinder == ProfilerUnwinder::Auto => {
                tracing::warn!(
                    probe = NAME,
                    "the DWARF unwinder cannot run here ({}); walking frame pointers",
                    e.cause
                );
                let mut s = Self::start_with(cfg, false)?;
                if let Some(h) = s.hooks.iter_mut().find(|h| h.hook == UNWINDER_FP) {
                    h.error = Some(format!("DWARF unwinder unavailable: {}", e.cause));
                }
                Ok(s)
            }
            r => r,
        }
    }

    fn start_with(
        cfg: &ProfilerConfig,
        dwarf: bool,
    ) -> Result<Session, (LoadError, Vec<HookStatus>)> {
        let cpus = aya::util::online_cpus().map_err(|(what, e)| {
            (
                LoadError::new(
                    format!("cannot list online CPUs ({what}): {e}"),
                    "mount /sys (sysfs) in the agent's container",
                ),
                vec![],
            )
        })?;
        let mut hooks: Vec<HookStatus> = cpus
            .iter()
            .map(|c| HookStatus {
                hook: perf_hook(*c),
                attached: false,
                error: None,
            })
            .chain([EXEC_HOOK, EXIT_HOOK].map(|h| HookStatus {
                hook: h.to_string(),
                attached: false,
                error: None,
            }))
            .collect();
        hooks.push(HookStatus {
            hook: if dwarf { UNWINDER_DWARF } else { UNWINDER_FP }.to_string(),
            attached: false,
            error: None,
        });
        let idle = u32::from(cfg.include_idle);
        let mut bpf = ebpf::load(NAME, |l| {
            l.map_max_entries(COUNTS_MAP[0], cfg.max_entries)
                .map_max_entries(COUNTS_MAP[1], cfg.max_entries)
                .map_max_entries(STACKS_MAP[0], cfg.stack_entries)
                .map_max_entries(STACKS_MAP[1], cfg.stack_entries)
                .override_global(INCLUDE_IDLE_GLOBAL, &idle, true);
            if dwarf {
                unwind::size_maps(l, cfg);
            }
        })
        .map_err(|e| (e, hooks.clone()))?;
        let unwind = if dwarf {
            Some(Unwind::load(&mut bpf, cfg).map_err(|e| (e, hooks.clone()))?)
        } else {
            None
        };
        let prog_name = match (cfg.mode, dwarf) {
            (ProfilerMode::Aggregate, true) => PROG_DWARF,
            (ProfilerMode::Aggregate, false) => PROG_AGGREGATE,
            (ProfilerMode::Stream, _) => PROG_STREAM,
        };
        let period_nanos = period_of(cfg.frequency);
        let mut first_err = None;
        let mut perf_links = Vec::new();
        {
            let p: &mut PerfEvent =
                ebpf::program(&mut bpf, NAME, prog_name).map_err(|e| (e, hooks.clone()))?;
            p.load().map_err(|e| {
                (
                    ebpf::explain(&format!("verifying {prog_name}"), &e),
                    hooks.clone(),
                )
            })?;
            for (i, cpu) in cpus.iter().enumerate() {
                let r = attach_cpu_clock(p, *cpu, period_nanos);
                match r {
                    Ok(id) => {
                        hooks[i].attached = true;
                        perf_links.push((*cpu, id));
                    }
                    Err(e) => {
                        let e = ebpf::explain(&format!("opening cpu-clock on CPU {cpu}"), &e);
                        hooks[i].error = Some(e.cause.clone());
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        if !hooks.iter().any(|h| h.attached) {
            let e = first_err.unwrap_or_else(|| {
                LoadError::new("no CPU to sample", "check /sys/devices/system/cpu/online")
            });
            return Err((e, hooks));
        }
        // The identity hooks: without them an exec'd process keeps its first mappings until a
        // lookup misses, and a reused pid is symbolized as its previous owner.
        let n = hooks.len() - 1;
        for (i, (prog, tp, what)) in [
            (
                PROG_EXEC,
                "sched_process_exec",
                "exec'd processes keep their first mappings",
            ),
            (
                PROG_EXIT,
                "sched_process_exit",
                "a reused pid is taken for its previous process",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let r = (|| -> Result<(), LoadError> {
                let p: &mut RawTracePoint = ebpf::program(&mut bpf, NAME, prog)?;
                p.load()
                    .map_err(|e| ebpf::explain(&format!("verifying {prog}"), &e))?;
                p.attach(tp)
                    .map_err(|e| ebpf::explain(&format!("attaching to {tp}"), &e))?;
                Ok(())
            })();
            let h = &mut hooks[n - 2 + i];
            match r {
                Ok(()) => h.attached = true,
                Err(e) => {
                    tracing::warn!(probe = NAME, "{}; {what}", e.cause);
                    h.error = Some(e.cause);
                }
            }
        }
        if let Some(h) = hooks.last_mut() {
            h.attached = true;
        }
        let maps = Self::take_maps(&mut bpf, cfg.mode).map_err(|e| (e, hooks.clone()))?;
        let pids = ebpf::take_map(&mut bpf, NAME, PIDS_MAP).map_err(|e| (e, hooks.clone()))?;
        let mut procs = ProcMaps::new(cfg.max_processes);
        procs.set_incarnations(Box::new(KernelPids(pids)));
        let now = unix_nanos(SystemTime::now());
        Ok(Session {
            bpf,
            maps,
            to_load: Default::default(),
            only: None,
            unwind,
            hooks,
            mode: cfg.mode,
            generation: 0,
            interner: StackInterner::default(),
            procs,
            symbolizer: Symbolizer::new(cfg.symbol_cache, cfg.debug_info)
                .limits(cfg.symbolizer_files, cfg.debug_info_max_bytes),
            // A window holds at most 4 seconds' worth of full kernel maps of distinct keys.
            window: RawProfile::with_cap(now, cfg.max_entries as usize * 4),
            period_nanos,
            prog_name,
            perf_links,
            stats: DrainStats::default(),
            max_entries: cfg.max_entries,
            cgroups: crate::procinfo::ProcCache::new(1024),
        })
    }

    fn take_maps(bpf: &mut Ebpf, mode: ProfilerMode) -> Result<Maps, LoadError> {
        let t = |bpf: &mut Ebpf, name: &str| -> Result<aya::maps::Map, LoadError> {
            bpf.take_map(name).ok_or_else(|| {
                LoadError::new(
                    format!("map {name} missing from the {NAME} object"),
                    "rebuild with `cargo xtask build-ebpf`",
                )
            })
        };
        let open =
            |what: &str, e: aya::maps::MapError| ebpf::explain(&format!("opening map {what}"), &e);
        Ok(Maps {
            counts: [
                HashMap::try_from(t(bpf, COUNTS_MAP[0])?).map_err(|e| open(COUNTS_MAP[0], e))?,
                HashMap::try_from(t(bpf, COUNTS_MAP[1])?).map_err(|e| open(COUNTS_MAP[1], e))?,
            ],
            stacks: [
                StackTraceMap::try_from(t(bpf, STACKS_MAP[0])?)
                    .map_err(|e| open(STACKS_MAP[0], e))?,
                StackTraceMap::try_from(t(bpf, STACKS_MAP[1])?)
                    .map_err(|e| open(STACKS_MAP[1], e))?,
            ],
            gen: ebpf::take_map(bpf, NAME, GEN_MAP)?,
            counters: ebpf::take_map(bpf, NAME, COUNTERS_MAP)?,
            pid_events: ebpf::take_map(bpf, NAME, PID_EVENTS_MAP)?,
            samples: match mode {
                ProfilerMode::Stream => Some(ebpf::take_map(bpf, NAME, SAMPLES_MAP)?),
                ProfilerMode::Aggregate => None,
            },
        })
    }

    /// The loaded programs' fds, for the kernel's run statistics.
    pub fn program_fds(&self) -> Vec<aya::programs::ProgramFd> {
        [
            PROG_AGGREGATE,
            PROG_STREAM,
            PROG_EXEC,
            PROG_EXIT,
            PROG_DWARF,
            agent_common::unwind::PROG_UNWIND,
        ]
        .iter()
        .filter_map(|p| self.bpf.program(p)?.fd().ok()?.try_clone().ok())
        .collect()
    }

    /// Waits up to `timeout` for ring buffer records and handles them: new processes get their
    /// mappings snapshotted, streamed samples are counted. Returns early once `wake` (the drain
    /// thread's [`Waker`](crate::probes::waker::Waker)) is readable.
    pub fn wait(&mut self, timeout: Duration, wake: Option<BorrowedFd<'_>>) {
        let deadline = Instant::now() + timeout;
        loop {
            self.read_rings();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = vec![self.maps.pid_events.as_fd()];
            fds.extend(self.maps.samples.as_ref().map(AsFd::as_fd));
            fds.extend(wake);
            // At least 1 ms: poll counts whole milliseconds, and 0 would spin to the deadline.
            match poll_readable(&fds, left.max(Duration::from_millis(1))) {
                Ok(ready) => {
                    if wake.is_some() && ready.last() == Some(&true) {
                        self.read_rings();
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => std::thread::sleep(left.min(Duration::from_millis(100))),
            }
        }
    }

    fn read_rings(&mut self) {
        read_pid_events(
            &mut self.maps.pid_events,
            &mut self.stats,
            self.only,
            &mut self.procs,
        );
        self.load_tables();
        let Some(ring) = &mut self.maps.samples else {
            return;
        };
        let now = unix_nanos(SystemTime::now());
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<StreamSample>() {
                self.stats.bad_records += 1;
                continue;
            }
            // SAFETY: the record holds a StreamSample (checked length; read unaligned).
            let s: StreamSample = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            // bpf_get_stack returns the bytes it filled, or a negative errno.
            let depth = |len: i32| (len.max(0) as usize / 8).min(MAX_STACK_DEPTH);
            let (un, kn) = (depth(s.user_len), depth(s.kernel_len));
            let key = RawStack {
                tgid: s.tgid,
                tid: s.tid,
                cgroup_id: s.cgroup_id,
                incarnation: s.incarnation,
                comm: s.comm,
                user: self.interner.intern(&s.user[..un]),
                kernel: self.interner.intern(&s.kernel[..kn]),
                user_lost: false,
                kernel_lost: false,
                folded: false,
            };
            self.stats.samples_read += 1;
            self.window.add(key, 1);
            self.window.end_unix_nanos = now;
        }
    }

    /// Reads and empties the generation samples went to since the last drain (aggregate mode),
    /// adding them to the current window.
    pub fn drain(&mut self) -> Result<(), ReadError> {
        self.read_rings();
        self.stats.drains += 1;
        let now = unix_nanos(SystemTime::now());
        self.window.end_unix_nanos = now;
        if self.mode == ProfilerMode::Stream {
            return Ok(());
        }
        let old = self.generation as usize;
        self.generation ^= 1;
        self.maps
            .gen
            .set(0, self.generation, 0)
            .map_err(|source| ReadError::Map {
                map: GEN_MAP,
                source,
            })?;
        // Programs that read the old generation finish within microseconds.
        std::thread::sleep(Duration::from_millis(5));
        let keys: Vec<SampleKey> = self.maps.counts[old]
            .keys()
            .filter_map(Result::ok)
            .collect();
        self.stats.last_entries = keys.len() as u64;
        let mut stack_cache: std::collections::HashMap<i32, std::sync::Arc<[u64]>> =
            std::collections::HashMap::new();
        let mut unwound: std::collections::HashMap<u64, std::sync::Arc<[u64]>> =
            std::collections::HashMap::new();
        for k in &keys {
            let Ok(n) = self.maps.counts[old].get(k, 0) else {
                continue;
            };
            let mut stack = |id: i32, hash: u64| -> (std::sync::Arc<[u64]>, bool) {
                if id == USER_STACK_UNWOUND {
                    if let Some(s) = unwound.get(&hash) {
                        return (s.clone(), false);
                    }
                    let frames = self
                        .unwind
                        .as_ref()
                        .map_or_else(Vec::new, |u| u.stack(old, hash));
                    let s = self.interner.intern(&frames);
                    unwound.insert(hash, s.clone());
                    // Gone from its map (never, while its count exists): lost.
                    return (s, frames.is_empty());
                }
                if id < 0 {
                    return (self.interner.intern(&[]), stack_lost(id));
                }
                if let Some(s) = stack_cache.get(&id) {
                    return (s.clone(), false);
                }
                let frames: Vec<u64> = match self.maps.stacks[old].get(&(id as u32), 0) {
                    Ok(st) => st.frames().iter().map(|f| f.ip).collect(),
                    Err(_) => Vec::new(),
                };
                let s = self.interner.intern(&frames);
                stack_cache.insert(id, s.clone());
                (s, false)
            };
            let (user, user_lost) = stack(k.user_stack, k.user_hash);
            let (kernel, kernel_lost) = stack(k.kernel_stack, 0);
            self.stats.samples_read += n;
            self.window.add(
                RawStack {
                    tgid: k.tgid,
                    tid: k.tid,
                    cgroup_id: k.cgroup_id,
                    incarnation: k.incarnation,
                    comm: k.comm,
                    user,
                    kernel,
                    user_lost,
                    kernel_lost,
                    folded: false,
                },
                n,
            );
        }
        for k in &keys {
            let _ = self.maps.counts[old].remove(k);
        }
        let ids: Vec<u32> = self.maps.stacks[old]
            .stack_ids()
            .filter_map(Result::ok)
            .collect();
        for id in ids {
            let _ = self.maps.stacks[old].remove(&id);
        }
        if let Some(u) = &mut self.unwind {
            u.clear(old)?;
            u.tables.tick();
        }
        Ok(())
    }

    /// Loads the unwind tables of incarnations snapshotted since the last call, for at most
    /// [`LOAD_BUDGET`] (at least one file): compiling a large binary's table the first time
    /// takes a while, and the drain (and the snapshots of new processes, which must be taken
    /// before they exit) must not wait long. The rest wait for the next call.
    fn load_tables(&mut self) {
        let Some(u) = &mut self.unwind else {
            self.procs.take_snapshotted();
            return;
        };
        self.to_load.extend(self.procs.take_snapshotted());
        if self.to_load.len() > 1 {
            // The busiest processes first: their samples gain most from whole stacks.
            let mut busy: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
            for (k, n) in &self.window.counts {
                *busy.entry(k.tgid).or_default() += n;
            }
            self.to_load
                .make_contiguous()
                .sort_by_key(|k| std::cmp::Reverse(busy.get(&k.pid).copied().unwrap_or(0)));
        }
        let deadline = Instant::now() + LOAD_BUDGET;
        while let Some(k) = self.to_load.pop_front() {
            if let Some(e) = self.procs.get(k) {
                if !e.exited && !u.tables.load_process(e, deadline) {
                    // Out of time between two files: the rest next time, this process first.
                    self.to_load.push_front(k);
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
    }

    /// Only this process is snapshotted and loaded (`agent profile --pid`).
    pub fn only(&mut self, pid: u32) {
        self.only = Some(pid);
    }

    /// Announces `pid` from userspace and snapshots it now (`agent profile --pid`: a process
    /// that exits during the run is still symbolized even if it is never sampled before).
    pub fn preannounce(&mut self, pid: u32) {
        self.procs.preannounce(pid);
        self.load_tables();
    }

    /// The samples since the last call; a new window starts now.
    pub fn take_window(&mut self) -> RawProfile {
        let now = unix_nanos(SystemTime::now());
        let next = self.window.next(now);
        let mut w = std::mem::replace(&mut self.window, next);
        self.stats.window_folded += w.folded;
        w.end_unix_nanos = now;
        self.interner.trim();
        w
    }

    /// Symbolizes a window (only process `pid` when given); `account`: see
    /// [`Symbolizer::symbolize`].
    pub fn symbolize(
        &mut self,
        raw: &RawProfile,
        pid: Option<u32>,
        host_name: &str,
        account: bool,
    ) -> Profile {
        let (ring, stats, only) = (&mut self.maps.pid_events, &mut self.stats, self.only);
        let mut p = self.symbolizer.symbolize_with(
            raw,
            &mut self.procs,
            pid,
            self.period_nanos,
            host_name,
            account,
            &mut |procs| read_pid_events(ring, stats, only, procs),
        );
        // Processes gone before their first snapshot: the container from the cgroup id the
        // kernel recorded.
        for proc_ in p.processes.iter_mut().filter(|p| p.container_id.is_none()) {
            let key = ProcKey {
                pid: proc_.pid,
                incarnation: proc_.incarnation,
            };
            if self.procs.get(key).is_none() {
                let cgroup = raw
                    .counts
                    .keys()
                    .find(|k| k.tgid == key.pid && k.incarnation == key.incarnation)
                    .map_or(0, |k| k.cgroup_id);
                proc_.container_id = self.cgroups.container_of_cgroup(cgroup);
            }
        }
        self.procs.mark_exited();
        // Lookups that missed re-read a process's maps (dlopen, JIT): the kernel gets them too.
        self.load_tables();
        if let Some(u) = &mut self.unwind {
            let procs = &self.procs;
            u.tables.reconcile(|k| procs.is_current(k));
        }
        p
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        COUNTER_NAMES
            .iter()
            .map(|(name, idx)| {
                let v = self
                    .maps
                    .counters
                    .get(idx, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*name, v)
            })
            .collect()
    }
}

/// Snapshots the processes the kernel announced (first sample of a process incarnation) since
/// the last read: their mappings and files, while they still exist.
fn read_pid_events(
    ring: &mut RingBuf<MapData>,
    stats: &mut DrainStats,
    only: Option<u32>,
    procs: &mut ProcMaps,
) {
    let mut pids = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<PidEvent>() {
            // SAFETY: the record holds a PidEvent (checked length; read unaligned).
            let ev: PidEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            pids.push(ProcKey {
                pid: ev.tgid,
                incarnation: ev.incarnation,
            });
        }
    }
    for key in pids {
        stats.pid_events += 1;
        if only.is_none_or(|p| p == key.pid) {
            procs.snapshot(key);
        }
    }
}

/// Nanoseconds between two samples at `hz` (clamped to 1–999 Hz).
fn period_of(hz: u32) -> u64 {
    1_000_000_000 / u64::from(hz.clamp(1, 999))
}

/// Opens `cpu`'s cpu-clock event at `period_nanos` and attaches the sampling program to it.
/// cpu-clock counts nanoseconds: an exact period, not a frequency the kernel would adjust.
fn attach_cpu_clock(
    p: &mut PerfEvent,
    cpu: u32,
    period_nanos: u64,
) -> Result<aya::programs::perf_event::PerfEventLinkId, aya::programs::ProgramError> {
    p.attach(
        PerfEventConfig::Software(SoftwareEvent::CpuClock),
        PerfEventScope::AllProcessesOneCpu { cpu },
        SamplePolicy::Period(period_nanos),
        false,
    )
}

impl Session {
    /// Samples at `hz` from now on, without reloading: each CPU's cpu-clock event is reopened
    /// at the new period and attached before the old one is detached, so no CPU goes unsampled
    /// and the kernel objects, maps and unwind tables stay. On a CPU that refuses the new
    /// event, nothing changes anywhere (the new links are detached again) and the error says
    /// which CPU.
    pub fn set_frequency(&mut self, hz: u32) -> Result<(), LoadError> {
        let period = period_of(hz);
        if period == self.period_nanos {
            return Ok(());
        }
        let p: &mut PerfEvent = ebpf::program(&mut self.bpf, NAME, self.prog_name)?;
        let mut fresh = Vec::with_capacity(self.perf_links.len());
        for (cpu, _) in &self.perf_links {
            match attach_cpu_clock(p, *cpu, period) {
                Ok(id) => fresh.push((*cpu, id)),
                Err(e) => {
                    for (_, id) in fresh {
                        let _ = p.detach(id);
                    }
                    return Err(ebpf::explain(
                        &format!("opening cpu-clock at {hz} Hz on CPU {cpu}"),
                        &e,
                    ));
                }
            }
        }
        for (_, id) in std::mem::replace(&mut self.perf_links, fresh) {
            let _ = p.detach(id);
        }
        self.period_nanos = period;
        Ok(())
    }
}
