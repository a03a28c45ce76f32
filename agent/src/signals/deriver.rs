//! The one signal deriver: turns each probe's per-process activity (before any folding) into
//! the signals of `names::TABLE`, for detection and the decision engine alike.
//!
//! Invariants: rates divide by the time measured between the two kernel reads that bound the
//! interval, not the nominal interval; ratios and means are left out when their denominator is
//! zero (no calls: no error ratio); CPU and memory come from `/proc` for the incarnations active
//! in the interval, and only while a consumer needs them (`Need`: the decision path does not
//! wait for `/proc` reads nobody uses); a CPU rate needs two reads of the same incarnation (a
//! reused pid starts over); an incarnation that ended is reported in `ended` and sampled no more (an exit is not
//! an anomaly). Network signals come from the network probe's per-process increments: failures
//! per measured second, retransmitted / sent segments, mean handshake time; CPU and memory only
//! with syscall activity (every process that uses the network makes syscalls). Memory: one entry per live incarnation read, dropped when it ends or goes
//! unseen for `FORGET_AFTER` batches.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{
    activity::{Activity, ActivityBatch, NetworkDelta, ProcessRef},
    names::Signal,
    Need,
};

/// What a signal value belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SignalKey {
    pub process: ProcessRef,
    /// The syscall number for per-syscall samples; `None` for the process as a whole.
    pub syscall: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SignalSample {
    pub signal: Signal,
    pub key: Arc<SignalKey>,
    pub value: f64,
}

/// One drain's signals.
#[derive(Clone, Debug)]
pub struct SignalBatch {
    /// The probe whose drain this is.
    pub source: &'static str,
    /// When the kernel was read (the observation time).
    pub time: SystemTime,
    /// Measured time since that probe's previous read.
    pub elapsed: Duration,
    /// When the probe published its activity, and when this batch was derived from it (the
    /// decision path's latency stages).
    pub published: SystemTime,
    pub derived: SystemTime,
    pub samples: Vec<SignalSample>,
    /// Incarnations that ended in the interval (exit or exec).
    pub ended: Vec<ProcessRef>,
}

/// Per-process figures from `/proc` (a trait so tests can feed exact values).
pub trait ProcSource {
    /// CPU time used by the whole process so far, ns.
    fn cpu_ns(&self, pid: u32) -> Option<u64>;
    /// Resident memory, bytes.
    fn rss_bytes(&self, pid: u32) -> Option<u64>;
}

/// `/proc/<pid>/stat` (utime + stime of every thread) and `/proc/<pid>/statm` through procfs,
/// one `open(2)` each (procfs-core's `FromRead`, without a `/proc/<pid>` directory handle).
pub struct Procfs {
    ticks_per_second: u64,
    page_size: u64,
}

impl Default for Procfs {
    fn default() -> Self {
        Procfs {
            ticks_per_second: procfs::ticks_per_second().max(1),
            page_size: procfs::page_size().max(1),
        }
    }
}

impl ProcSource for Procfs {
    // procfs-core's parsers (`FromRead`) on one file each.
    fn cpu_ns(&self, pid: u32) -> Option<u64> {
        use procfs::FromRead;
        let st = procfs::process::Stat::from_file(format!("/proc/{pid}/stat")).ok()?;
        Some((st.utime + st.stime) * 1_000_000_000 / self.ticks_per_second)
    }

    fn rss_bytes(&self, pid: u32) -> Option<u64> {
        use procfs::FromRead;
        let m = procfs::process::StatM::from_file(format!("/proc/{pid}/statm")).ok()?;
        Some(m.resident * self.page_size)
    }
}

/// Batches after which an incarnation not seen again is forgotten.
const FORGET_AFTER: u64 = 60;

struct CpuLast {
    cpu_ns: u64,
    at: SystemTime,
    seen_batch: u64,
}

pub struct Deriver<P: ProcSource = Procfs> {
    /// Syscalls for which per-syscall samples are made (watches and rules name them).
    demand: BTreeSet<u32>,
    /// Whether CPU utilization and memory are read from `/proc`.
    cpu: bool,
    memory: bool,
    procs: P,
    cpus: f64,
    cpu_last: HashMap<(u32, u64), CpuLast>,
    batch: u64,
}

impl Deriver<Procfs> {
    pub fn new() -> Self {
        Self::with_source(Procfs::default())
    }
}

impl Default for Deriver<Procfs> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: ProcSource> Deriver<P> {
    pub fn with_source(procs: P) -> Self {
        Deriver {
            demand: BTreeSet::new(),
            cpu: true,
            memory: true,
            procs,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64,
            cpu_last: HashMap::new(),
            batch: 0,
        }
    }

    /// What to make: per-syscall samples for `need.syscalls` (the union of what detection
    /// watches and enforcement rules name), and CPU and memory only when some consumer reads
    /// them. Until the first call (a deriver of its own, in tests and tools), everything.
    pub fn set_demand(&mut self, need: &Need) {
        if self.demand != need.syscalls {
            self.demand = need.syscalls.clone();
        }
        self.cpu = need.wants(Signal::CpuUtilization);
        self.memory = need.wants(Signal::MemoryUsage);
        if !self.cpu {
            self.cpu_last.clear();
        }
    }

    /// Incarnations whose CPU reading is kept (for `/status`).
    pub fn tracked(&self) -> usize {
        self.cpu_last.len()
    }

    pub fn derive(&mut self, batch: &ActivityBatch) -> SignalBatch {
        self.batch += 1;
        let secs = batch.elapsed.as_secs_f64();
        let mut samples = Vec::new();
        let mut ended = Vec::new();
        match &batch.activity {
            Activity::Syscalls(procs) => {
                for a in procs {
                    if a.ended {
                        self.cpu_last.remove(&(a.process.pid, a.process.gen));
                        ended.push(a.process.clone());
                        continue;
                    }
                    let key = Arc::new(SignalKey {
                        process: a.process.clone(),
                        syscall: None,
                    });
                    let (calls, errors, ns) = (a.calls(), a.errors(), a.duration_ns());
                    push_syscall_signals(&mut samples, &key, calls, errors, ns, secs);
                    for s in a.syscalls.iter().filter(|s| self.demand.contains(&s.nr)) {
                        let key = Arc::new(SignalKey {
                            process: a.process.clone(),
                            syscall: Some(s.nr),
                        });
                        push_syscall_signals(
                            &mut samples,
                            &key,
                            s.calls,
                            s.errors,
                            s.duration_ns,
                            secs,
                        );
                    }
                    self.proc_signals(&mut samples, &key, batch.time);
                }
            }
            Activity::Network(procs) => {
                for a in procs {
                    if a.ended {
                        ended.push(a.process.clone());
                        continue;
                    }
                    let key = Arc::new(SignalKey {
                        process: a.process.clone(),
                        syscall: None,
                    });
                    push_network_signals(&mut samples, &key, &a.delta, secs);
                }
            }
        }
        let now = self.batch;
        self.cpu_last
            .retain(|_, l| now.saturating_sub(l.seen_batch) < FORGET_AFTER);
        SignalBatch {
            source: batch.source,
            time: batch.time,
            elapsed: batch.elapsed,
            published: batch.published,
            derived: SystemTime::now(),
            samples,
            ended,
        }
    }

    /// CPU utilization (from the second read of an incarnation on) and memory.
    fn proc_signals(&mut self, out: &mut Vec<SignalSample>, key: &Arc<SignalKey>, at: SystemTime) {
        let p = &key.process;
        if let Some(cpu) = self.cpu.then(|| self.procs.cpu_ns(p.pid)).flatten() {
            let id = (p.pid, p.gen);
            if let Some(last) = self.cpu_last.get(&id) {
                let dt = at.duration_since(last.at).unwrap_or_default().as_secs_f64();
                if dt > 0.0 && cpu >= last.cpu_ns {
                    out.push(SignalSample {
                        signal: Signal::CpuUtilization,
                        key: key.clone(),
                        value: (cpu - last.cpu_ns) as f64 * 1e-9 / (dt * self.cpus),
                    });
                }
            }
            self.cpu_last.insert(
                id,
                CpuLast {
                    cpu_ns: cpu,
                    at,
                    seen_batch: self.batch,
                },
            );
        }
        if let Some(rss) = self.memory.then(|| self.procs.rss_bytes(p.pid)).flatten() {
            out.push(SignalSample {
                signal: Signal::MemoryUsage,
                key: key.clone(),
                value: rss as f64,
            });
        }
    }
}

/// Failure rate (per measured second), retransmit ratio (when segments were sent) and mean
/// handshake time (when handshakes completed).
fn push_network_signals(
    out: &mut Vec<SignalSample>,
    key: &Arc<SignalKey>,
    d: &NetworkDelta,
    secs: f64,
) {
    let mut push = |signal, value| {
        out.push(SignalSample {
            signal,
            key: key.clone(),
            value,
        })
    };
    if secs > 0.0 {
        push(Signal::TcpFailureRate, d.failures as f64 / secs);
    }
    if d.segments_out > 0 {
        push(
            Signal::TcpRetransmitRatio,
            d.retransmits as f64 / d.segments_out as f64,
        );
    }
    if d.handshakes > 0 {
        push(
            Signal::TcpHandshakeDuration,
            d.handshake_us as f64 * 1e-6 / d.handshakes as f64,
        );
    }
}

fn push_syscall_signals(
    out: &mut Vec<SignalSample>,
    key: &Arc<SignalKey>,
    calls: u64,
    errors: u64,
    duration_ns: u64,
    secs: f64,
) {
    if secs > 0.0 {
        out.push(SignalSample {
            signal: Signal::SyscallRate,
            key: key.clone(),
            value: calls as f64 / secs,
        });
    }
    if calls > 0 {
        out.push(SignalSample {
            signal: Signal::SyscallErrorRatio,
            key: key.clone(),
            value: errors as f64 / calls as f64,
        });
        out.push(SignalSample {
            signal: Signal::SyscallDuration,
            key: key.clone(),
            value: duration_ns as f64 * 1e-9 / calls as f64,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::signals::activity::{NetworkActivity, SyscallActivity, SyscallDelta};

    #[derive(Default)]
    struct Fake {
        cpu: RefCell<HashMap<u32, u64>>,
    }

    impl ProcSource for &Fake {
        fn cpu_ns(&self, pid: u32) -> Option<u64> {
            self.cpu.borrow().get(&pid).copied()
        }
        fn rss_bytes(&self, pid: u32) -> Option<u64> {
            Some(pid as u64 * 4096)
        }
    }

    fn proc(pid: u32, gen: u64) -> ProcessRef {
        ProcessRef {
            pid,
            gen,
            exe_name: "w".into(),
            container_id: None,
            cgroup_id: 0,
        }
    }

    fn batch(t: u64, elapsed_ms: u64, acts: Vec<SyscallActivity>) -> ActivityBatch {
        ActivityBatch {
            source: "syscalls",
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(t),
            elapsed: Duration::from_millis(elapsed_ms),
            published: SystemTime::UNIX_EPOCH + Duration::from_secs(t),
            activity: Activity::Syscalls(acts),
        }
    }

    fn act(pid: u32, gen: u64, calls: u64, errors: u64, ended: bool) -> SyscallActivity {
        SyscallActivity {
            process: proc(pid, gen),
            syscalls: vec![
                SyscallDelta {
                    nr: 110,
                    calls,
                    errors: 0,
                    duration_ns: calls * 200,
                },
                SyscallDelta {
                    nr: 3,
                    calls: errors,
                    errors,
                    duration_ns: errors * 1000,
                },
            ],
            ended,
        }
    }

    fn value(b: &SignalBatch, s: Signal, syscall: Option<u32>) -> Option<f64> {
        b.samples
            .iter()
            .find(|x| x.signal == s && x.key.syscall == syscall)
            .map(|x| x.value)
    }

    #[test]
    fn rates_use_measured_time_and_ratios_need_calls() {
        let fake = Fake::default();
        let mut d = Deriver::with_source(&fake);
        d.cpus = 2.0;
        // 1,000 calls over a measured 1.25 s (the nominal interval would say 1 s).
        let b = d.derive(&batch(10, 1250, vec![act(7, 1, 900, 100, false)]));
        assert_eq!(value(&b, Signal::SyscallRate, None), Some(800.0));
        assert_eq!(value(&b, Signal::SyscallErrorRatio, None), Some(0.1));
        let mean = value(&b, Signal::SyscallDuration, None).unwrap();
        assert!((mean - (900.0 * 200e-9 + 100.0 * 1000e-9) / 1000.0).abs() < 1e-15);
        assert_eq!(
            value(&b, Signal::SyscallRate, Some(110)),
            None,
            "not demanded"
        );
        assert_eq!(value(&b, Signal::MemoryUsage, None), Some(7.0 * 4096.0));
        let idle = d.derive(&batch(11, 1000, vec![act(7, 1, 0, 0, false)]));
        assert_eq!(value(&idle, Signal::SyscallRate, None), Some(0.0));
        assert_eq!(value(&idle, Signal::SyscallErrorRatio, None), None);
    }

    #[test]
    fn per_syscall_on_demand_and_cpu_from_the_second_read() {
        let fake = Fake::default();
        let mut d = Deriver::with_source(&fake);
        d.cpus = 2.0;
        d.set_demand(&Need {
            syscalls: [110].into(),
            signals: [Signal::CpuUtilization].into(),
        });
        fake.cpu.borrow_mut().insert(7, 5_000_000_000);
        let b = d.derive(&batch(10, 1000, vec![act(7, 1, 500, 0, false)]));
        assert_eq!(value(&b, Signal::SyscallRate, Some(110)), Some(500.0));
        assert_eq!(value(&b, Signal::CpuUtilization, None), None);
        // 1.5 CPU-seconds in 1 s on 2 CPUs.
        fake.cpu.borrow_mut().insert(7, 6_500_000_000);
        let b = d.derive(&batch(11, 1000, vec![act(7, 1, 500, 0, false)]));
        assert_eq!(value(&b, Signal::CpuUtilization, None), Some(0.75));
        // The pid reused by another incarnation starts over.
        let b = d.derive(&batch(12, 1000, vec![act(7, 2, 500, 0, false)]));
        assert_eq!(value(&b, Signal::CpuUtilization, None), None);
    }

    /// Counts `/proc` reads by kind.
    #[derive(Default)]
    struct Counting {
        cpu: std::cell::Cell<u32>,
        rss: std::cell::Cell<u32>,
    }

    impl ProcSource for &Counting {
        fn cpu_ns(&self, _: u32) -> Option<u64> {
            self.cpu.set(self.cpu.get() + 1);
            Some(1)
        }
        fn rss_bytes(&self, _: u32) -> Option<u64> {
            self.rss.set(self.rss.get() + 1);
            Some(4096)
        }
    }

    #[test]
    fn proc_is_read_only_for_signals_a_consumer_needs() {
        let c = Counting::default();
        let mut d = Deriver::with_source(&c);
        let three = || {
            (1..=3)
                .map(|pid| act(pid, 1, 10, 0, false))
                .collect::<Vec<_>>()
        };
        // No consumer needs CPU or memory: no read, no sample, syscall signals unchanged.
        d.set_demand(&Need::default());
        let b = d.derive(&batch(10, 1000, three()));
        assert_eq!((c.cpu.get(), c.rss.get()), (0, 0));
        assert_eq!(value(&b, Signal::MemoryUsage, None), None);
        assert_eq!(value(&b, Signal::SyscallRate, None), Some(10.0));
        // Memory only: one read per active process.
        d.set_demand(&Need {
            signals: [Signal::MemoryUsage].into(),
            ..Need::default()
        });
        let b = d.derive(&batch(11, 1000, three()));
        assert_eq!((c.cpu.get(), c.rss.get()), (0, 3));
        assert_eq!(value(&b, Signal::MemoryUsage, None), Some(4096.0));
        // CPU too; when it is no longer needed its readings are dropped.
        d.set_demand(&Need {
            signals: [Signal::CpuUtilization, Signal::MemoryUsage].into(),
            ..Need::default()
        });
        d.derive(&batch(12, 1000, three()));
        assert_eq!((c.cpu.get(), c.rss.get()), (3, 6));
        assert_eq!(d.tracked(), 3);
        d.set_demand(&Need::default());
        assert_eq!(d.tracked(), 0);
    }

    fn net(pid: u32, delta: NetworkDelta, ended: bool) -> NetworkActivity {
        NetworkActivity {
            process: proc(pid, 77),
            delta,
            ended,
        }
    }

    fn net_batch(elapsed_ms: u64, acts: Vec<NetworkActivity>) -> ActivityBatch {
        ActivityBatch {
            source: "network",
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(20),
            elapsed: Duration::from_millis(elapsed_ms),
            published: SystemTime::UNIX_EPOCH + Duration::from_secs(20),
            activity: Activity::Network(acts),
        }
    }

    #[test]
    fn network_rates_ratios_and_means() {
        let fake = Fake::default();
        let mut d = Deriver::with_source(&fake);
        let delta = NetworkDelta {
            handshakes: 4,
            handshake_us: 4 * 1500,
            failures: 3,
            retransmits: 5,
            segments_out: 200,
        };
        // 3 failures over a measured 2.5 s (the nominal interval would say 5 s).
        let b = d.derive(&net_batch(2500, vec![net(8, delta, false)]));
        assert_eq!(value(&b, Signal::TcpFailureRate, None), Some(1.2));
        assert_eq!(value(&b, Signal::TcpRetransmitRatio, None), Some(0.025));
        assert_eq!(value(&b, Signal::TcpHandshakeDuration, None), Some(0.0015));
        // No CPU or memory from network activity (syscall activity brings them).
        assert_eq!(value(&b, Signal::MemoryUsage, None), None);
        assert_eq!(b.samples.len(), 3);
        assert_eq!(b.source, "network");
        assert!(b.samples.iter().all(|s| s.key.process.gen == 77));
    }

    #[test]
    fn network_ratios_and_means_need_their_denominators() {
        let fake = Fake::default();
        let mut d = Deriver::with_source(&fake);
        // Retransmits with no segment sent cannot be: no ratio rather than infinity.
        let delta = NetworkDelta {
            retransmits: 2,
            ..Default::default()
        };
        let b = d.derive(&net_batch(1000, vec![net(8, delta, false)]));
        assert_eq!(value(&b, Signal::TcpFailureRate, None), Some(0.0));
        assert_eq!(value(&b, Signal::TcpRetransmitRatio, None), None);
        assert_eq!(value(&b, Signal::TcpHandshakeDuration, None), None);
        // A process that exited is reported, not sampled.
        let b = d.derive(&net_batch(1000, vec![net(9, delta, true)]));
        assert!(b.samples.is_empty());
        assert_eq!(b.ended, vec![proc(9, 77)]);
    }

    #[test]
    fn ended_incarnations_are_reported_not_sampled() {
        let fake = Fake::default();
        let mut d = Deriver::with_source(&fake);
        let b = d.derive(&batch(10, 1000, vec![act(9, 1, 50, 0, true)]));
        assert!(b.samples.is_empty());
        assert_eq!(b.ended, vec![proc(9, 1)]);
    }
}
