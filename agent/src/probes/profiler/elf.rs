//! Facts about ELF files read from their headers only (section and program headers, through
//! `object` over a read cache: no whole-file read, no mapping).

use std::{fs::File, path::Path};

use object::{read::ReadCache, Object, ObjectSection};

/// Where debuggers (and blazesym) look for a file's separate debug information by build ID
/// (Debian's `*-dbg` packages install there).
pub const DEBUG_DIR: &str = "/usr/lib/debug";

/// Bytes of DWARF a symbolizer reads for a file: its own (see [`dwarf_bytes`]) plus that of its
/// separate debug file, `/usr/lib/debug/.build-id/<xx>/<rest>.debug`, when one is installed.
pub fn dwarf_bytes_with_debug_file(path: &Path, build_id: Option<&str>) -> u64 {
    let own = dwarf_bytes(path);
    let separate = build_id.filter(|id| id.len() > 2).map_or(0, |id| {
        let debug = format!("{DEBUG_DIR}/.build-id/{}/{}.debug", &id[..2], &id[2..]);
        dwarf_bytes(Path::new(&debug))
    });
    own + separate
}

/// Bytes of DWARF debug information in an ELF file (`.debug_*` sections, uncompressed sizes;
/// `.zdebug_*` too): about what parsing it costs in memory. 0 for a file without any, or that
/// cannot be read as ELF.
pub fn dwarf_bytes(path: &Path) -> u64 {
    let Ok(f) = File::open(path) else {
        return 0;
    };
    let cache = ReadCache::new(f);
    let Ok(obj) = object::File::parse(&cache) else {
        return 0;
    };
    obj.sections()
        .filter(|s| {
            s.name_bytes()
                .is_ok_and(|n| n.starts_with(b".debug_") || n.starts_with(b".zdebug_"))
        })
        .map(|s| {
            s.compressed_file_range()
                .map_or(s.size(), |r| r.uncompressed_size)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_debug_info_is_measured_and_garbage_is_zero() {
        let me = std::env::current_exe().unwrap();
        // Test binaries are built with debug info.
        assert!(dwarf_bytes(&me) > 0);
        assert_eq!(dwarf_bytes(Path::new("/proc/self/status")), 0);
        assert_eq!(dwarf_bytes(Path::new("/nonexistent")), 0);
    }
}
