//! The one probe lifecycle every probe fills in: start (load + attach on the probe's own
//! thread), retune in place, reload (a new kernel object), stop (detach, then a last drain), the
//! drain loop, and the probe's state on `/status`.
//!
//! A probe is a [`ProbeSpec`] (how to start it, which config changes need a new kernel object)
//! and the [`ProbeWorker`] it starts, which lives on the `<name>-drain` thread and owns the
//! kernel object, its maps and whatever is not `Send` (blazesym's symbolizer). The controller,
//! [`ProbeHandle`], runs on the caller's thread and talks to the worker over a channel.
//!
//! Invariants:
//! - the worker is built on its own thread and reports whether it attached before `apply`
//!   returns, so `/status` and `/readyz` are accurate when `apply` returns;
//! - a probe whose start fails is `failed` with a cause and a fix, and nothing of it stays
//!   attached; the other probes keep running;
//! - `stop` (and a reload, which is a stop and a start) runs the worker's `finish`: detach
//!   first, then the last drain, so the last published values are complete;
//! - ticks are kept in time: the next tick is due one `period` after the previous one started,
//!   and a retune to a shorter period takes effect at once.

use std::{
    os::fd::BorrowedFd,
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use super::waker::{poll_readable, Waker};
use crate::{
    ebpf::LoadError,
    metrics::Store,
    signals::ActivityHub,
    status::state::{AgentState, HookStatus, ProbeState, ProbeStatus},
};

/// What a probe needs from the rest of the agent.
#[derive(Clone)]
pub struct ProbeEnv {
    pub store: Arc<Store>,
    pub state: Arc<AgentState>,
    /// Per-process activity before any folding (the signal deriver's feed).
    pub activity: ActivityHub,
    /// The agent's async runtime, entered on each drain thread (kernel log forwarding spawns
    /// tasks on it); `None` where no runtime exists (unit tests).
    pub runtime: Option<tokio::runtime::Handle>,
    /// Wakes this probe's drain thread (set by the lifecycle on the worker's own copy; `None`
    /// elsewhere, and when no eventfd could be made: the loop then looks every 200 ms).
    pub waker: Option<Waker>,
}

/// A started probe's hooks, or why it could not start (and which hooks were tried).
pub type StartResult<W> = Result<(W, Vec<HookStatus>), (LoadError, Vec<HookStatus>)>;

/// The part of a probe that runs on its drain thread.
pub trait ProbeWorker {
    type Config;

    /// How often `tick` runs (the drain interval). Read after every `poll`: a shorter period
    /// (the profiler's while a capture runs) brings the next tick forward.
    fn period(&self) -> Duration;

    /// Sleeps at most `timeout`; returns early when `wake` is readable (a control message or
    /// a request is queued) or the kernel has events for the probe (ring buffers, polled
    /// beside `wake`). `wake` is `None` when no eventfd could be made (the loop then cuts waits
    /// to 200 ms). The default waits for `wake` alone.
    fn wait(&mut self, timeout: Duration, wake: Option<BorrowedFd<'_>>) {
        let _ = poll_readable(wake.as_slice(), timeout);
    }

    /// Work between ticks: read ring buffers, take requests. Runs after every `wait`.
    fn poll(&mut self) {}

    /// The periodic work: drain the kernel maps, publish, report.
    fn tick(&mut self);

    /// Takes settings that need no new kernel object.
    fn retune(&mut self, cfg: &Self::Config);

    /// Detaches every program, then drains and publishes one last time.
    fn finish(self);
}

/// How to start a probe and when its config needs a new kernel object.
pub trait ProbeSpec: 'static {
    type Config: Clone + Send + 'static;
    type Worker: ProbeWorker<Config = Self::Config>;

    /// The probe's name (`syscalls`, `network`, `profiler`): its `/status` key, its metric
    /// source and its thread's name.
    const NAME: &'static str;

    /// Whether the probe feeds the signal deriver (and so the decision engine): its drain
    /// thread then runs at the decision path's priority ([`crate::priority`]).
    const FEEDS_SIGNALS: bool = false;

    fn enabled(cfg: &Self::Config) -> bool;

    /// Whether going from `old` to `new` needs a new kernel object (map sizes, globals, hooks);
    /// everything else is retuned in place.
    fn needs_reload(old: &Self::Config, new: &Self::Config) -> bool;

    /// A short description of what reloading changes, for the log.
    fn reload_reason() -> &'static str {
        "settings changed: reloading the probe (its series restart)"
    }

    /// Loads and attaches (on the drain thread). On error nothing stays attached.
    fn start(cfg: &Self::Config, env: &ProbeEnv) -> StartResult<Self::Worker>;

    /// The hooks to show while the probe is detached.
    fn detached_hooks(_cfg: &Self::Config) -> Vec<HookStatus> {
        Vec::new()
    }
}

/// Longest sleep between checks for control messages when the thread has no [`Waker`].
const CONTROL_SLICE: Duration = Duration::from_millis(200);

enum Ctl<C> {
    Config(C),
    Stop,
}

struct Running<C> {
    cfg: C,
    ctl: mpsc::Sender<Ctl<C>>,
    waker: Option<Waker>,
    thread: thread::JoinHandle<()>,
}

impl<C> Running<C> {
    fn send(&self, m: Ctl<C>) {
        let _ = self.ctl.send(m);
        if let Some(w) = &self.waker {
            w.wake();
        }
    }
}

/// Records probe `name`'s state for `/status` and `/readyz`, with cause and fix from `err`.
pub(crate) fn report(
    state: &AgentState,
    name: &str,
    s: ProbeState,
    err: Option<&LoadError>,
    hooks: Vec<HookStatus>,
) {
    state.set_probe(
        name,
        ProbeStatus {
            state: s,
            error: err.map(|e| e.cause.clone()),
            fix: err.map(|e| e.fix.clone()),
            hooks,
        },
    );
}

/// Logs why probe `name` cannot run (cause, then fix) and records it as failed.
pub(crate) fn report_failure(
    state: &AgentState,
    name: &str,
    e: &LoadError,
    hooks: Vec<HookStatus>,
) {
    tracing::error!(probe = name, "{}", e.cause);
    tracing::error!(probe = name, "fix: {}", e.fix);
    report(state, name, ProbeState::Failed, Some(e), hooks);
}

/// The controller of one probe: starts, retunes, reloads and stops its worker.
pub struct ProbeHandle<S: ProbeSpec> {
    env: ProbeEnv,
    running: Option<Running<S::Config>>,
}

impl<S: ProbeSpec> ProbeHandle<S> {
    pub fn new(env: ProbeEnv) -> Self {
        ProbeHandle { env, running: None }
    }

    /// Whether the probe runs now.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Brings the probe in line with `cfg`: start, stop, reload or retune.
    pub fn apply(&mut self, cfg: &S::Config) {
        if !S::enabled(cfg) {
            self.stop();
            self.env.store.remove(S::NAME);
            report(&self.env.state, S::NAME, ProbeState::Disabled, None, vec![]);
            return;
        }
        if let Some(r) = &mut self.running {
            if !S::needs_reload(&r.cfg, cfg) {
                r.send(Ctl::Config(cfg.clone()));
                r.cfg = cfg.clone();
                return;
            }
            tracing::info!(probe = S::NAME, "{}", S::reload_reason());
            self.stop();
        }
        self.start(cfg);
    }

    fn start(&mut self, cfg: &S::Config) {
        let state = &self.env.state;
        report(state, S::NAME, ProbeState::Starting, None, vec![]);
        let (ctl_tx, ctl_rx) = mpsc::channel();
        let (started_tx, started_rx) = mpsc::channel();
        let (c, mut env) = (cfg.clone(), self.env.clone());
        // Without an eventfd (descriptors exhausted) the loop looks for messages every 200 ms.
        let waker = Waker::new()
            .map_err(|e| tracing::warn!(probe = S::NAME, "no eventfd for the drain thread: {e}"))
            .ok();
        env.waker = waker.clone();
        let spawned = thread::Builder::new()
            .name(format!("{}-drain", S::NAME))
            .spawn(move || {
                let _entered = env.runtime.as_ref().map(|h| h.enter());
                let _path = S::FEEDS_SIGNALS.then(crate::priority::Member::join);
                let worker = match S::start(&c, &env) {
                    Ok((w, hooks)) => {
                        let _ = started_tx.send(Ok(hooks));
                        w
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                run(worker, ctl_rx, env.waker);
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                let e = LoadError::new(
                    format!("cannot start the {} drain thread: {e}", S::NAME),
                    "raise the thread limit (ulimit -u)",
                );
                report_failure(state, S::NAME, &e, S::detached_hooks(cfg));
                return;
            }
        };
        let hooks = match started_rx.recv() {
            Ok(Ok(hooks)) => hooks,
            Ok(Err((e, hooks))) => {
                let _ = thread.join();
                report_failure(state, S::NAME, &e, hooks);
                return;
            }
            Err(_) => {
                let _ = thread.join();
                let e = LoadError::new(
                    format!("the {} probe thread ended while starting", S::NAME),
                    "see the log above; report it to the agent's maintainers",
                );
                report_failure(state, S::NAME, &e, S::detached_hooks(cfg));
                return;
            }
        };
        // Some hooks are optional: the probe runs degraded without them, and says why.
        match hooks.iter().find_map(|h| h.error.clone()) {
            None => report(state, S::NAME, ProbeState::Attached, None, hooks),
            Some(cause) => {
                let e = LoadError::new(
                    cause,
                    "run `agent check`; the probe keeps running on the rest",
                );
                tracing::warn!(probe = S::NAME, "{}", e.cause);
                report(state, S::NAME, ProbeState::Degraded, Some(&e), hooks);
            }
        }
        self.running = Some(Running {
            cfg: cfg.clone(),
            ctl: ctl_tx,
            waker,
            thread,
        });
    }

    /// Detaches, then drains one last time so the final values are published.
    pub fn stop(&mut self) {
        let Some(r) = self.running.take() else {
            return;
        };
        r.send(Ctl::Stop);
        let _ = r.thread.join();
        report(
            &self.env.state,
            S::NAME,
            ProbeState::Detached,
            None,
            S::detached_hooks(&r.cfg),
        );
        tracing::info!(probe = S::NAME, "detached");
    }
}

impl<S: ProbeSpec> Drop for ProbeHandle<S> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The drain loop: wait (for events or the next tick), poll, take control messages, tick.
fn run<W: ProbeWorker>(mut worker: W, ctl: mpsc::Receiver<Ctl<W::Config>>, waker: Option<Waker>) {
    // Without a waker, waits are cut to CONTROL_SLICE.
    let slice = if waker.is_some() {
        Duration::MAX
    } else {
        CONTROL_SLICE
    };
    // When the last tick was due (or the start), and when the next one is.
    let mut last = Instant::now();
    let mut next = last + worker.period();
    loop {
        let wait = next.saturating_duration_since(Instant::now()).min(slice);
        worker.wait(wait, waker.as_ref().map(Waker::fd));
        if let Some(w) = &waker {
            w.reset();
        }
        worker.poll();
        next = next.min(last + worker.period());
        loop {
            match ctl.try_recv() {
                Ok(Ctl::Config(c)) => {
                    worker.retune(&c);
                    next = next.min(Instant::now() + worker.period());
                }
                Ok(Ctl::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    worker.finish();
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        if now >= next {
            worker.tick();
            // Kept in time: the next tick is one period after this one was due, unless the
            // tick ran late by more than a period (then from now).
            let period = worker.period();
            last = if next + period >= now { next } else { now };
            next = last + period;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Cfg {
        enabled: bool,
        period: Duration,
        size: u32,
        fail: bool,
    }

    /// What the fake worker did, in order.
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn log(s: impl Into<String>) {
        LOG.lock().unwrap().push(s.into());
    }

    struct Fake;
    struct FakeWorker {
        cfg: Cfg,
    }

    impl ProbeWorker for FakeWorker {
        type Config = Cfg;
        fn period(&self) -> Duration {
            self.cfg.period
        }
        fn tick(&mut self) {
            log(format!("tick {}", self.cfg.size));
        }
        fn retune(&mut self, cfg: &Cfg) {
            log(format!("retune {:?}", cfg.period));
            self.cfg = cfg.clone();
        }
        fn finish(self) {
            log(format!("finish {}", self.cfg.size));
        }
    }

    impl ProbeSpec for Fake {
        type Config = Cfg;
        type Worker = FakeWorker;
        const NAME: &'static str = "fake";
        fn enabled(cfg: &Cfg) -> bool {
            cfg.enabled
        }
        fn needs_reload(old: &Cfg, new: &Cfg) -> bool {
            old.size != new.size
        }
        fn start(cfg: &Cfg, _: &ProbeEnv) -> StartResult<FakeWorker> {
            let hook = HookStatus {
                hook: "fake/hook".into(),
                attached: !cfg.fail,
                error: None,
            };
            if cfg.fail {
                return Err((LoadError::new("no hook", "add one"), vec![hook]));
            }
            log(format!("start {}", cfg.size));
            Ok((FakeWorker { cfg: cfg.clone() }, vec![hook]))
        }
    }

    /// Ticks every 10 s until its first `poll`, then every 20 ms.
    struct Shrinking {
        polled: bool,
        ticks: Arc<Mutex<Vec<Instant>>>,
    }

    impl ProbeWorker for Shrinking {
        type Config = ();
        fn period(&self) -> Duration {
            if self.polled {
                Duration::from_millis(20)
            } else {
                Duration::from_secs(10)
            }
        }
        fn poll(&mut self) {
            self.polled = true;
        }
        fn tick(&mut self) {
            self.ticks.lock().unwrap().push(Instant::now());
        }
        fn retune(&mut self, _: &()) {}
        fn finish(self) {}
    }

    #[test]
    fn a_period_shortened_between_ticks_brings_the_next_tick_forward() {
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let worker = Shrinking {
            polled: false,
            ticks: ticks.clone(),
        };
        let started = Instant::now();
        let t = thread::spawn(move || run(worker, rx, None));
        // The first poll comes after at most one control slice (200 ms); ticks follow every
        // 20 ms. 3 s is a generous functional deadline, far below the old 10 s period.
        while ticks.lock().unwrap().len() < 3 && started.elapsed() < Duration::from_secs(3) {
            thread::sleep(Duration::from_millis(10));
        }
        tx.send(Ctl::Stop).unwrap();
        t.join().unwrap();
        let ticks = ticks.lock().unwrap();
        assert!(ticks.len() >= 3, "{} ticks in 3 s", ticks.len());
        assert!(ticks[0].duration_since(started) < Duration::from_secs(3));
    }

    #[test]
    fn a_waker_delivers_control_messages_without_waiting_for_the_tick() {
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let waker = Waker::new().unwrap();
        // Polled once it wakes, the worker would tick every 20 ms: it must not have woken
        // before the message.
        let worker = Shrinking {
            polled: false,
            ticks: ticks.clone(),
        };
        let w = waker.clone();
        let t = thread::spawn(move || run(worker, rx, Some(w)));
        thread::sleep(Duration::from_millis(600));
        // No control slice with a waker: nothing woke the loop in 600 ms (3 slices).
        assert!(ticks.lock().unwrap().is_empty());
        let sent = Instant::now();
        tx.send(Ctl::Stop).unwrap();
        waker.wake();
        t.join().unwrap();
        // Generous functional bound; the period is 10 s.
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{:?}",
            sent.elapsed()
        );
    }

    fn state_of(env: &ProbeEnv) -> ProbeState {
        env.state.probes()["fake"].state
    }

    #[test]
    fn start_retune_reload_stop() {
        LOG.lock().unwrap().clear();
        let env = ProbeEnv {
            store: Store::new(),
            state: Arc::new(AgentState::new("h".into())),
            activity: ActivityHub::new(),
            runtime: None,
            waker: None,
        };
        let mut h = ProbeHandle::<Fake>::new(env.clone());
        let mut cfg = Cfg {
            enabled: true,
            period: Duration::from_millis(20),
            size: 1,
            fail: false,
        };
        h.apply(&cfg);
        assert_eq!(state_of(&env), ProbeState::Attached);
        thread::sleep(Duration::from_millis(70));
        cfg.period = Duration::from_millis(10);
        h.apply(&cfg);
        cfg.size = 2;
        h.apply(&cfg);
        cfg.enabled = false;
        h.apply(&cfg);
        assert_eq!(state_of(&env), ProbeState::Disabled);
        cfg.enabled = true;
        cfg.fail = true;
        h.apply(&cfg);
        assert_eq!(state_of(&env), ProbeState::Failed);
        assert!(!h.is_running());
        let log = LOG.lock().unwrap().clone();
        let pos = |s: &str| {
            log.iter()
                .position(|l| l == s)
                .unwrap_or_else(|| panic!("{s} in {log:?}"))
        };
        assert!(pos("start 1") < pos("tick 1"));
        assert!(pos("tick 1") < pos("retune 10ms"));
        assert!(pos("retune 10ms") < pos("finish 1"));
        assert!(pos("finish 1") < pos("start 2"));
        assert!(pos("start 2") < pos("finish 2"));
        assert_eq!(log.iter().filter(|l| l.starts_with("finish")).count(), 2);
    }
}
