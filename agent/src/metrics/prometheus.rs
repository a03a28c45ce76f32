//! Prometheus text exposition (format 0.0.4) of metric batches, named by the
//! OpenTelemetry→Prometheus compatibility rules.
//!
//! Naming: the OTel name with every character outside `[a-zA-Z0-9_:]` replaced by `_`, then the
//! unit's suffix (`s`→`_seconds`, `By`→`_bytes`, `1`→`_ratio` for gauges, `{annotations}` add
//! nothing) unless the name already ends with it, then `_total` for counters. Label names have
//! every character outside `[a-zA-Z0-9_]` replaced by `_`.
//!
//! Invariants: every family name gets exactly one `# HELP` and one `# TYPE` line, and all of its
//! samples follow them contiguously, even when several batches carry a family of that name. A
//! family whose kind differs from the first family of the same name is left out (Prometheus
//! cannot mix types under one name), as are points whose value does not match their family's kind.

use std::{fmt::Write as _, sync::Arc};

use super::model::{AttrValue, Batch, Desc, Family, Histogram, Key, Kind, Value};

/// The Prometheus content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How many histogram buckets the text carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Buckets {
    /// Every bound of the histogram.
    Full,
    /// For log2 bounds (each twice the previous, as the kernel probes' are): every third bound
    /// (a factor of 8) from the first at or above 1 µs up to 20 s, so a latency histogram is 9
    /// bucket lines instead of 40. Cumulative counts at the kept bounds are exact (nothing is
    /// re-estimated); other bounds are kept whole.
    #[default]
    Coarse,
}

/// Prometheus text of every family in `batches`, in order of first appearance.
pub fn encode(batches: &[Arc<Batch>]) -> String {
    encode_with(batches, Buckets::Full)
}

/// [`encode`] with the histogram bucket choice.
pub fn encode_with(batches: &[Arc<Batch>], buckets: Buckets) -> String {
    // Group by Prometheus name, keeping first-appearance order.
    let mut groups: Vec<(String, Vec<&Family>)> = Vec::new();
    for fam in batches.iter().flat_map(|b| b.families.iter()) {
        let name = metric_name(&fam.desc);
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, fams)) => {
                if fams[0].desc.kind == fam.desc.kind {
                    fams.push(fam);
                }
            }
            None => groups.push((name, vec![fam])),
        }
    }

    let mut out = String::new();
    for (name, fams) in &groups {
        let help = fams
            .iter()
            .map(|f| f.desc.help)
            .find(|h| !h.is_empty())
            .unwrap_or("");
        let kind = fams[0].desc.kind;
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {}", type_name(kind));
        for fam in fams {
            for p in &fam.points {
                let labels = label_pairs(&p.labels);
                match (&p.value, kind) {
                    (Value::Counter(v), Kind::Counter) | (Value::Gauge(v), Kind::Gauge) => {
                        sample(&mut out, name, "", &labels, None, *v);
                    }
                    (Value::Histogram(h), Kind::Histogram) => {
                        histogram(&mut out, name, &labels, h, buckets)
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// Prometheus name of a family: sanitized OTel name, unit suffix, `_total` for counters.
pub fn metric_name(desc: &Desc) -> String {
    let mut name: String = desc
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) || name.is_empty() {
        name.insert(0, '_');
    }
    if let Some(suffix) = unit_suffix(desc.unit, desc.kind) {
        if !name.ends_with(&format!("_{suffix}")) {
            name.push('_');
            name.push_str(&suffix);
        }
    }
    if desc.kind == Kind::Counter && !name.ends_with("_total") {
        name.push_str("_total");
    }
    name
}

/// The name suffix for a UCUM unit, `None` when the unit adds nothing.
fn unit_suffix(unit: &str, kind: Kind) -> Option<String> {
    // Annotations (`{call}`) carry no unit.
    let mut bare = String::new();
    let mut depth = 0u32;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 => bare.push(c),
            _ => {}
        }
    }
    let bare = bare.trim();
    if bare.is_empty() {
        return None;
    }
    if bare == "1" {
        return (kind == Kind::Gauge).then(|| "ratio".to_string());
    }
    let (num, den) = match bare.split_once('/') {
        Some((n, d)) => (n.trim(), Some(d.trim())),
        None => (bare, None),
    };
    let num = if num.is_empty() || num == "1" {
        String::new()
    } else {
        unit_word(num)
    };
    let suffix = match den.filter(|d| !d.is_empty()) {
        Some(d) if num.is_empty() => format!("per_{}", per_unit_word(d)),
        Some(d) => format!("{num}_per_{}", per_unit_word(d)),
        None => num,
    };
    let suffix: String = suffix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let suffix = suffix.trim_matches('_').to_string();
    (!suffix.is_empty()).then_some(suffix)
}

fn unit_word(u: &str) -> String {
    match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "bit" => "bits",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        other => other,
    }
    .to_string()
}

fn per_unit_word(u: &str) -> String {
    match u {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
    .to_string()
}

fn type_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

/// Sanitized label name and escaped value; names that collide after sanitizing have their
/// values joined with `;` (the OTel rule).
fn label_pairs(labels: &[(Key, AttrValue)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(labels.len());
    for (k, v) in labels {
        let mut name: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert_str(0, "key_");
        }
        let value = escape_label_value(&v.to_string());
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push(';');
                existing.push_str(&value);
            }
            None => out.push((name, value)),
        }
    }
    out
}

fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

/// One sample line: `name<suffix>{labels[,le="..."]} value`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(String, String)],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{v}\"");
        }
        if let Some(le) = le {
            if !first {
                out.push(',');
            }
            let _ = write!(out, "le=\"{le}\"");
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_float(value));
    out.push('\n');
}

/// Whether `bounds` double from one to the next (the kernel probes' log2 buckets).
fn is_log2(bounds: &[f64]) -> bool {
    bounds.len() > 8 && bounds.windows(2).all(|w| (w[1] / w[0] - 2.0).abs() < 1e-9)
}

/// Whether bound `i` of `bounds` is written under `buckets`.
fn kept(bounds: &[f64], i: usize, buckets: Buckets, first_kept: Option<usize>) -> bool {
    match (buckets, first_kept) {
        (Buckets::Coarse, Some(first)) => {
            i >= first && (i - first).is_multiple_of(3) && bounds[i] <= 20.0 * (1.0 + 1e-9)
        }
        _ => true,
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    h: &Histogram,
    buckets: Buckets,
) {
    let first_kept = (buckets == Buckets::Coarse && is_log2(&h.bounds))
        .then(|| h.bounds.iter().position(|b| *b >= 1e-6 * (1.0 - 1e-9)))
        .flatten();
    let mut cumulative = 0u64;
    for (i, bound) in h.bounds.iter().enumerate() {
        cumulative += h.bucket_counts.get(i).copied().unwrap_or(0);
        if !kept(&h.bounds, i, buckets, first_kept) {
            continue;
        }
        let le = format_float(*bound);
        sample(out, name, "_bucket", labels, Some(&le), cumulative as f64);
    }
    // Whatever lies beyond the bounds (normally exactly the last, +Inf, bucket).
    let total: u64 = cumulative
        + h.bucket_counts
            .iter()
            .skip(h.bounds.len())
            .copied()
            .sum::<u64>();
    sample(out, name, "_bucket", labels, Some("+Inf"), total as f64);
    sample(out, name, "_sum", labels, None, h.sum);
    sample(out, name, "_count", labels, None, h.count as f64);
}

/// Integers without exponent or fraction (`42`), other values in Rust's shortest round-trip
/// form (`0.25`, `1.6e-8`), and Prometheus' `+Inf`, `-Inf`, `NaN`.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e17 {
        format!("{v}")
    } else {
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::metrics::model::Point;

    fn desc(name: &'static str, unit: &'static str, kind: Kind) -> Desc {
        Desc {
            name,
            unit,
            help: "help",
            kind,
        }
    }

    fn point(labels: &[(&'static str, &str)], value: Value) -> Point {
        Point {
            labels: labels
                .iter()
                .map(|(k, v)| crate::metrics::model::attr(k, *v))
                .collect(),
            value,
            start_time: SystemTime::UNIX_EPOCH,
        }
    }

    fn batch(source: &str, families: Vec<Family>) -> Arc<Batch> {
        Arc::new(Batch {
            source: source.to_string(),
            time: SystemTime::UNIX_EPOCH,
            families,
        })
    }

    #[test]
    fn names_follow_otel_rules() {
        let n = |name, unit, kind| metric_name(&desc(name, unit, kind));
        assert_eq!(
            n("process.syscall.duration", "s", Kind::Histogram),
            "process_syscall_duration_seconds"
        );
        assert_eq!(
            n("process.syscall.errors", "{error}", Kind::Counter),
            "process_syscall_errors_total"
        );
        assert_eq!(
            n("process.cpu.time", "s", Kind::Counter),
            "process_cpu_time_seconds_total"
        );
        assert_eq!(
            n("process.memory.usage", "By", Kind::Gauge),
            "process_memory_usage_bytes"
        );
        assert_eq!(
            n("http.latency", "ms", Kind::Gauge),
            "http_latency_milliseconds"
        );
        assert_eq!(
            n("cpu.utilization", "1", Kind::Gauge),
            "cpu_utilization_ratio"
        );
        assert_eq!(n("things.done", "1", Kind::Counter), "things_done_total");
        assert_eq!(n("a.seconds", "s", Kind::Gauge), "a_seconds");
        assert_eq!(n("a.total", "{x}", Kind::Counter), "a_total");
        assert_eq!(n("net.io", "By/s", Kind::Gauge), "net_io_bytes_per_second");
        assert_eq!(n("pkts", "{packet}/s", Kind::Gauge), "pkts_per_second");
        assert_eq!(n("k8s.pod-name/x", "", Kind::Gauge), "k8s_pod_name_x");
        assert_eq!(n("a:b", "", Kind::Gauge), "a:b");
        assert_eq!(n("9lives", "", Kind::Gauge), "_9lives");
    }

    #[test]
    fn floats_round_trip() {
        assert_eq!(format_float(0.0), "0");
        assert_eq!(format_float(42.0), "42");
        assert_eq!(format_float(-3.0), "-3");
        assert_eq!(format_float(0.25), "0.25");
        assert_eq!(format_float(1e-9), "1e-9");
        assert_eq!(format_float(1.6e-8), "1.6e-8");
        assert_eq!(format_float(1e20), "1e20");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        for v in [1.6e-8, 3.3e-7, 0.1, 1.0 / 3.0, 123456.789] {
            assert_eq!(format_float(v).parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn histogram_and_counter_exact_text() {
        let bounds: Arc<[f64]> = Arc::from(vec![1e-9, 1.6e-8, 0.5]);
        let dur = Family {
            desc: Desc {
                name: "process.syscall.duration",
                unit: "s",
                help: "Time spent in system calls.",
                kind: Kind::Histogram,
            },
            points: vec![point(
                &[("syscall.name", "getppid"), ("process.pid", "42")],
                Value::Histogram(Histogram {
                    bounds: bounds.clone(),
                    bucket_counts: vec![0, 3, 1, 2].into(),
                    sum: 0.75,
                    count: 6,
                }),
            )],
        };
        let errs = Family {
            desc: Desc {
                name: "process.syscall.errors",
                unit: "{error}",
                help: "Failed calls.\nPer errno \\ syscall.",
                kind: Kind::Counter,
            },
            points: vec![point(
                &[("syscall.name", "open\"at\"\n"), ("error.type", "ENOENT")],
                Value::Counter(7.0),
            )],
        };
        let text = encode(&[batch("syscalls", vec![dur, errs])]);
        let expected = r#"# HELP process_syscall_duration_seconds Time spent in system calls.
# TYPE process_syscall_duration_seconds histogram
process_syscall_duration_seconds_bucket{syscall_name="getppid",process_pid="42",le="1e-9"} 0
process_syscall_duration_seconds_bucket{syscall_name="getppid",process_pid="42",le="1.6e-8"} 3
process_syscall_duration_seconds_bucket{syscall_name="getppid",process_pid="42",le="0.5"} 4
process_syscall_duration_seconds_bucket{syscall_name="getppid",process_pid="42",le="+Inf"} 6
process_syscall_duration_seconds_sum{syscall_name="getppid",process_pid="42"} 0.75
process_syscall_duration_seconds_count{syscall_name="getppid",process_pid="42"} 6
# HELP process_syscall_errors_total Failed calls.\nPer errno \\ syscall.
# TYPE process_syscall_errors_total counter
process_syscall_errors_total{syscall_name="open\"at\"\n",error_type="ENOENT"} 7
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn same_named_families_merge_and_unlabeled_samples() {
        let g = |v| Family {
            desc: desc("agent.uptime", "s", Kind::Gauge),
            points: vec![point(&[], Value::Gauge(v))],
        };
        let other = Family {
            desc: desc("x.ratio", "1", Kind::Gauge),
            points: vec![point(&[("a.b", "1"), ("a_b", "2")], Value::Gauge(0.5))],
        };
        let conflicting = Family {
            desc: desc("agent.uptime", "s", Kind::Counter),
            points: vec![point(&[], Value::Counter(1.0))],
        };
        let mismatched = Family {
            desc: desc("agent.uptime", "s", Kind::Gauge),
            points: vec![point(&[], Value::Counter(9.0))],
        };
        let text = encode(&[
            batch("a", vec![g(1.0), other]),
            batch("b", vec![g(2.5), conflicting, mismatched]),
        ]);
        let expected = "# HELP agent_uptime_seconds help
# TYPE agent_uptime_seconds gauge
agent_uptime_seconds 1
agent_uptime_seconds 2.5
# HELP x_ratio help
# TYPE x_ratio gauge
x_ratio{a_b=\"1;2\"} 0.5
# HELP agent_uptime_seconds_total help
# TYPE agent_uptime_seconds_total counter
agent_uptime_seconds_total 1
";
        assert_eq!(text, expected);
        assert_eq!(encode(&[]), "");
    }
}

#[cfg(test)]
mod bucket_tests {
    use std::time::SystemTime;

    use super::*;
    use crate::metrics::model::Point;

    /// The syscall probe's 39 log2 bounds (1 ns .. 2^38 ns) with one call in each bucket.
    fn log2_batch() -> Arc<Batch> {
        let bounds: Arc<[f64]> = (0..39)
            .map(|b| (1u64 << b) as f64 * 1e-9)
            .collect::<Vec<_>>()
            .into();
        Arc::new(Batch {
            source: "t".into(),
            time: SystemTime::UNIX_EPOCH,
            families: vec![Family {
                desc: Desc {
                    name: "process.syscall.duration",
                    unit: "s",
                    help: "h",
                    kind: Kind::Histogram,
                },
                points: vec![Point {
                    labels: vec![],
                    value: Value::Histogram(Histogram {
                        bounds,
                        bucket_counts: vec![1; 40].into(),
                        sum: 1.0,
                        count: 40,
                    }),
                    start_time: SystemTime::UNIX_EPOCH,
                }],
            }],
        })
    }

    #[test]
    fn coarse_log2_buckets_keep_exact_cumulative_counts_at_a_factor_of_8() {
        let text = encode_with(&[log2_batch()], Buckets::Coarse);
        let buckets: Vec<(&str, &str)> = text
            .lines()
            .filter(|l| l.contains("_bucket"))
            .map(|l| {
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                (le, l.rsplit(' ').next().unwrap())
            })
            .collect();
        // 2^10 ns (1.024 µs) is bucket index 10: 11 calls at or below it; then every 2^3.
        assert_eq!(buckets[0], ("1.024e-6", "11"));
        assert_eq!(buckets[1], ("8.192e-6", "14"));
        assert_eq!(buckets.len(), 10, "{buckets:?}");
        assert_eq!(buckets[8], ("17.179869184", "35"));
        assert_eq!(buckets[9], ("+Inf", "40"));
        let full = encode_with(&[log2_batch()], Buckets::Full);
        assert_eq!(full.lines().filter(|l| l.contains("_bucket")).count(), 40);
    }
}
