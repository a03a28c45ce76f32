//! Exactness of the exported series across promotions, demotions, levels and expiry.

use std::collections::BTreeMap;

use super::*;
use crate::metrics::model::{get, AttrValue};

fn agg(count: u64) -> Agg {
    Agg {
        count,
        sum_ns: count * 100,
        errors: 0,
        buckets: if count > 0 { vec![(7, count)] } else { vec![] },
    }
}

fn delta(tgid: u32, gen: u64, nr: u32, calls: u64) -> ProcDelta {
    ProcDelta {
        proc: ProcKey { tgid, gen },
        comm: format!("p{tgid}"),
        cgroup_id: 0,
        stats: if calls > 0 {
            [(nr, agg(calls))].into()
        } else {
            BTreeMap::new()
        },
        errors: BTreeMap::new(),
        ended: false,
    }
}

/// Named after the comm; processes 1000.. share the executable `shared`, in container `c1`.
fn identity(d: &ProcDelta) -> Identity {
    if d.proc.tgid >= 1000 {
        Identity {
            exe_name: "shared".into(),
            container_id: Some("c1".into()),
            container_labels: vec![],
        }
    } else {
        Identity {
            exe_name: d.comm.as_str().into(),
            container_id: None,
            container_labels: vec![],
        }
    }
}

fn limits(top: usize) -> Limits {
    Limits {
        top,
        retain_exited: Duration::from_secs(10),
    }
}

/// Count of every exported duration point, keyed by its labels as text.
fn counts(s: &Series) -> BTreeMap<String, u64> {
    s.families(|nr| format!("sys{nr}"), |e| format!("E{e}"))[0]
        .points
        .iter()
        .map(|p| {
            let Value::Histogram(h) = &p.value else {
                panic!("{p:?}")
            };
            assert_eq!(h.bucket_counts.iter().sum::<u64>(), h.count);
            let key = p
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (key, h.count)
        })
        .collect()
}

fn pid_count(s: &Series, pid: i64) -> u64 {
    s.families(|nr| format!("sys{nr}"), |e| format!("E{e}"))[0]
        .points
        .iter()
        .filter(|p| get(&p.labels, "process.pid") == Some(&AttrValue::Int(pid)))
        .map(|p| match &p.value {
            Value::Histogram(h) => h.count,
            _ => 0,
        })
        .sum()
}

fn other_count(s: &Series) -> u64 {
    s.families(|nr| format!("sys{nr}"), |e| format!("E{e}"))[0]
        .points
        .iter()
        .filter(|p| get(&p.labels, FOLDED).is_some())
        .map(|p| match &p.value {
            Value::Histogram(h) => h.count,
            _ => 0,
        })
        .sum()
}

#[test]
fn the_busiest_process_of_an_interval_gets_its_own_series_whole() {
    // 150 sleepers make 3 calls each, then one process makes 200,000: with 100 slots the
    // sleepers do not keep the busy process out.
    let mut s = Series::new(SyscallAggregation::Process);
    let (t0, w) = (Instant::now(), SystemTime::now());
    let sleepers: Vec<ProcDelta> = (1..=150).map(|p| delta(p, 1, 35, 3)).collect();
    s.ingest(
        &sleepers,
        identity,
        &Default::default(),
        &limits(100),
        t0,
        w,
    );
    assert_eq!(other_count(&s), 50 * 3);
    let busy = vec![delta(900, 1, 110, 200_000), delta(5, 1, 35, 1)];
    s.ingest(&busy, identity, &Default::default(), &limits(100), t0, w);
    assert_eq!(pid_count(&s, 900), 200_000);
    assert_eq!(s.total_calls(), 150 * 3 + 200_001);
}

#[test]
fn sums_stay_exact_and_series_monotonic_across_promotions_and_demotions() {
    let mut s = Series::new(SyscallAggregation::Process);
    let (t0, w) = (Instant::now(), SystemTime::now());
    let mut total = 0u64;
    let mut before: BTreeMap<String, u64> = BTreeMap::new();
    // A deterministic pseudo-random schedule: 40 processes, 2 slots, 200 drains.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for drain in 0..200u64 {
        let mut ds = Vec::new();
        for pid in 1..=40u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let calls = if x.is_multiple_of(3) { x % 1000 } else { 0 };
            if calls > 0 {
                ds.push(delta(pid, 1, (pid % 3) + 1, calls));
                total += calls;
            }
        }
        s.ingest(&ds, identity, &Default::default(), &limits(2), t0, w);
        let now = counts(&s);
        assert_eq!(now.values().sum::<u64>(), total, "drain {drain}");
        for (k, v) in &before {
            assert!(now.get(k).is_some_and(|n| n >= v), "{k} went backwards");
        }
        before = now;
    }
    assert_eq!(s.total_calls(), total);
    assert!(s.accounting.folded_calls > 0);
}

#[test]
fn a_reused_pid_is_a_new_series_and_keeps_the_old_one_apart() {
    let mut s = Series::new(SyscallAggregation::Process);
    let (t0, w) = (Instant::now(), SystemTime::now());
    let mut alpha = delta(77, 1, 110, 300_000);
    alpha.comm = "alpha".into();
    alpha.ended = true;
    let mut beta = delta(77, 2, 110, 500_000);
    beta.comm = "beta".into();
    s.ingest(
        &[alpha, beta],
        identity,
        &Default::default(),
        &limits(10),
        t0,
        w,
    );
    let c = counts(&s);
    assert_eq!(
        c["syscall.name=sys110,process.pid=77,process.executable.name=alpha"],
        300_000
    );
    assert_eq!(
        c["syscall.name=sys110,process.pid=77,process.executable.name=beta"],
        500_000
    );
    // alpha expires after retention; beta stays while it lives.
    s.ingest(
        &[],
        identity,
        &Default::default(),
        &limits(10),
        t0 + Duration::from_secs(11),
        w,
    );
    assert_eq!(counts(&s).len(), 1);
    assert_eq!(s.total_calls(), 800_000);
}

#[test]
fn levels_group_incarnations_and_drop_attributes() {
    for (level, want) in [
        (
            SyscallAggregation::Executable,
            "syscall.name=sys1,process.executable.name=shared,container.id=c1",
        ),
        (
            SyscallAggregation::Container,
            "syscall.name=sys1,container.id=c1",
        ),
        (SyscallAggregation::Host, "syscall.name=sys1"),
    ] {
        let mut s = Series::new(level);
        let (t0, w) = (Instant::now(), SystemTime::now());
        let ds = vec![
            delta(1000, 1, 1, 5),
            delta(1001, 1, 1, 7),
            delta(1002, 3, 1, 1),
        ];
        s.ingest(&ds, identity, &Default::default(), &limits(10), t0, w);
        let c = counts(&s);
        assert_eq!(c.len(), 1, "{level:?}: {c:?}");
        assert_eq!(c[want], 13, "{level:?}");
    }
}

#[test]
fn overflow_and_errors_land_in_other() {
    let mut s = Series::new(SyscallAggregation::Process);
    let (t0, w) = (Instant::now(), SystemTime::now());
    let mut d = delta(5, 1, 3, 10);
    d.errors.insert((3, 9), 4);
    let overflow = OverflowDelta {
        stats: [(3, agg(6))].into(),
        errors: [(3, 2)].into(),
    };
    s.ingest(&[d], identity, &overflow, &limits(10), t0, w);
    assert_eq!(other_count(&s), 6);
    assert_eq!(s.total_calls(), 16);
    assert_eq!(s.total_errors(), 6);
    let errs = &s.families(|nr| format!("sys{nr}"), |e| format!("E{e}"))[1].points;
    let types: Vec<String> = errs
        .iter()
        .map(|p| get(&p.labels, "error.type").unwrap().to_string())
        .collect();
    assert_eq!(types, ["E9", ERROR_TYPE_OTHER]);
}

#[test]
fn an_owner_expires_only_when_its_last_incarnation_ended() {
    let mut s = Series::new(SyscallAggregation::Executable);
    let (t0, w) = (Instant::now(), SystemTime::now());
    s.ingest(
        &[delta(1000, 1, 1, 5), delta(1001, 1, 1, 5)],
        identity,
        &Default::default(),
        &limits(10),
        t0,
        w,
    );
    let mut end = delta(1000, 1, 1, 0);
    end.ended = true;
    let later = t0 + Duration::from_secs(30);
    s.ingest(&[end], identity, &Default::default(), &limits(10), later, w);
    assert_eq!(s.owner_series(), 1, "1001 still lives");
    let mut end = delta(1001, 1, 1, 0);
    end.ended = true;
    s.ingest(&[end], identity, &Default::default(), &limits(10), later, w);
    s.ingest(
        &[],
        identity,
        &Default::default(),
        &limits(10),
        later + Duration::from_secs(10),
        w,
    );
    assert_eq!(s.owner_series(), 0);
    assert_eq!(s.accounting.expired_series, 1);
    assert_eq!(s.total_calls(), 10);
}

#[test]
fn a_new_incarnation_that_looks_the_same_replaces_the_older_series() {
    // pid 42 runs `p42`, exits, and the pid is reused by another `p42` within the retention.
    let mut s = Series::new(SyscallAggregation::Process);
    let (t0, w) = (Instant::now(), SystemTime::now());
    let mut first = delta(42, 1, 110, 5815);
    first.ended = true;
    s.ingest(&[first], identity, &Default::default(), &limits(10), t0, w);
    s.ingest(
        &[delta(42, 2, 110, 30_000)],
        identity,
        &Default::default(),
        &limits(10),
        t0,
        w,
    );
    let c = counts(&s);
    assert_eq!(c.len(), 1, "one series per attribute set: {c:?}");
    assert_eq!(pid_count(&s, 42), 30_000);
    assert_eq!(s.accounting.expired_series, 1);
    assert_eq!(s.total_calls(), 35_815);
}
