//! What the engine never acts on: the agent itself, the host's pid 1, kernel threads, the
//! allowlist (executables, cgroups, containers; by default kubelet, the container runtimes,
//! sshd and systemd), and for cgroup actions any cgroup that holds the agent or pid 1, the
//! root, or an ancestor of other workloads (more than one container or pod, or a container
//! outside the scope).

use std::{collections::BTreeSet, path::Path};

use super::{
    cgroup::Protected,
    config::Allowlist,
    scope::{container_matches, under, Pattern, Scope, Target},
};

/// The built-in allowlist (`enforcement.allowlist.defaults: true`).
pub const DEFAULT_EXECUTABLES: &[&str] = &[
    "kubelet",
    "containerd",
    "containerd-shim*",
    "dockerd",
    "docker-proxy",
    "crio",
    "conmon",
    "runc",
    "crun",
    "podman",
    "sshd*",
    "systemd",
    "systemd-*",
    "init",
];

/// Why the engine refuses a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Always protected (outcome `protected`).
    Protected(String),
    /// On the allowlist (outcome `allowlist`).
    Allowlisted(String),
}

pub struct Safety {
    self_pid: u32,
    executables: Vec<Pattern>,
    cgroups: Vec<String>,
    containers: Vec<String>,
    protected: Protected,
}

impl Safety {
    pub fn new(a: &Allowlist, proc_root: &Path) -> Safety {
        let mut executables: Vec<Pattern> = a.executables.iter().map(|e| Pattern::new(e)).collect();
        if a.defaults {
            executables.extend(DEFAULT_EXECUTABLES.iter().map(|e| Pattern::new(e)));
        }
        Safety {
            self_pid: std::process::id(),
            executables,
            cgroups: a
                .cgroups
                .iter()
                .map(|c| c.trim_end_matches('/').to_string())
                .collect(),
            containers: a
                .containers
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            protected: Protected::read(proc_root),
        }
    }

    /// A process the rule would act on.
    pub fn check_process(&self, t: &Target) -> Result<(), Refusal> {
        if t.pid == self.self_pid {
            return Err(Refusal::Protected("the agent itself".into()));
        }
        if t.pid == 1 {
            return Err(Refusal::Protected("the host's pid 1".into()));
        }
        if t.kernel_thread || t.pid == 2 || t.ppid == 2 {
            return Err(Refusal::Protected(format!("kernel thread {}", t.comm)));
        }
        if let Some(p) = self
            .executables
            .iter()
            .find(|p| p.matches(&t.exe) || p.matches(&t.comm))
        {
            return Err(Refusal::Allowlisted(format!(
                "executable {} (allowlist entry {})",
                t.exe,
                p.as_str()
            )));
        }
        if let Some(c) = t.cgroup.as_deref() {
            if let Some(g) = self.cgroups.iter().find(|g| under(c, g)) {
                return Err(Refusal::Allowlisted(format!(
                    "cgroup {c} (allowlist entry {g})"
                )));
            }
        }
        if let Some(id) = t.container.as_ref().map(|c| c.container_id.as_str()) {
            if let Some(w) = self.containers.iter().find(|w| container_matches(id, w)) {
                return Err(Refusal::Allowlisted(format!(
                    "container {id} (allowlist entry {w})"
                )));
            }
        }
        Ok(())
    }

    /// A cgroup a cgroup action would act on: `key` is the hierarchy (`""` for v2, else the v1
    /// controller), `path` the cgroup, `dir` its directory; every process below it is checked.
    pub fn check_cgroup(
        &self,
        key: &str,
        path: &str,
        dir: &Path,
        scope: &Scope,
        proc_root: &Path,
    ) -> Result<(), Refusal> {
        if path.trim_end_matches('/').is_empty() {
            return Err(Refusal::Protected("the root cgroup".into()));
        }
        if self.protected.holds(key, path) {
            return Err(Refusal::Protected(format!(
                "cgroup {path}, which holds the agent or the host's pid 1"
            )));
        }
        if key.is_empty() {
            if let Some(g) = self
                .cgroups
                .iter()
                .find(|g| under(path, g) || under(g, path))
            {
                return Err(Refusal::Allowlisted(format!(
                    "cgroup {path} (allowlist entry {g})"
                )));
            }
        }
        let mut workloads = BTreeSet::new();
        for pid in super::cgroup::procs_in_subtree(dir) {
            let Some(t) = Target::read(proc_root, pid) else {
                continue; // exited meanwhile
            };
            match self.check_process(&t) {
                Err(Refusal::Protected(why)) => {
                    return Err(Refusal::Protected(format!("cgroup {path} holds {why}")))
                }
                Err(Refusal::Allowlisted(why)) => {
                    return Err(Refusal::Allowlisted(format!("cgroup {path} holds {why}")))
                }
                Ok(()) => {}
            }
            if let Some(c) = &t.container {
                if (scope.container.is_some() || scope.pod.is_some()) && !scope.matches(&t) {
                    return Err(Refusal::Protected(format!(
                        "cgroup {path} holds container {} outside the rule's scope (an ancestor of other workloads)",
                        short(&c.container_id)
                    )));
                }
                workloads.insert(c.pod_uid.clone().unwrap_or_else(|| c.container_id.clone()));
            }
        }
        if workloads.len() > 1 {
            return Err(Refusal::Protected(format!(
                "cgroup {path} holds {} containers or pods (an ancestor of other workloads)",
                workloads.len()
            )));
        }
        Ok(())
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforcement::scope::parse_cgroup_file;

    fn t(pid: u32, exe: &str, cgroup: &str) -> Target {
        let (v2, v1) = parse_cgroup_file(&format!("0::{cgroup}\n"));
        Target {
            pid,
            start_ticks: 1,
            exe: exe.into(),
            comm: exe.into(),
            ppid: 100,
            kernel_thread: false,
            cgroup: v2,
            v1,
            container: None,
        }
    }

    #[test]
    fn the_agent_pid_1_kernel_threads_and_the_allowlist() {
        let a = Allowlist {
            executables: vec!["guarded".into()],
            cgroups: vec!["/keep".into()],
            ..Default::default()
        };
        let s = Safety::new(&a, Path::new("/proc"));
        assert!(matches!(
            s.check_process(&t(std::process::id(), "agent", "/x")),
            Err(Refusal::Protected(_))
        ));
        assert!(matches!(
            s.check_process(&t(1, "init", "/")),
            Err(Refusal::Protected(_))
        ));
        let mut k = t(50, "kworker/0:1", "/");
        k.kernel_thread = true;
        assert!(matches!(s.check_process(&k), Err(Refusal::Protected(_))));
        for exe in [
            "kubelet",
            "containerd-shim-runc-v2",
            "sshd",
            "sshd-session",
            "systemd-journald",
            "guarded",
        ] {
            assert!(
                matches!(
                    s.check_process(&t(60, exe, "/x")),
                    Err(Refusal::Allowlisted(_))
                ),
                "{exe}"
            );
        }
        assert!(matches!(
            s.check_process(&t(60, "w", "/keep/a")),
            Err(Refusal::Allowlisted(_))
        ));
        assert_eq!(s.check_process(&t(60, "storm", "/x")), Ok(()));
        // Without the defaults, only the listed entries.
        let bare = Safety::new(
            &Allowlist {
                defaults: false,
                ..a
            },
            Path::new("/proc"),
        );
        assert_eq!(bare.check_process(&t(60, "sshd", "/x")), Ok(()));
    }

    #[test]
    fn cgroups_holding_the_agent_or_the_root_are_protected() {
        let s = Safety::new(&Allowlist::default(), Path::new("/proc"));
        let sc = Scope::default();
        let e = s.check_cgroup("", "/", Path::new("/nonexistent"), &sc, Path::new("/proc"));
        assert!(matches!(e, Err(Refusal::Protected(_))));
        // This process's own v2 cgroup holds "the agent" (us).
        let (mine, _) = parse_cgroup_file(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
        let mine = mine.unwrap();
        let e = s.check_cgroup(
            "",
            &mine,
            Path::new("/nonexistent"),
            &sc,
            Path::new("/proc"),
        );
        assert!(matches!(e, Err(Refusal::Protected(_))), "{e:?}");
    }
}
