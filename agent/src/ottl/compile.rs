//! The checker: turns a parsed statement or condition into an executable one, once, at config
//! load. It resolves every path in the statement's context, every function by name (editors
//! lowercase, converters uppercase), binds positional and named arguments, compiles regexes, and
//! rejects what can only fail: unknown names, wrong arity, a literal of the wrong type where a
//! function wants a string or an int, a read-only or non-path target, a converter that returns
//! no bool where a condition needs one. Each error names its column.

use super::{
    ast::{self, Arg, BoolExpr, Call, Expr, Key, KeyNode, Literal, Node},
    error::{check_error, OttlError},
    functions::{converters::Converter, editors::Editor},
    paths::{resolve, Context, Field},
    value::{CmpOp, Value},
};

/// A value-producing expression.
#[derive(Debug)]
pub enum Getter {
    Lit(Value<'static>),
    Path(CPath),
    Conv(Box<Converter>, Vec<CKey>),
    List(Vec<Getter>),
    Map(Vec<(String, Getter)>),
    Math(Box<Getter>, ast::MathOp, Box<Getter>),
}

/// A resolved path with its keys.
#[derive(Debug)]
pub struct CPath {
    pub field: Field,
    pub keys: Vec<CKey>,
}

#[derive(Debug)]
pub enum CKey {
    Str(String),
    Int(i64),
    Dyn(Box<Getter>),
}

/// A compiled boolean expression.
#[derive(Debug)]
pub enum Cond {
    Or(Vec<Cond>),
    And(Vec<Cond>),
    Not(Box<Cond>),
    Cmp(Getter, CmpOp, Getter),
    Value(Getter),
}

/// What is statically known about a value's type (for argument checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Any,
    Nil,
    Bool,
    Int,
    Double,
    Str,
    Bytes,
    List,
    Map,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::Any => "any value",
            Ty::Nil => "nil",
            Ty::Bool => "a bool",
            Ty::Int => "an int",
            Ty::Double => "a double",
            Ty::Str => "a string",
            Ty::Bytes => "bytes",
            Ty::List => "a list",
            Ty::Map => "a map",
        }
    }
}

/// Compilation state: the text (for columns), the context, and every path resolved so far
/// (read or written: what the item's result can depend on).
pub struct Cx<'t> {
    pub text: &'t str,
    pub ctx: Context,
    pub fields: std::cell::RefCell<Vec<Field>>,
}

impl<'t> Cx<'t> {
    pub fn err(&self, at: usize, problem: impl Into<String>) -> OttlError {
        check_error(self.text, at, problem)
    }

    pub fn getter(&self, n: &Node) -> Result<Getter, OttlError> {
        Ok(match &n.expr {
            Expr::Literal(l) => Getter::Lit(literal(l)),
            Expr::Path(p) => Getter::Path(self.path(p, n.at)?),
            Expr::Converter(c) => {
                let conv = Converter::compile(self, c)?;
                Getter::Conv(Box::new(conv), self.keys(&c.keys)?)
            }
            Expr::Enum(name) => match enum_value(name) {
                Some(v) => Getter::Lit(Value::Int(v)),
                None => {
                    return Err(self.err(
                        n.at,
                        format!(
                            "unknown enum {name} (converters need parentheses: {name}(...)); \
                             enums: METRIC_DATA_TYPE_*, AGGREGATION_TEMPORALITY_*, SEVERITY_NUMBER_*"
                        ),
                    ))
                }
            },
            Expr::List(items) => {
                Getter::List(items.iter().map(|i| self.getter(i)).collect::<Result<_, _>>()?)
            }
            Expr::Map(entries) => Getter::Map(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.getter(v)?)))
                    .collect::<Result<_, OttlError>>()?,
            ),
            Expr::Math(a, op, b) => {
                for side in [a, b] {
                    let t = self.ty(side);
                    if !matches!(t, Ty::Int | Ty::Double | Ty::Any) {
                        return Err(self.err(
                            side.at,
                            format!("math works on ints and doubles, not {}", t.name()),
                        ));
                    }
                }
                Getter::Math(Box::new(self.getter(a)?), *op, Box::new(self.getter(b)?))
            }
        })
    }

    fn keys(&self, keys: &[KeyNode]) -> Result<Vec<CKey>, OttlError> {
        keys.iter()
            .map(|k| {
                Ok(match &k.key {
                    Key::Str(s) => CKey::Str(s.clone()),
                    Key::Int(i) => CKey::Int(*i),
                    Key::Expr(n) => CKey::Dyn(Box::new(self.getter(n)?)),
                })
            })
            .collect()
    }

    pub fn path(&self, p: &ast::Path, at: usize) -> Result<CPath, OttlError> {
        let field = resolve(self.ctx, &p.segments).map_err(|e| self.err(at, e))?;
        self.fields.borrow_mut().push(field);
        let keys = self.keys(&p.keys)?;
        if !keys.is_empty() && !matches!(field.name, "attributes" | "body") {
            return Err(self.err(
                p.keys[0].at,
                format!("{} cannot be indexed", field.display()),
            ));
        }
        if field.is_map() {
            if let Some(CKey::Int(_)) = keys.first() {
                return Err(self.err(p.keys[0].at, "attributes are indexed by string keys"));
            }
        }
        Ok(CPath { field, keys })
    }

    /// A path an editor may write: own context, writable field, at most one key.
    pub fn target(&self, n: &Node) -> Result<CPath, OttlError> {
        let Expr::Path(p) = &n.expr else {
            return Err(self.err(
                n.at,
                "expected a path to write to (e.g. attributes[\"key\"])",
            ));
        };
        let cp = self.path(p, n.at)?;
        if !cp.field.writable() {
            return Err(self.err(
                n.at,
                if cp.field.own {
                    format!("{} is read-only in the agent", cp.field.display())
                } else {
                    format!(
                        "{} is read-only in the {} context (write it from a {} statement)",
                        cp.field.display(),
                        self.ctx.as_str(),
                        cp.field.owner.as_str()
                    )
                },
            ));
        }
        if cp.keys.len() > 1 {
            return Err(self.err(p.keys[1].at, "setting a nested key is not supported"));
        }
        if self.ctx == Context::Datapoint && cp.field.is_map() && cp.keys.is_empty() {
            // Allowed: set(attributes, {...}) replaces the labels.
        }
        Ok(cp)
    }

    /// A path to a map an editor changes in place (`attributes`, or a log `body` holding a
    /// map).
    pub fn map_target(&self, n: &Node) -> Result<CPath, OttlError> {
        let cp = self.target(n)?;
        if !cp.keys.is_empty() || !matches!(cp.field.name, "attributes" | "body") {
            return Err(self.err(
                n.at,
                format!(
                    "expected a map path (attributes{}), got {}",
                    if self.ctx == Context::Log {
                        " or body"
                    } else {
                        ""
                    },
                    cp.field.display()
                ),
            ));
        }
        Ok(cp)
    }

    /// The static type of a node, as far as it is known.
    pub fn ty(&self, n: &Node) -> Ty {
        match &n.expr {
            Expr::Literal(l) => match l {
                Literal::Nil => Ty::Nil,
                Literal::Bool(_) => Ty::Bool,
                Literal::Int(_) => Ty::Int,
                Literal::Double(_) => Ty::Double,
                Literal::Str(_) => Ty::Str,
                Literal::Bytes(_) => Ty::Bytes,
            },
            Expr::Enum(_) => Ty::Int,
            Expr::List(_) => Ty::List,
            Expr::Map(_) => Ty::Map,
            Expr::Math(..) => Ty::Any,
            Expr::Converter(c) if c.keys.is_empty() => Converter::return_type(&c.name),
            Expr::Converter(_) => Ty::Any,
            Expr::Path(p) if p.keys.is_empty() => match resolve(self.ctx, &p.segments) {
                Ok(f) => match f.name {
                    "attributes" => Ty::Map,
                    "name" | "description" | "unit" | "version" | "severity_text"
                    | "event_name" => Ty::Str,
                    "value_double" | "sum" => Ty::Double,
                    "trace_id" | "span_id" => Ty::Bytes,
                    "bucket_counts" | "explicit_bounds" => Ty::List,
                    "is_monotonic" => Ty::Bool,
                    "body" => Ty::Any,
                    _ => Ty::Int,
                },
                Err(_) => Ty::Any,
            },
            Expr::Path(_) => Ty::Any,
        }
    }

    /// Checks that `n` can be a string (`StringGetter`): anything not statically another type.
    pub fn string_getter(&self, n: &Node, what: &str) -> Result<Getter, OttlError> {
        match self.ty(n) {
            Ty::Any | Ty::Str | Ty::Nil => self.getter(n),
            t => Err(self.err(n.at, format!("{what} expects a string, got {}", t.name()))),
        }
    }

    pub fn int_getter(&self, n: &Node, what: &str) -> Result<Getter, OttlError> {
        match self.ty(n) {
            Ty::Any | Ty::Int => self.getter(n),
            t => Err(self.err(n.at, format!("{what} expects an int, got {}", t.name()))),
        }
    }

    pub fn str_lit(&self, n: &Node, what: &str) -> Result<String, OttlError> {
        match &n.expr {
            Expr::Literal(Literal::Str(s)) => Ok(s.clone()),
            _ => Err(self.err(n.at, format!("{what} must be a string literal"))),
        }
    }

    pub fn int_lit(&self, n: &Node, what: &str) -> Result<i64, OttlError> {
        match &n.expr {
            Expr::Literal(Literal::Int(i)) => Ok(*i),
            _ => Err(self.err(n.at, format!("{what} must be an int literal"))),
        }
    }

    pub fn bool_lit(&self, n: &Node, what: &str) -> Result<bool, OttlError> {
        match &n.expr {
            Expr::Literal(Literal::Bool(b)) => Ok(*b),
            _ => Err(self.err(n.at, format!("{what} must be true or false"))),
        }
    }

    pub fn str_list_lit(&self, n: &Node, what: &str) -> Result<Vec<String>, OttlError> {
        let Expr::List(items) = &n.expr else {
            return Err(self.err(
                n.at,
                format!("{what} must be a list of strings, e.g. [\"a\", \"b\"]"),
            ));
        };
        items.iter().map(|i| self.str_lit(i, what)).collect()
    }

    /// A regex literal, compiled now (a bad pattern is a load error, not a runtime one).
    pub fn regex_lit(&self, n: &Node, what: &str) -> Result<regex::Regex, OttlError> {
        let s = self.str_lit(n, what)?;
        regex::Regex::new(&s).map_err(|e| {
            let msg = e.to_string();
            let last = msg.lines().last().unwrap_or(&msg).trim().to_string();
            self.err(n.at, format!("{what} is not a valid regex: {last}"))
        })
    }

    pub fn cond(&self, b: &BoolExpr) -> Result<Cond, OttlError> {
        Ok(match b {
            BoolExpr::Or(v) => Cond::Or(v.iter().map(|x| self.cond(x)).collect::<Result<_, _>>()?),
            BoolExpr::And(v) => {
                Cond::And(v.iter().map(|x| self.cond(x)).collect::<Result<_, _>>()?)
            }
            BoolExpr::Not(x) => Cond::Not(Box::new(self.cond(x)?)),
            BoolExpr::Compare(a, op, c) => Cond::Cmp(self.getter(a)?, *op, self.getter(c)?),
            BoolExpr::Value(n) => {
                let t = self.ty(n);
                if !matches!(t, Ty::Bool | Ty::Any) || matches!(n.expr, Expr::Path(_)) {
                    return Err(self.err(
                        n.at,
                        format!(
                            "expected a condition (a comparison, true, false or a converter \
                             returning a bool), got {}",
                            if matches!(n.expr, Expr::Path(_)) {
                                "a path"
                            } else {
                                t.name()
                            }
                        ),
                    ));
                }
                Cond::Value(self.getter(n)?)
            }
        })
    }
}

fn literal(l: &Literal) -> Value<'static> {
    match l {
        Literal::Nil => Value::Nil,
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Int(i) => Value::Int(*i),
        Literal::Double(d) => Value::Double(*d),
        Literal::Str(s) => Value::Str(s.clone().into()),
        Literal::Bytes(b) => Value::Bytes(b.clone().into()),
    }
}

/// The enums of the metric and log contexts (`ottlmetric`, `ottllog`).
fn enum_value(name: &str) -> Option<i64> {
    Some(match name {
        "METRIC_DATA_TYPE_NONE" => 0,
        "METRIC_DATA_TYPE_GAUGE" => 1,
        "METRIC_DATA_TYPE_SUM" => 2,
        "METRIC_DATA_TYPE_HISTOGRAM" => 3,
        "METRIC_DATA_TYPE_EXPONENTIAL_HISTOGRAM" => 4,
        "METRIC_DATA_TYPE_SUMMARY" => 5,
        "AGGREGATION_TEMPORALITY_UNSPECIFIED" => 0,
        "AGGREGATION_TEMPORALITY_DELTA" => 1,
        "AGGREGATION_TEMPORALITY_CUMULATIVE" => 2,
        "SEVERITY_NUMBER_UNSPECIFIED" => 0,
        s => {
            let rest = s.strip_prefix("SEVERITY_NUMBER_")?;
            let (level, n) = match rest.find(|c: char| c.is_ascii_digit()) {
                Some(i) => (&rest[..i], rest[i..].parse::<i64>().ok()?),
                None => (rest, 1),
            };
            if !(1..=4).contains(&n) {
                return None;
            }
            let base = match level {
                "TRACE" => 1,
                "DEBUG" => 5,
                "INFO" => 9,
                "WARN" => 13,
                "ERROR" => 17,
                "FATAL" => 21,
                _ => return None,
            };
            base + n - 1
        }
    })
}

/// Binds a call's arguments to parameter names: positional first, then named (snake_case, as
/// the Collector names them); `required` leading parameters must be present.
pub fn bind<'c>(
    cx: &Cx,
    call: &'c Call,
    params: &[&str],
    required: usize,
) -> Result<Vec<Option<&'c Node>>, OttlError> {
    let mut slots: Vec<Option<&'c Node>> = vec![None; params.len()];
    let mut named_seen = false;
    let signature = format!("{}({})", call.name, params.join(", "));
    for (i, Arg { name, value, at }) in call.args.iter().enumerate() {
        match name {
            None => {
                if named_seen {
                    return Err(cx.err(*at, "positional arguments must come before named ones"));
                }
                if i >= params.len() {
                    return Err(cx.err(
                        *at,
                        format!("too many arguments: {signature} takes {}", params.len()),
                    ));
                }
                slots[i] = Some(value);
            }
            Some(n) => {
                named_seen = true;
                let Some(k) = params.iter().position(|p| p == n) else {
                    return Err(cx.err(
                        *at,
                        format!("{} has no argument {n}: {signature}", call.name),
                    ));
                };
                if slots[k].is_some() {
                    return Err(cx.err(*at, format!("argument {n} given twice")));
                }
                slots[k] = Some(value);
            }
        }
    }
    if let Some(missing) = (0..required).find(|k| slots[*k].is_none()) {
        return Err(cx.err(
            call.at,
            format!("missing argument {}: {signature}", params[missing]),
        ));
    }
    Ok(slots)
}

/// A statement, ready to run.
#[derive(Debug)]
pub struct Statement {
    pub text: String,
    pub context: Context,
    pub editor: Editor,
    pub condition: Option<Cond>,
    /// Every path the statement reads or writes (with repeats).
    pub fields: Vec<Field>,
}

/// A condition, ready to run (filter conditions, transform group conditions).
#[derive(Debug)]
pub struct Condition {
    pub text: String,
    pub context: Context,
    pub cond: Cond,
    /// Every path the condition reads (with repeats).
    pub fields: Vec<Field>,
}

/// Whether a data point statement or condition that uses only `fields` gives the same result
/// for every point of one series: it reads and writes the point's `attributes` alone, besides
/// the metric's, resource's and scope's paths (all fixed for a series within one export). The
/// functions are pure (no `Now`, no random), so such a result can be kept per series; a path to
/// the value, the times, the buckets or the flags makes it per point.
pub fn per_series(fields: &[Field]) -> bool {
    fields.iter().all(|f| {
        matches!(
            f.owner,
            Context::Metric | Context::Resource | Context::Scope
        ) || (f.owner == Context::Datapoint && f.own && f.name == "attributes")
    })
}

impl Statement {
    /// See [`per_series`]; `false` outside the datapoint context.
    pub fn per_series(&self) -> bool {
        self.context == Context::Datapoint && per_series(&self.fields)
    }
}

impl Condition {
    /// See [`per_series`]; `false` outside the datapoint context.
    pub fn per_series(&self) -> bool {
        self.context == Context::Datapoint && per_series(&self.fields)
    }
}

/// Parses and checks a statement for context `ctx`.
pub fn statement(text: &str, ctx: Context) -> Result<Statement, OttlError> {
    let ast = super::parser::statement(text)?;
    let cx = Cx {
        text,
        ctx,
        fields: Default::default(),
    };
    let editor = Editor::compile(&cx, &ast.editor)?;
    let condition = ast.condition.as_ref().map(|c| cx.cond(c)).transpose()?;
    Ok(Statement {
        text: text.to_string(),
        context: ctx,
        editor,
        condition,
        fields: cx.fields.into_inner(),
    })
}

/// Parses and checks a condition for context `ctx`.
pub fn condition(text: &str, ctx: Context) -> Result<Condition, OttlError> {
    let ast = super::parser::condition(text)?;
    let cx = Cx {
        text,
        ctx,
        fields: Default::default(),
    };
    let cond = cx.cond(&ast)?;
    Ok(Condition {
        text: text.to_string(),
        context: ctx,
        cond,
        fields: cx.fields.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums() {
        assert_eq!(enum_value("SEVERITY_NUMBER_WARN"), Some(13));
        assert_eq!(enum_value("SEVERITY_NUMBER_ERROR4"), Some(20));
        assert_eq!(enum_value("SEVERITY_NUMBER_ERROR5"), None);
        assert_eq!(enum_value("METRIC_DATA_TYPE_SUM"), Some(2));
    }

    #[test]
    fn per_series_reads_attributes_metric_resource_and_scope_only() {
        let dp = |s: &str| statement(s, Context::Datapoint).unwrap().per_series();
        assert!(dp(
            r#"set(attributes["a"], SHA256(attributes["b"])) where metric.name == "m""#
        ));
        assert!(dp(
            r#"set(attributes["a"], resource.attributes["r"]) where scope.name != "s""#
        ));
        assert!(dp(r#"keep_keys(attributes, ["a"])"#));
        assert!(dp(
            r#"set(attributes["a"], "x") where attributes[attributes["k"]] == "v""#
        ));
        assert!(!dp(r#"set(attributes["a"], "x") where value_double > 1.0"#));
        assert!(!dp(
            r#"set(attributes["a"], Concat([attributes["b"], String(count)], "-"))"#
        ));
        assert!(!dp(r#"set(start_time_unix_nano, 0)"#));
        assert!(!dp(r#"set(attributes["t"], time_unix_nano)"#));
        let c = |s: &str| condition(s, Context::Datapoint).unwrap().per_series();
        assert!(c(
            r#"attributes["a"] == "b" and metric.type == METRIC_DATA_TYPE_SUM"#
        ));
        assert!(!c(r#"IsMatch(String(sum), "^1")"#));
        // Other contexts run per metric, resource or scope, never per point.
        assert!(!statement(r#"set(name, "x")"#, Context::Metric)
            .unwrap()
            .per_series());
    }
}
