//! What the profiler shows of a stack, and as whose: stacks cut at the first address in no
//! executable mapping (never a garbage address in any output), the vDSO named, a reused pid and
//! an exec'd wrapper each shown as what ran then, and odd names or a replaced binary handled.
//! C workloads are built `-O1` with frame pointers, so the kernel's walk is the only unknown.

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use integration_tests::{
    otlp::text, profile_outputs::*, profiling::*, require_root, serial, tempdir, Agent,
};
use serde_json::Value;

/// The two addresses `cleanstack`'s fake frame chain holds (tests/workloads/cleanstack.c).
const GARBAGE: [&str; 2] = ["0xf800000000000000", "0x48d48378b48fb89"];

/// Kernel addresses start here on x86_64 (the canonical upper half).
const KERNEL_START: u64 = 0xffff_8000_0000_0000;

fn o1_fp() -> Vec<&'static str> {
    let mut f = vec!["-O1"];
    f.extend_from_slice(FRAME_POINTERS);
    f
}

fn spawn(bin: &Path, args: &[&str]) -> Child {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()))
}

fn total(stacks: &[(Vec<String>, u64)]) -> u64 {
    stacks.iter().map(|(_, n)| n).sum()
}

/// `(id, fields)` of each top-level `<kind> { ... }` block of a protoc text dump, with the
/// block's scalar fields (the last value of each name).
fn protoc_blocks(dump: &str, kind: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: Option<BTreeMap<String, String>> = None;
    for line in dump.lines() {
        if line == format!("{kind} {{") {
            cur = Some(BTreeMap::new());
        } else if line == "}" {
            if let Some(b) = cur.take() {
                out.push(b);
            }
        } else if let Some(b) = cur.as_mut() {
            if let Some((k, v)) = line.trim().split_once(": ") {
                b.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// Every location of a pprof file is a marker (address 0) or lies inside its mapping.
fn assert_pprof_locations_mapped(dump: &str) {
    let num = |b: &BTreeMap<String, String>, k: &str| -> u64 {
        b.get(k).map_or(0, |v| v.parse().unwrap())
    };
    let mappings: BTreeMap<u64, (u64, u64)> = protoc_blocks(dump, "mapping")
        .iter()
        .map(|m| {
            (
                num(m, "id"),
                (num(m, "memory_start"), num(m, "memory_limit")),
            )
        })
        .collect();
    let locations = protoc_blocks(dump, "location");
    assert!(!locations.is_empty(), "{dump}");
    for l in &locations {
        let (addr, mapping) = (num(l, "address"), num(l, "mapping_id"));
        if addr == 0 {
            continue; // a marker frame ([truncated] sits in the sample, not here)
        }
        let (start, limit) = mappings
            .get(&mapping)
            .unwrap_or_else(|| panic!("location {l:?} has no mapping\n{dump}"));
        // The kernel's pseudo-mapping spans its whole address range.
        assert!(
            (*start..*limit).contains(&addr) || (*start == 0 && addr >= KERNEL_START),
            "location {l:?} outside its mapping [{start:#x}, {limit:#x})"
        );
    }
}

/// Every location of an OTLP dictionary is a marker (address 0), a kernel address, or inside
/// its mapping.
fn assert_otlp_locations_mapped(req: &Value) {
    let dict = &req["dictionary"];
    let num = |v: &Value| -> u64 {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or(v.as_u64())
            .unwrap_or(0)
    };
    let mappings = dict["mappingTable"].as_array().unwrap();
    for l in dict["locationTable"].as_array().unwrap().iter().skip(1) {
        let addr = num(&l["address"]);
        let mi = l["mappingIndex"].as_u64().unwrap_or(0) as usize;
        if mi == 0 {
            assert!(
                addr == 0 || addr >= KERNEL_START,
                "user location {l} has no mapping"
            );
            continue;
        }
        let m = &mappings[mi];
        let (start, limit) = (num(&m["memoryStart"]), num(&m["memoryLimit"]));
        assert!(
            (start..limit).contains(&addr),
            "location {l} outside its mapping {m}"
        );
    }
}

/// A frame-pointer walk that leaves frame-pointer code reads two garbage "return addresses":
/// every output shows `middle;leaf_burn` under `[truncated]` and neither address; every
/// location lies in a mapping; the cut stacks are counted on /status.
#[test]
fn stacks_are_cut_at_the_first_address_in_no_mapping() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_c(&dir, "cleanstack.c", "cleanstack", &o1_fp());
    let agent = Agent::start(
        "probes:\n  syscalls: {enabled: false}\n  network: {enabled: false}\n  \
         profiler: {frequency: 99, interval: 1s}\n",
    );
    agent.wait_ready();
    let cut_before = agent.status()["maps"]["PROFILE_COUNTS"]["detail"]["cut_stacks"]
        .as_u64()
        .unwrap_or(0);
    let child = spawn(&bin, &["60"]);
    let pid = child.id().to_string();
    let args = ["--duration", "3s", "--hz", "99", "--pid", pid.as_str()];

    let stacks = folded(&std::fs::read_to_string(agent_profile(&dir, &args, "folded")).unwrap());
    let in_leaf: u64 = stacks
        .iter()
        .filter(|(s, _)| s.last().is_some_and(|f| f == "leaf_burn"))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "cleanstack: {in_leaf} of {} samples in leaf_burn",
        total(&stacks)
    );
    // The workload spends all but its loop's clock reads in leaf_burn; a loaded machine gives
    // fewer samples, never other stacks there.
    assert!(in_leaf >= 30, "{stacks:?}");
    for (s, n) in &stacks {
        if s.last().is_some_and(|f| f == "leaf_burn") {
            assert_eq!(
                s,
                &["cleanstack", "[truncated]", "middle", "leaf_burn"],
                "{n} samples"
            );
        }
        for f in s {
            assert!(
                !f.starts_with("0x"),
                "an address outside every mapping: {s:?}"
            );
        }
    }

    let dump = protoc_decode(&agent_profile(&dir, &args, "pprof"));
    assert_pprof_locations_mapped(&dump);
    for g in GARBAGE {
        let dec = u64::from_str_radix(&g[2..], 16).unwrap().to_string();
        assert!(!dump.contains(&dec), "{g} in pprof");
    }
    let req = python_decode_otlp(&agent_profile(&dir, &args, "otlp"));
    assert_otlp_locations_mapped(&req);
    let procs = otlp_processes(&req);
    assert!(procs
        .iter()
        .flat_map(|(_, s)| s)
        .any(|(s, _)| s.ends_with(&["middle".to_string(), "leaf_burn".to_string()])));
    let svg = std::fs::read_to_string(agent_profile(&dir, &args, "svg")).unwrap();
    assert!(svg.contains("leaf_burn") && svg.contains("middle"));
    for g in GARBAGE {
        assert!(!svg.contains(g), "{g} in the SVG");
    }
    // The running agent counts the cut stacks (its 1 s exports cover the run).
    agent.wait_for(
        |a| {
            a.status()["maps"]["PROFILE_COUNTS"]["detail"]["cut_stacks"]
                .as_u64()
                .unwrap_or(0)
                >= cut_before + 30
        },
        "cut stacks counted on /status",
    );
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loop calling clock_gettime(CLOCK_MONOTONIC) spends most of its time in the vDSO: those
/// leaves are named `__vdso_clock_gettime` (the vDSO's entry point, not its libc-named weak
/// alias), never `[vdso]+0x...`.
#[test]
fn vdso_frames_are_named() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let bin = build_c(&dir, "vdso_loop.c", "vdso_loop", &o1_fp());
    let mut child = spawn(&bin, &["60"]);
    let pid = child.id().to_string();
    let out = agent_profile(
        &dir,
        &["--duration", "3s", "--hz", "99", "--pid", &pid],
        "folded",
    );
    let stacks = folded(&std::fs::read_to_string(out).unwrap());
    let n = total(&stacks);
    let in_vdso = leaf_count(&stacks, "__vdso_clock_gettime");
    eprintln!("vdso_loop: {in_vdso} of {n} samples in __vdso_clock_gettime");
    // Measured here: 65-70% of the loop's samples are in the vDSO (the rest in the loop and
    // the libc wrapper); 25% leaves room for a loaded machine's sampling noise.
    assert!(n >= 30 && in_vdso * 4 >= n, "{stacks:?}");
    for (s, _) in &stacks {
        assert!(!s.iter().any(|f| f.starts_with("[vdso]")), "{s:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stacks by root (the executable name) and leaf.
fn by_root_and_leaf(stacks: &[(Vec<String>, u64)]) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for (s, n) in stacks {
        let key = (s[0].clone(), s.last().cloned().unwrap_or_default());
        *m.entry(key).or_default() += n;
    }
    m
}

/// `alpha` burns CPU and exits; `beta` starts on the same pid (ns_last_pid) and burns CPU: one
/// `agent profile --pid` run over both names each one's samples after its own executable and
/// symbolizes them with its own mappings (beta's `beta_work` is never `alpha`'s or unresolved).
#[test]
fn a_reused_pid_is_a_new_process() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let with = |define: &'static str| {
        let mut f = o1_fp();
        f.push(define);
        f
    };
    let alpha = build_c(&dir, "burner.c", "pidreuse-alpha", &with("-DWHO=alpha"));
    let beta = build_c(&dir, "burner.c", "pidreuse-beta", &with("-DWHO=beta"));
    // alpha waits for a line on stdin, so the profiler is sampling before it runs.
    let mut a = Command::new("sh")
        .arg("-c")
        .arg(format!("read x; exec {} 1.5", alpha.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = a.id();
    let run = ProfileRun::start(
        &dir,
        &["--duration", "6s", "--hz", "99", "--pid", &pid.to_string()],
        "folded",
    );
    a.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(a.wait().unwrap().success());
    // Put beta on alpha's pid: the next pid handed out is ns_last_pid + 1.
    let mut b = None;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let c = spawn(&beta, &["1.5"]);
        if c.id() == pid {
            b = Some(c);
            break;
        }
        let mut c = c;
        let _ = (c.kill(), c.wait());
    }
    let mut b = b.expect("another process took the pid 200 times in a row");
    assert!(b.wait().unwrap().success());
    let stacks = folded(&std::fs::read_to_string(run.finish()).unwrap());
    let m = by_root_and_leaf(&stacks);
    eprintln!("pid {pid}: {m:?}");
    let get = |root: &str, leaf: &str| {
        m.get(&(root.to_string(), leaf.to_string()))
            .copied()
            .unwrap_or(0)
    };
    // Each ran ~1.5 s at 99 Hz (~150 samples on an idle CPU): 10 is a loaded machine's floor.
    assert!(get("pidreuse-alpha", "alpha_work") >= 10, "{m:?}");
    assert!(get("pidreuse-beta", "beta_work") >= 10, "{m:?}");
    for ((root, leaf), n) in &m {
        let crossed = (root == "pidreuse-alpha" && leaf.contains("beta"))
            || (root == "pidreuse-beta" && leaf.contains("alpha"));
        assert!(!crossed, "{n} samples of {leaf} under {root}: {m:?}");
        assert!(!leaf.starts_with("0x"), "{m:?}");
    }
    // beta's hot samples resolve whole, through its own main.
    for (s, n) in &stacks {
        if s[0] == "pidreuse-beta" && s.last().is_some_and(|l| l == "beta_work") {
            assert_eq!(s[s.len() - 2], "main", "{n} samples: {s:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sh -c '<loop>; exec ./prog'`: the shell's samples are named after the shell, the program's
/// after the program (a new incarnation at exec), never the other way round.
#[test]
fn an_exec_wrapper_and_its_program_are_named_apart() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let mut flags = o1_fp();
    flags.push("-DWHO=beta");
    let prog = build_c(&dir, "burner.c", "exec-prog", &flags);
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read x; i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exec {} 1",
            prog.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let shell = std::fs::read_link(format!("/proc/{}/exe", sh.id())).unwrap();
    let shell = shell.file_name().unwrap().to_string_lossy().into_owned();
    let run = ProfileRun::start(
        &dir,
        &[
            "--duration",
            "8s",
            "--hz",
            "99",
            "--pid",
            &sh.id().to_string(),
        ],
        "folded",
    );
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(sh.wait().unwrap().success());
    let stacks = folded(&std::fs::read_to_string(run.finish()).unwrap());
    let m = by_root_and_leaf(&stacks);
    eprintln!("{m:?}");
    let under = |root: &str| -> u64 {
        m.iter()
            .filter(|((r, _), _)| r == root)
            .map(|(_, n)| n)
            .sum()
    };
    // The loop takes ~0.5-1 s of CPU, the program 1 s: 10 samples each is a loaded floor.
    assert!(under(&shell) >= 10, "{shell}: {m:?}");
    assert!(
        m.get(&("exec-prog".to_string(), "beta_work".to_string()))
            .copied()
            .unwrap_or(0)
            >= 10,
        "{m:?}"
    );
    for ((root, leaf), n) in &m {
        assert!(
            !(root == &shell && leaf == "beta_work"),
            "{n} of the program's samples named {shell}"
        );
        assert!(!leaf.starts_with("0x"), "{m:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process whose executable path has a space, an escaped newline and invalid UTF-8, whose
/// binary is replaced (renamed over) while it runs: attributed and symbolized, every output
/// line intact, every output decodable by its reference tool.
#[test]
fn odd_names_and_a_replaced_binary_stay_safe() {
    require_root();
    let _g = serial();
    let dir = tempdir();
    let built = build_hotspots(&dir, true);
    let odd_dir = dir.join("a dir");
    std::fs::create_dir_all(&odd_dir).unwrap();
    let mut name = b"hot\nspots-\xff".to_vec();
    name.extend_from_slice(b"x");
    let odd: PathBuf = odd_dir.join(std::ffi::OsStr::from_bytes(&name));
    std::fs::copy(&built, &odd).unwrap();
    let mut child = spawn(&odd, &["60"]);
    thread::sleep(Duration::from_millis(300));
    // Replace the binary under the running process: its mapping now names a deleted file.
    let other = dir.join("replacement");
    std::fs::copy("/bin/true", &other).unwrap();
    std::fs::rename(&other, &odd).unwrap();
    let pid = child.id().to_string();
    let args = ["--duration", "2s", "--hz", "99", "--pid", pid.as_str()];

    let lines = std::fs::read_to_string(agent_profile(&dir, &args, "folded")).unwrap();
    for line in lines.lines() {
        let (stack, n) = line.rsplit_once(' ').expect("stack count");
        assert!(n.parse::<u64>().is_ok(), "broken line {line:?}");
        assert!(!stack.is_empty());
    }
    let stacks = folded(&lines);
    let (three, one) = (
        leaf_count(&stacks, "hot_three"),
        leaf_count(&stacks, "hot_one"),
    );
    assert!(three + one >= 30, "{stacks:?}");
    // The name the process runs under, invalid bytes replaced, the newline dropped.
    let shown = &stacks[0].0[0];
    assert_eq!(shown, "hotspots-\u{fffd}x", "{stacks:?}");
    assert!(stacks.iter().all(|(s, _)| &s[0] == shown));

    let dump = protoc_decode(&agent_profile(&dir, &args, "pprof"));
    assert!(string_table(&dump).iter().any(|s| s == "hot_three"));
    let req = python_decode_otlp(&agent_profile(&dir, &args, "otlp"));
    let procs = otlp_processes(&req);
    assert_eq!(procs.len(), 1);
    let exe = text(&procs[0].0["process.executable.name"]);
    assert_eq!(
        exe, "hot\nspots-\u{fffd}x",
        "the attribute keeps the name as read"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
