//! Process attribution from `/proc`: executable name and container id, with a bounded cache.
//!
//! Invariants: pids are the host (initial namespace) pids the kernel reports, so the agent must
//! see the host's `/proc` (hostPID in Kubernetes). A process that exited before it was looked up
//! is attributed from what the kernel captured (command name, cgroup id) instead.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// What we know about one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// Base name of `/proc/<pid>/exe`, else the command name.
    pub exe_name: String,
    pub container_id: Option<String>,
    /// Container runtime, pod UID and pod names (`crate::k8s`), when in a container.
    pub workload: Option<crate::k8s::Workload>,
}

/// Whether `pid` is still a live process (a zombie counts as alive until reaped).
pub fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// `process.executable.name` of a live pid: base name of `/proc/<pid>/exe` (semantic
/// conventions), else its command name (kernel threads, a process being torn down). Names
/// with spaces, newlines or non-UTF-8 bytes are kept (invalid UTF-8 replaced by U+FFFD).
pub fn exe_name(pid: u32) -> Option<String> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    if let Ok(target) = p.exe() {
        let s = target.to_string_lossy();
        let s = s.strip_suffix(" (deleted)").unwrap_or(&s);
        if let Some(name) = Path::new(s).file_name() {
            return Some(name.to_string_lossy().into_owned());
        }
    }
    p.stat().ok().map(|st| st.comm)
}

/// The text of `/proc/<pid>/cgroup` rebuilt from procfs's parse (`hierarchy:controllers:path`
/// lines), for the path parsers here and in `crate::k8s`.
fn cgroup_text(pid: u32) -> Option<String> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let groups = p.cgroups().ok()?;
    Some(
        groups
            .into_iter()
            .map(|g| {
                format!(
                    "{}:{}:{}\n",
                    g.hierarchy,
                    g.controllers.join(","),
                    g.pathname
                )
            })
            .collect(),
    )
}

/// A container id found in a cgroup path: the 64-hex id of docker, containerd (cri), CRI-O and
/// podman layouts (`/docker/<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, `/kubepods/.../<id>`).
pub fn container_id_from_path(path: &str) -> Option<String> {
    for segment in path.rsplit('/') {
        let seg = segment.strip_suffix(".scope").unwrap_or(segment);
        let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(id.to_ascii_lowercase());
        }
    }
    None
}

/// Container id of a live pid from `/proc/<pid>/cgroup` (v2 line first, then any v1 line).
pub fn container_id(pid: u32) -> Option<String> {
    container_id_from_cgroup_file(&cgroup_text(pid)?)
}

/// Container and pod of a live pid from `/proc/<pid>/cgroup` (see `crate::k8s`).
pub fn workload(pid: u32) -> Option<crate::k8s::Workload> {
    crate::k8s::Workload::from_cgroup_file(&cgroup_text(pid)?)
}

pub fn container_id_from_cgroup_file(text: &str) -> Option<String> {
    let mut lines: Vec<&str> = text.lines().collect();
    // `0::/path` is the unified hierarchy; prefer it.
    lines.sort_by_key(|l| !l.starts_with("0::"));
    lines
        .iter()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(container_id_from_path)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` or, on hybrid hosts,
/// `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    procfs::mounts()
        .ok()?
        .into_iter()
        .find(|m| m.fs_vfstype == "cgroup2")
        .map(|m| PathBuf::from(m.fs_file))
}

/// Cache of process attribution and of cgroup id → path (cgroup ids are cgroup2 directory
/// inode numbers). Both maps are bounded; when full they are cleared and rebuilt on demand.
pub struct ProcCache {
    procs: HashMap<u32, ProcInfo>,
    cgroups: HashMap<u64, String>,
    cgroup_root: Option<PathBuf>,
    max: usize,
}

impl ProcCache {
    pub fn new(max: usize) -> Self {
        ProcCache {
            procs: HashMap::new(),
            cgroups: HashMap::new(),
            cgroup_root: cgroup2_root(),
            max: max.max(16),
        }
    }

    /// Attribution of `pid`; `comm` and `cgroup_id` are what the kernel captured, used when the
    /// process is gone.
    pub fn get(&mut self, pid: u32, comm: &str, cgroup_id: u64) -> ProcInfo {
        if let Some(p) = self.procs.get(&pid) {
            return p.clone();
        }
        let info = match exe_name(pid) {
            Some(exe_name) => ProcInfo {
                exe_name,
                container_id: container_id(pid).or_else(|| self.container_of_cgroup(cgroup_id)),
                workload: workload(pid).or_else(|| self.workload_of_cgroup(cgroup_id)),
            },
            // Exited: what the kernel saw is all there is.
            None => ProcInfo {
                exe_name: comm.to_string(),
                container_id: self.container_of_cgroup(cgroup_id),
                workload: self.workload_of_cgroup(cgroup_id),
            },
        };
        if self.procs.len() >= self.max {
            self.procs.clear();
        }
        self.procs.insert(pid, info.clone());
        info
    }

    /// Forgets an exited pid (its number may be reused).
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Container id of a cgroup v2 id, by finding the cgroup directory with that inode.
    pub fn container_of_cgroup(&mut self, cgroup_id: u64) -> Option<String> {
        if cgroup_id == 0 {
            return None;
        }
        if !self.cgroups.contains_key(&cgroup_id) {
            self.rescan_cgroups();
        }
        self.cgroups
            .get(&cgroup_id)
            .and_then(|p| container_id_from_path(p))
    }

    /// Container and pod of a cgroup v2 id (after [`Self::container_of_cgroup`]'s lookup).
    pub fn workload_of_cgroup(&mut self, cgroup_id: u64) -> Option<crate::k8s::Workload> {
        self.container_of_cgroup(cgroup_id)?;
        crate::k8s::Workload::from_cgroup_path(self.cgroups.get(&cgroup_id)?)
    }

    fn rescan_cgroups(&mut self) {
        let Some(root) = self.cgroup_root.clone() else {
            return;
        };
        self.cgroups.clear();
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if let Ok(md) = fs::metadata(&dir) {
                let rel = dir.strip_prefix(&root).unwrap_or(&dir);
                self.cgroups
                    .insert(md.ino(), format!("/{}", rel.to_string_lossy()));
            }
            if depth >= 12 || self.cgroups.len() >= self.max * 4 {
                continue;
            }
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
}

/// A NUL-padded kernel command name as a string.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f9a1c5e2b7d4f608192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    #[test]
    fn container_ids_from_common_layouts() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/besteffort/pod0c5e/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/kubepods.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id_from_path(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(
            container_id_from_path("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_id_from_path("/"), None);
    }

    #[test]
    fn cgroup_file_prefers_unified_line() {
        let text = format!("12:pids:/docker/{ID}\n0::/system.slice/sshd.service\n");
        assert_eq!(container_id_from_cgroup_file(&text).as_deref(), Some(ID));
        let text = "0::/init.scope\n1:name=systemd:/init.scope\n";
        assert_eq!(container_id_from_cgroup_file(text), None);
    }

    #[test]
    fn comm_is_nul_trimmed() {
        assert_eq!(comm_str(b"getppid-loop\0\0\0\0"), "getppid-loop");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn own_process_is_attributed() {
        let me = std::process::id();
        assert!(alive(me));
        let mut cache = ProcCache::new(64);
        let info = cache.get(me, "ignored", 0);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(info.exe_name, exe.file_name().unwrap().to_string_lossy());
        assert!(!alive(u32::MAX - 1));
        // A pid that does not exist falls back to the kernel-captured name.
        assert_eq!(cache.get(u32::MAX - 1, "gone", 0).exe_name, "gone");
    }
}
