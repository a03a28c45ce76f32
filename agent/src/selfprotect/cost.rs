//! The agent's own cost: user + system CPU and RSS (`/proc/self` through `selfstats`), and its
//! eBPF programs' run time and maps' memory from `/proc/self/fdinfo` of its `bpf-prog` and
//! `bpf-map` descriptors (kernel: `bpf_prog_show_fdinfo`, `bpf_map_show_fdinfo`).
//!
//! `procfs` lists the descriptors but does not parse their fdinfo fields, so the `key:\tvalue`
//! lines are read here. A program or map held through several descriptors counts once (by id).
//! `run_time_ns` only grows while run-time accounting is on (`BPF_ENABLE_STATS`, held as a
//! descriptor for a window of each interval, see `engine`).

use std::collections::BTreeMap;

use serde::Serialize;

/// The kernel-side figures of one reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCost {
    /// eBPF programs the agent holds.
    pub programs: u64,
    /// Sum of their `run_time_ns` (ns, only counted while accounting is on).
    pub run_time_ns: u64,
    /// Sum of their `run_cnt`.
    pub run_count: u64,
    /// eBPF maps the agent holds.
    pub maps: u64,
    /// Sum of the maps' `memlock` (bytes the kernel charges for them).
    pub map_bytes: u64,
    /// Sum of the programs' `memlock` (instructions, JITed code).
    pub program_bytes: u64,
}

/// The fields of one fdinfo text (`key:\tvalue` lines).
pub fn parse_fdinfo(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// Adds one descriptor's fdinfo to `acc`; `seen` holds the ids already counted.
fn add(
    acc: &mut KernelCost,
    seen: &mut std::collections::HashSet<(bool, u64)>,
    kind: &str,
    text: &str,
) {
    let f = parse_fdinfo(text);
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    match kind {
        "bpf-prog" => {
            if !seen.insert((true, num("prog_id"))) {
                return;
            }
            acc.programs += 1;
            acc.run_time_ns += num("run_time_ns");
            acc.run_count += num("run_cnt");
            acc.program_bytes += num("memlock");
        }
        "bpf-map" => {
            if !seen.insert((false, num("map_id"))) {
                return;
            }
            acc.maps += 1;
            acc.map_bytes += num("memlock");
        }
        _ => {}
    }
}

/// Reads the kernel-side cost of this process's eBPF objects; unreadable descriptors (closed
/// meanwhile) are skipped.
pub fn kernel() -> KernelCost {
    let mut acc = KernelCost::default();
    let mut seen = std::collections::HashSet::new();
    let Ok(me) = procfs::process::Process::myself() else {
        return acc;
    };
    let Ok(fds) = me.fd() else {
        return acc;
    };
    for fd in fds.flatten() {
        let procfs::process::FDTarget::AnonInode(kind) = &fd.target else {
            continue;
        };
        let kind = kind.trim_start_matches("anon_inode:");
        if kind != "bpf-prog" && kind != "bpf-map" {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.fd)) {
            add(&mut acc, &mut seen, kind, &text);
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROG: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nlink_type:\tx\n\
prog_type:\t5\nprog_jited:\t1\nprog_tag:\tab\nmemlock:\t4096\nprog_id:\t71\nrun_time_ns:\t1500\n\
run_cnt:\t3\nrecursion_misses:\t0\nverified_insns:\t12\n";
    const MAP: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nmap_type:\t1\n\
key_size:\t4\nvalue_size:\t8\nmax_entries:\t1024\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
memlock:\t90112\nmap_id:\t9\nfrozen:\t0\n";

    #[test]
    fn fdinfo_fields_are_summed_once_per_id() {
        let mut acc = KernelCost::default();
        let mut seen = Default::default();
        add(&mut acc, &mut seen, "bpf-prog", PROG);
        add(&mut acc, &mut seen, "bpf-prog", PROG); // a second descriptor of program 71
        add(&mut acc, &mut seen, "bpf-map", MAP);
        assert_eq!(
            acc,
            KernelCost {
                programs: 1,
                run_time_ns: 1500,
                run_count: 3,
                maps: 1,
                map_bytes: 90112,
                program_bytes: 4096,
            }
        );
    }
}
