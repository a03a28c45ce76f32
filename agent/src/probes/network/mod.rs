//! The TCP network probe: loads `network.bpf.o` sized by the config, attaches its sock_ops
//! program to the cgroup v2 root (every socket below it, in every network namespace) and the
//! `sock:inet_sk_error_report` tracepoint, then on its own thread reads connection events as
//! they come and drains the kernel histograms every interval into the
//! `system.network.tcp.*` families.
//!
//! Invariants: attached means the sock_ops program is attached (without it nothing is
//! measured); the error tracepoint alone failing leaves the probe degraded (failures are not
//! classified) and says so. On stop the programs are detached before the final drain. Map sizes
//! and kernel globals (aggregation, event rate) change only by reloading the probe.

pub mod activity;
pub mod aggregate;
pub mod events;
pub mod listeners;
pub mod reader;

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::network::{
    Owner, SeriesKey, SeriesStats, AGG_GLOBAL, AGG_PEER, AGG_PORT, AGG_PROCESS, CONNS_MAP,
    COUNTERS_MAP, EVENTS_MAP, EVENT_RATE_GLOBAL, LISTENERS_MAP, RTT_ON_GLOBAL, RTT_PERIOD_GLOBAL,
    SERIES_MAP,
};
use aya::{
    maps::{MapData, RingBuf, SkStorage},
    programs::{links::CgroupAttachMode, SockOps, TracePoint},
    Ebpf,
};

use self::{
    activity::Increments,
    aggregate::{Aggregator, Attribution},
    events::Clock,
    reader::Maps,
};
use super::lifecycle::{ProbeEnv, ProbeSpec, ProbeWorker, StartResult};
use super::waker::poll_readable;
use crate::{
    config::{Aggregation, NetworkConfig},
    ebpf::{self, tracefs, LoadError},
    metrics::{model::Batch, Store},
    procinfo::{self, comm_str, ProcCache},
    signals::{Activity, ActivityBatch, ActivityHub, NetworkActivity, ProcessRef},
    status::state::{AgentState, HookStatus, MapStats},
};

pub const NAME: &str = "network";
const SOCKOPS_PROG: &str = "network_sockops";
const ERROR_PROG: &str = "network_error_report";
const ERROR_TP: (&str, &str) = ("sock", "inet_sk_error_report");

fn hooks_for(cfg: &NetworkConfig) -> Vec<HookStatus> {
    let dir = cgroup_dir(cfg).unwrap_or_else(|_| cfg.cgroup.clone());
    [
        format!("sock_ops/cgroup:{}", dir.display()),
        format!("tracepoint/{}/{}", ERROR_TP.0, ERROR_TP.1),
    ]
    .into_iter()
    .map(|hook| HookStatus {
        hook,
        attached: false,
        error: None,
    })
    .collect()
}

fn aggregation_code(a: Aggregation) -> u32 {
    match a {
        Aggregation::Peer => AGG_PEER,
        Aggregation::Port => AGG_PORT,
        Aggregation::Process => AGG_PROCESS,
    }
}

/// The cgroup directory to attach to: the configured one, or the cgroup2 mount for `auto`.
pub fn cgroup_dir(cfg: &NetworkConfig) -> Result<PathBuf, LoadError> {
    if cfg.cgroup.as_os_str() != "auto" {
        return Ok(cfg.cgroup.clone());
    }
    procinfo::cgroup2_root().ok_or_else(|| {
        LoadError::new(
            "no cgroup2 file system is mounted (sock_ops programs attach to a cgroup v2)",
            "mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or set probes.network.cgroup",
        )
    })
}

fn attach_sockops(bpf: &mut Ebpf, dir: &Path) -> Result<(), LoadError> {
    let what = format!("attaching {SOCKOPS_PROG} to cgroup {}", dir.display());
    let cgroup = std::fs::File::open(dir).map_err(|e| {
        LoadError::new(
            format!("{what}: cannot open it: {e}"),
            "set probes.network.cgroup to a cgroup v2 directory, or auto",
        )
    })?;
    let p: &mut SockOps = ebpf::program(bpf, NAME, SOCKOPS_PROG)?;
    p.load()
        .map_err(|e| ebpf::explain(&format!("verifying {SOCKOPS_PROG}"), &e))?;
    // A bpf_link: it runs beside other sock_ops programs (a CNI's, say) and never replaces
    // them (links take no attach flags; `Single` sends none).
    p.attach(cgroup, CgroupAttachMode::Single)
        .map_err(|e| ebpf::explain(&what, &e))?;
    Ok(())
}

fn attach_error_report(bpf: &mut Ebpf) -> Result<(), LoadError> {
    let what = format!(
        "attaching {ERROR_PROG} to tracepoint {}/{}",
        ERROR_TP.0, ERROR_TP.1
    );
    tracefs::ensure().map_err(|e| {
        LoadError::new(
            format!("{what}: {e}"),
            "mount tracefs: mount -t tracefs tracefs /sys/kernel/tracing",
        )
    })?;
    let p: &mut TracePoint = ebpf::program(bpf, NAME, ERROR_PROG)?;
    p.load()
        .map_err(|e| ebpf::explain(&format!("verifying {ERROR_PROG}"), &e))?;
    p.attach(ERROR_TP.0, ERROR_TP.1)
        .map_err(|e| ebpf::explain(&what, &e))?;
    Ok(())
}

/// Creates the all-zero "other" series before anything runs: when `NET_SERIES` is full the
/// kernel folds into it, and a full map could not take it then.
fn reserve_other_series(bpf: &mut Ebpf) -> Result<(), LoadError> {
    use agent_common::network::{SeriesKey, SeriesStats};
    let what = format!("creating the \"other\" series in {SERIES_MAP}");
    let map = bpf.map_mut(SERIES_MAP).ok_or_else(|| {
        LoadError::new(
            format!("map {SERIES_MAP} missing from the network object"),
            "rebuild with `cargo xtask build-ebpf`",
        )
    })?;
    let mut series: aya::maps::PerCpuHashMap<&mut MapData, SeriesKey, SeriesStats> =
        aya::maps::PerCpuHashMap::try_from(map).map_err(|e| ebpf::explain(&what, &e))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| ebpf::explain_os(&what, &e))?;
    let zeros = aya::maps::PerCpuValues::try_from(vec![SeriesStats::ZERO; cpus])
        .map_err(|e| ebpf::explain_os(&what, &e))?;
    series
        .insert(SeriesKey::default(), zeros, 0)
        .map_err(|e| ebpf::explain(&what, &e))
}

/// Loads the object sized by `cfg` and attaches it. Fails (nothing attached) when sock_ops
/// cannot attach; the error tracepoint failing only marks its hook.
pub fn load_and_attach(
    cfg: &NetworkConfig,
) -> Result<(Ebpf, Vec<HookStatus>), (LoadError, Vec<HookStatus>)> {
    let mut hooks = hooks_for(cfg);
    let agg = aggregation_code(cfg.aggregation);
    let rate = cfg.events_per_second as u64;
    let rtt_on = cfg.rtt_histogram as u32;
    let rtt_period = cfg.rtt_sample_interval.as_nanos().min(u64::MAX as u128) as u64;
    let mut bpf = ebpf::load(NAME, |l| {
        l.map_max_entries(SERIES_MAP, cfg.max_series)
            .map_max_entries(CONNS_MAP, cfg.max_connections)
            .override_global(AGG_GLOBAL, &agg, true)
            .override_global(EVENT_RATE_GLOBAL, &rate, true)
            .override_global(RTT_PERIOD_GLOBAL, &rtt_period, true)
            .override_global(RTT_ON_GLOBAL, &rtt_on, true);
    })
    .map_err(|e| (e, hooks.clone()))?;
    if let Err(e) = reserve_other_series(&mut bpf) {
        return Err((e, hooks));
    }
    if let Err(e) = cgroup_dir(cfg).and_then(|dir| attach_sockops(&mut bpf, &dir)) {
        hooks[0].error = Some(e.cause.clone());
        return Err((e, hooks));
    }
    hooks[0].attached = true;
    match attach_error_report(&mut bpf) {
        Ok(()) => hooks[1].attached = true,
        Err(e) => {
            tracing::warn!(probe = NAME, "{}; failures will not be classified", e.cause);
            tracing::warn!(probe = NAME, "fix: {}", e.fix);
            hooks[1].error = Some(e.cause);
        }
    }
    Ok((bpf, hooks))
}

/// The network probe for the shared lifecycle.
pub struct Network;

impl ProbeSpec for Network {
    type Config = NetworkConfig;
    type Worker = Drainer;
    const NAME: &'static str = NAME;
    const FEEDS_SIGNALS: bool = true;

    fn enabled(cfg: &NetworkConfig) -> bool {
        cfg.enabled
    }

    fn needs_reload(a: &NetworkConfig, b: &NetworkConfig) -> bool {
        a.max_series != b.max_series
            || a.max_connections != b.max_connections
            || a.aggregation != b.aggregation
            || a.events_per_second != b.events_per_second
            || a.rtt_sample_interval != b.rtt_sample_interval
            || a.rtt_histogram != b.rtt_histogram
            || a.cgroup != b.cgroup
    }

    fn reload_reason() -> &'static str {
        "map sizes, aggregation, event rate, RTT sampling or cgroup changed: reloading the probe (its series restart)"
    }

    fn detached_hooks(cfg: &NetworkConfig) -> Vec<HookStatus> {
        hooks_for(cfg)
    }

    fn start(cfg: &NetworkConfig, env: &ProbeEnv) -> StartResult<Drainer> {
        let (mut bpf, hooks) = load_and_attach(cfg)?;
        let taken = (|| -> Result<_, LoadError> {
            let maps = Maps {
                series: ebpf::take_map(&mut bpf, NAME, SERIES_MAP)?,
                counters: ebpf::take_map(&mut bpf, NAME, COUNTERS_MAP)?,
            };
            let events: RingBuf<MapData> = ebpf::take_map(&mut bpf, NAME, EVENTS_MAP)?;
            let listeners: SkStorage<MapData, Owner> =
                ebpf::take_map(&mut bpf, NAME, LISTENERS_MAP)?;
            Ok((maps, events, listeners))
        })();
        let (maps, events, mut listeners) = match taken {
            Ok(x) => x,
            Err(e) => return Err((e, hooks)),
        };
        tracing::info!(probe = NAME, hook = %hooks[0].hook, aggregation = cfg.aggregation.as_str(), "attached sock_ops and the socket-error tracepoint");
        // After attach, so no listen() falls between the scan and the hook.
        let started = Instant::now();
        let seeded = listeners::seed(&mut listeners);
        drop(listeners);
        tracing::info!(probe = NAME, found = seeded.found, added = seeded.inserted, took = ?started.elapsed(), "listening sockets opened before attach: attributed to their processes");
        let drainer = Drainer {
            bpf: Some(bpf),
            maps,
            events,
            events_read: 0,
            listeners_seeded: seeded.inserted,
            clock: Clock::new(),
            cfg: cfg.clone(),
            agg: Aggregator::new(),
            cache: ProcCache::new(8192),
            store: env.store.clone(),
            state: env.state.clone(),
            increments: Increments::new(),
            activity: env.activity.clone(),
            last_read: Instant::now(),
        };
        Ok((drainer, hooks))
    }
}

pub struct Drainer {
    /// The loaded object: dropping it detaches the programs (the maps were taken out of it).
    bpf: Option<Ebpf>,
    maps: Maps,
    events: RingBuf<MapData>,
    events_read: u64,
    listeners_seeded: u64,
    clock: Clock,
    cfg: NetworkConfig,
    agg: Aggregator,
    cache: ProcCache,
    store: Arc<Store>,
    state: Arc<AgentState>,
    /// Per-process increments for the signal deriver (before any folding).
    increments: Increments,
    activity: ActivityHub,
    /// When the kernel series were last read.
    last_read: Instant,
}

impl ProbeWorker for Drainer {
    type Config = NetworkConfig;

    fn period(&self) -> Duration {
        self.cfg.interval
    }

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

    fn retune(&mut self, cfg: &NetworkConfig) {
        self.cfg = cfg.clone();
    }

    fn finish(mut self) {
        drop(self.bpf.take());
        self.read_events();
        self.drain_once();
    }
}

impl Drainer {
    fn read_events(&mut self) {
        let mut records = Vec::new();
        while let Some(item) = self.events.next() {
            self.events_read += 1;
            if let Some(r) = events::decode(&item, &self.clock) {
                records.push(r);
            }
        }
        if !records.is_empty() {
            self.state
                .push_connections(records, self.cfg.recent_connections);
        }
    }

    fn drain_once(&mut self) {
        let started = Instant::now();
        let readings = match self.maps.drain() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(probe = NAME, "drain failed: {e}");
                return;
            }
        };
        let entries = readings.len() as u64;
        let now = Instant::now();
        let (read_at, elapsed) = (SystemTime::now(), now.duration_since(self.last_read));
        self.last_read = now;
        let increments = self.increments.ingest(&readings);
        let cache = &mut self.cache;
        // Called once per series, at first sight: from /proc only when the process holding
        // the pid is the one that created the entry, else from what the kernel captured.
        let mut attribute = |key: &SeriesKey, stats: &SeriesStats, live: bool| {
            let comm = comm_str(&stats.comm);
            // The pid's earlier holder may be cached: a series is attributed once anyway.
            cache.forget(key.tgid);
            if live {
                let info = cache.get(key.tgid, &comm, stats.cgroup_id);
                Attribution {
                    exe_name: info.exe_name,
                    container_id: info.container_id,
                    workload: info.workload,
                }
            } else {
                Attribution {
                    container_id: cache.container_of_cgroup(stats.cgroup_id),
                    workload: cache.workload_of_cgroup(stats.cgroup_id),
                    exe_name: comm,
                }
            }
        };
        let finals = self
            .agg
            .ingest(readings, now, SystemTime::now(), &mut attribute);
        self.maps.delete(&finals);
        self.publish_activity(increments, read_at, elapsed);
        self.agg.expire(now, self.cfg.retain_exited);
        let families = self.agg.families();
        self.store.publish(Batch {
            source: NAME.to_string(),
            time: SystemTime::now(),
            families,
        });
        self.report(entries);
        tracing::debug!(probe = NAME, entries, took = ?started.elapsed(), "drained");
    }

    /// Names each process's increments as its series are named, and publishes them.
    fn publish_activity(
        &self,
        increments: Vec<activity::ProcIncrement>,
        time: SystemTime,
        elapsed: Duration,
    ) {
        if !self.activity.has_subscribers() {
            return;
        }
        let procs = increments
            .into_iter()
            .map(|p| {
                let a = self.agg.attribution(&p.key);
                NetworkActivity {
                    process: ProcessRef {
                        pid: p.pid,
                        gen: p.start,
                        exe_name: a.map_or("", |a| a.exe_name.as_str()).into(),
                        container_id: a.and_then(|a| a.container_id.as_deref()).map(Into::into),
                        cgroup_id: p.cgroup_id,
                    },
                    delta: p.delta,
                    ended: p.ended,
                }
            })
            .collect();
        self.activity.publish(ActivityBatch {
            source: NAME,
            time,
            elapsed,
            published: SystemTime::now(),
            activity: Activity::Network(procs),
        });
    }

    fn report(&self, entries: u64) {
        let k = self.maps.counters();
        let mut detail: std::collections::BTreeMap<String, u64> =
            k.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        detail.insert("tracked_series".into(), self.agg.tracked() as u64);
        detail.insert("expired_series".into(), self.agg.expired);
        detail.insert("listeners_seeded".into(), self.listeners_seeded);
        detail.insert("pid_reused".into(), self.agg.pid_reused);
        detail.insert(
            "pid_reused_within_interval".into(),
            self.agg.pid_reused_within_interval,
        );
        self.state.set_map(
            SERIES_MAP,
            MapStats {
                probe: NAME.into(),
                processed: k["conns_tracked"],
                lost: k["conns_insert_failed"] + k["series_insert_failed"] + k["cb_flags_failed"],
                entries: Some(entries),
                capacity: Some(self.cfg.max_series as u64),
                detail,
            },
        );
        self.state.set_map(
            EVENTS_MAP,
            MapStats {
                probe: NAME.into(),
                processed: self.events_read,
                lost: k["events_rate_limited"] + k["events_ringbuf_full"],
                entries: None,
                capacity: None,
                detail: [
                    ("events_sent".to_string(), k["events_sent"]),
                    ("events_rate_limited".to_string(), k["events_rate_limited"]),
                    ("events_ringbuf_full".to_string(), k["events_ringbuf_full"]),
                ]
                .into(),
            },
        );
    }
}
