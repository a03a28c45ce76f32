//! Scopes (what a rule applies to) and targets (a process as the engine sees it when a rule
//! fires: its identity, cgroups and container, read from `/proc`).
//!
//! Matching is in two steps: [`Scope::may_match`] on what a signal sample carries (pid,
//! executable name, container id: no I/O, run for every sample), then [`Scope::matches`] on
//! the [`Target`] read from `/proc` when the condition fires (cgroup path, pod).

use std::{collections::BTreeMap, sync::Arc};

use super::config::ScopeConfig;
use crate::{k8s::ContainerIdentity, signals::ProcessRef};

/// A name pattern: exact, or a prefix with a trailing `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(s: &str) -> Pattern {
        Pattern(s.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.0,
        }
    }
}

/// Whether `path` is `root` or below it (cgroup paths, `/`-separated).
pub fn under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    root.is_empty() || path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

/// Whether a container id matches `want` (a full id, or a prefix of at least 12 digits).
pub fn container_matches(id: &str, want: &str) -> bool {
    id == want || (want.len() >= 12 && id.starts_with(want))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub pid: Option<u32>,
    pub executable: Option<Pattern>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
}

impl Scope {
    /// Checks a scope; errors are (field, problem, fix).
    pub fn compile(c: &ScopeConfig) -> Result<Scope, (&'static str, String, String)> {
        if let Some(p) = c.pid {
            if p == 0 {
                return Err((
                    "pid",
                    "0 is not a process".into(),
                    "use a pid of a process".into(),
                ));
            }
        }
        if let Some(e) = &c.executable {
            if e.is_empty() || e == "*" {
                return Err((
                    "executable",
                    format!("{e:?} matches every process"),
                    "name an executable (process.executable.name), or a prefix ending in *".into(),
                ));
            }
        }
        if let Some(g) = &c.cgroup {
            if !g.starts_with('/') || g.trim_end_matches('/').is_empty() {
                return Err((
                    "cgroup",
                    format!("{g:?} is not a cgroup path below the root"),
                    "use a cgroup v2 path as /proc/<pid>/cgroup shows it, e.g. /system.slice/app.service".into(),
                ));
            }
        }
        if let Some(id) = &c.container {
            if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err((
                    "container",
                    format!("{id:?} is not a container id or a prefix of at least 12 hex digits"),
                    "use the container.id value (64 hex digits) or its first 12 or more".into(),
                ));
            }
        }
        if let Some(p) = &c.pod {
            if p.len() != 36 {
                return Err((
                    "pod",
                    format!("{p:?} is not a pod UID"),
                    "use the k8s.pod.uid value, e.g. 0c5e2d1a-1b2c-4d3e-8f90-123456789abc".into(),
                ));
            }
        }
        Ok(Scope {
            pid: c.pid,
            executable: c.executable.as_deref().map(Pattern::new),
            cgroup: c
                .cgroup
                .as_ref()
                .map(|g| g.trim_end_matches('/').to_string()),
            container: c.container.as_ref().map(|s| s.to_ascii_lowercase()),
            pod: c.pod.as_ref().map(|s| s.to_ascii_lowercase()),
        })
    }

    /// Whether a cgroup action has a cgroup to act on.
    pub fn names_cgroup(&self) -> bool {
        self.cgroup.is_some() || self.container.is_some() || self.pod.is_some()
    }

    /// What a signal sample tells: false only when it surely does not match.
    pub fn may_match(&self, p: &ProcessRef) -> bool {
        if self.pid.is_some_and(|pid| pid != p.pid) {
            return false;
        }
        if let Some(e) = &self.executable {
            if !e.matches(&p.exe_name) {
                return false;
            }
        }
        if let (Some(want), Some(id)) = (&self.container, &p.container_id) {
            if !container_matches(id, want) {
                return false;
            }
        }
        true
    }

    /// The full match, on what `/proc` says now.
    pub fn matches(&self, t: &Target) -> bool {
        if self.pid.is_some_and(|pid| pid != t.pid) {
            return false;
        }
        if let Some(e) = &self.executable {
            if !e.matches(&t.exe) {
                return false;
            }
        }
        if let Some(g) = &self.cgroup {
            if !t.cgroup.as_deref().is_some_and(|c| under(c, g)) {
                return false;
            }
        }
        if let Some(want) = &self.container {
            if !t
                .container
                .as_ref()
                .is_some_and(|c| container_matches(&c.container_id, want))
            {
                return false;
            }
        }
        if let Some(want) = &self.pod {
            if t.container.as_ref().and_then(|c| c.pod_uid.as_deref()) != Some(want.as_str()) {
                return false;
            }
        }
        true
    }

    /// Text for audit records: `executable=storm cgroup=/x`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.pid {
            parts.push(format!("pid={p}"));
        }
        if let Some(e) = &self.executable {
            parts.push(format!("executable={}", e.as_str()));
        }
        if let Some(g) = &self.cgroup {
            parts.push(format!("cgroup={g}"));
        }
        if let Some(c) = &self.container {
            parts.push(format!("container={c}"));
        }
        if let Some(p) = &self.pod {
            parts.push(format!("pod={p}"));
        }
        if parts.is_empty() {
            "any".into()
        } else {
            parts.join(" ")
        }
    }
}

/// A process when a rule fires on it, from `/proc/<pid>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22): with the pid, the
    /// process's identity (a reused pid has another).
    pub start_ticks: u64,
    /// `process.executable.name`: base name of `/proc/<pid>/exe` (the command name if
    /// unreadable).
    pub exe: Arc<str>,
    pub comm: String,
    pub ppid: u32,
    /// `PF_KTHREAD` set.
    pub kernel_thread: bool,
    /// The cgroup v2 path (`0::` line).
    pub cgroup: Option<String>,
    /// cgroup v1 paths by controller (`freezer`, `cpu`, ...).
    pub v1: BTreeMap<String, String>,
    pub container: Option<ContainerIdentity>,
}

const PF_KTHREAD: u64 = 0x0020_0000;

impl Target {
    /// Reads `/proc/<pid>` under `proc_root` (`/proc`); `None` when the process is gone.
    pub fn read(proc_root: &std::path::Path, pid: u32) -> Option<Target> {
        let dir = proc_root.join(pid.to_string());
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): index i is field i + 3.
        let ppid = f.get(1)?.parse().ok()?;
        let flags: u64 = f.get(6)?.parse().ok()?;
        let start_ticks = f.get(19)?.parse().ok()?;
        let exe = std::fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|p| {
                p.file_name().map(|n| {
                    n.to_string_lossy()
                        .trim_end_matches(" (deleted)")
                        .to_string()
                })
            })
            .unwrap_or_else(|| comm.clone());
        let cg = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        let (cgroup, v1) = parse_cgroup_file(&cg);
        Some(Target {
            pid,
            start_ticks,
            exe: Arc::from(exe),
            comm,
            ppid,
            kernel_thread: flags & PF_KTHREAD != 0,
            cgroup,
            v1,
            container: crate::k8s::container_from_cgroup_file(&cg),
        })
    }
}

/// `/proc/<pid>/cgroup` text: the v2 path (`0::/x`) and v1 paths by controller
/// (`4:cpu,cpuacct:/x` gives both `cpu` and `cpuacct`).
pub fn parse_cgroup_file(text: &str) -> (Option<String>, BTreeMap<String, String>) {
    let mut v2 = None;
    let mut v1 = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrl.is_empty() {
            v2 = Some(path.to_string());
        } else {
            for c in ctrl.split(',') {
                let c = c.strip_prefix("name=").unwrap_or(c);
                v1.insert(c.to_string(), path.to_string());
            }
        }
    }
    (v2, v1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(y: &str) -> ScopeConfig {
        serde_yaml_ng::from_str(y).unwrap()
    }

    #[test]
    fn patterns_paths_and_containers() {
        assert!(Pattern::new("storm").matches("storm"));
        assert!(!Pattern::new("storm").matches("stormy"));
        assert!(Pattern::new("storm*").matches("stormy"));
        assert!(under("/a/b", "/a"));
        assert!(under("/a", "/a/"));
        assert!(!under("/ab", "/a"));
        let id = "ab".repeat(32);
        assert!(container_matches(&id, &id[..12]));
        assert!(!container_matches(&id, &id[..11]));
    }

    #[test]
    fn scopes_check_their_fields() {
        assert_eq!(
            Scope::compile(&cfg("{executable: '*'}")).unwrap_err().0,
            "executable"
        );
        assert_eq!(Scope::compile(&cfg("{cgroup: /}")).unwrap_err().0, "cgroup");
        assert_eq!(
            Scope::compile(&cfg("{container: abc}")).unwrap_err().0,
            "container"
        );
        assert_eq!(Scope::compile(&cfg("{pid: 0}")).unwrap_err().0, "pid");
        let s = Scope::compile(&cfg("{executable: storm, cgroup: /enf/x/}")).unwrap();
        assert_eq!(s.describe(), "executable=storm cgroup=/enf/x");
        assert!(s.names_cgroup());
    }

    #[test]
    fn matching_on_samples_and_targets() {
        let s = Scope::compile(&cfg("{executable: storm, cgroup: /enf}")).unwrap();
        let p = ProcessRef {
            pid: 7,
            gen: 1,
            exe_name: "storm".into(),
            container_id: None,
            cgroup_id: 0,
        };
        assert!(s.may_match(&p));
        assert!(!s.may_match(&ProcessRef {
            exe_name: "calm".into(),
            ..p.clone()
        }));
        let cg = "12:freezer:/enf/a\n4:cpu,cpuacct:/enf/a\n0::/enf/a\n";
        let (v2, v1) = parse_cgroup_file(cg);
        let t = Target {
            pid: 7,
            start_ticks: 1,
            exe: "storm".into(),
            comm: "storm".into(),
            ppid: 1,
            kernel_thread: false,
            cgroup: v2,
            v1,
            container: None,
        };
        assert_eq!(t.v1["cpu"], "/enf/a");
        assert_eq!(t.v1["freezer"], "/enf/a");
        assert!(s.matches(&t));
        assert!(!s.matches(&Target {
            cgroup: Some("/other".into()),
            ..t.clone()
        }));
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        let t = Target::read(std::path::Path::new("/proc"), me).unwrap();
        assert_eq!(t.pid, me);
        assert!(!t.kernel_thread);
        assert!(t.start_ticks > 0);
        // kthreadd is a kernel thread.
        let k = Target::read(std::path::Path::new("/proc"), 2).unwrap();
        assert!(k.kernel_thread, "{k:?}");
    }
}
