//! Editors (`pkg/ottl/ottlfuncs/README.md#editors`): the one function of a statement, which
//! changes the item. Supported: `set`, `delete_key`, `delete_matching_keys`, `keep_keys`,
//! `keep_matching_keys`, `limit`, `truncate_all`, `replace_pattern`, `replace_all_patterns`,
//! `merge_maps`.
//!
//! Patterns, key lists, limits and strategies must be literals: they are checked and compiled
//! once at load. Regex replacements use `$1` / `${name}` for groups and `$$` for a literal `$`
//! (no `$$` escaping for the config file is needed: the agent's config has no variable
//! substitution). The optional `function` argument takes `SHA256`, `SHA1`, `ToLowerCase` or
//! `ToUpperCase`, applied to each expanded match, then `replacementFormat` (one `%s`).

use std::{borrow::Cow, sync::Arc};

use crate::ottl::{
    ast::Call,
    compile::{bind, CPath, Cx, Getter},
    error::{EvalError, OttlError},
    memo::Memo,
    paths::Tcx,
    value::{type_name, Value},
};

use super::converters::{expect_str, StrFn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Insert,
    Update,
    Upsert,
}

/// How a regex match becomes its replacement.
#[derive(Debug)]
pub struct Replace {
    pub re: regex::Regex,
    pub replacement: Getter,
    pub function: Option<StrFn>,
    /// `replacementFormat`: a string with exactly one `%s`.
    pub format: Option<String>,
    /// Results per input value, used when the replacement is a literal (the result then
    /// depends on the value alone: the regex, the function and the format are literals).
    pub memo: Memo,
}

#[derive(Debug)]
pub enum Editor {
    Set(CPath, Getter),
    DeleteKey(CPath, Getter),
    DeleteMatchingKeys(CPath, regex::Regex),
    KeepKeys(CPath, Vec<String>),
    KeepMatchingKeys(CPath, regex::Regex),
    Limit(CPath, usize, Vec<String>),
    TruncateAll {
        target: CPath,
        limit: usize,
        marker: String,
    },
    ReplacePattern(CPath, Replace),
    ReplaceAllPatterns(CPath, bool, Replace),
    MergeMaps(CPath, Getter, Strategy),
}

pub const NAMES: &[&str] = &[
    "set",
    "delete_key",
    "delete_matching_keys",
    "keep_keys",
    "keep_matching_keys",
    "limit",
    "truncate_all",
    "replace_pattern",
    "replace_all_patterns",
    "merge_maps",
];

fn replace_args(
    cx: &Cx,
    call: &Call,
    slots: &[Option<&crate::ottl::ast::Node>],
    what: &str,
) -> Result<Replace, OttlError> {
    let re = cx.regex_lit(slots[0].expect("required"), &format!("{what}'s regex"))?;
    let replacement = cx.string_getter(
        slots[1].expect("required"),
        &format!("{what}'s replacement"),
    )?;
    let function = match slots[2] {
        None => None,
        Some(n) => match &n.expr {
            crate::ottl::ast::Expr::Enum(name) => Some(StrFn::by_name(name).ok_or_else(|| {
                cx.err(
                    n.at,
                    format!("{name} cannot be the replacement function: use SHA256, SHA1, ToLowerCase or ToUpperCase"),
                )
            })?),
            _ => {
                return Err(cx.err(
                    n.at,
                    "the replacement function is a converter name without parentheses, e.g. SHA256",
                ))
            }
        },
    };
    let format = slots[3]
        .map(|n| {
            let f = cx.str_lit(n, "replacementFormat")?;
            if f.matches("%s").count() != 1 || f.replace("%s", "").contains('%') {
                return Err(cx.err(
                    n.at,
                    "replacementFormat must contain exactly one %s and no other format verb",
                ));
            }
            Ok(f)
        })
        .transpose()?;
    if format.is_some() && function.is_none() {
        return Err(cx.err(call.at, "replacementFormat needs a function argument"));
    }
    Ok(Replace {
        re,
        replacement,
        function,
        format,
        memo: Memo::default(),
    })
}

fn req<'c>(a: &[Option<&'c crate::ottl::ast::Node>], i: usize) -> &'c crate::ottl::ast::Node {
    a[i].expect("required")
}

impl Editor {
    pub fn compile(cx: &Cx, call: &Call) -> Result<Editor, OttlError> {
        Ok(match call.name.as_str() {
            "set" => {
                let a = bind(cx, call, &["target", "value"], 2)?;
                Editor::Set(cx.target(req(&a, 0))?, cx.getter(req(&a, 1))?)
            }
            "delete_key" => {
                let a = bind(cx, call, &["target", "key"], 2)?;
                Editor::DeleteKey(
                    cx.map_target(req(&a, 0))?,
                    cx.string_getter(req(&a, 1), "delete_key's key")?,
                )
            }
            "delete_matching_keys" | "keep_matching_keys" => {
                let a = bind(cx, call, &["target", "pattern"], 2)?;
                let t = cx.map_target(req(&a, 0))?;
                let re = cx.regex_lit(req(&a, 1), "the pattern")?;
                if call.name == "delete_matching_keys" {
                    Editor::DeleteMatchingKeys(t, re)
                } else {
                    Editor::KeepMatchingKeys(t, re)
                }
            }
            "keep_keys" => {
                let a = bind(cx, call, &["target", "keys"], 2)?;
                Editor::KeepKeys(
                    cx.map_target(req(&a, 0))?,
                    cx.str_list_lit(req(&a, 1), "keep_keys's keys")?,
                )
            }
            "limit" => {
                let a = bind(cx, call, &["target", "limit", "priority_keys"], 3)?;
                let n = req(&a, 1);
                let limit = cx.int_lit(n, "limit")?;
                let keys = cx.str_list_lit(req(&a, 2), "priority_keys")?;
                if limit < 0 {
                    return Err(cx.err(
                        n.at,
                        format!("invalid limit {limit}: it cannot be negative"),
                    ));
                }
                if keys.len() as i64 > limit {
                    return Err(cx.err(
                        n.at,
                        format!(
                            "{} priority keys are more than the limit {limit}",
                            keys.len()
                        ),
                    ));
                }
                Editor::Limit(cx.map_target(req(&a, 0))?, limit as usize, keys)
            }
            "truncate_all" => {
                let a = bind(
                    cx,
                    call,
                    &["target", "limit", "utf8_safe", "truncation_marker"],
                    2,
                )?;
                let n = req(&a, 1);
                let limit = cx.int_lit(n, "limit")?;
                if limit < 0 {
                    return Err(cx.err(
                        n.at,
                        format!(
                            "invalid limit for truncate_all function, {limit} cannot be negative"
                        ),
                    ));
                }
                if let Some(u) = a[2] {
                    // Agent strings are always valid UTF-8: both modes cut at a boundary.
                    cx.bool_lit(u, "utf8_safe")?;
                }
                let marker = a[3]
                    .map(|m| cx.str_lit(m, "truncation_marker"))
                    .transpose()?
                    .unwrap_or_default();
                if marker.len() as i64 > limit {
                    return Err(cx.err(n.at, "the truncation marker is longer than the limit"));
                }
                Editor::TruncateAll {
                    target: cx.map_target(req(&a, 0))?,
                    limit: limit as usize,
                    marker,
                }
            }
            "replace_pattern" => {
                let a = bind(
                    cx,
                    call,
                    &[
                        "target",
                        "regex",
                        "replacement",
                        "function",
                        "replacement_format",
                    ],
                    3,
                )?;
                let r = replace_args(cx, call, &a[1..], "replace_pattern")?;
                Editor::ReplacePattern(cx.target(req(&a, 0))?, r)
            }
            "replace_all_patterns" => {
                let a = bind(
                    cx,
                    call,
                    &[
                        "target",
                        "mode",
                        "regex",
                        "replacement",
                        "function",
                        "replacement_format",
                    ],
                    4,
                )?;
                let m = req(&a, 1);
                let keys = match cx.str_lit(m, "mode")?.as_str() {
                    "key" => true,
                    "value" => false,
                    other => {
                        return Err(
                            cx.err(m.at, format!("invalid mode {other:?}: use key or value"))
                        )
                    }
                };
                let r = replace_args(cx, call, &a[2..], "replace_all_patterns")?;
                Editor::ReplaceAllPatterns(cx.map_target(req(&a, 0))?, keys, r)
            }
            "merge_maps" => {
                let a = bind(cx, call, &["target", "source", "strategy"], 3)?;
                let s = req(&a, 2);
                let strategy = match cx.str_lit(s, "strategy")?.as_str() {
                    "insert" => Strategy::Insert,
                    "update" => Strategy::Update,
                    "upsert" => Strategy::Upsert,
                    other => {
                        return Err(cx.err(
                            s.at,
                            format!("invalid strategy {other:?}: use insert, update or upsert"),
                        ))
                    }
                };
                Editor::MergeMaps(cx.map_target(req(&a, 0))?, cx.getter(req(&a, 1))?, strategy)
            }
            name => {
                let hint = if name.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    " (converters return a value; a statement needs an editor)"
                } else {
                    ""
                };
                return Err(cx.err(
                    call.at,
                    format!("unknown editor {name}{hint}; editors: {}", NAMES.join(", ")),
                ));
            }
        })
    }

    pub fn run(&self, tcx: &mut Tcx) -> Result<(), EvalError> {
        match self {
            Editor::Set(target, value) => {
                let v = value.eval(tcx)?.into_owned();
                set(tcx, target, v)
            }
            Editor::DeleteKey(t, key) => {
                if let Some(k) = key.lit_str() {
                    tcx.map_mut(t.field)?.remove(k);
                    return Ok(());
                }
                let k = key.eval(tcx)?;
                let k = expect_str(&k)?.to_string();
                tcx.map_mut(t.field)?.remove(&k);
                Ok(())
            }
            Editor::DeleteMatchingKeys(t, re) => {
                tcx.map_mut(t.field)?.retain_keys(&mut |k| !re.is_match(k));
                Ok(())
            }
            Editor::KeepMatchingKeys(t, re) => {
                tcx.map_mut(t.field)?.retain_keys(&mut |k| re.is_match(k));
                Ok(())
            }
            Editor::KeepKeys(t, keys) => {
                tcx.map_mut(t.field)?
                    .retain_keys(&mut |k| keys.iter().any(|x| x == k));
                Ok(())
            }
            Editor::Limit(t, limit, priority) => {
                let m = tcx.map_mut(t.field)?;
                if m.len() <= *limit {
                    return Ok(());
                }
                let mut count = priority.iter().filter(|p| m.get(p).is_some()).count();
                m.retain_keys(&mut |k| {
                    if priority.iter().any(|p| p == k) {
                        return true;
                    }
                    if count < *limit {
                        count += 1;
                        return true;
                    }
                    false
                });
                Ok(())
            }
            Editor::TruncateAll {
                target,
                limit,
                marker,
            } => {
                tcx.map_mut(target.field)?.map_strings(&mut |s| {
                    if s.len() <= *limit {
                        return None;
                    }
                    let mut cut = limit - marker.len();
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    Some(format!("{}{marker}", &s[..cut]))
                });
                Ok(())
            }
            Editor::ReplacePattern(t, r) if r.replacement.lit_str().is_some() => {
                let repl = r.replacement.lit_str().expect("checked by the guard");
                // A literal replacement: the result depends on the value alone, so it is
                // computed once per distinct value and shared by the points that hold it.
                let new = match t.eval(tcx)? {
                    Value::Str(s) => r.memo.get(&s, |s| r.apply(s, repl)),
                    // Non-strings and nil are left alone.
                    _ => return Ok(()),
                };
                match new {
                    Some(new) => set_shared(tcx, t, new),
                    None => Ok(()),
                }
            }
            Editor::ReplacePattern(t, r) => {
                let owned;
                let repl = match r.replacement.lit_str() {
                    Some(s) => s,
                    None => {
                        let v = r.replacement.eval(tcx)?;
                        owned = expect_str(&v)?.to_string();
                        &owned
                    }
                };
                let Value::Str(s) = t.eval(tcx)? else {
                    // Non-strings and nil are left alone.
                    return Ok(());
                };
                let Some(new) = r.apply(&s, repl) else {
                    return Ok(());
                };
                set(tcx, t, Value::Str(new.into()))
            }
            Editor::ReplaceAllPatterns(t, keys, r) => {
                let repl = r.replacement.eval(tcx)?;
                let repl = expect_str(&repl)?.to_string();
                let m = tcx.map_mut(t.field)?;
                if *keys {
                    for k in m.keys() {
                        if let Some(new) = r.apply(&k, &repl) {
                            m.rename(&k, new);
                        }
                    }
                } else {
                    m.map_strings(&mut |s| r.apply(s, &repl));
                }
                Ok(())
            }
            Editor::MergeMaps(t, source, strategy) => {
                let src = source.eval(tcx)?.into_owned();
                let Value::Map(entries) = src else {
                    return Err(EvalError::new(format!(
                        "merge_maps: expected a map source but got {}",
                        type_name(&src)
                    )));
                };
                let m = tcx.map_mut(t.field)?;
                for (k, v) in entries {
                    let exists = m.get(&k).is_some();
                    let write = match strategy {
                        Strategy::Insert => !exists,
                        Strategy::Update => exists,
                        Strategy::Upsert => true,
                    };
                    if write {
                        m.put(&k, v)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl Replace {
    /// `s` with every match replaced; `None` when nothing matched.
    pub fn apply(&self, s: &str, replacement: &str) -> Option<String> {
        let out = match self.function {
            None => self.re.replace_all(s, replacement),
            Some(f) => self.re.replace_all(s, |caps: &regex::Captures| {
                let mut expanded = String::new();
                caps.expand(replacement, &mut expanded);
                let hashed = f.apply(&expanded);
                match &self.format {
                    Some(fmt) => fmt.replacen("%s", &hashed, 1),
                    None => hashed,
                }
            }),
        };
        match out {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(n) => Some(n),
        }
    }
}

/// Writes the string `v` at `target` as [`set`] does, keeping the reference where the map
/// can (metric labels).
fn set_shared(tcx: &mut Tcx, target: &CPath, v: Arc<str>) -> Result<(), EvalError> {
    match target.key(tcx)? {
        None => tcx.set(target.field, Value::Str(Cow::Owned(v.to_string()))),
        Some(k) => tcx.map_mut(target.field)?.put_shared(&k, v),
    }
}

/// Writes `v` at `target` (a whole field, or one key of a map).
fn set(tcx: &mut Tcx, target: &CPath, v: Value<'static>) -> Result<(), EvalError> {
    match target.key(tcx)? {
        None => tcx.set(target.field, v),
        Some(k) => {
            if v.is_nil() {
                // set(x, nil) does nothing (the Collector's default, without ottl.set.allowNil).
                return Ok(());
            }
            tcx.map_mut(target.field)?.put(&k, v)
        }
    }
}
