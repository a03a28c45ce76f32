//! Facts about ELF files read from their headers only (section and program headers, through
//! `object` over a read cache: no whole-file read, no mapping).

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use object::{read::ReadCache, Object};

/// Where debuggers (and blazesym) look for a file's separate debug information by build ID
/// (Debian's `*-dbg` packages install there).
pub const DEBUG_DIR: &str = "/usr/lib/debug";

/// The separate debug file of a build ID, `/usr/lib/debug/.build-id/<xx>/<rest>.debug`, if
/// one is installed.
pub fn debug_file(build_id: Option<&str>) -> Option<PathBuf> {
    let id = build_id.filter(|id| id.len() > 2 && id.is_ascii())?;
    let p = PathBuf::from(format!(
        "{DEBUG_DIR}/.build-id/{}/{}.debug",
        &id[..2],
        &id[2..]
    ));
    p.is_file().then_some(p)
}

/// The virtual address of file offset `offset` in an ELF file (through the loadable segment
/// holding it), or `None`.
pub fn file_offset_to_vaddr(path: &Path, offsets: &[u64]) -> Option<Vec<u64>> {
    use object::ObjectSegment;
    let f = File::open(path).ok()?;
    let cache = ReadCache::new(f);
    let obj = object::File::parse(&cache).ok()?;
    let segs: Vec<(u64, u64, u64)> = obj
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, size, s.address())
        })
        .collect();
    offsets
        .iter()
        .map(|&o| {
            segs.iter()
                .find(|(off, size, _)| (*off..off + size).contains(&o))
                .map(|(off, _, vaddr)| o - off + vaddr)
        })
        .collect()
}

/// What parsing an ELF file costs in memory, from its section headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Bytes of DWARF debug information (`.debug_*` sections, uncompressed sizes; `.zdebug_*`
    /// too).
    pub dwarf: u64,
    /// Bytes of the symbol tables (`.symtab` and `.dynsym`): what a symbolizer reads whole and
    /// indexes by address (blazesym adds 8 bytes per 24-byte symbol).
    pub symbols: u64,
}

/// Bytes of DWARF debug information in an ELF file (see [`Sizes::dwarf`]).
pub fn dwarf_bytes(path: &Path) -> u64 {
    sizes(path).dwarf
}

/// The [`Sizes`] of an ELF file; zeros for a file that cannot be read as ELF. Reads the file
/// and section headers and the section names only: `object::File::parse` would read the whole
/// symbol table too (megabytes for a large binary, at every window that needs the file).
pub fn sizes(path: &Path) -> Sizes {
    let Ok(f) = File::open(path) else {
        return Sizes::default();
    };
    let cache = ReadCache::new(f);
    match object::FileKind::parse(&cache) {
        Ok(object::FileKind::Elf64) => {
            sizes_of::<object::elf::FileHeader64<object::Endianness>>(&cache)
        }
        Ok(object::FileKind::Elf32) => {
            sizes_of::<object::elf::FileHeader32<object::Endianness>>(&cache)
        }
        _ => None,
    }
    .unwrap_or_default()
}

fn sizes_of<H: object::read::elf::FileHeader<Endian = object::Endianness>>(
    cache: &ReadCache<File>,
) -> Option<Sizes> {
    use object::read::elf::{CompressionHeader, SectionHeader};
    let header = H::parse(cache).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, cache).ok()?;
    let mut total = Sizes::default();
    for s in sections.iter() {
        let kind = s.sh_type(endian);
        if kind == object::elf::SHT_SYMTAB || kind == object::elf::SHT_DYNSYM {
            total.symbols += s.sh_size(endian).into();
            continue;
        }
        let Ok(name) = sections.section_name(endian, s) else {
            continue;
        };
        let size: u64 = if name.starts_with(b".debug_") {
            match s.compression(endian, cache) {
                Ok(Some((h, _, _))) => h.ch_size(endian).into(),
                _ => s.sh_size(endian).into(),
            }
        } else if name.starts_with(b".zdebug_") {
            // "ZLIB" and the uncompressed size, big-endian (the GNU format).
            let (offset, size) = s.file_range(endian).unwrap_or((0, 0));
            match object::ReadRef::read_bytes_at(cache, offset, 12) {
                Ok(b) if size >= 12 && &b[..4] == b"ZLIB" => {
                    u64::from_be_bytes(b[4..12].try_into().ok()?)
                }
                _ => s.sh_size(endian).into(),
            }
        } else {
            continue;
        };
        total.dwarf += size;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_debug_info_is_measured_and_garbage_is_zero() {
        let me = std::env::current_exe().unwrap();
        // Test binaries are built with debug info.
        let n = dwarf_bytes(&me);
        assert!(n > 0);
        // The same sum as `object`'s full parse gives.
        let data = std::fs::read(&me).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        use object::ObjectSection;
        let full: u64 = obj
            .sections()
            .filter(|s| s.name().is_ok_and(|n| n.starts_with(".debug_")))
            .map(|s| {
                s.compressed_file_range()
                    .map_or(s.size(), |r| r.uncompressed_size)
            })
            .sum();
        assert_eq!(n, full);
        // Symbol tables: the sizes of .symtab and .dynsym as `object` reads them.
        let syms: u64 = obj
            .sections()
            .filter(|s| s.name().is_ok_and(|n| n == ".symtab" || n == ".dynsym"))
            .map(|s| s.size())
            .sum();
        assert!(syms > 0);
        assert_eq!(sizes(&me).symbols, syms);
        assert_eq!(sizes(Path::new("/proc/self/status")), Sizes::default());
        assert_eq!(dwarf_bytes(Path::new("/proc/self/status")), 0);
        assert_eq!(dwarf_bytes(Path::new("/nonexistent")), 0);
    }
}
