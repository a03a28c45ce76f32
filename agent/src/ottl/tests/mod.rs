//! The Collector's documented examples as tables (`converters.rs`, `editors.rs`): each
//! function's examples from `ottlfuncs/README.md` and, where the README gives no output, the
//! inputs and outputs of the Collector's own tests for that function (`ottlfuncs/func_*_test.go`),
//! run through our parser, checker and evaluator. Here: the helpers, the datapoint context,
//! conditions and load-time errors (column, what was expected).

mod converters;
mod editors;
mod parse;

use std::time::UNIX_EPOCH;

use opentelemetry_proto::tonic::{
    common::v1::{InstrumentationScope, KeyValue},
    logs::v1::LogRecord,
};

use super::{attrs::AttrMap, condition, statement, Context, Env, Subject, Tcx, Value};
use crate::metrics::model::{attr, Desc, Kind, Labels, Point, Value as MValue};

pub(super) fn env(res: &[KeyValue]) -> Env<'_> {
    Env {
        resource: res,
        scope: None,
        metric: None,
        now_unix_nano: 7,
    }
}

/// Runs `stmt` (log context) on a record with `attrs`; returns the attributes after, or the
/// load or run error as text.
pub(super) fn on_log(
    stmt: &str,
    attrs: &[(&str, Value<'static>)],
) -> Result<Vec<KeyValue>, String> {
    let s = statement(stmt, Context::Log).map_err(|e| format!("load: {e}"))?;
    let mut rec = LogRecord::default();
    for (k, v) in attrs {
        rec.attributes.put(k, v.clone()).unwrap();
    }
    let mut tcx = Tcx {
        touched: false,
        subject: Subject::Log(&mut rec),
        env: env(&[]),
    };
    s.execute(&mut tcx).map_err(|e| format!("run: {e}"))?;
    Ok(rec.attributes)
}

/// The value a converter expression yields (through `set(attributes["out"], EXPR)`), with
/// `attributes["in"]` holding `input`.
pub(super) fn conv(expr: &str, input: Value<'static>) -> Result<Value<'static>, String> {
    let out = on_log(
        &format!(r#"set(attributes["out"], {expr})"#),
        &[("in", input)],
    )?;
    Ok(out.get("out").map(Value::into_owned).unwrap_or(Value::Nil))
}

pub(super) fn s(x: &str) -> Value<'static> {
    Value::Str(x.to_string().into())
}

pub(super) fn list(items: &[&str]) -> Value<'static> {
    Value::List(items.iter().map(|x| s(x)).collect())
}

pub(super) fn map_of(attrs: &[KeyValue]) -> Vec<(String, Value<'static>)> {
    attrs
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                super::attrs::kv_get(attrs, &kv.key).unwrap().into_owned(),
            )
        })
        .collect()
}

fn point(labels: Labels) -> Point {
    Point {
        labels,
        value: MValue::Counter(5.0),
        start_time: UNIX_EPOCH + std::time::Duration::from_secs(100),
    }
}

#[test]
fn datapoint_context_reads_and_writes_typed_labels() {
    let desc = Desc {
        name: "process.syscall.errors",
        unit: "{error}",
        help: "h",
        kind: Kind::Counter,
    };
    let res = vec![KeyValue {
        key: "host.name".into(),
        value: Some(super::attrs::value_to_any(s("pod-7"))),
        ..Default::default()
    }];
    let scope = InstrumentationScope {
        name: "agent".into(),
        ..Default::default()
    };
    let run = |stmt: &str, p: &mut Point| {
        let st =
            statement(stmt, Context::Datapoint).unwrap_or_else(|e| panic!("{}", e.render(stmt)));
        let mut tcx = Tcx {
            touched: false,
            subject: Subject::Datapoint(p),
            env: Env {
                resource: &res,
                scope: Some(&scope),
                metric: Some(&desc),
                now_unix_nano: 42,
            },
        };
        st.execute(&mut tcx)
    };
    let mut p = point(vec![
        attr("process.pid", 42i64),
        attr("process.executable.name", "secretproc"),
        attr("syscall.name", "read"),
    ]);
    assert_eq!(
        run(
            r#"set(attributes["process.executable.name"], SHA256(attributes["process.executable.name"])) where attributes["process.executable.name"] == "secretproc""#,
            &mut p
        ),
        Ok(true)
    );
    // sha256sum of "secretproc", computed outside the agent.
    assert_eq!(
        crate::metrics::model::get(&p.labels, "process.executable.name").and_then(|v| v.as_str()),
        Some("0d48d787eb0d0d03d29618661681d57db395164f27d9f0434fc4d6474c1e1fdb")
    );
    // Typed comparisons: process.pid is an int.
    assert_eq!(
        run(
            r#"set(attributes["big"], true) where attributes["process.pid"] > 40"#,
            &mut p
        ),
        Ok(true)
    );
    assert_eq!(
        run(
            r#"set(attributes["s"], true) where attributes["process.pid"] == "42""#,
            &mut p
        ),
        Ok(false)
    );
    // Higher contexts are readable.
    assert_eq!(
        run(
            r#"set(attributes["m"], metric.name) where IsMatch(resource.attributes["host.name"], "pod-*") and metric.type == METRIC_DATA_TYPE_SUM"#,
            &mut p
        ),
        Ok(true)
    );
    assert_eq!(
        run(
            r#"set(attributes["t"], time_unix_nano - start_time_unix_nano)"#,
            &mut p
        ),
        Ok(true)
    );
    assert_eq!(
        crate::metrics::model::get(&p.labels, "t"),
        Some(&crate::metrics::model::AttrValue::Int(42 - 100_000_000_000))
    );
    assert_eq!(
        run(r#"set(value_double, value_double * 2.0)"#, &mut p),
        Ok(true)
    );
    assert_eq!(p.value, MValue::Counter(10.0));
    assert_eq!(
        run(r#"set(attributes["l"], [1])"#, &mut p).unwrap_err().0,
        "metric attributes hold strings, ints, doubles and bools, not a list"
    );
    assert_eq!(
        run(r#"keep_keys(attributes, ["syscall.name"])"#, &mut p),
        Ok(true)
    );
    assert_eq!(p.labels, vec![attr("syscall.name", "read")]);
}

#[test]
fn conditions_from_the_language_documentation() {
    let desc = Desc {
        name: "a name",
        unit: "",
        help: "",
        kind: Kind::Gauge,
    };
    let mut d = desc.clone();
    let res: Vec<KeyValue> = Vec::new();
    let tcx = Tcx {
        touched: false,
        subject: Subject::Metric(&mut d),
        env: env(&res),
    };
    for (c, want) in [
        (r#"name == "a name""#, true),
        ("1 < 2", true),
        ("not true", false),
        (r#"not name == "foo""#, true),
        (r#"not (IsMatch(name, "http_.*") and type > 0)"#, true),
        (r#"name != nil"#, true),
        (r#"description == """#, true),
        ("true and (false or true)", true),
        ("false or false and true", false),
    ] {
        let cond = condition(c, Context::Metric).unwrap_or_else(|e| panic!("{}", e.render(c)));
        assert_eq!(cond.eval(&tcx), Ok(want), "{c}");
    }
    let cond = condition(r#"attributes["custom-attr"] != nil"#, Context::Log).unwrap();
    let mut rec = LogRecord::default();
    let tcx = Tcx {
        touched: false,
        subject: Subject::Log(&mut rec),
        env: env(&res),
    };
    assert_eq!(cond.eval(&tcx), Ok(false));
}

#[test]
fn load_errors_name_the_column_and_the_problem() {
    let cases = [
        (
            Context::Datapoint,
            r#"set(attributes["a"], Foo(1))"#,
            "column 22: unknown converter Foo",
        ),
        (
            Context::Datapoint,
            r#"sett(attributes["a"], 1)"#,
            "column 1: unknown editor sett",
        ),
        (
            Context::Datapoint,
            r#"set(attributes["a"])"#,
            "column 1: missing argument value: set(target, value)",
        ),
        (
            Context::Datapoint,
            r#"set(attributes["a"], 1, 2)"#,
            "column 25: too many arguments",
        ),
        (
            Context::Datapoint,
            r#"set(metric.name, "x")"#,
            "column 5: metric.name is read-only in the datapoint context",
        ),
        (
            Context::Datapoint,
            r#"set(time_unix_nano, 1)"#,
            "column 5: time_unix_nano is read-only in the agent",
        ),
        (
            Context::Datapoint,
            r#"set(body, "x")"#,
            "column 5: unknown path 'body' in the datapoint context",
        ),
        (
            Context::Metric,
            r#"delete_key(attributes, "x")"#,
            "column 12: unknown path 'attributes' in the metric context",
        ),
        (
            Context::Datapoint,
            r#"delete_key(attributes["a"], "x")"#,
            "column 12: expected a map path",
        ),
        (
            Context::Datapoint,
            r#"set(attributes["a"], SHA256(5))"#,
            "column 29: SHA256 expects a string, got an int",
        ),
        (
            Context::Datapoint,
            r#"keep_keys(attributes, "a")"#,
            "column 23: keep_keys's keys must be a list of strings",
        ),
        (
            Context::Datapoint,
            r#"set(attributes["a"], 1) where attributes["b"]"#,
            "column 31: expected a condition",
        ),
        (
            Context::Datapoint,
            r#"set(attributes["a"], 1) where Len("x")"#,
            "column 31: expected a condition",
        ),
        (
            Context::Datapoint,
            r#"set(attributes["a"], 1) where attributes["b"] == NOPE"#,
            "column 50: unknown enum NOPE",
        ),
        (
            Context::Datapoint,
            r#"set(attributes["a"], set(attributes["b"], 1))"#,
            "column 22: expected a value; an editor (lowercase) cannot be nested",
        ),
        (
            Context::Log,
            r#"truncate_all(attributes, 2, truncation_marker = "long")"#,
            "column 26: the truncation marker is longer",
        ),
        (
            Context::Log,
            r#"set(attributes["a"]["b"], 1)"#,
            "column 20: setting a nested key is not supported",
        ),
        (
            Context::Log,
            r#"set(attributes["a"], 1) where attributes["a"] == 1 when"#,
            "column 52: expected 'and', 'or' or the end of the statement, found 'when'",
        ),
    ];
    for (ctx, text, want) in cases {
        let e = statement(text, ctx).expect_err(text);
        assert!(
            e.to_string().starts_with(want),
            "{text}\n got: {e}\nwant: {want}"
        );
    }
    let e = statement(r#"set(attributes["a"], Foo(1))"#, Context::Datapoint).unwrap_err();
    assert_eq!(
        e.render(r#"set(attributes["a"], Foo(1))"#).lines().nth(2),
        Some("                       ^")
    );
}

/// `replace_pattern` with a literal replacement is memoized per value (`memo.rs`): on metric
/// points the results must equal the uncached ones (the regex crate's `replace_all`, Go's
/// `ReplaceAllString`) for values that match, that do not, that repeat, and for non-strings;
/// a replacement read from the point is never memoized.
#[test]
fn replace_pattern_memo_gives_the_uncached_results() {
    let pattern = "^([0-9a-f]{12})[0-9a-f]+$";
    let st = statement(
        &format!(r#"replace_pattern(attributes["container.id"], "{pattern}", "$1")"#),
        Context::Datapoint,
    )
    .unwrap();
    let re = regex::Regex::new(pattern).unwrap();
    let run = |st: &super::Statement, p: &mut Point| {
        let mut tcx = Tcx {
            touched: false,
            subject: Subject::Datapoint(p),
            env: env(&[]),
        };
        st.execute(&mut tcx).unwrap();
    };
    let long = format!("{:064x}", 0xabcdefu64);
    let values = [
        long.as_str(),
        "not-a-container-id",
        long.as_str(),
        "0123456789ab",
        "0123456789abc",
        "",
        "not-a-container-id",
        "0123456789abcdef0123",
        long.as_str(),
    ];
    // Twice: the second pass reads every result from the cache.
    for _ in 0..2 {
        for v in values {
            let mut p = point(vec![attr("container.id", v), attr("process.pid", 1i64)]);
            run(&st, &mut p);
            let want = re.replace_all(v, "$1").into_owned();
            assert_eq!(p.labels.get("container.id"), Some(s(&want)), "{v:?}");
            assert_eq!(p.labels.get("process.pid"), Some(Value::Int(1)));
        }
    }
    let mut p = point(vec![attr("container.id", long.as_str())]);
    run(&st, &mut p);
    assert_eq!(p.labels.get("container.id"), Some(s(&long[..12])));
    // Non-strings and missing keys are left alone.
    let mut p = point(vec![attr("container.id", 7i64)]);
    run(&st, &mut p);
    assert_eq!(p.labels.get("container.id"), Some(Value::Int(7)));
    let mut p = point(vec![attr("process.pid", 7i64)]);
    run(&st, &mut p);
    assert_eq!(p.labels.len(), 1);
    // A replacement read from the point: each point gets its own.
    let dynamic = statement(
        r#"replace_pattern(attributes["v"], "^x(.*)$", attributes["r"])"#,
        Context::Datapoint,
    )
    .unwrap();
    for r in ["a$1", "b$1", "a$1"] {
        let mut p = point(vec![attr("v", "xyz"), attr("r", r)]);
        run(&dynamic, &mut p);
        assert_eq!(p.labels.get("v"), Some(s(&format!("{}yz", &r[..1]))));
    }
    // A replacement function (a hash) is pure: memoized, and still each value's own hash.
    let hashed = statement(
        r#"replace_pattern(attributes["v"], "^secret=(.*)$", "$1", SHA256)"#,
        Context::Datapoint,
    )
    .unwrap();
    for v in ["secret=a", "secret=b", "secret=a", "public"] {
        let mut p = point(vec![attr("v", v)]);
        run(&hashed, &mut p);
        let want = match v.strip_prefix("secret=") {
            Some(x) => super::functions::converters::StrFn::Sha256.apply(x),
            None => v.to_string(),
        };
        assert_eq!(p.labels.get("v"), Some(s(&want)), "{v}");
    }
    // The SHA256 converter's memo: each value its own hash, repeated or not.
    let set_hash = statement(
        r#"set(attributes["h"], SHA256(attributes["v"]))"#,
        Context::Datapoint,
    )
    .unwrap();
    for v in ["a", "b", "a", "", "b"] {
        let mut p = point(vec![attr("v", v)]);
        run(&set_hash, &mut p);
        let want = super::functions::converters::StrFn::Sha256.apply(v);
        assert_eq!(p.labels.get("h"), Some(s(&want)), "{v}");
    }
}
