//! OTTL values: what paths, literals and converters evaluate to, and the comparison rules of
//! the OTTL language (`pkg/ottl/LANGUAGE.md`, "Comparison Rules").
//!
//! Values borrow from the telemetry they were read from (`Cow`), so a condition such as
//! `attributes["k"] == "v"` compares without copying; `into_owned` makes a value that outlives
//! the read (what editors store).

use std::{borrow::Cow, cmp::Ordering, fmt::Write as _};

/// One OTTL value. `Map` keeps insertion order (as `pcommon.Map` does).
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    List(Vec<Value<'a>>),
    Map(Vec<(Cow<'a, str>, Value<'a>)>),
}

/// The type names errors use (`expected string but got int`, as the Collector words it).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Double(_) => "double",
        Value::Str(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Map(_) => "map",
    }
}

impl<'a> Value<'a> {
    pub fn str(s: impl Into<Cow<'a, str>>) -> Self {
        Value::Str(s.into())
    }

    /// A value that borrows nothing.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Nil => Value::Nil,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Double(d) => Value::Double(d),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::List(l) => Value::List(l.into_iter().map(Value::into_owned).collect()),
            Value::Map(m) => Value::Map(
                m.into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                    .collect(),
            ),
        }
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value a map holds under `key` (`None`: not a map; `Some(Nil)`: no such key).
    pub fn index_key(self, key: &str) -> Option<Value<'a>> {
        match self {
            Value::Map(m) => Some(
                m.into_iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v)
                    .unwrap_or(Value::Nil),
            ),
            _ => None,
        }
    }

    /// The element of a list at `i` (`None`: not a list, or out of range).
    pub fn index_int(self, i: i64) -> Option<Value<'a>> {
        match self {
            Value::List(l) => usize::try_from(i).ok().and_then(|i| l.into_iter().nth(i)),
            _ => None,
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest decimal that reads back the same,
/// never in exponent form (what `String`, `Concat` and `IsMatch` print for doubles).
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    // Rust's Display is the shortest round-trip form without an exponent.
    format!("{d}")
}

/// A value as JSON text (maps and lists in `String`, `Concat`): Go's `json.Marshal` of the raw
/// value.
pub fn to_json(v: &Value, out: &mut String) {
    match v {
        Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Double(d) => out.push_str(&format_double(*d)),
        Value::Str(s) => out.push_str(&serde_json::Value::String(s.to_string()).to_string()),
        Value::Bytes(b) => {
            // json.Marshal writes []byte as base64.
            out.push('"');
            out.push_str(&base64(b));
            out.push('"');
        }
        Value::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                to_json(x, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            // json.Marshal sorts map keys.
            let mut entries: Vec<&(Cow<str>, Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.to_string()).to_string());
                out.push(':');
                to_json(x, out);
            }
            out.push('}');
        }
    }
}

/// Standard base64 with padding (Go's `base64.StdEncoding`).
pub fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[usize::from(x >> 4)] as char);
        s.push(D[usize::from(x & 15)] as char);
    }
    s
}

/// The "string-like" conversion OTTL's `StringLikeGetter` applies (`Concat`, `IsMatch`,
/// `String`): strings as they are, bools/ints/doubles via `strconv`, bytes as hex, maps and
/// lists as JSON; `None` for nil.
pub fn string_like(v: &Value) -> Option<String> {
    Some(match v {
        Value::Nil => return None,
        Value::Str(s) => s.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => format_double(*d),
        Value::Bytes(b) => hex(b),
        Value::List(_) | Value::Map(_) => {
            let mut s = String::new();
            to_json(v, &mut s);
            s
        }
    })
}

/// The comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// Compares two values by OTTL's rules: numbers of different types as doubles, strings and
/// bools (false < true) normally, bytes byte for byte, nil equal only to nil; lists and maps
/// only for (in)equality; anything else "not equal" (`!=` true, every other operator false).
pub fn compare(a: &Value, op: CmpOp, b: &Value) -> bool {
    let ord: Option<Ordering> = match (a, b) {
        (Value::Nil, Value::Nil) => return op == CmpOp::Eq,
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Double(y)) => (*x as f64).partial_cmp(y),
        (Value::Double(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Value::Double(x), Value::Double(y)) => x.partial_cmp(y),
        (Value::Str(x), Value::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Value::Bytes(x), Value::Bytes(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Value::List(_), Value::List(_)) | (Value::Map(_), Value::Map(_)) => {
            let eq = deep_eq(a, b);
            return match op {
                CmpOp::Eq => eq,
                CmpOp::Ne => !eq,
                _ => false,
            };
        }
        _ => None,
    };
    match ord {
        None => op == CmpOp::Ne,
        Some(o) => match op {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        },
    }
}

/// Structural equality; maps ignore key order (Go's `reflect.DeepEqual` on maps).
fn deep_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| deep_eq(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.iter().any(|(k2, v2)| k == k2 && deep_eq(v, v2)))
        }
        _ => compare(a, CmpOp::Eq, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_rules() {
        let s = |x: &'static str| Value::str(x);
        assert!(compare(&Value::Int(1), CmpOp::Lt, &Value::Double(1.5)));
        assert!(compare(&Value::Double(2.0), CmpOp::Eq, &Value::Int(2)));
        assert!(compare(&s("a"), CmpOp::Lt, &s("b")));
        assert!(compare(&Value::Bool(false), CmpOp::Lt, &Value::Bool(true)));
        assert!(compare(&Value::Nil, CmpOp::Eq, &Value::Nil));
        assert!(!compare(&Value::Nil, CmpOp::Ne, &Value::Nil));
        assert!(!compare(&Value::Nil, CmpOp::Le, &Value::Nil));
        // Different types: not equal.
        assert!(compare(&s("1"), CmpOp::Ne, &Value::Int(1)));
        assert!(!compare(&s("1"), CmpOp::Eq, &Value::Int(1)));
        assert!(!compare(&s("1"), CmpOp::Lt, &Value::Int(2)));
        assert!(compare(&Value::Nil, CmpOp::Ne, &s("")));
        let m1 = Value::Map(vec![
            ("a".into(), Value::Int(1)),
            ("b".into(), Value::Int(2)),
        ]);
        let m2 = Value::Map(vec![
            ("b".into(), Value::Int(2)),
            ("a".into(), Value::Int(1)),
        ]);
        assert!(compare(&m1, CmpOp::Eq, &m2));
        assert!(!compare(&m1, CmpOp::Lt, &m2));
    }

    #[test]
    fn conversions() {
        assert_eq!(format_double(2.7), "2.7");
        assert_eq!(format_double(55.0), "55");
        assert_eq!(base64(b"hello world"), "aGVsbG8gd29ybGQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(
            string_like(&Value::Bytes(Cow::Borrowed(&[123]))),
            Some("7b".into())
        );
        let l = Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
        assert_eq!(string_like(&l), Some("[1,2,3]".into()));
    }
}
