//! Compiled unwind tables kept on disk by build ID (`<output.dir>/unwind-cache`), so a
//! restarted agent, or a binary whose table was evicted and is mapped again (every new `rustc`
//! maps the same `librustc_driver`), loads rows instead of evaluating its CFI again. A file
//! without a build ID (`rustc`, `cargo`, `librustc_driver` and `libLLVM` of rustup's
//! toolchains) is cached by device, inode, size, modification and change time
//! ([`inode_key`]).
//!
//! File format (little-endian), version [`VERSION`]: magic `AGUNWTBL`, version u32, row size
//! u32 (8), rows u32, segments u32, base u64, checksum u64 (over everything after the header),
//! then per segment (file offset, virtual address, file size) as 3 × u64, then the rows (pc
//! u32, cfa_offset u16, rbp_offset i8, kind u8).
//!
//! Invariants: a cache file is named by what names the contents: the build ID, else the
//! device and inode with the size and both times (a file rewritten in place changes its size
//! or its change time, which `touch` cannot set back); a file is written under a temporary name and renamed, so a reader never sees
//! half of one; anything unexpected in a file (short, other version, bad checksum) makes it a
//! miss, the file is deleted and the table compiled again, never a panic; the directory stays
//! within `max_bytes` (least recently used files deleted first; a hit refreshes the mtime).

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::SystemTime,
};

use agent_common::unwind::UnwindRow;

/// The format's version: a file of another version is a miss.
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"AGUNWTBL";
const HEADER: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8;
const ROW: usize = 8;

/// The directory of the cache (set once: `<output.dir>/unwind-cache`); none (unit tests, or
/// `agent profile` on a host where no agent made its output directory): tables are compiled
/// each time.
static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets the cache directory for every profiler session of this process (first call wins).
pub fn set_dir(dir: PathBuf) {
    let _ = DIR.set(dir);
}

/// Uses `<output_dir>/unwind-cache` (see [`set_dir`]): always for the running agent
/// (`create`), and for `agent profile` only when the output directory exists already (the
/// agent's tables are shared; a one-off profile never makes an output directory of its own
/// in the current directory).
pub fn use_output_dir(output_dir: &Path, create: bool) {
    if create || output_dir.is_dir() {
        set_dir(output_dir.join("unwind-cache"));
    }
}

/// The directory set by [`set_dir`].
pub fn dir() -> Option<&'static Path> {
    DIR.get().map(PathBuf::as_path)
}

/// A table read back: its base and executable segments (what [`super::compile::Plan`] needs
/// to place mappings) and a reader of its rows.
pub struct Cached {
    pub base: u64,
    pub segments: Vec<(u64, u64, u64)>,
    pub rows: u32,
    reader: BufReader<File>,
    checksum: u64,
    sum: Checksum,
}

impl Cached {
    /// Streams the rows into `sink` in order; fails (after the last row) if the checksum does
    /// not match, so the caller can throw away what it loaded.
    pub fn read_rows(
        mut self,
        sink: &mut dyn FnMut(UnwindRow) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; ROW * 4096];
        let mut left = self.rows as usize;
        while left > 0 {
            let n = left.min(4096);
            let chunk = &mut buf[..n * ROW];
            self.reader.read_exact(chunk)?;
            self.sum.add(chunk);
            for r in chunk.chunks_exact(ROW) {
                sink(UnwindRow {
                    pc: u32::from_le_bytes([r[0], r[1], r[2], r[3]]),
                    cfa_offset: u16::from_le_bytes([r[4], r[5]]),
                    rbp_offset: r[6] as i8,
                    kind: r[7],
                })?;
            }
            left -= n;
        }
        // Nothing may follow the rows.
        if self.reader.read(&mut [0u8; 1])? != 0 || self.sum.0 != self.checksum {
            return Err(std::io::Error::other("checksum mismatch"));
        }
        Ok(())
    }
}

/// A word-wise FNV-style hash: catches torn and corrupted files, not an adversary (the
/// directory is the agent's own).
#[derive(Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The cache key of a file without a build ID, from its `fstat`: device, inode, size,
/// modification and change times (nanoseconds), in hex joined by `-` (a build ID has no `-`,
/// so the two kinds of names never meet).
pub fn inode_key(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let ns = |s: i64, n: i64| (s as i128 * 1_000_000_000 + n as i128) as u128;
    format!(
        "{:x}-{:x}-{:x}-{:x}-{:x}",
        m.dev(),
        m.ino(),
        m.size(),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec())
    )
}

/// The cache file of a key: a build ID, or an [`inode_key`] (hex digits and `-` only;
/// anything else is not cached).
fn path_of(dir: &Path, key: &str) -> Option<PathBuf> {
    (!key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| dir.join(format!("{key}.rows")))
}

/// Deletes the cached table of `key` (found unusable while loading it).
pub fn remove(dir: &Path, key: &str) {
    if let Some(p) = path_of(dir, key) {
        let _ = std::fs::remove_file(p);
    }
}

/// The cached table of `key`, or `None` (absent, or unusable: then deleted).
pub fn read(dir: &Path, key: &str) -> Option<Cached> {
    let path = path_of(dir, key)?;
    let file = File::open(&path).ok()?;
    match open(file) {
        Ok(c) => {
            // A hit: most recently used (what the size bound keeps).
            if let Ok(f) = File::options().write(true).open(&path) {
                let _ = f.set_modified(SystemTime::now());
            }
            Some(c)
        }
        Err(e) => {
            tracing::debug!(file = %path.display(), "unwind cache file unusable ({e}); compiling again");
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

fn open(file: File) -> std::io::Result<Cached> {
    let bad = |what: &str| std::io::Error::other(what.to_string());
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut h = [0u8; HEADER];
    reader.read_exact(&mut h)?;
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    if &h[..8] != MAGIC {
        return Err(bad("not an unwind table"));
    }
    if u32_at(8) != VERSION || u32_at(12) as usize != ROW {
        return Err(bad("another format version"));
    }
    let (rows, segs) = (u32_at(16), u32_at(20));
    let (base, checksum) = (u64_at(24), u64_at(32));
    if segs > 64 || len != (HEADER + segs as usize * 24 + rows as usize * ROW) as u64 {
        return Err(bad("wrong length"));
    }
    let mut sum = Checksum::new();
    let mut segments = Vec::with_capacity(segs as usize);
    for _ in 0..segs {
        let mut s = [0u8; 24];
        reader.read_exact(&mut s)?;
        sum.add(&s);
        let at = |i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
        segments.push((at(0), at(8), at(16)));
    }
    Ok(Cached {
        base,
        segments,
        rows,
        reader,
        checksum,
        sum,
    })
}

/// A table being written (rows streamed as they are compiled); [`Writer::finish`] makes it
/// visible under its key, dropping it unfinished leaves nothing behind.
pub struct Writer {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    header: [u8; HEADER],
    rows: u32,
    sum: Checksum,
    done: bool,
}

impl Writer {
    /// Starts the file of `key` (a build ID or an [`inode_key`]) with its plan's base and
    /// executable segments (`None`: not cacheable, or the directory is not writable).
    pub fn create(
        dir: &Path,
        key: &str,
        base: u64,
        segments: &[(u64, u64, u64)],
    ) -> Option<Writer> {
        let path = path_of(dir, key)?;
        if segments.len() > 64 {
            return None;
        }
        std::fs::create_dir_all(dir).ok()?;
        let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let out = BufWriter::with_capacity(64 << 10, File::create(&tmp).ok()?);
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(ROW as u32).to_le_bytes());
        header[20..24].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        header[24..32].copy_from_slice(&base.to_le_bytes());
        let mut w = Writer {
            tmp,
            path,
            out,
            header,
            rows: 0,
            sum: Checksum::new(),
            done: false,
        };
        // The header's row count and checksum are filled in by `finish`.
        w.out.write_all(&header).ok()?;
        for (a, b, c) in segments {
            let mut s = [0u8; 24];
            s[..8].copy_from_slice(&a.to_le_bytes());
            s[8..16].copy_from_slice(&b.to_le_bytes());
            s[16..].copy_from_slice(&c.to_le_bytes());
            w.sum.add(&s);
            w.out.write_all(&s).ok()?;
        }
        Some(w)
    }

    /// Appends one row (in address order).
    pub fn row(&mut self, r: &UnwindRow) -> std::io::Result<()> {
        let mut b = [0u8; ROW];
        b[..4].copy_from_slice(&r.pc.to_le_bytes());
        b[4..6].copy_from_slice(&r.cfa_offset.to_le_bytes());
        b[6] = r.rbp_offset as u8;
        b[7] = r.kind;
        self.rows += 1;
        self.sum.add(&b);
        self.out.write_all(&b)
    }

    /// Completes the header, renames the file into place and keeps the directory within
    /// `max_bytes`; returns the table opened for reading (the rows go into the kernel from it).
    pub fn finish(mut self, max_bytes: u64) -> std::io::Result<Cached> {
        use std::io::{Seek, SeekFrom};
        self.header[16..20].copy_from_slice(&self.rows.to_le_bytes());
        self.header[32..40].copy_from_slice(&self.sum.0.to_le_bytes());
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&self.header)?;
        self.out.flush()?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.done = true;
        if let Some(dir) = self.path.parent() {
            trim(dir, max_bytes);
        }
        open(File::open(&self.path)?)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Deletes the least recently used table files until the directory holds at most `max_bytes`
/// (and leftover temporary files of processes that died mid-write, once an hour old).
pub fn trim(dir: &Path, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".rows") {
            files.push((mtime, m.len(), e.path()));
        } else if name.starts_with('.')
            && name.contains(".tmp")
            && mtime.elapsed().is_ok_and(|d| d.as_secs() > 3600)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort_unstable();
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: u32) -> Vec<UnwindRow> {
        (0..n)
            .map(|i| UnwindRow {
                pc: i * 16,
                cfa_offset: (i % 300) as u16,
                rbp_offset: -((i % 5) as i8),
                kind: (i % 4) as u8,
            })
            .collect()
    }

    fn write(dir: &Path, id: &str, rs: &[UnwindRow]) -> Cached {
        let segments = [(0x1000, 0x1000, 0x5000), (0x9000, 0xa000, 0x10)];
        let mut w = Writer::create(dir, id, 0x1040, &segments).unwrap();
        for r in rs {
            w.row(r).unwrap();
        }
        w.finish(u64::MAX).unwrap()
    }

    fn read_all(c: Cached) -> std::io::Result<Vec<UnwindRow>> {
        let mut out = Vec::new();
        c.read_rows(&mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn round_trip_exact() {
        let dir = tempfile::tempdir().unwrap();
        let rs = rows(10_000);
        let written = write(dir.path(), "abcdef01", &rs);
        assert_eq!((written.base, written.rows), (0x1040, 10_000));
        assert_eq!(read_all(written).unwrap(), rs);
        let c = read(dir.path(), "abcdef01").unwrap();
        assert_eq!(
            c.segments,
            vec![(0x1000, 0x1000, 0x5000), (0x9000, 0xa000, 0x10)]
        );
        assert_eq!(read_all(c).unwrap(), rs);
        // No temporary file left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["abcdef01.rows".to_string()]);
    }

    #[test]
    fn corrupt_files_are_misses_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let rs = rows(100);
        write(dir.path(), "aa", &rs);
        let path = dir.path().join("aa.rows");
        let good = std::fs::read(&path).unwrap();
        // A flipped row byte: the header is fine, the checksum fails after the rows.
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(read_all(read(dir.path(), "aa").unwrap()).is_err());
        // Truncated, other version, garbage, empty: misses, and the file is gone.
        for bad in [
            good[..good.len() - 3].to_vec(),
            [&good[..8], &2u32.to_le_bytes()[..], &good[12..]].concat(),
            b"garbage".to_vec(),
            Vec::new(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(read(dir.path(), "aa").is_none());
            assert!(!path.exists());
        }
        // Not a key: never a path outside the directory.
        assert!(Writer::create(dir.path(), "../x", 0, &[]).is_none());
        assert!(Writer::create(dir.path(), "a/b", 0, &[]).is_none());
        assert!(read(dir.path(), "").is_none());
    }

    #[test]
    fn inode_keys_follow_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"one").unwrap();
        let key = |p: &Path| inode_key(&std::fs::metadata(p).unwrap());
        let first = key(&path);
        assert_eq!(first, key(&path));
        assert!(path_of(dir.path(), &first).is_some());
        assert!(!first.is_empty() && first.len() <= 128);
        // Rewritten in place with the same size and the old modification time set back: the
        // change time still moves.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"two").unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_ne!(first, key(&path));
        // A cached table under an inode key round-trips like one under a build ID.
        let rs = rows(10);
        write(dir.path(), &key(&path), &rs);
        assert_eq!(
            read_all(read(dir.path(), &key(&path)).unwrap()).unwrap(),
            rs
        );
    }

    #[test]
    fn size_bound_drops_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let rs = rows(1000);
        write(dir.path(), "01", &rs);
        let one = std::fs::metadata(dir.path().join("01.rows")).unwrap().len();
        let old = SystemTime::now() - std::time::Duration::from_secs(100);
        File::options()
            .write(true)
            .open(dir.path().join("01.rows"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        write(dir.path(), "02", &rs);
        // Room for two: nothing goes.
        trim(dir.path(), 2 * one);
        assert!(dir.path().join("01.rows").exists());
        // Room for one: the older goes.
        trim(dir.path(), one);
        assert!(!dir.path().join("01.rows").exists());
        assert!(dir.path().join("02.rows").exists());
    }
}
