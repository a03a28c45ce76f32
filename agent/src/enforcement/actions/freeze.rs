//! `freeze` / `thaw`: cgroup v2 `cgroup.freeze` (done when `cgroup.events` says `frozen 1`),
//! or v1 `freezer.state` (`FROZEN`, done when it reads back `FROZEN`) where the target has no
//! v2 cgroup of its own (v2 core files are on every v2 cgroup, even on hybrid hosts).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::super::{
    cgroup::{self, CgroupTarget, Hierarchies},
    journal::Undo,
};

/// How long a freeze may take to settle before it is reported as not in effect.
const SETTLE: Duration = Duration::from_secs(2);

/// The directory a freeze acts on and whether it is v1.
pub fn freezer_dir(h: &Hierarchies, ct: &CgroupTarget) -> Option<(bool, String, PathBuf)> {
    if let Some(p) = &ct.v2 {
        if let Some(d) = h.v2_dir(p).filter(|d| d.join("cgroup.freeze").exists()) {
            return Some((false, p.clone(), d));
        }
    }
    let p = ct.v1.get("freezer")?;
    let d = h.v1_dir("freezer", p)?;
    d.join("freezer.state")
        .exists()
        .then(|| (true, p.clone(), d))
}

fn wait(what: &str, dir: &Path, done: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!(
                "{what} of {} did not settle within {SETTLE:?}",
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn v2_frozen(dir: &Path) -> bool {
    cgroup::read(dir, "cgroup.events").is_ok_and(|e| e.lines().any(|l| l.trim() == "frozen 1"))
}

/// Freezes and waits until the kernel says frozen; returns the undo.
pub fn freeze(v1: bool, dir: &Path) -> Result<Undo, String> {
    if v1 {
        cgroup::write(dir, "freezer.state", "FROZEN")?;
        wait("freezing", dir, || {
            cgroup::read(dir, "freezer.state").is_ok_and(|s| s == "FROZEN")
        })?;
    } else {
        cgroup::write(dir, "cgroup.freeze", "1")?;
        wait("freezing", dir, || v2_frozen(dir))?;
    }
    Ok(Undo::Thaw {
        v1,
        dir: dir.to_path_buf(),
    })
}

pub fn thaw(v1: bool, dir: &Path) -> Result<(), String> {
    if v1 {
        cgroup::write(dir, "freezer.state", "THAWED")?;
        wait("thawing", dir, || {
            cgroup::read(dir, "freezer.state").is_ok_and(|s| s == "THAWED")
        })
    } else {
        cgroup::write(dir, "cgroup.freeze", "0")?;
        wait("thawing", dir, || !v2_frozen(dir))
    }
}
