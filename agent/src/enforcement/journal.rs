//! The journal of limiting actions: each one is written before it acts, with how
//! to undo it and when; removed once undone. At start, what a predecessor left is undone when
//! its time is up and otherwise taken over (undone at its TTL), so a crash never leaves a
//! limit behind for longer than its TTL.
//!
//! File: `<output.dir>/enforcement/journal`, first line `agent-enforcement-journal 2`
//! ([`crate::persist::ENFORCEMENT_JOURNAL`]), then one JSON object per line, appended: an
//! [`Entry`] when a limit is about to act, `{"removed":[ids]}` once limits are undone (or
//! failed to act). The limits in effect are the entries not removed since. Appended with one
//! `write(2)` per change on the action path (no rename: ext4 starts writeback on a
//! replace-by-rename, which put 6 ms p50 and 30 ms p99 in front of every action under the
//! development VM's builds); compacted (rewritten whole, atomically: a temporary file renamed
//! over it) at open, when nothing is left in effect and when removals outnumber the live
//! entries, all three on the undo path. A line that does not parse is logged and skipped (a torn last line after a crash
//! among them); version 1 (whole rewrites, no removal lines) is read as is and compacted into
//! version 2; a journal of another version is moved aside (`journal.unknown`) and left for a
//! person to read.
//!
//! Not fsynced: the journal guards against the agent's own death (SIGKILL, OOM kill, panic),
//! which the page cache survives; what it undoes (stopped processes, frozen cgroups, CPU
//! quotas, kernel links and pins) does not survive a host crash either. A sync would only put
//! the disk in front of every limiting action (45 ms median, 60 ms more at p99, on the shared
//! development VM's ext4 under builds: `bench enforce`'s `journaled` stage).

use std::{
    fs::File,
    io::Write,
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

/// A line that removes entries (`{"removed":[ids]}`).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Removed {
    removed: Vec<u64>,
}

/// One line after the marker: an entry added, or entries removed.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Line {
    Removed(Removed),
    Added(Box<Entry>),
}

/// Removal lines tolerated beyond the live entries before the file is compacted.
const COMPACT_SLACK: usize = 64;

/// The journal on disk and its entries in memory.
pub struct Journal {
    path: PathBuf,
    entries: Vec<Entry>,
    next_id: u64,
    /// The file, open for appending (after the marker and the live entries).
    file: File,
    /// Lines in the file after the marker.
    lines: usize,
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
        let mut entries: Vec<Entry> = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut lines = text.lines();
                match ENFORCEMENT_JOURNAL.check(lines.next().unwrap_or("")) {
                    // Version 1 is version 2 without removal lines.
                    Found::Current | Found::Older(1) => {
                        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                            match serde_json::from_str::<Line>(line) {
                                Ok(Line::Added(e)) => {
                                    entries.retain(|x| x.id != e.id);
                                    entries.push(*e);
                                }
                                Ok(Line::Removed(r)) => {
                                    entries.retain(|x| !r.removed.contains(&x.id))
                                }
                                Err(e) => tracing::error!(
                                    "enforcement journal {} line {}: {e}; line skipped (a limit it held, if any, is not undone by the agent)",
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
        let file = Journal::compact(path, &entries)?;
        Ok(Journal {
            path: path.to_path_buf(),
            lines: entries.len(),
            entries,
            next_id,
            file,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds `e` and writes it before returning (call before acting).
    pub fn add(&mut self, e: Entry) -> Result<(), JournalError> {
        self.add_all(vec![e])
    }

    /// Adds every entry of `es` with one appended write (the decisions of one drain); on
    /// error none is added.
    pub fn add_all(&mut self, es: Vec<Entry>) -> Result<(), JournalError> {
        if es.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for e in &es {
            text.push_str(&serde_json::to_string(e).expect("entries serialize"));
            text.push('\n');
        }
        self.append(&text, es.len())?;
        self.entries.extend(es);
        Ok(())
    }

    /// Removes the entries `ids` with one appended line (limits undone together); compacts
    /// the file when nothing is left in effect or removals outnumber the live entries.
    pub fn remove_all(&mut self, ids: &[u64]) -> Result<(), JournalError> {
        let gone: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.entries.iter().any(|e| e.id == *id))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut text = serde_json::to_string(&Removed {
            removed: gone.clone(),
        })
        .expect("ids serialize");
        text.push('\n');
        self.append(&text, 1)?;
        self.entries.retain(|e| !gone.contains(&e.id));
        // Nothing left in effect (cheap to rewrite), or more removed than live.
        if self.entries.is_empty() || self.lines > self.entries.len() + COMPACT_SLACK {
            // The removal is on disk either way: a failed compaction leaves a longer file.
            match Journal::compact(&self.path, &self.entries) {
                Ok(f) => {
                    self.file = f;
                    self.lines = self.entries.len();
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok(())
    }

    /// Removes entry `id` (undone, or failed to act).
    pub fn remove(&mut self, id: u64) -> Result<Option<Entry>, JournalError> {
        let Some(e) = self.entries.iter().find(|e| e.id == id).cloned() else {
            return Ok(None);
        };
        self.remove_all(&[id])?;
        Ok(Some(e))
    }

    /// Appends `text` (`lines` whole lines) with one write; a failed write is cut off again,
    /// so the file never keeps half a line of it.
    fn append(&mut self, text: &str, lines: usize) -> Result<(), JournalError> {
        let before = self.file.metadata().map(|m| m.len()).ok();
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            if let Some(len) = before {
                let _ = self.file.set_len(len);
            }
            return Err(write_error(&self.path, e));
        }
        self.lines += lines;
        Ok(())
    }

    /// Rewrites `path` with just the marker and `entries`, atomically (a temporary file
    /// renamed over it), unsynced (see the module's doc); the file, open for appending.
    fn compact(path: &Path, entries: &[Entry]) -> Result<File, JournalError> {
        let mut text = ENFORCEMENT_JOURNAL.line();
        for e in entries {
            text.push_str(&serde_json::to_string(e).expect("entries serialize"));
            text.push('\n');
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, path))
            .and_then(|()| std::fs::OpenOptions::new().append(true).open(path))
            .map_err(|e| write_error(path, e))
    }
}

fn write_error(path: &Path, e: std::io::Error) -> JournalError {
    JournalError {
        cause: format!(
            "cannot write the enforcement journal {}: {e}",
            path.display()
        ),
        fix:
            "make output.dir writable and not full (limiting actions are journaled before they act)"
                .into(),
    }
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
            "agent-enforcement-journal 2\n"
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
        assert_eq!(again.remove(1).unwrap(), None);
        // Appended: the two entries, then the removal.
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_eq!(text.lines().last(), Some(r#"{"removed":[1]}"#));
        // Nothing left in effect: compacted to the marker alone.
        let mut alone = Journal::open(&d.path().join("other")).unwrap();
        let id = alone.next_id();
        alone.add(entry(id)).unwrap();
        alone.remove(id).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("other")).unwrap(),
            "agent-enforcement-journal 2\n"
        );
        // Read back, and compacted at open.
        assert_eq!(Journal::open(&p).unwrap().entries(), &[b.clone()]);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!(
                "agent-enforcement-journal 2\n{}\n",
                serde_json::to_string(&b).unwrap()
            )
        );
    }

    /// The journal against a model (the live entries as a list): adds in batches, removals
    /// of live, gone and unknown ids, reopenings (a restart) in between; compaction keeps the
    /// file within the live entries plus the slack.
    #[test]
    fn appends_and_compactions_match_a_model() {
        let d = tempfile::tempdir().unwrap();
        let p = Journal::path_in(d.path());
        let mut j = Journal::open(&p).unwrap();
        let mut model: Vec<Entry> = Vec::new();
        let mut x = 0x2545_f491_u64;
        let mut rand = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..1_000 {
            match rand(10) {
                0..=3 => {
                    let batch: Vec<Entry> = (0..1 + rand(3)).map(|_| entry(j.next_id())).collect();
                    model.extend(batch.clone());
                    j.add_all(batch).unwrap();
                }
                4..=7 if !model.is_empty() => {
                    let id = model[rand(model.len() as u64) as usize].id;
                    let ids = [id, id + 1_000_000];
                    model.retain(|e| e.id != id);
                    j.remove_all(&ids).unwrap();
                }
                8 => {
                    let next = j.next_id();
                    j = Journal::open(&p).unwrap();
                    assert!(j.next_id() <= next + 1);
                }
                _ => {}
            }
            assert_eq!(j.entries(), &model[..], "step {step}");
            let lines = std::fs::read_to_string(&p).unwrap().lines().count() - 1;
            assert!(
                lines <= model.len() + COMPACT_SLACK + 3,
                "step {step}: {lines} lines"
            );
        }
        assert_eq!(Journal::open(&p).unwrap().entries(), &model[..]);
    }

    /// A journal of version 1 (whole rewrites) is read as is and compacted into version 2; a
    /// torn last line (the agent killed mid-write) is skipped.
    #[test]
    fn version_1_and_torn_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = Journal::path_in(d.path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let (a, b) = (
            serde_json::to_string(&entry(3)).unwrap(),
            serde_json::to_string(&entry(4)).unwrap(),
        );
        std::fs::write(&p, format!("agent-enforcement-journal 1\n{a}\n{b}\n")).unwrap();
        let mut j = Journal::open(&p).unwrap();
        assert_eq!(j.entries(), &[entry(3), entry(4)]);
        assert_eq!(j.next_id(), 5);
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .starts_with("agent-enforcement-journal 2\n"));
        let torn = &a[..a.len() / 2];
        std::fs::write(
            &p,
            format!("agent-enforcement-journal 2\n{b}\n{{\"removed\":[4]}}\n{torn}"),
        )
        .unwrap();
        assert!(Journal::open(&p).unwrap().entries().is_empty());
    }

    #[test]
    fn bad_lines_are_skipped_and_other_versions_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        let p = Journal::path_in(d.path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let good = serde_json::to_string(&entry(5)).unwrap();
        std::fs::write(
            &p,
            format!("agent-enforcement-journal 2\n{{broken\n{good}\n"),
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
