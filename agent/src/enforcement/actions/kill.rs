//! `kill` and `restart_container`: every process of the target's cgroup ends — v2
//! `cgroup.kill` (one write, the kernel kills the subtree, forks included), or SIGKILL through a
//! pidfd to each process of the v1 subtree where the target has no v2 cgroup of its own. A
//! container's runtime sees its processes gone and restarts it (the node-local equivalent of
//! deleting the pod).

use std::path::Path;

use super::{
    super::cgroup::{self, CgroupTarget, Hierarchies},
    signal,
};

/// Kills the target's cgroup; returns what was done.
pub fn kill(h: &Hierarchies, ct: &CgroupTarget) -> Result<String, String> {
    if let Some(p) = &ct.v2 {
        if let Some(d) = h.v2_dir(p).filter(|d| d.join("cgroup.kill").exists()) {
            cgroup::write(&d, "cgroup.kill", "1")?;
            return Ok(format!("cgroup.kill on {p}"));
        }
    }
    let (ctrl, p) = ct
        .v1
        .iter()
        .next()
        .ok_or("the target has no cgroup of its own to kill (v2 or v1)")?;
    let d = h
        .v1_dir(ctrl, p)
        .ok_or_else(|| format!("the v1 {ctrl} hierarchy is not mounted"))?;
    let n = kill_subtree(&d)?;
    Ok(format!("SIGKILL to {n} processes of v1 {ctrl}:{p}"))
}

fn kill_subtree(dir: &Path) -> Result<usize, String> {
    let mut n = 0;
    for pid in cgroup::procs_in_subtree(dir) {
        let Some(start) = signal::start_ticks(pid) else {
            continue;
        };
        if signal::send(pid, start, libc::SIGKILL).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}
