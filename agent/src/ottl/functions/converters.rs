//! Converters (`pkg/ottl/ottlfuncs/README.md#converters`): pure functions from values to a
//! value. Supported: `SHA256`, `SHA1`, `Concat`, `Split`, `ToLowerCase`, `ToUpperCase`,
//! `Substring`, `Int`, `Double`, `String`, `IsMatch`, `Len`, `ConvertCase`.
//!
//! Semantics are the Collector's (its documentation and, where it is silent, its unit tests):
//! `SHA256`/`SHA1` take a string (an error otherwise) and return lowercase hex; `Int("2.0")` is
//! nil; `Double("x")` is an error; `Concat` writes nil as `<nil>`; `Split` is Go's
//! `strings.Split`; `Len` counts bytes of a string; `ConvertCase` snake/camel follow the
//! `strcase` rules the Collector uses. Differences, because agent strings are always UTF-8:
//! `Substring` without `utf8_safe` fails instead of cutting a character in half.

use std::borrow::Cow;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::ottl::{
    ast::{Call, Expr},
    compile::{bind, Cx, Getter, Ty},
    error::{EvalError, OttlError},
    paths::Tcx,
    value::{hex, string_like, type_name, Value},
};

/// A converter usable as a function argument (`replace_pattern(..., SHA256, "%s")`): one string
/// in, one string out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrFn {
    Sha256,
    Sha1,
    ToLowerCase,
    ToUpperCase,
}

impl StrFn {
    pub fn by_name(name: &str) -> Option<StrFn> {
        Some(match name {
            "SHA256" => StrFn::Sha256,
            "SHA1" => StrFn::Sha1,
            "ToLowerCase" => StrFn::ToLowerCase,
            "ToUpperCase" => StrFn::ToUpperCase,
            _ => return None,
        })
    }

    pub fn apply(self, s: &str) -> String {
        match self {
            StrFn::Sha256 => hex(&Sha256::digest(s.as_bytes())),
            StrFn::Sha1 => hex(&Sha1::digest(s.as_bytes())),
            StrFn::ToLowerCase => s.to_lowercase(),
            StrFn::ToUpperCase => s.to_uppercase(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Lower,
    Upper,
    Snake,
    Camel,
}

#[derive(Debug)]
pub enum Converter {
    /// A string function; the memo holds the hashes (`SHA256`, `SHA1`: a few hundred ns each)
    /// per input value.
    Str(StrFn, Getter, crate::ottl::memo::Memo),
    Concat(Vec<Getter>, String),
    Split(Getter, Getter),
    Substring(Getter, Getter, Getter, bool),
    Int(Getter),
    Double(Getter),
    String(Getter),
    IsMatch(Getter, regex::Regex),
    Len(Getter),
    ConvertCase(Getter, Case),
}

pub const NAMES: &[&str] = &[
    "SHA256",
    "SHA1",
    "Concat",
    "Split",
    "ToLowerCase",
    "ToUpperCase",
    "Substring",
    "Int",
    "Double",
    "String",
    "IsMatch",
    "Len",
    "ConvertCase",
];

impl Converter {
    pub fn return_type(name: &str) -> Ty {
        match name {
            "SHA256" | "SHA1" | "Concat" | "ToLowerCase" | "ToUpperCase" | "Substring"
            | "String" | "ConvertCase" => Ty::Str,
            "Split" => Ty::List,
            "Int" | "Len" => Ty::Int,
            "Double" => Ty::Double,
            "IsMatch" => Ty::Bool,
            _ => Ty::Any,
        }
    }

    pub fn compile(cx: &Cx, call: &Call) -> Result<Converter, OttlError> {
        let name = call.name.as_str();
        let one = |p: &str| -> Result<&crate::ottl::ast::Node, OttlError> {
            Ok(bind(cx, call, &[p], 1)?[0].expect("required"))
        };
        Ok(match name {
            "SHA256" | "SHA1" | "ToLowerCase" | "ToUpperCase" => {
                let f = StrFn::by_name(name).expect("listed");
                Converter::Str(
                    f,
                    cx.string_getter(one("target")?, name)?,
                    Default::default(),
                )
            }
            "Concat" => {
                let a = bind(cx, call, &["vals", "delimiter"], 2)?;
                let list = a[0].expect("required");
                let Expr::List(items) = &list.expr else {
                    return Err(cx.err(
                        list.at,
                        "Concat's first argument must be a list, e.g. [a, b]",
                    ));
                };
                let vals = items
                    .iter()
                    .map(|i| cx.getter(i))
                    .collect::<Result<_, _>>()?;
                Converter::Concat(
                    vals,
                    cx.str_lit(a[1].expect("required"), "Concat's delimiter")?,
                )
            }
            "Split" => {
                let a = bind(cx, call, &["target", "delimiter"], 2)?;
                Converter::Split(
                    cx.string_getter(a[0].expect("required"), "Split")?,
                    cx.string_getter(a[1].expect("required"), "Split's delimiter")?,
                )
            }
            "Substring" => {
                let a = bind(cx, call, &["target", "start", "length", "utf8_safe"], 3)?;
                Converter::Substring(
                    cx.string_getter(a[0].expect("required"), "Substring")?,
                    cx.int_getter(a[1].expect("required"), "Substring's start")?,
                    cx.int_getter(a[2].expect("required"), "Substring's length")?,
                    a[3].map(|n| cx.bool_lit(n, "utf8_safe"))
                        .transpose()?
                        .unwrap_or(false),
                )
            }
            "Int" => Converter::Int(cx.getter(one("target")?)?),
            "Double" => Converter::Double(cx.getter(one("target")?)?),
            "String" => Converter::String(cx.getter(one("target")?)?),
            "Len" => Converter::Len(cx.getter(one("target")?)?),
            "IsMatch" => {
                let a = bind(cx, call, &["target", "pattern"], 2)?;
                Converter::IsMatch(
                    cx.getter(a[0].expect("required"))?,
                    cx.regex_lit(a[1].expect("required"), "IsMatch's pattern")?,
                )
            }
            "ConvertCase" => {
                let a = bind(cx, call, &["target", "to_case"], 2)?;
                let n = a[1].expect("required");
                let case = match cx.str_lit(n, "ConvertCase's case")?.as_str() {
                    "lower" => Case::Lower,
                    "upper" => Case::Upper,
                    "snake" => Case::Snake,
                    "camel" => Case::Camel,
                    other => {
                        return Err(cx.err(
                            n.at,
                            format!("invalid case {other:?}: use lower, upper, snake or camel"),
                        ))
                    }
                };
                Converter::ConvertCase(cx.getter(a[0].expect("required"))?, case)
            }
            _ => {
                let hint = if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    " (editors cannot be nested in a value)".to_string()
                } else {
                    String::new()
                };
                return Err(cx.err(
                    call.at,
                    format!(
                        "unknown converter {name}{hint}; converters: {}",
                        NAMES.join(", ")
                    ),
                ));
            }
        })
    }

    pub fn eval<'t>(&'t self, tcx: &'t Tcx) -> Result<Value<'t>, EvalError> {
        Ok(match self {
            Converter::Str(f @ (StrFn::Sha256 | StrFn::Sha1), g, memo) => {
                let v = g.eval(tcx)?;
                let h = memo
                    .get(expect_str(&v)?, |s| Some(f.apply(s)))
                    .expect("a hash is always computed");
                Value::Str(Cow::Owned(h.to_string()))
            }
            Converter::Str(f, g, _) => {
                let v = g.eval(tcx)?;
                Value::Str(Cow::Owned(f.apply(expect_str(&v)?)))
            }
            Converter::Concat(vals, delim) => {
                let mut out = String::new();
                for (i, g) in vals.iter().enumerate() {
                    if i > 0 {
                        out.push_str(delim);
                    }
                    let v = g.eval(tcx)?;
                    out.push_str(&string_like(&v).unwrap_or_else(|| "<nil>".into()));
                }
                Value::Str(Cow::Owned(out))
            }
            Converter::Split(t, d) => {
                let (t, d) = (t.eval(tcx)?, d.eval(tcx)?);
                let (t, d) = (expect_str(&t)?, expect_str(&d)?);
                let parts: Vec<Value> = if d.is_empty() {
                    t.chars()
                        .map(|c| Value::Str(Cow::Owned(c.to_string())))
                        .collect()
                } else {
                    t.split(d)
                        .map(|p| Value::Str(Cow::Owned(p.to_string())))
                        .collect()
                };
                Value::List(parts)
            }
            Converter::Substring(t, start, len, utf8_safe) => {
                let v = t.eval(tcx)?;
                let s = expect_str(&v)?;
                let (Value::Int(start), Value::Int(len)) = (start.eval(tcx)?, len.eval(tcx)?)
                else {
                    return Err(EvalError::new("Substring's start and length must be ints"));
                };
                Value::Str(Cow::Owned(
                    substring(s, start, len, *utf8_safe)?.to_string(),
                ))
            }
            Converter::Int(g) => match g.eval(tcx)? {
                Value::Nil => Value::Nil,
                Value::Int(i) => Value::Int(i),
                Value::Double(d) => Value::Int(d.trunc() as i64),
                Value::Bool(b) => Value::Int(i64::from(b)),
                Value::Str(s) => s.parse::<i64>().map(Value::Int).unwrap_or(Value::Nil),
                other => {
                    return Err(EvalError::new(format!(
                        "unsupported type: {}",
                        type_name(&other)
                    )))
                }
            },
            Converter::Double(g) => match g.eval(tcx)? {
                Value::Nil => Value::Nil,
                Value::Int(i) => Value::Double(i as f64),
                Value::Double(d) => Value::Double(d),
                Value::Bool(b) => Value::Double(if b { 1.0 } else { 0.0 }),
                Value::Str(s) => Value::Double(
                    s.parse::<f64>()
                        .map_err(|_| EvalError::new(format!("cannot parse {s:?} as a double")))?,
                ),
                other => {
                    return Err(EvalError::new(format!(
                        "unsupported type: {}",
                        type_name(&other)
                    )))
                }
            },
            Converter::String(g) => match string_like(&g.eval(tcx)?) {
                None => Value::Nil,
                Some(s) => Value::Str(Cow::Owned(s)),
            },
            Converter::IsMatch(g, re) => match g.eval(tcx)? {
                Value::Nil => Value::Bool(false),
                Value::Str(s) => Value::Bool(re.is_match(&s)),
                other => Value::Bool(re.is_match(&string_like(&other).unwrap_or_default())),
            },
            Converter::Len(g) => match g.eval(tcx)? {
                Value::Str(s) => Value::Int(s.len() as i64),
                Value::Bytes(b) => Value::Int(b.len() as i64),
                Value::List(l) => Value::Int(l.len() as i64),
                Value::Map(m) => Value::Int(m.len() as i64),
                other => {
                    return Err(EvalError::new(format!(
                        "Len: expected a string, list or map, got {}",
                        type_name(&other)
                    )))
                }
            },
            Converter::ConvertCase(g, case) => match g.eval(tcx)? {
                Value::Nil => Value::Nil,
                Value::Str(s) => Value::Str(Cow::Owned(convert_case(&s, *case))),
                other => {
                    return Err(EvalError::new(format!(
                        "ConvertCase: expected a string, got {}",
                        type_name(&other)
                    )))
                }
            },
        })
    }
}

/// `StringGetter`: a string, else the Collector's error (`expected string but got int`).
pub fn expect_str<'a>(v: &'a Value) -> Result<&'a str, EvalError> {
    match v {
        Value::Str(s) => Ok(s),
        other => Err(EvalError::new(format!(
            "expected string but got {}",
            type_name(other)
        ))),
    }
}

/// `Substring`: byte offsets; `utf8_safe` moves a start inside a character forward and an end
/// inside one back (so the result may be shorter than `length`).
pub fn substring(s: &str, start: i64, len: i64, utf8_safe: bool) -> Result<&str, EvalError> {
    if start < 0 || start as u64 >= s.len() as u64 {
        return Err(EvalError::new(format!(
            "invalid start for Substring: {start} (the string has {} bytes)",
            s.len()
        )));
    }
    if len <= 0 {
        return Err(EvalError::new(format!(
            "invalid length for Substring: {len}"
        )));
    }
    let end = (start as u64)
        .checked_add(len as u64)
        .filter(|e| *e <= s.len() as u64);
    let Some(end) = end else {
        return Err(EvalError::new(format!(
            "invalid range for Substring: start {start} + length {len} exceeds {} bytes",
            s.len()
        )));
    };
    let (mut a, mut b) = (start as usize, end as usize);
    if utf8_safe {
        while !s.is_char_boundary(a) {
            a += 1;
        }
        while !s.is_char_boundary(b) {
            b -= 1;
        }
        if b < a {
            b = a;
        }
    } else if !s.is_char_boundary(a) || !s.is_char_boundary(b) {
        return Err(EvalError::new(
            "Substring would cut a UTF-8 character in half; pass utf8_safe = true",
        ));
    }
    Ok(&s[a..b])
}

/// The `strcase` rules (`ToSnake`, `ToCamel`) the Collector's `ConvertCase` uses.
pub fn convert_case(s: &str, case: Case) -> String {
    match case {
        Case::Lower => s.to_lowercase(),
        Case::Upper => s.to_uppercase(),
        Case::Snake => to_snake(s),
        Case::Camel => to_camel(s),
    }
}

fn to_snake(s: &str) -> String {
    let s = s.trim().as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(s.len() + 2);
    let (cap, low, num) = (
        |c: u8| c.is_ascii_uppercase(),
        |c: u8| c.is_ascii_lowercase(),
        |c: u8| c.is_ascii_digit(),
    );
    for i in 0..s.len() {
        let v0 = s[i];
        let (v_cap, v_low) = (cap(v0), low(v0));
        let v = v0.to_ascii_lowercase();
        if i + 1 < s.len() {
            let next = s[i + 1];
            let v_num = num(v);
            let (n_cap, n_low, n_num) = (cap(next), low(next), num(next));
            if (v_cap && (n_low || n_num))
                || (v_low && (n_cap || n_num))
                || (v_num && (n_cap || n_low))
            {
                if v_cap && n_low && i > 0 && cap(s[i - 1]) {
                    out.push(b'_');
                }
                out.push(v);
                if v_low || v_num || n_num {
                    out.push(b'_');
                }
                continue;
            }
        }
        if matches!(v, b' ' | b'_' | b'-' | b'.') {
            out.push(b'_');
        } else {
            out.push(v);
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

fn to_camel(s: &str) -> String {
    let s = s.trim();
    let mut out = String::with_capacity(s.len());
    let mut cap_next = true;
    let mut prev_cap = false;
    for (i, c) in s.chars().enumerate() {
        let (is_cap, is_low) = (c.is_ascii_uppercase(), c.is_ascii_lowercase());
        let mut v = c;
        if cap_next {
            v = v.to_ascii_uppercase();
        } else if i == 0 || (prev_cap && is_cap) {
            v = v.to_ascii_lowercase();
        }
        prev_cap = is_cap;
        if is_cap || is_low {
            out.push(v);
            cap_next = false;
        } else if c.is_ascii_digit() {
            out.push(v);
            cap_next = true;
        } else {
            cap_next = matches!(c, '_' | ' ' | '-' | '.');
        }
    }
    out
}
