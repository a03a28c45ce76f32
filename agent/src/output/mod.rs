//! The local data writer used when no collector is configured: every interval (and once at
//! shutdown) appends the store's latest batches as JSON lines to `<dir>/metrics.jsonl`, with
//! size-based rotation (`metrics.jsonl.1`, `.2`, ...).
//!
//! Invariants: a write error never stops the agent — it marks the exporter unhealthy (with the
//! error) and the next interval tries again; a line is never split across files, so a file only
//! exceeds `max_file_bytes` when a single line is larger than that (the line then gets a file of
//! its own); at most `max_files` files exist in all (the current one plus `max_files - 1`
//! rotated ones, oldest deleted).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use crate::{
    metrics::{model::Batch, Store},
    status::state::AgentState,
};

/// Name of the current file in the output directory.
pub const FILE_NAME: &str = "metrics.jsonl";

/// The smallest interval honoured (a zero interval would spin).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

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

/// Writes every interval and once when `shutdown` turns true (or its sender goes away).
pub async fn run(
    cfg: OutputSettings,
    store: Arc<Store>,
    state: Arc<AgentState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let path = cfg.path();
    state.update_exporter(|e| {
        e.kind = "file".to_string();
        e.target = path.display().to_string();
    });
    let period = cfg.interval.max(MIN_INTERVAL);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => cycle(&cfg, &store, &state, &mut failing).await,
            r = shutdown.changed() => if r.is_err() { break },
        }
    }
    cycle(&cfg, &store, &state, &mut failing).await;
}

/// One write of the current snapshot; updates the exporter status. `failing` holds the last
/// error logged, so a persisting error is logged once, not every interval.
async fn cycle(
    cfg: &OutputSettings,
    store: &Store,
    state: &AgentState,
    failing: &mut Option<String>,
) {
    let batches = store.snapshot();
    let c = cfg.clone();
    let result = match tokio::task::spawn_blocking(move || write_batches(&c, &batches)).await {
        Ok(r) => r,
        Err(e) => Err(WriteError {
            path: cfg.path(),
            source: io::Error::other(format!("writer task failed: {e}")),
            written: Written::default(),
        }),
    };
    let target = cfg.path().display().to_string();
    match result {
        Ok(w) => {
            if failing.take().is_some() {
                tracing::info!(path = %target, "output writes succeed again");
            }
            state.update_exporter(|e| {
                e.kind = "file".to_string();
                e.target = target;
                e.healthy = Some(true);
                e.last_error = None;
                e.batches_written += w.batches;
                e.bytes_written += w.bytes;
                e.last_success = Some(SystemTime::now());
            });
        }
        Err(err) => {
            let msg = err.to_string();
            if failing.as_deref() != Some(msg.as_str()) {
                tracing::warn!(
                    "{msg} (the agent keeps running; retrying every {:?})",
                    cfg.interval
                );
            } else {
                tracing::debug!("{msg}");
            }
            state.update_exporter(|e| {
                e.kind = "file".to_string();
                e.target = target;
                e.healthy = Some(false);
                e.last_error = Some(msg.clone());
                e.batches_written += err.written.batches;
                e.bytes_written += err.written.bytes;
            });
            *failing = Some(msg);
        }
    }
}

/// Appends one JSON line per batch to `<dir>/metrics.jsonl`, creating the directory and
/// rotating as needed. Blocking.
pub fn write_batches(cfg: &OutputSettings, batches: &[Arc<Batch>]) -> Result<Written, WriteError> {
    let path = cfg.path();
    let mut written = Written::default();
    let fail = |source: io::Error, written: Written| WriteError {
        path: path.clone(),
        source,
        written,
    };
    fs::create_dir_all(&cfg.dir).map_err(|e| fail(e, written))?;
    let (mut file, mut size) = open(&path).map_err(|e| fail(e, written))?;
    for batch in batches {
        let mut line = serde_json::to_vec(&**batch).map_err(|e| fail(e.into(), written))?;
        line.push(b'\n');
        let len = line.len() as u64;
        if size > 0 && size + len > cfg.max_file_bytes {
            drop(file);
            rotate(&cfg.dir, cfg.max_files).map_err(|e| fail(e, written))?;
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

fn rotated(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{FILE_NAME}.{n}"))
}

/// `metrics.jsonl` → `.1` → `.2` …, keeping `max_files` files in all (the current one is gone
/// afterwards and is recreated by the next open).
fn rotate(dir: &Path, max_files: u32) -> io::Result<()> {
    let keep_rotated = max_files.max(1) - 1;
    let current = dir.join(FILE_NAME);
    if keep_rotated == 0 {
        return remove_if_exists(&current);
    }
    remove_if_exists(&rotated(dir, keep_rotated))?;
    for n in (1..keep_rotated).rev() {
        let from = rotated(dir, n);
        if from.exists() {
            fs::rename(&from, rotated(dir, n + 1))?;
        }
    }
    fs::rename(&current, rotated(dir, 1))
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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

    #[tokio::test]
    async fn writes_json_lines_at_interval_and_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out/nested");
        let store = Store::new();
        let state = Arc::new(AgentState::new("h".into()));
        store.publish(batch("syscalls", 1.0));
        store.publish(batch("agent", 2.0));
        let (tx, rx) = watch::channel(false);
        let cfg = settings(&dir, Duration::from_millis(50), 1 << 20, 3);
        let task = tokio::spawn(run(cfg, store.clone(), state.clone(), rx));

        // The interval writes without waiting for shutdown.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while state.exporter().batches_written < 2 {
            assert!(tokio::time::Instant::now() < deadline, "no interval write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!lines(&dir.join(FILE_NAME)).is_empty());
        tx.send(true).unwrap();
        task.await.unwrap();

        let l = lines(&dir.join(FILE_NAME));
        assert!(l.len() >= 4 && l.len().is_multiple_of(2), "{}", l.len());
        assert_eq!(l[0]["source"], "agent");
        assert_eq!(l[1]["source"], "syscalls");
        assert_eq!(
            l[1]["families"][0]["desc"]["name"],
            "process.syscall.errors"
        );
        assert_eq!(l[1]["families"][0]["points"][0]["value"]["counter"], 1.0);
        assert!(l[1]["time"].as_u64().unwrap() > 0);

        let e = state.exporter();
        assert_eq!(e.healthy, Some(true));
        assert_eq!(e.kind, "file");
        assert_eq!(e.target, dir.join(FILE_NAME).display().to_string());
        assert_eq!(e.batches_written, l.len() as u64);
        assert_eq!(
            e.bytes_written,
            fs::metadata(dir.join(FILE_NAME)).unwrap().len()
        );
        assert!(e.last_error.is_none() && e.last_success.is_some());
    }

    #[tokio::test]
    async fn shutdown_writes_once_even_before_the_first_interval() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new();
        let state = Arc::new(AgentState::new("h".into()));
        store.publish(batch("syscalls", 1.0));
        let (tx, rx) = watch::channel(false);
        let cfg = settings(tmp.path(), Duration::from_secs(3600), 1 << 20, 3);
        let task = tokio::spawn(run(cfg, store, state.clone(), rx));
        drop(tx); // A dropped sender is a shutdown too.
        task.await.unwrap();
        assert_eq!(lines(&tmp.path().join(FILE_NAME)).len(), 1);
        assert_eq!(state.exporter().batches_written, 1);
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

    #[tokio::test]
    async fn unwritable_dir_marks_exporter_unhealthy_and_keeps_running() {
        let tmp = tempfile::tempdir().unwrap();
        // A regular file as parent: fails even for root.
        let blocker = tmp.path().join("file");
        fs::write(&blocker, "x").unwrap();
        let dir = blocker.join("out");
        let store = Store::new();
        store.publish(batch("syscalls", 1.0));
        let state = Arc::new(AgentState::new("h".into()));
        let (tx, rx) = watch::channel(false);
        let cfg = settings(&dir, Duration::from_millis(20), 1 << 20, 3);
        let task = tokio::spawn(run(cfg, store, state.clone(), rx));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while state.exporter().last_error.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no write attempt");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "the writer keeps running");
        let e = state.exporter();
        assert_eq!(e.healthy, Some(false));
        assert_eq!(e.kind, "file");
        assert_eq!(e.batches_written, 0);
        let err = e.last_error.unwrap();
        assert!(
            err.starts_with(&format!("cannot write {}: ", dir.join(FILE_NAME).display())),
            "{err}"
        );

        tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(state.exporter().healthy, Some(false));
    }
}
