//! Contexts and paths: what `attributes`, `name`, `body`, `resource.attributes`, ... mean in each
//! OTTL context (`pkg/ottl/contexts/ottl<context>/README.md`), resolved once at load to a
//! [`Field`], and read or written on the telemetry ([`Tcx`]) at run time.
//!
//! Supported paths (a leading context name, e.g. `datapoint.attributes`, is accepted):
//! - resource: `attributes`, `dropped_attributes_count`
//! - scope: `name`, `version`, `attributes`, `dropped_attributes_count`
//! - metric: `name`, `description`, `unit` (writable); `type`, `aggregation_temporality`,
//!   `is_monotonic` (read-only: the agent's metric kinds are fixed)
//! - datapoint: `attributes`, `start_time_unix_nano` (writable; attribute values must be
//!   scalars), `value_double` (writable on sums and gauges), `time_unix_nano` (the export time),
//!   `value_int`, `count`, `sum`, `bucket_counts`, `explicit_bounds`, `flags` (read-only)
//! - log: `body`, `attributes`, `severity_number`, `severity_text`, `time_unix_nano`,
//!   `observed_time_unix_nano`, `event_name`, `flags`, `dropped_attributes_count` (writable);
//!   `trace_id`, `span_id` (read-only bytes)
//!
//! Paths of a higher context (`resource.attributes` from `datapoint`, `metric.name` from
//! `datapoint`) are read-only: one statement changes one kind of item, so a point never renames
//! the family it belongs to.

use std::{borrow::Cow, time::UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    common::v1::{InstrumentationScope, KeyValue},
    logs::v1::LogRecord,
};

use super::{
    attrs::{any_to_value, kv_get, kv_to_value, kvlist_mut, value_to_any, AttrMap},
    error::EvalError,
    value::{type_name, Value},
};
use crate::metrics::model::{Desc, Kind, Point, Value as MValue};

/// The OTTL contexts the agent offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    Resource,
    Scope,
    Metric,
    Datapoint,
    Log,
}

impl Context {
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Resource => "resource",
            Context::Scope => "scope",
            Context::Metric => "metric",
            Context::Datapoint => "datapoint",
            Context::Log => "log",
        }
    }

    /// The contexts above this one (whose paths it may read).
    fn parents(self) -> &'static [Context] {
        match self {
            Context::Resource => &[],
            Context::Scope => &[Context::Resource],
            Context::Metric => &[Context::Resource, Context::Scope],
            Context::Datapoint => &[Context::Resource, Context::Scope, Context::Metric],
            Context::Log => &[Context::Resource, Context::Scope],
        }
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            Context::Resource => &["attributes", "dropped_attributes_count"],
            Context::Scope => &["name", "version", "attributes", "dropped_attributes_count"],
            Context::Metric => &[
                "name",
                "description",
                "unit",
                "type",
                "aggregation_temporality",
                "is_monotonic",
            ],
            Context::Datapoint => &[
                "attributes",
                "start_time_unix_nano",
                "time_unix_nano",
                "value_double",
                "value_int",
                "count",
                "sum",
                "bucket_counts",
                "explicit_bounds",
                "flags",
            ],
            Context::Log => &[
                "body",
                "attributes",
                "severity_number",
                "severity_text",
                "time_unix_nano",
                "observed_time_unix_nano",
                "event_name",
                "flags",
                "trace_id",
                "span_id",
                "dropped_attributes_count",
            ],
        }
    }
}

/// A resolved path: the context that owns it and the field name there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub owner: Context,
    pub name: &'static str,
    /// The statement's own context owns it (else: read-only).
    pub own: bool,
}

impl Field {
    pub fn is_map(&self) -> bool {
        self.name == "attributes"
    }

    /// Whether a statement in the owning context may set it.
    pub fn writable(&self) -> bool {
        self.own
            && !matches!(
                (self.owner, self.name),
                (
                    Context::Metric,
                    "type" | "aggregation_temporality" | "is_monotonic"
                ) | (
                    Context::Datapoint,
                    "time_unix_nano"
                        | "value_int"
                        | "count"
                        | "sum"
                        | "bucket_counts"
                        | "explicit_bounds"
                        | "flags"
                ) | (Context::Log, "trace_id" | "span_id")
                    | (
                        Context::Resource | Context::Scope,
                        "dropped_attributes_count"
                    )
            )
    }

    pub fn display(&self) -> String {
        if self.own {
            self.name.to_string()
        } else {
            format!("{}.{}", self.owner.as_str(), self.name)
        }
    }
}

/// Paths the Collector has that the agent's data cannot offer, and why.
fn unsupported(name: &str) -> Option<&'static str> {
    Some(match name {
        "time" | "start_time" | "observed_time" => {
            "time-typed paths are not supported; use the *_unix_nano int paths"
        }
        "cache" => "the cache map is not supported",
        "exemplars" | "quantile_values" | "positive" | "negative" | "scale" | "zero_count"
        | "min" | "max" => {
            "the agent exports no such points (sums, gauges and explicit-bucket histograms only)"
        }
        "schema_url" | "data_points" | "metadata" => "not supported by the agent",
        _ => return None,
    })
}

/// Resolves `segments` (without keys) in context `ctx`.
pub fn resolve(ctx: Context, segments: &[String]) -> Result<Field, String> {
    let ctx_of = |s: &str| match s {
        "resource" => Some(Context::Resource),
        "scope" | "instrumentation_scope" => Some(Context::Scope),
        "metric" => Some(Context::Metric),
        "datapoint" => Some(Context::Datapoint),
        "log" => Some(Context::Log),
        _ => None,
    };
    let (owner, rest) = match ctx_of(&segments[0]) {
        // `name` in the metric context is a field, `metric.name` the prefixed form.
        Some(c) if segments.len() > 1 => (c, &segments[1..]),
        Some(c) => {
            return Err(format!(
                "'{}' is a context, not a path; paths of the {} context: {}",
                segments[0],
                c.as_str(),
                c.fields().join(", ")
            ))
        }
        None => (ctx, segments),
    };
    if owner != ctx && !ctx.parents().contains(&owner) {
        return Err(format!(
            "{} paths are not available in the {} context (it can read {})",
            owner.as_str(),
            ctx.as_str(),
            std::iter::once(ctx)
                .chain(ctx.parents().iter().copied())
                .map(Context::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let joined = rest.join(".");
    match owner.fields().iter().find(|f| **f == joined) {
        Some(name) => Ok(Field {
            owner,
            name,
            own: owner == ctx,
        }),
        None => Err(match unsupported(&joined) {
            Some(why) => format!("path {joined}: {why}"),
            None => format!(
                "unknown path '{}' in the {} context; its paths: {}",
                segments.join("."),
                owner.as_str(),
                owner.fields().join(", ")
            ),
        }),
    }
}

/// The item a statement changes.
pub enum Subject<'a> {
    Resource(&'a mut Vec<KeyValue>),
    Scope(&'a mut InstrumentationScope),
    Metric(&'a mut Desc),
    Datapoint(&'a mut Point),
    Log(&'a mut LogRecord),
}

/// What a statement may read around its item.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub resource: &'a [KeyValue],
    pub scope: Option<&'a InstrumentationScope>,
    pub metric: Option<&'a Desc>,
    /// The export time: every point's `time_unix_nano`.
    pub now_unix_nano: u64,
}

/// A transform context: the item and its surroundings.
pub struct Tcx<'a> {
    /// Set when an editor took the subject's map to change it (so a caller knows which items'
    /// attribute sets may have changed; `false` initially).
    pub touched: bool,
    pub subject: Subject<'a>,
    pub env: Env<'a>,
}

fn u64_int(v: u64) -> Value<'static> {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn metric_type(d: &Desc) -> i64 {
    // ottlmetric's METRIC_DATA_TYPE_* enum values.
    match d.kind {
        Kind::Gauge => 1,
        Kind::Counter => 2,
        Kind::Histogram => 3,
    }
}

fn metric_field<'a>(d: &'a Desc, name: &str) -> Value<'a> {
    match name {
        "name" => Value::Str(Cow::Borrowed(d.name)),
        "description" => Value::Str(Cow::Borrowed(d.help)),
        "unit" => Value::Str(Cow::Borrowed(d.unit)),
        "type" => Value::Int(metric_type(d)),
        // Sums and histograms are cumulative in the model (the exporter may send deltas).
        "aggregation_temporality" => match d.kind {
            Kind::Gauge => Value::Int(0),
            _ => Value::Int(2),
        },
        "is_monotonic" => Value::Bool(d.kind == Kind::Counter),
        _ => Value::Nil,
    }
}

fn scope_field<'a>(s: &'a InstrumentationScope, name: &str) -> Value<'a> {
    match name {
        "name" => Value::Str(Cow::Borrowed(&s.name)),
        "version" => Value::Str(Cow::Borrowed(&s.version)),
        "attributes" => s.attributes.to_value(),
        "dropped_attributes_count" => Value::Int(i64::from(s.dropped_attributes_count)),
        _ => Value::Nil,
    }
}

fn point_field<'a>(p: &'a Point, name: &str, now: u64) -> Value<'a> {
    match (name, &p.value) {
        ("attributes", _) => p.labels.to_value(),
        ("start_time_unix_nano", _) => u64_int(
            p.start_time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        ),
        ("time_unix_nano", _) => u64_int(now),
        ("value_double", MValue::Counter(v) | MValue::Gauge(v)) => Value::Double(*v),
        ("count", MValue::Histogram(h)) => u64_int(h.count),
        ("sum", MValue::Histogram(h)) => Value::Double(h.sum),
        ("bucket_counts", MValue::Histogram(h)) => {
            Value::List(h.bucket_counts.iter().map(|c| u64_int(*c)).collect())
        }
        ("explicit_bounds", MValue::Histogram(h)) => {
            Value::List(h.bounds.iter().map(|b| Value::Double(*b)).collect())
        }
        ("flags", _) => Value::Int(0),
        _ => Value::Nil,
    }
}

fn log_field<'a>(r: &'a LogRecord, name: &str) -> Value<'a> {
    match name {
        "body" => r.body.as_ref().map(any_to_value).unwrap_or(Value::Nil),
        "attributes" => r.attributes.to_value(),
        "severity_number" => Value::Int(i64::from(r.severity_number)),
        "severity_text" => Value::Str(Cow::Borrowed(&r.severity_text)),
        "time_unix_nano" => u64_int(r.time_unix_nano),
        "observed_time_unix_nano" => u64_int(r.observed_time_unix_nano),
        "event_name" => Value::Str(Cow::Borrowed(&r.event_name)),
        "flags" => Value::Int(i64::from(r.flags)),
        "trace_id" => Value::Bytes(Cow::Borrowed(&r.trace_id)),
        "span_id" => Value::Bytes(Cow::Borrowed(&r.span_id)),
        "dropped_attributes_count" => Value::Int(i64::from(r.dropped_attributes_count)),
        _ => Value::Nil,
    }
}

impl<'a> Tcx<'a> {
    /// Reads a field (whole; keys are applied by the caller).
    pub fn get(&self, f: Field) -> Value<'_> {
        if !f.own {
            return match f.owner {
                Context::Resource => match f.name {
                    "attributes" => kv_to_value(self.env.resource),
                    _ => Value::Int(0),
                },
                Context::Scope => self
                    .env
                    .scope
                    .map(|s| scope_field(s, f.name))
                    .unwrap_or(Value::Nil),
                Context::Metric => self
                    .env
                    .metric
                    .map(|d| metric_field(d, f.name))
                    .unwrap_or(Value::Nil),
                _ => Value::Nil,
            };
        }
        match &self.subject {
            Subject::Resource(a) => match f.name {
                "attributes" => a.to_value(),
                _ => Value::Int(0),
            },
            Subject::Scope(s) => scope_field(s, f.name),
            Subject::Metric(d) => metric_field(d, f.name),
            Subject::Datapoint(p) => point_field(p, f.name, self.env.now_unix_nano),
            Subject::Log(r) => log_field(r, f.name),
        }
    }

    /// Reads `attributes[key]` of the subject without building the whole map.
    pub fn get_attr(&self, f: Field, key: &str) -> Value<'_> {
        let map: &dyn AttrMap = match (&self.subject, f.own, f.owner) {
            (_, false, Context::Resource) => {
                return kv_get(self.env.resource, key).unwrap_or(Value::Nil)
            }
            (_, false, Context::Scope) => match self.env.scope {
                Some(s) => &s.attributes,
                None => return Value::Nil,
            },
            (Subject::Resource(a), true, _) => &**a,
            (Subject::Scope(s), true, _) => &s.attributes,
            (Subject::Datapoint(p), true, _) => &p.labels,
            (Subject::Log(r), true, _) => &r.attributes,
            _ => return Value::Nil,
        };
        map.get(key).unwrap_or(Value::Nil)
    }

    /// The subject's map at `f` (`attributes`, or a `body` that holds a map), to edit in place.
    pub fn map_mut(&mut self, f: Field) -> Result<&mut dyn AttrMap, EvalError> {
        self.touched = true;
        match (&mut self.subject, f.name) {
            (Subject::Resource(a), "attributes") => Ok(&mut **a),
            (Subject::Scope(s), "attributes") => Ok(&mut s.attributes),
            (Subject::Datapoint(p), "attributes") => Ok(&mut p.labels),
            (Subject::Log(r), "attributes") => Ok(&mut r.attributes),
            (Subject::Log(r), "body") => match r.body.as_mut().and_then(kvlist_mut) {
                Some(m) => Ok(m),
                None => Err(EvalError::new("expected a map but got the body's value")),
            },
            _ => Err(EvalError::new(format!("{} is not a map", f.display()))),
        }
    }

    /// Writes a field (whole). `nil` is a no-op (OTTL's `set` semantics).
    pub fn set(&mut self, f: Field, v: Value<'static>) -> Result<(), EvalError> {
        if v.is_nil() {
            return Ok(());
        }
        if f.name == "attributes" {
            return self.map_mut(f)?.replace(v);
        }
        let got = type_name(&v);
        let want = |t: &str| EvalError::new(format!("{} expects {t}, got {got}", f.display()));
        match (&mut self.subject, f.name) {
            (Subject::Scope(s), "name") => {
                s.name = v.as_str().ok_or_else(|| want("a string"))?.to_string();
                Ok(())
            }
            (Subject::Scope(s), "version") => {
                s.version = v.as_str().ok_or_else(|| want("a string"))?.to_string();
                Ok(())
            }
            (Subject::Metric(d), "name" | "description" | "unit") => {
                let s = intern(v.as_str().ok_or_else(|| want("a string"))?)?;
                match f.name {
                    "name" => d.name = s,
                    "description" => d.help = s,
                    _ => d.unit = s,
                }
                Ok(())
            }
            (Subject::Datapoint(p), "start_time_unix_nano") => {
                let Value::Int(ns) = v else {
                    return Err(want("an int"));
                };
                p.start_time = UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
                Ok(())
            }
            (Subject::Datapoint(p), "value_double") => {
                let x = match v {
                    Value::Double(d) => d,
                    Value::Int(i) => i as f64,
                    _ => return Err(want("a double")),
                };
                match &mut p.value {
                    MValue::Counter(c) | MValue::Gauge(c) => *c = x,
                    MValue::Histogram(_) => {
                        return Err(EvalError::new(
                            "value_double: a histogram point has no value",
                        ))
                    }
                }
                Ok(())
            }
            (Subject::Log(r), name) => set_log(r, name, v, &want),
            _ => Err(EvalError::new(format!("{} cannot be set", f.display()))),
        }
    }
}

fn set_log(
    r: &mut LogRecord,
    name: &str,
    v: Value<'static>,
    want: &dyn Fn(&str) -> EvalError,
) -> Result<(), EvalError> {
    let int = |v: &Value| match v {
        Value::Int(i) => Ok(*i),
        _ => Err(want("an int")),
    };
    match name {
        "body" => r.body = Some(value_to_any(v)),
        "severity_number" => {
            r.severity_number = i32::try_from(int(&v)?).map_err(|_| want("an int32"))?
        }
        "severity_text" => r.severity_text = v.as_str().ok_or_else(|| want("a string"))?.into(),
        "time_unix_nano" => r.time_unix_nano = int(&v)?.max(0) as u64,
        "observed_time_unix_nano" => r.observed_time_unix_nano = int(&v)?.max(0) as u64,
        "event_name" => r.event_name = v.as_str().ok_or_else(|| want("a string"))?.into(),
        "flags" => r.flags = u32::try_from(int(&v)?).map_err(|_| want("a uint32"))?,
        "dropped_attributes_count" => {
            r.dropped_attributes_count = u32::try_from(int(&v)?).map_err(|_| want("a uint32"))?
        }
        _ => return Err(EvalError::new(format!("{name} cannot be set"))),
    }
    Ok(())
}

/// Metric names, descriptions and units are `&'static str` in the model (the probes' names are
/// constants); names a statement makes are interned: each distinct string is leaked once, at most
/// [`MAX_INTERNED`] of them (a statement that derives names from data would otherwise grow memory
/// without bound).
pub const MAX_INTERNED: usize = 4096;

fn intern(s: &str) -> Result<&'static str, EvalError> {
    use std::{collections::HashSet, sync::Mutex};
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut g = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let set = g.get_or_insert_with(HashSet::new);
    if let Some(x) = set.get(s) {
        return Ok(x);
    }
    if set.len() >= MAX_INTERNED {
        return Err(EvalError::new(format!(
            "more than {MAX_INTERNED} distinct metric names, descriptions or units were set; \
             statements must not derive them from per-point data"
        )));
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    Ok(leaked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_by_context() {
        let p = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
        let f = resolve(Context::Datapoint, &p("attributes")).unwrap();
        assert!(f.own && f.is_map() && f.writable());
        let f = resolve(Context::Datapoint, &p("datapoint.attributes")).unwrap();
        assert!(f.own);
        let f = resolve(Context::Datapoint, &p("metric.name")).unwrap();
        assert!(!f.own && !f.writable());
        assert!(resolve(Context::Metric, &p("name")).unwrap().writable());
        assert!(!resolve(Context::Metric, &p("type")).unwrap().writable());
        let e = resolve(Context::Metric, &p("attributes")).unwrap_err();
        assert!(
            e.contains("unknown path 'attributes' in the metric context"),
            "{e}"
        );
        let e = resolve(Context::Metric, &p("datapoint.attributes")).unwrap_err();
        assert!(e.contains("not available in the metric context"), "{e}");
        let e = resolve(Context::Log, &p("time")).unwrap_err();
        assert!(e.contains("unix_nano"), "{e}");
        assert!(resolve(Context::Log, &p("resource.attributes")).is_ok());
        assert!(resolve(Context::Log, &p("instrumentation_scope.name")).is_ok());
    }
}
