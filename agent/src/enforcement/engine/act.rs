//! Acting on the decisions of one drain: the limits journaled together, the actions run (those
//! that settle on threads of their own), and each outcome recorded with its stages.

use std::time::{Duration, Instant, SystemTime};

use super::{ActiveLimit, Engine, Job, Pending, ARM_TIMEOUT};
use crate::{
    enforcement::{
        actions,
        audit::{Outcome, Stages},
        journal::{unix_ms, Entry},
        rules::{self, Action},
    },
    export::metrics::unix_nanos,
};

impl Engine {
    /// Acts on the decisions of one drain: the limits among them journaled with one write,
    /// then the actions — those that settle (freeze, thaw) on threads of their own, so no
    /// action waits for another's settling (the kernel objects have their own locks).
    pub(super) fn act_all(&mut self, jobs: Vec<Job>) {
        let mut ready = Vec::with_capacity(jobs.len());
        let mut entries = Vec::new();
        for mut job in jobs {
            if job.rule.action.limits() {
                let undo = match actions::undo_of(&job.rule, &job.plan, &self.kernel.hier) {
                    Ok(u) => u,
                    Err(e) => {
                        job.rec.outcome = Outcome::Failed;
                        job.rec.reason = Some(e);
                        self.emit(job.rec);
                        continue;
                    }
                };
                if let Some(undo) = undo {
                    let j = match &mut self.journal {
                        Ok(j) => j,
                        Err(e) => {
                            job.rec.outcome = Outcome::Failed;
                            job.rec.reason =
                                Some(format!("no journal, so no limiting action: {e}"));
                            self.emit(job.rec);
                            continue;
                        }
                    };
                    let ttl = job.rule.ttl.unwrap_or(rules::DEFAULT_TTL);
                    let acted = SystemTime::now();
                    let e = Entry {
                        id: j.next_id(),
                        rule: job.rule.name.to_string(),
                        kind: job.rule.action.kind().to_string(),
                        action: job.rule.action.describe(),
                        target: job.plan.key(),
                        undo,
                        acted_unix_ms: unix_ms(acted),
                        expires_unix_ms: unix_ms(acted + ttl),
                        persist: job.rule.persist,
                    };
                    job.rec.journal_id = Some(e.id);
                    job.rec.expires_unix_nano = Some(e.expires_unix_ms * 1_000_000);
                    entries.push(e.clone());
                    job.entry = Some(e);
                }
            }
            ready.push(job);
        }
        // Journal first, for what must be undone: one write for the whole drain.
        if let (false, Ok(j)) = (entries.is_empty(), &mut self.journal) {
            if let Err(err) = j.add_all(entries) {
                let mut kept = Vec::new();
                for mut job in ready {
                    if job.entry.is_some() {
                        job.rec.outcome = Outcome::Failed;
                        job.rec.reason = Some(err.cause.clone());
                        job.rec.journal_id = None;
                        job.rec.expires_unix_nano = None;
                        self.emit(job.rec);
                    } else {
                        kept.push(job);
                    }
                }
                ready = kept;
            }
        }
        let journaled = SystemTime::now();
        let kernel = &self.kernel;
        let id_of = |j: &Job| j.entry.as_ref().map_or(0, |e| e.id);
        // Actions that wait for the kernel to settle (a freeze) run on threads of their own,
        // started first; the rest (a signal, a map write and an attach: microseconds) run here
        // at once — a new thread on a loaded host waits for a CPU (25 ms median measured with
        // four threads per drain at load 12 on 2 CPUs).
        let settles = |j: &Job| matches!(j.rule.action, Action::Freeze | Action::Thaw);
        let results: Vec<Result<actions::Acted, String>> =
            if ready.iter().filter(|j| settles(j)).count() == 0 || ready.len() == 1 {
                ready
                    .iter()
                    .map(|j| kernel.execute(&j.rule, &j.plan, id_of(j)))
                    .collect()
            } else {
                std::thread::scope(|s| {
                    let spawned: Vec<_> = ready
                        .iter()
                        .map(|j| {
                            settles(j).then(|| {
                                s.spawn(move || kernel.execute(&j.rule, &j.plan, id_of(j)))
                            })
                        })
                        .collect();
                    let inline: Vec<Option<Result<actions::Acted, String>>> = ready
                        .iter()
                        .map(|j| (!settles(j)).then(|| kernel.execute(&j.rule, &j.plan, id_of(j))))
                        .collect();
                    spawned
                        .into_iter()
                        .zip(inline)
                        .map(|(h, r)| match (h, r) {
                            (Some(h), _) => h
                                .join()
                                .unwrap_or_else(|_| Err("the action panicked".to_string())),
                            (None, Some(r)) => r,
                            (None, None) => Err("not run".to_string()),
                        })
                        .collect()
                })
            };
        for (job, result) in ready.into_iter().zip(results) {
            self.finish(job, result, journaled);
        }
    }

    /// Records what one action did (or arms its in-kernel signal for collection by `tick`).
    fn finish(&mut self, job: Job, result: Result<actions::Acted, String>, journaled: SystemTime) {
        let Job {
            rule,
            pid,
            mut rec,
            planned,
            entry,
            ..
        } = job;
        let observed = std::time::UNIX_EPOCH + Duration::from_nanos(rec.observed_unix_nano);
        let since = |t: SystemTime| t.duration_since(observed).unwrap_or_default().as_secs_f64();
        rec.stages = Some(Stages {
            published: self.upstream.map_or(0.0, |(p, _)| since(p)),
            derived: self.upstream.map_or(0.0, |(_, d)| since(d)),
            received: self.received.map_or(0.0, since),
            planned: since(planned),
            journaled: since(journaled),
        });
        match result {
            Ok(done) => {
                rec.detail = Some(done.detail);
                if let Some(e) = entry {
                    self.active.push(ActiveLimit { entry: e });
                }
                if let Action::Alert { webhook: Some(url) } = &rule.action {
                    if let Ok(body) = serde_json::to_vec(&rec) {
                        actions::alert::post(url.clone(), body);
                    }
                }
                match done.in_effect {
                    Some(at) => {
                        rec.acted_unix_nano = Some(unix_nanos(at));
                        rec.latency_seconds = Some(since(at));
                        self.emit(rec);
                    }
                    None => {
                        // Armed in the kernel: recorded once the kernel has sent it.
                        let deadline =
                            Instant::now() + rule.ttl.unwrap_or(ARM_TIMEOUT).min(ARM_TIMEOUT);
                        self.pending.insert(
                            pid,
                            Pending {
                                record: rec,
                                rule: rule.name.clone(),
                                kind: rule.action.kind(),
                                deadline,
                            },
                        );
                    }
                }
            }
            Err(err) => {
                if let (Some(e), Ok(j)) = (&entry, &mut self.journal) {
                    let _ = j.remove(e.id);
                }
                rec.outcome = Outcome::Failed;
                rec.reason = Some(err.clone());
                rec.journal_id = None;
                rec.expires_unix_nano = None;
                self.last_error = Some(err);
                self.emit(rec);
            }
        }
    }
}
