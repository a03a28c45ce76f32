//! Rotating JSON lines files under the output directory: the exporter's default when no
//! collector is configured (`metrics.jsonl`, `logs.jsonl`, OTLP JSON, one request per line).
//!
//! Invariants: a line is never split across files, so a file only exceeds `max_file_bytes`
//! when a single line is larger than that (the line then gets a file of its own); at most
//! `max_files` files exist per name (the current one plus `max_files - 1` rotated ones, oldest
//! deleted); a write error is returned with what was written before it, never a panic.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::metrics::model::Batch;

/// Name of the current file in the output directory.
pub const FILE_NAME: &str = "metrics.jsonl";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSettings {
    pub dir: PathBuf,
    pub interval: Duration,
    /// Rotate before a line would make the file larger than this.
    pub max_file_bytes: u64,
    /// Files kept in all, current included (0 is taken as 1).
    pub max_files: u32,
}

impl OutputSettings {
    /// `<dir>/metrics.jsonl`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }
}

/// What one write cycle wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub batches: u64,
    pub bytes: u64,
}

/// A failed write cycle, with what was written before the failure.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
    pub written: Written,
}

/// Appends one JSON line per batch to `<dir>/metrics.jsonl` (the agent's own model).
pub fn write_batches(cfg: &OutputSettings, batches: &[Arc<Batch>]) -> Result<Written, WriteError> {
    let mut lines = Vec::with_capacity(batches.len());
    for batch in batches {
        lines.push(serde_json::to_vec(&**batch).map_err(|e| WriteError {
            path: cfg.path(),
            source: e.into(),
            written: Written::default(),
        })?);
    }
    append_lines(cfg, FILE_NAME, lines)
}

/// Appends each of `lines` (without its newline) to `<dir>/<name>`, creating the directory and
/// rotating as needed. Blocking.
pub fn append_lines(
    cfg: &OutputSettings,
    name: &str,
    lines: impl IntoIterator<Item = Vec<u8>>,
) -> Result<Written, WriteError> {
    let path = cfg.dir.join(name);
    let mut written = Written::default();
    let fail = |source: io::Error, written: Written| WriteError {
        path: path.clone(),
        source,
        written,
    };
    fs::create_dir_all(&cfg.dir).map_err(|e| fail(e, written))?;
    let (mut file, mut size) = open(&path).map_err(|e| fail(e, written))?;
    for mut line in lines {
        line.push(b'\n');
        let len = line.len() as u64;
        if size > 0 && size + len > cfg.max_file_bytes {
            drop(file);
            rotate(&cfg.dir, name, cfg.max_files).map_err(|e| fail(e, written))?;
            (file, size) = open(&path).map_err(|e| fail(e, written))?;
        }
        file.write_all(&line).map_err(|e| fail(e, written))?;
        size += len;
        written.batches += 1;
        written.bytes += len;
    }
    file.flush().map_err(|e| fail(e, written))?;
    Ok(written)
}

fn open(path: &Path) -> io::Result<(File, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let size = f.metadata()?.len();
    Ok((f, size))
}

fn rotated(dir: &Path, name: &str, n: u32) -> PathBuf {
    dir.join(format!("{name}.{n}"))
}

/// `name` → `.1` → `.2` …, keeping `max_files` files in all (the current one is gone
/// afterwards and is recreated by the next open).
fn rotate(dir: &Path, name: &str, max_files: u32) -> io::Result<()> {
    let keep_rotated = max_files.max(1) - 1;
    let current = dir.join(name);
    if keep_rotated == 0 {
        return remove_if_exists(&current);
    }
    remove_if_exists(&rotated(dir, name, keep_rotated))?;
    for n in (1..keep_rotated).rev() {
        let from = rotated(dir, name, n);
        if from.exists() {
            fs::rename(&from, rotated(dir, name, n + 1))?;
        }
    }
    fs::rename(&current, rotated(dir, name, 1))
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `bytes` as `dir/name` (through a temporary file and a rename) and deletes the oldest
/// files of `dir` beyond `keep` (by name: names must sort by time).
pub fn write_rotating(dir: &Path, name: &str, bytes: &[u8], keep: usize) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, dir.join(name))?;
    let mut names: Vec<_> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep.max(1));
    for n in &names[..excess] {
        let _ = fs::remove_file(dir.join(n));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::fixtures::errors_batch as batch;

    fn settings(
        dir: &Path,
        interval: Duration,
        max_file_bytes: u64,
        max_files: u32,
    ) -> OutputSettings {
        OutputSettings {
            dir: dir.to_path_buf(),
            interval,
            max_file_bytes,
            max_files,
        }
    }

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn rotation_keeps_max_files_each_within_max_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&batch("syscalls", 1.0)).unwrap().len() as u64 + 1;
        let max = one * 5 / 2; // two lines fit, three do not
        let cfg = settings(tmp.path(), Duration::from_secs(1), max, 3);
        let b: Vec<Arc<Batch>> = vec![Arc::new(batch("syscalls", 1.0))];
        let mut total = 0;
        for _ in 0..11 {
            total += write_batches(&cfg, &b).unwrap().batches;
        }
        assert_eq!(total, 11);
        let mut names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["metrics.jsonl", "metrics.jsonl.1", "metrics.jsonl.2"]
        );
        for n in &names {
            let p = tmp.path().join(n);
            assert!(fs::metadata(&p).unwrap().len() <= max, "{n}");
            assert!(!lines(&p).is_empty(), "{n}");
        }
        // 11 lines, two per file: the current file holds the 11th alone.
        assert_eq!(lines(&tmp.path().join("metrics.jsonl")).len(), 1);
        assert_eq!(lines(&tmp.path().join("metrics.jsonl.1")).len(), 2);

        // max_files 1: the file is truncated instead of rotated.
        let tmp1 = tempfile::tempdir().unwrap();
        let cfg1 = settings(tmp1.path(), Duration::from_secs(1), max, 1);
        for _ in 0..5 {
            write_batches(&cfg1, &b).unwrap();
        }
        assert_eq!(fs::read_dir(tmp1.path()).unwrap().count(), 1);
        assert_eq!(lines(&tmp1.path().join(FILE_NAME)).len(), 1);
    }

    #[test]
    fn a_line_larger_than_max_bytes_gets_its_own_file() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = settings(tmp.path(), Duration::from_secs(1), 10, 2);
        let b: Vec<Arc<Batch>> = vec![Arc::new(batch("a", 1.0)), Arc::new(batch("b", 2.0))];
        let w = write_batches(&cfg, &b).unwrap();
        assert_eq!(w.batches, 2);
        let cur = lines(&tmp.path().join(FILE_NAME));
        let old = lines(&tmp.path().join("metrics.jsonl.1"));
        assert_eq!((old.len(), cur.len()), (1, 1));
        assert_eq!(old[0]["source"], "a");
        assert_eq!(cur[0]["source"], "b");
    }
}
