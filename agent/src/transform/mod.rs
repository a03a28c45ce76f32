//! The programmable data plane: the `transform:` and `filter:` sections applied to everything
//! that leaves the agent — OTLP metrics and logs, the local JSON lines files (the same requests),
//! `/metrics`, and the resources of exported profiles. `/status` and `/debug/*` (local
//! diagnostics) see the data as the probes made it.
//!
//! - `config.rs`: the sections and their compilation into a [`Pipeline`] (checked at load).
//! - `metrics.rs`: the transformed view of a metric snapshot; `merge.rs`: identical points
//!   merged; `cache.rs`: per-series outcomes of the data point statements, kept between
//!   exports.
//! - `logs.rs`: log records in their OTLP requests; `profiles.rs`: profile resources.
//!
//! Invariants: one [`Transformer`] per agent, shared by the exporter and the status server and
//! swapped whole on reload; each export transforms each signal once (filters first, then the
//! statement groups in config order, resource and scope groups before the others); with no
//! statements and no filters the data passes untouched (no copy).

pub mod cache;
pub mod config;
pub mod logs;
mod merge;
pub mod metrics;
pub mod profiles;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::common::v1::KeyValue;

pub use config::{ErrorMode, FilterConfig, Pipeline, TransformConfig};

use crate::ottl::{Env, EvalError, Subject, Tcx};
use config::Group;

/// A statement or condition failed under `error_mode: propagate`: the signal's export is
/// dropped this time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{signal} export dropped (error_mode: propagate): `{text}`: {error}")]
pub struct Propagated {
    pub signal: &'static str,
    pub text: String,
    pub error: String,
}

/// Items filtered out and statement errors since start, per signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub dropped: u64,
    pub errors: u64,
}

/// Who takes a metric view: each keeps its own merged-series state, so one consumer's
/// snapshots are seen in order (a scrape between two exports cannot look like a reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumer {
    /// The exporter (OTLP, JSON lines files).
    Export = 0,
    /// `/metrics`.
    Scrape = 1,
}

/// The running pipeline, shared by every output.
pub struct Transformer {
    pipeline: RwLock<Arc<Pipeline>>,
    merge: [Mutex<merge::MergeState>; 2],
    /// Per consumer, taken under its `merge` lock.
    cache: [Mutex<cache::SeriesCache>; 2],
    /// Whether the per-series cache is used (off only to measure it: [`Transformer::uncached`]).
    cached: bool,
    /// The exporter's resource, so `/metrics` statements read the same `resource.attributes`.
    resource: RwLock<opentelemetry_proto::tonic::resource::v1::Resource>,
    counts: Mutex<HashMap<&'static str, Counts>>,
    /// When each failing statement was last logged (one line per statement per minute).
    logged: Mutex<HashMap<String, Instant>>,
}

const LOG_EVERY: Duration = Duration::from_secs(60);

impl Transformer {
    pub fn new(p: Pipeline) -> Arc<Transformer> {
        Arc::new(Transformer {
            pipeline: RwLock::new(Arc::new(p)),
            merge: Default::default(),
            cache: Default::default(),
            cached: true,
            resource: Default::default(),
            counts: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
        })
    }

    /// As [`Transformer::new`] without the per-series cache (the bench's comparison).
    pub fn uncached(p: Pipeline) -> Arc<Transformer> {
        let mut t = Self::new(p);
        Arc::get_mut(&mut t).expect("not shared yet").cached = false;
        t
    }

    /// No statements, no filters.
    pub fn passthrough() -> Arc<Transformer> {
        Self::new(Pipeline::default())
    }

    /// Replaces the pipeline (config reload); merged-series state and the per-series cache
    /// start over (the cache keeps its memory for the next fill, and also checks the pipeline
    /// it was filled with on every export).
    pub fn set(&self, p: Pipeline) {
        *self.pipeline.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
        for m in &self.merge {
            *m.lock().unwrap_or_else(|e| e.into_inner()) = merge::MergeState::default();
        }
        for c in &self.cache {
            c.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
    }

    /// The resource the exporter sends (set when it starts).
    pub fn set_resource(&self, r: opentelemetry_proto::tonic::resource::v1::Resource) {
        *self.resource.write().unwrap_or_else(|e| e.into_inner()) = r;
    }

    pub fn resource(&self) -> opentelemetry_proto::tonic::resource::v1::Resource {
        self.resource
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.pipeline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Items dropped by filters and statement errors per signal, since start.
    pub fn counts(&self) -> HashMap<&'static str, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, signal: &'static str, dropped: u64, errors: u64) {
        if dropped == 0 && errors == 0 {
            return;
        }
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let e = c.entry(signal).or_default();
        e.dropped += dropped;
        e.errors += errors;
    }

    fn log_error(&self, signal: &str, text: &str, err: &EvalError) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let due = logged
            .get(text)
            .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY);
        if due {
            logged.insert(text.to_string(), now);
            tracing::warn!(
                signal,
                "transform: `{text}` failed: {err} (error_mode ignore: the item goes on; logged once a minute per statement)"
            );
        }
    }
}

/// Outcome bookkeeping of one signal's run.
pub(crate) struct Run<'a> {
    pub t: &'a Transformer,
    pub signal: &'static str,
    pub dropped: u64,
    pub errors: u64,
}

impl<'a> Run<'a> {
    pub fn new(t: &'a Transformer, signal: &'static str) -> Self {
        Run {
            t,
            signal,
            dropped: 0,
            errors: 0,
        }
    }

    /// Handles an error by `mode`: `Err` only under propagate.
    pub fn error(&mut self, mode: ErrorMode, text: &str, e: EvalError) -> Result<(), Propagated> {
        self.errors += 1;
        match mode {
            ErrorMode::Ignore => {
                self.t.log_error(self.signal, text, &e);
                Ok(())
            }
            ErrorMode::Silent => Ok(()),
            ErrorMode::Propagate => Err(Propagated {
                signal: self.signal,
                text: text.to_string(),
                error: e.0,
            }),
        }
    }

    /// Runs one group on one item (the group's conditions, then each statement).
    pub fn group(&mut self, g: &Group, tcx: &mut Tcx) -> Result<(), Propagated> {
        if !g.conditions.is_empty() {
            let mut any = false;
            for c in &g.conditions {
                match c.eval(tcx) {
                    Ok(true) => {
                        any = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => self.error(g.error_mode, &c.text, e)?,
                }
            }
            if !any {
                return Ok(());
            }
        }
        for s in &g.statements {
            if let Err(e) = s.execute(tcx) {
                self.error(g.error_mode, &s.text, e)?;
            }
        }
        Ok(())
    }

    /// Whether any filter condition drops the item.
    pub fn filtered(
        &mut self,
        conds: &[crate::ottl::Condition],
        mode: ErrorMode,
        tcx: &Tcx,
    ) -> Result<bool, Propagated> {
        for c in conds {
            match c.eval(tcx) {
                Ok(true) => {
                    self.dropped += 1;
                    return Ok(true);
                }
                Ok(false) => {}
                Err(e) => self.error(mode, &c.text, e)?,
            }
        }
        Ok(false)
    }

    pub fn finish(self) {
        self.t.count(self.signal, self.dropped, self.errors);
    }
}

/// Applies the resource groups of `groups` to `attrs`.
pub(crate) fn resource_groups(
    run: &mut Run,
    groups: &[Group],
    attrs: &mut Vec<KeyValue>,
    now: u64,
) -> Result<(), Propagated> {
    for g in groups
        .iter()
        .filter(|g| g.context == crate::ottl::Context::Resource)
    {
        let mut tcx = Tcx {
            touched: false,
            subject: Subject::Resource(attrs),
            env: Env {
                resource: &[],
                scope: None,
                metric: None,
                now_unix_nano: now,
            },
        };
        run.group(g, &mut tcx)?;
    }
    Ok(())
}
