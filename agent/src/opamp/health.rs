//! ComponentHealth (spec "ComponentHealth Message") built from the agent's live state: the
//! agent at the top, then `probes` (one entry per probe), `exporter`, and the engines that report
//! through `AgentState::set_component` (`detection` and `enforcement` are always listed: until
//! those engines report, as placeholders with status `absent`).
//!
//! Invariants: a component's `status_time_unix_nano` is when its (healthy, status, last error)
//! last changed and its `start_time_unix_nano` when it started running (0 when not running), so
//! an unchanged agent builds an identical message and nothing is resent; the tracker lives as
//! long as the OpAMP client, so reconnects keep the times.

use std::{
    collections::{BTreeMap, HashMap},
    time::{SystemTime, UNIX_EPOCH},
};

use super::wire::pb;
use crate::status::state::{AgentState, ComponentStatus, ProbeState};

/// Engines listed even before they report.
pub const PLACEHOLDERS: &[&str] = &["detection", "enforcement"];

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What a component looks like at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    healthy: bool,
    status: String,
    last_error: String,
    running: bool,
}

#[derive(Default)]
pub struct HealthTracker {
    /// path → (what was seen, when it last changed, when it started running).
    seen: HashMap<String, (Seen, u64, u64)>,
}

impl HealthTracker {
    /// Records `s` for `path` at `now`; returns (status time, start time).
    fn observe(&mut self, path: &str, s: Seen, now: u64, since: Option<u64>) -> (u64, u64) {
        let entry = self
            .seen
            .entry(path.to_string())
            .or_insert_with(|| (s.clone(), since.unwrap_or(now), 0));
        if entry.0 != s {
            entry.1 = since.unwrap_or(now);
        }
        if s.running && (entry.2 == 0 || !entry.0.running) {
            entry.2 = since.unwrap_or(now);
        }
        if !s.running {
            entry.2 = 0;
        }
        entry.0 = s;
        (entry.1, entry.2)
    }

    fn component(
        &mut self,
        path: &str,
        s: Seen,
        now: u64,
        since: Option<u64>,
    ) -> pb::ComponentHealth {
        let (status_time, start) = self.observe(path, s.clone(), now, since);
        pb::ComponentHealth {
            healthy: s.healthy,
            start_time_unix_nano: start,
            last_error: s.last_error,
            status: s.status,
            status_time_unix_nano: status_time,
            component_health_map: HashMap::new(),
        }
    }

    /// The agent's health now.
    pub fn build(&mut self, state: &AgentState, now: SystemTime) -> pb::ComponentHealth {
        let now_ns = nanos(now);
        let mut unhealthy: Vec<String> = Vec::new();

        let mut probes = HashMap::new();
        for (name, p) in state.probes() {
            let status = serde_json::to_value(p.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let healthy = p.state != ProbeState::Failed;
            let running = matches!(p.state, ProbeState::Attached | ProbeState::Degraded);
            let err = p.error.clone().unwrap_or_default();
            if !healthy {
                unhealthy.push(format!("probe {name}: {err}"));
            }
            let since = state.probe_since(&name).map(nanos);
            let c = self.component(
                &format!("probes/{name}"),
                Seen {
                    healthy,
                    status,
                    last_error: err,
                    running,
                },
                now_ns,
                since,
            );
            probes.insert(name, c);
        }
        let probes_ok = probes.values().all(|c| c.healthy);
        let mut probes_health = self.component(
            "probes",
            Seen {
                healthy: probes_ok,
                status: if probes_ok { "running" } else { "degraded" }.to_string(),
                last_error: String::new(),
                running: true,
            },
            now_ns,
            Some(nanos(state.started_at)),
        );
        probes_health.component_health_map = probes;

        let e = state.exporter();
        let healthy = e.healthy != Some(false);
        let word = match e.healthy {
            Some(true) => "delivering",
            Some(false) => "failing",
            None => "starting",
        };
        let err = if healthy {
            String::new()
        } else {
            e.last_error.clone().unwrap_or_default()
        };
        if !healthy {
            unhealthy.push(format!("exporter: {err}"));
        }
        let exporter = self.component(
            "exporter",
            Seen {
                healthy,
                status: format!(
                    "{} {word}",
                    if e.kind.is_empty() { "file" } else { &e.kind }
                ),
                last_error: err,
                running: true,
            },
            now_ns,
            None,
        );

        let mut map = HashMap::new();
        map.insert("probes".to_string(), probes_health);
        map.insert("exporter".to_string(), exporter);
        let mut engines: BTreeMap<String, ComponentStatus> = state.components();
        for p in PLACEHOLDERS {
            engines.entry(p.to_string()).or_insert(ComponentStatus {
                healthy: true,
                status: "absent".to_string(),
                last_error: None,
                started: None,
            });
        }
        for (name, c) in engines {
            if !c.healthy {
                unhealthy.push(format!(
                    "{name}: {}",
                    c.last_error.clone().unwrap_or_default()
                ));
            }
            let h = self.component(
                &name,
                Seen {
                    healthy: c.healthy,
                    status: c.status.clone(),
                    last_error: c.last_error.clone().unwrap_or_default(),
                    running: c.started.is_some(),
                },
                now_ns,
                c.started.map(nanos),
            );
            map.insert(name, h);
        }

        let (healthy, status, last_error) = match state.readiness() {
            Err(why) => (false, "not_ready", why.join("; ")),
            Ok(()) if unhealthy.is_empty() => (true, "running", String::new()),
            Ok(()) => (true, "degraded", unhealthy.join("; ")),
        };
        let mut top = self.component(
            "",
            Seen {
                healthy,
                status: status.to_string(),
                last_error,
                running: true,
            },
            now_ns,
            None,
        );
        top.start_time_unix_nano = nanos(state.started_at);
        top.component_health_map = map;
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::state::ProbeStatus;

    fn probe(state: ProbeState, error: Option<&str>) -> ProbeStatus {
        ProbeStatus {
            state,
            error: error.map(str::to_string),
            fix: None,
            hooks: vec![],
        }
    }

    #[test]
    fn health_tree_is_stable_until_something_changes() {
        let s = AgentState::new("h".into());
        s.set_pipeline_running(true);
        s.set_probe("syscalls", probe(ProbeState::Attached, None));
        let mut t = HealthTracker::default();
        let t0 = SystemTime::now();
        let a = t.build(&s, t0);
        assert!(a.healthy);
        assert_eq!(a.status, "running");
        let p = &a.component_health_map["probes"].component_health_map["syscalls"];
        assert_eq!(p.status, "attached");
        assert!(p.start_time_unix_nano > 0);
        for name in PLACEHOLDERS {
            assert_eq!(a.component_health_map[*name].status, "absent");
            assert_eq!(a.component_health_map[*name].start_time_unix_nano, 0);
        }
        // Later, nothing changed: the same message (nothing to resend).
        let b = t.build(&s, t0 + std::time::Duration::from_secs(5));
        assert_eq!(a, b);

        s.set_probe("syscalls", probe(ProbeState::Failed, Some("attach failed")));
        let c = t.build(&s, t0 + std::time::Duration::from_secs(6));
        assert!(!c.healthy, "a failed probe makes the agent not ready");
        let p = &c.component_health_map["probes"].component_health_map["syscalls"];
        assert!(!p.healthy);
        assert_eq!(p.last_error, "attach failed");
        assert_eq!(p.start_time_unix_nano, 0, "not running");
        assert!(c.last_error.contains("attach failed"));

        // An engine reporting through the state API replaces its placeholder.
        s.set_component(
            "detection",
            ComponentStatus {
                healthy: true,
                status: "running".into(),
                last_error: None,
                started: Some(t0),
            },
        );
        let d = t.build(&s, t0 + std::time::Duration::from_secs(7));
        assert_eq!(d.component_health_map["detection"].status, "running");
        assert_eq!(
            d.component_health_map["detection"].start_time_unix_nano,
            nanos(t0)
        );
    }

    #[test]
    fn a_failing_exporter_degrades_but_keeps_the_agent_healthy() {
        let s = AgentState::new("h".into());
        s.set_pipeline_running(true);
        s.update_exporter(|e| {
            e.kind = "otlp".into();
            e.healthy = Some(false);
            e.last_error = Some("connection refused".into());
        });
        let h = HealthTracker::default().build(&s, SystemTime::now());
        assert!(h.healthy);
        assert_eq!(h.status, "degraded");
        let e = &h.component_health_map["exporter"];
        assert!(!e.healthy);
        assert_eq!(e.status, "otlp failing");
        assert_eq!(e.last_error, "connection refused");
    }
}
