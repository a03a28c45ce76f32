//! Engine tests on real child processes (`sleep`): `for` kept in time, cooldown, the rate cap,
//! monitor mode, an anomaly-fed rule acting (SIGSTOP seen in `/proc/<pid>/stat`), its undo at
//! the TTL and at shutdown, and the journal in between.

use std::{
    path::Path,
    process::{Child, Command},
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{
    engine::{Engine, Env, Settings},
    journal::Journal,
    EnforcementConfig,
};
use crate::{
    metrics::Store,
    signals::{
        deriver::{SignalKey, SignalSample},
        Anomaly, ProcessRef, Signal, SignalBatch,
    },
    status::state::AgentState,
};

struct Sleeper(Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(Command::new("sleep").arg("60").spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    /// The state once it is (or is not) `T`: a signal takes effect when the target next runs,
    /// so poll for up to 2 s.
    fn stopped(&self, want: bool) -> bool {
        for _ in 0..200 {
            if (self.state() == 'T') == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn state(&self) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let (_, rest) = stat.rsplit_once(')').unwrap();
        rest.trim_start().chars().next().unwrap()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn engine(dir: &Path, yaml: &str) -> (Engine, Arc<AgentState>) {
    let cfg: EnforcementConfig = serde_yaml_ng::from_str(yaml).unwrap();
    let state = Arc::new(AgentState::new("test".into()));
    let env = Env {
        state: state.clone(),
        store: Store::new(),
        demand: Default::default(),
        degrade: super::actions::degrade::DegradeHub::new(),
        output_dir: dir.to_path_buf(),
        proc_root: "/proc".into(),
    };
    let s = Settings {
        cfg,
        syscall_interval: Duration::from_secs(1),
    };
    (Engine::new(env, &s), state)
}

fn process(pid: u32) -> ProcessRef {
    ProcessRef {
        pid,
        gen: 1,
        exe_name: Arc::from("sleep"),
        container_id: None,
        cgroup_id: 0,
    }
}

fn batch(pid: u32, time: SystemTime, elapsed: Duration, value: f64) -> SignalBatch {
    SignalBatch {
        source: "syscalls",
        time,
        elapsed,
        published: time,
        derived: time,
        samples: vec![SignalSample {
            signal: Signal::SyscallRate,
            key: Arc::new(SignalKey {
                process: process(pid),
                syscall: None,
            }),
            value,
        }],
        ended: Vec::new(),
    }
}

/// (rule, outcome) of every decision, oldest first.
fn outcomes(state: &AgentState) -> Vec<(String, &'static str)> {
    let mut v: Vec<_> = state
        .decisions()
        .iter()
        .map(|d| (d.rule.clone(), d.outcome.as_str()))
        .collect();
    v.reverse();
    v
}

fn rule(name: &str, when: &str, pid: u32, extra: &str) -> String {
    format!(
        "  - name: {name}\n    when: {when}\n    scope: {{pid: {pid}}}\n    \
         action: {{type: signal, signal: SIGSTOP}}\n{extra}"
    )
}

/// `for: 3` intervals of 1 s is 3 s of observations: two drains of 2 s each (a stretched drain
/// interval) cover it, one does not, and a gap starts over. Monitor mode (the default) records
/// "would" and leaves the process running.
#[test]
fn for_is_kept_in_time_and_monitor_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Sleeper::start();
    let rules = rule(
        "hold",
        "{signal: process.syscall.rate, above: 100, for: 3}",
        p.pid(),
        "",
    );
    let (mut e, state) = engine(dir.path(), &format!("rules:\n{rules}"));
    let t0 = SystemTime::now();
    let two = Duration::from_secs(2);
    e.on_batch(&batch(p.pid(), t0, two, 500.0));
    assert!(outcomes(&state).is_empty(), "2 s < 3 s");
    e.on_batch(&batch(p.pid(), t0 + two, two, 500.0));
    assert_eq!(outcomes(&state), [("hold".to_string(), "monitor")]);
    let d = state.decisions()[0].clone();
    assert!(d.reason.as_deref().unwrap().contains("would"), "{d:?}");
    assert_eq!(d.target.pid, Some(p.pid()));
    assert_ne!(p.state(), 'T', "monitor mode stopped the process");
    // A value below the threshold, or a gap longer than half an interval, starts over.
    let (mut e, state) = engine(dir.path(), &format!("rules:\n{rules}"));
    e.on_batch(&batch(p.pid(), t0, two, 500.0));
    e.on_batch(&batch(p.pid(), t0 + two, two, 50.0));
    e.on_batch(&batch(p.pid(), t0 + 2 * two, two, 500.0));
    assert!(
        outcomes(&state).is_empty(),
        "the low value reset the streak"
    );
    e.on_batch(&batch(p.pid(), t0 + 5 * two, two, 500.0));
    assert!(outcomes(&state).is_empty(), "the gap reset the streak");
    e.on_batch(&batch(p.pid(), t0 + 6 * two, two, 500.0));
    assert_eq!(outcomes(&state).len(), 1);
}

/// Per (rule, target) cooldown, then the per-rule cap on actions per minute.
#[test]
fn cooldown_then_rate_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Sleeper::start(), Sleeper::start());
    let when = "{signal: process.syscall.rate, above: 100, for: 1}";
    let yaml = format!(
        "rules:\n  - name: capped\n    when: {when}\n    scope: {{executable: sleep}}\n    \
         action: {{type: signal, signal: SIGSTOP}}\n    cooldown: 1h\n    max_actions_per_minute: 1\n"
    );
    let (mut e, state) = engine(dir.path(), &yaml);
    let t0 = SystemTime::now();
    let one = Duration::from_secs(1);
    e.on_batch(&batch(a.pid(), t0, one, 500.0));
    e.on_batch(&batch(a.pid(), t0 + one, one, 500.0));
    e.on_batch(&batch(b.pid(), t0 + one, one, 500.0));
    let o: Vec<_> = outcomes(&state).into_iter().map(|(_, o)| o).collect();
    assert_eq!(o, ["monitor", "cooldown", "rate_cap"]);
    let d = state.decisions()[0].clone();
    assert_eq!(d.target.pid, Some(b.pid()));
}

/// A rule fed by an anomaly (as detection publishes them) acts in enforce mode: SIGSTOP, seen
/// by the kernel, journaled, undone (SIGCONT) at the TTL; a low score does not fire; a second
/// firing at shutdown is undone too and the journal is left empty.
#[test]
fn an_anomaly_rule_stops_then_continues_at_the_ttl_and_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let p = Sleeper::start();
    let rules = rule(
        "on-anomaly",
        "{anomaly: process.syscall.rate, min_score: 0.5}",
        p.pid(),
        "    mode: enforce\n    ttl: 300ms\n    cooldown: 0s\n",
    );
    // A rule's enforce only holds under a global enforce (the global mode is the ceiling).
    let (mut e, state) = engine(dir.path(), &format!("mode: enforce\nrules:\n{rules}"));
    let anomaly = |score: f64| Anomaly {
        signal: Signal::SyscallRate,
        key: Arc::new(SignalKey {
            process: process(p.pid()),
            syscall: None,
        }),
        time: SystemTime::now(),
        score,
        value: 90_000.0,
        expected_min: 0.0,
        expected_max: 1_000.0,
    };
    e.on_anomaly(&anomaly(0.3));
    assert!(outcomes(&state).is_empty(), "score below min_score");
    e.on_anomaly(&anomaly(0.9));
    assert_eq!(outcomes(&state), [("on-anomaly".to_string(), "taken")]);
    assert!(p.stopped(true));
    let journal = Journal::open(&Journal::path_in(dir.path())).unwrap();
    assert_eq!(journal.entries().len(), 1, "journaled while in effect");
    let d = state.decisions()[0].clone();
    assert!(d.trigger.contains("score 0.900"), "{d:?}");
    assert!(d.latency_seconds.is_some());
    // Not undone before the TTL, undone at it.
    e.tick();
    assert_eq!(p.state(), 'T');
    std::thread::sleep(Duration::from_millis(350));
    e.tick();
    assert!(p.stopped(false), "SIGCONT at the TTL");
    assert_eq!(outcomes(&state).last().unwrap().1, "undone");
    // Again, then shutdown before the TTL.
    e.on_anomaly(&anomaly(0.9));
    assert!(p.stopped(true));
    e.shutdown();
    assert!(p.stopped(false), "SIGCONT at shutdown");
    let journal = Journal::open(&Journal::path_in(dir.path())).unwrap();
    assert!(journal.entries().is_empty());
    let o: Vec<_> = outcomes(&state).into_iter().map(|(_, o)| o).collect();
    assert_eq!(o, ["taken", "undone", "taken", "undone"]);
}
