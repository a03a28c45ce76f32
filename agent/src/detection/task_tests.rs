//! The detection task's engine driver: a held step is one anomaly, put out on every output;
//! ended processes are forgotten, not scored; per-syscall watches set the deriver's demand;
//! a reload reconfigures demand, health and outputs.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::*;
use crate::{
    detection::synthetic::Noise,
    metrics::model::{get, AttrValue, Value},
    signals::{ProcessRef, Signal, SignalKey, SignalSample},
};

fn parse(yaml: &str) -> DetectionConfig {
    #[derive(serde::Deserialize)]
    struct File {
        detection: DetectionConfig,
    }
    let c = serde_yaml_ng::from_str::<File>(yaml).unwrap().detection;
    c.validate().unwrap();
    c
}

fn outputs() -> Outputs {
    Outputs {
        state: Arc::new(AgentState::new("test".into())),
        store: Store::new(),
        anomalies: AnomalyHub::new(),
        demand: Demand::default(),
    }
}

fn key(pid: u32, syscall: Option<u32>) -> Arc<SignalKey> {
    Arc::new(SignalKey {
        process: ProcessRef {
            pid,
            gen: 1000 + pid as u64,
            exe_name: "w".into(),
            container_id: None,
            cgroup_id: 0,
        },
        syscall,
    })
}

fn at(s: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000) + Duration::from_secs_f64(s)
}

fn batch(t: f64, samples: Vec<SignalSample>, ended: Vec<ProcessRef>) -> SignalBatch {
    SignalBatch {
        source: "syscalls",
        time: at(t),
        elapsed: Duration::from_secs(1),
        published: at(t),
        derived: at(t),
        samples,
        ended,
    }
}

fn sample(signal: Signal, key: &Arc<SignalKey>, value: f64) -> SignalSample {
    SignalSample {
        signal,
        key: key.clone(),
        value,
    }
}

/// The gauge points of the `detection` batch: (pid, score).
fn gauge(out: &Outputs) -> Vec<(i64, f64)> {
    let snap = out.store.snapshot();
    let Some(b) = snap.iter().find(|b| b.source == NAME) else {
        return vec![];
    };
    assert_eq!(b.families.len(), 1);
    assert_eq!(b.families[0].desc.name, "agent.anomaly.score");
    b.families[0]
        .points
        .iter()
        .map(|p| {
            let pid = match get(&p.labels, "process.pid") {
                Some(AttrValue::Int(i)) => *i,
                other => panic!("{other:?}"),
            };
            let Value::Gauge(v) = p.value else {
                panic!("{:?}", p.value)
            };
            (pid, v)
        })
        .collect()
}

#[test]
fn a_held_step_is_one_anomaly_put_out_everywhere() {
    let out = outputs();
    let mut hub = out.anomalies.subscribe();
    let mut records = out.state.subscribe_log_records();
    let mut d = Detection::new(
        &parse("detection:\n  warmup: 15s\n  signals: [process.syscall.rate]\n"),
        out.clone(),
    );
    let k = key(42, None);
    let mut noise = Noise::new(3);
    let mut found = Vec::new();
    for i in 0..38 {
        let level = if i >= 30 { 500_000.0 } else { 50_000.0 };
        let x = level * (1.0 + 0.03 * noise.gauss());
        // An unwatched signal of the same process costs nothing.
        let samples = vec![
            sample(Signal::SyscallRate, &k, x),
            sample(Signal::SyscallErrorRatio, &k, 0.5),
        ];
        found.extend(d.ingest(&batch(i as f64, samples, vec![])));
    }
    assert_eq!(found.len(), 1, "{found:#?}");
    let a = &found[0];
    assert_eq!(
        (a.signal, a.time, a.key.process.pid),
        (Signal::SyscallRate, at(30.0), 42)
    );
    assert!(a.expected_min >= 0.0 && a.expected_max < a.value, "{a:?}");
    // The typed broadcast, the log record, /status.
    assert_eq!(*hub.try_recv().unwrap(), *a);
    assert!(hub.try_recv().is_err());
    let r = records.try_recv().unwrap();
    assert_eq!(r.event_name, "agent.anomaly");
    assert_eq!(
        r.time_unix_nano as u128,
        at(30.0).duration_since(UNIX_EPOCH).unwrap().as_nanos()
    );
    let rep = out.state.detection();
    assert_eq!(rep.anomalies.len(), 1);
    assert_eq!(rep.anomalies[0].value, a.value);
    assert_eq!(
        (
            rep.status.series,
            rep.status.anomalies_total,
            rep.status.batches
        ),
        (1, 1, 38)
    );
    assert_eq!(rep.status.samples, 76);
    assert!(rep.status.cpu_seconds > 0.0);
    // One gauge point, held below the threshold after the report.
    let g = gauge(&out);
    assert_eq!(g.len(), 1);
    assert!(g[0].0 == 42 && g[0].1 < 0.5, "{g:?}");
    let health = &out.state.components()[NAME];
    assert!(health.healthy && health.status == "running" && health.started.is_some());
    // No per-syscall watch: nothing asked of the deriver.
    assert!(out.demand.union().syscalls.is_empty());
}

#[test]
fn ended_processes_are_forgotten_not_scored() {
    let out = outputs();
    let mut d = Detection::new(
        &parse("detection:\n  warmup: 5s\n  signals: [process.syscall.rate]\n"),
        out.clone(),
    );
    let (a, b) = (key(7, None), key(8, None));
    for i in 0..20 {
        let samples = vec![
            sample(Signal::SyscallRate, &a, 100.0 + (i % 3) as f64),
            sample(Signal::SyscallRate, &b, 200.0 + (i % 5) as f64),
        ];
        assert_eq!(d.ingest(&batch(i as f64, samples, vec![])), vec![]);
    }
    assert_eq!(gauge(&out).len(), 2);
    // Process 7 ends: its last interval is not a sample, and its series goes.
    let ended = vec![a.process.clone()];
    let samples = vec![sample(Signal::SyscallRate, &b, 201.0)];
    assert_eq!(d.ingest(&batch(20.0, samples, ended)), vec![]);
    let s = out.state.detection().status;
    assert_eq!((s.series, s.forgotten, s.evictions), (1, 1, 0));
    assert_eq!(gauge(&out).iter().map(|g| g.0).collect::<Vec<_>>(), [8]);
    // Another incarnation of pid 8 ending takes nothing of this one.
    let mut other = b.process.clone();
    other.gen += 1;
    d.ingest(&batch(21.0, vec![], vec![other]));
    assert_eq!(out.state.detection().status.series, 1);
}

#[test]
fn per_syscall_watches_ask_the_deriver_and_reloads_apply() {
    let out = outputs();
    let mut d = Detection::new(
        &parse(
            "detection:\n  warmup: 0s\n  signals: [{signal: process.syscall.rate, syscall: getppid}]\n",
        ),
        out.clone(),
    );
    assert_eq!(out.demand.union().syscalls, [110].into());
    let (all, getppid, read) = (key(9, None), key(9, Some(110)), key(9, Some(0)));
    for i in 0..12 {
        let samples = vec![
            sample(Signal::SyscallRate, &all, 10.0),
            sample(Signal::SyscallRate, &getppid, 10.0 + (i % 2) as f64),
            sample(Signal::SyscallRate, &read, 10.0),
        ];
        d.ingest(&batch(i as f64, samples, vec![]));
    }
    let s = out.state.detection().status;
    assert_eq!(
        (s.series, s.watching.as_slice()),
        (1, &["process.syscall.rate{getppid}".to_string()][..])
    );
    // A 100x jump of getppid is reported with its syscall.
    let got = d.ingest(&batch(
        12.0,
        vec![sample(Signal::SyscallRate, &getppid, 1000.0)],
        vec![],
    ));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.syscall, Some(110));
    assert_eq!(
        out.state.detection().anomalies[0].attributes["syscall.name"],
        serde_json::json!("getppid")
    );

    // Reload: the all-syscalls rate instead; the per-syscall demand goes.
    d.reconfigure(&parse("detection:\n  signals: [process.syscall.rate]\n"));
    assert!(out.demand.union().syscalls.is_empty());
    assert_eq!(out.state.detection().status.series, 0);
    // Off: nothing is scored, the gauge batch goes, health says so; the list stays.
    d.reconfigure(&parse("detection:\n  enabled: false\n"));
    assert_eq!(
        d.ingest(&batch(
            13.0,
            vec![sample(Signal::SyscallRate, &all, 1e9)],
            vec![]
        )),
        vec![]
    );
    assert!(out.store.snapshot().iter().all(|b| b.source != NAME));
    let health = &out.state.components()[NAME];
    assert_eq!((health.status.as_str(), health.started), ("disabled", None));
    assert_eq!(out.state.detection().anomalies.len(), 1);
    // A lag is said in health, and counted.
    d.lagged(3);
    assert_eq!(out.state.detection().status.lagged_batches, 3);
    assert!(out.state.components()[NAME]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("3 signal batches")));
}

#[test]
fn a_newer_incarnation_of_a_pid_replaces_the_older_one() {
    let out = outputs();
    let mut d = Detection::new(
        &parse("detection:\n  warmup: 0s\n  signals: [process.syscall.rate, system.network.tcp.connection.failure_rate]\n"),
        out.clone(),
    );
    let old = key(5, None);
    let mut exec = (*old).clone();
    exec.process.gen += 1;
    exec.process.exe_name = "after-exec".into();
    let exec = Arc::new(exec);
    // The network probe's incarnation of pid 5 (another clock: compared only with its own).
    let net = key(5, None);
    let mut b = batch(0.0, vec![sample(Signal::SyscallRate, &old, 10.0)], vec![]);
    d.ingest(&b);
    b.source = "network";
    b.samples = vec![sample(Signal::TcpFailureRate, &net, 0.0)];
    d.ingest(&b);
    assert_eq!(out.state.detection().status.series, 2);
    // The same pid with a newer incarnation (an exec): the old one's series goes, in the
    // same batch, and the network series stays.
    let b = batch(
        1.0,
        vec![
            sample(Signal::SyscallRate, &old, 10.0),
            sample(Signal::SyscallRate, &exec, 10.0),
        ],
        vec![],
    );
    d.ingest(&b);
    let s = out.state.detection().status;
    assert_eq!((s.series, s.forgotten, s.evictions), (2, 1, 0));
    let names: Vec<String> = out
        .store
        .snapshot()
        .iter()
        .filter(|b| b.source == NAME)
        .flat_map(|b| b.families[0].points.clone())
        .filter_map(|p| match get(&p.labels, "process.executable.name") {
            Some(AttrValue::Str(s)) => Some(s.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "after-exec").count(),
        1,
        "{names:?}"
    );
    assert_eq!(names.len(), 2, "{names:?}");
}
