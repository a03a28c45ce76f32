//! Seeds the kernel's listener owners with sockets that were already listening when the probe
//! attached, so connections they accept are attributed to their process (the kernel only sees
//! listen() calls made after attach).
//!
//! For every process (`procfs`), the LISTEN sockets of its network namespace
//! (`/proc/<pid>/net/tcp{,6}`, read once per namespace) are matched to its fds by socket inode;
//! a copy of the fd (`pidfd_getfd(2)`) is the key of the socket storage map
//! `NET_LISTENER_OWNERS` (`BPF_MAP_TYPE_SK_STORAGE` maps are keyed by a socket fd from
//! userspace), so the owner lands on that very socket, as the kernel's listen() hook would put
//! it. Entries the kernel already has are never overwritten (`BPF_NOEXIST`).
//!
//! `nix` has no `pidfd_open`/`pidfd_getfd` (0.32), so those two are raw syscalls here.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    os::fd::{FromRawFd, OwnedFd},
};

use agent_common::{network::Owner, COMM_LEN};
use aya::maps::{MapData, SkStorage};
use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};

use crate::procinfo;

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

/// What one seeding pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    /// Listening sockets found with their owner.
    pub found: u64,
    /// Entries added to the kernel table.
    pub inserted: u64,
}

/// Inodes of the LISTEN sockets in a socket table.
pub fn listening_inodes(entries: &[procfs::net::TcpNetEntry]) -> HashSet<u64> {
    entries
        .iter()
        .filter(|e| e.state == TcpState::Listen && e.inode != 0)
        .map(|e| e.inode)
        .collect()
}

/// The network namespace (its inode) of a process.
fn netns_of(p: &Process) -> Option<u64> {
    p.namespaces()
        .ok()?
        .0
        .get(OsStr::new("net"))
        .map(|ns| ns.identifier)
}

/// A copy of process `pid`'s fd `fd`, through a pidfd (`pidfd_open(2)`, `pidfd_getfd(2)`; Linux
/// 5.6, `PTRACE_MODE_ATTACH` over the target: root has it).
fn copy_fd(pid: i32, fd: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscalls; every returned fd is owned and closed by `OwnedFd`.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let sock = libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        );
        (sock >= 0).then(|| OwnedFd::from_raw_fd(sock as i32))
    }
}

/// The kernel's `TASK_COMM_LEN` form of a command name (NUL-padded, cut to 15 bytes).
fn comm_bytes(comm: &str) -> [u8; COMM_LEN] {
    let mut out = [0u8; COMM_LEN];
    let b = comm.as_bytes();
    let n = b.len().min(COMM_LEN - 1);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// cgroup v2 id (the directory's inode) of a process, or 0.
fn cgroup_id_of(p: &Process, root: Option<&std::path::Path>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Some(root) = root else {
        return 0;
    };
    p.cgroups()
        .ok()
        .and_then(|groups| {
            groups
                .0
                .into_iter()
                .find(|g| g.hierarchy == 0 && g.controllers.is_empty())
        })
        .and_then(|g| std::fs::metadata(root.join(g.pathname.trim_start_matches('/'))).ok())
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Finds every listening TCP socket of every process and stores the missing owners on them.
pub fn seed(map: &mut SkStorage<MapData, Owner>) -> Seeded {
    let mut seeded = Seeded::default();
    let cgroup_root = procinfo::cgroup2_root();
    // LISTEN sockets per network namespace (by the namespace's inode), read once each.
    let mut tables: HashMap<u64, HashSet<u64>> = HashMap::new();
    let mut done: HashSet<u64> = HashSet::new();
    let Ok(procs) = procfs::process::all_processes() else {
        return seeded;
    };
    for p in procs.flatten() {
        let Some(ns) = netns_of(&p) else {
            continue;
        };
        let listening = tables.entry(ns).or_insert_with(|| {
            let mut all = HashSet::new();
            for table in [p.tcp(), p.tcp6()].into_iter().flatten() {
                all.extend(listening_inodes(&table));
            }
            all
        });
        if listening.is_empty() {
            continue;
        }
        let Ok(fds) = p.fd() else {
            continue;
        };
        let mut owner = None;
        for fd in fds.flatten() {
            let FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            // A socket shared by several processes (fork): the first owner found wins.
            if !listening.contains(&inode) || !done.insert(inode) {
                continue;
            }
            let Some(sock) = copy_fd(p.pid, fd.fd) else {
                continue;
            };
            seeded.found += 1;
            let owner = *owner.get_or_insert_with(|| Owner {
                tgid: p.pid as u32,
                _pad: 0,
                cgroup_id: cgroup_id_of(&p, cgroup_root.as_deref()),
                comm: p.stat().map(|s| comm_bytes(&s.comm)).unwrap_or_default(),
            });
            // BPF_NOEXIST: what the kernel saw at listen() is newer than our scan.
            if map.insert(&sock, owner, BPF_NOEXIST).is_ok() {
                seeded.inserted += 1;
            }
        }
    }
    seeded
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn finds_our_own_listening_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = Process::myself().unwrap();
        let table = me.tcp().unwrap();
        let inodes = listening_inodes(&table);
        let ours = table
            .iter()
            .find(|e| e.local_address.port() == port)
            .expect("our listener in /proc/self/net/tcp");
        assert!(inodes.contains(&ours.inode));
        // An established or closed row never counts.
        assert!(table
            .iter()
            .filter(|e| e.state != TcpState::Listen)
            .all(|e| !inodes.contains(&e.inode)));
        // The fd side: one of our fds is that socket.
        assert!(me
            .fd()
            .unwrap()
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(i) if i == ours.inode)));
        assert!(netns_of(&me).is_some());
    }

    #[test]
    fn comm_is_cut_like_the_kernel() {
        assert_eq!(&comm_bytes("nginx")[..6], b"nginx\0");
        let long = comm_bytes("a-very-long-command-name");
        assert_eq!(&long[..15], b"a-very-long-com");
        assert_eq!(long[15], 0);
    }
}
