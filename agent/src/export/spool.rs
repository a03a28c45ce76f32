//! Bounded on-disk FIFO of byte records, so the OTLP exporter loses nothing in a collector outage.
//!
//! Layout of the spool directory:
//! - `00000000000000000001.seg`, `...2.seg`, ...: segment files, appended in order and rolled at
//!   `max(1 MiB, max_bytes / 16)`. Each holds whole records, little-endian:
//!   `[u32 len][u32 crc32][u8 signal][u64 id][u64 created_unix_ms][u64 items][len bytes payload]`,
//!   where the CRC-32 (IEEE) covers `len` and everything after the CRC field.
//! - `head`: the consumed position (segment number, offset in it) and the next id, with its own
//!   CRC, replaced atomically (write `head.tmp`, rename). Segments numbered below it are consumed.
//! - `lock`: held with `flock` while a `Spool` is open, so two processes never share a spool.
//! - `FORMAT`: `agent-spool 1`, the layout's version (`crate::persist::SPOOL`); a spool of
//!   another version is discarded at open rather than misread.
//!
//! Durability: every append goes to the OS at once (a process crash loses nothing); data and
//! `head` are `fdatasync`ed at most once per second (checked on `push`/`pop`), on
//! [`Spool::sync`] and, best effort, on drop, so a power loss can lose about the last second.
//!
//! Delivery is at-least-once: a record is removed only by `pop` after it was sent, so a crash
//! between the send and the `pop` sends it again after the restart; so does a power loss within a
//! second of the `pop` (the `head` file was not yet on disk), or a `head` file found corrupt (the
//! oldest remaining segment is then read from its start).
//!
//! Invariants: memory holds at most one record's payload (plus a few bytes per segment); the
//! segment files never exceed `max_bytes` in all: a push that would exceed it first deletes the
//! oldest segment files whole, counting their unread records in `dropped_records`/`dropped_items`;
//! every record lost to corruption is counted in `corrupt_records`; ids increase across restarts
//! (only the id of a record lost in a torn tail can be given again). A `Spool` does blocking I/O:
//! call it from a blocking thread (`spawn_blocking`), not from an async task directly.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, BufReader, Read, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Bytes of a record's header: len, crc, signal, id, created_unix_ms, items.
pub const RECORD_HEADER_BYTES: u64 = 33;
/// The smallest segment size (segments roll at `max(this, max_bytes / 16)`).
const MIN_SEGMENT_BYTES: u64 = 1 << 20;
/// `fdatasync` at most this often (besides explicit `sync()`).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_DIGITS: usize = 20;
const HEAD_FILE: &str = "head";
const HEAD_TMP_FILE: &str = "head.tmp";
const LOCK_FILE: &str = "lock";
/// How long `open` waits for a lock held by someone else before it reports `Locked`.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
const HEAD_MAGIC: [u8; 4] = *b"SPH1";
/// magic, segment, offset, next id, crc.
const HEAD_BYTES: usize = 4 + 8 + 8 + 8 + 4;
/// Read size while checking segments at open.
const SCAN_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Found while reading (disk corruption after open): the rest of that segment was
    /// discarded and counted in `corrupt_records`; the next `peek` goes on with the next segment.
    #[error(
        "spool: corrupt record in {path} at offset {offset} ({reason}); \
         the rest of that segment was discarded"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error(
        "spool: a record of {size} bytes (header included) cannot fit a spool of {max_bytes} bytes"
    )]
    TooLarge { size: u64, max_bytes: u64 },
    #[error("spool: {dir} is in use by another spool (its lock file is held)")]
    Locked { dir: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a record carries (one byte on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Logs,
    Profiles,
}

impl Signal {
    fn to_byte(self) -> u8 {
        match self {
            Signal::Metrics => 1,
            Signal::Logs => 2,
            Signal::Profiles => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Signal> {
        match b {
            1 => Some(Signal::Metrics),
            2 => Some(Signal::Logs),
            3 => Some(Signal::Profiles),
            _ => None,
        }
    }
}

/// One spooled record, as `peek` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub signal: Signal,
    /// When it was pushed.
    pub created_unix_ms: u64,
    /// Data points / log records in the payload, for accounting.
    pub items: u64,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records not yet popped.
    pub records: u64,
    /// Size of the segment files on disk (popped records still count until their segment is
    /// deleted); never above `max_bytes` after a push.
    pub bytes: u64,
    /// Records dropped unread because the spool was full (cumulative since open).
    pub dropped_records: u64,
    /// Items of those records.
    pub dropped_items: u64,
    /// Records lost to corruption: a torn tail (one per corrupt segment found at open) or, when
    /// reading, every record left in the segment (cumulative since open).
    pub corrupt_records: u64,
}

/// One segment file, as memory tracks it.
#[derive(Debug)]
struct Segment {
    no: u64,
    /// File size (whole records only).
    len: u64,
    /// Records not yet popped, and their items.
    records: u64,
    items: u64,
}

/// The head record, as the last `peek` read it (cleared whenever the head moves).
#[derive(Clone, Copy, Debug)]
struct Peeked {
    id: u64,
    items: u64,
    end: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; `head_offset` is the read position in the front one.
    segments: VecDeque<Segment>,
    head_offset: u64,
    /// Appends to the back segment when set.
    writer: Option<File>,
    /// A read handle on one segment.
    reader: Option<(u64, File)>,
    peeked: Option<Peeked>,
    next_id: u64,
    next_segment: u64,
    dropped_records: u64,
    dropped_items: u64,
    corrupt_records: u64,
    /// Rolled segments whose last appends are not yet `fdatasync`ed.
    unsynced: Vec<(u64, File)>,
    writer_dirty: bool,
    head_dirty: bool,
    dir_dirty: bool,
    last_sync: Instant,
    _lock: File,
}

impl Spool {
    /// Opens (creating) the spool directory; recovers whatever a previous run left, in order; a
    /// torn last write (crash mid-append) is detected by length+checksum and truncated away
    /// (counted in corrupt_records), never a panic.
    ///
    /// Every segment is read once to check it. A corrupt record anywhere truncates its segment
    /// there (one `corrupt_records`; later segments are kept). If the files exceed `max_bytes`
    /// (a smaller limit than the last run's), the oldest segments are dropped and counted.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        Spool::open_with_segment_bytes(dir, max_bytes, (max_bytes / 16).max(MIN_SEGMENT_BYTES))
    }

    fn open_with_segment_bytes(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        // Another holder is refused, but not a transient one: a process forked by this one
        // holds a copy of the lock's descriptor until it execs, and a predecessor that is
        // exiting still holds it for a moment.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(SpoolError::Locked {
                        dir: dir.to_path_buf(),
                    })
                }
                Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
            }
        }

        check_format(dir)?;
        let head = read_head(dir)?;
        let tmp = dir.join(HEAD_TMP_FILE);
        remove_file(&tmp)?;
        let numbers = list_segments(dir)?;

        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: segment_bytes.max(1),
            segments: VecDeque::new(),
            head_offset: 0,
            writer: None,
            reader: None,
            peeked: None,
            next_id: head.map_or(1, |h| h.next_id).max(1),
            next_segment: 1,
            dropped_records: 0,
            dropped_items: 0,
            corrupt_records: 0,
            unsynced: Vec::new(),
            writer_dirty: false,
            head_dirty: false,
            dir_dirty: false,
            last_sync: Instant::now(),
            _lock: lock,
        };
        // A new segment never takes the head's number: the head may carry an offset in it.
        if let Some(h) = head {
            spool.next_segment = h.segment.saturating_add(1);
        }
        for no in numbers {
            spool.next_segment = spool.next_segment.max(no.saturating_add(1));
            let path = spool.segment_path(no);
            if head.is_some_and(|h| no < h.segment) {
                remove_file(&path)?;
                spool.dir_dirty = true;
                continue;
            }
            let consumed = match head {
                Some(h) if h.segment == no => h.offset,
                _ => 0,
            };
            let scan = scan_segment(&path, consumed)?;
            if scan.max_id > 0 {
                spool.next_id = spool.next_id.max(scan.max_id.saturating_add(1));
            }
            if scan.valid_len < scan.file_len {
                spool.corrupt_records += 1;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                f.set_len(scan.valid_len)
                    .map_err(io_err("truncate", &path))?;
                f.sync_data().map_err(io_err("sync", &path))?;
            }
            if scan.records == 0 {
                remove_file(&path)?;
                spool.dir_dirty = true;
                continue;
            }
            if spool.segments.is_empty() {
                spool.head_offset = scan.start;
            }
            spool.segments.push_back(Segment {
                no,
                len: scan.valid_len,
                records: scan.records,
                items: scan.items,
            });
        }
        while spool.disk_bytes() > spool.max_bytes {
            spool.drop_front()?;
        }
        if let Some(back) = spool.segments.back() {
            let path = spool.segment_path(back.no);
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            spool.writer = Some(f);
        }
        // Persist the recovered position and id floor (the id floor matters once consumed
        // segments are gone).
        spool.write_head(true)?;
        spool.dir_dirty = false;
        Ok(spool)
    }

    /// Appends one record at the tail (fsync policy: flush to the OS on every append; fdatasync
    /// at most once per second or on `sync()`); when the spool would exceed max_bytes, the
    /// OLDEST records are dropped first (whole segment files) and counted in
    /// dropped_records/dropped_items; returns the stats of what was dropped by this call. A
    /// record larger than max_bytes is an error (nothing dropped).
    ///
    /// On an error nothing was appended (a partial append is truncated away).
    pub fn push(
        &mut self,
        signal: Signal,
        items: u64,
        bytes: &[u8],
    ) -> Result<SpoolStats, SpoolError> {
        let size = RECORD_HEADER_BYTES.saturating_add(bytes.len() as u64);
        let Ok(len) = u32::try_from(bytes.len()) else {
            return Err(SpoolError::TooLarge {
                size,
                max_bytes: self.max_bytes,
            });
        };
        if size > self.max_bytes {
            return Err(SpoolError::TooLarge {
                size,
                max_bytes: self.max_bytes,
            });
        }
        self.maybe_sync()?;

        let mut dropped = SpoolStats::default();
        while self.disk_bytes() + size > self.max_bytes {
            let (records, items) = self.drop_front()?;
            dropped.dropped_records += records;
            dropped.dropped_items = dropped.dropped_items.saturating_add(items);
        }
        let roll = match self.segments.back() {
            Some(back) if self.writer.is_some() => {
                back.len > 0 && back.len + size > self.segment_bytes
            }
            _ => false,
        };
        if roll {
            self.close_writer();
            self.collect_front()?;
        }
        if self.writer.is_none() {
            self.create_segment()?;
        }

        let header = encode_header(len, signal, self.next_id, now_unix_ms(), items, bytes);
        let (Some(writer), Some(back)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            unreachable!("create_segment sets the writer on the back segment");
        };
        let path = self.dir.join(segment_name(back.no));
        if let Err(e) = writer
            .write_all(&header)
            .and_then(|()| writer.write_all(bytes))
        {
            // Keep the segment a sequence of whole records (the writer appends at the new end).
            if writer.set_len(back.len).is_err() {
                // Unknown tail: stop appending to this segment; reads stop at its last whole
                // record (counts are in memory) and the next open truncates the rest.
                back.len = fs::metadata(&path).map_or(back.len, |m| m.len());
                self.writer = None;
                self.writer_dirty = false;
            }
            return Err(io_err("append to", &path)(e));
        }
        back.len += size;
        back.records += 1;
        back.items = back.items.saturating_add(items);
        self.writer_dirty = true;
        self.next_id += 1;
        Ok(dropped)
    }

    /// The oldest record, without removing it (None when empty).
    ///
    /// A record that fails its checksum here (the disk changed after open) returns
    /// [`SpoolError::Corrupt`] once: the rest of its segment is discarded and counted, and the
    /// next call goes on with the next segment.
    pub fn peek(&mut self) -> Result<Option<Record>, SpoolError> {
        self.collect_front()?;
        let Some(front) = self.segments.front() else {
            return Ok(None);
        };
        if front.records == 0 {
            return Ok(None);
        }
        let (no, seg_len, lost) = (front.no, front.len, front.records);
        let offset = self.head_offset;
        match self.read_record(no, offset, seg_len)? {
            Ok((record, end)) => {
                self.peeked = Some(Peeked {
                    id: record.id,
                    items: record.items,
                    end,
                });
                Ok(Some(record))
            }
            Err(reason) => {
                self.corrupt_records += lost;
                if self.segments.len() == 1 {
                    self.close_writer();
                }
                self.discard_front()?;
                Err(SpoolError::Corrupt {
                    path: self.segment_path(no),
                    offset,
                    reason,
                })
            }
        }
    }

    /// Removes the oldest record (the one `peek` returned: pass its id; a mismatched id is a
    /// no-op returning false).
    ///
    /// The new position reaches the OS at once and the disk within a second (or on `sync()`);
    /// a segment is deleted once all its records are popped (unless it is still appended to).
    pub fn pop(&mut self, id: u64) -> Result<bool, SpoolError> {
        self.maybe_sync()?;
        if self.peeked.is_none() && self.peek()?.is_none() {
            return Ok(false);
        }
        let Some(head) = self.peeked else {
            return Ok(false);
        };
        if head.id != id {
            return Ok(false);
        }
        let front_is_writer = self.writer.is_some() && self.segments.len() == 1;
        let Some(front) = self.segments.front_mut() else {
            return Ok(false);
        };
        if front.records == 1 && !front_is_writer {
            self.discard_front()?;
            return Ok(true);
        }
        let saved = (front.records, front.items, self.head_offset);
        front.records -= 1;
        front.items = front.items.saturating_sub(head.items);
        self.head_offset = head.end;
        if let Err(e) = self.write_head(false) {
            if let Some(front) = self.segments.front_mut() {
                (front.records, front.items, self.head_offset) = saved;
            }
            return Err(e);
        }
        self.peeked = None;
        Ok(true)
    }

    /// `fdatasync`s the appended data, then makes the consumed position and the directory's
    /// file creations and deletions durable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        while let Some((no, file)) = self.unsynced.last() {
            file.sync_data()
                .map_err(io_err("sync", &self.dir.join(segment_name(*no))))?;
            self.unsynced.pop();
        }
        if self.writer_dirty {
            if let (Some(writer), Some(back)) = (&self.writer, self.segments.back()) {
                writer
                    .sync_data()
                    .map_err(io_err("sync", &self.dir.join(segment_name(back.no))))?;
            }
            self.writer_dirty = false;
        }
        if self.head_dirty || self.dir_dirty {
            // Also syncs the directory.
            self.write_head(true)?;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Current records/bytes + cumulative dropped/corrupt since open.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.segments.iter().map(|s| s.records).sum(),
            bytes: self.disk_bytes(),
            dropped_records: self.dropped_records,
            dropped_items: self.dropped_items,
            corrupt_records: self.corrupt_records,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.records == 0)
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    fn segment_path(&self, no: u64) -> PathBuf {
        self.dir.join(segment_name(no))
    }

    fn maybe_sync(&mut self) -> Result<(), SpoolError> {
        let pending = self.writer_dirty || self.head_dirty || self.dir_dirty;
        if (pending || !self.unsynced.is_empty()) && self.last_sync.elapsed() >= SYNC_INTERVAL {
            self.sync()?;
        }
        Ok(())
    }

    /// Stops appending to the back segment (its unsynced data is synced at the next sync).
    fn close_writer(&mut self) {
        if let (Some(file), Some(back)) = (self.writer.take(), self.segments.back()) {
            if self.writer_dirty {
                self.unsynced.push((back.no, file));
            }
        }
        self.writer_dirty = false;
    }

    fn create_segment(&mut self) -> Result<(), SpoolError> {
        let no = self.next_segment;
        let path = self.segment_path(no);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        self.next_segment += 1;
        if self.segments.is_empty() {
            self.head_offset = 0;
        }
        self.segments.push_back(Segment {
            no,
            len: 0,
            records: 0,
            items: 0,
        });
        self.writer = Some(file);
        self.writer_dirty = false;
        self.dir_dirty = true;
        Ok(())
    }

    /// Deletes fully consumed segments at the front (not the one being appended to).
    fn collect_front(&mut self) -> Result<(), SpoolError> {
        while let Some(front) = self.segments.front() {
            let is_writer = self.writer.is_some() && self.segments.len() == 1;
            if front.records > 0 || is_writer {
                break;
            }
            self.discard_front()?;
        }
        Ok(())
    }

    /// Drops the oldest segment because the spool is full; returns its unread records and items.
    fn drop_front(&mut self) -> Result<(u64, u64), SpoolError> {
        if self.segments.len() == 1 {
            self.close_writer();
        }
        let Some(seg) = self.discard_front()? else {
            return Ok((0, 0));
        };
        self.dropped_records += seg.records;
        self.dropped_items = self.dropped_items.saturating_add(seg.items);
        Ok((seg.records, seg.items))
    }

    /// Removes the front segment: the head moves past it first (so a crash in between leaves a
    /// consumed file that the next open deletes, never a head pointing into a lost segment).
    fn discard_front(&mut self) -> Result<Option<Segment>, SpoolError> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(None);
        };
        let saved_offset = std::mem::replace(&mut self.head_offset, 0);
        if let Err(e) = self.write_head(false) {
            self.segments.push_front(seg);
            self.head_offset = saved_offset;
            return Err(e);
        }
        if self.segments.is_empty() && self.writer.take().is_some() {
            self.writer_dirty = false;
        }
        self.unsynced.retain(|(no, _)| *no != seg.no);
        if self.reader.as_ref().is_some_and(|(no, _)| *no == seg.no) {
            self.reader = None;
        }
        self.peeked = None;
        self.dir_dirty = true;
        remove_file(&self.segment_path(seg.no))?;
        Ok(Some(seg))
    }

    /// Writes the `head` file for the current position (atomically: temp file + rename).
    /// `durable`: `fdatasync` the file and the directory too.
    fn write_head(&mut self, durable: bool) -> Result<(), SpoolError> {
        let head = match self.segments.front() {
            Some(front) => Head {
                segment: front.no,
                offset: self.head_offset,
                next_id: self.next_id,
            },
            None => Head {
                segment: self.next_segment,
                offset: 0,
                next_id: self.next_id,
            },
        };
        let tmp = self.dir.join(HEAD_TMP_FILE);
        let path = self.dir.join(HEAD_FILE);
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&head.encode()).map_err(io_err("write", &tmp))?;
        if durable {
            f.sync_data().map_err(io_err("sync", &tmp))?;
        }
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("rename to", &path))?;
        if durable {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync", &self.dir))?;
            self.dir_dirty = false;
        }
        self.head_dirty = !durable;
        Ok(())
    }

    /// Reads and checks the record at `offset` of segment `no`: the record and its end offset,
    /// or why it is corrupt. Holds one payload.
    fn read_record(
        &mut self,
        no: u64,
        offset: u64,
        seg_len: u64,
    ) -> Result<Result<(Record, u64), &'static str>, SpoolError> {
        let path = self.segment_path(no);
        let file = match &mut self.reader {
            Some((n, f)) if *n == no => f,
            slot => {
                let f = File::open(&path).map_err(io_err("open", &path))?;
                &mut slot.insert((no, f)).1
            }
        };
        let read = |buf: &mut [u8], at: u64| match file.read_exact_at(buf, at) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(io_err("read", &path)(e)),
        };
        if seg_len.saturating_sub(offset) < RECORD_HEADER_BYTES {
            return Ok(Err("truncated header"));
        }
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        if !read(&mut header, offset)? {
            return Ok(Err("file shorter than expected"));
        }
        let h = Header::parse(&header);
        let end = offset + RECORD_HEADER_BYTES + u64::from(h.len);
        if end > seg_len {
            return Ok(Err("length past the end of the segment"));
        }
        let mut payload = vec![0u8; h.len as usize];
        if !read(&mut payload, offset + RECORD_HEADER_BYTES)? {
            return Ok(Err("file shorter than expected"));
        }
        let mut crc = header_crc(&header);
        crc.update(&payload);
        if crc.finish() != h.crc {
            return Ok(Err("checksum mismatch"));
        }
        let Some(signal) = Signal::from_byte(h.signal) else {
            return Ok(Err("unknown signal"));
        };
        Ok(Ok((
            Record {
                id: h.id,
                signal,
                created_unix_ms: h.created_unix_ms,
                items: h.items,
                bytes: payload,
            },
            end,
        )))
    }
}

impl Drop for Spool {
    /// Best effort: a clean shutdown leaves everything on disk.
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

/// The spool's format marker (`crate::persist::SPOOL`, file `FORMAT`): written when missing (a
/// new spool, or one written before markers existed, whose layout is version 1); a spool of any
/// other version is discarded — its segments and `head` deleted and logged — never misread.
fn check_format(dir: &Path) -> Result<(), SpoolError> {
    use crate::persist::{Found, MARKER_FILE, SPOOL};
    let marker = dir.join(MARKER_FILE);
    match SPOOL.read_marker(dir).map_err(io_err("read", &marker))? {
        Some(Found::Current) => return Ok(()),
        None => {}
        Some(found) => {
            let mut bytes = 0;
            let segments = list_segments(dir)?;
            for no in &segments {
                let path = dir.join(segment_name(*no));
                bytes += fs::metadata(&path).map_or(0, |m| m.len());
                remove_file(&path)?;
            }
            remove_file(&dir.join(HEAD_FILE))?;
            tracing::warn!(
                "spool {} has format {found:?}, this agent reads {:?}: discarded {} segment files ({bytes} bytes) unsent",
                dir.display(),
                SPOOL.line().trim_end(),
                segments.len()
            );
        }
    }
    SPOOL.write_marker(dir).map_err(io_err("write", &marker))
}

fn segment_name(no: u64) -> String {
    format!("{no:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_DIGITS)
}

/// Segment numbers found in `dir`, ascending (other files are ignored).
fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        if digits.len() == SEGMENT_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(no) = digits.parse::<u64>() {
                numbers.push(no);
            }
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn remove_file(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The consumed position: segments below `segment` are consumed, and in it the bytes before
/// `offset`; `next_id` is a floor for the ids to come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    segment: u64,
    offset: u64,
    next_id: u64,
}

impl Head {
    fn encode(&self) -> [u8; HEAD_BYTES] {
        let mut b = [0u8; HEAD_BYTES];
        b[0..4].copy_from_slice(&HEAD_MAGIC);
        b[4..12].copy_from_slice(&self.segment.to_le_bytes());
        b[12..20].copy_from_slice(&self.offset.to_le_bytes());
        b[20..28].copy_from_slice(&self.next_id.to_le_bytes());
        let mut crc = Crc32::new();
        crc.update(&b[..28]);
        b[28..32].copy_from_slice(&crc.finish().to_le_bytes());
        b
    }

    /// None when not a valid head file.
    fn decode(b: &[u8]) -> Option<Head> {
        if b.len() != HEAD_BYTES || b[0..4] != HEAD_MAGIC {
            return None;
        }
        let mut crc = Crc32::new();
        crc.update(&b[..28]);
        if crc.finish().to_le_bytes() != b[28..32] {
            return None;
        }
        Some(Head {
            segment: le_u64(&b[4..12]),
            offset: le_u64(&b[12..20]),
            next_id: le_u64(&b[20..28]),
        })
    }
}

/// The `head` file; None when missing or invalid (then every segment is read from its start:
/// records may come again, none is lost).
fn read_head(dir: &Path) -> Result<Option<Head>, SpoolError> {
    let path = dir.join(HEAD_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    let mut bytes = Vec::with_capacity(HEAD_BYTES + 1);
    file.take(HEAD_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", &path))?;
    Ok(Head::decode(&bytes))
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// A record header, decoded (not yet checked).
struct Header {
    len: u32,
    crc: u32,
    signal: u8,
    id: u64,
    created_unix_ms: u64,
    items: u64,
}

impl Header {
    fn parse(h: &[u8; RECORD_HEADER_BYTES as usize]) -> Header {
        Header {
            len: le_u32(&h[0..4]),
            crc: le_u32(&h[4..8]),
            signal: h[8],
            id: le_u64(&h[9..17]),
            created_unix_ms: le_u64(&h[17..25]),
            items: le_u64(&h[25..33]),
        }
    }
}

fn encode_header(
    len: u32,
    signal: Signal,
    id: u64,
    created_unix_ms: u64,
    items: u64,
    payload: &[u8],
) -> [u8; RECORD_HEADER_BYTES as usize] {
    let mut h = [0u8; RECORD_HEADER_BYTES as usize];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[8] = signal.to_byte();
    h[9..17].copy_from_slice(&id.to_le_bytes());
    h[17..25].copy_from_slice(&created_unix_ms.to_le_bytes());
    h[25..33].copy_from_slice(&items.to_le_bytes());
    let mut crc = header_crc(&h);
    crc.update(payload);
    h[4..8].copy_from_slice(&crc.finish().to_le_bytes());
    h
}

/// The checksum state after the header's covered fields (everything but the CRC itself).
fn header_crc(h: &[u8; RECORD_HEADER_BYTES as usize]) -> Crc32 {
    let mut crc = Crc32::new();
    crc.update(&h[0..4]);
    crc.update(&h[8..]);
    crc
}

/// What `scan_segment` found in one segment file.
struct Scan {
    file_len: u64,
    /// End of the last whole, valid record.
    valid_len: u64,
    /// Offset of the first unconsumed record (`valid_len` when none).
    start: u64,
    records: u64,
    items: u64,
    /// Highest id seen, consumed records included (0: none).
    max_id: u64,
}

/// Checks every record of a segment, streaming (64 KiB at a time, never a whole payload), and
/// stops at the first invalid one: the rest is a torn write or garbage. Records starting before
/// `consumed` are checked but not counted.
fn scan_segment(path: &Path, consumed: u64) -> Result<Scan, SpoolError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let file_len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut reader = BufReader::with_capacity(SCAN_CHUNK, file);
    let mut chunk = vec![0u8; SCAN_CHUNK];
    let mut scan = Scan {
        file_len,
        valid_len: 0,
        start: 0,
        records: 0,
        items: 0,
        max_id: 0,
    };
    let mut start = None;
    let read = |reader: &mut BufReader<File>, buf: &mut [u8]| match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io_err("read", path)(e)),
    };
    loop {
        let pos = scan.valid_len;
        let left = file_len - pos;
        if left < RECORD_HEADER_BYTES {
            break;
        }
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        if !read(&mut reader, &mut header)? {
            break;
        }
        let h = Header::parse(&header);
        if u64::from(h.len) > left - RECORD_HEADER_BYTES || Signal::from_byte(h.signal).is_none() {
            break;
        }
        let mut crc = header_crc(&header);
        let mut remaining = h.len as usize;
        let mut complete = true;
        while remaining > 0 {
            let n = remaining.min(SCAN_CHUNK);
            if !read(&mut reader, &mut chunk[..n])? {
                complete = false;
                break;
            }
            crc.update(&chunk[..n]);
            remaining -= n;
        }
        if !complete || crc.finish() != h.crc {
            break;
        }
        if pos >= consumed {
            start.get_or_insert(pos);
            scan.records += 1;
            scan.items = scan.items.saturating_add(h.items);
        }
        scan.max_id = scan.max_id.max(h.id);
        scan.valid_len = pos + RECORD_HEADER_BYTES + u64::from(h.len);
    }
    scan.start = start.unwrap_or(scan.valid_len);
    Ok(scan)
}

/// CRC-32 (IEEE 802.3, reflected 0xEDB88320, as zlib/gzip), slicing-by-8. Written here rather
/// than taking a dependency: 30 lines, checked against the standard test vectors below.
#[derive(Clone, Copy, Debug)]
struct Crc32(u32);

const CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            t[s][i] = (t[s - 1][i] >> 8) ^ t[0][(t[s - 1][i] & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

impl Crc32 {
    fn new() -> Crc32 {
        Crc32(!0)
    }

    fn update(&mut self, data: &[u8]) {
        let t = &CRC_TABLES;
        let mut c = self.0;
        let mut chunks = data.chunks_exact(8);
        for b in &mut chunks {
            let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let hi = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xff) as usize]
                ^ t[2][((hi >> 8) & 0xff) as usize]
                ^ t[1][((hi >> 16) & 0xff) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Spool {
        Spool::open_with_segment_bytes(dir, max_bytes, segment_bytes).unwrap()
    }

    /// Payload of the record pushed `n`th, `len` bytes: recognisable and checkable.
    fn payload(n: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (n as usize * 31 + i) as u8).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    fn disk_bytes(dir: &Path) -> u64 {
        segment_files(dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    /// Pops everything, checking each record is the expected `n`th (ids as pushed).
    fn drain(spool: &mut Spool) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(r) = spool.peek().unwrap() {
            assert!(spool.pop(r.id).unwrap());
            out.push(r);
        }
        assert!(spool.is_empty());
        out
    }

    const SIGNALS: [Signal; 3] = [Signal::Metrics, Signal::Logs, Signal::Profiles];

    #[test]
    fn crc32_matches_standard_vectors() {
        let crc = |data: &[u8]| {
            let mut c = Crc32::new();
            c.update(data);
            c.finish()
        };
        assert_eq!(crc(b""), 0);
        assert_eq!(crc(b"a"), 0xE8B7_BE43);
        assert_eq!(crc(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
        // Slicing-by-8 against the bytewise definition, every alignment and split.
        let data: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        let bitwise = |data: &[u8]| {
            let mut c = !0u32;
            for &b in data {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        };
        for len in 0..data.len() {
            let expected = bitwise(&data[..len]);
            assert_eq!(crc(&data[..len]), expected, "len {len}");
            let mut split = Crc32::new();
            split.update(&data[..len / 3]);
            split.update(&data[len / 3..len]);
            assert_eq!(split.finish(), expected, "split len {len}");
        }
    }

    #[test]
    fn fifo_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = open(dir.path(), 1 << 20, 300);
        assert!(spool.is_empty());
        assert_eq!(spool.peek().unwrap(), None);
        for n in 0..40u64 {
            let dropped = spool
                .push(SIGNALS[n as usize % 3], n * 10, &payload(n, n as usize * 3))
                .unwrap();
            assert_eq!(dropped, SpoolStats::default());
        }
        assert!(segment_files(dir.path()).len() > 5, "several segments");
        assert_eq!(spool.stats().records, 40);
        // Peek does not consume; a wrong id does not pop.
        let first = spool.peek().unwrap().unwrap();
        assert_eq!(spool.peek().unwrap().unwrap(), first);
        assert!(!spool.pop(first.id + 1).unwrap());
        assert_eq!(spool.peek().unwrap().unwrap(), first);

        let records = drain(&mut spool);
        assert_eq!(records.len(), 40);
        for (n, r) in records.iter().enumerate() {
            let n = n as u64;
            assert_eq!(r.id, n + 1);
            assert_eq!(r.signal, SIGNALS[n as usize % 3]);
            assert_eq!(r.items, n * 10);
            assert_eq!(r.bytes, payload(n, n as usize * 3));
            assert!(r.created_unix_ms > 0);
        }
        assert_eq!(spool.peek().unwrap(), None);
        assert!(!spool.pop(41).unwrap());
        // Consumed segments are gone; only the one still appended to remains.
        assert_eq!(segment_files(dir.path()).len(), 1);
        let stats = spool.stats();
        assert_eq!((stats.records, stats.dropped_records), (0, 0));
        assert_eq!(stats.bytes, disk_bytes(dir.path()));
    }

    #[test]
    fn pop_without_peek_removes_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = open(dir.path(), 1 << 20, 1 << 20);
        spool.push(Signal::Logs, 1, b"one").unwrap();
        spool.push(Signal::Logs, 1, b"two").unwrap();
        assert!(!spool.pop(2).unwrap());
        assert!(spool.pop(1).unwrap());
        assert_eq!(spool.peek().unwrap().unwrap().bytes, b"two");
    }

    #[test]
    fn survives_reopen_in_order_without_popped_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = open(dir.path(), 1 << 20, 400);
            for n in 0..30u64 {
                spool.push(Signal::Metrics, n, &payload(n, 50)).unwrap();
            }
            // 5 records in the first segment (83 B each): pop into the second one.
            for id in 1..=7 {
                assert_eq!(spool.peek().unwrap().unwrap().id, id);
                assert!(spool.pop(id).unwrap());
            }
            // Dropped without sync(): the appends and the head reached the OS already.
        }
        let mut spool = open(dir.path(), 1 << 20, 400);
        let stats = spool.stats();
        assert_eq!(stats.records, 23);
        assert_eq!(stats.corrupt_records, 0);
        assert_eq!(stats.bytes, disk_bytes(dir.path()));
        let records = drain(&mut spool);
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        assert_eq!(ids, (8..=30).collect::<Vec<_>>());
        for r in &records {
            assert_eq!(r.bytes, payload(r.id - 1, 50));
            assert_eq!(r.items, r.id - 1);
        }
        drop(spool);
        // Everything popped: nothing comes back.
        let mut spool = open(dir.path(), 1 << 20, 400);
        assert!(spool.is_empty());
        assert_eq!(spool.peek().unwrap(), None);
        assert_eq!(spool.stats().bytes, 0);
        assert_eq!(disk_bytes(dir.path()), 0);
    }

    #[test]
    fn format_marker_is_written_kept_and_an_unknown_one_discards() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("FORMAT");
        {
            let mut spool = open(dir.path(), 1 << 20, 400);
            for n in 0..10u64 {
                spool.push(Signal::Logs, n, &payload(n, 50)).unwrap();
            }
        }
        assert_eq!(fs::read_to_string(&marker).unwrap(), "agent-spool 1\n");
        // A spool written before markers existed (same layout): kept, marker added.
        fs::remove_file(&marker).unwrap();
        {
            let mut spool = open(dir.path(), 1 << 20, 400);
            assert_eq!(spool.stats().records, 10);
            assert_eq!(spool.peek().unwrap().unwrap().bytes, payload(0, 50));
        }
        assert_eq!(fs::read_to_string(&marker).unwrap(), "agent-spool 1\n");
        // A newer agent's spool: discarded whole, then usable in this format.
        fs::write(&marker, "agent-spool 2\n").unwrap();
        let mut spool = open(dir.path(), 1 << 20, 400);
        assert!(spool.is_empty());
        assert_eq!(disk_bytes(dir.path()), 0);
        assert_eq!(fs::read_to_string(&marker).unwrap(), "agent-spool 1\n");
        spool.push(Signal::Logs, 1, &payload(1, 10)).unwrap();
        // Ids never go back: the discarded head's floor is gone, but ids restart above 0.
        assert!(spool.peek().unwrap().unwrap().id >= 1);
    }

    #[test]
    fn ids_keep_increasing_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = open(dir.path(), 1 << 20, 1 << 20);
            for _ in 0..3 {
                spool.push(Signal::Logs, 1, b"x").unwrap();
            }
        }
        {
            // Records still there: ids continue after theirs.
            let mut spool = open(dir.path(), 1 << 20, 1 << 20);
            spool.push(Signal::Logs, 1, b"y").unwrap();
            let ids: Vec<u64> = drain(&mut spool).iter().map(|r| r.id).collect();
            assert_eq!(ids, vec![1, 2, 3, 4]);
        }
        {
            // Everything consumed and its segments deleted: the head file keeps the floor.
            let mut spool = open(dir.path(), 1 << 20, 1 << 20);
            assert_eq!(segment_files(dir.path()).len(), 0);
            spool.push(Signal::Logs, 1, b"z").unwrap();
            assert_eq!(spool.peek().unwrap().unwrap().id, 5);
        }
        {
            // Records dropped because the spool was full are not reused either.
            let mut spool = open(dir.path(), 100, 100);
            assert_eq!(spool.peek().unwrap().unwrap().id, 5);
            spool.push(Signal::Logs, 1, &[0; 60]).unwrap();
            assert_eq!(spool.stats().dropped_records, 1);
            assert_eq!(spool.peek().unwrap().unwrap().id, 6);
        }
        let mut spool = open(dir.path(), 100, 100);
        spool.push(Signal::Logs, 1, &[1; 60]).unwrap();
        assert_eq!(spool.peek().unwrap().unwrap().id, 7);
    }

    #[test]
    fn full_spool_drops_oldest_segments_first_and_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        // 100-byte payloads: 133 B records, 7 per 1000-byte segment (931 B).
        let mut spool = open(dir.path(), 3000, 1000);
        let record = RECORD_HEADER_BYTES + 100;
        for n in 0..22u64 {
            // 3 segments of 7 (2793 B), then the 22nd opens a 4th: 2926 B.
            assert_eq!(
                spool
                    .push(Signal::Metrics, n + 1, &payload(n, 100))
                    .unwrap(),
                SpoolStats::default()
            );
        }
        assert_eq!(spool.stats().bytes, 22 * record);
        // Pop two of the oldest segment: only its 5 unread records count as dropped.
        for id in 1..=2 {
            assert!(spool.pop(id).unwrap());
        }
        // 2926 + 133 > 3000: the oldest segment (ids 1..=7) goes, its unread ids 3..=7.
        let dropped = spool.push(Signal::Metrics, 23, &payload(22, 100)).unwrap();
        let items_3_to_7 = 3 + 4 + 5 + 6 + 7;
        assert_eq!(
            dropped,
            SpoolStats {
                dropped_records: 5,
                dropped_items: items_3_to_7,
                ..SpoolStats::default()
            }
        );
        assert_eq!(spool.peek().unwrap().unwrap().id, 8);
        // Fill on: every further drop is one whole segment of 7 records, oldest first.
        let mut dropped_total = (5, items_3_to_7);
        for n in 23..60u64 {
            let d = spool
                .push(Signal::Metrics, n + 1, &payload(n, 100))
                .unwrap();
            dropped_total.0 += d.dropped_records;
            dropped_total.1 += d.dropped_items;
            assert!(d.dropped_records == 0 || d.dropped_records == 7, "{d:?}");
            let stats = spool.stats();
            assert!(stats.bytes <= 3000);
            assert_eq!(stats.bytes, disk_bytes(dir.path()));
        }
        let stats = spool.stats();
        assert_eq!((stats.dropped_records, stats.dropped_items), dropped_total);
        // Survivors are exactly the newest records, in order, and with the dropped ones and the
        // two popped ones account for all 60.
        let records = drain(&mut spool);
        let first = records[0].id;
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        assert_eq!(ids, (first..=60).collect::<Vec<_>>());
        assert_eq!(2 + dropped_total.0 + records.len() as u64, 60);
        let dropped_items: u64 = (3..first).sum(); // items of id k are k
        assert_eq!(dropped_total.1, dropped_items);
    }

    #[test]
    fn record_larger_than_the_spool_is_an_error_and_drops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = open(dir.path(), 1000, 1000);
        spool.push(Signal::Logs, 1, b"keep me").unwrap();
        let before = spool.stats();
        let err = spool.push(Signal::Logs, 1, &[0; 968]).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::TooLarge {
                    size: 1001,
                    max_bytes: 1000
                }
            ),
            "{err}"
        );
        assert_eq!(spool.stats(), before);
        assert_eq!(spool.peek().unwrap().unwrap().bytes, b"keep me");
        // Exactly max_bytes fits (dropping the rest).
        let dropped = spool.push(Signal::Logs, 2, &[0; 967]).unwrap();
        assert_eq!(dropped.dropped_records, 1);
        assert_eq!(spool.stats().bytes, 1000);
        assert_eq!(disk_bytes(dir.path()), 1000);
        let mut tiny = open(&dir.path().join("tiny"), 10, 10);
        assert!(matches!(
            tiny.push(Signal::Metrics, 0, b""),
            Err(SpoolError::TooLarge { .. })
        ));
    }

    /// Five records in one segment, spool closed; returns the segment path and its length.
    fn five_records(dir: &Path) -> (PathBuf, u64) {
        let mut spool = open(dir, 1 << 20, 1 << 20);
        for n in 0..5u64 {
            spool.push(Signal::Logs, n, &payload(n, 40)).unwrap();
        }
        drop(spool);
        let files = segment_files(dir);
        assert_eq!(files.len(), 1);
        let len = fs::metadata(&files[0]).unwrap().len();
        assert_eq!(len, 5 * (RECORD_HEADER_BYTES + 40));
        (files[0].clone(), len)
    }

    fn assert_recovered(dir: &Path, expect_ids: &[u64], expect_len: u64, seg: &Path) {
        let mut spool = open(dir, 1 << 20, 1 << 20);
        let stats = spool.stats();
        assert_eq!(stats.corrupt_records, 1);
        assert_eq!(stats.records, expect_ids.len() as u64);
        assert_eq!(fs::metadata(seg).unwrap().len(), expect_len);
        assert_eq!(stats.bytes, expect_len);
        // Appends go on after the last whole record, and read back.
        spool.push(Signal::Metrics, 9, b"after").unwrap();
        let records = drain(&mut spool);
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        let mut expected = expect_ids.to_vec();
        expected.push(records.last().unwrap().id);
        assert_eq!(ids, expected);
        assert!(*expected.last().unwrap() > *expect_ids.last().unwrap());
        for r in &records[..expect_ids.len()] {
            assert_eq!(r.bytes, payload(r.id - 1, 40));
        }
        assert_eq!(records.last().unwrap().bytes, b"after");
        drop(spool);
        // The repair is final: nothing corrupt on the next open.
        let spool = open(dir, 1 << 20, 1 << 20);
        assert_eq!(spool.stats().corrupt_records, 0);
    }

    #[test]
    fn torn_tail_mid_record_is_truncated_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, len) = five_records(dir.path());
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 10).unwrap(); // payload of record 5 cut short
        drop(f);
        assert_recovered(dir.path(), &[1, 2, 3, 4], len - 73, &seg);
    }

    #[test]
    fn torn_tail_mid_header_is_truncated_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, len) = five_records(dir.path());
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 73 + 20).unwrap(); // 20 of record 5's 33 header bytes
        drop(f);
        assert_recovered(dir.path(), &[1, 2, 3, 4], len - 73, &seg);
    }

    #[test]
    fn garbage_after_the_last_record_is_truncated_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        for garbage in [
            vec![0u8; 100],                   // zero-filled tail (power loss)
            (0..=255u8).collect::<Vec<u8>>(), // random-looking bytes
            // A plausible header (small length, valid signal) with a wrong checksum.
            [&5u32.to_le_bytes()[..], &[0; 4], &[1], &[0; 24], b"hello"].concat(),
        ] {
            let sub = dir.path().join(format!("g{}", garbage.len()));
            let (seg, len) = five_records(&sub);
            let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
            f.write_all(&garbage).unwrap();
            drop(f);
            assert_recovered(&sub, &[1, 2, 3, 4, 5], len, &seg);
        }
    }

    #[test]
    fn corruption_found_while_reading_skips_the_segment_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = open(dir.path(), 1 << 20, 300);
        for n in 0..10u64 {
            spool.push(Signal::Metrics, 1, &payload(n, 50)).unwrap(); // 83 B: 3 per segment
        }
        let first = spool.peek().unwrap().unwrap();
        assert!(spool.pop(first.id).unwrap());
        // Flip a payload byte of record 2 (second in the first segment).
        let first = &segment_files(dir.path())[0];
        let f = OpenOptions::new().write(true).open(first).unwrap();
        f.write_all_at(&[0xff ^ payload(1, 50)[0]], 83 + 33)
            .unwrap();
        drop(f);
        let err = spool.peek().unwrap_err();
        assert!(
            matches!(err, SpoolError::Corrupt { offset: 83, .. }),
            "{err}"
        );
        // Records 2 and 3 (the rest of that segment) are lost and counted.
        assert_eq!(spool.stats().corrupt_records, 2);
        assert_eq!(spool.stats().records, 7);
        let ids: Vec<u64> = drain(&mut spool).iter().map(|r| r.id).collect();
        assert_eq!(ids, (4..=10).collect::<Vec<_>>());
        assert_eq!(spool.stats().bytes, disk_bytes(dir.path()));
    }

    #[test]
    fn bytes_accounting_matches_the_files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let check = |spool: &Spool| {
            let stats = spool.stats();
            assert_eq!(stats.bytes, disk_bytes(dir.path()), "{stats:?}");
            assert!(stats.bytes <= 5000);
        };
        let mut spool = open(dir.path(), 5000, 700);
        let mut dropped = 0;
        check(&spool);
        for n in 0..200u64 {
            spool
                .push(Signal::Profiles, 1, &payload(n, (n as usize * 37) % 300))
                .unwrap();
            check(&spool);
            if n % 3 == 0 {
                let r = spool.peek().unwrap().unwrap();
                assert!(spool.pop(r.id).unwrap());
                check(&spool);
            }
            if n % 50 == 49 {
                dropped += spool.stats().dropped_records;
                drop(spool);
                spool = open(dir.path(), 5000, 700);
                check(&spool);
            }
        }
        assert!(
            dropped + spool.stats().dropped_records > 0,
            "the limit was reached"
        );
        drain(&mut spool);
        check(&spool);
        spool.sync().unwrap();
        check(&spool);
    }

    #[test]
    fn a_smaller_limit_at_open_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = open(dir.path(), 1 << 20, 200);
            for n in 0..10u64 {
                spool.push(Signal::Logs, 2, &payload(n, 67)).unwrap(); // 100 B, 2 per segment
            }
        }
        let mut spool = open(dir.path(), 500, 200);
        let stats = spool.stats();
        assert_eq!((stats.records, stats.bytes), (4, 400));
        assert_eq!((stats.dropped_records, stats.dropped_items), (6, 12));
        assert_eq!(spool.peek().unwrap().unwrap().id, 7);
    }

    #[test]
    fn corrupt_head_file_resends_rather_than_loses() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = open(dir.path(), 1 << 20, 1 << 20);
            for n in 0..4u64 {
                spool.push(Signal::Logs, 1, &payload(n, 10)).unwrap();
            }
            assert!(spool.pop(1).unwrap());
        }
        fs::write(dir.path().join(HEAD_FILE), b"garbage").unwrap();
        let mut spool = open(dir.path(), 1 << 20, 1 << 20);
        let ids: Vec<u64> = drain(&mut spool).iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), 1 << 20, 1 << 20);
        let err = Spool::open(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
        drop(spool);
        Spool::open(dir.path(), 1 << 20).unwrap();
    }

    #[test]
    fn segments_roll_at_a_sixteenth_of_the_limit_but_at_least_1_mib() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("a"), 64 << 20).unwrap();
        assert_eq!(spool.segment_bytes, 4 << 20);
        let spool = Spool::open(&dir.path().join("b"), 4 << 20).unwrap();
        assert_eq!(spool.segment_bytes, 1 << 20);
        assert_eq!(segment_name(1), "00000000000000000001.seg");
    }

    #[test]
    fn data_is_synced_once_the_interval_has_passed() {
        fn assert_send<T: Send>() {}
        assert_send::<Spool>();
        let dir = tempfile::tempdir().unwrap();
        let mut spool = open(dir.path(), 1 << 20, 100);
        spool.push(Signal::Logs, 1, &[0; 50]).unwrap();
        spool.push(Signal::Logs, 1, &[0; 50]).unwrap(); // rolls: the first file waits for a sync
        assert!(spool.writer_dirty && spool.unsynced.len() == 1);
        // Within the interval nothing is synced; past it, the next call syncs first.
        spool.push(Signal::Logs, 1, &[0; 50]).unwrap();
        assert_eq!(spool.unsynced.len(), 2);
        spool.last_sync = Instant::now()
            .checked_sub(SYNC_INTERVAL)
            .unwrap_or_else(Instant::now);
        assert!(spool.pop(1).unwrap());
        assert!(spool.unsynced.is_empty() && !spool.writer_dirty);
        // The pop itself (new head, deleted segment) waits for the next sync.
        assert!(spool.head_dirty && spool.dir_dirty);
        spool.sync().unwrap();
        assert!(!spool.head_dirty && !spool.dir_dirty);
    }

    #[test]
    fn random_operations_match_a_model_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // (id, step pushed, items, payload length) of the unread records, oldest first.
        let mut model: VecDeque<(u64, u64, u64, usize)> = VecDeque::new();
        let mut spool = open(dir.path(), 4000, 500);
        let mut last_id = 0;
        for step in 0..2000u64 {
            match next(10) {
                0..=5 => {
                    let len = next(400) as usize;
                    let items = next(5);
                    let d = spool
                        .push(Signal::Logs, items, &payload(step, len))
                        .unwrap();
                    for _ in 0..d.dropped_records {
                        model.pop_front().unwrap();
                    }
                    last_id += 1;
                    model.push_back((last_id, step, items, len));
                }
                6..=8 => {
                    let got = spool.peek().unwrap();
                    match model.front() {
                        None => assert_eq!(got, None),
                        Some(&(id, step, items, len)) => {
                            let r = got.unwrap();
                            assert_eq!((r.id, r.items), (id, items));
                            assert_eq!(r.bytes, payload(step, len));
                            assert!(spool.pop(r.id).unwrap());
                            model.pop_front();
                        }
                    }
                }
                _ => {
                    drop(spool);
                    spool = open(dir.path(), 4000, 500);
                }
            }
            let stats = spool.stats();
            assert_eq!(stats.records, model.len() as u64);
            assert_eq!(stats.bytes, disk_bytes(dir.path()));
            assert!(stats.bytes <= 4000);
            assert_eq!(stats.corrupt_records, 0);
        }
        assert!(last_id > 800);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"").unwrap();
        let err = Spool::open(&file, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
