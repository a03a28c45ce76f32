//! The engine's start and end: what a predecessor left in the journal (undone or taken over),
//! one limit's undo with its audit record, and shutdown (undo what is not persistent).

use std::time::SystemTime;

use super::{ActiveLimit, Engine};
use crate::enforcement::{
    actions,
    audit::{DecisionRecord, Outcome, TargetRecord},
    config::Mode,
    journal::{Entry, Undo},
};
use crate::export::metrics::unix_nanos;

impl Engine {
    /// Undoes (or takes over) what a predecessor left in the journal.
    pub(super) fn recover(&mut self) {
        let Ok(j) = &self.journal else { return };
        let entries = j.entries().to_vec();
        if entries.is_empty() {
            return;
        }
        self.kernel.adopt_pinned();
        let now = SystemTime::now();
        for e in entries {
            let kernel_gone =
                matches!(e.undo, Undo::RateLimit { .. } | Undo::Block { .. }) && !e.persist;
            let reason = if e.expires() <= now {
                Some("left by a previous agent, past its TTL")
            } else if kernel_gone {
                Some("left by a previous agent; its kernel attachment ended with that agent")
            } else if matches!(e.undo, Undo::Degrade) {
                Some("left by a previous agent; this agent starts at its configured sampling")
            } else {
                None
            };
            match reason {
                Some(why) => self.undo_entry(&e, why),
                None => {
                    tracing::info!(
                        rule = %e.rule,
                        action = %e.action,
                        target = %e.target,
                        "enforcement: took over a limit left by a previous agent (undone at its TTL)"
                    );
                    self.active.push(ActiveLimit { entry: e });
                }
            }
        }
    }

    pub(super) fn undo_entry(&mut self, e: &Entry, why: &str) {
        self.undo_entries(std::slice::from_ref(e), why);
    }

    /// Undoes `es` (limits expiring together) and removes them from the journal with one write.
    pub(super) fn undo_entries(&mut self, es: &[Entry], why: &str) {
        let results: Vec<Result<String, String>> =
            es.iter().map(|e| self.kernel.undo(&e.undo, e.id)).collect();
        if let Ok(j) = &mut self.journal {
            let ids: Vec<u64> = es.iter().map(|e| e.id).collect();
            if let Err(err) = j.remove_all(&ids) {
                tracing::error!("enforcement: {}", err.cause);
            }
        }
        for (e, result) in es.iter().zip(results) {
            self.undone(e, why, result);
        }
    }

    fn undone(&mut self, e: &Entry, why: &str, result: Result<String, String>) {
        let (outcome, reason) = match result {
            Ok(done) => (Outcome::Undone, format!("{why}: {done}")),
            Err(err) => {
                self.last_error = Some(err.clone());
                (Outcome::Failed, format!("{why}: undo failed: {err}"))
            }
        };
        self.seq += 1;
        let now = SystemTime::now();
        let rec = DecisionRecord {
            seq: self.seq,
            time_unix_nano: unix_nanos(now),
            rule: e.rule.clone(),
            mode: Mode::Enforce.as_str(),
            outcome,
            reason: Some(reason),
            scope: String::new(),
            trigger: format!("ttl of journal entry {}", e.id),
            signal: String::new(),
            value: 0.0,
            action: e.action.clone(),
            detail: None,
            target: TargetRecord {
                pid: match e.undo {
                    Undo::Cont { pid, .. } => Some(pid),
                    _ => None,
                },
                cgroup: e.target.strip_prefix("cgroup:").map(str::to_string),
                ..Default::default()
            },
            observed_unix_nano: e.acted_unix_ms * 1_000_000,
            acted_unix_nano: Some(unix_nanos(now)),
            latency_seconds: None,
            expires_unix_nano: Some(e.expires_unix_ms * 1_000_000),
            journal_id: Some(e.id),
            stages: None,
        };
        self.emit(rec);
    }

    /// Undoes every limit that is not persistent, detaches the kernel objects (persistent
    /// limits stay pinned and journaled for the next agent).
    pub fn shutdown(&mut self) {
        let pending: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pending {
            if let Some(ks) = self.kernel.loaded_signals() {
                ks.disarm(pid);
            }
        }
        self.pending.clear();
        let active = std::mem::take(&mut self.active);
        let mut kept = Vec::new();
        for a in active {
            if a.entry.persist {
                tracing::info!(rule = %a.entry.rule, action = %a.entry.action, "enforcement: persistent limit kept across the restart");
                kept.push(a);
            } else {
                self.undo_entry(&a.entry, "agent shutting down");
            }
        }
        let rate_keep: Vec<(u64, u32)> = kept
            .iter()
            .filter_map(|a| match &a.entry.undo {
                Undo::RateLimit {
                    cgroup_id,
                    directions,
                    ..
                } => Some(
                    directions
                        .iter()
                        .map(|d| (*cgroup_id, actions::rate_limit::direction_of(d)))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        let block_keep: Vec<u64> = kept
            .iter()
            .filter_map(|a| match &a.entry.undo {
                Undo::Block { cgroup_id, .. } => Some(*cgroup_id),
                _ => None,
            })
            .collect();
        self.kernel
            .shutdown(&|cg, d| rate_keep.contains(&(cg, d)), &|cg| {
                block_keep.contains(&cg)
            });
        self.active = kept;
        self.publish();
    }
}
