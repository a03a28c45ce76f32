//! What detection puts out, for one anomaly or for the watched series: the key the engine
//! keeps a derived series under ([`WatchKey`]), the series' attributes, the `agent.anomaly` OTLP
//! log record, the `/status` entry, and the `agent.anomaly.score` gauge family.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    sync::Arc,
    time::SystemTime,
};

use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue},
    logs::v1::{LogRecord, SeverityNumber},
};

use super::{config::Signal, engine::SeriesId, status::AnomalyEntry};
use crate::{
    export::{
        metrics::unix_nanos,
        resource::{kv_attr, kv_value},
    },
    metrics::model::{attr, AttrValue, Desc, Family, Kind, Labels, Point, Value},
    probes::syscalls::names::syscall_static_name,
    signals::{Anomaly, SignalKey},
};

/// `event.name` of the log records.
pub const EVENT_NAME: &str = "agent.anomaly";

/// The score gauge. Unit `{score}`: an annotation, so the Prometheus name gets no suffix
/// (`1` would add `_ratio` to a gauge): `agent_anomaly_score`.
pub const SCORE: Desc = Desc {
    name: "agent.anomaly.score",
    unit: "{score}",
    help: "Anomaly score in [0, 1] of each watched series at its latest value (0 in warm-up; \
           reported at the threshold, 0.5 by default; held below it after a report).",
    kind: Kind::Gauge,
};

/// A derived series as the engine keys it: a signal of one process incarnation (and syscall).
/// Equality and hash are the identity (signal, pid, incarnation, syscall), not the names, so a
/// series keeps its detector if a later batch names its process differently.
#[derive(Clone, Debug)]
pub struct WatchKey {
    pub signal: Signal,
    pub key: Arc<SignalKey>,
}

impl WatchKey {
    fn identity(&self) -> (Signal, u32, u64, Option<u32>) {
        let p = &self.key.process;
        (self.signal, p.pid, p.gen, self.key.syscall)
    }
}

impl PartialEq for WatchKey {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for WatchKey {}

impl Hash for WatchKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// The name a per-syscall series carries (`getppid`; `syscall_<nr>` without a name).
fn syscall_label(nr: u32) -> std::borrow::Cow<'static, str> {
    match syscall_static_name(nr) {
        Some(n) => n.into(),
        None => format!("syscall_{nr}").into(),
    }
}

impl SeriesId for WatchKey {
    fn signal(&self) -> Signal {
        self.signal
    }
    fn is_syscall(&self, name: Option<&str>) -> bool {
        match (self.key.syscall, name) {
            (None, None) => true,
            (Some(nr), Some(name)) => syscall_label(nr) == name,
            _ => false,
        }
    }
}

/// The series' own attributes, as the agent's metrics name them: `process.pid` (int),
/// `process.executable.name`, `container.id` (when in a container), `syscall.name` (a
/// per-syscall series).
pub fn attributes(key: &SignalKey) -> Vec<(&'static str, AttrValue)> {
    let p = &key.process;
    let mut l = Vec::with_capacity(4);
    l.push(("process.pid", AttrValue::from(p.pid)));
    l.push(("process.executable.name", AttrValue::from(&*p.exe_name)));
    if let Some(c) = &p.container_id {
        l.push(("container.id", AttrValue::from(&**c)));
    }
    if let Some(nr) = key.syscall {
        l.push((
            "syscall.name",
            AttrValue::from(syscall_label(nr).into_owned()),
        ));
    }
    l
}

fn any(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

/// The range, when the detector had one (NaN before it has any spread).
fn expected(a: &Anomaly) -> Option<(f64, f64)> {
    (a.expected_min.is_finite() && a.expected_max.is_finite())
        .then_some((a.expected_min, a.expected_max))
}

/// A short human line: `process.syscall.rate of pid 42 (curl) = 5.1e4 {call}/s, expected
/// 4.8e3..5.2e3 (score 1.00)`.
pub fn describe(a: &Anomaly) -> String {
    let p = &a.key.process;
    let syscall = a
        .key
        .syscall
        .map(|nr| format!(" {}", syscall_label(nr)))
        .unwrap_or_default();
    let range = match expected(a) {
        Some((lo, hi)) => format!(", expected {lo:.4}..{hi:.4}"),
        None => String::new(),
    };
    format!(
        "{}{syscall} of pid {} ({}) = {:.4} {}{range} (score {:.2})",
        a.signal,
        p.pid,
        p.exe_name,
        a.value,
        a.signal.unit(),
        a.score
    )
}

/// The OTLP log record of one anomaly: event name `agent.anomaly`, time = the observation
/// time of the value, severity WARN, attributes `anomaly.signal`, the series' attributes,
/// `anomaly.score`, `anomaly.value`, `anomaly.expected.min` and `.max` (left out when the
/// detector had no range).
pub fn log_record(a: &Anomaly, observed: SystemTime) -> LogRecord {
    use any_value::Value as V;
    let mut attrs = vec![kv_value(
        "anomaly.signal",
        V::StringValue(a.signal.name().into()),
    )];
    attrs.extend(attributes(&a.key).iter().map(|(k, v)| kv_attr(k, v)));
    attrs.push(kv_value("anomaly.score", V::DoubleValue(a.score)));
    attrs.push(kv_value("anomaly.value", V::DoubleValue(a.value)));
    if let Some((lo, hi)) = expected(a) {
        attrs.push(kv_value("anomaly.expected.min", V::DoubleValue(lo)));
        attrs.push(kv_value("anomaly.expected.max", V::DoubleValue(hi)));
    }
    LogRecord {
        time_unix_nano: unix_nanos(a.time),
        observed_time_unix_nano: unix_nanos(observed),
        severity_number: SeverityNumber::Warn as i32,
        severity_text: "WARN".into(),
        body: any(V::StringValue(format!("anomaly: {}", describe(a)))),
        attributes: attrs,
        event_name: EVENT_NAME.into(),
        ..Default::default()
    }
}

/// The `/status` entry of one anomaly.
pub fn status_entry(a: &Anomaly) -> AnomalyEntry {
    let range = expected(a);
    AnomalyEntry {
        signal: a.signal.name(),
        time_unix_nano: unix_nanos(a.time),
        score: a.score,
        value: a.value,
        expected_min: range.map(|r| r.0),
        expected_max: range.map(|r| r.1),
        attributes: attributes(&a.key)
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    AttrValue::Int(i) => serde_json::Value::from(i),
                    v => serde_json::Value::from(v.to_string()),
                };
                (k, v)
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The score gauge: one point per watched series, labelled `anomaly.signal` and the series'
/// attributes; `start` is when detection started (a gauge's start time is informational).
pub fn score_family<'a>(
    scores: impl Iterator<Item = (&'a WatchKey, f64)>,
    start: SystemTime,
) -> Family {
    let points = scores
        .map(|(k, score)| {
            let mut labels: Labels = vec![attr("anomaly.signal", k.signal.name())];
            labels.extend(attributes(&k.key).into_iter().map(|(k, v)| attr(k, v)));
            Point {
                labels,
                value: Value::Gauge(score),
                start_time: start,
            }
        })
        .collect();
    Family {
        desc: SCORE,
        points,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        metrics::{model::Batch, prometheus},
        signals::ProcessRef,
    };

    fn key(syscall: Option<u32>, container: Option<&str>) -> Arc<SignalKey> {
        Arc::new(SignalKey {
            process: ProcessRef {
                pid: 42,
                gen: 7,
                exe_name: "getppid-loop".into(),
                container_id: container.map(Into::into),
                cgroup_id: 3,
            },
            syscall,
        })
    }

    fn anomaly(syscall: Option<u32>) -> Anomaly {
        Anomaly {
            signal: Signal::SyscallRate,
            key: key(syscall, Some("abc123")),
            time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_750_000_000_123_456_789),
            score: 1.0,
            value: 50_000.0,
            expected_min: 4_800.0,
            expected_max: 5_200.0,
        }
    }

    fn get<'a>(r: &'a LogRecord, k: &str) -> Option<&'a any_value::Value> {
        r.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn the_log_record_carries_the_series_and_the_numbers() {
        use any_value::Value as V;
        let observed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_001);
        let r = log_record(&anomaly(Some(110)), observed);
        assert_eq!(r.event_name, "agent.anomaly");
        assert_eq!(r.time_unix_nano, 1_750_000_000_123_456_789);
        assert_eq!(r.observed_time_unix_nano, 1_750_000_001_000_000_000);
        assert_eq!(r.severity_number, SeverityNumber::Warn as i32);
        let s = |v: &str| Some(V::StringValue(v.into()));
        assert_eq!(
            get(&r, "anomaly.signal").cloned(),
            s("process.syscall.rate")
        );
        assert_eq!(get(&r, "process.pid").cloned(), Some(V::IntValue(42)));
        assert_eq!(
            get(&r, "process.executable.name").cloned(),
            s("getppid-loop")
        );
        assert_eq!(get(&r, "container.id").cloned(), s("abc123"));
        assert_eq!(get(&r, "syscall.name").cloned(), s("getppid"));
        assert_eq!(get(&r, "anomaly.score").cloned(), Some(V::DoubleValue(1.0)));
        assert_eq!(
            get(&r, "anomaly.value").cloned(),
            Some(V::DoubleValue(50_000.0))
        );
        assert_eq!(
            get(&r, "anomaly.expected.min").cloned(),
            Some(V::DoubleValue(4_800.0))
        );
        assert_eq!(
            get(&r, "anomaly.expected.max").cloned(),
            Some(V::DoubleValue(5_200.0))
        );
        // No range: no expected attributes (rather than NaN, which OTLP JSON cannot carry).
        let mut a = anomaly(None);
        a.expected_min = f64::NAN;
        let r = log_record(&a, observed);
        assert!(get(&r, "anomaly.expected.min").is_none());
        assert!(get(&r, "syscall.name").is_none());
        let e = status_entry(&a);
        assert_eq!(e.expected_min, None);
        assert_eq!(e.attributes["process.pid"], serde_json::json!(42));
    }

    #[test]
    fn the_gauge_is_agent_anomaly_score_on_prometheus() {
        let k = WatchKey {
            signal: Signal::SyscallRate,
            key: key(Some(110), None),
        };
        let fam = score_family([(&k, 0.25)].into_iter(), SystemTime::UNIX_EPOCH);
        let batch = Arc::new(Batch {
            source: "detection".into(),
            time: SystemTime::UNIX_EPOCH,
            families: vec![fam],
        });
        let text = prometheus::encode(&[batch]);
        assert!(
            text.contains("# TYPE agent_anomaly_score gauge\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "agent_anomaly_score{anomaly_signal=\"process.syscall.rate\",process_pid=\"42\",\
                 process_executable_name=\"getppid-loop\",syscall_name=\"getppid\"} 0.25"
            ),
            "{text}"
        );
    }

    #[test]
    fn series_identity_ignores_names() {
        let a = WatchKey {
            signal: Signal::SyscallRate,
            key: key(None, None),
        };
        let mut renamed = (*a.key).clone();
        renamed.process.exe_name = "other".into();
        let b = WatchKey {
            signal: Signal::SyscallRate,
            key: Arc::new(renamed),
        };
        assert_eq!(a, b);
        let c = WatchKey {
            signal: Signal::SyscallErrorRatio,
            ..b.clone()
        };
        assert_ne!(a, c);
        assert!(a.is_syscall(None) && !a.is_syscall(Some("getppid")));
        let per = WatchKey {
            signal: Signal::SyscallRate,
            key: key(Some(110), None),
        };
        assert!(per.is_syscall(Some("getppid")) && !per.is_syscall(None));
    }
}
