//! Reference data for the CPU profiler tests: build the `hotspots` workload, read its GNU build
//! ID, and profile it with Linux `perf` to get an independent sample distribution to compare with.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

/// The workload's source, `tests/workloads/hotspots.c`.
pub fn hotspots_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/hotspots.c")
}

/// Compiles `tests/workloads/hotspots.c` into `out_dir` as `hotspots-fp` (frame pointers in every
/// function, leaf functions included) or `hotspots-nofp` (`-fomit-frame-pointer`), with `-g` and
/// a GNU build ID. Panics with the compiler's stderr if compilation fails.
///
/// Usage: `hotspots <seconds> [threads]`. Its `hot_three` and `hot_one` do identical work per
/// inner iteration and run 3:1 inner iterations, so 0.75 of the CPU time is in `hot_three`.
/// Single-threaded (the default) the frame-pointer stacks are
/// `hot_three|hot_one <- run_loop <- main <- __libc_start_call_main`; with `threads > 0` they run
/// in threads named `hot-worker` and the stacks end in libc's `start_thread` instead of `main`.
///
/// The binary is written under a temporary name and renamed into place, so tests building into
/// the same directory concurrently never see (or execute) a half-written file.
pub fn build_hotspots(out_dir: &Path, frame_pointers: bool) -> PathBuf {
    fs::create_dir_all(out_dir).unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
    let name = if frame_pointers {
        "hotspots-fp"
    } else {
        "hotspots-nofp"
    };
    let out = out_dir.join(name);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = out_dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let fp_flags: &[&str] = if frame_pointers {
        &["-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"]
    } else {
        &["-fomit-frame-pointer"]
    };
    let src = hotspots_source();
    let result = Command::new("cc")
        .args(["-O2", "-g", "-pthread", "-Wl,--build-id"])
        .args(fp_flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("run cc: {e}"));
    if !result.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "cc {} failed ({}):\n{}",
            src.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("rename to {}: {e}", out.display()));
    out
}

/// Compiles `tests/workloads/<source>` into `out_dir/<name>` with `cc -g -Wl,--build-id`, then
/// `flags`; written under a temporary name and renamed into place (concurrent builds into one
/// directory never see a half-written file). Panics with the compiler's stderr on failure.
pub fn build_c(out_dir: &Path, source: &str, name: &str, flags: &[&str]) -> PathBuf {
    fs::create_dir_all(out_dir).unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
    let out = out_dir.join(name);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = out_dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(source);
    let result = Command::new("cc")
        .args(["-g", "-pthread", "-Wl,--build-id"])
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("run cc: {e}"));
    if !result.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "cc {} failed ({}):\n{}",
            src.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("rename to {}: {e}", out.display()));
    out
}

/// Frame-pointer flags for a C workload: every function keeps its frame pointer, leaves too.
pub const FRAME_POINTERS: &[&str] = &["-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"];

/// The GNU build ID of an ELF64 file (either byte order) as lowercase hex, or `None` if the file
/// cannot be read, is not ELF64, or has no `NT_GNU_BUILD_ID` note. Looks at the `SHT_NOTE`
/// sections first (that covers `.note.gnu.build-id`), then at the `PT_NOTE` segments (files
/// without section headers).
pub fn build_id_of(path: &Path) -> Option<String> {
    let data = fs::read(path).ok()?;
    let id = elf_build_id(&data)?;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

const SHT_NOTE: u32 = 7;
const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// Bounds-checked field reads in the file's byte order.
struct Elf<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl<'a> Elf<'a> {
    fn bytes<const N: usize>(&self, off: u64) -> Option<[u8; N]> {
        let off = usize::try_from(off).ok()?;
        self.data.get(off..off.checked_add(N)?)?.try_into().ok()
    }

    fn u16(&self, off: u64) -> Option<u16> {
        let b = self.bytes(off)?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&self, off: u64) -> Option<u32> {
        let b = self.bytes(off)?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u64(&self, off: u64) -> Option<u64> {
        let b = self.bytes(off)?;
        Some(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }

    /// The descriptor of the first GNU build-ID note in `[off, off + size)`; notes are padded
    /// to `align` (4, or 8 for sections and segments aligned to 8).
    fn build_id_in_notes(&self, off: u64, size: u64, align: u64) -> Option<&'a [u8]> {
        let align = if align == 8 { 8 } else { 4 };
        let pad = |n: u64| n.checked_add(align - 1).map(|v| v & !(align - 1));
        let end = off.checked_add(size)?;
        let mut p = off;
        while p.checked_add(12)? <= end {
            let namesz = u64::from(self.u32(p)?);
            let descsz = u64::from(self.u32(p + 4)?);
            let kind = self.u32(p + 8)?;
            let name_off = p + 12;
            let desc_off = name_off.checked_add(pad(namesz)?)?;
            let next = desc_off.checked_add(pad(descsz)?)?;
            if desc_off.checked_add(descsz)? > end {
                return None;
            }
            let name_at = usize::try_from(name_off).ok()?;
            let name = self
                .data
                .get(name_at..name_at.checked_add(usize::try_from(namesz).ok()?)?)?;
            if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && descsz > 0 {
                let d = usize::try_from(desc_off).ok()?;
                return self.data.get(d..d + usize::try_from(descsz).ok()?);
            }
            p = next;
        }
        None
    }
}

/// The raw build-ID bytes of an ELF64 image.
fn elf_build_id(data: &[u8]) -> Option<&[u8]> {
    if data.get(..4)? != b"\x7fELF" || *data.get(4)? != 2 {
        return None; // not ELF, or not ELF64
    }
    let big_endian = match *data.get(5)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let elf = Elf { data, big_endian };

    // Section headers: e_shoff @0x28, e_shentsize @0x3a, e_shnum @0x3c.
    let shoff = elf.u64(0x28)?;
    let shentsize = u64::from(elf.u16(0x3a)?);
    if shoff != 0 && shentsize >= 0x40 {
        let mut shnum = u64::from(elf.u16(0x3c)?);
        if shnum == 0 {
            // Extended numbering: the count is in section 0's sh_size.
            shnum = elf.u64(shoff + 0x20).unwrap_or(0);
        }
        for i in 0..shnum.min(65_536) {
            let sh = shoff.checked_add(i.checked_mul(shentsize)?)?;
            if elf.u32(sh + 4)? != SHT_NOTE {
                continue;
            }
            let (off, size, align) = (
                elf.u64(sh + 0x18)?,
                elf.u64(sh + 0x20)?,
                elf.u64(sh + 0x30)?,
            );
            if let Some(id) = elf.build_id_in_notes(off, size, align) {
                return Some(id);
            }
        }
    }

    // Program headers: e_phoff @0x20, e_phentsize @0x36, e_phnum @0x38.
    let phoff = elf.u64(0x20)?;
    let phentsize = u64::from(elf.u16(0x36)?);
    if phoff != 0 && phentsize >= 0x38 {
        for i in 0..u64::from(elf.u16(0x38)?) {
            let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
            if elf.u32(ph)? != PT_NOTE {
                continue;
            }
            let (off, size, align) = (elf.u64(ph + 8)?, elf.u64(ph + 0x20)?, elf.u64(ph + 0x30)?);
            if let Some(id) = elf.build_id_in_notes(off, size, align) {
                return Some(id);
            }
        }
    }
    None
}

/// Samples of one process as `perf` saw them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerfProfile {
    /// Samples with at least one frame.
    pub total: u64,
    /// Samples per leaf function (where the CPU was).
    pub self_counts: HashMap<String, u64>,
    /// Samples per function anywhere in the stack, counted once per sample (recursion too).
    pub inclusive: HashMap<String, u64>,
    /// Distinct stacks, leaf first, with their sample counts; most frequent first. Kernel frames
    /// are included as perf reports them; unresolved frames are `[unknown]`.
    pub stacks: Vec<(Vec<String>, u64)>,
}

/// Profiles `pid` (all its threads) with `perf record -e cpu-clock -F <hz> --call-graph fp` for
/// `seconds`, writing `<dir>/perf.data`, and returns the parsed samples. Panics with perf's stderr
/// if `perf record` or `perf script` fails. perf needs up to a second or two (on a busy machine)
/// to attach and to finish beyond `seconds`; if the target exits meanwhile, what was recorded
/// until then is returned.
///
/// The event is the software `cpu-clock` (what the profiler under test uses, and the only one a
/// VM without a PMU has); call chains are frame-pointer walks (`-g` is the same as
/// `--call-graph fp`).
pub fn perf_record(pid: u32, seconds: f64, hz: u32, dir: &Path) -> PerfProfile {
    perf_record_with(pid, seconds, hz, dir, "fp")
}

/// [`perf_record`] with `--call-graph dwarf`: perf copies 8 KiB of user stack per sample and
/// unwinds it afterwards from the binaries' DWARF CFI (inlined functions are reported as frames
/// of their own; their ` (inlined)` mark is dropped).
pub fn perf_record_dwarf(pid: u32, seconds: f64, hz: u32, dir: &Path) -> PerfProfile {
    perf_record_with(pid, seconds, hz, dir, "dwarf")
}

fn perf_record_with(pid: u32, seconds: f64, hz: u32, dir: &Path, call_graph: &str) -> PerfProfile {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let data = dir.join("perf.data");
    let rec = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", &hz.to_string()])
        .args(["--call-graph", call_graph, "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("run perf record: {e}"));
    // When the target exits before `sleep` does, perf stops early, SIGTERMs its `sleep` and
    // re-raises that on itself; the data recorded so far is complete and valid.
    let target_exited = rec.status.signal() == Some(libc::SIGTERM)
        || rec.status.code() == Some(128 + libc::SIGTERM);
    assert!(
        rec.status.success() || (target_exited && data.exists()),
        "perf record -p {pid} failed ({}):\n{}",
        rec.status,
        String::from_utf8_lossy(&rec.stderr)
    );
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .args(["-F", "comm,pid,tid,event,ip,sym"])
        .output()
        .unwrap_or_else(|e| panic!("run perf script: {e}"));
    assert!(
        script.status.success(),
        "perf script -i {} failed ({}):\n{}",
        data.display(),
        script.status,
        String::from_utf8_lossy(&script.stderr)
    );
    parse_perf_script(&String::from_utf8_lossy(&script.stdout))
}

/// Parses `perf script -F comm,pid,tid,event,ip,sym` output: a header line per sample
/// (`comm pid/tid event: `), then one tab-indented `ip sym` line per frame, leaf first, then a
/// blank line. A trailing ` (dso)` on a frame is dropped. A sample recorded without a call chain
/// has its `ip sym` on the header line instead; that is taken as a one-frame stack.
pub fn parse_perf_script(text: &str) -> PerfProfile {
    let mut profile = PerfProfile::default();
    let mut stacks: HashMap<Vec<String>, u64> = HashMap::new();
    let mut frames: Vec<String> = Vec::new();
    let mut header_frame: Option<String> = None;

    let mut finish = |frames: &mut Vec<String>, header_frame: &mut Option<String>| {
        if frames.is_empty() {
            if let Some(f) = header_frame.take() {
                frames.push(f);
            }
        }
        *header_frame = None;
        if frames.is_empty() {
            return;
        }
        let stack = std::mem::take(frames);
        profile.total += 1;
        *profile.self_counts.entry(stack[0].clone()).or_default() += 1;
        let mut seen = HashSet::new();
        for f in &stack {
            if seen.insert(f.as_str()) {
                *profile.inclusive.entry(f.clone()).or_default() += 1;
            }
        }
        *stacks.entry(stack).or_default() += 1;
    };

    for line in text.lines() {
        if line.trim().is_empty() {
            finish(&mut frames, &mut header_frame);
        } else if line.starts_with('\t') {
            frames.push(frame_symbol(line.trim()));
        } else {
            // A new header also ends a sample that had no blank line after it.
            finish(&mut frames, &mut header_frame);
            header_frame = inline_frame(line);
        }
    }
    finish(&mut frames, &mut header_frame);

    let mut stacks: Vec<_> = stacks.into_iter().collect();
    stacks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    profile.stacks = stacks;
    profile
}

/// The symbol of one `ip sym [(dso)]` frame; `[unknown]` when perf printed none.
fn frame_symbol(frame: &str) -> String {
    let sym = match frame.split_once(char::is_whitespace) {
        Some((_ip, sym)) => sym.trim(),
        None => "",
    };
    let sym = match sym.rfind(" (") {
        Some(i) if sym.ends_with(')') && matches!(sym.as_bytes().get(i + 2), Some(b'/' | b'[')) => {
            sym[..i].trim_end()
        }
        _ => sym,
    };
    let sym = sym.strip_suffix(" (inlined)").unwrap_or(sym);
    if sym.is_empty() {
        "[unknown]".to_string()
    } else {
        sym.to_string()
    }
}

/// The `ip sym` after the event name on a header line (samples without a call chain).
fn inline_frame(header: &str) -> Option<String> {
    let tokens: Vec<&str> = header.split_whitespace().collect();
    // comm may contain spaces: the pid/tid token anchors the fields after it.
    let pid_tid = tokens.iter().position(|t| {
        t.split_once('/').is_some_and(|(p, t)| {
            !p.is_empty()
                && !t.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && t.bytes().all(|b| b.is_ascii_digit())
        })
    })?;
    let event_end = pid_tid
        + 1
        + tokens[pid_tid + 1..]
            .iter()
            .position(|t| t.ends_with(':'))?;
    let rest = &tokens[event_end + 1..];
    if rest.is_empty() {
        return None;
    }
    Some(frame_symbol(&rest.join(" ")))
}

/// `a / (a + b)`: the share of `a` among two sample counts (NaN when both are 0).
///
/// Statistics: if each of n = a + b samples independently lands in `a` with probability p
/// (hotspots: p = 0.75), the proportion has standard deviation σ = sqrt(p(1-p)/n), e.g.
/// σ ≈ 0.019 at n = 500 (5 s at 99 Hz), 0.0061 at n = 5000 (5 s at 999 Hz). A test should
/// accept |ratio − p| ≤ max(0.05, 4σ) — see [`proportion_tolerance`]: 4σ makes a false failure
/// about 6e-5 likely, and the 0.05 floor absorbs small systematic effects (the workload's own
/// time split measures 0.746–0.747 by clock, not exactly 0.75). The independence assumption
/// holds because hotspots jitters the length of its outer loop; a strictly periodic ~1 ms loop
/// phase-locked with ~1 kHz sampling and skewed the proportion to anywhere in 0.70–0.78 over
/// 5000 samples.
pub fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / (a + b) as f64
}

/// The accepted deviation of a sampled proportion from `p` over `n` samples:
/// `max(0.05, 4 * sqrt(p(1-p)/n))` (see [`ratio`]). Infinite for `n = 0`.
pub fn proportion_tolerance(p: f64, n: u64) -> f64 {
    (4.0 * (p * (1.0 - p) / n as f64).sqrt()).max(0.05)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNIPPET: &str = "\
hotspots-fp 23181/23181 cpu-clock:pppH: 
\t            14fd hot_three
\t            15f6 run_loop
\t            11aa main
\t           2724a __libc_start_call_main

hotspots-fp 23181/23181 cpu-clock:pppH: 
\t            14e4 hot_three
\t            15f6 run_loop
\t            11aa main
\t           2724a __libc_start_call_main

hotspots-fp 23181/23181 cpu-clock:pppH: 
\t            150a hot_one (/tmp/hs/hotspots-fp)
\t            1600 run_loop (/tmp/hs/hotspots-fp)
\t            11aa main (/tmp/hs/hotspots-fp)
\t           2724a __libc_start_call_main (/usr/lib/x86_64-linux-gnu/libc.so.6)

hot worker 23181/23190 cpu-clock: 
\tffffffff815f3d06 tlb_remove_table_rcu ([kernel.kallsyms])
\tffffffff814076b7 rcu_do_batch
\t            1700 recurse
\t            1710 recurse
\t               0 [unknown]

     hotspots-fp 23181/23181 cpu-clock:      55d9e340c6a4 hot_one
hotspots-fp 23181/23181 cpu-clock: 
\t    7f0000001234 std::map<int, int>::find(int const&) const
\t           3fbfb msort_with_tmp (inlined)
";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_a_perf_script_snippet() {
        let p = parse_perf_script(SNIPPET);
        assert_eq!(p.total, 6);
        assert_eq!(p.self_counts["hot_three"], 2);
        assert_eq!(p.self_counts["hot_one"], 2);
        assert_eq!(p.self_counts["tlb_remove_table_rcu"], 1);
        assert_eq!(
            p.self_counts["std::map<int, int>::find(int const&) const"],
            1
        );
        assert_eq!(p.self_counts.values().sum::<u64>(), p.total);
        assert_eq!(p.inclusive["main"], 3);
        assert_eq!(p.inclusive["run_loop"], 3);
        assert_eq!(p.inclusive["hot_one"], 2);
        assert_eq!(p.inclusive["recurse"], 1, "counted once per sample");
        assert_eq!(
            p.inclusive["msort_with_tmp"], 1,
            "the (inlined) mark dropped"
        );
        assert_eq!(p.inclusive["[unknown]"], 1);
        assert_eq!(
            p.stacks[0],
            (
                s(&["hot_three", "run_loop", "main", "__libc_start_call_main"]),
                2
            )
        );
        assert!(p.stacks.contains(&(
            s(&["hot_one", "run_loop", "main", "__libc_start_call_main"]),
            1
        )));
        assert!(p.stacks.contains(&(
            s(&[
                "tlb_remove_table_rcu",
                "rcu_do_batch",
                "recurse",
                "recurse",
                "[unknown]"
            ]),
            1
        )));
        assert!(p.stacks.contains(&(s(&["hot_one"]), 1)));
        assert_eq!(p.stacks.iter().map(|(_, n)| n).sum::<u64>(), p.total);
    }

    #[test]
    fn parses_empty_output() {
        assert_eq!(parse_perf_script(""), PerfProfile::default());
        assert_eq!(parse_perf_script("\n\n").total, 0);
    }

    #[test]
    fn ratio_and_tolerance() {
        assert_eq!(ratio(3, 1), 0.75);
        assert!(ratio(0, 0).is_nan());
        assert_eq!(
            proportion_tolerance(0.75, 100),
            4.0 * (0.1875f64 / 100.0).sqrt()
        );
        assert_eq!(proportion_tolerance(0.75, 100_000), 0.05);
    }

    /// `readelf -n`'s "Build ID: <hex>" line.
    fn readelf_build_id(path: &Path) -> Option<String> {
        let out = Command::new("readelf").arg("-n").arg(path).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Build ID:"))
            .map(|id| id.trim().to_string())
    }

    #[test]
    fn build_id_matches_readelf_and_file() {
        let dir = crate::tempdir();
        for fp in [true, false] {
            let bin = build_hotspots(&dir, fp);
            let ours = build_id_of(&bin).expect("hotspots has a build id");
            assert_eq!(ours.len(), 40, "sha1 build id: {ours}");
            assert_eq!(Some(ours.clone()), readelf_build_id(&bin));
            if let Ok(out) = Command::new("file").arg(&bin).output() {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    text.contains(&format!("BuildID[sha1]={ours}")),
                    "file says {text}"
                );
            }
        }
        // The C library too (a distribution build, not ours), where readelf has one.
        for lib in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/aarch64-linux-gnu/libc.so.6",
        ] {
            let lib = Path::new(lib);
            if let Some(want) = readelf_build_id(lib) {
                assert_eq!(build_id_of(lib), Some(want));
            }
        }
        assert_eq!(build_id_of(&hotspots_source()), None, "not ELF");
        assert_eq!(build_id_of(&dir.join("missing")), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn build_id_of_truncated_or_odd_files_is_none_not_a_panic() {
        let dir = crate::tempdir();
        let bin = build_hotspots(&dir, true);
        let data = fs::read(&bin).unwrap();
        for len in [0, 3, 4, 16, 63, 64, 200, 4096, data.len() / 2] {
            let _ = elf_build_id(&data[..len.min(data.len())]);
        }
        // Without section headers the PT_NOTE segment still has it.
        let mut no_sections = data.clone();
        no_sections[0x28..0x30].fill(0); // e_shoff
        no_sections[0x3c..0x3e].fill(0); // e_shnum
        assert_eq!(elf_build_id(&no_sections), elf_build_id(&data));
        assert!(elf_build_id(&data).is_some());
        let _ = fs::remove_dir_all(&dir);
    }
}
