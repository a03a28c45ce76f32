//! Seeds the kernel's listener table with sockets that were already listening when the probe
//! attached, so connections they accept are attributed to their process (the kernel only sees
//! listen() calls made after attach).
//!
//! For every process, the LISTEN sockets of its network namespace (`/proc/<pid>/net/tcp{,6}`)
//! are matched to its fds by inode; a copy of the fd (`pidfd_getfd`) gives the socket's network
//! namespace cookie (`SO_NETNS_COOKIE`), the key the kernel uses. Entries the kernel already has
//! are never overwritten.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use agent_common::{
    network::{ListenerKey, Owner},
    COMM_LEN,
};
use aya::maps::{HashMap as BpfHashMap, MapData};

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

/// LISTEN sockets in a `/proc/net/tcp`-format table: inode → port.
pub fn parse_listeners(table: &str) -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some(port) = f[1]
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if let Ok(inode) = f[9].parse::<u64>() {
            if inode != 0 {
                out.insert(inode, port);
            }
        }
    }
    out
}

fn socket_inode(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The network namespace cookie of process `pid`'s fd `fd` (through a copy of the fd).
fn netns_cookie(pid: u32, fd: i32) -> Option<u64> {
    // SAFETY: plain syscalls; every returned fd is owned and closed by `OwnedFd`.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let sock = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if sock < 0 {
            return None;
        }
        let sock = OwnedFd::from_raw_fd(sock as i32);
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        (rc == 0).then_some(cookie)
    }
}

fn comm_of(pid: u32) -> [u8; COMM_LEN] {
    let mut out = [0u8; COMM_LEN];
    if let Ok(c) = fs::read_to_string(format!("/proc/{pid}/comm")) {
        let b = c.trim_end().as_bytes();
        let n = b.len().min(COMM_LEN - 1);
        out[..n].copy_from_slice(&b[..n]);
    }
    out
}

/// cgroup v2 id (the directory's inode) of `pid`, or 0.
fn cgroup_id_of(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Some(root) = procinfo::cgroup2_root() else {
        return 0;
    };
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| fs::metadata(root.join(p.trim_start_matches('/'))).ok())
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Finds every listening TCP socket of every process and adds the missing ones to `map`.
pub fn seed(map: &mut BpfHashMap<MapData, ListenerKey, Owner>) -> Seeded {
    let mut seeded = Seeded::default();
    // LISTEN tables per network namespace (by the namespace's inode), read once each.
    let mut tables: HashMap<u64, HashMap<u64, u16>> = HashMap::new();
    let mut done: HashSet<u64> = HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return seeded;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(ns) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        let listening = tables.entry(ns.ino()).or_insert_with(|| {
            let mut all = HashMap::new();
            for t in ["tcp", "tcp6"] {
                if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{t}")) {
                    all.extend(parse_listeners(&text));
                }
            }
            all
        });
        if listening.is_empty() {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = socket_inode(&fd.path()) else {
                continue;
            };
            let Some(&port) = listening.get(&inode) else {
                continue;
            };
            // A socket shared by several processes (fork): the first owner found wins.
            if !done.insert(inode) {
                continue;
            }
            let Some(fdnum) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Some(netns) = netns_cookie(pid, fdnum) else {
                continue;
            };
            seeded.found += 1;
            let key = ListenerKey {
                netns,
                port,
                _pad: [0; 6],
            };
            let owner = Owner {
                tgid: pid,
                _pad: 0,
                cgroup_id: cgroup_id_of(pid),
                comm: comm_of(pid),
            };
            // BPF_NOEXIST: what the kernel saw at listen() is newer than our scan.
            if map.insert(key, owner, BPF_NOEXIST).is_ok() {
                seeded.inserted += 1;
            }
        }
    }
    seeded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_rows_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:24F6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:9C40 0100007F:24F6 01 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 20 4 30 10 -1\n";
        let l = parse_listeners(table);
        assert_eq!(l.len(), 1);
        assert_eq!(l[&12345], 9462);
    }
}
