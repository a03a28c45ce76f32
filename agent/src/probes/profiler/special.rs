//! Executable mappings that are not files: the vDSO (the kernel's image mapped into every
//! process: symbolized from a copy of its ELF image), `[vsyscall]` (three fixed entry points,
//! named from a table) and anonymous memory (JIT code: named from perf maps, `perfmap.rs`).
//!
//! Invariant: a vDSO image is read from the process itself (`/proc/<pid>/mem`), so a process
//! with another vDSO (a 32-bit one, another kernel's in a checkpoint) is never symbolized with
//! the agent's; equal images are one file (keyed by a hash of their bytes).

use std::{
    collections::HashMap,
    fs::File,
    hash::{Hash, Hasher},
    io::Write,
    os::unix::fs::FileExt,
    sync::{Arc, Weak},
};

use super::procmaps::MappedFile;

/// The name `/proc/<pid>/maps` gives the vDSO, and that mappings show.
pub const VDSO: &str = "[vdso]";
pub const VSYSCALL: &str = "[vsyscall]";
/// Anonymous executable memory (JIT code).
pub const ANON: &str = "[anon]";
/// The device number in a vDSO image's file id (no real file has it); the inode is a hash of
/// the image.
pub const VDSO_DEV: u64 = u64::MAX;

/// The largest vDSO image read (today's are 8 KiB).
const MAX_VDSO: u64 = 1 << 20;

/// The function at an offset of the `[vsyscall]` page (the legacy fixed entry points the kernel
/// emulates, arch/x86/entry/vsyscall/vsyscall_64.c).
pub fn vsyscall_name(offset: u64) -> &'static str {
    match offset / 0x400 {
        0 => "[vsyscall] gettimeofday",
        1 => "[vsyscall] time",
        2 => "[vsyscall] getcpu",
        _ => "[vsyscall]",
    }
}

/// The vDSO's own name for the function `name` at `addr` of the vDSO image at `path`:
/// the kernel exports each entry point twice, `__vdso_<name>` and a weak alias under the C
/// library's name (`clock_gettime`), and a profile shows the entry point, as perf does (it
/// prefers the global symbol). `None`: keep `name`.
pub fn vdso_entry_name(path: &std::path::Path, name: &str, addr: u64) -> Option<String> {
    use blazesym::inspect::{source, Inspector};
    if name.starts_with("__vdso_") {
        return None;
    }
    let entry = format!("__vdso_{name}");
    // A fresh inspector: the image is a few KiB, and a reused fd path must not hit a cache.
    let inspector = Inspector::new();
    let found = inspector
        .lookup(&source::Source::Elf(source::Elf::new(path)), &[&entry])
        .ok()?;
    found
        .first()?
        .iter()
        .any(|s| s.addr == addr)
        .then_some(entry)
}

/// Reads `len` bytes at `addr` of process `pid`'s memory.
fn read_mem(pid: &str, addr: u64, len: u64) -> Option<Vec<u8>> {
    let f = File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    f.read_exact_at(&mut buf, addr).ok()?;
    Some(buf)
}

/// The agent's own vDSO range.
fn own_vdso() -> Option<(u64, u64)> {
    let maps = super::procmaps::read_maps(std::process::id()).ok()?;
    maps.into_iter()
        .find(|m| m.pathname == procfs::process::MMapPath::Vdso)
        .map(|m| m.address)
}

/// The vDSO image mapped at `[start, end)` in process `pid`, as a file blazesym can read (a
/// memfd), shared by every process with the same image. Where the process's memory cannot be
/// read (it exited, or a security module forbids it), the agent's own image stands in if it
/// has the same size: the kernel maps one image into every 64-bit process.
pub fn vdso(
    pid: u32,
    start: u64,
    end: u64,
    files: &mut HashMap<(u64, u64), Weak<MappedFile>>,
) -> Option<Arc<MappedFile>> {
    let len = end
        .checked_sub(start)
        .filter(|l| *l > 0 && *l <= MAX_VDSO)?;
    let image = read_mem(&pid.to_string(), start, len).or_else(|| {
        let (s, e) = own_vdso()?;
        (e - s == len).then(|| read_mem("self", s, len))?
    })?;
    if !image.starts_with(b"\x7fELF") {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    image.hash(&mut h);
    let id = (VDSO_DEV, h.finish());
    if let Some(f) = files.get(&id).and_then(Weak::upgrade) {
        return Some(f);
    }
    let fd =
        nix::sys::memfd::memfd_create(c"agent-vdso", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .ok()?;
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.write_all(&image).ok()?;
    let f = Arc::new(MappedFile::held(id, VDSO, file));
    files.insert(id, Arc::downgrade(&f));
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsyscall_entry_points() {
        assert_eq!(vsyscall_name(0), "[vsyscall] gettimeofday");
        assert_eq!(vsyscall_name(0x400), "[vsyscall] time");
        assert_eq!(vsyscall_name(0x805), "[vsyscall] getcpu");
        assert_eq!(vsyscall_name(0xc00), "[vsyscall]");
    }

    #[test]
    fn own_vdso_image_is_shared_and_has_a_build_id() {
        let (s, e) = own_vdso().expect("a vDSO");
        let mut files = HashMap::new();
        let a = vdso(std::process::id(), s, e, &mut files).unwrap();
        let b = vdso(std::process::id(), s, e, &mut files).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(std::fs::metadata(&a.open_path).unwrap().len(), e - s);
        assert!(
            a.build_id.is_some(),
            "the kernel links its vDSO with a build id"
        );
        // clock_gettime is the weak alias of the entry point __vdso_clock_gettime.
        let inspector = blazesym::inspect::Inspector::new();
        let syms = inspector
            .lookup(
                &blazesym::inspect::source::Source::Elf(blazesym::inspect::source::Elf::new(
                    &a.open_path,
                )),
                &["clock_gettime"],
            )
            .unwrap();
        let addr = syms[0][0].addr;
        assert_eq!(
            vdso_entry_name(&a.open_path, "clock_gettime", addr).as_deref(),
            Some("__vdso_clock_gettime")
        );
        assert_eq!(
            vdso_entry_name(&a.open_path, "clock_gettime", addr + 1),
            None
        );
        assert_eq!(vdso_entry_name(&a.open_path, "__vdso_time", addr), None);
        drop((a, b));
        // Closed with its last user.
        assert!(files.values().all(|w| w.upgrade().is_none()));
        // Not a vDSO: refused, not a panic.
        assert!(vdso(std::process::id(), 0, 0, &mut files).is_none());
        assert!(vdso(u32::MAX - 1, s, s + 4096 * 1024, &mut files).is_none());
    }
}
