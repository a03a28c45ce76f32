//! The decision engine: rules evaluated on every signal batch and anomaly, decisions made
//! (safety, already active, cooldown, rate cap, mode), limiting actions journaled before they
//! act and undone at their TTL, on shutdown (unless persistent) and — for what a crashed
//! predecessor left — at start.
//!
//! Invariants:
//! - `for`, cooldowns, the rate cap and TTLs are kept in time: a threshold holds when the
//!   windows of consecutive observations (each `[time - elapsed, time]`) cover `for`; a gap
//!   longer than half an interval or a value on the other side starts over;
//! - a rule fires once per `for`: its streak starts over after firing;
//! - every decision and every undo is one audit record (`audit.rs`);
//! - a limit is journaled before it acts, and leaves the journal only once
//!   undone; monitor mode and cooldown/rate cap count "would act" like acting, so a monitor
//!   run shows what an enforce run would do;
//! - no action touches the agent, pid 1, kernel threads or the allowlist (`safety.rs`).

mod act;
mod lifecycle;
mod publish;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    actions::{self, Blocked, Kernel, Plan},
    audit::{DecisionRecord, Outcome, TargetRecord},
    cgroup::Hierarchies,
    config::{EnforcementConfig, Mode},
    journal::{Entry, Journal},
    metrics::Telemetry,
    pins::Pins,
    rules::{self, Condition, Rule},
    safety::{Refusal, Safety},
    scope::Target,
};
use crate::{
    export::metrics::unix_nanos,
    metrics::Store,
    signals::{Anomaly, Demand, ProcessRef, SignalBatch},
    status::state::AgentState,
};

/// What the engine needs from the agent.
#[derive(Clone)]
pub struct Env {
    pub state: Arc<AgentState>,
    pub store: Arc<Store>,
    pub demand: Demand,
    pub degrade: actions::degrade::DegradeHub,
    pub output_dir: PathBuf,
    /// `/proc` (tests may point elsewhere for unit tests of reading).
    pub proc_root: PathBuf,
}

/// The part of the config the engine runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub cfg: EnforcementConfig,
    /// `probes.syscalls.interval`: what `for: N` intervals are.
    pub syscall_interval: Duration,
}

impl Settings {
    pub fn of(c: &crate::config::Config) -> Settings {
        Settings {
            cfg: c.enforcement.clone(),
            syscall_interval: c.probes.syscalls.interval,
        }
    }
}

/// A threshold held on one series.
struct Streak {
    since: SystemTime,
    last: SystemTime,
}

/// A limit in effect.
struct ActiveLimit {
    entry: Entry,
}

/// A decision that acts, between [`Engine::decide`] and [`Engine::finish`].
struct Job {
    rule: Rule,
    pid: u32,
    plan: Plan,
    rec: DecisionRecord,
    /// When the target was read and checked.
    planned: SystemTime,
    /// The journal entry of a limit.
    entry: Option<Entry>,
}

/// A kernel-sent signal waiting for its syscall.
struct Pending {
    record: DecisionRecord,
    rule: Arc<str>,
    kind: &'static str,
    deadline: Instant,
}

/// How long an armed in-kernel signal (not SIGSTOP) waits for its syscall.
const ARM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often metrics and `/status` are refreshed without decisions.
const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// The same with no rule, no limit in effect and no signal armed: nothing changes between
/// decisions then (a decision publishes at once), and each wake of the engine's task costs CPU
/// for nothing (measured with the profiler alone: the idle engine took ~15 % of the agent's
/// CPU at a 2 s refresh).
const IDLE_PUBLISH_EVERY: Duration = Duration::from_secs(30);

pub struct Engine {
    env: Env,
    cfg: EnforcementConfig,
    rules: Vec<Rule>,
    safety: Safety,
    kernel: Kernel,
    journal: Result<Journal, String>,
    streaks: HashMap<(usize, u32, u64), Streak>,
    last_action: HashMap<(Arc<str>, String), Instant>,
    per_minute: HashMap<Arc<str>, VecDeque<Instant>>,
    active: Vec<ActiveLimit>,
    pending: HashMap<u32, Pending>,
    telemetry: Telemetry,
    seq: u64,
    last_error: Option<String>,
    last_publish: Instant,
    dirty: bool,
    /// When the batch (or anomaly) being judged reached the engine.
    received: Option<SystemTime>,
    /// When the batch being judged was published by its probe and derived (none for an
    /// anomaly).
    upstream: Option<(SystemTime, SystemTime)>,
}

fn sample_syscall_text(c: &Condition) -> String {
    match c.syscall() {
        Some(nr) => format!(
            "{{syscall={}}}",
            crate::probes::syscalls::names::syscall_name(nr)
        ),
        None => String::new(),
    }
}

impl Engine {
    pub fn new(env: Env, s: &Settings) -> Engine {
        let pins = Pins::new(&s.cfg.bpffs);
        let kernel = Kernel::new(Hierarchies::detect(), pins, env.degrade.clone());
        let journal = Journal::open(&Journal::path_in(&env.output_dir)).map_err(|e| {
            tracing::error!("enforcement: {}", e.cause);
            tracing::error!("fix: {}", e.fix);
            e.cause
        });
        let mut e = Engine {
            safety: Safety::new(&s.cfg.allowlist, &env.proc_root),
            env,
            cfg: s.cfg.clone(),
            rules: Vec::new(),
            kernel,
            journal,
            streaks: HashMap::new(),
            last_action: HashMap::new(),
            per_minute: HashMap::new(),
            active: Vec::new(),
            pending: HashMap::new(),
            telemetry: Telemetry::new(),
            seq: 0,
            last_error: None,
            last_publish: Instant::now(),
            dirty: true,
            received: None,
            upstream: None,
        };
        e.last_error = e.journal.as_ref().err().cloned();
        e.reconfigure(s);
        e.recover();
        e.publish();
        e
    }

    /// Takes a new config (already validated): rules, mode, allowlist. Limits in effect stay
    /// until their TTL.
    pub fn reconfigure(&mut self, s: &Settings) {
        let rules = rules::compile(&s.cfg, s.syscall_interval).unwrap_or_else(|e| {
            // Unreachable after validation; never act on a half-read rule set.
            tracing::error!("enforcement: {e}; no rules run");
            Vec::new()
        });
        if rules != self.rules {
            self.streaks.clear();
        }
        self.safety = Safety::new(&s.cfg.allowlist, &self.env.proc_root);
        // Threshold rules read the deriver's signals; anomaly rules read detection's output
        // (detection states its own need).
        let need = crate::signals::Need {
            syscalls: rules.iter().filter_map(|r| r.condition.syscall()).collect(),
            signals: rules
                .iter()
                .filter(|r| matches!(r.condition, Condition::Threshold { .. }))
                .map(|r| r.condition.signal())
                .collect(),
        };
        self.env.demand.set("enforcement", need);
        let (enforcing, monitoring) = rules.iter().fold((0, 0), |(e, m), r| match r.mode {
            Mode::Enforce => (e + 1, m),
            Mode::Monitor => (e, m + 1),
        });
        tracing::info!(
            mode = s.cfg.mode.as_str(),
            rules = rules.len(),
            enforcing,
            monitoring,
            "enforcement configured"
        );
        self.kernel.prepare(&rules);
        self.rules = rules;
        self.cfg = s.cfg.clone();
        self.dirty = true;
        self.publish();
    }

    /// One drain's signals: threshold rules.
    pub fn on_batch(&mut self, b: &SignalBatch) {
        self.received = Some(SystemTime::now());
        self.upstream = Some((b.published, b.derived));
        for p in &b.ended {
            self.streaks
                .retain(|(_, pid, gen), _| !(*pid == p.pid && *gen == p.gen));
        }
        let window_start = b.time.checked_sub(b.elapsed).unwrap_or(b.time);
        let slack = b.elapsed / 2;
        let mut fire: Vec<(usize, ProcessRef, f64, Duration)> = Vec::new();
        for (ri, rule) in self.rules.iter().enumerate() {
            let Condition::Threshold {
                signal,
                syscall,
                threshold,
                hold,
            } = &rule.condition
            else {
                continue;
            };
            for s in &b.samples {
                if s.signal != *signal
                    || s.key.syscall != *syscall
                    || !rule.scope.may_match(&s.key.process)
                {
                    continue;
                }
                let p = &s.key.process;
                let k = (ri, p.pid, p.gen);
                if !threshold.holds(s.value) {
                    self.streaks.remove(&k);
                    continue;
                }
                let st = self.streaks.entry(k).or_insert(Streak {
                    since: window_start,
                    last: b.time,
                });
                if window_start > st.last + slack {
                    st.since = window_start; // a gap: start over
                }
                st.last = b.time;
                let span = st.last.duration_since(st.since).unwrap_or_default();
                // 5% tolerance: measured intervals jitter around the nominal one.
                if span + hold.mul_f64(0.05) >= *hold {
                    self.streaks.remove(&k);
                    fire.push((ri, p.clone(), s.value, span));
                }
            }
        }
        let mut jobs = Vec::new();
        for (ri, p, value, span) in fire {
            let rule = self.rules[ri].clone();
            let Condition::Threshold {
                signal, threshold, ..
            } = &rule.condition
            else {
                continue;
            };
            let (op, t) = match threshold {
                rules::Threshold::Above(t) => (">", t),
                rules::Threshold::Below(t) => ("<", t),
            };
            let trigger = format!(
                "{signal}{} {value} {op} {t} for {}",
                sample_syscall_text(&rule.condition),
                humantime_serde::re::humantime::format_duration(Duration::from_millis(
                    span.as_millis() as u64
                ))
            );
            jobs.extend(self.decide(&rule, &p, b.time, value, trigger));
        }
        self.act_all(jobs);
        // Streaks whose process went quiet are dropped after a while.
        let horizon = b
            .time
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or(b.time);
        self.streaks.retain(|_, s| s.last > horizon);
    }

    /// One anomaly: anomaly rules.
    pub fn on_anomaly(&mut self, a: &Anomaly) {
        self.received = Some(SystemTime::now());
        self.upstream = None;
        let matching: Vec<Rule> = self
            .rules
            .iter()
            .filter(|r| match &r.condition {
                Condition::Anomaly {
                    signal,
                    syscall,
                    min_score,
                } => *signal == a.signal && *syscall == a.key.syscall && a.score >= *min_score,
                _ => false,
            })
            .filter(|r| r.scope.may_match(&a.key.process))
            .cloned()
            .collect();
        let mut jobs = Vec::new();
        for rule in matching {
            let trigger = format!(
                "anomaly on {}{}: {} (expected {}..{}), score {:.3}",
                a.signal,
                sample_syscall_text(&rule.condition),
                a.value,
                a.expected_min,
                a.expected_max,
                a.score
            );
            jobs.extend(self.decide(&rule, &a.key.process, a.time, a.value, trigger));
        }
        self.act_all(jobs);
    }

    // The audit record's fields, one argument each: grouping them would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        rule: &Rule,
        t: Option<&Target>,
        plan: Option<&Plan>,
        observed: SystemTime,
        value: f64,
        trigger: String,
        outcome: Outcome,
        reason: Option<String>,
    ) -> DecisionRecord {
        self.seq += 1;
        DecisionRecord {
            seq: self.seq,
            time_unix_nano: unix_nanos(SystemTime::now()),
            rule: rule.name.to_string(),
            mode: rule.mode.as_str(),
            outcome,
            reason,
            scope: rule.scope.describe(),
            trigger,
            signal: rule.condition.signal().to_string(),
            value,
            action: rule.action.describe(),
            detail: None,
            target: TargetRecord {
                pid: t.map(|t| t.pid),
                executable: t.map(|t| t.exe.to_string()),
                cgroup: plan
                    .and_then(Plan::cgroup)
                    .map(str::to_string)
                    .or_else(|| t.and_then(|t| t.cgroup.clone())),
                container_id: t.and_then(|t| t.container.as_ref().map(|c| c.container_id.clone())),
                pod_uid: t.and_then(|t| t.container.as_ref().and_then(|c| c.pod_uid.clone())),
            },
            observed_unix_nano: unix_nanos(observed),
            acted_unix_nano: None,
            latency_seconds: None,
            expires_unix_nano: None,
            journal_id: None,
            stages: None,
        }
    }

    fn emit(&mut self, rec: DecisionRecord) {
        let rule: Arc<str> = Arc::from(rec.rule.as_str());
        self.telemetry.count(&rule, rec.outcome);
        match rec.outcome {
            Outcome::Taken | Outcome::Undone => {
                tracing::warn!(target: "agent::enforcement", "{}", rec.summary())
            }
            Outcome::Failed => tracing::error!(target: "agent::enforcement", "{}", rec.summary()),
            _ => tracing::info!(target: "agent::enforcement", "{}", rec.summary()),
        }
        if let (Outcome::Taken, Some(l)) = (rec.outcome, rec.latency_seconds) {
            let kind = self
                .rules
                .iter()
                .find(|r| r.name == rule)
                .map_or("unknown", |r| r.action.kind());
            self.telemetry.latency(&rule, kind, l);
        }
        self.env.state.publish_log_records([rec.log_record()]);
        self.env
            .state
            .push_decision(Arc::new(rec), self.cfg.recent_decisions);
        self.dirty = true;
    }

    /// Judges one firing of `rule` on process `p`, observed at `observed`: emits the record of
    /// a decision that does not act, returns the one that does (acted on with the other
    /// firings of the same drain by [`Engine::act_all`]).
    fn decide(
        &mut self,
        rule: &Rule,
        p: &ProcessRef,
        observed: SystemTime,
        value: f64,
        trigger: String,
    ) -> Option<Job> {
        let proc_root = self.env.proc_root.clone();
        let Some(t) = Target::read(&proc_root, p.pid) else {
            let r = self.record(
                rule,
                None,
                None,
                observed,
                value,
                trigger,
                Outcome::Failed,
                Some(format!("pid {} exited before the decision", p.pid)),
            );
            self.emit(r);
            return None;
        };
        if !rule.scope.matches(&t) {
            return None; // out of scope (cgroup or pod): not a decision
        }
        if rule.action.touches_target() {
            if let Err(refusal) = self.safety.check_process(&t) {
                let (o, why) = refusal_outcome(refusal);
                let r = self.record(rule, Some(&t), None, observed, value, trigger, o, Some(why));
                self.emit(r);
                return None;
            }
        }
        let plan = match actions::plan(rule, &t, &self.kernel.hier, &self.safety, &proc_root) {
            Ok(p) => p,
            Err(b) => {
                let (o, why) = match b {
                    Blocked::Refused(r) => refusal_outcome(r),
                    Blocked::Failed(why) => (Outcome::Failed, why),
                };
                let r = self.record(rule, Some(&t), None, observed, value, trigger, o, Some(why));
                self.emit(r);
                return None;
            }
        };
        let key = plan.key();
        let kind = rule.action.kind();
        if rule.action.limits()
            && (self
                .active
                .iter()
                .any(|a| a.entry.target == key && a.entry.kind == kind)
                || (kind == "signal" && self.pending.contains_key(&t.pid)))
        {
            let r = self.record(
                rule,
                Some(&t),
                Some(&plan),
                observed,
                value,
                trigger,
                Outcome::Active,
                Some(format!("a {kind} limit is already in effect on {key}")),
            );
            self.emit(r);
            return None;
        }
        let now = Instant::now();
        if let Some(last) = self.last_action.get(&(rule.name.clone(), key.clone())) {
            let since = now.duration_since(*last);
            if since < rule.cooldown {
                let r = self.record(
                    rule,
                    Some(&t),
                    Some(&plan),
                    observed,
                    value,
                    trigger,
                    Outcome::Cooldown,
                    Some(format!(
                        "acted on this target {:.1}s ago; cooldown {}",
                        since.as_secs_f64(),
                        humantime_serde::re::humantime::format_duration(rule.cooldown)
                    )),
                );
                self.emit(r);
                return None;
            }
        }
        let window = self.per_minute.entry(rule.name.clone()).or_default();
        while window
            .front()
            .is_some_and(|t0| now.duration_since(*t0) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        if window.len() as u32 >= rule.max_per_minute {
            let n = window.len();
            let r = self.record(
                rule,
                Some(&t),
                Some(&plan),
                observed,
                value,
                trigger,
                Outcome::RateCap,
                Some(format!(
                    "{n} actions in the last minute; cap {}",
                    rule.max_per_minute
                )),
            );
            self.emit(r);
            return None;
        }
        window.push_back(now);
        self.last_action
            .insert((rule.name.clone(), key.clone()), now);
        if rule.mode == Mode::Monitor {
            let r = self.record(
                rule,
                Some(&t),
                Some(&plan),
                observed,
                value,
                trigger,
                Outcome::Monitor,
                Some(format!("monitor mode: would {}", rule.action.describe())),
            );
            self.emit(r);
            return None;
        }
        let rec = self.record(
            rule,
            Some(&t),
            Some(&plan),
            observed,
            value,
            trigger,
            Outcome::Taken,
            None,
        );
        Some(Job {
            rule: rule.clone(),
            pid: t.pid,
            plan,
            rec,
            planned: SystemTime::now(),
            entry: None,
        })
    }

    /// Undoes expired limits, collects kernel-sent signals, times out armed ones.
    pub fn tick(&mut self) {
        let now = SystemTime::now();
        let mut expired = Vec::new();
        self.active.retain(|a| {
            if a.entry.expires() <= now {
                expired.push(a.entry.clone());
                false
            } else {
                true
            }
        });
        if !expired.is_empty() {
            self.undo_entries(&expired, "ttl expired");
        }
        if let Some(ks) = self.kernel.loaded_signals() {
            for sent in ks.poll() {
                let Some(mut p) = self.pending.remove(&sent.pid) else {
                    continue;
                };
                if sent.result == 0 {
                    let obs =
                        std::time::UNIX_EPOCH + Duration::from_nanos(p.record.observed_unix_nano);
                    p.record.acted_unix_nano = Some(unix_nanos(sent.at));
                    p.record.latency_seconds = Some(
                        sent.at
                            .duration_since(obs)
                            .unwrap_or_default()
                            .as_secs_f64(),
                    );
                    p.record.detail = Some(format!(
                        "the kernel sent signal {} to pid {} at its {} call",
                        sent.signal,
                        sent.pid,
                        crate::probes::syscalls::names::syscall_name(sent.syscall as u32)
                    ));
                } else {
                    p.record.outcome = Outcome::Failed;
                    p.record.reason = Some(format!("bpf_send_signal returned {}", sent.result));
                }
                let _ = (&p.rule, p.kind);
                self.emit(p.record);
            }
        }
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| Instant::now() >= p.deadline)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in late {
            if let Some(mut p) = self.pending.remove(&pid) {
                if let Some(ks) = self.kernel.loaded_signals() {
                    ks.disarm(pid);
                }
                p.record.outcome = Outcome::Failed;
                p.record.reason = Some("the process made no matching syscall while armed".into());
                self.emit(p.record);
            }
        }
        if self.dirty || self.last_publish.elapsed() >= self.publish_every() {
            self.publish();
        }
    }

    /// [`PUBLISH_EVERY`], or [`IDLE_PUBLISH_EVERY`] while nothing can change on its own.
    fn publish_every(&self) -> Duration {
        if self.rules.is_empty() && self.active.is_empty() && self.pending.is_empty() {
            IDLE_PUBLISH_EVERY
        } else {
            PUBLISH_EVERY
        }
    }

    /// When `tick` should run next.
    pub fn next_wake(&self) -> Duration {
        let now = SystemTime::now();
        let mut wake = self
            .publish_every()
            .saturating_sub(self.last_publish.elapsed());
        for a in &self.active {
            wake = wake.min(a.entry.expires().duration_since(now).unwrap_or_default());
        }
        if !self.pending.is_empty() {
            wake = wake.min(Duration::from_millis(2));
        }
        wake.max(Duration::from_millis(1))
    }
}

fn refusal_outcome(r: Refusal) -> (Outcome, String) {
    match r {
        Refusal::Protected(w) => (Outcome::Protected, format!("protected: {w}")),
        Refusal::Allowlisted(w) => (Outcome::Allowlist, format!("allowlisted: {w}")),
    }
}
