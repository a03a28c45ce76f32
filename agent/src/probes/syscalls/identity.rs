//! Names each process incarnation (pid, generation) as it was when it ran: executable name
//! (`process.executable.name`, the base name of `/proc/<pid>/exe`, as the semantic conventions
//! define it) and container id.
//!
//! Sources, best first: `/proc` while the incarnation is still the current one (checked
//! against the kernel's generation before and after reading, so an exec in between is not
//! misnamed); the exec event the kernel sent when the incarnation began (read at once, or the
//! exec'd path resolved on this host when the process is already gone); the command name the
//! kernel stamped on its first entry.
//!
//! Invariant: bounded — at most `max` exec names wait for their incarnation's first drain;
//! the oldest go first (counted).

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Arc,
};

use agent_common::syscalls::ProcEvent;

use super::{deltas::ProcKey, series::Identity};
use crate::procinfo::{self, comm_str, ProcCache};

/// Where an incarnation's name came from (counted for `/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    /// `/proc/<pid>/exe` of the running incarnation.
    Proc,
    /// The exec event's path (the process was gone when its event was read).
    ExecPath,
    /// The kernel's command name (gone before any other source could be read).
    Comm,
}

/// Counts of names by source.
#[derive(Clone, Debug, Default)]
pub struct NameStats {
    pub from_proc: u64,
    pub from_exec_path: u64,
    pub from_comm: u64,
    pub exec_names_evicted: u64,
}

pub struct Identities {
    /// Identities taken from exec events, waiting for the incarnation's first drain.
    from_exec: HashMap<ProcKey, Identity>,
    order: VecDeque<ProcKey>,
    max: usize,
    pub cache: ProcCache,
    pub stats: NameStats,
}

impl Identities {
    pub fn new(max: usize) -> Self {
        Identities {
            from_exec: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(16),
            cache: ProcCache::new(max),
            stats: NameStats::default(),
        }
    }

    /// An exec event: names the new incarnation now, while it most likely still runs.
    /// `current` tells the kernel's current generation of a pid.
    pub fn on_exec(&mut self, ev: &ProcEvent, current: impl Fn(u32) -> Option<u64>) {
        let key = ProcKey {
            tgid: ev.tgid,
            gen: ev.gen,
        };
        let id = match self.read_proc(key, &current) {
            Some(id) => id,
            None => {
                self.stats.from_exec_path += 1;
                Identity {
                    exe_name: exec_path_name(&ev.filename, &ev.comm).into(),
                    ..Default::default()
                }
            }
        };
        if self.from_exec.insert(key, id).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                if self.from_exec.remove(&old).is_some() {
                    self.stats.exec_names_evicted += 1;
                }
            }
        }
    }

    /// The identity of an incarnation at its first drain. `comm` and `cgroup_id` are what the
    /// kernel stamped on its first entry.
    pub fn resolve(
        &mut self,
        key: ProcKey,
        comm: &str,
        cgroup_id: u64,
        current: impl Fn(u32) -> Option<u64>,
    ) -> Identity {
        let from_exec = self.from_exec.remove(&key);
        if from_exec.is_some() {
            self.order.retain(|k| *k != key);
        }
        let mut id = match (from_exec, self.read_proc(key, &current)) {
            // /proc of the running incarnation is the best source, then the exec event.
            (_, Some(id)) => id,
            (Some(id), None) => id,
            (None, None) => {
                self.stats.from_comm += 1;
                Identity {
                    exe_name: comm.into(),
                    ..Default::default()
                }
            }
        };
        if id.container_id.is_none() {
            id.container_id = self.cache.container_of_cgroup(cgroup_id).map(Arc::from);
            if id.container_id.is_some() {
                id.container_labels =
                    crate::k8s::pod_labels(self.cache.workload_of_cgroup(cgroup_id).as_ref());
            }
        }
        id
    }

    /// `/proc` of `key`'s pid, if it is still that incarnation before and after the read.
    fn read_proc(
        &mut self,
        key: ProcKey,
        current: &impl Fn(u32) -> Option<u64>,
    ) -> Option<Identity> {
        if key.gen == 0 || current(key.tgid) != Some(key.gen) {
            return None;
        }
        let exe = procinfo::exe_name(key.tgid)?;
        let container = procinfo::container_id(key.tgid);
        let workload = procinfo::workload(key.tgid);
        if current(key.tgid) != Some(key.gen) {
            return None;
        }
        self.stats.from_proc += 1;
        Some(Identity {
            exe_name: exe.into(),
            container_labels: crate::k8s::pod_labels(workload.as_ref()),
            container_id: container.map(Arc::from),
        })
    }
}

/// The executable name from an exec'd path when the process is gone: the base name of the path
/// with symbolic links resolved on this host (`/usr/bin/python3` -> `python3.11`) when it is
/// absolute and exists here; else its base name as given; else the command name.
pub fn exec_path_name(filename: &[u8], comm: &[u8]) -> String {
    let path = comm_str(filename);
    if path.is_empty() {
        return comm_str(comm);
    }
    let p = Path::new(&path);
    if p.is_absolute() {
        if let Ok(real) = std::fs::canonicalize(p) {
            if let Some(name) = real.file_name() {
                return name.to_string_lossy().into_owned();
            }
        }
    }
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| comm_str(comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tgid: u32, gen: u64, filename: &str, comm: &str) -> ProcEvent {
        let mut ev = ProcEvent {
            kind: agent_common::syscalls::PROC_EVENT_EXEC,
            tgid,
            gen,
            old_gen: 0,
            time_ns: gen,
            comm: [0; 16],
            filename: [0; agent_common::syscalls::FILENAME_LEN],
        };
        ev.filename[..filename.len()].copy_from_slice(filename.as_bytes());
        ev.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        ev
    }

    #[test]
    fn exec_paths_resolve_links_and_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("python3.11");
        std::fs::write(&real, b"").unwrap();
        let link = dir.path().join("python3");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let ev = event(1, 1, link.to_str().unwrap(), "python3");
        assert_eq!(exec_path_name(&ev.filename, &ev.comm), "python3.11");
        let ev = event(1, 1, "./prog", "prog");
        assert_eq!(exec_path_name(&ev.filename, &ev.comm), "prog");
        let ev = event(1, 1, "", "sh");
        assert_eq!(exec_path_name(&ev.filename, &ev.comm), "sh");
    }

    #[test]
    fn the_running_incarnation_is_named_from_proc_and_a_past_one_is_not() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let exe = exe.file_name().unwrap().to_string_lossy().into_owned();
        let mut ids = Identities::new(64);
        // Current generation 5: /proc names it.
        let id = ids.resolve(ProcKey { tgid: me, gen: 5 }, "comm", 0, |_| Some(5));
        assert_eq!(&*id.exe_name, exe);
        // Generation 4 ended (the pid is now generation 5): its exec event names it.
        ids.on_exec(&event(me, 4, "/nonexistent/wrapper", "wrapper"), |_| {
            Some(5)
        });
        let id = ids.resolve(ProcKey { tgid: me, gen: 4 }, "wrapper", 0, |_| Some(5));
        assert_eq!(&*id.exe_name, "wrapper");
        // Nothing but the kernel's command name.
        let id = ids.resolve(ProcKey { tgid: me, gen: 3 }, "old-comm", 0, |_| Some(5));
        assert_eq!(&*id.exe_name, "old-comm");
        assert_eq!(
            (
                ids.stats.from_proc,
                ids.stats.from_exec_path,
                ids.stats.from_comm
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn exec_names_are_bounded() {
        let mut ids = Identities::new(16);
        for gen in 1..=40 {
            ids.on_exec(&event(u32::MAX - 1, gen, "/x/y", "y"), |_| None);
        }
        assert_eq!(ids.from_exec.len(), 16);
        assert_eq!(ids.stats.exec_names_evicted, 24);
    }
}
