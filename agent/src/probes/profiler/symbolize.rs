//! Symbolization on the host (blazesym): user addresses through the process's cached mappings
//! into ELF symbols and DWARF lines (inlined functions included, Rust and C++ demangled),
//! kernel addresses through `/proc/kallsyms`.
//!
//! Invariants: every lookup goes through a bounded cache (two generations: a full young
//! generation becomes the old one, the old one is dropped); blazesym's own per-file caches are
//! evicted when a held file closes; a stack whose outermost user frame is not a thread or
//! process entry point is counted as truncated.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::Hash,
    path::{Path, PathBuf},
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
    /// Parsed files dropped from the symbolizer's cache (beyond `symbolizer_files`).
    pub files_evicted: u64,
    /// Files symbolized from ELF symbols only because their DWARF exceeds the budget.
    pub files_symbols_only: u64,
    /// Frames in JIT code named from a perf map.
    pub jit_frames: u64,
}

/// Files larger than this are not kept parsed between windows (see `resolve_file`).
const KEEP_PARSED_MAX: u64 = 2 << 20;

/// The one frame of samples folded because their window was full (`raw::RawProfile`).
pub const FOLDED_FRAME: &str = "[window full]";

/// The one user frame of a process whose mappings were never read.
pub const UNMAPPED_FRAME: &str = "[mappings unknown]";

/// A file blazesym holds parsed.
struct Parsed {
    last_window: u64,
    /// What blazesym parsed: the file, or its separate debug file (symbols only).
    source: PathBuf,
    dwarf: bool,
}

type Lines = Arc<[Line]>;
/// A user address's symbol: (file id, file offset looked up).
type UserKey = ((u64, u64), u64);

pub struct Symbolizer {
    blaze: blazesym::symbolize::Symbolizer,
    debug_info: bool,
    /// Files with more DWARF than this get symbols only.
    debug_info_max_bytes: u64,
    /// Files blazesym holds parsed, by the path the profiler reads them at.
    parsed: HashMap<PathBuf, Parsed>,
    max_files: usize,
    window: u64,
    user: BoundedCache<UserKey, Lines>,
    kernel: BoundedCache<u64, Lines>,
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
            window: 0,
            user: BoundedCache::new(cache_entries / 2),
            kernel: BoundedCache::new(cache_entries / 4),
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

    pub fn cached(&self) -> usize {
        self.user.len() + self.kernel.len()
    }

    /// Files held parsed now.
    pub fn parsed_files(&self) -> usize {
        self.parsed.len()
    }

    /// Drops a file (read at `path`) from blazesym's cache.
    fn evict(&mut self, path: &Path) {
        let source = self.parsed.remove(path).map(|p| p.source);
        let _ = self.blaze.evict(&Evict::Elf(EvictElf::new(
            source.as_deref().unwrap_or(path),
        )));
    }

    /// After a window: drops the least recently used parsed files beyond `max_files`, and
    /// strings no cached line uses any more.
    fn trim(&mut self) {
        self.window += 1;
        if self.parsed.len() > self.max_files {
            let mut by_age: Vec<(u64, PathBuf)> = self
                .parsed
                .iter()
                .map(|(p, e)| (e.last_window, p.clone()))
                .collect();
            by_age.sort_unstable();
            let excess = self.parsed.len() - self.max_files;
            for (_, p) in by_age.into_iter().take(excess) {
                self.evict(&p);
                self.stats.files_evicted += 1;
            }
        }
        self.names.retain(|a| Arc::strong_count(a) > 1);
    }

    /// Symbolizes `offsets` of one file into the cache and into `found`.
    fn resolve_file(
        &mut self,
        file: &MappedFile,
        offsets: &[u64],
        found: &mut HashMap<UserKey, Lines>,
    ) {
        let (max, debug_info) = (self.debug_info_max_bytes, self.debug_info);
        let (source, dwarf) = match self.parsed.get_mut(&file.open_path) {
            Some(e) => {
                e.last_window = self.window;
                (e.source.clone(), e.dwarf)
            }
            None => {
                let separate = super::elf::debug_file(file.build_id.as_deref());
                let dwarf = debug_info
                    && super::elf::dwarf_bytes(&file.open_path)
                        + separate.as_deref().map_or(0, super::elf::dwarf_bytes)
                        <= max;
                if debug_info && !dwarf {
                    self.stats.files_symbols_only += 1;
                }
                // Without DWARF, a separate debug file still has the full symbol table (static
                // functions too; its program headers are the binary's, so file offsets hold).
                match (dwarf, separate) {
                    (false, Some(d)) => (d, false),
                    _ => (file.open_path.clone(), dwarf),
                }
            }
        };
        let mut elf = Elf::new(&source);
        elf.debug_syms = dwarf;
        let src = Source::Elf(elf);
        let syms = if source == file.open_path {
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
        // Small files stay parsed (least recently used out beyond `max_files`); a large one is
        // dropped at once: its symbol table and DWARF cost memory in proportion to its size,
        // and the symbol cache keeps what it resolved.
        let small = std::fs::metadata(&source).is_ok_and(|m| m.len() <= KEEP_PARSED_MAX);
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
        if small {
            self.parsed.entry(file.open_path.clone()).or_insert(Parsed {
                last_window: self.window,
                source,
                dwarf,
            });
        } else {
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
        // A symbolizer of its own, dropped after this batch: blazesym keeps all of kallsyms
        // parsed (~6 MB) for as long as it lives, and the cache above holds what is needed.
        let blaze = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(false)
            .enable_demangling(false)
            .build();
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
        for path in procs.take_closed() {
            self.evict(&path);
        }
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
            let mut offsets: Vec<u64> = offsets.into_iter().collect();
            offsets.sort_unstable();
            self.resolve_file(&file, &offsets, &mut found_user);
        }
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

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn a_window_larger_than_the_cache_resolves_every_frame() {
        let pid = std::process::id();
        let addr = marker_function_for_symbolization as *const () as u64;
        let mut raw = RawProfile::new(0);
        // Eight distinct offsets in one function, leaf first: more than the cache holds.
        raw.add(
            RawStack {
                tgid: pid,
                tid: pid,
                cgroup_id: 0,
                incarnation: 1,
                comm: [0; 16],
                user: Arc::from((1..=8).map(|i| addr + i).collect::<Vec<_>>()),
                kernel: Arc::from(&[][..]),
                user_lost: false,
                kernel_lost: false,
                folded: false,
            },
            1,
        );
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
