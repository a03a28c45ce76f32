//! Executable mappings of sampled processes, snapshotted when the kernel first sees a process,
//! so stacks of processes that exit before the export are still symbolized.
//!
//! Invariants: a snapshot keeps the mapped files open (`/proc/<pid>/map_files/...`), so the
//! files stay readable after the process exits, is deleted, or lives in another mount
//! namespace; a file is shared by every process that maps it and closes when the last one is
//! forgotten; at most `max_processes` snapshots are kept (exited processes go first, then the
//! least recently used).

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
    time::Instant,
};

use crate::{procinfo, profile::Mapping};

/// A mapped executable file, held open.
#[derive(Debug)]
pub struct MappedFile {
    /// `(device, inode)` from the maps line: the file's identity.
    pub id: (u64, u64),
    /// The path the process mapped (for display).
    pub path: Arc<str>,
    /// Where this process can read it: `/proc/self/fd/<n>` of the held file, or a path.
    pub open_path: PathBuf,
    pub build_id: Option<Arc<str>>,
    _file: Option<File>,
    closed: Arc<Mutex<Vec<PathBuf>>>,
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // Symbolizers cache parsed files by path; a reused fd number must not hit that cache.
        if self._file.is_some() {
            if let Ok(mut c) = self.closed.lock() {
                c.push(self.open_path.clone());
            }
        }
    }
}

/// One executable mapping of one process.
#[derive(Clone, Debug)]
pub struct ProcMapping {
    pub mapping: Arc<Mapping>,
    /// `None` for anonymous or special mappings (`[vdso]`, JIT code).
    pub file: Option<Arc<MappedFile>>,
}

/// What is known about one process.
#[derive(Debug)]
pub struct ProcEntry {
    pub pid: u32,
    pub exe_name: String,
    pub exe_path: Option<String>,
    pub build_id: Option<String>,
    pub container_id: Option<String>,
    /// Executable mappings, sorted by start address.
    pub maps: Vec<ProcMapping>,
    /// The process was gone at the last look.
    pub exited: bool,
    last_used: Instant,
}

impl ProcEntry {
    /// The mapping holding `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<&ProcMapping> {
        let i = self.maps.partition_point(|m| m.mapping.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        (addr < m.mapping.end).then_some(m)
    }
}

/// One parsed `/proc/<pid>/maps` line.
#[derive(Debug, PartialEq, Eq)]
pub struct MapsLine<'a> {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    pub offset: u64,
    pub dev: u64,
    pub inode: u64,
    pub path: &'a str,
}

/// Parses one line of `/proc/<pid>/maps`: `start-end perms offset major:minor inode path`.
pub fn parse_maps_line(line: &str) -> Option<MapsLine<'_>> {
    let mut f = line.splitn(6, ' ');
    let range = f.next()?;
    let perms = f.next()?;
    let offset = u64::from_str_radix(f.next()?, 16).ok()?;
    let dev = f.next()?;
    let inode = f.next()?.parse().ok()?;
    let path = f.next().unwrap_or("").trim_start();
    let (s, e) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let dev = (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?;
    Some(MapsLine {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset,
        dev,
        inode,
        path,
    })
}

/// GNU build ID of an ELF file, lowercase hex.
pub fn build_id(path: &std::path::Path) -> Option<String> {
    let id = blazesym::helper::read_elf_build_id(&path).ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// How many mapped files the profiler may hold open: half the soft RLIMIT_NOFILE (raised to
/// the hard limit first), at most 16384, so the rest of the agent always has descriptors.
fn open_file_budget() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 256;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    ((lim.rlim_cur / 2) as usize).clamp(16, 16_384)
}

/// The bounded cache of process snapshots and the files they hold open.
pub struct ProcMaps {
    procs: HashMap<u32, ProcEntry>,
    files: HashMap<(u64, u64), Weak<MappedFile>>,
    max_processes: usize,
    /// Files held open at most (a share of RLIMIT_NOFILE); beyond it files are read by path.
    max_open_files: usize,
    closed: Arc<Mutex<Vec<PathBuf>>>,
    /// Snapshots taken (first sight, exec, refresh).
    pub snapshots: u64,
    /// Snapshots that failed because the process was already gone.
    pub missed: u64,
}

impl ProcMaps {
    pub fn new(max_processes: usize) -> Self {
        ProcMaps {
            procs: HashMap::new(),
            files: HashMap::new(),
            max_processes: max_processes.max(1),
            max_open_files: open_file_budget(),
            closed: Arc::new(Mutex::new(Vec::new())),
            snapshots: 0,
            missed: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Files closed since the last call (to evict from symbolizer caches).
    pub fn take_closed(&self) -> Vec<PathBuf> {
        self.closed
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    pub fn get(&mut self, pid: u32) -> Option<&ProcEntry> {
        let e = self.procs.get_mut(&pid)?;
        e.last_used = Instant::now();
        Some(e)
    }

    /// Reads `/proc/<pid>/maps` now, replacing any older snapshot. False if the process is gone
    /// (an older snapshot then stays, marked exited).
    pub fn snapshot(&mut self, pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            self.missed += 1;
            if let Some(e) = self.procs.get_mut(&pid) {
                e.exited = true;
            }
            return false;
        };
        self.snapshots += 1;
        let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                let s = p.to_string_lossy().into_owned();
                s.strip_suffix(" (deleted)")
                    .map(str::to_string)
                    .unwrap_or(s)
            });
        let mut maps = Vec::new();
        let mut exe_build_id = None;
        for line in text.lines() {
            let Some(l) = parse_maps_line(line) else {
                continue;
            };
            if !l.executable {
                continue;
            }
            let file = if l.inode != 0 && l.path.starts_with('/') {
                Some(self.file(pid, &l))
            } else {
                None
            };
            let path: Arc<str> = match &file {
                Some(f) => f.path.clone(),
                None if l.path.is_empty() => Arc::from("[anon]"),
                None => Arc::from(l.path),
            };
            let build_id = file.as_ref().and_then(|f| f.build_id.clone());
            if exe_build_id.is_none() && exe_path.as_deref() == Some(&*path) {
                exe_build_id = build_id.as_deref().map(str::to_string);
            }
            maps.push(ProcMapping {
                mapping: Arc::new(Mapping {
                    start: l.start,
                    end: l.end,
                    file_offset: l.offset,
                    path,
                    build_id,
                }),
                file,
            });
        }
        maps.sort_by_key(|m| m.mapping.start);
        let exe_name = exe_path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .map(str::to_string)
            .or_else(|| procinfo::exe_name(pid))
            .unwrap_or_default();
        let entry = ProcEntry {
            pid,
            exe_name,
            exe_path,
            build_id: exe_build_id,
            container_id: procinfo::container_id(pid),
            maps,
            exited: false,
            last_used: Instant::now(),
        };
        self.procs.insert(pid, entry);
        self.evict();
        true
    }

    /// Marks processes that are gone as exited (their snapshots stay until evicted).
    pub fn mark_exited(&mut self) {
        for e in self.procs.values_mut() {
            if !e.exited && !procinfo::alive(e.pid) {
                e.exited = true;
            }
        }
    }

    /// Forgets exited processes not used since `before`.
    pub fn forget_exited(&mut self, before: Instant) {
        self.procs.retain(|_, e| !e.exited || e.last_used >= before);
        self.files.retain(|_, f| f.strong_count() > 0);
    }

    fn evict(&mut self) {
        while self.procs.len() > self.max_processes {
            // Exited processes first, then the least recently used.
            let victim = self
                .procs
                .values()
                .min_by_key(|e| (!e.exited, e.last_used))
                .map(|e| e.pid);
            match victim {
                Some(pid) => {
                    self.procs.remove(&pid);
                }
                None => break,
            }
        }
        self.files.retain(|_, f| f.strong_count() > 0);
    }

    /// The shared open file for a maps line, opening it on first sight.
    fn file(&mut self, pid: u32, l: &MapsLine<'_>) -> Arc<MappedFile> {
        let id = (l.dev, l.inode);
        if let Some(f) = self.files.get(&id).and_then(Weak::upgrade) {
            return f;
        }
        let path = l.path.strip_suffix(" (deleted)").unwrap_or(l.path);
        // map_files works for deleted files and other mount namespaces; root/<path> is the
        // fallback where map_files is not readable. Past the budget, nothing is held open (the
        // file is read by path while the process lives).
        let held = self.files.values().filter(|f| f.strong_count() > 0).count();
        let opened = if held >= self.max_open_files {
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        } else {
            File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", l.start, l.end))
                .or_else(|_| File::open(format!("/proc/{pid}/root{path}")))
        };
        let (file, open_path) = match opened {
            Ok(f) => {
                let p = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                (Some(f), p)
            }
            Err(_) => (None, PathBuf::from(format!("/proc/{pid}/root{path}"))),
        };
        let f = Arc::new(MappedFile {
            id,
            path: Arc::from(path),
            build_id: build_id(&open_path).map(Arc::from),
            open_path,
            _file: file,
            closed: self.closed.clone(),
        });
        self.files.insert(id, Arc::downgrade(&f));
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let l = parse_maps_line(
            "7f1c2a600000-7f1c2a628000 r-xp 00028000 fd:01 1835143                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(l.start, 0x7f1c2a600000);
        assert_eq!(l.end, 0x7f1c2a628000);
        assert!(l.executable);
        assert_eq!(l.offset, 0x28000);
        assert_eq!(l.dev, (0xfd << 32) | 1);
        assert_eq!(l.inode, 1835143);
        assert_eq!(l.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        let anon = parse_maps_line("7ffd1000-7ffd3000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!anon.executable);
        assert_eq!(anon.path, "");
        let vdso = parse_maps_line("7ffd1000-7ffd3000 r-xp 00000000 00:00 0      [vdso]").unwrap();
        assert_eq!(vdso.path, "[vdso]");
        assert!(parse_maps_line("garbage").is_none());
    }

    #[test]
    fn snapshots_self_and_finds_own_code() {
        let mut pm = ProcMaps::new(4);
        let pid = std::process::id();
        assert!(pm.snapshot(pid));
        let here = snapshots_self_and_finds_own_code as *const () as u64;
        let e = pm.get(pid).unwrap();
        let m = e.find(here).expect("own code is mapped");
        assert!(m.file.is_some());
        assert_eq!(Some(&*m.mapping.path), e.exe_path.as_deref());
        assert!(e.find(0).is_none());
        // A second process reuses the open file of libc / the executable.
        let files_before = pm.files.len();
        assert!(pm.snapshot(pid));
        assert_eq!(pm.files.len(), files_before);
    }

    #[test]
    fn open_files_stay_within_budget() {
        let mut pm = ProcMaps::new(4);
        pm.max_open_files = 1;
        assert!(pm.snapshot(std::process::id()));
        let e = pm.get(std::process::id()).unwrap();
        let files: Vec<_> = e.maps.iter().filter_map(|m| m.file.as_ref()).collect();
        assert!(files.len() >= 2, "the executable and libc at least");
        let held = files.iter().filter(|f| f._file.is_some()).count();
        assert_eq!(held, 1);
        // Past the budget a file is still usable by path.
        assert!(files.iter().all(|f| f.open_path.exists()));
    }

    #[test]
    fn bounded_and_exited_go_first() {
        let mut pm = ProcMaps::new(2);
        let me = std::process::id();
        let mut a = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut b = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(pm.snapshot(me));
        assert!(pm.snapshot(a.id()));
        pm.procs.get_mut(&me).unwrap().exited = true;
        // A third process evicts the exited one, not the least recently used live one.
        assert!(pm.snapshot(b.id()));
        assert_eq!(pm.len(), 2);
        assert!(pm.get(me).is_none());
        assert!(pm.get(a.id()).is_some());
        let _ = (a.kill(), b.kill(), a.wait(), b.wait());
        assert!(!pm.snapshot(u32::MAX - 1));
        assert_eq!(pm.missed, 1);
    }
}
