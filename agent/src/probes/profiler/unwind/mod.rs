//! The DWARF unwinder's userspace half: unwind tables compiled from `.eh_frame`
//! (`compile.rs`), kernel array ranges (`alloc.rs`), and the tables and per-process mappings
//! loaded into the kernel (`tables.rs`); here, loading the unwinder's programs and maps and
//! reading the stacks it produced.

pub mod alloc;
pub mod cache;
pub mod compile;
pub mod tables;

use agent_common::unwind::{
    UserStack, FILES_MAP, MAPPINGS_MAP, PROCS_MAP, PROGS_MAP, PROG_UNWIND, ROWS_MAP, USTACKS_MAP,
};
use aya::{
    maps::{HashMap, Map, MapData, ProgramArray},
    programs::PerfEvent,
    Ebpf, EbpfLoader,
};

use self::tables::{Tables, FILE_SLOTS, MAPPING_ENTRIES};
use crate::{
    config::ProfilerConfig,
    ebpf::{self, LoadError, ReadError},
};

use super::session::NAME;

/// The unwinder of one loaded profiler object.
pub struct Unwind {
    pub tables: Tables,
    ustacks: [HashMap<MapData, u64, UserStack>; 2],
    /// Held open: the kernel empties a program array when its last descriptor closes.
    _progs: ProgramArray<MapData>,
}

/// Sizes the unwinder's maps (they are one entry each in the object, so a profiler without
/// the unwinder costs nothing).
pub fn size_maps(l: &mut EbpfLoader<'_>, cfg: &ProfilerConfig) {
    let procs = u32::try_from(cfg.max_processes).unwrap_or(u32::MAX).max(16);
    l.map_max_entries(USTACKS_MAP[0], cfg.stack_entries)
        .map_max_entries(USTACKS_MAP[1], cfg.stack_entries)
        .map_max_entries(ROWS_MAP, cfg.unwind_table_rows)
        .map_max_entries(FILES_MAP, FILE_SLOTS)
        .map_max_entries(MAPPINGS_MAP, MAPPING_ENTRIES)
        .map_max_entries(PROCS_MAP, procs);
}

fn array_data(bpf: &mut Ebpf, name: &str) -> Result<MapData, LoadError> {
    match bpf.take_map(name) {
        Some(Map::Array(d)) => Ok(d),
        _ => Err(LoadError::new(
            format!("array map {name} missing from the {NAME} object"),
            "rebuild with `cargo xtask build-ebpf`",
        )),
    }
}

impl Unwind {
    /// Loads the tail-called step program into `UNWIND_PROGS` and takes the unwinder's maps.
    pub fn load(bpf: &mut Ebpf, cfg: &ProfilerConfig) -> Result<Unwind, LoadError> {
        let fd = {
            let p: &mut PerfEvent = ebpf::program(bpf, NAME, PROG_UNWIND)?;
            p.load()
                .map_err(|e| ebpf::explain(&format!("verifying {PROG_UNWIND}"), &e))?;
            p.fd()
                .and_then(|fd| fd.try_clone().map_err(Into::into))
                .map_err(|e| ebpf::explain(&format!("opening {PROG_UNWIND}"), &e))?
        };
        let mut progs: ProgramArray<MapData> = ebpf::take_map(bpf, NAME, PROGS_MAP)?;
        progs
            .set(0, &fd, 0)
            .map_err(|e| ebpf::explain(&format!("setting {PROGS_MAP}"), &e))?;
        let tables = Tables::new(
            array_data(bpf, ROWS_MAP)?,
            cfg.unwind_table_rows,
            ebpf::take_map(bpf, NAME, FILES_MAP)?,
            array_data(bpf, MAPPINGS_MAP)?,
            ebpf::take_map(bpf, NAME, PROCS_MAP)?,
        );
        Ok(Unwind {
            tables,
            ustacks: [
                ebpf::take_map(bpf, NAME, USTACKS_MAP[0])?,
                ebpf::take_map(bpf, NAME, USTACKS_MAP[1])?,
            ],
            _progs: progs,
        })
    }

    /// The frames of unwound stack `hash` in generation `gen` (empty if it is gone).
    pub fn stack(&self, gen: usize, hash: u64) -> Vec<u64> {
        match self.ustacks[gen].get(&hash, 0) {
            Ok(s) => s.pcs[..(s.len as usize).min(s.pcs.len())].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    /// Empties generation `gen`'s stacks (after its counts were read).
    pub fn clear(&mut self, gen: usize) -> Result<(), ReadError> {
        let keys: Vec<u64> = self.ustacks[gen].keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.ustacks[gen].remove(&k);
        }
        Ok(())
    }
}
