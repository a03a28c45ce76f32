//! Unwind tables compiled from a file's `.eh_frame` (or `.debug_frame`) with gimli: every
//! FDE's CFI evaluated into rows the kernel program can follow (CFA from rsp or rbp plus an
//! offset, rbp unchanged or saved at CFA + offset, return address at CFA - 8), sorted by
//! address, runs of equal rules merged.
//!
//! Invariants: rows are sorted by `pc` and relative to [`Table::base`] (the lowest FDE start);
//! a rule BPF cannot evaluate becomes a STOP row (never a wrong unwind); the end of an FDE not
//! followed by another becomes a STOP row, so a gap without CFI is never unwound with its
//! neighbour's rule; x86_64 ELF only.

use std::{fs::File, path::Path};

use agent_common::unwind::{row_kind, UnwindRow, MAX_FILE_ROWS};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Register,
    RegisterRule, UnwindContext, UnwindSection,
};
use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};

/// x86_64 DWARF register numbers.
const RBP: Register = Register(6);
const RSP: Register = Register(7);
const RA: Register = Register(16);
/// ELF `PF_X`.
const PF_X: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot read {0}")]
    Read(#[from] std::io::Error),
    #[error("not an ELF file the unwinder reads: {0}")]
    Elf(#[from] object::Error),
    #[error("not an x86_64 ELF file")]
    Arch,
    #[error("no .eh_frame or .debug_frame section")]
    NoCfi,
    #[error("malformed CFI: {0}")]
    Cfi(#[from] gimli::Error),
    #[error("{0} rows, more than a table may hold ({MAX_FILE_ROWS})")]
    TooLarge(usize),
    /// Not an error of the file: its rows do not fit in the kernel array beside the tables of
    /// live processes (tried again once that much is free).
    #[error("{0} rows do not fit beside the tables of live processes")]
    NoRoom(u32),
}

/// What a file's table is made of, before any row is produced: its FDEs in address order.
#[derive(Debug, Default)]
pub struct Plan {
    /// (start address, end address, section offset), sorted by start.
    fdes: Vec<(u64, u64, usize)>,
    /// The virtual address row `pc`s are relative to (the first FDE's start).
    pub base: u64,
    /// Executable `PT_LOAD` segments: (file offset, virtual address, file size), to turn a
    /// mapping's file offset into a virtual address.
    pub segments: Vec<(u64, u64, u64)>,
    /// FDEs overlapping an earlier one (skipped).
    pub overlapping: usize,
}

impl Plan {
    pub fn fdes(&self) -> usize {
        self.fdes.len()
    }

    /// A plan read back from the disk cache (no FDE index: the rows are made).
    pub fn from_parts(base: u64, segments: Vec<(u64, u64, u64)>) -> Plan {
        Plan {
            fdes: Vec::new(),
            base,
            segments,
            overlapping: 0,
        }
    }

    /// The plan without its FDE index (what a loaded table keeps).
    pub fn without_fdes(&self) -> Plan {
        Plan {
            fdes: Vec::new(),
            base: self.base,
            segments: self.segments.clone(),
            overlapping: self.overlapping,
        }
    }

    /// The `bias` of a mapping of this file at `start` with file offset `offset`: the
    /// address minus it is a row `pc`. `None` if the file has no executable segment.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        let (seg_off, seg_vaddr, _) = *self
            .segments
            .iter()
            .find(|(o, _, size)| (*o..o + (*size).max(1)).contains(&offset))
            .or_else(|| self.segments.first())?;
        // vaddr(addr) = addr - start + offset - seg_off + seg_vaddr; pc = vaddr - base.
        Some(
            start
                .wrapping_sub(offset)
                .wrapping_add(seg_off)
                .wrapping_sub(seg_vaddr)
                .wrapping_add(self.base),
        )
    }
}

/// Rows made so far, and the rule not yet written (a later row at the same address
/// replaces it; one with the same rule extends it).
struct Emitter<'s, E> {
    base: u64,
    pending: Option<UnwindRow>,
    rows: usize,
    unsupported: usize,
    sink: &'s mut dyn FnMut(UnwindRow) -> Result<(), E>,
}

impl<E: From<CompileError>> Emitter<'_, E> {
    fn push(&mut self, addr: u64, mut r: UnwindRow) -> Result<(), E> {
        let Ok(pc) = u32::try_from(addr.wrapping_sub(self.base)) else {
            // Beyond 4 GiB from the base: not addressable by a 32-bit pc; the unwind stops at
            // the last row's end marker.
            return Ok(());
        };
        r.pc = pc;
        if let Some(p) = self.pending {
            if p.pc == pc {
                self.pending = Some(r);
                return Ok(());
            }
            if (p.kind, p.cfa_offset, p.rbp_offset) == (r.kind, r.cfa_offset, r.rbp_offset) {
                return Ok(());
            }
            self.write(p)?;
        }
        self.pending = Some(r);
        Ok(())
    }

    fn write(&mut self, r: UnwindRow) -> Result<(), E> {
        self.rows += 1;
        if self.rows > MAX_FILE_ROWS {
            return Err(CompileError::TooLarge(self.rows).into());
        }
        (self.sink)(r)
    }

    fn finish(mut self) -> Result<(usize, usize), E> {
        if let Some(p) = self.pending.take() {
            self.write(p)?;
        }
        Ok((self.rows, self.unsupported))
    }
}

/// The CFI section of a file: `.eh_frame` (with its base addresses) or `.debug_frame`.
enum Cfi<'a> {
    Eh(EhFrame<EndianSlice<'a, LittleEndian>>, BaseAddresses),
    Debug(DebugFrame<EndianSlice<'a, LittleEndian>>, BaseAddresses),
}

fn cfi<'a>(obj: &object::File<'a>) -> Result<Cfi<'a>, CompileError> {
    let text = obj.section_by_name(".text").map_or(0, |s| s.address());
    if let Some(s) = obj.section_by_name(".eh_frame").filter(|s| s.size() > 0) {
        let mut bases = BaseAddresses::default()
            .set_eh_frame(s.address())
            .set_text(text);
        if let Some(hdr) = obj.section_by_name(".eh_frame_hdr") {
            bases = bases.set_eh_frame_hdr(hdr.address());
        }
        if let Some(got) = obj.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        return Ok(Cfi::Eh(EhFrame::new(s.data()?, LittleEndian), bases));
    }
    if let Some(s) = obj.section_by_name(".debug_frame").filter(|s| s.size() > 0) {
        let mut section = DebugFrame::new(s.data()?, LittleEndian);
        section.set_address_size(8);
        return Ok(Cfi::Debug(section, BaseAddresses::default()));
    }
    Err(CompileError::NoCfi)
}

fn parse(data: &[u8]) -> Result<object::File<'_>, CompileError> {
    let obj = object::File::parse(data)?;
    if obj.architecture() != object::Architecture::X86_64 {
        return Err(CompileError::Arch);
    }
    Ok(obj)
}

/// Finds every FDE of an ELF image and sorts them by address (FDE headers only: cheap).
pub fn plan(data: &[u8]) -> Result<Plan, CompileError> {
    let obj = parse(data)?;
    let mut plan = Plan::default();
    for seg in obj.segments() {
        let exec = matches!(seg.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0);
        if exec {
            let (off, size) = seg.file_range();
            plan.segments.push((off, seg.address(), size));
        }
    }
    match cfi(&obj)? {
        Cfi::Eh(s, b) => index(&s, &b, &mut plan)?,
        Cfi::Debug(s, b) => index(&s, &b, &mut plan)?,
    }
    plan.fdes.sort_unstable();
    // An FDE starting inside the previous one would make rows go backwards: skip it.
    let before = plan.fdes.len();
    let mut end = 0;
    plan.fdes.retain(|&(s, e, _)| {
        let keep = s >= end;
        if keep {
            end = e;
        }
        keep
    });
    plan.overlapping = before - plan.fdes.len();
    plan.base = plan.fdes.first().map_or(0, |f| f.0);
    Ok(plan)
}

fn index<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    plan: &mut Plan,
) -> Result<(), CompileError> {
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        if fde.len() > 0 {
            plan.fdes
                .push((fde.initial_address(), fde.end_address(), fde.offset()));
        }
    }
    Ok(())
}

/// Produces the rows of a planned image in address order, each handed to `sink` once;
/// returns (rows, rows with an unsupported rule). Memory stays bounded whatever the size of
/// the file: nothing but the plan and one pending row is held.
pub fn emit<E: From<CompileError>>(
    data: &[u8],
    plan: &Plan,
    sink: &mut dyn FnMut(UnwindRow) -> Result<(), E>,
) -> Result<(usize, usize), E> {
    let obj = parse(data)?;
    let mut em = Emitter {
        base: plan.base,
        pending: None,
        rows: 0,
        unsupported: 0,
        sink,
    };
    match cfi(&obj)? {
        Cfi::Eh(s, b) => emit_section(&s, &b, plan, &mut em)?,
        Cfi::Debug(s, b) => emit_section(&s, &b, plan, &mut em)?,
    }
    em.finish()
}

fn emit_section<'a, S, E>(
    section: &S,
    bases: &BaseAddresses,
    plan: &Plan,
    em: &mut Emitter<'_, E>,
) -> Result<(), E>
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
    E: From<CompileError>,
{
    let mut ctx = Box::new(UnwindContext::new());
    let mut cies = std::collections::HashMap::new();
    let mut last_end: Option<u64> = None;
    for &(start, end, offset) in &plan.fdes {
        if let Some(e) = last_end {
            if e < start {
                // A gap without CFI: never unwound with the previous function's rule.
                em.push(e, row(row_kind::GAP, 0, 0))?;
            }
        }
        let fde = section
            .fde_from_offset(bases, S::Offset::from(offset), |s, b, o| {
                cies.entry(gimli::UnwindOffset::into(o))
                    .or_insert_with(|| s.cie_from_offset(b, o))
                    .clone()
            })
            .map_err(CompileError::from)?;
        let mut t = fde
            .rows(section, bases, &mut ctx)
            .map_err(CompileError::from)?;
        while let Some(r) = t.next_row().map_err(CompileError::from)? {
            let compiled = compile_row(section, r);
            if compiled.kind == row_kind::STOP {
                em.unsupported += 1;
            }
            em.push(r.start_address(), compiled)?;
        }
        last_end = Some(end);
    }
    if let Some(e) = last_end {
        em.push(e, row(row_kind::GAP, 0, 0))?;
    }
    Ok(())
}

fn row(kind: u8, cfa_offset: u16, rbp_offset: i8) -> UnwindRow {
    UnwindRow {
        pc: 0,
        cfa_offset,
        rbp_offset,
        kind,
    }
}

/// `DW_OP_breg7 (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and; DW_OP_lit<N>;
/// DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`: the PLT stub's CFA. Returns N.
fn plt_threshold(expr: &[u8]) -> Option<u16> {
    match expr {
        [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22]
            if (0x30..=0x4f).contains(lit) =>
        {
            Some(u16::from(lit - 0x30))
        }
        _ => None,
    }
}

fn compile_row<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    r: &gimli::UnwindTableRow<usize>,
) -> UnwindRow {
    let stop = row(row_kind::STOP, 0, 0);
    match r.register(RA) {
        Some(RegisterRule::Undefined) => return row(row_kind::END, 0, 0),
        Some(RegisterRule::Offset(-8)) => {}
        _ => return stop,
    }
    let rbp = match r.register(RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => 0,
        Some(RegisterRule::Offset(o)) if o % 8 == 0 && o != 0 => match i8::try_from(o / 8) {
            Ok(v) => v,
            Err(_) => return stop,
        },
        _ => return stop,
    };
    match r.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(off) = u16::try_from(*offset) else {
                return stop;
            };
            match *register {
                RSP => row(row_kind::CFA_RSP, off, rbp),
                RBP => row(row_kind::CFA_RBP, off, rbp),
                _ => stop,
            }
        }
        CfaRule::Expression(e) => {
            match e.get(section).ok().and_then(|e| plt_threshold(e.0.slice())) {
                Some(n) => row(row_kind::PLT, n, rbp),
                None => stop,
            }
        }
    }
}

/// A whole table in memory (tests and tools; the loader streams instead).
#[derive(Debug, Default)]
pub struct Table {
    pub plan: Plan,
    pub rows: Vec<UnwindRow>,
    pub unsupported: usize,
}

/// Compiles the table of the ELF file at `path` into memory.
pub fn compile(path: &Path) -> Result<Table, CompileError> {
    let file = File::open(path)?;
    // SAFETY: mapped read-only and only read while mapped (see `MappedImage`).
    let map = unsafe { memmap2::Mmap::map(&file)? };
    compile_bytes(&map)
}

/// Compiles the table of an ELF image into memory.
pub fn compile_bytes(data: &[u8]) -> Result<Table, CompileError> {
    let plan = plan(data)?;
    let mut rows = Vec::new();
    let (_, unsupported) = emit::<CompileError>(data, &plan, &mut |r| {
        rows.push(r);
        Ok(())
    })?;
    Ok(Table {
        plan,
        rows,
        unsupported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row for address `pc` (the last row starting at or before it).
    fn lookup(t: &Table, pc: u64) -> Option<UnwindRow> {
        let rel = pc.checked_sub(t.plan.base)?;
        let i = t.rows.partition_point(|r| u64::from(r.pc) <= rel);
        t.rows.get(i.checked_sub(1)?).copied()
    }

    #[test]
    fn compiles_libc_and_own_binary() {
        for path in [
            std::env::current_exe().unwrap(),
            Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6").to_path_buf(),
        ] {
            let started = std::time::Instant::now();
            let t = compile(&path).unwrap();
            eprintln!(
                "{}: {} FDEs, {} rows ({} unsupported), {:?}",
                path.display(),
                t.plan.fdes(),
                t.rows.len(),
                t.unsupported,
                started.elapsed()
            );
            assert!(t.plan.fdes() > 100 && t.rows.len() > t.plan.fdes());
            assert!(t.rows.windows(2).all(|w| w[0].pc < w[1].pc), "sorted");
            assert!(!t.plan.segments.is_empty());
            // Most rows are evaluable: unsupported rules are rare.
            assert!(t.unsupported * 100 < t.rows.len(), "{}", t.unsupported);
        }
    }

    #[test]
    fn own_function_entry_has_cfa_rsp_8() {
        // At a function's first instruction the return address was just pushed: CFA = rsp + 8.
        #[inline(never)]
        fn probe_fn() -> u64 {
            std::hint::black_box(7)
        }
        let t = compile(&std::env::current_exe().unwrap()).unwrap();
        // Our own code's link-time address: the mapping of our executable.
        let maps = crate::probes::profiler::procmaps::read_maps(std::process::id()).unwrap();
        let addr = probe_fn as *const () as u64;
        let m = maps
            .into_iter()
            .find(|m| (m.address.0..m.address.1).contains(&addr))
            .unwrap();
        let bias = t.plan.bias(m.address.0, m.offset).unwrap();
        let r = lookup(&t, addr - bias + t.plan.base).expect("a row");
        assert_eq!(
            (r.kind, r.cfa_offset),
            (row_kind::CFA_RSP, 8),
            "{r:?} at {addr:#x}"
        );
    }

    #[test]
    fn plt_expression_is_recognised() {
        let e = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(plt_threshold(&e), Some(11));
        assert_eq!(plt_threshold(&e[..10]), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(compile_bytes(b"not an elf").is_err());
        assert!(compile(Path::new("/nonexistent")).is_err());
        let libc = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        for len in [0, 64, 4096, libc.len() / 3] {
            let _ = compile_bytes(&libc[..len]);
        }
    }
}
