//! The CPU profiler probe: samples every CPU (`session.rs`), drains the kernel each second,
//! symbolizes on this host (`symbolize.rs`, with mappings cached per process in
//! `procmaps.rs`) and hands one profile per interval to the exporter; answers flame graph
//! captures (`/debug/flamegraph.svg`) from the same samples.
//!
//! Invariants: the session and its symbolizer live on the probe's own thread (no locks around
//! them); a capture sees only samples taken after it was asked for; on stop the last window is
//! drained and published before the object is dropped (which detaches it).

pub mod elf;
pub mod perfmap;
pub mod procmaps;
pub mod raw;
pub mod session;
pub mod special;
pub mod symbolize;
pub mod unwind;

use std::{
    collections::BTreeMap,
    os::fd::BorrowedFd,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use self::{raw::RawProfile, session::Session};
use super::lifecycle::{ProbeEnv, ProbeSpec, ProbeWorker, StartResult};
use crate::{
    config::ProfilerConfig,
    ebpf::LoadError,
    status::state::{AgentState, CaptureRequest, HookStatus, MapStats, ProfilerHandle},
};

pub use crate::export::resource::host_name;
pub use session::NAME;

/// The shortest drain period: used while a capture (`/debug/flamegraph.svg`) runs, by
/// `agent profile`, and when the sample rate would fill the kernel maps faster.
pub const DRAIN_EVERY: Duration = Duration::from_secs(1);
/// The longest drain period. A drain costs the agent milliseconds of CPU whatever it reads
/// (map iteration, `/status` counters, cold caches after a sleep): at 19 Hz on 2 CPUs the drain
/// thread took ~20 ms/s draining every second and ~7 ms/s every 5 s (thread CPU time, see
/// ARCHITECTURE.md), so a host whose rate allows it drains rarely.
pub const DRAIN_AT_MOST_EVERY: Duration = Duration::from_secs(5);
/// Share of the smaller kernel map (counts, stacks) that one drain period may fill in the worst
/// case (every sample a new stack). Kept small because a stack-trace map collides before it is
/// full: a new stack is lost (`kernel_stack_collisions`) with the probability of the map's fill.
const DRAIN_FILL_DIVISOR: u64 = 32;

/// How often the kernel maps are drained in aggregate mode (stream mode reads its ring in
/// `wait`; the period only paces exports and `/status` then).
///
/// Between two drains at most `frequency × cpus × period` samples arrive, each at most one new
/// entry in the counts map and the stack maps. The period keeps that within
/// 1/[`DRAIN_FILL_DIVISOR`] of the smaller map, between [`DRAIN_EVERY`] and
/// [`DRAIN_AT_MOST_EVERY`], and divides the export `interval` evenly so exports fall on drains.
/// Examples (default maps, 16,384 entries): 19 Hz on 2 CPUs → 5 s; 99 Hz on 2 CPUs → 2.5 s;
/// 99 Hz on 64 CPUs → 1 s.
pub fn drain_period(cfg: &ProfilerConfig, cpus: usize) -> Duration {
    if cfg.interval <= DRAIN_EVERY {
        return DRAIN_EVERY;
    }
    let per_second = u64::from(cfg.frequency.max(1)) * (cpus.max(1) as u64);
    let room = u64::from(cfg.max_entries.min(cfg.stack_entries)) / DRAIN_FILL_DIVISOR;
    let fits = Duration::from_secs_f64(room as f64 / per_second as f64);
    let longest = fits.clamp(DRAIN_EVERY, DRAIN_AT_MOST_EVERY);
    let drains = (cfg.interval.as_secs_f64() / longest.as_secs_f64())
        .ceil()
        .clamp(1.0, f64::from(u32::MAX)) as u32;
    (cfg.interval / drains).max(DRAIN_EVERY)
}

/// The profiler for the shared lifecycle.
pub struct Profiler;

impl ProbeSpec for Profiler {
    type Config = ProfilerConfig;
    type Worker = Worker;
    const NAME: &'static str = NAME;

    fn enabled(cfg: &ProfilerConfig) -> bool {
        cfg.enabled
    }

    /// Fields that need a new kernel object (the rest are retuned in place).
    fn needs_reload(a: &ProfilerConfig, b: &ProfilerConfig) -> bool {
        // A frequency change reopens the perf events in place (`Session::set_frequency`).
        a.mode != b.mode
            || a.max_entries != b.max_entries
            || a.stack_entries != b.stack_entries
            || a.include_idle != b.include_idle
            || a.max_processes != b.max_processes
            || a.symbol_cache != b.symbol_cache
            || a.debug_info != b.debug_info
            || a.debug_info_max_bytes != b.debug_info_max_bytes
            || a.symbolizer_files != b.symbolizer_files
            || a.unwinder != b.unwinder
            || a.unwind_table_rows != b.unwind_table_rows
    }

    fn reload_reason() -> &'static str {
        "profiler settings changed: reloading the probe"
    }

    /// Builds the session on the drain thread (blazesym's symbolizer is not `Send`).
    fn start(cfg: &ProfilerConfig, env: &ProbeEnv) -> StartResult<Worker> {
        let mut session = Session::start(cfg)?;
        let hooks = session.hooks.clone();
        tracing::info!(
            probe = NAME,
            frequency = cfg.frequency,
            mode = cfg.mode.as_str(),
            "sampling cpu-clock on {} CPUs",
            hooks_cpus(&hooks)
        );
        let (cap_tx, cap_rx) = mpsc::channel();
        // A request wakes the drain thread, which then drains every second until it is done.
        let waker = env.waker.clone();
        env.state
            .set_profiler(Some(ProfilerHandle::new(cap_tx, move || {
                if let Some(w) = &waker {
                    w.wake();
                }
            })));
        let now = Instant::now();
        let worker = Worker {
            window: session.take_window(),
            session,
            cfg: cfg.clone(),
            state: env.state.clone(),
            host: host_name(),
            captures: Vec::new(),
            requests: cap_rx,
            next_export: now + cfg.interval,
            drain_period: drain_period(cfg, hooks_cpus(&hooks)),
        };
        Ok((worker, hooks))
    }
}

struct Capture {
    until: Instant,
    pid: Option<u32>,
    raw: RawProfile,
    reply: tokio::sync::oneshot::Sender<crate::profile::Profile>,
}

pub struct Worker {
    session: Session,
    /// Samples since the last export.
    window: RawProfile,
    requests: mpsc::Receiver<CaptureRequest>,
    next_export: Instant,
    cfg: ProfilerConfig,
    state: Arc<AgentState>,
    host: String,
    captures: Vec<Capture>,
    /// [`drain_period`] of the config and the CPUs sampled.
    drain_period: Duration,
}

/// The CPUs with an attached cpu-clock event.
fn hooks_cpus(hooks: &[HookStatus]) -> usize {
    hooks
        .iter()
        .filter(|h| h.attached && h.hook.starts_with("perf_event"))
        .count()
}

impl ProbeWorker for Worker {
    type Config = ProfilerConfig;

    fn period(&self) -> Duration {
        if self.captures.is_empty() {
            self.drain_period
        } else {
            DRAIN_EVERY
        }
    }

    fn wait(&mut self, timeout: Duration, wake: Option<BorrowedFd<'_>>) {
        self.session.wait(timeout, wake);
    }

    /// Takes capture requests (`/debug/flamegraph.svg`): they see samples from now on.
    fn poll(&mut self) {
        while let Ok(r) = self.requests.try_recv() {
            let now = crate::export::metrics::unix_nanos(std::time::SystemTime::now());
            self.captures.push(Capture {
                until: Instant::now() + r.duration,
                pid: r.pid,
                raw: self.window.next(now),
                reply: r.reply,
            });
        }
    }

    fn tick(&mut self) {
        self.drain_and_export(false);
    }

    fn retune(&mut self, cfg: &ProfilerConfig) {
        if cfg.frequency != self.cfg.frequency {
            // The window so far was sampled at the old period: it leaves first, as one profile.
            self.next_export = Instant::now();
            self.drain_and_export(false);
            match self.session.set_frequency(cfg.frequency) {
                Ok(()) => tracing::info!(
                    probe = NAME,
                    frequency = cfg.frequency,
                    "sampling frequency changed"
                ),
                Err(e) => {
                    tracing::error!(
                        probe = NAME,
                        "{}; still sampling at {} Hz",
                        e.cause,
                        self.cfg.frequency
                    );
                    tracing::error!(probe = NAME, "fix: {}", e.fix);
                    let mut kept = cfg.clone();
                    kept.frequency = self.cfg.frequency;
                    self.cfg = kept;
                    return;
                }
            }
        }
        self.next_export = self.next_export.min(Instant::now() + cfg.interval);
        self.drain_period = drain_period(cfg, hooks_cpus(&self.session.hooks));
        self.cfg = cfg.clone();
    }

    /// Drains and publishes the last window; dropping the session then detaches.
    fn finish(mut self) {
        self.state.set_profiler(None);
        self.drain_and_export(true);
    }
}

impl Worker {
    /// One drain: samples into the window and the running captures; a profile out when the
    /// export interval has passed (or `last`).
    fn drain_and_export(&mut self, last: bool) {
        let now = Instant::now();
        if let Err(e) = self.session.drain() {
            tracing::warn!(probe = NAME, "drain failed: {e}");
        }
        let tick = self.session.take_window();
        self.window.merge(&tick, None);
        for c in &mut self.captures {
            c.raw.merge(&tick, c.pid);
        }
        self.finish_captures(last);
        // Exports fall on drains: half a period early is on time (ticks jitter by
        // milliseconds; waiting for the next drain would make the window a period longer).
        if now + self.drain_period / 2 >= self.next_export || last {
            self.next_export += self.cfg.interval;
            if self.next_export <= now {
                self.next_export = now + self.cfg.interval;
            }
            let next = self.window.next(tick.end_unix_nanos);
            let raw = std::mem::replace(&mut self.window, next);
            self.session.stats.window_folded += raw.folded;
            if !raw.is_empty() {
                let started = Instant::now();
                let profile = self.session.symbolize(&raw, None, &self.host, true);
                tracing::debug!(probe = NAME, samples = raw.samples(), took = ?started.elapsed(), "symbolized");
                self.state.publish_profile(Arc::new(profile));
            }
            self.session
                .procs
                .forget_exited(Instant::now() - self.cfg.interval * 2);
            release_free_memory();
        }
        self.report();
    }

    fn finish_captures(&mut self, all: bool) {
        let now = Instant::now();
        let (done, keep): (Vec<Capture>, Vec<Capture>) = std::mem::take(&mut self.captures)
            .into_iter()
            .partition(|c| all || c.until <= now || c.reply.is_closed());
        self.captures = keep;
        for c in done {
            if c.reply.is_closed() {
                continue;
            }
            let p = self.session.symbolize(&c.raw, c.pid, &self.host, false);
            let _ = c.reply.send(p);
        }
    }

    fn report(&self) {
        let k = self.session.counters();
        let s = &self.session.symbolizer.stats;
        let d = &self.session.stats;
        let mut detail: BTreeMap<String, u64> =
            k.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        detail.insert("truncated_stacks".into(), s.truncated);
        detail.insert("cut_stacks".into(), s.cut);
        detail.insert("unmapped_stacks".into(), s.unmapped);
        detail.insert("user_stacks".into(), s.user_samples);
        detail.insert("unresolved_frames".into(), s.unresolved);
        detail.insert("symbol_lookups".into(), s.lookups);
        detail.insert("symbol_cache_hits".into(), s.cache_hits);
        detail.insert(
            "symbol_cache_entries".into(),
            self.session.symbolizer.cached() as u64,
        );
        detail.insert("processes_cached".into(), self.session.procs.len() as u64);
        detail.insert("files_held".into(), self.session.procs.files() as u64);
        detail.insert(
            "files_parsed".into(),
            self.session.symbolizer.parsed_files() as u64,
        );
        detail.insert(
            "files_parsed_bytes".into(),
            self.session.symbolizer.parsed_bytes(),
        );
        detail.insert("file_parses".into(), s.parses);
        detail.insert("files_evicted".into(), s.files_evicted);
        detail.insert("files_symbols_only".into(), s.files_symbols_only);
        detail.insert("jit_frames".into(), s.jit_frames);
        detail.insert("mapping_snapshots".into(), self.session.procs.snapshots);
        detail.insert("mapping_snapshots_missed".into(), self.session.procs.missed);
        detail.insert("pid_events".into(), d.pid_events);
        detail.insert("samples_read".into(), d.samples_read);
        detail.insert("window_folded".into(), d.window_folded);
        if let Some(u) = &self.session.unwind {
            let t = &u.tables.stats;
            detail.insert("unwind_files_loaded".into(), t.files_loaded);
            detail.insert("unwind_files_evicted".into(), t.files_evicted);
            detail.insert("unwind_compile_errors".into(), t.compile_errors);
            detail.insert("unwind_load_ms".into(), t.compile_ms);
            detail.insert("unwind_rows_used".into(), t.rows_used);
            detail.insert("unwind_rows_capacity".into(), t.rows_capacity);
            detail.insert("unwind_processes_loaded".into(), t.processes_loaded);
            detail.insert("unwind_mappings_dropped".into(), t.mappings_dropped);
            detail.insert("unwind_files_skipped".into(), t.files_skipped);
            detail.insert("unwind_cfi_ms".into(), t.cfi_ms);
            detail.insert("unwind_cache_hits".into(), t.cache_hits);
            detail.insert("unwind_cache_writes".into(), t.cache_writes);
            detail.insert("unwind_cache_errors".into(), t.cache_errors);
        }
        let lost = k["counts_full"]
            + k["user_stack_collisions"]
            + k["kernel_stack_collisions"]
            + k["stream_ringbuf_full"]
            + k["stack_map_full"];
        self.state.set_map(
            agent_common::profiler::COUNTS_MAP[0].trim_end_matches("_0"),
            MapStats {
                probe: NAME.into(),
                processed: k["samples"].saturating_sub(k["idle_dropped"]),
                lost,
                entries: Some(d.last_entries),
                capacity: Some(u64::from(self.session.max_entries)),
                detail,
            },
        );
    }
}

/// Hands memory freed since the last export (a window's samples, evicted files) back to the
/// system: glibc's malloc keeps freed memory in its arenas otherwise, and RSS would only grow.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One-shot profile (`agent profile`): samples for `duration` (one process when `pid` is given),
/// then symbolizes. Ends early, with what it has, when `stop` turns true. `started` runs once
/// sampling is on, with the number of CPUs sampled.
pub fn record(
    cfg: &ProfilerConfig,
    duration: Duration,
    pid: Option<u32>,
    stop: &std::sync::atomic::AtomicBool,
    started: impl FnOnce(usize),
) -> Result<crate::profile::Profile, LoadError> {
    let mut session = Session::start(cfg).map_err(|(e, _)| e)?;
    if let Some(h) = session.hooks.iter().find(|h| h.error.is_some()) {
        tracing::warn!(probe = NAME, hook = %h.hook, "{}", h.error.as_deref().unwrap_or(""));
    }
    if let Some(p) = pid {
        // Snapshot now, so a process that exits during the run is still symbolized; its
        // unwind tables load now too. Samples taken meanwhile were walked by frame pointer:
        // the recording starts after.
        session.only(p);
        session.preannounce(p);
        let _ = session.drain();
        let _ = session.take_window();
    }
    started(
        session
            .hooks
            .iter()
            .filter(|h| h.attached && h.hook.starts_with("perf_event"))
            .count(),
    );
    let end = Instant::now() + duration;
    let mut window = session.take_window();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        session.wait(left.min(DRAIN_EVERY), None);
        let done = left.is_zero() || stop.load(std::sync::atomic::Ordering::Relaxed);
        session
            .drain()
            .map_err(|e| LoadError::new(e.to_string(), "report it to the agent's maintainers"))?;
        let tick = session.take_window();
        window.merge(&tick, pid);
        if done {
            break;
        }
    }
    let k = session.counters();
    tracing::info!(
        samples = window.samples(),
        collisions = k["user_stack_collisions"] + k["kernel_stack_collisions"],
        counts_full = k["counts_full"],
        "profile recorded"
    );
    Ok(session.symbolize(&window, pid, &host_name(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(frequency: u32, interval_ms: u64) -> ProfilerConfig {
        ProfilerConfig {
            frequency,
            interval: Duration::from_millis(interval_ms),
            ..ProfilerConfig::default()
        }
    }

    #[test]
    fn drains_are_as_rare_as_the_maps_allow_and_divide_the_export_interval() {
        let s = Duration::from_secs;
        // 16,384 entries / 32 = 512 samples per period.
        assert_eq!(drain_period(&cfg(19, 10_000), 2), s(5)); // 38/s: 13.5 s fits
        assert_eq!(
            drain_period(&cfg(99, 10_000), 2),
            Duration::from_millis(2500)
        ); // 2.6 s fits
        assert_eq!(drain_period(&cfg(99, 10_000), 64), s(1)); // 0.08 s fits: floor
        assert_eq!(drain_period(&cfg(19, 15_000), 2), s(5));
        assert_eq!(
            drain_period(&cfg(19, 7_000), 2),
            Duration::from_millis(3500)
        );
        assert_eq!(drain_period(&cfg(19, 3_000), 2), s(3));
        assert_eq!(drain_period(&cfg(19, 1_000), 2), s(1));
        assert_eq!(drain_period(&cfg(19, 200), 2), s(1));
        // Smaller maps drain more often: 1,024 / 32 = 32 samples, under a second at 38/s.
        let small = ProfilerConfig {
            stack_entries: 1024,
            ..cfg(19, 10_000)
        };
        assert_eq!(drain_period(&small, 2), s(1));
    }
}
