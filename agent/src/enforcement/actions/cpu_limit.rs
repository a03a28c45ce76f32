//! `cpu_limit`: CPU bandwidth of the target's cgroup — v2 `cpu.max` (`<quota> <period>`) where
//! the v2 cpu controller is enabled for it, else v1 `cpu.cfs_quota_us` (hybrid hosts: the cpu
//! controller is bound to v1). The previous value is journaled and written back at TTL.

use std::path::PathBuf;

use super::super::{
    cgroup::{self, CgroupTarget, Hierarchies},
    journal::Undo,
};

/// The period used for v2 `cpu.max` (the kernel's default, 100 ms).
const PERIOD_US: u64 = 100_000;

/// Where the limit goes: (directory, file, the value to write, the value there now).
pub fn plan(
    h: &Hierarchies,
    ct: &CgroupTarget,
    cpus: f64,
) -> Result<(PathBuf, String, String, String), String> {
    if let Some(p) = &ct.v2 {
        if let Some(d) = h.v2_dir(p).filter(|d| d.join("cpu.max").exists()) {
            let previous = cgroup::read(&d, "cpu.max")?;
            let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
            return Ok((
                d,
                "cpu.max".into(),
                format!("{quota} {PERIOD_US}"),
                previous,
            ));
        }
    }
    let p = ct.v1.get("cpu").ok_or(
        "the target has no cgroup of its own with a cpu controller (v2 cpu.max or v1 cpu)",
    )?;
    let d = h
        .v1_dir("cpu", p)
        .ok_or("the v1 cpu hierarchy is not mounted")?;
    let period: u64 = cgroup::read(&d, "cpu.cfs_period_us")?
        .parse()
        .map_err(|e| format!("cpu.cfs_period_us of {}: {e}", d.display()))?;
    let previous = cgroup::read(&d, "cpu.cfs_quota_us")?;
    let quota = ((cpus * period as f64).round() as u64).max(1000);
    Ok((d, "cpu.cfs_quota_us".into(), quota.to_string(), previous))
}

/// Writes the limit; returns the undo.
pub fn apply(dir: PathBuf, file: String, value: &str, previous: String) -> Result<Undo, String> {
    cgroup::write(&dir, &file, value)?;
    Ok(Undo::Restore {
        dir,
        file,
        previous,
    })
}
