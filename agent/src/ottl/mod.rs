//! OTTL, the OpenTelemetry Transformation Language, as the Collector's `pkg/ottl` documents it
//! (`LANGUAGE.md`, `ottlfuncs/README.md`, `contexts/*/README.md`): statements
//! (`editor(args) [where condition]`) and conditions, parsed and checked once ([`statement`],
//! [`condition`]) and then run on metric data points, metrics, log records, scopes and resources.
//!
//! - `parser.rs`: the grammar on `winnow`; `ast.rs`: its tree.
//! - `compile.rs`: the checker (paths, functions, arguments, literals, regexes) and the
//!   executable form; `eval.rs`: running it.
//! - `paths.rs`: contexts, their paths, and reading/writing them on the agent's data.
//! - `attrs.rs`: the maps editors change (metric labels, OTLP `KeyValue` lists).
//! - `memo.rs`: per-value results of `replace_pattern` (points share attribute values).
//! - `functions/`: editors and converters; `value.rs`: values and comparison rules;
//!   `error.rs`: load-time and run-time errors.
//!
//! Not supported (and why): time-typed values and the time converters (`Now`, `Time`, `Duration`:
//! the agent's data carries Unix nanosecond ints), the `cache` path, lambdas, converters beyond
//! the thirteen listed in `functions/converters.rs`, dynamic regex patterns (patterns must be
//! literals, compiled at load), setting nested keys (`attributes["a"]["b"]`), and paths of
//! higher contexts as write targets.

mod ast;
pub mod attrs;
mod compile;
pub mod error;
mod eval;
pub mod functions;
pub mod memo;
mod parser;
pub mod paths;
pub mod value;

#[cfg(test)]
mod tests;

pub use compile::{condition, statement, Condition, Statement};
pub use error::{EvalError, OttlError};
pub use parser::SyntaxError;
pub use paths::{Context, Env, Subject, Tcx};
pub use value::Value;
