//! `agent detect`: scores a `timestamp,value` CSV file (NAB's format: a header line, then
//! `YYYY-MM-DD HH:MM:SS[.fff]` UTC or Unix seconds, and a number per row) with one detector
//! and the agent's own gate, and writes `timestamp,value,anomaly_score,alert`. Streams: memory
//! does not grow with the file.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use humantime_serde::re::humantime;

use super::{
    gate::{Gate, GateParams},
    Kind,
};

/// Why a file could not be scored. Display: one line of cause, one of fix.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("cannot read {path}: {source}\nfix: give an existing, readable CSV file as --input")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}\nfix: give a writable --output path (its directory must exist)")]
    Create { path: PathBuf, source: io::Error },
    #[error("{path}: the first line is {found:?}, not a header with `timestamp` and `value` columns\nfix: start the file with the line `timestamp,value` (NAB's format)")]
    Header { path: PathBuf, found: String },
    #[error("{path}:{line}: {what} in {text:?}\nfix: each row is `YYYY-MM-DD HH:MM:SS[.fff]` (UTC) or Unix seconds, a comma, and a finite number")]
    Row {
        path: PathBuf,
        line: usize,
        what: String,
        text: String,
    },
    #[error("{path}: {source}\nfix: check the disk and the file")]
    Io { path: PathBuf, source: io::Error },
}

/// What a run did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub rows: usize,
    pub reports: usize,
}

/// Seconds since the Unix epoch of a timestamp: NAB's `2014-04-10 07:15:00` (UTC, `T`, `Z`
/// and fractions accepted) or a plain number of seconds.
pub fn parse_time(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return secs.is_finite().then_some(secs);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

/// Scores `input` into `output` (`-`: standard output) with detector `kind` behind `gate`.
pub fn run(
    input: &Path,
    output: &Path,
    kind: Kind,
    gate: &GateParams,
) -> Result<Summary, OfflineError> {
    let file = File::open(input).map_err(|source| OfflineError::Open {
        path: input.to_path_buf(),
        source,
    })?;
    let out: Box<dyn Write> = if output.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(File::create(output).map_err(|source| OfflineError::Create {
            path: output.to_path_buf(),
            source,
        })?)
    };
    score(BufReader::new(file), BufWriter::new(out), input, kind, gate).map_err(|e| match e {
        // Name the file that failed: the output for write errors.
        OfflineError::Io { path, source } if path.as_os_str().is_empty() => OfflineError::Io {
            path: output.to_path_buf(),
            source,
        },
        e => e,
    })
}

/// The loop behind [`run`], on any reader and writer (`input` names the source in errors;
/// write errors carry an empty path for [`run`] to fill in).
pub fn score(
    reader: impl BufRead,
    mut out: impl Write,
    input: &Path,
    kind: Kind,
    gate: &GateParams,
) -> Result<Summary, OfflineError> {
    let read_err = |source| OfflineError::Io {
        path: input.to_path_buf(),
        source,
    };
    let write_err = |source| OfflineError::Io {
        path: PathBuf::new(),
        source,
    };
    let mut lines = reader.lines();
    let header = lines
        .next()
        .transpose()
        .map_err(read_err)?
        .unwrap_or_default();
    let cols: Vec<&str> = header.split(',').map(|c| c.trim()).collect();
    let (Some(tc), Some(vc)) = (
        cols.iter().position(|c| *c == "timestamp"),
        cols.iter().position(|c| *c == "value"),
    ) else {
        return Err(OfflineError::Header {
            path: input.to_path_buf(),
            found: header,
        });
    };
    writeln!(out, "timestamp,value,anomaly_score,alert").map_err(write_err)?;
    let mut detector = kind.build();
    let mut state = Gate::default();
    let mut summary = Summary {
        rows: 0,
        reports: 0,
    };
    for (i, line) in lines.enumerate() {
        let line = line.map_err(read_err)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| OfflineError::Row {
            path: input.to_path_buf(),
            line: i + 2,
            what: what.to_string(),
            text: line.clone(),
        };
        let fields: Vec<&str> = line.split(',').collect();
        let stamp = fields.get(tc).ok_or_else(|| bad("no timestamp"))?.trim();
        let value = fields.get(vc).ok_or_else(|| bad("no value"))?.trim();
        let t = parse_time(stamp).ok_or_else(|| bad("unreadable timestamp"))?;
        let x: f64 = value
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
            .ok_or_else(|| bad("unreadable or non-finite value"))?;
        let raw = detector.update(t, x);
        let g = state.apply(gate, t, detector.warm(), raw);
        writeln!(out, "{stamp},{value},{},{}", g.score, u8::from(g.report)).map_err(write_err)?;
        summary.rows += 1;
        summary.reports += usize::from(g.report);
    }
    out.flush().map_err(write_err)?;
    Ok(summary)
}

impl Summary {
    /// One line for standard error.
    pub fn line(&self, input: &Path, kind: Kind) -> String {
        format!(
            "{}: {} rows scored with {kind}, {} anomalies reported",
            input.display(),
            self.rows,
            self.reports
        )
    }
}

/// [`run`] with the gate the agent ships (`detection:` defaults: threshold, hold-off, warm-up).
pub fn run_default(input: &Path, output: &Path, kind: Kind) -> Result<Summary, OfflineError> {
    let cfg = super::config::DetectionConfig::default();
    let spec = super::config::SignalSpec::new(super::config::Signal::SyscallRate);
    run(input, output, kind, &cfg.gate(&spec))
}

/// `agent detect --list`: `name<TAB>threshold<TAB>description` per detector.
pub fn list() -> String {
    let threshold = super::config::DetectionConfig::default().threshold;
    Kind::ALL
        .iter()
        .map(|k| format!("{}\t{threshold}\t{}\n", k.name(), k.describe()))
        .collect()
}

/// clap value parser for `--detector`.
pub fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown detector {s:?}; one of: {}", names.join(", "))
    })
}
