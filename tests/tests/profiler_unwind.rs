//! The DWARF unwinder (probes.profiler.unwinder, `auto` by default) on code without frame
//! pointers: C through the C library (qsort), Rust built in release, a deep recursion, a
//! process in another mount namespace, and JIT-compiled JavaScript named from Node's perf
//! map. `perf record --call-graph dwarf` on the same runs is the reference.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use integration_tests::{profile_outputs::*, profiling::*, require_root, serial, tempdir};

/// Stacks (root first) of `agent profile --pid <pid>` over `seconds` at 99 Hz, DWARF unwinder.
fn profile_pid(dir: &Path, pid: u32, seconds: u32) -> Stacks {
    let out = agent_profile(
        dir,
        &[
            "--duration",
            &format!("{seconds}s"),
            "--hz",
            "99",
            "--pid",
            &pid.to_string(),
            "--unwinder",
            "dwarf",
        ],
        "folded",
    );
    folded(&std::fs::read_to_string(out).unwrap())
}

fn spawn(cmd: &mut Command) -> Child {
    let c = cmd
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workload");
    // Past exec and the dynamic loader.
    thread::sleep(Duration::from_millis(300));
    c
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn total(stacks: &[(Vec<String>, u64)]) -> u64 {
    stacks.iter().map(|(_, n)| n).sum()
}

/// Samples whose stack holds `seq` as consecutive frames (root first).
fn through(stacks: &[(Vec<String>, u64)], seq: &[&str]) -> u64 {
    stacks
        .iter()
        .filter(|(s, _)| s.windows(seq.len()).any(|w| w == seq))
        .map(|(_, n)| n)
        .sum()
}

/// Samples with a frame `f` matches.
fn inclusive(stacks: &[(Vec<String>, u64)], f: impl Fn(&str) -> bool) -> u64 {
    stacks
        .iter()
        .filter(|(s, _)| s.iter().any(|x| f(x)))
        .map(|(_, n)| n)
        .sum()
}

/// Asserts that at least 95% of `stacks` pass through `seq`, and that no more than 5% are
/// marked truncated.
fn assert_whole(stacks: &[(Vec<String>, u64)], seq: &[&str], who: &str) {
    let n = total(stacks);
    let whole = through(stacks, seq);
    let truncated = inclusive(stacks, |f| f == "[truncated]");
    eprintln!("{who}: {whole} of {n} samples through {seq:?}, {truncated} truncated");
    assert!(n >= 50, "{who}: too few samples: {stacks:?}");
    assert!(whole * 100 >= n * 95, "{who}: {whole} of {n}: {stacks:?}");
    assert!(
        truncated * 100 <= n * 5,
        "{who}: {truncated} of {n} truncated"
    );
}

/// The agent's and perf's shares of samples with `f` agree within both binomial bounds.
fn assert_share_like_perf(
    stacks: &[(Vec<String>, u64)],
    perf: &PerfProfile,
    what: &str,
    f: impl Fn(&str) -> bool,
) {
    let (n, pn) = (total(stacks), perf.total);
    let ours = inclusive(stacks, &f) as f64 / n as f64;
    let theirs = perf
        .stacks
        .iter()
        .filter(|(s, _)| s.iter().any(|x| f(x)))
        .map(|(_, c)| c)
        .sum::<u64>() as f64
        / pn as f64;
    let tol = proportion_tolerance(ours, n) + proportion_tolerance(theirs, pn);
    eprintln!("{what}: agent {ours:.3} of {n}, perf --call-graph dwarf {theirs:.3} of {pn}");
    assert!(
        (ours - theirs).abs() <= tol,
        "{what}: agent {ours:.3} vs perf {theirs:.3} (bound {tol:.3})"
    );
}

/// C built -O2 -fomit-frame-pointer, hot inside the C library's qsort (no frame pointers
/// either): ≥ 95% of samples reach main through sort_loop; the comparator's and msort's shares
/// match perf's DWARF unwinding of the same run.
#[test]
fn c_without_frame_pointers_is_unwound_through_libc_like_perf() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_c(
        &dir,
        "qsort_loop.c",
        "qsort_loop",
        &["-O2", "-fomit-frame-pointer"],
    );
    let child = spawn(Command::new(&bin).arg("30"));
    let pid = child.id();
    let perf_dir = dir.join("perf");
    let perf = thread::spawn(move || perf_record_dwarf(pid, 5.0, 99, &perf_dir));
    let stacks = profile_pid(&dir, pid, 5);
    let perf = perf.join().expect("perf thread");
    stop(child);
    assert_whole(&stacks, &["main", "sort_loop"], "qsort_loop");
    let perf_whole: u64 = perf
        .stacks
        .iter()
        .filter(|(s, _)| s.windows(2).any(|w| w == ["sort_loop", "main"]))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "perf: {perf_whole} of {} through main <- sort_loop",
        perf.total
    );
    assert_share_like_perf(&stacks, &perf, "leaf cmp_ints", |f| f == "cmp_ints");
    assert_share_like_perf(&stacks, &perf, "in msort_with_tmp", |f| {
        f.starts_with("msort_with_tmp")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rust built in release without frame pointers (rustc's default): ≥ 95% of samples reach
/// spin::main through spin::outer, the hot function's share as perf sees it.
#[test]
fn rust_release_without_frame_pointers_is_unwound() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/spin.rs");
    let bin = dir.join("spin");
    let built = Command::new("rustc")
        .args(["-O", "-g", "-C", "force-frame-pointers=no", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("rustc");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let child = spawn(Command::new(&bin).arg("30"));
    let pid = child.id();
    let perf_dir = dir.join("perf");
    let perf = thread::spawn(move || perf_record_dwarf(pid, 5.0, 99, &perf_dir));
    let stacks = profile_pid(&dir, pid, 5);
    let perf = perf.join().expect("perf thread");
    stop(child);
    assert_whole(&stacks, &["spin::main", "spin::outer"], "spin");
    assert_share_like_perf(&stacks, &perf, "in spin::inner_hot", |f| {
        f == "spin::inner_hot"
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cache files of `dir` by name: (inode, modification time).
fn cache_files(dir: &Path) -> std::collections::BTreeMap<String, (u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".rows"))
                .map(|e| {
                    let m = e.metadata().unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        (m.ino(), m.modified().unwrap()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `agent profile` with a config naming an existing output directory uses the agent's unwind
/// table cache there: a binary linked without a build ID is cached by device, inode, size and
/// times (its file named exactly so), and found again by the next run (same cache file, its
/// time refreshed). A cached table that does not fit in a small kernel array is skipped, not
/// taken for a broken cache file (deleted and written again).
#[test]
fn tables_of_a_binary_without_build_id_are_cached_by_inode_and_reused() {
    use std::os::unix::fs::MetadataExt;
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_c(
        &dir,
        "qsort_loop.c",
        "qsort_nobuildid",
        &["-O2", "-fomit-frame-pointer", "-Wl,--build-id=none"],
    );
    assert_eq!(build_id_of(&bin), None);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = |name: &str, rows: u32| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "output:\n  dir: {}\nprobes:\n  profiler:\n    unwind_table_rows: {rows}\n",
                out.display()
            ),
        )
        .unwrap();
        path
    };
    let (full, small) = (config("full.yaml", 1 << 21), config("small.yaml", 8192));
    let child = spawn(Command::new(&bin).arg("30"));
    let pid = child.id().to_string();
    let profile = |cfg: &Path| {
        let args = [
            "--duration",
            "2s",
            "--hz",
            "99",
            "--pid",
            &pid,
            "--unwinder",
            "dwarf",
        ];
        let cfg = cfg.to_str().unwrap();
        let file = agent_profile(&dir, &[&args[..], &["--config", cfg]].concat(), "folded");
        folded(&std::fs::read_to_string(file).unwrap())
    };
    let stacks = profile(&full);
    assert_whole(
        &stacks,
        &["main", "sort_loop"],
        "qsort_nobuildid, first run",
    );
    let cache = out.join("unwind-cache");
    let m = std::fs::metadata(&bin).unwrap();
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    let name = format!(
        "{:x}-{:x}-{:x}-{:x}-{:x}.rows",
        m.dev(),
        m.ino(),
        m.size(),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec())
    );
    let before = cache_files(&cache);
    assert!(before.contains_key(&name), "{name} not in {before:?}");
    // libc's table, by build ID, is there too (more than this kernel array's 8192 rows).
    assert!(before.len() >= 2, "{before:?}");
    // Made old, so a hit (which refreshes the time) shows.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for n in before.keys() {
        std::fs::File::options()
            .write(true)
            .open(cache.join(n))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let stacks = profile(&small);
    stop(child);
    assert!(total(&stacks) >= 50, "{stacks:?}");
    let after = cache_files(&cache);
    assert_eq!(
        after[&name].0, before[&name].0,
        "the binary's table was written again"
    );
    assert!(
        after[&name].1 > old,
        "the binary's table was not read from the cache"
    );
    for (n, (ino, _)) in &before {
        assert_eq!(
            after.get(n).map(|a| a.0),
            Some(*ino),
            "{n} was deleted or written again"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A chain of 100 calls without frame pointers is kept whole, from the leaf to _start; one of
/// 150 is kept up to the maximum (127 frames), marked truncated.
#[test]
fn deep_recursion_is_kept_whole_up_to_the_maximum() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_c(
        &dir,
        "recurse.c",
        "recurse",
        &["-O2", "-fomit-frame-pointer"],
    );
    for depth in [100usize, 150] {
        let child = spawn(Command::new(&bin).args(["30", &depth.to_string()]));
        let stacks = profile_pid(&dir, child.id(), 3);
        stop(child);
        let leaf: Vec<_> = stacks
            .iter()
            .filter(|(s, _)| s.last().is_some_and(|f| f == "burn"))
            .collect();
        let n: u64 = leaf.iter().map(|(_, c)| c).sum();
        // Frames named recurse (the first is the executable's name).
        let recursions = |s: &[String]| s[1..].iter().filter(|f| *f == "recurse").count();
        let (expected, whole): (u64, u64) = if depth == 100 {
            // exe, _start, libc (2), main, 100 x recurse, burn.
            let ok = leaf
                .iter()
                .filter(|(s, _)| recursions(s) == 100 && s[1] == "_start")
                .map(|(_, c)| c)
                .sum();
            (n, ok)
        } else {
            // exe, [truncated], then exactly 127 frames: 126 x recurse and burn.
            let ok = leaf
                .iter()
                .filter(|(s, _)| {
                    s.len() == 2 + 127 && s[1] == "[truncated]" && recursions(s) == 126
                })
                .map(|(_, c)| c)
                .sum();
            (n, ok)
        };
        eprintln!("depth {depth}: {whole} of {expected} leaf samples as expected");
        assert!(expected >= 50, "depth {depth}: {stacks:?}");
        assert!(whole * 100 >= expected * 95, "depth {depth}: {stacks:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process in a mount namespace of its own, running a binary that exists only there (a
/// tmpfs mounted inside it): named and unwound through /proc/<pid>/map_files.
#[test]
fn a_process_in_another_mount_namespace_is_unwound() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_c(
        &dir,
        "qsort_loop.c",
        "mntns-qsort",
        &["-O2", "-fomit-frame-pointer"],
    );
    let hidden = dir.join("hidden");
    std::fs::create_dir_all(&hidden).unwrap();
    // Inside: a private tmpfs over `hidden`, the binary copied there, exec'd (same pid).
    let script = format!(
        "mount -t tmpfs profiler-mntns {h} && cp {b} {h}/mntns-qsort && exec {h}/mntns-qsort 30",
        h = hidden.display(),
        b = bin.display()
    );
    let child = spawn(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    // Wait for the exec inside (the host sees an empty directory at that path).
    let pid = child.id();
    for _ in 0..50 {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.ends_with("mntns-qsort") {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !hidden.join("mntns-qsort").exists(),
        "the binary must not be visible from the host's mount namespace"
    );
    let stacks = profile_pid(&dir, pid, 4);
    stop(child);
    assert!(
        stacks.iter().all(|(s, _)| s[0] == "mntns-qsort"),
        "{stacks:?}"
    );
    assert_whole(&stacks, &["main", "sort_loop"], "mntns-qsort");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Node with --perf-basic-prof: its JIT-compiled JavaScript is named from /tmp/perf-<pid>.map
/// (found through /proc/<pid>/root with its own pid), and stacks run on below it into Node.
#[test]
fn node_jit_frames_are_named_from_its_perf_map() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/fib.js");
    let child = spawn(
        Command::new("node")
            .arg("--perf-basic-prof")
            .arg(&script)
            .arg("30")
            // V8 may write an isolate-*-v8.log into its working directory: keep it in ours.
            .current_dir(&dir),
    );
    // Let V8 compile the hot functions.
    thread::sleep(Duration::from_secs(1));
    let pid = child.id();
    let stacks = profile_pid(&dir, pid, 4);
    stop(child);
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let n = total(&stacks);
    let js = inclusive(&stacks, |f| f.contains("fibonacci") && f.contains("fib.js"));
    let into_node = inclusive(&stacks, |f| f.starts_with("node::"));
    let anon = inclusive(&stacks, |f| f.starts_with("[anon]"));
    eprintln!(
        "node: {js} of {n} samples in fibonacci, {into_node} reach node::, {anon} unnamed JIT"
    );
    assert!(n >= 50, "{stacks:?}");
    // fibonacci is where the script spends its time; the rest is the loop, Date.now and GC.
    assert!(js * 2 >= n, "{js} of {n}");
    assert!(
        into_node * 2 >= n,
        "{into_node} of {n} reach Node's own frames"
    );
    assert!(
        anon * 20 <= n,
        "{anon} of {n} samples with JIT code no perf map names"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
