//! cgroup filesystem helpers for the cgroup actions: where the v2 and v1 hierarchies are
//! mounted, a target's own cgroup in each, cgroup ids, the processes of a subtree, and the
//! control files (`cgroup.freeze`, `cgroup.kill`, `cpu.max`, v1 `freezer.state`,
//! `cpu.cfs_quota_us`).
//!
//! Hybrid hosts (this development VM) have cgroup v2 at `/sys/fs/cgroup/unified` with only the
//! core files (freeze and kill work there) and the cpu and freezer controllers on v1; pure v2
//! hosts have everything at `/sys/fs/cgroup`.

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::scope::{Scope, Target};

/// Where each hierarchy is mounted (from `/proc/self/mountinfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    pub v2: Option<PathBuf>,
    /// v1 mounts by controller (`cpu`, `freezer`, ...).
    pub v1: BTreeMap<String, PathBuf>,
}

impl Hierarchies {
    pub fn detect() -> Hierarchies {
        Self::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    pub fn parse(mountinfo: &str) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split_whitespace().nth(4).map(PathBuf::from);
            let mut r = right.split_whitespace();
            let (Some(fstype), _, Some(opts), Some(mp)) =
                (r.next(), r.next(), r.next(), mount_point)
            else {
                continue;
            };
            match fstype {
                "cgroup2" => {
                    h.v2.get_or_insert(mp);
                }
                "cgroup" => {
                    for o in opts.split(',') {
                        if matches!(o, "cpu" | "freezer" | "cpuacct" | "memory" | "pids") {
                            h.v1.entry(o.to_string()).or_insert_with(|| mp.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        h
    }

    /// The directory of v2 cgroup `path` (`/a/b`).
    pub fn v2_dir(&self, path: &str) -> Option<PathBuf> {
        Some(join(self.v2.as_ref()?, path))
    }

    /// The directory of v1 cgroup `path` in `controller`'s hierarchy.
    pub fn v1_dir(&self, controller: &str, path: &str) -> Option<PathBuf> {
        Some(join(self.v1.get(controller)?, path))
    }
}

fn join(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// The cgroup id of a cgroup directory: its inode number (what `bpf_get_current_cgroup_id`
/// and `bpf_skb_cgroup_id` return on cgroup v2).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// Every pid in `dir` and its descendants (`cgroup.procs` of each).
pub fn procs_in_subtree(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Writes `value` to `dir/file`, naming both in the error.
pub fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        format!(
            "cannot write {value:?} to {}: {e}",
            dir.join(file).display()
        )
    })
}

pub fn read(dir: &Path, file: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(file))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {}: {e}", dir.join(file).display()))
}

/// The prefix of `path` up to and including the innermost segment for which `is_own` holds.
fn own_prefix(path: &str, is_own: impl Fn(&str) -> bool) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let i = segs.iter().rposition(|s| is_own(s))?;
    Some(format!("/{}", segs[..=i].join("/")))
}

/// Whether a cgroup path segment is container `id`'s own (`cri-containerd-<id>.scope`,
/// `docker-<id>.scope`, `crio-<id>`, `libpod-<id>`, a bare `<id>`; not a conmon monitor).
fn names_container(seg: &str, id: &str) -> bool {
    seg.contains(id) && !seg.contains("conmon")
}

/// Whether a segment is pod `uid`'s cgroup (`pod<uid>` on cgroupfs, `...-pod<uid_with_underscores>.slice`
/// on systemd).
fn names_pod(seg: &str, uid: &str) -> bool {
    seg.ends_with(&format!("pod{uid}"))
        || seg.ends_with(&format!("pod{}.slice", uid.replace('-', "_")))
}

/// The cgroup a cgroup action acts on, per hierarchy: the scope's cgroup, or the container's or
/// pod's own cgroup. `None` in a hierarchy where the target has no cgroup of its own (with the
/// cgroupfs driver on a hybrid host a container's v2 path can be its runtime's service).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupTarget {
    pub v2: Option<String>,
    /// v1 paths by controller (`freezer`, `cpu`).
    pub v1: BTreeMap<String, String>,
}

impl CgroupTarget {
    /// Resolves the target of `scope` for process `t`.
    pub fn resolve(scope: &Scope, t: &Target) -> CgroupTarget {
        let own = |path: &str| -> Option<String> {
            if let Some(g) = &scope.cgroup {
                return super::scope::under(path, g).then(|| g.clone());
            }
            if let Some(c) = &t.container {
                if scope.container.is_some() {
                    return own_prefix(path, |s| names_container(s, &c.container_id));
                }
                if let (Some(_), Some(uid)) = (&scope.pod, &c.pod_uid) {
                    return own_prefix(path, |s| names_pod(s, uid));
                }
            }
            None
        };
        let mut out = CgroupTarget {
            v2: t.cgroup.as_deref().and_then(own),
            v1: BTreeMap::new(),
        };
        for ctrl in ["freezer", "cpu"] {
            if let Some(p) = t.v1.get(ctrl).and_then(|p| own(p)) {
                out.v1.insert(ctrl.to_string(), p);
            }
        }
        out
    }
}

/// The state of one process's cgroup membership, for the safety checks: the agent's own and
/// pid 1's cgroup paths per hierarchy.
#[derive(Clone, Debug, Default)]
pub struct Protected {
    /// (hierarchy key: `""` for v2, else the controller) → paths that must not be acted on or
    /// above.
    pub paths: BTreeMap<String, Vec<String>>,
}

impl Protected {
    pub fn read(proc_root: &Path) -> Protected {
        let mut p = Protected::default();
        for pid in ["self", "1"] {
            let text =
                std::fs::read_to_string(proc_root.join(pid).join("cgroup")).unwrap_or_default();
            let (v2, v1) = super::scope::parse_cgroup_file(&text);
            if let Some(v2) = v2 {
                p.paths.entry(String::new()).or_default().push(v2);
            }
            for (c, path) in v1 {
                p.paths.entry(c).or_default().push(path);
            }
        }
        p
    }

    /// Whether `target` (a path in hierarchy `key`) holds a protected process: it is the root,
    /// or a protected path is at or below it.
    pub fn holds(&self, key: &str, target: &str) -> bool {
        target.trim_end_matches('/').is_empty()
            || self
                .paths
                .get(key)
                .is_some_and(|ps| ps.iter().any(|p| super::scope::under(p, target)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforcement::config::ScopeConfig;

    const MOUNTINFO: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mounts() {
        let h = Hierarchies::parse(MOUNTINFO);
        assert_eq!(h.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            h.v1_dir("cpu", "/enf/a").unwrap(),
            Path::new("/sys/fs/cgroup/cpu/enf/a")
        );
        assert_eq!(h.v2_dir("/").unwrap(), Path::new("/sys/fs/cgroup/unified"));
        assert!(h.v1_dir("memory", "/x").is_none());
    }

    fn target(cgroup_file: &str) -> Target {
        let (cgroup, v1) = super::super::scope::parse_cgroup_file(cgroup_file);
        Target {
            pid: 10,
            start_ticks: 1,
            exe: "w".into(),
            comm: "w".into(),
            ppid: 1,
            kernel_thread: false,
            cgroup,
            v1,
            container: crate::k8s::container_from_cgroup_file(cgroup_file),
        }
    }

    fn scope(y: &str) -> Scope {
        Scope::compile(&serde_yaml_ng::from_str::<ScopeConfig>(y).unwrap()).unwrap()
    }

    #[test]
    fn own_cgroups_of_containers_and_pods() {
        let id = "0123456789ab".repeat(5) + "cdef";
        let uid = "0c5e2d1a-1b2c-4d3e-8f90-123456789abc";
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope\n",
            uid.replace('-', "_")
        );
        let t = target(&systemd);
        let c = CgroupTarget::resolve(&scope(&format!("{{container: {id}}}")), &t);
        assert_eq!(c.v2.as_deref(), t.cgroup.as_deref());
        let p = CgroupTarget::resolve(&scope(&format!("{{pod: {uid}}}")), &t);
        assert!(p.v2.as_deref().unwrap().ends_with(".slice"), "{p:?}");
        // cgroupfs driver on a hybrid host: v2 is the runtime's service, v1 names the container.
        let hybrid = format!(
            "7:freezer:/kubepods/burstable/pod{uid}/{id}\n1:cpu:/kubepods/burstable/pod{uid}/{id}\n0::/system.slice/containerd.service\n"
        );
        let t = target(&hybrid);
        let c = CgroupTarget::resolve(&scope(&format!("{{container: {id}}}")), &t);
        assert_eq!(
            c.v2, None,
            "the runtime's service cgroup is not the container's"
        );
        assert_eq!(
            c.v1["freezer"],
            format!("/kubepods/burstable/pod{uid}/{id}")
        );
        // A cgroup scope acts on the cgroup named.
        let t = target("0::/enf/a/b\n6:freezer:/enf/a\n");
        let c = CgroupTarget::resolve(&scope("{cgroup: /enf/a}"), &t);
        assert_eq!(c.v2.as_deref(), Some("/enf/a"));
        assert_eq!(c.v1["freezer"], "/enf/a");
    }

    #[test]
    fn protected_paths() {
        let mut p = Protected::default();
        p.paths.insert(
            String::new(),
            vec!["/system.slice/agent.service".into(), "/init.scope".into()],
        );
        assert!(p.holds("", "/"));
        assert!(p.holds("", "/system.slice"));
        assert!(p.holds("", "/init.scope"));
        assert!(!p.holds("", "/enf"));
        assert!(!p.holds("cpu", "/enf"));
    }

    #[test]
    fn ids_and_subtrees_of_this_host() {
        let h = Hierarchies::detect();
        if let Some(root) = &h.v2 {
            assert!(cgroup_id(root).unwrap() > 0);
            assert!(procs_in_subtree(root).contains(&1) || !Path::new("/proc/1").exists());
        }
    }
}
