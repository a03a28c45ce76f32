//! Applying remote configs: one worker takes the latest offer, builds the merged config, has the
//! runtime apply it as one hot reload, and watches it for `opamp.rollback_grace`; when a probe
//! that should run fails to attach, or a changed export endpoint fails for good (DNS, TLS, an
//! HTTP 4xx), it returns to the last good config by itself and reports FAILED with why.
//!
//! Invariants: only the latest offer is applied (a newer one supersedes a waiting one, and ends
//! the previous one's grace period); the last applied remote config is stored only once it
//! runs, and the stored one is put back on rollback; the worker never blocks the client (it
//! reports outcomes on a channel).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    persist::RemoteStore,
    remote_config::{merged_config, RemoteDoc},
};
use crate::{
    config::Config,
    runtime::{ApplyRequest, Overrides},
    status::state::{AgentState, ExporterStatus, ProbeState, ProbeStatus},
};

/// One offer to apply.
#[derive(Clone, Debug)]
pub struct Job {
    pub doc: RemoteDoc,
}

/// What became of an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        hash: Vec<u8>,
        at: SystemTime,
    },
    /// Refused before anything changed (invalid, local-only settings, enforcement bound).
    Failed {
        hash: Vec<u8>,
        message: String,
        at: SystemTime,
    },
    /// Applied, then rolled back to the last good config.
    RolledBack {
        hash: Vec<u8>,
        message: String,
        at: SystemTime,
    },
}

/// How often the grace period looks at the agent's state.
const WATCH_EVERY: Duration = Duration::from_millis(200);

pub struct Worker {
    pub overrides: Overrides,
    pub state: Arc<AgentState>,
    pub apply: mpsc::Sender<ApplyRequest>,
    pub running: watch::Receiver<Arc<Config>>,
    /// The remote config inside the running config (read by SIGHUP reloads).
    pub current: Arc<Mutex<Option<RemoteDoc>>>,
    pub store: RemoteStore,
    pub grace: Duration,
    pub outcomes: mpsc::Sender<Outcome>,
}

/// Has the runtime apply `cfg`; waits until it has.
pub async fn apply_config(tx: &mpsc::Sender<ApplyRequest>, cfg: Config, rebuild_exporter: bool) {
    let (reply, done) = oneshot::channel();
    let req = ApplyRequest {
        config: cfg,
        rebuild_exporter,
        reply,
    };
    if tx.send(req).await.is_ok() {
        let _ = done.await;
    }
}

/// A probe that runs no more, or an export target that fails for good, since `before`.
fn failure(
    before: &BTreeMap<String, ProbeStatus>,
    exporter_before: &ExporterStatus,
    export_changed: bool,
    state: &AgentState,
) -> Option<String> {
    for (name, p) in state.probes() {
        let was = before.get(&name).map(|b| b.state);
        if p.state == ProbeState::Failed && was != Some(ProbeState::Failed) {
            return Some(format!(
                "probe {name} failed: {}",
                p.error.unwrap_or_else(|| "nothing attached".into())
            ));
        }
    }
    if export_changed {
        return export_failure(exporter_before, &state.exporter());
    }
    None
}

/// Errors that will not go away by retrying: the name does not resolve, TLS is refused or
/// cannot be set up, or the collector answered 4xx (the exporter drops such requests).
pub fn fails_for_good(e: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "dns error",
        "failed to lookup address",
        "name or service not known",
        "certificate",
        "invalid peer",
        "tls handshake",
        "the tls ",
        "cannot read the tls",
    ];
    let l = e.to_ascii_lowercase();
    PATTERNS.iter().any(|p| l.contains(p))
        || l.split("status ").skip(1).any(|rest| {
            rest.starts_with('4')
                && rest
                    .as_bytes()
                    .get(1..3)
                    .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
        })
}

/// A new permanent export failure between two exporter snapshots.
pub fn export_failure(before: &ExporterStatus, now: &ExporterStatus) -> Option<String> {
    for (signal, s) in &now.signals {
        let b = before.signals.get(signal);
        let fresh = b.is_none_or(|b| b.target != s.target);
        if s.failed > b.map_or(0, |b| b.failed) {
            return Some(format!(
                "export of {signal} to {} refused: {}",
                s.target,
                s.last_error.clone().unwrap_or_default()
            ));
        }
        if let Some(e) = &s.last_error {
            let new_error = fresh || b.and_then(|b| b.last_error.as_ref()) != Some(e);
            if new_error && fails_for_good(e) {
                return Some(format!("export of {signal} to {} fails: {e}", s.target));
            }
        }
    }
    match &now.last_error {
        Some(e) if before.last_error.as_ref() != Some(e) && fails_for_good(e) => {
            Some(format!("export fails: {e}"))
        }
        _ => None,
    }
}

impl Worker {
    pub async fn run(mut self, mut jobs: watch::Receiver<Option<Job>>) {
        while jobs.changed().await.is_ok() {
            let job = jobs.borrow_and_update().clone();
            if let Some(job) = job {
                self.process(job, &jobs).await;
            }
        }
    }

    async fn report(&self, o: Outcome) {
        let _ = self.outcomes.send(o).await;
    }

    async fn process(&mut self, job: Job, jobs: &watch::Receiver<Option<Job>>) {
        let hash = job.doc.hash.clone();
        let o = self.overrides.clone();
        let doc = job.doc.clone();
        let built = tokio::task::spawn_blocking(move || merged_config(&o, Some(&doc))).await;
        let cfg = match built {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(
                    "remote config refused, the running config stays: {}",
                    e.cause
                );
                tracing::warn!("fix: {}", e.fix);
                return self
                    .report(Outcome::Failed {
                        hash,
                        message: e.to_string(),
                        at: SystemTime::now(),
                    })
                    .await;
            }
            Err(e) => {
                return self
                    .report(Outcome::Failed {
                        hash,
                        message: format!("building the config failed: {e}"),
                        at: SystemTime::now(),
                    })
                    .await
            }
        };
        let prev = self.running.borrow().clone();
        let prev_doc = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let probes_before = self.state.probes();
        let exporter_before = self.state.exporter();
        let export_changed = prev.export != cfg.export;
        if *prev != cfg {
            tracing::info!(config_hash = %cfg.hash(), "applying the remote config");
            apply_config(&self.apply, cfg.clone(), false).await;
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.doc.clone());
        if let Some(why) = failure(
            &probes_before,
            &exporter_before,
            export_changed,
            &self.state,
        ) {
            return self.rollback(&prev, prev_doc, hash, why).await;
        }
        self.store.save(Some(&job.doc));
        self.report(Outcome::Applied {
            hash: hash.clone(),
            at: SystemTime::now(),
        })
        .await;
        let deadline = tokio::time::Instant::now() + self.grace;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(WATCH_EVERY.min(self.grace)).await;
            if jobs.has_changed().unwrap_or(true) {
                return;
            }
            if let Some(why) = failure(
                &probes_before,
                &exporter_before,
                export_changed,
                &self.state,
            ) {
                return self.rollback(&prev, prev_doc, hash, why).await;
            }
        }
    }

    async fn rollback(
        &mut self,
        good: &Arc<Config>,
        good_doc: Option<RemoteDoc>,
        hash: Vec<u8>,
        why: String,
    ) {
        tracing::error!("remote config rolled back to the last good config: {why}");
        apply_config(&self.apply, (**good).clone(), false).await;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = good_doc.clone();
        self.store.save(good_doc.as_ref());
        self.state.update_opamp(|s| s.remote_config.rollbacks += 1);
        self.report(Outcome::RolledBack {
            hash,
            message: format!("rolled back to the last good config: {why}"),
            at: SystemTime::now(),
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::state::SignalStats;

    #[test]
    fn permanent_export_errors() {
        for e in [
            "HTTP metrics to http://nope.invalid:4318/v1/metrics: client error (Connect): dns error: failed to lookup address information: Name or service not known",
            "HTTP metrics to https://x/v1/metrics: client error (Connect): invalid peer certificate: UnknownIssuer",
            "HTTP metrics to http://x/v1/metrics: status 404 not found",
            "cannot read the TLS CA file /nope: No such file",
        ] {
            assert!(fails_for_good(e), "{e}");
        }
        for e in [
            "HTTP metrics to http://127.0.0.1:1/v1/metrics: client error (Connect): tcp connect error: Connection refused (os error 111)",
            "HTTP metrics to http://x/v1/metrics: status 503 unavailable",
            "gRPC metrics to http://x: Unavailable connection reset",
        ] {
            assert!(!fails_for_good(e), "{e}");
        }
    }

    #[test]
    fn new_failures_only() {
        let mut before = ExporterStatus::default();
        before.signals.insert(
            "metrics".into(),
            SignalStats {
                target: "http://old/v1/metrics".into(),
                last_error: Some("dns error: old".into()),
                ..Default::default()
            },
        );
        // The same old error: not this config's fault.
        assert_eq!(export_failure(&before, &before), None);
        let mut now = before.clone();
        let m = now.signals.get_mut("metrics").unwrap();
        m.target = "http://new.invalid/v1/metrics".into();
        m.last_error = Some("client error (Connect): dns error: failed to lookup address".into());
        assert!(export_failure(&before, &now)
            .unwrap()
            .contains("new.invalid"));
        let mut refused = before.clone();
        refused.signals.get_mut("metrics").unwrap().failed = 1;
        assert!(export_failure(&before, &refused)
            .unwrap()
            .contains("refused"));
    }
}
