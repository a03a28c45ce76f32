//! Editors: the documented examples and the Collector's test cases, as a table.

use super::{map_of, on_log, s};
use crate::ottl::Value;

fn three() -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("test", s("hello world")),
        ("test2", Value::Int(3)),
        ("test3", Value::Bool(true)),
    ]
}

fn patterns() -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("test", s("hello world")),
        ("test2", s("hello")),
        ("test3", s("goodbye world1 and world2")),
    ]
}

#[test]
fn editors_match_the_documented_examples() {
    type Attrs = Vec<(&'static str, Value<'static>)>;
    type Want = Result<Attrs, &'static str>;
    let input = "application passwd=sensitivedtata otherarg=notsensitive key1 key2";
    let one = |v: &str| -> Vec<(&'static str, Value<'static>)> { vec![("in", s(v))] };
    let cases: Vec<(&str, Attrs, Want)> = vec![
        // delete_key
        (
            r#"delete_key(attributes, "test")"#,
            three(),
            Ok(vec![("test2", Value::Int(3)), ("test3", Value::Bool(true))]),
        ),
        (r#"delete_key(attributes, "missing")"#, three(), Ok(three())),
        // delete_matching_keys / keep_matching_keys (func_delete_matching_keys_test.go)
        (
            r#"delete_matching_keys(attributes, "test.*")"#,
            three(),
            Ok(vec![]),
        ),
        (
            r#"delete_matching_keys(attributes, "\\d$")"#,
            three(),
            Ok(vec![("test", s("hello world"))]),
        ),
        (
            r#"delete_matching_keys(attributes, "not a matching pattern")"#,
            three(),
            Ok(three()),
        ),
        (
            r#"keep_matching_keys(attributes, "\\d$")"#,
            three(),
            Ok(vec![("test2", Value::Int(3)), ("test3", Value::Bool(true))]),
        ),
        (
            r#"keep_matching_keys(attributes, "test.*")"#,
            three(),
            Ok(three()),
        ),
        // keep_keys
        (
            r#"keep_keys(attributes, ["test"])"#,
            three(),
            Ok(vec![("test", s("hello world"))]),
        ),
        (
            r#"keep_keys(attributes, ["test", "test3", "nope"])"#,
            three(),
            Ok(vec![
                ("test", s("hello world")),
                ("test3", Value::Bool(true)),
            ]),
        ),
        (r#"keep_keys(attributes, [])"#, three(), Ok(vec![])),
        // limit (func_limit_test.go)
        (
            r#"limit(attributes, 1, [])"#,
            three(),
            Ok(vec![("test", s("hello world"))]),
        ),
        (r#"limit(attributes, 0, [])"#, three(), Ok(vec![])),
        (r#"limit(attributes, 100, [])"#, three(), Ok(three())),
        (r#"limit(attributes, 3, [])"#, three(), Ok(three())),
        (
            r#"limit(attributes, 2, ["test3"])"#,
            three(),
            Ok(vec![
                ("test", s("hello world")),
                ("test3", Value::Bool(true)),
            ]),
        ),
        (
            r#"limit(attributes, 2, ["test", "test3"])"#,
            three(),
            Ok(vec![
                ("test", s("hello world")),
                ("test3", Value::Bool(true)),
            ]),
        ),
        (
            r#"limit(attributes, 1, ["te"])"#,
            three(),
            Ok(vec![("test", s("hello world"))]),
        ),
        (
            r#"limit(attributes, 2, ["te", "test3"])"#,
            three(),
            Ok(vec![
                ("test", s("hello world")),
                ("test3", Value::Bool(true)),
            ]),
        ),
        (
            r#"limit(attributes, -1, [])"#,
            three(),
            Err("load: column 19: invalid limit -1"),
        ),
        (
            r#"limit(attributes, 1, ["test", "test"])"#,
            three(),
            Err("load: column 19: 2 priority keys"),
        ),
        // truncate_all (func_truncate_all_test.go, README)
        (
            r#"truncate_all(attributes, 1)"#,
            three(),
            Ok(vec![
                ("test", s("h")),
                ("test2", Value::Int(3)),
                ("test3", Value::Bool(true)),
            ]),
        ),
        (
            r#"truncate_all(attributes, 0)"#,
            three(),
            Ok(vec![
                ("test", s("")),
                ("test2", Value::Int(3)),
                ("test3", Value::Bool(true)),
            ]),
        ),
        (r#"truncate_all(attributes, 100)"#, three(), Ok(three())),
        (r#"truncate_all(attributes, 11)"#, three(), Ok(three())),
        (
            r#"truncate_all(attributes, 8, truncation_marker = "...")"#,
            three(),
            Ok(vec![
                ("test", s("hello...")),
                ("test2", Value::Int(3)),
                ("test3", Value::Bool(true)),
            ]),
        ),
        (
            r#"truncate_all(attributes, 4, false)"#,
            vec![("u", s("一二三"))],
            Ok(vec![("u", s("一"))]),
        ),
        (
            r#"truncate_all(attributes, -1)"#,
            three(),
            Err("load: column 26: invalid limit for truncate_all function, -1 cannot be negative"),
        ),
        // replace_all_patterns (func_replace_all_patterns_test.go, README)
        (
            r#"replace_all_patterns(attributes, "value", "hello", "hello {universe}")"#,
            patterns(),
            Ok(vec![
                ("test", s("hello {universe} world")),
                ("test2", s("hello {universe}")),
                ("test3", s("goodbye world1 and world2")),
            ]),
        ),
        (
            r#"replace_all_patterns(attributes, "value", "nothing", "nothing {matches}")"#,
            patterns(),
            Ok(patterns()),
        ),
        (
            r#"replace_all_patterns(attributes, "value", "world[^\\s]*(\\s?)", "**** ")"#,
            patterns(),
            Ok(vec![
                ("test", s("hello **** ")),
                ("test2", s("hello")),
                ("test3", s("goodbye **** and **** ")),
            ]),
        ),
        (
            r#"replace_all_patterns(attributes, "value", "/account/\\d{4}", "/account/{accountId}")"#,
            vec![("u", s("/account/1234/x"))],
            Ok(vec![("u", s("/account/{accountId}/x"))]),
        ),
        (
            r#"replace_all_patterns(attributes, "key", "^kube_([0-9A-Za-z]+_)", "k8s.$1.")"#,
            vec![("kube_pod_name", s("x"))],
            Ok(vec![("k8s.pod_.name", s("x"))]),
        ),
        (
            r#"replace_all_patterns(attributes, "key", "^kube_([0-9A-Za-z]+_)", "$1.", ToUpperCase, "k8s.%s")"#,
            vec![("kube_pod_name", s("x"))],
            Ok(vec![("k8s.POD_.name", s("x"))]),
        ),
        (
            r#"replace_all_patterns(attributes, "value", "*", "x")"#,
            patterns(),
            Err("load: column 43: replace_all_patterns's regex is not a valid regex"),
        ),
        // replace_pattern (func_replace_pattern_test.go; the Go tests' hash(x) function is
        // ToUpperCase here)
        (
            r#"replace_pattern(attributes["in"], "passwd\\=[^\\s]*(\\s?)", "passwd=*** ")"#,
            one(input),
            Ok(vec![(
                "in",
                s("application passwd=*** otherarg=notsensitive key1 key2"),
            )]),
        ),
        (
            r#"replace_pattern(attributes["in"], "nomatch\\=[^\\s]*(\\s?)", "shouldnotbeinoutput")"#,
            one(input),
            Ok(vec![("in", s(input))]),
        ),
        (
            r#"replace_pattern(attributes["in"], "key[^\\s]*(\\s?)", "**** ")"#,
            one(input),
            Ok(vec![(
                "in",
                s("application passwd=sensitivedtata otherarg=notsensitive **** **** "),
            )]),
        ),
        (
            r#"replace_pattern(attributes["in"], "(\\w+)=(\\w+)", "$1:$2")"#,
            one(input),
            Ok(vec![(
                "in",
                s("application passwd:sensitivedtata otherarg:notsensitive key1 key2"),
            )]),
        ),
        (
            r#"replace_pattern(attributes["in"], "passwd\\=[^\\s]*(\\s?)", "passwd=$$$$$$ ")"#,
            one(input),
            Ok(vec![(
                "in",
                s("application passwd=$$$ otherarg=notsensitive key1 key2"),
            )]),
        ),
        (
            r#"replace_pattern(attributes["in"], "passwd\\=[^\\s]*\\s?", "$1")"#,
            one(input),
            Ok(vec![(
                "in",
                s("application otherarg=notsensitive key1 key2"),
            )]),
        ),
        (
            r#"replace_pattern(attributes["in"], "passwd\\=([^\\s]*)\\s?", "$1", ToUpperCase, "passwd=%s")"#,
            one(input),
            Ok(vec![(
                "in",
                s("application passwd=SENSITIVEDTATAotherarg=notsensitive key1 key2"),
            )]),
        ),
        (
            r#"replace_pattern(attributes["in"], "passwd\\=[^\\s]*", "passwd", ToUpperCase)"#,
            one(input),
            Ok(vec![(
                "in",
                s("application PASSWD otherarg=notsensitive key1 key2"),
            )]),
        ),
        (
            r#"replace_pattern(attributes["in"], "\\d+", "$0", ToUpperCase, "<%s>")"#,
            one("user_id=42 parent_user_id=423"),
            Ok(vec![("in", s("user_id=<42> parent_user_id=<423>"))]),
        ),
        (
            r#"replace_pattern(attributes["in"], "regexp", "{replacement}")"#,
            vec![("in", Value::Int(1))],
            Ok(vec![("in", Value::Int(1))]),
        ),
        (
            r#"replace_pattern(attributes["in"], "regexp", "x")"#,
            vec![],
            Ok(vec![]),
        ),
        (
            r#"replace_pattern(attributes["in"], "x", "y", SHA256, "a%sb%s")"#,
            vec![],
            Err("load: column 53: replacementFormat must contain exactly one %s"),
        ),
        // merge_maps (func_merge_maps_test.go)
        (
            r#"merge_maps(attributes, {"attr2": "value2"}, "upsert")"#,
            vec![("attr1", s("value1"))],
            Ok(vec![("attr1", s("value1")), ("attr2", s("value2"))]),
        ),
        (
            r#"merge_maps(attributes, {"attr1": "value3", "attr2": "value2"}, "upsert")"#,
            vec![("attr1", s("value1"))],
            Ok(vec![("attr1", s("value3")), ("attr2", s("value2"))]),
        ),
        (
            r#"merge_maps(attributes, {"attr2": "value2"}, "insert")"#,
            vec![("attr1", s("value1"))],
            Ok(vec![("attr1", s("value1")), ("attr2", s("value2"))]),
        ),
        (
            r#"merge_maps(attributes, {"attr1": "value3", "attr2": "value2"}, "insert")"#,
            vec![("attr1", s("value1"))],
            Ok(vec![("attr1", s("value1")), ("attr2", s("value2"))]),
        ),
        (
            r#"merge_maps(attributes, {"attr2": "value2"}, "update")"#,
            vec![("attr1", s("value1"))],
            Ok(vec![("attr1", s("value1"))]),
        ),
        (
            r#"merge_maps(attributes, {"attr1": "value3"}, "update")"#,
            vec![("attr1", s("value1"))],
            Ok(vec![("attr1", s("value3"))]),
        ),
        (
            r#"merge_maps(attributes, attributes["attr1"], "insert")"#,
            vec![("attr1", s("value1"))],
            Err("run: merge_maps: expected a map source but got string"),
        ),
        (
            r#"merge_maps(attributes, {}, "replace")"#,
            vec![],
            Err("load: column 28: invalid strategy"),
        ),
        // set (README)
        (
            r#"set(attributes["http.path"], "/foo")"#,
            vec![],
            Ok(vec![("http.path", s("/foo"))]),
        ),
        (
            r#"set(attributes["x"], nil)"#,
            vec![("x", s("a"))],
            Ok(vec![("x", s("a"))]),
        ),
        (
            r#"set(attributes["x"], attributes["missing"])"#,
            vec![("x", s("a"))],
            Ok(vec![("x", s("a"))]),
        ),
        (
            r#"set(attributes["x"], SHA256(attributes["x"])) where attributes["x"] == "a""#,
            vec![("x", s("a"))],
            Ok(vec![(
                "x",
                s("ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"),
            )]),
        ),
        (
            r#"set(attributes["x"], SHA256(attributes["x"])) where attributes["x"] == "b""#,
            vec![("x", s("a"))],
            Ok(vec![("x", s("a"))]),
        ),
        (
            r#"set(attributes, {"only": 1})"#,
            three(),
            Ok(vec![("only", Value::Int(1))]),
        ),
        (
            r#"set(attributes["n"], {"a": [1, 2]})"#,
            vec![],
            Ok(vec![(
                "n",
                Value::Map(vec![(
                    "a".into(),
                    Value::List(vec![Value::Int(1), Value::Int(2)]),
                )]),
            )]),
        ),
    ];
    let mut failures = Vec::new();
    for (stmt, input, want) in cases {
        let got = on_log(stmt, &input).map(|a| map_of(&a));
        let want_map = want.as_ref().map(|w| {
            w.iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<Vec<_>>()
        });
        let ok = match (&got, &want_map, &want) {
            (Ok(g), Ok(w), _) => g == w,
            (Err(g), _, Err(w)) => g.starts_with(w),
            _ => false,
        };
        if !ok {
            failures.push(format!("{stmt}\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
