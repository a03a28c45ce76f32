//! JIT and interpreted code named from perf maps: `/tmp/perf-<pid>.map`, written by Node
//! (`--perf-basic-prof`), Java perf-map agents, Python 3.12+ (`-X perf`) and others, one line
//! per code region: `<start hex> <size hex> <name>`.
//!
//! Invariants: the file is found through `/proc/<pid>/root` with the process's own pid in its
//! namespace (a container's `/tmp` is not the host's), and held open from the first snapshot,
//! so a process that exits is still named; it is read incrementally (runtimes append as they
//! compile) up to `MAX_BYTES`; a later entry for an address wins (code regions are reused).

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    sync::Arc,
};

use procfs::FromBufRead;

/// Bytes of one perf map read at most (beyond: the rest of its entries are not known).
pub const MAX_BYTES: u64 = 16 << 20;

/// One process's perf map.
#[derive(Debug)]
pub struct PerfMap {
    file: File,
    /// Bytes read so far (whole lines).
    read: u64,
    /// (start, end, name), sorted by start once `sorted`; a later entry at an overlapping
    /// range replaces the earlier one when sorting.
    entries: Vec<(u64, u64, Arc<str>)>,
    sorted: bool,
}

/// The pid `pid` has in its own pid namespace (`NSpid`'s last field), from its status file.
fn namespace_pid(pid: u32) -> Option<u32> {
    let bytes = std::fs::read(format!("/proc/{pid}/status")).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    // procfs's Status parser refuses a status file with a non-UTF-8 name; the line is read
    // with the same rule (last NSpid field).
    let status = procfs::process::Status::from_buf_read(text.as_bytes()).ok()?;
    let ns = status.nspid.and_then(|v| v.last().copied())?;
    u32::try_from(ns).ok()
}

impl PerfMap {
    /// Opens process `pid`'s perf map, if it writes one.
    pub fn open(pid: u32) -> Option<PerfMap> {
        let ns = namespace_pid(pid).unwrap_or(pid);
        let file = File::open(format!("/proc/{pid}/root/tmp/perf-{ns}.map")).ok()?;
        Some(PerfMap {
            file,
            read: 0,
            entries: Vec::new(),
            sorted: true,
        })
    }

    /// Reads what was appended since the last call (whole lines, within `MAX_BYTES`).
    pub fn refresh(&mut self) {
        let Ok(len) = self.file.metadata().map(|m| m.len()) else {
            return;
        };
        let end = len.min(MAX_BYTES);
        if end <= self.read || self.file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if (&self.file)
            .take(end - self.read)
            .read_to_end(&mut buf)
            .is_err()
        {
            return;
        }
        // Only whole lines: a line being written is read next time.
        let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        buf.truncate(last_nl + 1);
        self.read += buf.len() as u64;
        for line in String::from_utf8_lossy(&buf).lines() {
            if let Some(e) = parse_line(line) {
                self.entries.push(e);
                self.sorted = false;
            }
        }
    }

    fn sort(&mut self) {
        if self.sorted {
            return;
        }
        // Later entries win: stable sort by start, then keep the last of equal starts.
        self.entries.sort_by_key(|e| e.0);
        let mut out: Vec<(u64, u64, Arc<str>)> = Vec::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            match out.last_mut() {
                Some(l) if l.0 == e.0 => *l = e,
                _ => out.push(e),
            }
        }
        self.entries = out;
        self.sorted = true;
    }

    /// The name of the code region holding `addr`, reading new entries once if none does.
    pub fn lookup(&mut self, addr: u64) -> Option<Arc<str>> {
        self.sort();
        if let Some(n) = self.find(addr) {
            return Some(n);
        }
        self.refresh();
        self.sort();
        self.find(addr)
    }

    fn find(&self, addr: u64) -> Option<Arc<str>> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let (start, end, name) = self.entries.get(i.checked_sub(1)?)?;
        (*start <= addr && addr < *end).then(|| name.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `<start hex> <size hex> <name>`; the name may hold spaces.
fn parse_line(line: &str) -> Option<(u64, u64, Arc<str>)> {
    let mut it = line.splitn(3, ' ');
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let start = hex(it.next()?)?;
    let size = hex(it.next()?)?;
    let name = it.next()?.trim();
    if name.is_empty() || size == 0 {
        return None;
    }
    Some((start, start.checked_add(size)?, Arc::from(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_appends_and_later_entries_win() {
        let dir = std::env::temp_dir().join(format!("perfmap-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf.map");
        let mut w = File::create(&path).unwrap();
        writeln!(w, "1000 100 LazyCompile:*fib /app/x.js:3").unwrap();
        writeln!(w, "2000 10 Builtin:ArgumentsAdaptorTrampoline").unwrap();
        write!(w, "3000 10 half").unwrap(); // no newline yet: not read
        w.flush().unwrap();
        let mut m = PerfMap {
            file: File::open(&path).unwrap(),
            read: 0,
            entries: Vec::new(),
            sorted: true,
        };
        assert_eq!(
            m.lookup(0x1050).as_deref(),
            Some("LazyCompile:*fib /app/x.js:3")
        );
        assert_eq!(m.lookup(0x1100), None, "end is exclusive");
        assert_eq!(m.lookup(0x3005), None, "a partial line is not read");
        writeln!(w, " line").unwrap();
        writeln!(w, "1000 100 JS:*fib2").unwrap();
        writeln!(w, "garbage").unwrap();
        w.flush().unwrap();
        assert_eq!(m.lookup(0x3005).as_deref(), Some("half line"));
        // The region at 0x1000 was reused: the later entry names it.
        assert_eq!(m.lookup(0x1000).as_deref(), Some("JS:*fib2"));
        assert_eq!(m.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(PerfMap::open(u32::MAX - 1).is_none());
    }

    #[test]
    fn own_namespace_pid_is_read() {
        assert_eq!(namespace_pid(std::process::id()), Some(std::process::id()));
    }
}
