//! The grammar: statements that parse into the expected tree, and syntax errors that name the
//! column, what was expected there and what was found.

use crate::ottl::{
    ast::{BoolExpr, Expr, Literal},
    parser::{condition, statement, SyntaxError},
    value::CmpOp,
};

#[test]
fn statements_parse() {
    let s = statement(
        r#"set(attributes["process.executable.name"], SHA256(attributes["process.executable.name"])) where attributes["process.executable.name"] == "secretproc""#,
    )
    .unwrap();
    assert_eq!(s.editor.name, "set");
    assert_eq!(s.editor.args.len(), 2);
    assert!(matches!(
        s.condition,
        Some(BoolExpr::Compare(_, CmpOp::Eq, _))
    ));

    let s = statement(r#"keep_keys(attributes, ["a", "b"])"#).unwrap();
    assert!(matches!(&s.editor.args[1].value.expr, Expr::List(l) if l.len() == 2));
    let s = statement(r#"truncate_all(attributes, 10, truncation_marker = "…")"#).unwrap();
    assert_eq!(s.editor.args[2].name.as_deref(), Some("truncation_marker"));
    let s = statement(r#"set(attributes["m"], {"a": [1, -2.5, true, nil, 0x0aff]})"#).unwrap();
    let Expr::Map(m) = &s.editor.args[1].value.expr else {
        panic!()
    };
    let Expr::List(l) = &m[0].1.expr else {
        panic!()
    };
    assert_eq!(l[1].expr, Expr::Literal(Literal::Double(-2.5)));
    assert_eq!(l[4].expr, Expr::Literal(Literal::Bytes(vec![0x0a, 0xff])));
    let s = statement(r#"set(attributes["x"], Split(name, ",")[1]) where not (1 + 2 * 3 == 7 and name != "a") or IsMatch(name, "^x")"#).unwrap();
    assert!(matches!(s.condition, Some(BoolExpr::Or(ref v)) if v.len() == 2));
    let s = statement(r#"set(attributes["k"], "tab\there \"q\" \u00e9")"#).unwrap();
    assert_eq!(
        s.editor.args[1].value.expr,
        Expr::Literal(Literal::Str("tab\there \"q\" é".into()))
    );
    // `nothing` is a path, not `not hing`.
    assert!(condition("nothing == 1").is_ok());
    assert!(condition("severity_number >= SEVERITY_NUMBER_WARN").is_ok());
}

fn err(text: &str) -> SyntaxError {
    statement(text).expect_err(text)
}

#[test]
fn errors_name_the_column_and_what_was_expected() {
    let e = err(r#"set(attributes["a"], )"#);
    assert_eq!(e.column, 22, "{e}");
    assert!(e.expected.contains("a value"), "{e}");
    assert_eq!(e.found, "')'");

    let e = err(r#"set(attributes["a"], "x") when true"#);
    assert_eq!(e.column, 27, "{e}");
    assert_eq!(e.expected, "'where' or the end of the statement");
    assert_eq!(e.found, "'when'");

    let e = err(r#"set(attributes["a"], "x"#);
    assert_eq!(e.column, 24, "{e}");
    assert_eq!(e.expected, "'\"' to close the string");
    assert_eq!(e.found, "the end of the text");

    let e = err(r#"IsMatch(name, "x")"#);
    assert_eq!(e.column, 1, "{e}");
    assert!(e.expected.contains("editor name"), "{e}");

    let e = err(r#"set(name, "a") where name =="#);
    assert_eq!(e.column, 29, "{e}");
    assert!(e.expected.contains("a value"), "{e}");

    let e = err(r#"set(name, "\d")"#);
    assert_eq!(e.column, 12, "{e}");
    assert!(e.expected.contains("\\\\d"), "{e}");

    let e = err(r#"keep_keys(attributes, ["a" "b"])"#);
    assert_eq!(e.column, 28, "{e}");
    assert_eq!(e.expected, "',' or ']'");

    let e = err(r#"set(attributes["a"] "x")"#);
    assert_eq!(e.column, 21, "{e}");
    assert_eq!(e.expected, "',' or ')'");

    let e = condition(r#"name == "a" and"#).unwrap_err();
    assert_eq!(e.column, 16, "{e}");
    assert_eq!(e.expected, "a comparison, true, false or a converter");

    let e = err(r#"keep_keys(attributes, ["a", ])"#);
    assert_eq!(e.column, 29, "{e}");
    assert!(e.expected.contains("a value"), "{e}");
}
