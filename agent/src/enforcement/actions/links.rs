//! The cgroup attachments of the kernel actions (`block`, `rate_limit`): one bpf_link per
//! (program, cgroup), pinned under `enforcement.bpffs` for `persist: true` limits, and taken
//! over from the pins by the next agent.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};

use super::super::pins::Pins;

/// One attachment: held by its fd (detached when dropped) or pinned (outlives the agent).
pub enum Link {
    Fd(FdLink),
    Pinned(PinnedLink),
}

impl Link {
    /// `fd`, pinned at `pin` when given.
    fn new(fd: FdLink, pin: Option<PathBuf>) -> Result<Link, String> {
        match pin {
            Some(p) => fd
                .pin(&p)
                .map(Link::Pinned)
                .map_err(|e| format!("cannot pin the link at {}: {e}", p.display())),
            None => Ok(Link::Fd(fd)),
        }
    }

    /// This link, pinned at `pin` if it is not yet (a limit turned persistent).
    pub fn pinned(self, pin: PathBuf) -> Result<Link, String> {
        match self {
            Link::Fd(fd) => Link::new(fd, Some(pin)),
            l => Ok(l),
        }
    }

    /// Detaches (unpinning a pinned link).
    pub fn detach(self) -> Result<(), String> {
        match self {
            Link::Pinned(p) => drop(p.unpin().map_err(|e| format!("cannot unpin: {e}"))?),
            Link::Fd(fd) => drop(fd),
        }
        Ok(())
    }
}

/// Attaches to the cgroup at `dir` with `attach` (which attaches a loaded program to the open
/// cgroup and returns its link), pinning the link at `pin` when given.
pub fn attach_cgroup(
    dir: &Path,
    pin: Option<PathBuf>,
    attach: impl FnOnce(&File) -> Result<FdLink, String>,
) -> Result<Link, String> {
    let cg = File::open(dir).map_err(|e| format!("cannot open cgroup {}: {e}", dir.display()))?;
    Link::new(attach(&cg)?, pin)
}

/// The links a predecessor pinned under names starting with `prefix`, by name.
pub fn take_over(pins: &Pins, prefix: &str) -> Vec<(String, Link)> {
    let mut out = Vec::new();
    for (name, path) in pins.links_with_prefix(prefix) {
        match PinnedLink::from_pin(&path) {
            Ok(l) => out.push((name, Link::Pinned(l))),
            Err(e) => tracing::warn!("cannot take over pinned link {}: {e}", path.display()),
        }
    }
    out
}
