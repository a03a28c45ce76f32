//! The journal of limiting actions: each one is written before it acts, with how
//! to undo it and when; removed once undone. At start, what a predecessor left is undone when
//! its time is up and otherwise taken over (undone at its TTL), so a crash never leaves a
//! limit behind for longer than its TTL.
//!
//! File: `<output.dir>/enforcement/journal`, first line `agent-enforcement-journal 1`
//! ([`crate::persist::ENFORCEMENT_JOURNAL`]), then one JSON object per line. Rewritten whole,
//! atomically (a temporary file renamed over it), at every change: it holds at most the active
//! limits. A line that does not parse is logged and skipped; a journal of another version is
//! moved aside (`journal.unknown`) and left for a person to read.
//!
//! Not fsynced: the journal guards against the agent's own death (SIGKILL, OOM kill, panic),
//! which the page cache survives; what it undoes (stopped processes, frozen cgroups, CPU
//! quotas, kernel links and pins) does not survive a host crash either. A sync would only put
//! the disk in front of every limiting action (45 ms median, 60 ms more at p99, on the shared
//! development VM's ext4 under builds: `bench enforce`'s `journaled` stage).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::persist::{Found, ENFORCEMENT_JOURNAL};

/// How to undo one limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Undo {
    /// SIGCONT to the process stopped (only while it is the same process: pid and start time).
    Cont { pid: u32, start_ticks: u64 },
    /// Thaw the cgroup directory `dir` (v2 `cgroup.freeze`, or v1 `freezer.state`).
    Thaw { v1: bool, dir: PathBuf },
    /// Write `previous` back to `file` in `dir` (`cpu.max`, or v1 `cpu.cfs_quota_us`).
    Restore {
        dir: PathBuf,
        file: String,
        previous: String,
    },
    /// Remove the rate limits of cgroup `cgroup_id` in these directions (`egress`,
    /// `ingress`).
    RateLimit {
        cgroup_id: u64,
        dir: PathBuf,
        directions: Vec<String>,
    },
    /// Remove the block rules of cgroup `cgroup_id` for these peers and ports.
    Block {
        cgroup_id: u64,
        dir: PathBuf,
        peers: Vec<String>,
        ports: Vec<u16>,
    },
    /// Lift this degrade (the agent's own sampling).
    Degrade,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: u64,
    pub rule: String,
    /// The action's `type` (`signal`, `freeze`, ...).
    pub kind: String,
    /// What was done, for logs and audit records.
    pub action: String,
    /// The target's key (`pid:<pid>:<start>`, `cgroup:<path>`): one limit of a kind per target.
    pub target: String,
    pub undo: Undo,
    pub acted_unix_ms: u64,
    pub expires_unix_ms: u64,
    /// Kept across a clean shutdown (kernel limits of `persist: true` rules).
    #[serde(default)]
    pub persist: bool,
}

impl Entry {
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_unix_ms)
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, thiserror::Error)]
#[error("{cause}\nfix: {fix}")]
pub struct JournalError {
    pub cause: String,
    pub fix: String,
}

/// The journal on disk and its entries in memory.
pub struct Journal {
    path: PathBuf,
    entries: Vec<Entry>,
    next_id: u64,
}

impl Journal {
    /// The journal's file under `output_dir`.
    pub fn path_in(output_dir: &Path) -> PathBuf {
        output_dir.join("enforcement").join("journal")
    }

    /// Opens (or starts) the journal at `path`, returning what a predecessor left.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| JournalError {
            cause: format!(
                "cannot create the enforcement journal directory {}: {e}",
                dir.display()
            ),
            fix: "make output.dir writable (limiting actions are journaled before they act)".into(),
        })?;
        let mut entries = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut lines = text.lines();
                match ENFORCEMENT_JOURNAL.check(lines.next().unwrap_or("")) {
                    Found::Current => {
                        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                            match serde_json::from_str::<Entry>(line) {
                                Ok(e) => entries.push(e),
                                Err(e) => tracing::error!(
                                    "enforcement journal {} line {}: {e}; entry skipped (its limit, if any, is not undone by the agent)",
                                    path.display(),
                                    i + 2
                                ),
                            }
                        }
                    }
                    Found::Older(_) | Found::Unknown(_) => {
                        let aside = path.with_extension("unknown");
                        tracing::error!(
                            "enforcement journal {} is not format {}: moved to {}; limits it lists are not undone by this agent",
                            path.display(),
                            ENFORCEMENT_JOURNAL.line().trim(),
                            aside.display()
                        );
                        tracing::error!("fix: undo them by hand (see the file), then delete it");
                        let _ = std::fs::rename(path, &aside);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(JournalError {
                    cause: format!(
                        "cannot read the enforcement journal {}: {e}",
                        path.display()
                    ),
                    fix: "make the file readable by the agent".into(),
                })
            }
        }
        let next_id = entries.iter().map(|e| e.id).max().unwrap_or(0) + 1;
        let j = Journal {
            path: path.to_path_buf(),
            entries,
            next_id,
        };
        j.write()?;
        Ok(j)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds `e` and writes the file before returning (call before acting).
    pub fn add(&mut self, e: Entry) -> Result<(), JournalError> {
        self.entries.push(e);
        if let Err(err) = self.write() {
            self.entries.pop();
            return Err(err);
        }
        Ok(())
    }

    /// Adds every entry of `es` with one write (the decisions of one drain); on error
    /// none is added.
    pub fn add_all(&mut self, es: Vec<Entry>) -> Result<(), JournalError> {
        if es.is_empty() {
            return Ok(());
        }
        let n = self.entries.len();
        self.entries.extend(es);
        if let Err(err) = self.write() {
            self.entries.truncate(n);
            return Err(err);
        }
        Ok(())
    }

    /// Removes the entries `ids` with one write (limits undone together).
    pub fn remove_all(&mut self, ids: &[u64]) -> Result<(), JournalError> {
        let n = self.entries.len();
        self.entries.retain(|e| !ids.contains(&e.id));
        if self.entries.len() == n {
            return Ok(());
        }
        self.write()
    }

    /// Removes entry `id` (undone, or failed to act).
    pub fn remove(&mut self, id: u64) -> Result<Option<Entry>, JournalError> {
        let Some(i) = self.entries.iter().position(|e| e.id == id) else {
            return Ok(None);
        };
        let e = self.entries.remove(i);
        self.write()?;
        Ok(Some(e))
    }

    fn write(&self) -> Result<(), JournalError> {
        let mut text = ENFORCEMENT_JOURNAL.line();
        for e in &self.entries {
            text.push_str(&serde_json::to_string(e).expect("entries serialize"));
            text.push('\n');
        }
        replace(&self.path, text.as_bytes()).map_err(|e| JournalError {
            cause: format!("cannot write the enforcement journal {}: {e}", self.path.display()),
            fix: "make output.dir writable and not full (limiting actions are journaled before they act)".into(),
        })
    }
}

/// Replaces `path` with `bytes` atomically (a temporary file renamed over it), unsynced (see
/// the module's doc).
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> Entry {
        Entry {
            id,
            rule: "r".into(),
            kind: "signal".into(),
            action: "signal SIGSTOP".into(),
            target: "pid:42:7".into(),
            undo: Undo::Cont {
                pid: 42,
                start_ticks: 7,
            },
            acted_unix_ms: 1,
            expires_unix_ms: 2,
            persist: false,
        }
    }

    #[test]
    fn written_before_acting_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = Journal::path_in(d.path());
        let mut j = Journal::open(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "agent-enforcement-journal 1\n"
        );
        let id = j.next_id();
        j.add(entry(id)).unwrap();
        let mut b = entry(j.next_id());
        b.undo = Undo::Block {
            cgroup_id: 9,
            dir: "/sys/fs/cgroup/unified/enf".into(),
            peers: vec!["10.0.0.0/8".into()],
            ports: vec![80],
        };
        b.persist = true;
        j.add(b.clone()).unwrap();
        let again = Journal::open(&p).unwrap();
        assert_eq!(again.entries(), &[entry(1), b.clone()]);
        let mut again = again;
        assert_eq!(again.next_id(), 3);
        assert_eq!(again.remove(1).unwrap(), Some(entry(1)));
        assert_eq!(Journal::open(&p).unwrap().entries(), &[b]);
    }

    #[test]
    fn bad_lines_are_skipped_and_other_versions_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        let p = Journal::path_in(d.path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let good = serde_json::to_string(&entry(5)).unwrap();
        std::fs::write(
            &p,
            format!("agent-enforcement-journal 1\n{{broken\n{good}\n"),
        )
        .unwrap();
        assert_eq!(Journal::open(&p).unwrap().entries(), &[entry(5)]);
        std::fs::write(&p, "agent-enforcement-journal 9\n{}\n").unwrap();
        let j = Journal::open(&p).unwrap();
        assert!(j.entries().is_empty());
        assert_eq!(
            std::fs::read_to_string(p.with_extension("unknown")).unwrap(),
            "agent-enforcement-journal 9\n{}\n"
        );
    }
}
