//! The `transform:` and `filter:` config sections, laid out as the Collector's transform and
//! filter processors (`processor/transformprocessor`, `processor/filterprocessor`), and their
//! compilation into a [`Pipeline`] (every statement and condition parsed and checked once).
//!
//! ```yaml
//! transform:
//!   error_mode: ignore            # ignore | silent | propagate
//!   metric_statements:            # contexts resource, scope, metric, datapoint
//!     - context: datapoint
//!       conditions: []            # optional: the group runs where any of them holds
//!       statements:
//!         - set(attributes["x"], "y") where attributes["z"] == "w"
//!   log_statements: []            # contexts resource, scope, log
//!   profile_statements: []        # context resource (each profiled process's resource)
//! filter:
//!   error_mode: ignore
//!   metrics:
//!     metric: []                  # a metric matching any condition is dropped
//!     datapoint: []               # a data point matching any condition is dropped
//!   logs:
//!     log_record: []
//! ```

use serde::{Deserialize, Serialize};

use crate::ottl::{self, Condition, Context, OttlError, Statement};

/// What a statement or condition that fails on an item does (the Collector's `error_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    /// Log the error and go on with the next statement (a failed filter condition is false).
    #[default]
    Ignore,
    /// As `ignore`, without logging.
    Silent,
    /// The export of that signal is dropped this time, and the error logged.
    Propagate,
}

/// One group of statements in one context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementGroup {
    pub context: Context,
    /// The group runs on an item only where one of these holds (none: always).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    pub statements: Vec<String>,
    /// Overrides the section's `error_mode` for this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_mode: Option<ErrorMode>,
}

/// `transform:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformConfig {
    pub error_mode: ErrorMode,
    pub metric_statements: Vec<StatementGroup>,
    pub log_statements: Vec<StatementGroup>,
    pub profile_statements: Vec<StatementGroup>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricFilters {
    pub metric: Vec<String>,
    pub datapoint: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFilters {
    pub log_record: Vec<String>,
}

/// `filter:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    pub error_mode: ErrorMode,
    pub metrics: MetricFilters,
    pub logs: LogFilters,
}

/// A compiled group.
#[derive(Debug)]
pub struct Group {
    pub context: Context,
    pub conditions: Vec<Condition>,
    pub statements: Vec<Statement>,
    pub error_mode: ErrorMode,
}

/// Every statement and condition of both sections, ready to run.
#[derive(Debug, Default)]
pub struct Pipeline {
    pub metric_groups: Vec<Group>,
    pub log_groups: Vec<Group>,
    pub profile_groups: Vec<Group>,
    pub metric_filters: Vec<Condition>,
    pub datapoint_filters: Vec<Condition>,
    pub log_filters: Vec<Condition>,
    pub filter_mode: ErrorMode,
    /// Every data point statement and condition (groups and filters) depends on the series
    /// alone (see `ottl::Statement::per_series`) and there are at least [`CACHE_MIN`] of
    /// them: their outcome per series is kept between exports (`cache.rs`). Decided once here.
    pub points_per_series: bool,
}

impl Pipeline {
    /// Whether metrics pass unchanged.
    pub fn metrics_unchanged(&self) -> bool {
        self.metric_groups.is_empty()
            && self.metric_filters.is_empty()
            && self.datapoint_filters.is_empty()
    }

    pub fn logs_unchanged(&self) -> bool {
        self.log_groups.is_empty() && self.log_filters.is_empty()
    }
}

/// Fewest data point statements and conditions for which outcomes are kept per series. A kept
/// outcome is not free (the attributes are compared and the result copied): measured with
/// `agent export-bench --transform` (CPU 1, medians of 9 rounds), one statement alone ran in
/// 165-248 ns/point and took 194-267 from the cache, the five of the bench 336-352 and 240-262.
pub const CACHE_MIN: usize = 3;

/// A statement or condition that does not load: where (the dotted path with indices, e.g.
/// `transform.metric_statements[0].statements[1]`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub problem: String,
    pub fix: String,
}

fn ottl_invalid(path: String, text: &str, e: &OttlError) -> Invalid {
    Invalid {
        path,
        problem: format!("{e} in `{text}`"),
        fix: format!(
            "correct the statement at that column (OTTL as the Collector documents it: \
             editors {}; converters {}; see README, Transform and filter)",
            ottl::functions::editors::NAMES.join(", "),
            ottl::functions::converters::NAMES.join(", ")
        ),
    }
}

fn group(
    path: &str,
    g: &StatementGroup,
    allowed: &[Context],
    default_mode: ErrorMode,
) -> Result<Group, Invalid> {
    if !allowed.contains(&g.context) {
        return Err(Invalid {
            path: format!("{path}.context"),
            problem: format!("context {} is not available here", g.context.as_str()),
            fix: format!(
                "use {}",
                allowed
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let conditions = g
        .conditions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            ottl::condition(c, g.context)
                .map_err(|e| ottl_invalid(format!("{path}.conditions[{i}]"), c, &e))
        })
        .collect::<Result<_, _>>()?;
    let statements = g
        .statements
        .iter()
        .enumerate()
        .map(|(i, s)| {
            ottl::statement(s, g.context)
                .map_err(|e| ottl_invalid(format!("{path}.statements[{i}]"), s, &e))
        })
        .collect::<Result<_, _>>()?;
    Ok(Group {
        context: g.context,
        conditions,
        statements,
        error_mode: g.error_mode.unwrap_or(default_mode),
    })
}

fn conditions(path: &str, list: &[String], ctx: Context) -> Result<Vec<Condition>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            ottl::condition(c, ctx).map_err(|e| ottl_invalid(format!("{path}[{i}]"), c, &e))
        })
        .collect()
}

impl Pipeline {
    /// Parses and checks every statement and condition; the first one that fails.
    pub fn compile(t: &TransformConfig, f: &FilterConfig) -> Result<Pipeline, Invalid> {
        use Context::*;
        let groups = |name: &str, list: &[StatementGroup], allowed: &[Context]| {
            list.iter()
                .enumerate()
                .map(|(i, g)| group(&format!("transform.{name}[{i}]"), g, allowed, t.error_mode))
                .collect::<Result<Vec<_>, _>>()
        };
        let metric_groups = groups(
            "metric_statements",
            &t.metric_statements,
            &[Resource, Scope, Metric, Datapoint],
        )?;
        let datapoint_filters =
            conditions("filter.metrics.datapoint", &f.metrics.datapoint, Datapoint)?;
        let point_groups = || metric_groups.iter().filter(|g| g.context == Datapoint);
        let points_per_series = datapoint_filters.iter().all(Condition::per_series)
            && point_groups().all(|g| {
                g.conditions.iter().all(Condition::per_series)
                    && g.statements.iter().all(Statement::per_series)
            })
            && datapoint_filters.len()
                + point_groups()
                    .map(|g| g.conditions.len() + g.statements.len())
                    .sum::<usize>()
                >= CACHE_MIN;
        Ok(Pipeline {
            metric_groups,
            log_groups: groups("log_statements", &t.log_statements, &[Resource, Scope, Log])?,
            profile_groups: groups("profile_statements", &t.profile_statements, &[Resource])?,
            metric_filters: conditions("filter.metrics.metric", &f.metrics.metric, Metric)?,
            datapoint_filters,
            log_filters: conditions("filter.logs.log_record", &f.logs.log_record, Log)?,
            filter_mode: f.error_mode,
            points_per_series,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_loads_and_errors_name_the_item() {
        let t: TransformConfig = serde_yaml_ng::from_str(
            r#"
metric_statements:
  - context: datapoint
    statements:
      - set(attributes["process.executable.name"], SHA256(attributes["process.executable.name"])) where attributes["process.executable.name"] == "secretproc"
"#,
        )
        .unwrap();
        let p = Pipeline::compile(&t, &FilterConfig::default()).unwrap();
        assert_eq!(p.metric_groups[0].statements.len(), 1);
        assert!(p.logs_unchanged() && !p.metrics_unchanged());

        let mut bad = t.clone();
        bad.metric_statements[0]
            .statements
            .push("set(attributes[\"a\"], )".into());
        let e = Pipeline::compile(&bad, &FilterConfig::default()).unwrap_err();
        assert_eq!(e.path, "transform.metric_statements[0].statements[1]");
        assert_eq!(
            e.problem,
            "column 22: expected a value (path, literal, converter, list or map), found ')' in `set(attributes[\"a\"], )`"
        );
        bad.metric_statements[0].context = Context::Log;
        let e = Pipeline::compile(&bad, &FilterConfig::default()).unwrap_err();
        assert_eq!(e.path, "transform.metric_statements[0].context");
        assert_eq!(e.fix, "use resource, scope, metric, datapoint");

        let f: FilterConfig =
            serde_yaml_ng::from_str("metrics:\n  metric:\n    - name == \"x\"\n    - name ==\n")
                .unwrap();
        let e = Pipeline::compile(&TransformConfig::default(), &f).unwrap_err();
        assert_eq!(e.path, "filter.metrics.metric[1]");
    }
}
