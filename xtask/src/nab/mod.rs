//! `cargo xtask nab`: runs a detector over every file of the NAB corpus through the built
//! `agent detect` (so what is scored is exactly what users run, and xtask does not link the
//! agent), then scores its `anomaly_score` and `alert` columns with NAB's rules ([`score`]).
//!
//! Printed per profile: the score at the threshold NAB's optimiser picks over the whole corpus
//! ("swept"), at the threshold the agent ships (fixed in advance, not swept), and of the
//! `alert` column as it stands (the agent's reports, hold-off included).

pub mod corpus;
pub mod score;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    build::{bin_path, build_ebpf},
    util::{self, cargo, root},
};
use corpus::{Corpus, DataFile};

#[derive(clap::Args)]
pub struct Args {
    /// Detector (`agent detect --list`), or `all` for each in turn.
    #[arg(long, default_value = "ensemble")]
    detector: String,
    /// The NAB directory (default: $NAB_DIR, else `../shared/nab` beside the repository).
    #[arg(long)]
    nab_dir: Option<PathBuf>,
    /// Score an existing results directory in NAB's layout (`<category>/<name>_<file>.csv`
    /// with an `anomaly_score` column, e.g. `../shared/nab/results/windowedGaussian`) instead
    /// of running a detector.
    #[arg(long)]
    results: Option<PathBuf>,
    /// An `agent` binary to run instead of building the release one.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Keep the score files under this directory (`<detector>/<category>/<detector>_<file>.csv`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One detector's scored columns, per file in corpus order.
pub struct Columns {
    pub scores: Vec<Vec<f64>>,
    /// The `alert` column, when the results have one.
    pub alerts: Option<Vec<Vec<f64>>>,
}

pub fn run(args: Args) -> Result<()> {
    let dir = corpus::locate(args.nab_dir.as_deref(), &root())?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let corpus = corpus::load(&dir)?;
    let windows: usize = corpus.files.iter().map(|f| f.windows.len()).sum();
    println!(
        "NAB corpus {}: {} files, {} rows, {} labelled windows",
        dir.display(),
        corpus.files.len(),
        corpus.files.iter().map(|f| f.values.len()).sum::<usize>(),
        windows
    );
    if let Some(results) = &args.results {
        let cols = read_results(&corpus, results, None)?;
        print_header();
        let label = results.file_name().unwrap_or(results.as_os_str());
        print_rows(&corpus, &label.to_string_lossy(), &cols, None);
        return Ok(());
    }
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => {
            build_ebpf()?;
            util::run(cargo().current_dir(root()).args([
                "build",
                "--release",
                "--package",
                "agent",
            ]))?;
            bin_path("release", "agent")
        }
    };
    let listed = list_detectors(&agent)?;
    let chosen: Vec<&(String, f64)> = if args.detector == "all" {
        listed.iter().collect()
    } else {
        vec![listed
            .iter()
            .find(|(n, _)| *n == args.detector)
            .ok_or_else(|| {
                let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
                anyhow!(
                    "unknown detector {:?}\nfix: one of {}, or all",
                    args.detector,
                    names.join(", ")
                )
            })?]
    };
    let (out, temporary) = match &args.out {
        Some(o) => (o.clone(), false),
        None => (
            std::env::temp_dir().join(format!("agent-nab-{}", std::process::id())),
            true,
        ),
    };
    let result = (|| {
        print_header();
        for (name, threshold) in chosen {
            let dest = out.join(name);
            detect_all(&agent, &corpus, name, &dest)?;
            let cols = read_results(&corpus, &dest, Some(name))?;
            print_rows(&corpus, name, &cols, Some(*threshold));
        }
        Ok(())
    })();
    if temporary {
        let _ = std::fs::remove_dir_all(&out);
    } else {
        println!("score files: {}", out.display());
    }
    result
}

/// `agent detect --list`: `(name, shipped threshold)`.
fn list_detectors(agent: &Path) -> Result<Vec<(String, f64)>> {
    let out = Command::new(agent)
        .args(["detect", "--list"])
        .output()
        .with_context(|| format!("cannot run {}", agent.display()))?;
    if !out.status.success() {
        bail!(
            "{} detect --list failed: {}",
            agent.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let name = f.next().unwrap_or_default().to_string();
            let threshold = f.next().and_then(|t| t.parse().ok());
            threshold
                .map(|t| (name, t))
                .ok_or_else(|| anyhow!("unexpected `agent detect --list` line {l:?}"))
        })
        .collect()
}

/// Where a file's results live in NAB's layout: `<dir>/<category>/<detector>_<file>`.
fn results_path(dir: &Path, file: &DataFile, detector: Option<&str>) -> Result<PathBuf> {
    let (category, base) = file.name.split_once('/').unwrap_or(("", &file.name));
    let cat_dir = dir.join(category);
    if let Some(d) = detector {
        return Ok(cat_dir.join(format!("{d}_{base}")));
    }
    // NAB names result directories after the detector: try `<dir name>_<file>` first.
    if let Some(d) = dir.file_name() {
        let p = cat_dir.join(format!("{}_{base}", d.to_string_lossy()));
        if p.is_file() {
            return Ok(p);
        }
    }
    let suffix = format!("_{base}");
    std::fs::read_dir(&cat_dir)
        .with_context(|| format!("{}", cat_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        })
        .ok_or_else(|| anyhow!("no results for {} in {}", file.name, cat_dir.display()))
}

fn detect_all(agent: &Path, corpus: &Corpus, detector: &str, dest: &Path) -> Result<()> {
    for f in &corpus.files {
        let output = results_path(dest, f, Some(detector))?;
        std::fs::create_dir_all(output.parent().expect("has a category"))?;
        let input = corpus.dir.join("data").join(&f.name);
        let out = Command::new(agent)
            .arg("detect")
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(["--detector", detector])
            .output()
            .with_context(|| format!("cannot run {}", agent.display()))?;
        if !out.status.success() {
            bail!(
                "agent detect failed on {}: {}",
                input.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Reads every file's `anomaly_score` (and `alert`, if present) back, checked row for row
/// against the data file's timestamps.
pub fn read_results(corpus: &Corpus, dir: &Path, detector: Option<&str>) -> Result<Columns> {
    let mut scores = Vec::new();
    let mut alerts = Some(Vec::new());
    for f in &corpus.files {
        let p = results_path(dir, f, detector)?;
        let (times, s) = corpus::read_csv(&p, "anomaly_score")?;
        if times != f.times {
            bail!(
                "{}: rows do not match {} ({} vs {} rows)",
                p.display(),
                f.name,
                times.len(),
                f.times.len()
            );
        }
        if let Some(i) = s.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: row {} has a non-finite anomaly_score",
                p.display(),
                i + 2
            );
        }
        scores.push(s);
        alerts = match (alerts, corpus::read_csv(&p, "alert")) {
            (Some(mut a), Ok((_, col))) => {
                a.push(col);
                Some(a)
            }
            _ => None,
        };
    }
    Ok(Columns { scores, alerts })
}

fn print_header() {
    println!(
        "{:<12} {:<20} {:>8} {:>11} {:>8} {:>7}",
        "detector", "profile", "swept", "(threshold)", "shipped", "alert"
    );
}

/// One line per profile: swept score and threshold, score at `shipped`, score of the alerts.
fn print_rows(corpus: &Corpus, name: &str, cols: &Columns, shipped: Option<f64>) {
    let files = &corpus.files;
    for (i, p) in corpus.profiles.iter().enumerate() {
        let (threshold, raw) = score::optimise(files, &cols.scores, p);
        let fixed = shipped.map(|t| {
            score::normalise(
                files,
                p,
                score::raw_score(files, p, |f, r| cols.scores[f][r] >= t),
            )
        });
        let alert = cols
            .alerts
            .as_ref()
            .map(|a| score::normalise(files, p, score::raw_score(files, p, |f, r| a[f][r] >= 0.5)));
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<12} {:<20} {:>8.2} {:>11} {:>8} {:>7}",
            if i == 0 { name } else { "" },
            p.name,
            score::normalise(files, p, raw),
            format!("({threshold:.4})"),
            opt(fixed),
            opt(alert),
        );
    }
}

#[cfg(test)]
mod tests;
