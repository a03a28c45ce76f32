//! Evaluation of checked statements and conditions on one item ([`Tcx`]).
//!
//! Reads borrow from the telemetry (a condition on `attributes["k"]` copies nothing); an editor
//! evaluates its arguments to owned values before it changes the item.

use std::borrow::Cow;

use super::{
    ast::MathOp,
    compile::{CKey, CPath, Cond, Condition, Getter, Statement},
    error::EvalError,
    paths::Tcx,
    value::{compare, type_name, Value},
};

impl Getter {
    pub fn eval<'t>(&'t self, tcx: &'t Tcx) -> Result<Value<'t>, EvalError> {
        match self {
            // Literals borrow from the statement: no copy per item.
            Getter::Lit(v) => Ok(reborrow(v)),
            Getter::Path(p) => p.eval(tcx),
            Getter::Conv(c, keys) => {
                let v = c.eval(tcx)?;
                index(v, keys, tcx)
            }
            Getter::List(items) => Ok(Value::List(
                items
                    .iter()
                    .map(|g| g.eval(tcx))
                    .collect::<Result<_, _>>()?,
            )),
            Getter::Map(entries) => Ok(Value::Map(
                entries
                    .iter()
                    .map(|(k, g)| Ok((Cow::Owned(k.clone()), g.eval(tcx)?)))
                    .collect::<Result<_, EvalError>>()?,
            )),
            Getter::Math(a, op, b) => math(a.eval(tcx)?, *op, b.eval(tcx)?),
        }
    }

    /// A string literal without a copy (the common `== "x"` case).
    pub fn lit_str(&self) -> Option<&str> {
        match self {
            Getter::Lit(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// A value borrowing from `v` (strings and bytes are not copied).
fn reborrow<'a>(v: &'a Value<'static>) -> Value<'a> {
    match v {
        Value::Str(s) => Value::Str(Cow::Borrowed(s)),
        Value::Bytes(b) => Value::Bytes(Cow::Borrowed(b)),
        Value::List(l) => Value::List(l.iter().map(reborrow).collect()),
        Value::Map(m) => Value::Map(
            m.iter()
                .map(|(k, x)| (Cow::Borrowed(k.as_ref()), reborrow(x)))
                .collect(),
        ),
        Value::Nil => Value::Nil,
        Value::Bool(b) => Value::Bool(*b),
        Value::Int(i) => Value::Int(*i),
        Value::Double(d) => Value::Double(*d),
    }
}

impl CPath {
    pub fn eval<'t>(&'t self, tcx: &'t Tcx) -> Result<Value<'t>, EvalError> {
        // attributes["k"]: one lookup, no map built.
        if self.field.is_map() {
            if let Some(CKey::Str(k)) = self.keys.first() {
                let v = tcx.get_attr(self.field, k);
                return index(v, &self.keys[1..], tcx);
            }
        }
        index(tcx.get(self.field), &self.keys, tcx)
    }

    /// The string key of a one-key path (`attributes["k"]`), evaluated.
    pub fn key(&self, tcx: &Tcx) -> Result<Option<Cow<'_, str>>, EvalError> {
        match self.keys.first() {
            None => Ok(None),
            Some(CKey::Str(s)) => Ok(Some(Cow::Borrowed(s))),
            Some(CKey::Int(_)) => Err(EvalError::new("maps are indexed by string keys")),
            Some(CKey::Dyn(g)) => match g.eval(tcx)? {
                Value::Str(s) => Ok(Some(Cow::Owned(s.into_owned()))),
                other => Err(EvalError::new(format!(
                    "a map key must be a string, got {}",
                    type_name(&other)
                ))),
            },
        }
    }
}

fn index<'t>(mut v: Value<'t>, keys: &'t [CKey], tcx: &'t Tcx) -> Result<Value<'t>, EvalError> {
    for k in keys {
        if v.is_nil() {
            return Ok(Value::Nil);
        }
        let what = type_name(&v);
        v = match k {
            CKey::Str(s) => v.index_key(s),
            CKey::Int(i) => v.index_int(*i),
            CKey::Dyn(g) => match g.eval(tcx)? {
                Value::Str(s) => v.index_key(&s),
                Value::Int(i) => v.index_int(i),
                other => {
                    return Err(EvalError::new(format!(
                        "a key must be a string or an int, got {}",
                        type_name(&other)
                    )))
                }
            },
        }
        .ok_or_else(|| EvalError::new(format!("cannot index {what} with that key")))?;
    }
    Ok(v)
}

fn math(a: Value, op: MathOp, b: Value) -> Result<Value<'static>, EvalError> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(Value::Int(match op {
            MathOp::Add => x.wrapping_add(y),
            MathOp::Sub => x.wrapping_sub(y),
            MathOp::Mul => x.wrapping_mul(y),
            MathOp::Div => {
                if y == 0 {
                    return Err(EvalError::new("attempted to divide by 0"));
                }
                x.wrapping_div(y)
            }
        })),
        (Value::Double(x), Value::Double(y)) => Ok(Value::Double(match op {
            MathOp::Add => x + y,
            MathOp::Sub => x - y,
            MathOp::Mul => x * y,
            MathOp::Div => {
                if y == 0.0 {
                    return Err(EvalError::new("attempted to divide by 0"));
                }
                x / y
            }
        })),
        (a, b) => Err(EvalError::new(format!(
            "math on {} and {}: both must be ints or both doubles",
            type_name(&a),
            type_name(&b)
        ))),
    }
}

impl Cond {
    pub fn eval(&self, tcx: &Tcx) -> Result<bool, EvalError> {
        match self {
            Cond::Or(v) => {
                for c in v {
                    if c.eval(tcx)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Cond::And(v) => {
                for c in v {
                    if !c.eval(tcx)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Cond::Not(c) => Ok(!c.eval(tcx)?),
            Cond::Cmp(a, op, b) => {
                let left = a.eval(tcx)?;
                // A string literal on the right is compared in place.
                if let Some(s) = b.lit_str() {
                    return Ok(compare(&left, *op, &Value::Str(Cow::Borrowed(s))));
                }
                let right = b.eval(tcx)?;
                Ok(compare(&left, *op, &right))
            }
            Cond::Value(g) => match g.eval(tcx)? {
                Value::Bool(b) => Ok(b),
                other => Err(EvalError::new(format!(
                    "a condition must be a bool, got {}",
                    type_name(&other)
                ))),
            },
        }
    }
}

impl Statement {
    /// Runs the statement on one item; `Ok(true)` when its condition held and the editor ran.
    pub fn execute(&self, tcx: &mut Tcx) -> Result<bool, EvalError> {
        if let Some(c) = &self.condition {
            if !c.eval(tcx)? {
                return Ok(false);
            }
        }
        self.editor.run(tcx)?;
        Ok(true)
    }
}

impl Condition {
    pub fn eval(&self, tcx: &Tcx) -> Result<bool, EvalError> {
        self.cond.eval(tcx)
    }
}
