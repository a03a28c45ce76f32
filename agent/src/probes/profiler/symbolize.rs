//! Symbolization on the host (blazesym): user addresses through the process's cached mappings
//! into ELF symbols and DWARF lines (inlined functions included, Rust and C++ demangled),
//! kernel addresses through `/proc/kallsyms` (parsed once and kept while kernel addresses keep
//! missing the cache, let go after [`KERNEL_KEEP_WINDOWS`] windows without a miss).
//!
//! Invariants: every lookup goes through a bounded cache (two generations: a full young
//! generation becomes the old one, the old one is dropped); files stay parsed in blazesym
//! between windows, by (device, inode), through a descriptor of the symbolizer's own (so the
//! inode cannot be reused while its entry names it, and a file outlives the processes that
//! mapped it: every new `rustc` maps the same `librustc_driver`), at most `symbolizer_files`
//! of them and [`KEEP_PARSED_BYTES`] of symbol tables, least recently used out first; a stack
//! whose outermost user frame is not a thread or process entry point is counted as truncated.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    hash::Hash,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
};

use blazesym::{
    symbolize::{
        evict::{Elf as EvictElf, Evict},
        source::{Elf, Kernel, Source},
        CodeInfo, Input, Sym, Symbolized,
    },
    MaybeDefault,
};

use super::{
    procmaps::{MappedFile, ProcKey, ProcMaps},
    raw::RawProfile,
    special,
};
use crate::{
    procinfo::comm_str,
    profile::{Frame, FrameKind, Line, ProcessProfile, Profile, Sample},
};

/// Outermost frames of a complete user stack: the process and thread entry points.
const ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_main_impl",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "__clone_internal",
    "thread_start",
    "main",
];

/// A map that holds at most about `2 × cap` entries: when the young generation reaches `cap`
/// it becomes the old one and the previous old one is dropped; hits in the old one move back.
pub struct BoundedCache<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    cap: usize,
}

impl<K: Hash + Eq, V: Clone> BoundedCache<K, V> {
    pub fn new(cap: usize) -> Self {
        BoundedCache {
            young: HashMap::new(),
            old: HashMap::new(),
            cap: cap.max(1),
        }
    }

    pub fn get(&mut self, k: &K) -> Option<V>
    where
        K: Clone,
    {
        if let Some(v) = self.young.get(k) {
            return Some(v.clone());
        }
        let v = self.old.remove(k)?;
        self.insert(k.clone(), v.clone());
        Some(v)
    }

    pub fn insert(&mut self, k: K, v: V) {
        if self.young.len() >= self.cap {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Symbolization counters (cumulative).
#[derive(Clone, Copy, Debug, Default)]
pub struct SymStats {
    pub lookups: u64,
    pub cache_hits: u64,
    /// Addresses nothing resolved (no mapping, stripped file, JIT code).
    pub unresolved: u64,
    /// Samples whose user stack did not reach an entry point.
    pub truncated: u64,
    /// Samples with a user part.
    pub user_samples: u64,
    /// Samples whose user stack was cut at an address in no executable mapping.
    pub cut: u64,
    /// Samples of processes gone before their mappings were read (user stack not shown).
    pub unmapped: u64,
    /// Parsed files dropped from the symbolizer's cache (beyond `symbolizer_files` or
    /// [`KEEP_PARSED_BYTES`], or not kept at all).
    pub files_evicted: u64,
    /// Times a file was parsed (first use, or again after an eviction).
    pub parses: u64,
    /// Files symbolized from ELF symbols only because their DWARF exceeds the budget.
    pub files_symbols_only: u64,
    /// Frames in JIT code named from a perf map.
    pub jit_frames: u64,
}

/// Memory of the files kept parsed between windows, all together: blazesym's index of each
/// symbol table (8 bytes per 24-byte symbol: 1.5 MB for `librustc_driver`, 2.4 MB for
/// `libLLVM`) and the DWARF read (see `Parsed::cost`). A file over it alone is parsed for its
/// window and dropped.
pub const KEEP_PARSED_BYTES: u64 = 16 << 20;

/// Windows without a kernel address missing the cache after which kallsyms is let go.
const KERNEL_KEEP_WINDOWS: u64 = 6;

/// Files with more symbol-table bytes than this have their mapped pages released after each
/// use (see [`release_pages`]).
const RELEASE_PAGES_MIN: u64 = 1 << 20;

/// The one frame of samples folded because their window was full (`raw::RawProfile`).
pub const FOLDED_FRAME: &str = "[window full]";

/// The one user frame of a process whose mappings were never read.
pub const UNMAPPED_FRAME: &str = "[mappings unknown]";

/// A file blazesym holds parsed between windows.
struct Parsed {
    last_window: u64,
    /// The symbolizer's own descriptor of the file: its inode cannot be reused (and be taken
    /// for this file's (device, inode)) while the entry lives.
    pin: File,
    /// What blazesym reads: `/proc/self/fd/<pin>`, or the file's separate debug file.
    source: PathBuf,
    /// `source` is the separate debug file (looked up by virtual address).
    separate: bool,
    dwarf: bool,
    /// Bytes it holds beyond its mapped pages: the index of its symbol tables (a third of
    /// their size), and the DWARF read.
    cost: u64,
    /// What blazesym maps (device as in [`MappedFile::id`], inode, size), for a file whose
    /// pages are released after each use.
    mapped: Option<(u64, u64, u64)>,
}

type Lines = Arc<[Line]>;
/// A user address's symbol: (file id, file offset looked up).
type UserKey = ((u64, u64), u64);

pub struct Symbolizer {
    blaze: blazesym::symbolize::Symbolizer,
    debug_info: bool,
    /// Files with more DWARF than this get symbols only.
    debug_info_max_bytes: u64,
    /// Files blazesym holds parsed, by (device, inode).
    parsed: HashMap<(u64, u64), Parsed>,
    max_files: usize,
    /// Bound of [`Self::parsed_bytes`] between windows.
    max_parsed_bytes: u64,
    window: u64,
    user: BoundedCache<UserKey, Lines>,
    kernel: BoundedCache<u64, Lines>,
    /// The kernel symbolizer and the window it last resolved a miss in.
    kernel_blaze: Option<(blazesym::symbolize::Symbolizer, u64)>,
    /// Function and file names shared by every cached line that has them.
    names: HashSet<Arc<str>>,
    pub stats: SymStats,
}

/// A user address's symbol (none: not in a file mapping) and the executable mapping it falls
/// in (none: in no executable mapping, where the stack is cut).
type UserFrameRef = (Option<UserKey>, Option<Arc<crate::profile::Mapping>>);

/// One shared allocation per distinct string (the same function name at many addresses).
fn intern(names: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(a) = names.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    names.insert(a.clone());
    a
}

fn line_of(names: &mut HashSet<Arc<str>>, function: &str, ci: Option<&CodeInfo<'_>>) -> Line {
    Line {
        function: intern(names, function),
        file: ci.map(|c| intern(names, c.to_path().to_string_lossy().as_ref())),
        line: ci.and_then(|c| c.line).unwrap_or(0),
    }
}

/// Innermost first: the inlined functions (deepest last in blazesym's order), then the symbol.
fn lines_of(names: &mut HashSet<Arc<str>>, sym: &Sym<'_>) -> Lines {
    let mut lines: Vec<Line> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| line_of(names, &f.name, f.code_info.as_ref()))
        .collect();
    lines.push(line_of(names, &sym.name, sym.code_info.as_deref()));
    Arc::from(lines)
}

impl Symbolizer {
    /// `debug_info`: read DWARF (lines, inlined functions) where present, else symbols only.
    /// At most 8 parsed files are kept, DWARF read up to 8 MiB a file (see [`Self::limits`]).
    pub fn new(cache_entries: usize, debug_info: bool) -> Self {
        Symbolizer {
            blaze: blazesym::symbolize::Symbolizer::builder()
                .enable_code_info(debug_info)
                .enable_inlined_fns(debug_info)
                .enable_demangling(true)
                .build(),
            debug_info,
            debug_info_max_bytes: 8 << 20,
            parsed: HashMap::new(),
            max_files: 8,
            max_parsed_bytes: KEEP_PARSED_BYTES,
            window: 0,
            user: BoundedCache::new(cache_entries / 2),
            kernel: BoundedCache::new(cache_entries / 4),
            kernel_blaze: None,
            names: HashSet::new(),
            stats: SymStats::default(),
        }
    }

    /// Keeps at most `max_files` files parsed between windows, and reads DWARF only from
    /// files with at most `debug_info_max_bytes` of it.
    pub fn limits(mut self, max_files: usize, debug_info_max_bytes: u64) -> Self {
        self.max_files = max_files.max(1);
        self.debug_info_max_bytes = debug_info_max_bytes;
        self
    }

    /// Keeps at most `bytes` of parsed files between windows (default
    /// [`KEEP_PARSED_BYTES`]).
    pub fn max_parsed_bytes(mut self, bytes: u64) -> Self {
        self.max_parsed_bytes = bytes;
        self
    }

    pub fn cached(&self) -> usize {
        self.user.len() + self.kernel.len()
    }

    /// Files held parsed now.
    pub fn parsed_files(&self) -> usize {
        self.parsed.len()
    }

    /// Whether the kernel symbolizer (all of kallsyms parsed) is held now.
    pub fn kernel_symbols_held(&self) -> bool {
        self.kernel_blaze.is_some()
    }

    /// Bytes of the files held parsed now (see [`KEEP_PARSED_BYTES`]).
    pub fn parsed_bytes(&self) -> u64 {
        self.parsed.values().map(|p| p.cost).sum()
    }

    /// Drops a file from blazesym's cache (then closes the symbolizer's descriptor of it).
    fn evict(&mut self, id: (u64, u64)) {
        if let Some(p) = self.parsed.remove(&id) {
            let _ = self.blaze.evict(&Evict::Elf(EvictElf::new(&p.source)));
            self.stats.files_evicted += 1;
            drop(p.pin);
        }
    }

    /// After a window: drops the least recently used parsed files beyond `max_files` or
    /// `max_parsed_bytes` (of equally recent ones the smallest first: the cheapest to parse
    /// again), and strings no cached line uses any more.
    fn trim(&mut self) {
        self.window += 1;
        let mut total = self.parsed_bytes();
        let mut n = self.parsed.len();
        if n > self.max_files || total > self.max_parsed_bytes {
            let mut by_age: Vec<(u64, u64, (u64, u64))> = self
                .parsed
                .iter()
                .map(|(id, e)| (e.last_window, e.cost, *id))
                .collect();
            by_age.sort_unstable();
            for (_, cost, id) in by_age {
                if n <= self.max_files && total <= self.max_parsed_bytes {
                    break;
                }
                self.evict(id);
                n -= 1;
                total -= cost;
            }
        }
        if self
            .kernel_blaze
            .as_ref()
            .is_some_and(|(_, last)| self.window - last > KERNEL_KEEP_WINDOWS)
        {
            self.kernel_blaze = None;
        }
        self.names.retain(|a| Arc::strong_count(a) > 1);
    }

    /// What blazesym reads for a file not parsed yet (parsing nothing): `(source, separate,
    /// dwarf)`, kept with a descriptor of the symbolizer's own when the file can be opened
    /// again as the same (device, inode); else read at its path for this window only.
    fn keep(&mut self, file: &MappedFile) -> (PathBuf, bool, bool, bool) {
        let (max, debug_info) = (self.debug_info_max_bytes, self.debug_info);
        let separate = super::elf::debug_file(file.build_id.as_deref());
        let own = super::elf::sizes(&file.open_path);
        let theirs = separate
            .as_deref()
            .map(super::elf::sizes)
            .unwrap_or_default();
        let dwarf = debug_info && own.dwarf + theirs.dwarf <= max;
        if debug_info && !dwarf {
            self.stats.files_symbols_only += 1;
        }
        // Without DWARF, a separate debug file still has the full symbol table (static
        // functions too; its program headers are the binary's, so file offsets hold).
        let (separate, symbols, cost) = match (dwarf, separate) {
            (false, Some(d)) => (Some(d), theirs.symbols, theirs.symbols / 3),
            (true, _) => (
                None,
                own.symbols,
                own.symbols / 3 + own.dwarf + theirs.dwarf,
            ),
            (false, None) => (None, own.symbols, own.symbols / 3),
        };
        self.stats.parses += 1;
        let Some(pin) = pin(file) else {
            let source = separate.clone().unwrap_or_else(|| file.open_path.clone());
            return (source, separate.is_some(), dwarf, false);
        };
        let source = separate
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/proc/self/fd/{}", pin.as_raw_fd())));
        let mapped = (symbols > RELEASE_PAGES_MIN)
            .then(|| {
                use std::os::unix::fs::MetadataExt;
                let m = std::fs::metadata(&source).ok()?;
                Some((super::procmaps::dev_key_of_stat(m.dev()), m.ino(), m.size()))
            })
            .flatten();
        self.parsed.insert(
            file.id,
            Parsed {
                last_window: self.window,
                pin,
                source: source.clone(),
                separate: separate.is_some(),
                dwarf,
                cost,
                mapped,
            },
        );
        (source, separate.is_some(), dwarf, true)
    }

    /// Symbolizes `offsets` of one file into the cache and into `found`.
    fn resolve_file(
        &mut self,
        file: &MappedFile,
        offsets: &[u64],
        found: &mut HashMap<UserKey, Lines>,
    ) {
        let window = self.window;
        let (source, separate, dwarf, kept) = match self.parsed.get_mut(&file.id) {
            Some(e) => {
                e.last_window = window;
                (e.source.clone(), e.separate, e.dwarf, true)
            }
            None => self.keep(file),
        };
        let mapped = self.parsed.get(&file.id).and_then(|e| e.mapped);
        let mut elf = Elf::new(&source);
        elf.debug_syms = dwarf;
        let src = Source::Elf(elf);
        let syms = if !separate {
            self.blaze
                .symbolize(&src, Input::FileOffset(offsets))
                .unwrap_or_default()
        } else {
            // A debug file's sections hold no code: give it the addresses the binary's own
            // program headers put the offsets at.
            match super::elf::file_offset_to_vaddr(&file.open_path, offsets) {
                Some(vaddrs) => self
                    .blaze
                    .symbolize(&src, Input::VirtOffset(&vaddrs))
                    .unwrap_or_default(),
                None => Vec::new(),
            }
        };
        let vdso = file.id.0 == special::VDSO_DEV;
        for (i, off) in offsets.iter().enumerate() {
            let lines = match syms.get(i) {
                Some(Symbolized::Sym(s)) if vdso => {
                    let mut lines = lines_of(&mut self.names, s).to_vec();
                    if let (Some(name), Some(last)) = (
                        special::vdso_entry_name(&file.open_path, &s.name, s.addr),
                        lines.last_mut(),
                    ) {
                        last.function = Arc::from(name);
                    }
                    Arc::from(lines)
                }
                Some(Symbolized::Sym(s)) => lines_of(&mut self.names, s),
                _ => Arc::from(Vec::new()),
            };
            self.user.insert((file.id, *off), lines.clone());
            found.insert((file.id, *off), lines);
        }
        drop(syms);
        if let Some(m) = mapped {
            release_pages(m);
        }
        if !kept {
            let _ = self.blaze.evict(&Evict::Elf(EvictElf::new(&source)));
            self.stats.files_evicted += 1;
        }
    }

    /// Symbolizes kernel addresses into the cache and into `found`.
    fn resolve_kernel(&mut self, addrs: &[u64], found: &mut HashMap<u64, Lines>) {
        let src = Source::Kernel(Kernel {
            kallsyms: MaybeDefault::Default,
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Default::default()
        });
        // A symbolizer of its own: blazesym keeps all of kallsyms parsed (~7 MB) for as long
        // as it lives. Kept while kernel addresses keep missing the cache (reading and parsing
        // /proc/kallsyms again was a quarter of the agent's CPU, at every window), dropped
        // after [`KERNEL_KEEP_WINDOWS`] windows without a miss.
        let window = self.window;
        let (blaze, last) = self.kernel_blaze.get_or_insert_with(|| {
            (
                blazesym::symbolize::Symbolizer::builder()
                    .enable_code_info(false)
                    .enable_demangling(false)
                    .build(),
                window,
            )
        });
        *last = window;
        let syms = blaze
            .symbolize(&src, Input::AbsAddr(addrs))
            .unwrap_or_default();
        for (i, a) in addrs.iter().enumerate() {
            let lines: Lines = match syms.get(i) {
                Some(Symbolized::Sym(s)) => {
                    Arc::from(vec![line_of(&mut self.names, &s.name, None)])
                }
                _ => Arc::from(Vec::new()),
            };
            self.kernel.insert(*a, lines.clone());
            found.insert(*a, lines);
        }
    }

    /// Symbolizes a window of samples (only process `pid` when given). `account`: add its
    /// stacks to the truncation counters (the continuous windows do; overlapping captures
    /// must not count the same samples twice).
    ///
    /// A user stack is cut at its first address that lies in no executable mapping of the
    /// process (after one fresh look at its maps, for code mapped since the snapshot): what a
    /// frame-pointer walk finds past code without frame pointers is garbage, and never shown.
    /// A cut stack is truncated. A process incarnation with no snapshot at all (gone before its
    /// maps could be read) shows one `[mappings unknown]` frame instead of its addresses.
    pub fn symbolize(
        &mut self,
        raw: &RawProfile,
        procs: &mut ProcMaps,
        pid: Option<u32>,
        period_nanos: u64,
        host_name: &str,
        account: bool,
    ) -> Profile {
        self.symbolize_with(
            raw,
            procs,
            pid,
            period_nanos,
            host_name,
            account,
            &mut |_| {},
        )
    }

    /// [`Symbolizer::symbolize`], calling `pump` between files of the slow pass (DWARF and
    /// symbol tables read per file can take seconds in all): the caller snapshots processes
    /// announced meanwhile, so one that starts and exits during a long symbolization is still
    /// named.
    #[allow(clippy::too_many_arguments)]
    pub fn symbolize_with(
        &mut self,
        raw: &RawProfile,
        procs: &mut ProcMaps,
        pid: Option<u32>,
        period_nanos: u64,
        host_name: &str,
        account: bool,
        pump: &mut dyn FnMut(&mut ProcMaps),
    ) -> Profile {
        // Samples by process incarnation, in pid order (stable output). A sample without an
        // incarnation (no user stack: a process past its exit, with its address space gone)
        // belongs to the latest incarnation of its pid.
        let mut latest: HashMap<u32, u64> = HashMap::new();
        for k in raw.counts.keys().filter(|k| k.incarnation != 0) {
            let l = latest.entry(k.tgid).or_default();
            *l = (*l).max(k.incarnation);
        }
        let mut by_proc: BTreeMap<ProcKey, Vec<_>> = BTreeMap::new();
        for (k, n) in &raw.counts {
            if pid.is_none_or(|p| p == k.tgid) {
                let incarnation = match k.incarnation {
                    0 if k.tgid != 0 => latest
                        .get(&k.tgid)
                        .copied()
                        .or_else(|| procs.latest(k.tgid))
                        .unwrap_or(0),
                    i => i,
                };
                let key = ProcKey {
                    pid: k.tgid,
                    incarnation,
                };
                by_proc.entry(key).or_default().push((k, *n));
            }
        }
        // Pass 1: map every user address to (file, offset) up to the first unmapped one, and
        // collect cache misses.
        let mut refreshed: HashSet<ProcKey> = HashSet::new();
        let mut user_refs: HashMap<(ProcKey, u64), UserFrameRef> = HashMap::new();
        let mut missing: HashMap<(u64, u64), (Arc<MappedFile>, HashSet<u64>)> = HashMap::new();
        let mut kernel_missing: HashSet<u64> = HashSet::new();
        // This window's symbols, taken from the cache once (a later insert may rotate it).
        let mut found_user: HashMap<UserKey, Lines> = HashMap::new();
        let mut found_kernel: HashMap<u64, Lines> = HashMap::new();
        for (&key, samples) in &by_proc {
            if key.pid != 0 && key.incarnation != 0 && procs.get(key).is_none() {
                procs.snapshot(key);
                refreshed.insert(key);
            }
            let mapped = procs.get(key).is_some();
            for (k, _) in samples {
                for (i, &addr) in k.user.iter().enumerate() {
                    if !mapped {
                        break;
                    }
                    let lookup = lookup_addr(i, addr);
                    if let Some((_, m)) = user_refs.get(&(key, lookup)) {
                        if m.is_none() {
                            break;
                        }
                        continue;
                    }
                    let mut found = procs.get(key).and_then(|e| e.find(lookup).cloned());
                    if found.is_none()
                        && !refreshed.contains(&key)
                        && procs.get(key).is_some_and(|e| !e.exited)
                    {
                        // Mapped after the snapshot (dlopen, JIT): look again once.
                        refreshed.insert(key);
                        procs.snapshot(key);
                        found = procs.get(key).and_then(|e| e.find(lookup).cloned());
                    }
                    let entry = match found {
                        Some(m) => {
                            let off = lookup - m.mapping.start + m.mapping.file_offset;
                            match m.file {
                                Some(f) => {
                                    self.stats.lookups += 1;
                                    if let Some(lines) = self.user.get(&(f.id, off)) {
                                        self.stats.cache_hits += 1;
                                        found_user.insert((f.id, off), lines);
                                    } else {
                                        missing
                                            .entry(f.id)
                                            .or_insert_with(|| (f.clone(), HashSet::new()))
                                            .1
                                            .insert(off);
                                    }
                                    (Some((f.id, off)), Some(m.mapping))
                                }
                                None => (None, Some(m.mapping)),
                            }
                        }
                        None => (None, None),
                    };
                    let cut = entry.1.is_none();
                    user_refs.insert((key, lookup), entry);
                    if cut {
                        break;
                    }
                }
                for &a in k.kernel.iter() {
                    if found_kernel.contains_key(&a) || kernel_missing.contains(&a) {
                        continue;
                    }
                    self.stats.lookups += 1;
                    if let Some(lines) = self.kernel.get(&a) {
                        self.stats.cache_hits += 1;
                        found_kernel.insert(a, lines);
                    } else {
                        kernel_missing.insert(a);
                    }
                }
            }
        }
        // Pass 2: resolve the misses, one batch per file.
        for (_, (file, offsets)) in missing {
            pump(procs);
            let mut offsets: Vec<u64> = offsets.into_iter().collect();
            offsets.sort_unstable();
            self.resolve_file(&file, &offsets, &mut found_user);
        }
        pump(procs);
        if !kernel_missing.is_empty() {
            let mut addrs: Vec<u64> = kernel_missing.into_iter().collect();
            addrs.sort_unstable();
            self.resolve_kernel(&addrs, &mut found_kernel);
        }
        // Pass 3: build the profile.
        let mut processes = Vec::with_capacity(by_proc.len());
        for (key, samples) in by_proc {
            let entry = procs.get(key);
            let mapped = entry.is_some();
            let mut p = ProcessProfile {
                pid: key.pid,
                incarnation: key.incarnation,
                executable_name: entry.map(|e| e.exe_name.clone()).unwrap_or_default(),
                executable_path: entry.and_then(|e| e.exe_path.clone()),
                build_id: entry.and_then(|e| e.build_id.clone()),
                container_id: entry.and_then(|e| e.container_id.clone()),
                samples: Vec::with_capacity(samples.len()),
            };
            let mut threads: HashMap<[u8; 16], Arc<str>> = HashMap::new();
            for (k, count) in samples {
                let thread_name = threads
                    .entry(k.comm)
                    .or_insert_with(|| Arc::from(comm_str(&k.comm)))
                    .clone();
                if p.executable_name.is_empty() {
                    p.executable_name = if key.pid == 0 {
                        "swapper".to_string()
                    } else {
                        thread_name.to_string()
                    };
                }
                let mut frames = Vec::with_capacity(k.kernel.len() + k.user.len());
                for &a in k.kernel.iter() {
                    let lines = found_kernel
                        .get(&a)
                        .cloned()
                        .unwrap_or_else(|| Arc::from(Vec::new()));
                    if lines.is_empty() {
                        self.stats.unresolved += 1;
                    }
                    frames.push(Frame {
                        kind: FrameKind::Kernel,
                        address: a,
                        mapping: None,
                        lines: lines.to_vec(),
                    });
                }
                if k.kernel_lost {
                    frames.push(lost_frame(FrameKind::Kernel, "[kernel stack lost]"));
                }
                if k.folded {
                    frames.push(lost_frame(FrameKind::User, FOLDED_FRAME));
                }
                let mut cut = false;
                if !k.user.is_empty() && !mapped {
                    cut = true;
                    if account {
                        self.stats.unmapped += count;
                    }
                    frames.push(lost_frame(FrameKind::User, UNMAPPED_FRAME));
                }
                for (i, &a) in k.user.iter().enumerate() {
                    if !mapped {
                        break;
                    }
                    let Some((sym, Some(m))) = user_refs.get(&(key, lookup_addr(i, a))) else {
                        cut = true;
                        if account {
                            self.stats.cut += count;
                        }
                        break;
                    };
                    let lines = match sym {
                        Some(s) => found_user
                            .get(s)
                            .cloned()
                            .unwrap_or_else(|| Arc::from(Vec::new())),
                        None if &*m.path == special::VSYSCALL => {
                            let off = a.saturating_sub(m.start);
                            let name = special::vsyscall_name(off);
                            Arc::from(vec![line_of(&mut self.names, name, None)])
                        }
                        None if &*m.path == special::ANON => match procs.jit_name(key, a) {
                            Some(name) => {
                                self.stats.jit_frames += 1;
                                Arc::from(vec![line_of(&mut self.names, &name, None)])
                            }
                            None => Arc::from(Vec::new()),
                        },
                        None => Arc::from(Vec::new()),
                    };
                    if lines.is_empty() {
                        self.stats.unresolved += 1;
                    }
                    frames.push(Frame {
                        kind: FrameKind::User,
                        address: a,
                        mapping: Some(m.clone()),
                        lines: lines.to_vec(),
                    });
                }
                if k.user_lost {
                    frames.push(lost_frame(FrameKind::User, "[user stack lost]"));
                }
                let truncated = !k.user.is_empty() && {
                    if account {
                        self.stats.user_samples += count;
                    }
                    let complete = !cut
                        && k.user.len() < agent_common::profiler::MAX_STACK_DEPTH
                        && frames
                            .iter()
                            .rev()
                            .take(3)
                            .filter(|f| f.kind == FrameKind::User)
                            .any(|f| f.lines.last().is_some_and(|l| is_root(&l.function)));
                    !complete
                };
                if truncated && account {
                    self.stats.truncated += count;
                }
                p.samples.push(Sample {
                    tid: k.tid,
                    thread_name,
                    frames,
                    count,
                    truncated,
                });
            }
            processes.push(p);
        }
        self.trim();
        Profile {
            start_unix_nanos: raw.start_unix_nanos,
            duration_nanos: raw.end_unix_nanos.saturating_sub(raw.start_unix_nanos),
            period_nanos,
            host_name: host_name.to_string(),
            processes,
        }
    }
}

/// Drops the agent's page-table entries of blazesym's mapping of a file (`(device, inode,
/// size)`): the whole file, mapped read-only (shared). Its pages stay in the page cache and
/// fault back in (minor faults, no I/O) when a later window looks a symbol up, but a large
/// binary kept parsed no longer holds megabytes of the agent's RSS between uses (it is
/// touched whole when parsed: `libLLVM` held 14 MB). The agent's own segments of a binary
/// (mapped by the loader, never the whole file at offset 0 read-only) are left alone.
fn release_pages((dev, inode, size): (u64, u64, u64)) {
    use procfs::process::MMPermissions;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let Ok(maps) = super::procmaps::read_maps(std::process::id()) else {
        return;
    };
    let len = size.div_ceil(page) * page;
    for m in maps.iter() {
        let (start, end) = m.address;
        let read_only = m.perms.contains(MMPermissions::READ)
            && !m
                .perms
                .intersects(MMPermissions::WRITE | MMPermissions::EXECUTE);
        if read_only
            && m.offset == 0
            && end - start == len
            && m.inode == inode
            && super::procmaps::dev_key(m.dev) == dev
        {
            // SAFETY: a read-only file mapping (blazesym's); after MADV_DONTNEED reads fault
            // the file's page-cache pages back in, so every slice blazesym holds into it stays
            // valid and reads the same bytes.
            unsafe {
                libc::madvise(
                    start as *mut libc::c_void,
                    len as usize,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

/// The symbolizer's own descriptor of a mapped file, if it opens as the same (device, inode)
/// the process mapped (a file read by path may have been replaced since).
fn pin(file: &MappedFile) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let f = File::open(&file.open_path).ok()?;
    if file.id.0 != special::VDSO_DEV {
        let m = f.metadata().ok()?;
        if (super::procmaps::dev_key_of_stat(m.dev()), m.ino()) != file.id {
            return None;
        }
    }
    Some(f)
}

/// The address to look a user frame up by: return addresses point after the call, so every
/// frame but the leaf is looked up one byte earlier (inside the call instruction).
fn lookup_addr(i: usize, addr: u64) -> u64 {
    if i == 0 {
        addr
    } else {
        addr.saturating_sub(1)
    }
}

fn is_root(name: &str) -> bool {
    ROOTS.contains(&name)
}

fn lost_frame(kind: FrameKind, what: &str) -> Frame {
    Frame {
        kind,
        address: 0,
        mapping: None,
        lines: vec![Line {
            function: Arc::from(what),
            file: None,
            line: 0,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::profiler::raw::RawStack;

    /// Held by the tests that symbolize this test binary: blazesym maps it whole for each
    /// symbolizer, and one test looks at the pages its own mapping holds.
    static OWN_EXE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn a_window_larger_than_the_cache_resolves_every_frame() {
        let _own = OWN_EXE.lock().unwrap_or_else(|e| e.into_inner());
        let addr = marker_function_for_symbolization as *const () as u64;
        // Eight distinct offsets in one function, leaf first: more than the cache holds.
        let raw = window_of((1..=8).map(|i| addr + i).collect());
        let mut s = Symbolizer::new(4, false);
        let p = s.symbolize(&raw, &mut ProcMaps::new(4), None, 1, "h", false);
        let frames = &p.processes[0].samples[0].frames;
        assert_eq!(frames.len(), 8);
        for f in frames {
            assert!(
                f.name().contains("marker_function_for_symbolization"),
                "{f:?}"
            );
        }
    }

    /// A window of one sample of this process with user stack `user`, leaf first.
    fn window_of(user: Vec<u64>) -> RawProfile {
        window_with(user, Vec::new())
    }

    /// A window of one sample of this process with kernel stack `kernel` only.
    fn kernel_window(kernel: Vec<u64>) -> RawProfile {
        window_with(Vec::new(), kernel)
    }

    fn window_with(user: Vec<u64>, kernel: Vec<u64>) -> RawProfile {
        let pid = std::process::id();
        let mut raw = RawProfile::new(0);
        raw.add(
            RawStack {
                tgid: pid,
                tid: pid,
                cgroup_id: 0,
                incarnation: 1,
                comm: [0; 16],
                user: Arc::from(user),
                kernel: Arc::from(kernel),
                user_lost: false,
                kernel_lost: false,
                folded: false,
            },
            1,
        );
        raw
    }

    #[test]
    fn kernel_symbols_are_kept_while_kernel_addresses_keep_missing() {
        let mut s = Symbolizer::new(1024, false);
        let mut procs = ProcMaps::new(4);
        let base = 0xffff_ffff_8100_0000u64;
        assert!(!s.kernel_symbols_held());
        // A new kernel address in every window: kallsyms is read once and kept.
        for i in 0..=KERNEL_KEEP_WINDOWS + 2 {
            s.symbolize(
                &kernel_window(vec![base + i]),
                &mut procs,
                None,
                1,
                "h",
                false,
            );
            assert!(s.kernel_symbols_held(), "window {i}");
        }
        // Only cached addresses from now on: let go after KERNEL_KEEP_WINDOWS windows.
        let hits = s.stats.cache_hits;
        for i in 1..KERNEL_KEEP_WINDOWS {
            s.symbolize(&kernel_window(vec![base]), &mut procs, None, 1, "h", false);
            assert!(s.kernel_symbols_held(), "quiet window {i}");
        }
        s.symbolize(&kernel_window(vec![base]), &mut procs, None, 1, "h", false);
        assert!(!s.kernel_symbols_held());
        assert_eq!(s.stats.cache_hits - hits, KERNEL_KEEP_WINDOWS);
        // A miss later reads kallsyms again.
        s.symbolize(
            &kernel_window(vec![base + 100]),
            &mut procs,
            None,
            1,
            "h",
            false,
        );
        assert!(s.kernel_symbols_held());
    }

    /// Resident KiB of this process's whole-file read-only shared mapping of `path`
    /// (blazesym's).
    fn whole_file_rss_kib(path: &std::path::Path) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        let len = m.size().div_ceil(4096) * 4096;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut found = None;
        let mut in_it = false;
        for line in smaps.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 && f[0].contains('-') && !line.ends_with(':') && f[0].len() > 8 {
                let (a, b) = f[0].split_once('-').unwrap();
                let (a, b) = (
                    u64::from_str_radix(a, 16).unwrap_or(0),
                    u64::from_str_radix(b, 16).unwrap_or(0),
                );
                in_it = f[1] == "r--s"
                    && f[2] == "00000000"
                    && b - a == len
                    && f[4] == m.ino().to_string();
            } else if in_it && f.first() == Some(&"Rss:") {
                found = f[1].parse().ok();
                in_it = false;
            }
        }
        found
    }

    #[test]
    fn parsed_files_outlive_the_processes_that_mapped_them_within_the_budget() {
        let _own = OWN_EXE.lock().unwrap_or_else(|e| e.into_inner());
        let addr = marker_function_for_symbolization as *const () as u64;
        let mut s = Symbolizer::new(1024, false);
        {
            let mut procs = ProcMaps::new(4);
            let p = s.symbolize(&window_of(vec![addr]), &mut procs, None, 1, "h", false);
            assert!(p.processes[0].samples[0].frames[0]
                .name()
                .contains("marker_function_for_symbolization"));
        }
        // Every snapshot holding the file is gone (a new process maps it next): the parsed
        // file stays, and a new address in it is resolved without parsing it again.
        assert_eq!((s.stats.parses, s.parsed_files()), (1, 1));
        // Its symbol tables are large: blazesym's whole-file mapping holds no pages after use.
        let me = std::env::current_exe().unwrap();
        assert!(crate::probes::profiler::elf::sizes(&me).symbols > RELEASE_PAGES_MIN);
        assert_eq!(whole_file_rss_kib(&me), Some(0));
        assert!(s.parsed_bytes() > 0);
        let p = s.symbolize(
            &window_of(vec![addr + 1]),
            &mut ProcMaps::new(4),
            None,
            1,
            "h",
            false,
        );
        assert!(p.processes[0].samples[0].frames[0]
            .name()
            .contains("marker_function_for_symbolization"));
        assert_eq!((s.stats.parses, s.stats.files_evicted), (1, 0));
        // Over the byte budget: dropped after its window, parsed again when next needed.
        let mut s = s.max_parsed_bytes(0);
        s.symbolize(
            &window_of(vec![addr + 2]),
            &mut ProcMaps::new(4),
            None,
            1,
            "h",
            false,
        );
        assert_eq!((s.parsed_files(), s.stats.files_evicted), (0, 1));
        s.symbolize(
            &window_of(vec![addr + 3]),
            &mut ProcMaps::new(4),
            None,
            1,
            "h",
            false,
        );
        assert_eq!(s.stats.parses, 2);
    }

    #[test]
    fn bounded_cache_keeps_two_generations() {
        let mut c = BoundedCache::new(2);
        c.insert(1, "a");
        c.insert(2, "b");
        c.insert(3, "c"); // young {3}, old {1, 2}
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&1), Some("a")); // moves back: young {3, 1}
        c.insert(4, "d"); // young {4}, old {3, 1}; 2 is gone
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&3), Some("c"));
        assert!(c.len() <= 4);
    }

    #[test]
    fn symbolizes_own_function_and_kernel() {
        let _own = OWN_EXE.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let addr = marker_function_for_symbolization as *const () as u64;
        let _ = marker_function_for_symbolization();
        let mut procs = ProcMaps::new(16);
        let mut raw = RawProfile::new(1);
        raw.end_unix_nanos = 11;
        // A kernel address from kallsyms (readable as root; zeros otherwise).
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let kaddr = kallsyms
            .lines()
            .find(|l| l.ends_with(" do_sys_openat2") || l.ends_with(" __x64_sys_getppid"))
            .and_then(|l| u64::from_str_radix(l.split(' ').next()?, 16).ok())
            .filter(|a| *a != 0);
        raw.add(
            RawStack {
                tgid: pid,
                tid: pid,
                cgroup_id: 0,
                incarnation: 1,
                comm: *b"agent-test\0\0\0\0\0\0",
                user: Arc::from(&[addr + 1, 0x10][..]),
                kernel: Arc::from(kaddr.map(|a| vec![a + 1]).unwrap_or_default()),
                user_lost: false,
                kernel_lost: false,
                folded: false,
            },
            7,
        );
        let mut s = Symbolizer::new(1024, true);
        let p = s.symbolize(&raw, &mut procs, None, 1000, "h", true);
        assert_eq!(p.duration_nanos, 10);
        assert_eq!(p.processes.len(), 1);
        let proc_ = &p.processes[0];
        assert_eq!(proc_.pid, pid);
        assert!(!proc_.executable_name.is_empty());
        let sample = &proc_.samples[0];
        assert_eq!(sample.count, 7);
        assert_eq!(&*sample.thread_name, "agent-test");
        let user: Vec<&Frame> = sample
            .frames
            .iter()
            .filter(|f| f.kind == FrameKind::User)
            .collect();
        assert!(
            user[0].name().contains("marker_function_for_symbolization"),
            "{:?}",
            user[0]
        );
        assert!(user[0].mapping.is_some());
        // 0x10 is in no mapping: the stack is cut there (never shown) and truncated.
        assert_eq!(user.len(), 1, "{user:?}");
        assert!(sample.truncated);
        assert_eq!(s.stats.cut, 7);
        if kaddr.is_some() {
            let k = &sample.frames[0];
            assert_eq!(k.kind, FrameKind::Kernel);
            // Aliases at one address (`__x64_sys_getppid` / `__do_sys_getppid`) may win.
            assert!(
                k.name().contains("openat2") || k.name().contains("getppid"),
                "{k:?}"
            );
        }
        // The second run hits the cache.
        let hits = s.stats.cache_hits;
        s.symbolize(&raw, &mut procs, None, 1000, "h", true);
        assert!(s.stats.cache_hits > hits);
    }
}
