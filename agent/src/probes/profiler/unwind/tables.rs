//! Unwind tables in the kernel: each file's rows compiled once (keyed by build ID, else device
//! and inode) and shared by every process that maps it; each process incarnation's executable
//! mappings, pointing at them; both written in batches into fixed-size kernel arrays.
//!
//! Invariants:
//! - a file's rows are written before its slot points at them, and a slot or range is reused
//!   only after a grace period (one drain tick) since it was cleared, so the kernel never
//!   follows a pointer into rows being rewritten;
//! - a file slot is never reused while a loaded process's mapping still names it, and a file a
//!   loaded process maps is never evicted for another: when a table does not fit beside those
//!   of live processes it is not loaded (its frames are walked by frame pointer) until room
//!   frees up, so tables never thrash;
//! - memory here is bounded: the kernel arrays are fixed (`unwind_table_rows` rows, 4096 files,
//!   65536 mappings), compiling streams rows in batches of 4096 (no whole table in memory), and
//!   the least recently used files are evicted when a new one needs room.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsFd, AsRawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::unwind::{
    UnwindFile, UnwindMapping, UnwindProc, UnwindRow, MAX_MAPPINGS, NO_FILE,
};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};

use super::{
    alloc::{Range, RangeAlloc},
    cache,
    compile::{self, CompileError, Plan},
};
use crate::probes::profiler::procmaps::{MappedFile, ProcEntry, ProcKey};

/// File slots (`UNWIND_FILES`) and mapping entries (`UNWIND_MAPPINGS`).
pub const FILE_SLOTS: u32 = 4096;
pub const MAPPING_ENTRIES: u32 = 65_536;
/// Rows written per batch syscall.
const BATCH: usize = 4096;
/// How long a kernel program may still be reading a cleared pointer (they run for
/// microseconds; the drain's generation flip waits the same way).
const GRACE: Duration = Duration::from_millis(2);

/// What identifies a file's contents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileKey {
    BuildId(Arc<str>),
    Inode(u64, u64),
}

impl FileKey {
    pub fn of(f: &MappedFile) -> FileKey {
        match &f.build_id {
            Some(b) => FileKey::BuildId(b.clone()),
            None => FileKey::Inode(f.id.0, f.id.1),
        }
    }
}

#[derive(Debug)]
struct Loaded {
    slot: u32,
    rows: Range,
    plan: Plan,
    last_used: Instant,
    /// Loaded processes mapping it.
    users: u32,
}

#[derive(Debug)]
struct LoadedProc {
    range: Range,
    files: Vec<FileKey>,
}

/// Counts shown on `/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableStats {
    pub files_loaded: u64,
    pub files_evicted: u64,
    pub compile_errors: u64,
    /// Milliseconds spent compiling and loading tables (cumulative).
    pub compile_ms: u64,
    pub rows_used: u64,
    pub rows_capacity: u64,
    pub processes_loaded: u64,
    /// Processes whose mappings did not fit (pool full, or more than 1024 executable
    /// mappings: the rest are left out).
    pub mappings_dropped: u64,
    /// Times a file's table did not fit beside the tables of live processes (its frames are
    /// walked by frame pointer until room frees up).
    pub files_skipped: u64,
    /// Milliseconds spent evaluating CFI (gimli; part of `compile_ms`).
    pub cfi_ms: u64,
    /// Tables read from the disk cache instead of compiled.
    pub cache_hits: u64,
    /// Tables compiled into the disk cache.
    pub cache_writes: u64,
    /// Cache files found unusable (deleted, compiled again) or not written.
    pub cache_errors: u64,
}

/// A compile error as the I/O error a cache reader's sink returns.
fn to_io(e: CompileError) -> std::io::Error {
    match e {
        CompileError::Read(e) => e,
        e => std::io::Error::other(e.to_string()),
    }
}

/// A raw `bpf()` batch update of an array map (aya 0.14 has no batch API).
fn update_batch<V>(map: &MapData, first: u32, values: &[V]) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    if values.is_empty() {
        return Ok(());
    }
    let keys: Vec<u32> = (first..first + values.len() as u32).collect();
    // `union bpf_attr` batch member: in_batch, out_batch, keys, values, count|map_fd,
    // elem_flags, flags.
    let mut attr = [0u64; 8];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = values.len() as u64 | ((map.fd().as_fd().as_raw_fd() as u32 as u64) << 32);
    // SAFETY: attr is a zeroed bpf_attr prefix for this command; keys and values point to
    // `count` readable elements of the map's key and value sizes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub struct Tables {
    rows: MapData,
    rows_alloc: RangeAlloc,
    files: Array<MapData, UnwindFile>,
    slots: RangeAlloc,
    mappings: MapData,
    mappings_alloc: RangeAlloc,
    procs: BpfHashMap<MapData, u32, UnwindProc>,
    loaded: HashMap<FileKey, Loaded>,
    /// Files that could not be compiled (no CFI, not x86_64, too large): not tried again
    /// while they stay here (cleared when it holds 4096).
    failed: HashMap<FileKey, String>,
    /// Files that did not fit (rows needed): tried again once that much is free.
    skipped: HashMap<FileKey, u32>,
    processes: HashMap<ProcKey, LoadedProc>,
    epoch: u64,
    /// Bound of the disk cache directory (4 × the kernel array's bytes).
    cache_max_bytes: u64,
    pub stats: TableStats,
}

impl Tables {
    pub fn new(
        rows: MapData,
        rows_capacity: u32,
        files: Array<MapData, UnwindFile>,
        mappings: MapData,
        procs: BpfHashMap<MapData, u32, UnwindProc>,
    ) -> Tables {
        Tables {
            rows,
            rows_alloc: RangeAlloc::new(rows_capacity),
            files,
            slots: RangeAlloc::new(FILE_SLOTS),
            mappings,
            mappings_alloc: RangeAlloc::new(MAPPING_ENTRIES),
            procs,
            loaded: HashMap::new(),
            failed: HashMap::new(),
            skipped: HashMap::new(),
            processes: HashMap::new(),
            epoch: 1,
            cache_max_bytes: u64::from(rows_capacity) * 8 * 4,
            stats: TableStats {
                rows_capacity: u64::from(rows_capacity),
                ..TableStats::default()
            },
        }
    }

    /// Once per drain: ranges and slots cleared before now become reusable.
    pub fn tick(&mut self) {
        self.epoch += 1;
        self.release();
    }

    fn release(&mut self) {
        self.rows_alloc.release(self.epoch);
        self.slots.release(self.epoch);
        self.mappings_alloc.release(self.epoch);
        self.stats.rows_used =
            u64::from(self.rows_alloc.capacity()) - self.rows_alloc.available().1;
    }

    /// Waits out the grace period now, so what was cleared can be reused at once.
    fn release_now(&mut self) {
        std::thread::sleep(GRACE);
        self.epoch += 1;
        self.release();
    }

    /// Whether `key` has its mappings in the kernel.
    pub fn is_loaded(&self, key: ProcKey) -> bool {
        self.processes.contains_key(&key)
    }

    /// Loads (or reloads, after a fresh snapshot) one process incarnation's mappings,
    /// compiling the tables of files not loaded yet. Past `deadline`, once it has compiled
    /// one file, it stops before compiling another and returns false, changing nothing in the
    /// kernel: the caller tries again later and finds the files compiled so far loaded. So a
    /// process mapping many new binaries never holds the drain thread for all of them.
    pub fn load_process(&mut self, entry: &ProcEntry, deadline: Instant) -> bool {
        let started = Instant::now();
        let mut compiled = false;
        // The process's files already loaded are held (not evicted) while its others load: a
        // process whose tables do not all fit would otherwise evict its own, compile them
        // again at the next call, and so on, holding the front of the queue forever.
        let mut held = Vec::new();
        for m in entry.maps.iter().take(MAX_MAPPINGS) {
            let Some(f) = &m.file else {
                continue;
            };
            if self.needs_compile(f) {
                if compiled && Instant::now() >= deadline {
                    self.stats.compile_ms += started.elapsed().as_millis() as u64;
                    self.release_held(held);
                    return false;
                }
                compiled = true;
                // Compiled (or failed, or skipped) now; the pass below finds it cached.
                let _ = self.ensure(f, m.mapping.start, m.mapping.file_offset);
            }
            self.hold(&mut held, f);
        }
        let loaded = self.install_process(entry, started);
        self.release_held(held);
        loaded
    }

    /// Counts `f` (if loaded) as used by a process being loaded, once.
    fn hold(&mut self, held: &mut Vec<FileKey>, f: &MappedFile) {
        let key = FileKey::of(f);
        if held.contains(&key) {
            return;
        }
        if let Some(l) = self.loaded.get_mut(&key) {
            l.users += 1;
            held.push(key);
        }
    }

    fn release_held(&mut self, held: Vec<FileKey>) {
        for k in held {
            if let Some(l) = self.loaded.get_mut(&k) {
                l.users = l.users.saturating_sub(1);
            }
        }
    }

    /// The second half of [`Self::load_process`]: every file compiled (or known to have no
    /// table), the process's mappings into the kernel.
    fn install_process(&mut self, entry: &ProcEntry, started: Instant) -> bool {
        let key = entry.key;
        self.unload_process(key);
        let mut files = Vec::new();
        let mut out = Vec::with_capacity(entry.maps.len().min(MAX_MAPPINGS));
        if entry.maps.len() > MAX_MAPPINGS {
            self.stats.mappings_dropped += 1;
        }
        for m in entry.maps.iter().take(MAX_MAPPINGS) {
            let mut um = UnwindMapping {
                start: m.mapping.start,
                end: m.mapping.end,
                bias: 0,
                file: NO_FILE,
                _pad: 0,
            };
            if let Some(f) = &m.file {
                if let Some((fkey, slot, bias)) =
                    self.ensure(f, m.mapping.start, m.mapping.file_offset)
                {
                    um.file = slot;
                    um.bias = bias;
                    if !files.contains(&fkey) {
                        files.push(fkey);
                    }
                }
            }
            out.push(um);
        }
        let n = out.len() as u32;
        let first = match self.mappings_alloc.alloc(n) {
            Some(f) => Some(f),
            None if self.mappings_alloc.available().1 >= u64::from(n) => {
                self.release_now();
                self.mappings_alloc.alloc(n)
            }
            None => None,
        };
        let Some(first) = first else {
            self.stats.mappings_dropped += 1;
            return true;
        };
        let loaded = update_batch(&self.mappings, first, &out).is_ok()
            && self
                .procs
                .insert(
                    key.pid,
                    UnwindProc {
                        incarnation: key.incarnation,
                        first,
                        count: n,
                    },
                    0,
                )
                .is_ok();
        if !loaded {
            self.mappings_alloc.free((first, n), self.epoch);
            self.stats.mappings_dropped += 1;
            return true;
        }
        for f in &files {
            if let Some(l) = self.loaded.get_mut(f) {
                l.users += 1;
            }
        }
        self.processes.insert(
            key,
            LoadedProc {
                range: (first, n),
                files,
            },
        );
        self.stats.processes_loaded = self.processes.len() as u64;
        self.stats.compile_ms += started.elapsed().as_millis() as u64;
        true
    }

    /// Whether `f`'s table is neither loaded nor known to be unloadable (failed, or too large
    /// for the room there is): [`Self::ensure`] would compile it.
    fn needs_compile(&self, f: &MappedFile) -> bool {
        let key = FileKey::of(f);
        if self.loaded.contains_key(&key) || self.failed.contains_key(&key) {
            return false;
        }
        !matches!(self.skipped.get(&key), Some(&n) if self.free_rows() < u64::from(n))
    }

    /// Forgets a process incarnation: its kernel entry (if still its own), its mappings.
    pub fn unload_process(&mut self, key: ProcKey) {
        let Some(p) = self.processes.remove(&key) else {
            return;
        };
        if self
            .procs
            .get(&key.pid, 0)
            .is_ok_and(|e| e.incarnation == key.incarnation)
        {
            let _ = self.procs.remove(&key.pid);
        }
        self.mappings_alloc.free(p.range, self.epoch);
        for f in p.files {
            if let Some(l) = self.loaded.get_mut(&f) {
                l.users = l.users.saturating_sub(1);
            }
        }
        self.stats.processes_loaded = self.processes.len() as u64;
    }

    /// Unloads every loaded incarnation `current` says is over.
    pub fn reconcile(&mut self, current: impl Fn(ProcKey) -> bool) {
        let over: Vec<ProcKey> = self
            .processes
            .keys()
            .copied()
            .filter(|k| !current(*k))
            .collect();
        for k in over {
            self.unload_process(k);
        }
    }

    /// The table of a mapped file (compiled and loaded on first use): its key, slot, and the
    /// bias of the mapping at `start`/`offset`. `None`: no table (frame pointers there).
    fn ensure(&mut self, f: &MappedFile, start: u64, offset: u64) -> Option<(FileKey, u32, u64)> {
        let key = FileKey::of(f);
        if let Some(l) = self.loaded.get_mut(&key) {
            l.last_used = Instant::now();
            return Some((key.clone(), l.slot, l.plan.bias(start, offset)?));
        }
        if self.failed.contains_key(&key) {
            return None;
        }
        if let Some(&n) = self.skipped.get(&key) {
            if self.free_rows() < u64::from(n) {
                self.stats.files_skipped += 1;
                return None;
            }
        }
        match self.load_file(&key, f) {
            Ok(()) => {
                self.skipped.remove(&key);
                let l = self.loaded.get(&key)?;
                Some((key.clone(), l.slot, l.plan.bias(start, offset)?))
            }
            Err(CompileError::NoRoom(n)) => {
                // Walked by frame pointer until that much is free (not compiled again before).
                self.stats.files_skipped += 1;
                tracing::debug!(file = %f.path, rows = n, "unwind table does not fit beside the live ones; skipped for now");
                self.skipped.insert(key, n);
                None
            }
            Err(e) => {
                self.stats.compile_errors += 1;
                tracing::debug!(file = %f.path, "no unwind table: {e}");
                if self.failed.len() >= 4096 {
                    self.failed.clear();
                }
                self.failed.insert(key, e.to_string());
                None
            }
        }
    }

    /// Loads a file's table: from the disk cache when it holds the file (by build ID, else by
    /// device, inode, size and times), else compiled from its CFI (in one pass into a new
    /// cache file when there is a cache, else in two: count, then rows). `NoRoom` leaves a
    /// cached table in place.
    fn load_file(&mut self, key: &FileKey, f: &MappedFile) -> Result<(), CompileError> {
        let file = File::open(&f.open_path)?;
        let cached_at = cache::dir().and_then(|dir| {
            let id = match key {
                FileKey::BuildId(id) => id.to_string(),
                FileKey::Inode(..) => cache::inode_key(&file.metadata().ok()?),
            };
            Some((dir, id))
        });
        if let Some((dir, id)) = &cached_at {
            if let Some(c) = cache::read(dir, id) {
                let plan = Plan::from_parts(c.base, c.segments.clone());
                let n = c.rows;
                match self.write_rows(n, |sink| Ok(c.read_rows(&mut |r| sink(r).map_err(to_io))?)) {
                    Ok(first) => {
                        self.stats.cache_hits += 1;
                        return self.install(key, plan, first, n);
                    }
                    // The kernel array is full, the file is fine.
                    Err(e @ CompileError::NoRoom(_)) => return Err(e),
                    Err(e) => {
                        tracing::debug!(file = %f.path, "unwind cache file unusable ({e}); compiling again");
                        self.stats.cache_errors += 1;
                        cache::remove(dir, id);
                    }
                }
            }
        }
        // SAFETY: mapped read-only, only read while mapped; a binary truncated under a running
        // process would fault that process too.
        let data = unsafe { memmap2::Mmap::map(&file)? };
        let started = Instant::now();
        let plan = compile::plan(&data)?;
        if let Some(mut w) = cached_at
            .as_ref()
            .and_then(|(dir, id)| cache::Writer::create(dir, id, plan.base, &plan.segments))
        {
            // One pass: the rows into the cache file, then from it into the kernel.
            compile::emit::<CompileError>(&data, &plan, &mut |r| Ok(w.row(&r)?))?;
            self.stats.cfi_ms += started.elapsed().as_millis() as u64;
            match w.finish(self.cache_max_bytes) {
                Ok(c) => {
                    self.stats.cache_writes += 1;
                    let n = c.rows;
                    let first = self
                        .write_rows(n, |sink| Ok(c.read_rows(&mut |r| sink(r).map_err(to_io))?))?;
                    return self.install(key, plan.without_fdes(), first, n);
                }
                Err(e) => {
                    self.stats.cache_errors += 1;
                    tracing::debug!(file = %f.path, "cannot write the unwind cache: {e}");
                }
            }
        }
        // First pass: how many rows (nothing stored).
        let (n, _) = compile::emit::<CompileError>(&data, &plan, &mut |_| Ok(()))?;
        let n = u32::try_from(n).map_err(|_| CompileError::TooLarge(n))?;
        // Second pass: the rows, straight into the kernel in batches.
        let first = self.write_rows(n, |sink| {
            compile::emit::<CompileError>(&data, &plan, sink).map(|_| ())
        })?;
        self.stats.cfi_ms += started.elapsed().as_millis() as u64;
        self.install(key, plan.without_fdes(), first, n)
    }

    /// Writes a table's `n` rows, produced by `fill`, into a free range of `UNWIND_ROWS` in
    /// batches; returns the range's first row. On any error the range is freed again.
    fn write_rows(
        &mut self,
        n: u32,
        fill: impl FnOnce(
            &mut dyn FnMut(UnwindRow) -> Result<(), CompileError>,
        ) -> Result<(), CompileError>,
    ) -> Result<u32, CompileError> {
        let first = self.make_room(n).ok_or(CompileError::NoRoom(n))?;
        let mut buf: Vec<UnwindRow> = Vec::with_capacity(BATCH);
        let mut at = first;
        let rows = &self.rows;
        let end = first + n;
        let written = fill(&mut |r| {
            if at + buf.len() as u32 >= end {
                return Err(CompileError::TooLarge(n as usize + 1));
            }
            buf.push(r);
            if buf.len() == BATCH {
                update_batch(rows, at, &buf)?;
                at += BATCH as u32;
                buf.clear();
            }
            Ok(())
        })
        .and_then(|()| Ok(update_batch(rows, at, &buf)?))
        .and_then(|()| {
            // Fewer rows than counted: a file that changed between the passes.
            if at + buf.len() as u32 != end {
                return Err(std::io::Error::other("row count changed").into());
            }
            Ok(())
        });
        if let Err(e) = written {
            self.rows_alloc.free((first, n), self.epoch);
            return Err(e);
        }
        Ok(first)
    }

    /// Points a file slot at rows written by [`Self::write_rows`].
    fn install(
        &mut self,
        key: &FileKey,
        plan: Plan,
        first: u32,
        n: u32,
    ) -> Result<(), CompileError> {
        let slot = match self.slots.alloc(1) {
            Some(s) => s,
            None => {
                self.evict_one();
                self.release_now();
                match self.slots.alloc(1) {
                    Some(s) => s,
                    None => {
                        self.rows_alloc.free((first, n), self.epoch);
                        self.stats.files_skipped += 1;
                        return Ok(());
                    }
                }
            }
        };
        if let Err(e) = self.files.set(slot, UnwindFile { first, count: n }, 0) {
            self.rows_alloc.free((first, n), self.epoch);
            return Err(std::io::Error::other(e.to_string()).into());
        }
        self.loaded.insert(
            key.clone(),
            Loaded {
                slot,
                rows: (first, n),
                plan,
                last_used: Instant::now(),
                users: 0,
            },
        );
        self.stats.files_loaded = self.loaded.len() as u64;
        self.release();
        Ok(())
    }

    /// Rows free now or after the grace period, plus those of files no live process maps.
    fn free_rows(&self) -> u64 {
        let unused: u64 = self
            .loaded
            .values()
            .filter(|l| l.users == 0)
            .map(|l| u64::from(l.rows.1))
            .sum();
        self.rows_alloc.available().1 + unused
    }

    /// A free range of `n` rows, evicting the least recently used files no loaded process maps
    /// as needed (never a live process's table for another's: no thrashing between them).
    fn make_room(&mut self, n: u32) -> Option<u32> {
        if u64::from(n) > u64::from(self.rows_alloc.capacity()) {
            return None;
        }
        loop {
            if let Some(first) = self.rows_alloc.alloc(n) {
                return Some(first);
            }
            let (_, later) = self.rows_alloc.available();
            if later >= u64::from(n) {
                // Enough once the cleared ranges pass their grace period (or it is
                // fragmented: evicting more helps then).
                self.release_now();
                if let Some(first) = self.rows_alloc.alloc(n) {
                    return Some(first);
                }
            }
            if !self.evict_one() {
                return None;
            }
        }
    }

    /// Evicts the least recently used file no loaded process maps. False if there was none.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .loaded
            .iter()
            .filter(|(_, l)| l.users == 0)
            .min_by_key(|(_, l)| l.last_used)
            .map(|(k, _)| k.clone());
        let Some(k) = victim else {
            return false;
        };
        let l = self.loaded.remove(&k).expect("chosen above");
        // Clear the slot first: the kernel stops reading the rows before they are reused.
        let _ = self.files.set(l.slot, UnwindFile { first: 0, count: 0 }, 0);
        self.rows_alloc.free(l.rows, self.epoch);
        self.slots.free((l.slot, 1), self.epoch);
        self.stats.files_evicted += 1;
        self.stats.files_loaded = self.loaded.len() as u64;
        true
    }
}
