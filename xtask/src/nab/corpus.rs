//! The NAB corpus on disk: where it is, its data files, label windows and scoring profiles.
//!
//! Layout (numenta/NAB, as copied to `../shared/nab`): `data/<category>/<file>.csv` with a
//! `timestamp,value` header, `labels/combined_windows.json` (file → `[[start, end], ...]`),
//! `config/profiles.json` (profile → `CostMatrix` with `tpWeight`, `fpWeight`, `fnWeight`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};

/// The environment variable naming the NAB directory (beaten by `--nab-dir`).
pub const ENV: &str = "NAB_DIR";

/// One data file: rows in file order (timestamps may repeat or step back: NAB keeps them).
pub struct DataFile {
    /// Path relative to `data/`, e.g. `realKnownCause/nyc_taxi.csv` (the labels' key).
    pub name: String,
    /// Timestamps in microseconds since 1970-01-01 (no time zone: NAB's are naive).
    pub times: Vec<i64>,
    pub values: Vec<f64>,
    /// Labelled anomaly windows, `(start, end)` in microseconds, in file order.
    pub windows: Vec<(i64, i64)>,
}

/// A scoring profile's weights (`config/profiles.json` → `CostMatrix`).
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

pub struct Corpus {
    pub dir: PathBuf,
    pub files: Vec<DataFile>,
    /// standard, reward_low_FP_rate, reward_low_FN_rate (in that order).
    pub profiles: Vec<Profile>,
}

/// The NAB directory: `flag`, else `$NAB_DIR`, else `<repo>/../shared/nab` (CI and the team's
/// machine keep a `shared/` beside the checkout; a worktree's `..` is the same place).
pub fn locate(flag: Option<&Path>, repo_root: &Path) -> Result<PathBuf> {
    let (dir, how) = match (flag, std::env::var_os(ENV)) {
        (Some(f), _) => (f.to_path_buf(), "--nab-dir"),
        (None, Some(e)) => (PathBuf::from(e), ENV),
        (None, None) => (repo_root.join("../shared/nab"), "the default ../shared/nab"),
    };
    if !dir.join("data").is_dir() || !dir.join("labels/combined_windows.json").is_file() {
        bail!(
            "no NAB corpus at {} ({how}): data/ or labels/combined_windows.json is missing\n\
             fix: clone numenta/NAB (or copy its data/, labels/, config/) there, or point \
             --nab-dir or {ENV} at it",
            dir.display()
        );
    }
    Ok(dir)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]` (NAB's format; `T` accepted) to microseconds since the
/// epoch, no time zone.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut micros = 0i64;
    if b.len() > 19 {
        let frac = s.get(20..)?;
        if b[19] != b'.' || frac.is_empty() || frac.len() > 9 {
            return None;
        }
        let digits: i64 = frac.parse().ok()?;
        micros = digits * 10i64.pow(6u32.saturating_sub(frac.len() as u32))
            / 10i64.pow((frac.len() as u32).saturating_sub(6));
    }
    Some((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads a `timestamp,value[,...]` file with a header; `column` names the value column read
/// (`value` for data, `anomaly_score` or `alert` for results). Returns timestamps (µs) and
/// values.
pub fn read_csv(path: &Path, column: &str) -> Result<(Vec<i64>, Vec<f64>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split(',')
        .position(|h| h.trim() == column)
        .ok_or_else(|| anyhow!("{}: no `{column}` column in {header:?}", path.display()))?;
    let (mut times, mut values) = (Vec::new(), Vec::new());
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let bad = || anyhow!("{}:{}: cannot read {line:?}", path.display(), i + 2);
        let t = parse_timestamp(fields[0]).ok_or_else(bad)?;
        let v: f64 = fields
            .get(col)
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(bad)?;
        times.push(t);
        values.push(v);
    }
    Ok((times, values))
}

/// Loads every data file named in the labels, in the labels' (sorted) order.
pub fn load(dir: &Path) -> Result<Corpus> {
    let labels_path = dir.join("labels/combined_windows.json");
    let labels: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(
        &std::fs::read_to_string(&labels_path)
            .with_context(|| format!("{}", labels_path.display()))?,
    )
    .with_context(|| format!("{}: not NAB's label windows", labels_path.display()))?;
    let mut files = Vec::new();
    for (name, windows) in labels {
        let (times, values) = read_csv(&dir.join("data").join(&name), "value")?;
        let windows = windows
            .iter()
            .map(|(a, b)| {
                let p = |s: &str| {
                    parse_timestamp(s)
                        .ok_or_else(|| anyhow!("{}: bad window time {s:?}", labels_path.display()))
                };
                Ok((p(a)?, p(b)?))
            })
            .collect::<Result<Vec<_>>>()?;
        for &(a, b) in &windows {
            if !times.contains(&a) || !times.contains(&b) {
                bail!("{name}: window ({a}, {b}) does not start and end on rows of the file");
            }
        }
        files.push(DataFile {
            name,
            times,
            values,
            windows,
        });
    }
    Ok(Corpus {
        dir: dir.to_path_buf(),
        files,
        profiles: profiles(dir)?,
    })
}

/// The three profiles from `config/profiles.json` (NAB's published weights if it is absent).
fn profiles(dir: &Path) -> Result<Vec<Profile>> {
    let names = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];
    let path = dir.join("config/profiles.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        let w = [(1.0, 0.11, 1.0), (1.0, 0.22, 1.0), (1.0, 0.11, 2.0)];
        return Ok(names
            .iter()
            .zip(w)
            .map(|(n, (tp, fp, fn_))| Profile {
                name: n.to_string(),
                tp,
                fp,
                fn_,
            })
            .collect());
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    names
        .iter()
        .map(|n| {
            let m = &v[n]["CostMatrix"];
            let w = |k: &str| {
                m[k].as_f64()
                    .ok_or_else(|| anyhow!("{}: {n}.CostMatrix.{k} missing", path.display()))
            };
            Ok(Profile {
                name: n.to_string(),
                tp: w("tpWeight")?,
                fp: w("fpWeight")?,
                fn_: w("fnWeight")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("2014-04-10 07:15:00.000000"),
            parse_timestamp("2014-04-10 07:15:00")
        );
        // 2014-04-10 07:15:00 UTC is 1397114100 (date -u -d '2014-04-10 07:15:00' +%s).
        assert_eq!(
            parse_timestamp("2014-04-10 07:15:00"),
            Some(1_397_114_100_000_000)
        );
        assert_eq!(
            parse_timestamp("2000-02-29T12:00:01.5"),
            Some(951_825_601_500_000)
        );
        assert_eq!(parse_timestamp("2014-13-10 07:15:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
