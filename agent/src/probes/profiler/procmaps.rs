//! Executable mappings of sampled processes, snapshotted when the kernel first sees a process,
//! so stacks of processes that exit before the export are still symbolized.
//!
//! A process is known by its [`ProcKey`]: its pid and its *incarnation* (when the kernel
//! announced it; see `agent_common::profiler`). An exec, or a new process on a reused pid, is a
//! new incarnation with a snapshot of its own, so what was sampled before the change is
//! symbolized and named as what the process was then.
//!
//! Invariants: a snapshot is only kept when the kernel still holds its incarnation after the
//! maps were read (else the process exec'd or exited meanwhile and the maps may be someone
//! else's); a snapshot keeps the mapped files open (`/proc/<pid>/map_files/...`), so the files
//! stay readable after the process exits, is deleted, or lives in another mount namespace; a
//! file is shared by every process that maps it and closes when the last one is forgotten; the
//! vDSO is a file too (its image copied out of the process into a memfd); at most
//! `max_processes` snapshots are kept (exited ones go first, then the least recently used).

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Weak},
    time::Instant,
};

use procfs::{
    process::{MMPermissions, MMapPath, MemoryMaps},
    FromBufRead,
};

use super::{perfmap::PerfMap, special};
use crate::{procinfo, profile::Mapping};

/// One incarnation of a process (see the module docs). Incarnation 0: unknown (the process was
/// never announced, e.g. its only samples had no user stack).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    pub pid: u32,
    pub incarnation: u64,
}

/// Which incarnation of a pid the kernel holds now (`PROFILE_PIDS`): what snapshots are
/// checked against. Without it (unit tests) every live pid counts as current.
pub trait Incarnations {
    /// The incarnation the kernel holds for `pid`, if any.
    fn current(&self, pid: u32) -> Option<u64>;

    /// Announces `pid` from userspace unless the kernel already did; its incarnation.
    fn announce(&mut self, _pid: u32) -> Option<u64> {
        None
    }
}

/// A mapped file, held open (or a special image: the vDSO in a memfd).
#[derive(Debug)]
pub struct MappedFile {
    /// The file's identity: `(device, inode)` from the maps line (special images: see
    /// [`special::VDSO_DEV`]).
    pub id: (u64, u64),
    /// The path the process mapped (for display; invalid UTF-8 replaced).
    pub path: Arc<str>,
    /// Where this process can read it: `/proc/self/fd/<n>` of the held file, or a path.
    pub open_path: PathBuf,
    pub build_id: Option<Arc<str>>,
    /// The descriptor `open_path` names (kept open while a snapshot holds the file).
    _held: Option<File>,
}

/// One executable mapping of one process.
#[derive(Clone, Debug)]
pub struct ProcMapping {
    pub mapping: Arc<Mapping>,
    /// What symbolizes it: a file (or the vDSO image); `None` for anonymous mappings (JIT
    /// code) and for `[vsyscall]`.
    pub file: Option<Arc<MappedFile>>,
}

/// What is known about one process incarnation.
#[derive(Debug)]
pub struct ProcEntry {
    pub key: ProcKey,
    pub exe_name: String,
    pub exe_path: Option<String>,
    pub build_id: Option<String>,
    pub container_id: Option<String>,
    /// Executable mappings, sorted by start address.
    pub maps: Vec<ProcMapping>,
    /// The incarnation is over (exited, exec'd, or its pid now belongs to another process).
    pub exited: bool,
    last_used: Instant,
    /// Its perf map (JIT code names), once looked for: `Some(None)` when it has none.
    perf_map: Option<Option<PerfMap>>,
}

impl ProcEntry {
    /// The executable mapping holding `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<&ProcMapping> {
        let i = self.maps.partition_point(|m| m.mapping.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        (addr < m.mapping.end).then_some(m)
    }
}

/// Reads `/proc/<pid>/maps` with procfs. The bytes are read first and invalid UTF-8 (a file
/// name is any bytes) is replaced before parsing, so one odd path cannot fail the whole process;
/// the file itself is opened through `map_files` by address, never by that path.
pub fn read_maps(pid: u32) -> std::io::Result<MemoryMaps> {
    let bytes = std::fs::read(format!("/proc/{pid}/maps"))?;
    let text = String::from_utf8_lossy(&bytes);
    parse_maps(&text)
}

/// `struct procmap_query` of `linux/fs.h` (Linux 6.11+): one VMA of `/proc/<pid>/maps` by
/// address.
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `PROCMAP_QUERY`: `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<ProcmapQuery>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 17;
/// `PROCMAP_QUERY_VMA_{READABLE,WRITABLE,EXECUTABLE,SHARED}`, `_COVERING_OR_NEXT_VMA`.
const Q_READ: u64 = 0x01;
const Q_WRITE: u64 = 0x02;
const Q_EXEC: u64 = 0x04;
const Q_SHARED: u64 = 0x08;
const Q_COVERING_OR_NEXT: u64 = 0x10;

/// The gate VMA's line (`[vsyscall]`), if this kernel maps one: the same in every 64-bit
/// process, and not a VMA `PROCMAP_QUERY` finds (it is outside the process's VMA tree).
fn vsyscall_line() -> Option<&'static str> {
    static LINE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/maps").ok()?;
        text.lines()
            .find(|l| l.ends_with("[vsyscall]"))
            .map(|l| format!("{l}\n"))
    })
    .as_deref()
}

/// Reads only the executable mappings of `pid`, in the text form of `/proc/<pid>/maps` (one
/// line each, newlines in names escaped as the kernel does), through `PROCMAP_QUERY`: the
/// kernel formats no line (no path lookup) for the other mappings, which are most of a large
/// process's (rustc: hundreds of data and anonymous mappings, a dozen executable ones).
/// `Ok(None)` where the kernel has no `PROCMAP_QUERY` (before 6.11).
fn query_exec_maps(pid: u32) -> std::io::Result<Option<String>> {
    let f = File::open(format!("/proc/{pid}/maps"))?;
    let mut out = String::new();
    let mut name = vec![0u8; 4096];
    let mut addr = 0u64;
    loop {
        let mut q = ProcmapQuery {
            size: std::mem::size_of::<ProcmapQuery>() as u64,
            query_flags: Q_COVERING_OR_NEXT | Q_EXEC,
            query_addr: addr,
            vma_name_size: name.len() as u32,
            vma_name_addr: name.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: PROCMAP_QUERY reads and writes `q` (its size given) and writes at most
        // `vma_name_size` bytes at `vma_name_addr`, which `name` holds.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), PROCMAP_QUERY as _, &mut q) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => break,
                Some(libc::ENOTTY) | Some(libc::EINVAL) if addr == 0 => Ok(None),
                _ => Err(e),
            };
        }
        let n = (q.vma_name_size as usize).min(name.len());
        // The size counts the terminating NUL; no name: an anonymous mapping.
        let raw = &name[..n.saturating_sub(1)];
        let shown = String::from_utf8_lossy(raw).replace('\n', "\\012");
        let perm = |bit: u64, c: char| if q.vma_flags & bit != 0 { c } else { '-' };
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "{:x}-{:x} {}{}{}{} {:08x} {:02x}:{:02x} {} {}",
            q.vma_start,
            q.vma_end,
            perm(Q_READ, 'r'),
            perm(Q_WRITE, 'w'),
            perm(Q_EXEC, 'x'),
            if q.vma_flags & Q_SHARED != 0 {
                's'
            } else {
                'p'
            },
            q.vma_offset,
            q.dev_major,
            q.dev_minor,
            q.inode,
            shown
        );
        if q.vma_end <= addr {
            break;
        }
        addr = q.vma_end;
    }
    if let Some(l) = vsyscall_line() {
        out.push_str(l);
    }
    Ok(Some(out))
}

/// The executable mappings of `pid` (see [`query_exec_maps`]), else all of its maps (older
/// kernels: the caller filters).
pub fn read_exec_maps(pid: u32) -> std::io::Result<MemoryMaps> {
    match query_exec_maps(pid)? {
        Some(text) => parse_maps(&text),
        None => read_maps(pid),
    }
}

/// Parses the text of a maps file (see [`read_maps`]).
pub fn parse_maps(text: &str) -> std::io::Result<MemoryMaps> {
    MemoryMaps::from_buf_read(text.as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))
}

/// `(major, minor)` as one number (the kernel's `dev_t` layout does not matter: it is a key).
pub fn dev_key((major, minor): (i32, i32)) -> u64 {
    (u64::from(major as u32) << 32) | u64::from(minor as u32)
}

/// The device of a [`MappedFile::id`] for an `st_dev` (`fstat` of an open file).
pub fn dev_key_of_stat(st_dev: u64) -> u64 {
    (u64::from(libc::major(st_dev)) << 32) | u64::from(libc::minor(st_dev))
}

/// GNU build ID of an ELF file (its `NT_GNU_BUILD_ID` note, name `GNU`), lowercase hex.
/// Only that note: blazesym's reader returns the first note of a file without one (a
/// `.note.stapsdt` probe of libLLVM or librustc_driver), and that is no identity.
pub fn build_id(path: &std::path::Path) -> Option<String> {
    let f = File::open(path).ok()?;
    let cache = object::read::ReadCache::new(f);
    let id = match object::FileKind::parse(&cache).ok()? {
        object::FileKind::Elf64 => {
            gnu_build_id::<object::elf::FileHeader64<object::Endianness>>(&cache)
        }
        object::FileKind::Elf32 => {
            gnu_build_id::<object::elf::FileHeader32<object::Endianness>>(&cache)
        }
        _ => None,
    }?;
    (!id.is_empty()).then(|| id.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `NT_GNU_BUILD_ID` note's bytes, from the note sections (else the `PT_NOTE` segments),
/// reading headers and notes only.
fn gnu_build_id<H: object::read::elf::FileHeader<Endian = object::Endianness>>(
    cache: &object::read::ReadCache<File>,
) -> Option<Vec<u8>> {
    use object::read::elf::{ProgramHeader, SectionHeader};
    let header = H::parse(cache).ok()?;
    let endian = header.endian().ok()?;
    let is_id = |n: &object::read::elf::Note<'_, H>| {
        n.name() == object::elf::ELF_NOTE_GNU && n.n_type(endian) == object::elf::NT_GNU_BUILD_ID
    };
    let sections = header.sections(endian, cache).ok()?;
    if !sections.is_empty() {
        for s in sections.iter() {
            if let Ok(Some(mut notes)) = s.notes(endian, cache) {
                while let Ok(Some(n)) = notes.next() {
                    if is_id(&n) {
                        return Some(n.desc().to_vec());
                    }
                }
            }
        }
        return None;
    }
    for seg in header.program_headers(endian, cache).ok()? {
        if let Ok(Some(mut notes)) = seg.notes(endian, cache) {
            while let Ok(Some(n)) = notes.next() {
                if is_id(&n) {
                    return Some(n.desc().to_vec());
                }
            }
        }
    }
    None
}

/// How many mapped files the profiler may hold open: half the soft RLIMIT_NOFILE (raised to
/// the hard limit first), at most 16384, so the rest of the agent always has descriptors.
fn open_file_budget() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((mut soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 256;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        soft = hard;
    }
    ((soft / 2) as usize).clamp(16, 16_384)
}

/// The bounded cache of process snapshots and the files they hold open.
pub struct ProcMaps {
    procs: HashMap<ProcKey, ProcEntry>,
    files: HashMap<(u64, u64), Weak<MappedFile>>,
    incarnations: Option<Box<dyn Incarnations>>,
    max_processes: usize,
    /// Files held open at most (a share of RLIMIT_NOFILE); beyond it files are read by path.
    max_open_files: usize,
    /// Snapshots taken (first sight, exec, refresh).
    pub snapshots: u64,
    /// Snapshots not taken or dropped: the process was gone, or had exec'd or exited since it
    /// was announced (its maps were no longer its own).
    pub missed: u64,
    /// Incarnations snapshotted since the last `take_snapshotted` (their unwind tables load).
    snapshotted: Vec<ProcKey>,
}

impl ProcMaps {
    pub fn new(max_processes: usize) -> Self {
        ProcMaps {
            procs: HashMap::new(),
            files: HashMap::new(),
            incarnations: None,
            max_processes: max_processes.max(1),
            max_open_files: open_file_budget(),
            snapshots: 0,
            missed: 0,
            snapshotted: Vec::new(),
        }
    }

    /// Incarnations snapshotted (first sight, exec, or a refresh after a lookup missed) since
    /// the last call.
    pub fn take_snapshotted(&mut self) -> Vec<ProcKey> {
        std::mem::take(&mut self.snapshotted)
    }

    /// Checks snapshots against the kernel's incarnations from now on.
    pub fn set_incarnations(&mut self, i: Box<dyn Incarnations>) {
        self.incarnations = Some(i);
    }

    /// Whether `key` is what runs under its pid now.
    pub fn is_current(&self, key: ProcKey) -> bool {
        match &self.incarnations {
            Some(i) => i.current(key.pid) == Some(key.incarnation),
            None => procinfo::alive(key.pid),
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Files held (open or by path) by at least one snapshot.
    pub fn files(&self) -> usize {
        self.files.values().filter(|f| f.strong_count() > 0).count()
    }

    /// The name a perf map gives the JIT code at `addr` of process `key` (looked for once if
    /// the process had no JIT code at its snapshot).
    pub fn jit_name(&mut self, key: ProcKey, addr: u64) -> Option<Arc<str>> {
        let e = self.procs.get_mut(&key)?;
        let exited = e.exited;
        e.perf_map
            .get_or_insert_with(|| (!exited).then(|| PerfMap::open(key.pid)).flatten())
            .as_mut()?
            .lookup(addr)
    }

    /// The latest snapshotted incarnation of `pid`, if any.
    pub fn latest(&self, pid: u32) -> Option<u64> {
        self.procs
            .keys()
            .filter(|k| k.pid == pid)
            .map(|k| k.incarnation)
            .max()
    }

    pub fn get(&mut self, key: ProcKey) -> Option<&ProcEntry> {
        let e = self.procs.get_mut(&key)?;
        e.last_used = Instant::now();
        Some(e)
    }

    /// Reads `/proc/<pid>/maps` now, replacing any older snapshot of the same incarnation.
    /// False (and nothing kept) if the process is gone or is no longer that incarnation.
    pub fn snapshot(&mut self, key: ProcKey) -> bool {
        if key.pid == 0 || !self.is_current(key) {
            self.missed += 1;
            return false;
        }
        let entry = match self.read(key) {
            Some(e) => e,
            None => {
                self.missed += 1;
                if let Some(e) = self.procs.get_mut(&key) {
                    e.exited = true;
                }
                return false;
            }
        };
        // An exec or exit between the announcement and the read: these maps are not its own.
        if !self.is_current(key) {
            self.missed += 1;
            return false;
        }
        self.snapshots += 1;
        self.procs.insert(key, entry);
        if self.snapshotted.len() < 4 * self.max_processes {
            self.snapshotted.push(key);
        }
        self.evict();
        true
    }

    fn read(&mut self, key: ProcKey) -> Option<ProcEntry> {
        let pid = key.pid;
        let maps = read_exec_maps(pid).ok()?;
        let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                let s = p.to_string_lossy().into_owned();
                s.strip_suffix(" (deleted)")
                    .map(str::to_string)
                    .unwrap_or(s)
            });
        let mut out = Vec::new();
        let mut exe_build_id = None;
        for m in maps {
            if !m.perms.contains(MMPermissions::EXECUTE) {
                continue;
            }
            let (start, end) = m.address;
            let (file, path): (Option<Arc<MappedFile>>, Arc<str>) = match &m.pathname {
                MMapPath::Path(p) if m.inode != 0 => {
                    let f = self.file(pid, start, end, dev_key(m.dev), m.inode, p);
                    let path = f.path.clone();
                    (Some(f), path)
                }
                MMapPath::Vdso => (
                    special::vdso(pid, start, end, &mut self.files),
                    Arc::from(special::VDSO),
                ),
                MMapPath::Vsyscall => (None, Arc::from(special::VSYSCALL)),
                MMapPath::Anonymous => (None, Arc::from(special::ANON)),
                MMapPath::Other(o) => (None, Arc::from(format!("[{o}]"))),
                MMapPath::Path(p) => (None, Arc::from(p.to_string_lossy().as_ref())),
                other => (None, Arc::from(format!("{other:?}"))),
            };
            let build_id = file.as_ref().and_then(|f| f.build_id.clone());
            if exe_build_id.is_none() && exe_path.as_deref() == Some(&*path) {
                exe_build_id = build_id.as_deref().map(str::to_string);
            }
            out.push(ProcMapping {
                mapping: Arc::new(Mapping {
                    start,
                    end,
                    file_offset: m.offset,
                    path,
                    build_id,
                }),
                file,
            });
        }
        out.sort_by_key(|m| m.mapping.start);
        // JIT code: hold the perf map open now, so it is readable after the process exits.
        let perf_map = out
            .iter()
            .any(|m| &*m.mapping.path == special::ANON)
            .then(|| PerfMap::open(pid));
        let exe_name = exe_path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .map(str::to_string)
            .or_else(|| procinfo::exe_name(pid))
            .unwrap_or_default();
        Some(ProcEntry {
            key,
            exe_name,
            exe_path,
            build_id: exe_build_id,
            container_id: procinfo::container_id(pid),
            maps: out,
            exited: false,
            last_used: Instant::now(),
            perf_map,
        })
    }

    /// Announces a live process before the kernel samples it, and snapshots it.
    pub fn preannounce(&mut self, pid: u32) {
        if let Some(incarnation) = self.incarnations.as_mut().and_then(|i| i.announce(pid)) {
            self.snapshot(ProcKey { pid, incarnation });
        }
    }

    /// Marks incarnations that are over as exited (their snapshots stay until evicted).
    pub fn mark_exited(&mut self) {
        let keys: Vec<ProcKey> = self
            .procs
            .iter()
            .filter(|(_, e)| !e.exited)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if !self.is_current(k) {
                if let Some(e) = self.procs.get_mut(&k) {
                    e.exited = true;
                }
            }
        }
    }

    /// Forgets exited processes not used since `before`.
    pub fn forget_exited(&mut self, before: Instant) {
        self.procs.retain(|_, e| !e.exited || e.last_used >= before);
        self.files.retain(|_, f| f.strong_count() > 0);
        self.procs.shrink_to(self.max_processes);
        self.files.shrink_to(self.procs.len());
    }

    fn evict(&mut self) {
        while self.procs.len() > self.max_processes {
            // Exited processes first, then the least recently used.
            let victim = self
                .procs
                .values()
                .min_by_key(|e| (!e.exited, e.last_used))
                .map(|e| e.key);
            match victim {
                Some(k) => {
                    self.procs.remove(&k);
                }
                None => break,
            }
        }
        self.files.retain(|_, f| f.strong_count() > 0);
    }

    /// The shared open file for a mapping, opening it on first sight.
    fn file(
        &mut self,
        pid: u32,
        start: u64,
        end: u64,
        dev: u64,
        inode: u64,
        path: &std::path::Path,
    ) -> Arc<MappedFile> {
        let id = (dev, inode);
        if let Some(f) = self.files.get(&id).and_then(Weak::upgrade) {
            return f;
        }
        let shown = path.to_string_lossy();
        let shown: Cow<str> = match shown.strip_suffix(" (deleted)") {
            Some(s) => Cow::Owned(s.to_string()),
            None => shown,
        };
        let by_path = {
            let mut p = std::ffi::OsString::from(format!("/proc/{pid}/root"));
            let raw = path.as_os_str();
            let raw = std::os::unix::ffi::OsStrExt::as_bytes(raw);
            let raw = raw.strip_suffix(b" (deleted)").unwrap_or(raw);
            p.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(raw));
            PathBuf::from(p)
        };
        // map_files works for deleted files and other mount namespaces; root/<path> is the
        // fallback where map_files is not readable. Past the budget, nothing is held open (the
        // file is read by path while the process lives).
        let held = self.files.values().filter(|f| f.strong_count() > 0).count();
        let opened = if held >= self.max_open_files {
            Err(std::io::Error::from(nix::errno::Errno::EMFILE))
        } else {
            File::open(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
                .or_else(|_| File::open(&by_path))
        };
        let (file, open_path) = match opened {
            Ok(f) => {
                let p = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                (Some(f), p)
            }
            Err(_) => (None, by_path),
        };
        let f = Arc::new(MappedFile {
            id,
            path: Arc::from(shown.as_ref()),
            build_id: build_id(&open_path).map(Arc::from),
            open_path,
            _held: file,
        });
        self.files.insert(id, Arc::downgrade(&f));
        f
    }
}

impl MappedFile {
    /// A file held open by the profiler itself (special images).
    pub(super) fn held(id: (u64, u64), path: &str, file: File) -> MappedFile {
        let open_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        MappedFile {
            id,
            path: Arc::from(path),
            build_id: build_id(&open_path).map(Arc::from),
            open_path,
            _held: Some(file),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn me() -> ProcKey {
        ProcKey {
            pid: std::process::id(),
            incarnation: 1,
        }
    }

    #[test]
    fn build_id_is_the_gnu_note_only() {
        use object::Object;
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let want = object::File::parse(&*data).unwrap().build_id().unwrap();
        let want: Option<String> = want.map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
        assert!(want.is_some(), "test binaries are linked with a build ID");
        assert_eq!(build_id(&exe), want);
        assert_eq!(build_id(std::path::Path::new("/proc/self/status")), None);
        // A file with notes but no build ID note (rustup's libLLVM has a .note.stapsdt) has
        // none, where blazesym's reader returned the probe note.
        let llvm = std::fs::read_dir(
            std::env::var("RUSTUP_HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| std::path::PathBuf::from("/root/.rustup"))
                .join("toolchains"),
        )
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|t| {
            std::fs::read_dir(t.path().join("lib"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("libLLVM"));
        if let Some(llvm) = llvm {
            let data = std::fs::read(&llvm).unwrap();
            let real = object::File::parse(&*data).unwrap().build_id().unwrap();
            let real: Option<String> =
                real.map(|id| id.iter().map(|b| format!("{b:02x}")).collect());
            assert_eq!(build_id(&llvm), real, "{}", llvm.display());
        }
    }

    #[test]
    fn parses_maps_with_procfs_including_odd_paths() {
        let text = "7f1c2a600000-7f1c2a628000 r-xp 00028000 fd:01 1835143                    /usr/lib/x86_64-linux-gnu/libc.so.6\n\
            7ffd1000-7ffd3000 rw-p 00000000 00:00 0 \n\
            7ffd5000-7ffd7000 r-xp 00000000 00:00 0                          [vdso]\n\
            7ffd8000-7ffd9000 r-xp 00001000 fd:01 77 /tmp/a dir/prog\\012name (deleted)\n";
        let maps: Vec<_> = parse_maps(text).unwrap().into_iter().collect();
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].address, (0x7f1c2a600000, 0x7f1c2a628000));
        assert!(maps[0].perms.contains(MMPermissions::EXECUTE));
        assert_eq!(maps[0].offset, 0x28000);
        assert_eq!(dev_key(maps[0].dev), (0xfd << 32) | 1);
        assert_eq!(maps[0].inode, 1835143);
        assert!(!maps[1].perms.contains(MMPermissions::EXECUTE));
        assert_eq!(maps[1].pathname, MMapPath::Anonymous);
        assert_eq!(maps[2].pathname, MMapPath::Vdso);
        // Spaces stay in the path; the kernel escapes a newline as \012.
        assert_eq!(
            maps[3].pathname,
            MMapPath::Path("/tmp/a dir/prog\\012name (deleted)".into())
        );
        // Invalid UTF-8 in a path is replaced, not a failure of the whole file.
        let bytes = b"7ffd8000-7ffd9000 r-xp 00001000 fd:01 77 /tmp/\xff\xfe\n";
        let maps: Vec<_> = parse_maps(&String::from_utf8_lossy(bytes))
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            maps[0].pathname,
            MMapPath::Path("/tmp/\u{fffd}\u{fffd}".into())
        );
    }

    #[test]
    fn exec_maps_by_query_are_the_executable_lines_of_the_maps_file() {
        let key = |m: &procfs::process::MemoryMap| {
            (
                m.address,
                m.perms.bits(),
                m.offset,
                m.dev,
                m.inode,
                m.pathname.clone(),
            )
        };
        // Kernels before 6.11 have no PROCMAP_QUERY: the whole file is read instead.
        let Some(text) = query_exec_maps(std::process::id()).unwrap() else {
            return;
        };
        let queried: Vec<_> = parse_maps(&text).unwrap().iter().map(key).collect();
        let all: Vec<_> = read_maps(std::process::id())
            .unwrap()
            .iter()
            .filter(|m| m.perms.contains(MMPermissions::EXECUTE))
            .map(key)
            .collect();
        assert!(
            all.len() >= 3,
            "the test binary, libc and the vDSO: {all:?}"
        );
        assert_eq!(queried, all);
        // Another process's, by pid; a gone one is an error, not an empty list.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let text = query_exec_maps(child.id()).unwrap().unwrap();
        assert!(text.lines().any(|l| l.contains("/sleep")), "{text}");
        let _ = (child.kill(), child.wait());
        assert!(query_exec_maps(child.id()).is_err());
    }

    #[test]
    fn snapshots_self_and_finds_own_code_and_the_vdso() {
        let mut pm = ProcMaps::new(4);
        assert!(pm.snapshot(me()));
        let here = snapshots_self_and_finds_own_code_and_the_vdso as *const () as u64;
        let e = pm.get(me()).unwrap();
        let m = e.find(here).expect("own code is mapped");
        assert!(m.file.is_some());
        assert_eq!(Some(&*m.mapping.path), e.exe_path.as_deref());
        assert!(e.find(0).is_none());
        let vdso = e
            .maps
            .iter()
            .find(|m| &*m.mapping.path == special::VDSO)
            .expect("a vDSO mapping");
        let f = vdso.file.as_ref().expect("the vDSO image is a file");
        assert!(f.open_path.exists());
        assert_eq!(f.id.0, special::VDSO_DEV);
        // A second snapshot reuses the open files (executable, libc, vDSO).
        let files_before = pm.files.len();
        assert!(pm.snapshot(me()));
        assert_eq!(pm.files.len(), files_before);
    }

    #[test]
    fn open_files_stay_within_budget() {
        let mut pm = ProcMaps::new(4);
        pm.max_open_files = 1;
        assert!(pm.snapshot(me()));
        let e = pm.get(me()).unwrap();
        let files: Vec<_> = e
            .maps
            .iter()
            .filter_map(|m| m.file.as_ref())
            .filter(|f| f.id.0 != special::VDSO_DEV)
            .collect();
        assert!(files.len() >= 2, "the executable and libc at least");
        let held = files.iter().filter(|f| f._held.is_some()).count();
        assert_eq!(held, 1);
        // Past the budget a file is still usable by path.
        assert!(files.iter().all(|f| f.open_path.exists()));
    }

    /// The kernel's view in a test: one incarnation per pid, set by hand.
    struct Fixed(Arc<Mutex<HashMap<u32, u64>>>);

    impl Incarnations for Fixed {
        fn current(&self, pid: u32) -> Option<u64> {
            self.0.lock().unwrap().get(&pid).copied()
        }
    }

    #[test]
    fn only_the_current_incarnation_is_snapshotted() {
        let kernel = Arc::new(Mutex::new(HashMap::new()));
        let mut pm = ProcMaps::new(4);
        pm.set_incarnations(Box::new(Fixed(kernel.clone())));
        let (old, new) = (
            me(),
            ProcKey {
                incarnation: 2,
                ..me()
            },
        );
        kernel.lock().unwrap().insert(old.pid, old.incarnation);
        assert!(pm.snapshot(old));
        // The pid now runs something else (an exec, or a reused pid): the old snapshot stays
        // for the old samples, marked exited; a late event for the old one is refused.
        kernel.lock().unwrap().insert(old.pid, new.incarnation);
        pm.mark_exited();
        assert!(pm.get(old).unwrap().exited);
        pm.procs.remove(&old);
        assert!(!pm.snapshot(old));
        assert_eq!(pm.missed, 1);
        assert!(pm.snapshot(new));
        assert!(!pm.get(new).unwrap().exited);
    }

    #[test]
    fn bounded_and_exited_go_first() {
        let mut pm = ProcMaps::new(2);
        let mut a = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut b = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let key = |pid| ProcKey {
            pid,
            incarnation: 1,
        };
        assert!(pm.snapshot(me()));
        assert!(pm.snapshot(key(a.id())));
        pm.procs.get_mut(&me()).unwrap().exited = true;
        // A third process evicts the exited one, not the least recently used live one.
        assert!(pm.snapshot(key(b.id())));
        assert_eq!(pm.len(), 2);
        assert!(pm.get(me()).is_none());
        assert!(pm.get(key(a.id())).is_some());
        let _ = (a.kill(), b.kill(), a.wait(), b.wait());
        assert!(!pm.snapshot(key(u32::MAX - 1)));
        assert_eq!(pm.missed, 1);
    }
}
