//! The maps editors work on, behind one trait: a metric point's typed labels
//! (`metrics::model::Labels`: scalar values) and OTLP `KeyValue` lists (resource, scope and log
//! attributes, a log body that is a map), plus conversions between OTTL values and OTLP
//! `AnyValue`s.
//!
//! Invariant: keys stay unique (an insert of an existing key replaces its value in place, so the
//! order of the other keys is kept).

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};

use super::{error::EvalError, value::Value};
use crate::metrics::model::{AttrValue, Key, Labels};

/// A string-keyed map an editor can change.
pub trait AttrMap {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, key: &str) -> Option<Value<'_>>;
    /// Inserts or replaces (`nil` removes: a map holds no nil).
    fn put(&mut self, key: &str, v: Value<'static>) -> Result<(), EvalError>;
    /// Inserts or replaces a string value the caller shares (a memoized result): metric labels
    /// keep the reference, other maps copy it.
    fn put_shared(&mut self, key: &str, v: std::sync::Arc<str>) -> Result<(), EvalError> {
        self.put(key, Value::Str(Cow::Owned(v.to_string())))
    }
    fn remove(&mut self, key: &str);
    /// Keeps the entries for which `keep(key)` is true, in order.
    fn retain_keys(&mut self, keep: &mut dyn FnMut(&str) -> bool);
    /// Every key, in order.
    fn keys(&self) -> Vec<String>;
    /// Renames `from` to `to` (replacing an existing `to`).
    fn rename(&mut self, from: &str, to: String);
    /// Applies `f` to every string value; `f` returns the new string when it changes it.
    fn map_strings(&mut self, f: &mut dyn FnMut(&str) -> Option<String>);
    /// The whole map as a value.
    fn to_value(&self) -> Value<'_>;
    /// Replaces the whole map with `m` (a `Value::Map`).
    fn replace(&mut self, m: Value<'static>) -> Result<(), EvalError> {
        let Value::Map(entries) = m else {
            return Err(EvalError::new(format!(
                "expected a map but got {}",
                super::value::type_name(&m)
            )));
        };
        self.retain_keys(&mut |_| false);
        for (k, v) in entries {
            self.put(&k, v)?;
        }
        Ok(())
    }
}

fn attr_to_value(v: &AttrValue) -> Value<'_> {
    match v {
        AttrValue::Str(s) => Value::Str(Cow::Borrowed(s)),
        AttrValue::Int(i) => Value::Int(*i),
        AttrValue::Double(d) => Value::Double(*d),
        AttrValue::Bool(b) => Value::Bool(*b),
    }
}

/// A value a metric attribute can hold (`None` for nil).
fn value_to_attr(v: Value<'_>) -> Result<Option<AttrValue>, EvalError> {
    Ok(Some(match v {
        Value::Nil => return Ok(None),
        Value::Str(s) => AttrValue::Str(s.as_ref().into()),
        Value::Int(i) => AttrValue::Int(i),
        Value::Double(d) => AttrValue::Double(d),
        Value::Bool(b) => AttrValue::Bool(b),
        other => {
            return Err(EvalError::new(format!(
                "metric attributes hold strings, ints, doubles and bools, not a {}",
                super::value::type_name(&other)
            )))
        }
    }))
}

impl AttrMap for Labels {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn get(&self, key: &str) -> Option<Value<'_>> {
        self.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| attr_to_value(v))
    }

    fn put(&mut self, key: &str, v: Value<'static>) -> Result<(), EvalError> {
        match value_to_attr(v)? {
            None => AttrMap::remove(self, key),
            Some(a) => match self.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = a,
                None => self.push((Key::Owned(key.to_string()), a)),
            },
        }
        Ok(())
    }

    fn put_shared(&mut self, key: &str, v: std::sync::Arc<str>) -> Result<(), EvalError> {
        match self.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = AttrValue::Str(v),
            None => self.push((Key::Owned(key.to_string()), AttrValue::Str(v))),
        }
        Ok(())
    }

    fn remove(&mut self, key: &str) {
        self.retain(|(k, _)| k != key);
    }

    fn retain_keys(&mut self, keep: &mut dyn FnMut(&str) -> bool) {
        self.retain(|(k, _)| keep(k));
    }

    fn keys(&self) -> Vec<String> {
        self.iter().map(|(k, _)| k.to_string()).collect()
    }

    fn rename(&mut self, from: &str, to: String) {
        if from == to {
            return;
        }
        if let Some(i) = self.iter().position(|(k, _)| k == from) {
            let (_, v) = self.remove(i);
            AttrMap::remove(self, &to);
            self.insert(i.min(Vec::len(self)), (Key::Owned(to), v));
        }
    }

    fn map_strings(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        for (_, v) in self.iter_mut() {
            if let AttrValue::Str(s) = v {
                if let Some(n) = f(s) {
                    *s = n.into();
                }
            }
        }
    }

    fn to_value(&self) -> Value<'_> {
        Value::Map(
            self.iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_ref()), attr_to_value(v)))
                .collect(),
        )
    }
}

/// An OTLP `AnyValue` as an OTTL value (an empty `AnyValue` is nil).
pub fn any_to_value(v: &AnyValue) -> Value<'_> {
    match &v.value {
        None => Value::Nil,
        Some(any_value::Value::StringValue(s)) => Value::Str(Cow::Borrowed(s)),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::Int(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::Double(*d),
        Some(any_value::Value::BytesValue(b)) => Value::Bytes(Cow::Borrowed(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::List(a.values.iter().map(any_to_value).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Map(
            kv.values
                .iter()
                .map(|e| {
                    (
                        Cow::Borrowed(e.key.as_str()),
                        e.value.as_ref().map(any_to_value).unwrap_or(Value::Nil),
                    )
                })
                .collect(),
        ),
        #[allow(unreachable_patterns)]
        Some(_) => Value::Nil,
    }
}

/// An OTTL value as an OTLP `AnyValue` (nil is the empty `AnyValue`).
pub fn value_to_any(v: Value<'static>) -> AnyValue {
    let inner = match v {
        Value::Nil => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(b)),
        Value::Int(i) => Some(any_value::Value::IntValue(i)),
        Value::Double(d) => Some(any_value::Value::DoubleValue(d)),
        Value::Str(s) => Some(any_value::Value::StringValue(s.into_owned())),
        Value::Bytes(b) => Some(any_value::Value::BytesValue(b.into_owned())),
        Value::List(l) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: l.into_iter().map(value_to_any).collect(),
        })),
        Value::Map(m) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: m
                .into_iter()
                .map(|(k, v)| KeyValue {
                    key: k.into_owned(),
                    value: Some(value_to_any(v)),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    AnyValue { value: inner }
}

impl AttrMap for Vec<KeyValue> {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn get(&self, key: &str) -> Option<Value<'_>> {
        self.iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.as_ref().map(any_to_value).unwrap_or(Value::Nil))
    }

    fn put(&mut self, key: &str, v: Value<'static>) -> Result<(), EvalError> {
        if v.is_nil() {
            AttrMap::remove(self, key);
            return Ok(());
        }
        let any = value_to_any(v);
        match self.iter_mut().find(|kv| kv.key == key) {
            Some(kv) => kv.value = Some(any),
            None => self.push(KeyValue {
                key: key.to_string(),
                value: Some(any),
                ..Default::default()
            }),
        }
        Ok(())
    }

    fn remove(&mut self, key: &str) {
        self.retain(|kv| kv.key != key);
    }

    fn retain_keys(&mut self, keep: &mut dyn FnMut(&str) -> bool) {
        self.retain(|kv| keep(&kv.key));
    }

    fn keys(&self) -> Vec<String> {
        self.iter().map(|kv| kv.key.clone()).collect()
    }

    fn rename(&mut self, from: &str, to: String) {
        if from == to {
            return;
        }
        if let Some(i) = self.iter().position(|kv| kv.key == from) {
            let mut kv = self.remove(i);
            AttrMap::remove(self, &to);
            kv.key = to;
            self.insert(i.min(Vec::len(self)), kv);
        }
    }

    fn map_strings(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        for kv in self.iter_mut() {
            if let Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) = &mut kv.value
            {
                if let Some(n) = f(s) {
                    *s = n;
                }
            }
        }
    }

    fn to_value(&self) -> Value<'_> {
        Value::Map(
            self.iter()
                .map(|kv| {
                    (
                        Cow::Borrowed(kv.key.as_str()),
                        kv.value.as_ref().map(any_to_value).unwrap_or(Value::Nil),
                    )
                })
                .collect(),
        )
    }
}

/// A read-only `KeyValue` list as a map value.
pub fn kv_to_value(kvs: &[KeyValue]) -> Value<'_> {
    Value::Map(
        kvs.iter()
            .map(|kv| {
                (
                    Cow::Borrowed(kv.key.as_str()),
                    kv.value.as_ref().map(any_to_value).unwrap_or(Value::Nil),
                )
            })
            .collect(),
    )
}

/// The value under `key` in a read-only `KeyValue` list.
pub fn kv_get<'a>(kvs: &'a [KeyValue], key: &str) -> Option<Value<'a>> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_ref().map(any_to_value).unwrap_or(Value::Nil))
}

/// The `KeyValue` list inside an `AnyValue` that holds a map, if it does.
pub fn kvlist_mut(v: &mut AnyValue) -> Option<&mut Vec<KeyValue>> {
    match &mut v.value {
        Some(any_value::Value::KvlistValue(kv)) => Some(&mut kv.values),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::attr;

    #[test]
    fn labels_and_keyvalues_behave_alike() {
        let mut labels: Labels = vec![attr("a", "x"), attr("b", 1i64)];
        let mut kvs: Vec<KeyValue> = Vec::new();
        kvs.put("a", Value::str("x")).unwrap();
        kvs.put("b", Value::Int(1)).unwrap();
        for m in [
            &mut labels as &mut dyn AttrMap,
            &mut kvs as &mut dyn AttrMap,
        ] {
            m.put("c", Value::Bool(true)).unwrap();
            m.put("a", Value::str("y")).unwrap();
            assert_eq!(m.keys(), ["a", "b", "c"]);
            assert_eq!(m.get("a"), Some(Value::str("y")));
            m.rename("b", "c".into());
            assert_eq!(m.keys(), ["a", "c"]);
            assert_eq!(m.get("c"), Some(Value::Int(1)));
            m.put("a", Value::Nil).unwrap();
            assert_eq!(m.len(), 1);
        }
        assert!(labels.put("l", Value::List(vec![])).is_err());
    }
}
