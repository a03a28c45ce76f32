//! The DWARF unwinder's tables and state, shared by the kernel program (`profile_dwarf`,
//! `profile_unwind`) and the userspace loader.
//!
//! Layout invariants:
//! - `UNWIND_ROWS` holds every loaded file's rows; one file's rows are contiguous and sorted
//!   by `pc` (relative to the file's table base, see [`UnwindMapping::bias`]); a file is one
//!   `UNWIND_FILES` slot `{first, count}`, `count == 0` meaning "no table" (frame pointers).
//! - A process's executable mappings are contiguous in `UNWIND_MAPPINGS`, sorted by `start`;
//!   `UNWIND_PROCS[tgid]` points at them and names the incarnation they belong to: the kernel
//!   uses them only for samples of that incarnation.
//! - Userspace never rewrites rows or mappings the kernel may be reading: a freed range is
//!   reused only after its file slot / process entry was cleared and a grace period passed.

use crate::profiler::MAX_STACK_DEPTH;

pub const ROWS_MAP: &str = "UNWIND_ROWS";
pub const FILES_MAP: &str = "UNWIND_FILES";
pub const MAPPINGS_MAP: &str = "UNWIND_MAPPINGS";
pub const PROCS_MAP: &str = "UNWIND_PROCS";
pub const STATE_MAP: &str = "UNWIND_STATE";
pub const PROGS_MAP: &str = "UNWIND_PROGS";
/// User stacks the DWARF unwinder produced, by generation (hash → frames).
pub const USTACKS_MAP: [&str; 2] = ["PROFILE_USTACKS_0", "PROFILE_USTACKS_1"];

/// The entry program (perf_event): starts an unwind, or walks frame pointers for processes
/// whose tables are not loaded yet.
pub const PROG_DWARF: &str = "profile_dwarf";
/// The tail-called step: unwinds up to [`FRAMES_PER_CALL`] frames, then calls itself.
pub const PROG_UNWIND: &str = "profile_unwind";

/// Frames one run of `profile_unwind` unwinds (the kernel allows 33 tail calls: 127 frames
/// need at least 4 per call).
pub const FRAMES_PER_CALL: u32 = 8;
/// Binary search steps over a process's mappings: at most 2^10 executable mappings are loaded.
pub const MAPPING_STEPS: u32 = 10;
pub const MAX_MAPPINGS: usize = 1 << MAPPING_STEPS;
/// Binary search steps over a file's rows: at most 2^22 rows per file.
pub const ROW_STEPS: u32 = 22;
pub const MAX_FILE_ROWS: usize = 1 << ROW_STEPS;

/// `UnwindMapping::file` of a mapping without a table (anonymous, JIT, no `.eh_frame`).
pub const NO_FILE: u32 = u32::MAX;

/// How a row finds the caller's frame.
pub mod row_kind {
    /// A rule BPF cannot evaluate (a DWARF expression, a register other than rsp/rbp): stop.
    pub const STOP: u8 = 0;
    /// CFA = rsp + offset.
    pub const CFA_RSP: u8 = 1;
    /// CFA = rbp + offset.
    pub const CFA_RBP: u8 = 2;
    /// A PLT stub: CFA = rsp + 8, + 8 more when (rip & 15) >= offset (the expression every
    /// x86_64 linker emits for `.plt`).
    pub const PLT: u8 = 3;
    /// The outermost frame (return address undefined: `_start`, a thread's entry): done.
    pub const END: u8 = 4;
    /// No CFI here (between functions, or code with none, such as V8's embedded builtins):
    /// walked by frame pointer, as code of a mapping without a table.
    pub const GAP: u8 = 5;
}

/// One row of a compiled unwind table (8 bytes): from `pc` to the next row's `pc`, the
/// caller's frame is found this way. The return address is always at CFA - 8 (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    /// Start of the range, relative to the file's table base.
    pub pc: u32,
    /// CFA offset in bytes (the threshold for PLT rows).
    pub cfa_offset: u16,
    /// The caller's rbp is saved at CFA + 8 × `rbp_offset`; 0: rbp is unchanged.
    pub rbp_offset: i8,
    /// [`row_kind`].
    pub kind: u8,
}

/// A loaded file's rows in `UNWIND_ROWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindFile {
    pub first: u32,
    /// 0: no table (frames in this file are walked by frame pointer).
    pub count: u32,
}

/// One executable mapping of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    /// `address - bias` is the row `pc` (table-relative) of an address in this mapping.
    pub bias: u64,
    /// `UNWIND_FILES` slot, or [`NO_FILE`].
    pub file: u32,
    pub _pad: u32,
}

/// A process's mappings in `UNWIND_MAPPINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindProc {
    /// The incarnation these mappings belong to (`PROFILE_PIDS`).
    pub incarnation: u64,
    pub first: u32,
    pub count: u32,
}

/// A user stack the unwinder produced (leaf first).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserStack {
    pub len: u32,
    pub _pad: u32,
    pub pcs: [u64; MAX_STACK_DEPTH],
}

/// The per-CPU state of one unwind, carried across tail calls.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindState {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub incarnation: u64,
    pub tgid: u32,
    pub tid: u32,
    pub map_first: u32,
    pub map_count: u32,
    pub stack: UserStack,
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::UnwindRow {}
    unsafe impl aya::Pod for super::UnwindFile {}
    unsafe impl aya::Pod for super::UnwindMapping {}
    unsafe impl aya::Pod for super::UnwindProc {}
    unsafe impl aya::Pod for super::UserStack {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(core::mem::size_of::<UnwindRow>(), 8);
        assert_eq!(core::mem::size_of::<UnwindFile>(), 8);
        assert_eq!(core::mem::size_of::<UnwindMapping>(), 32);
        assert_eq!(core::mem::size_of::<UnwindProc>(), 16);
        assert_eq!(core::mem::size_of::<UserStack>(), 8 + 8 * MAX_STACK_DEPTH);
        assert_eq!(
            core::mem::size_of::<UnwindState>(),
            48 + core::mem::size_of::<UserStack>()
        );
    }
}
