//! Syscall and errno names (x86_64).

#[path = "errno_table.rs"]
mod errno_table;
#[path = "table.rs"]
mod table;

/// `getppid` for 110; `syscall_<nr>` for numbers without a name.
pub fn syscall_name(nr: u32) -> String {
    match table::X86_64.get(nr as usize) {
        Some(name) if !name.is_empty() => (*name).to_string(),
        _ => format!("syscall_{nr}"),
    }
}

/// The name of syscall `nr` when it has one (`getppid` for 110), without allocating.
pub fn syscall_static_name(nr: u32) -> Option<&'static str> {
    table::X86_64
        .get(nr as usize)
        .copied()
        .filter(|n| !n.is_empty())
}

/// The number of a syscall as [`syscall_name`] writes it (`getppid` → 110, `syscall_340` →
/// 340); `None` for other names.
pub fn syscall_number(name: &str) -> Option<u32> {
    if let Some(nr) = table::X86_64.iter().position(|n| *n == name) {
        return Some(nr as u32);
    }
    let nr: u32 = name.strip_prefix("syscall_")?.parse().ok()?;
    (syscall_name(nr) == name).then_some(nr)
}

/// `ENOENT` for 2; `E<n>` for unknown numbers.
pub fn errno_name(errno: u32) -> String {
    match errno_table::ERRNO.binary_search_by_key(&errno, |(n, _)| *n) {
        Ok(i) => errno_table::ERRNO[i].1.to_string(),
        Err(_) => format!("E{errno}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_syscalls() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(1), "write");
        assert_eq!(syscall_name(39), "getpid");
        assert_eq!(syscall_name(110), "getppid");
        assert_eq!(syscall_name(231), "exit_group");
        assert_eq!(syscall_name(435), "clone3");
        assert_eq!(syscall_name(462), "mseal");
        assert_eq!(syscall_name(469), "file_setattr");
        assert_eq!(syscall_name(1000), "syscall_1000");
        // 335..=386 are unassigned on x86_64.
        assert_eq!(syscall_name(340), "syscall_340");
        assert_eq!(syscall_static_name(110), Some("getppid"));
        assert_eq!(syscall_static_name(340), None);
        for nr in [0, 110, 340, 435, 1000] {
            assert_eq!(syscall_number(&syscall_name(nr)), Some(nr));
        }
        assert_eq!(syscall_number("getpid"), Some(39));
        assert_eq!(syscall_number("syscall_110"), None, "110 has a name");
        assert_eq!(syscall_number("syscall_x"), None);
        assert_eq!(syscall_number("getppidd"), None);
    }

    #[test]
    fn names_errnos() {
        assert_eq!(errno_name(1), "EPERM");
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(11), "EAGAIN");
        assert_eq!(errno_name(110), "ETIMEDOUT");
        assert_eq!(errno_name(512), "ERESTARTSYS");
        assert_eq!(errno_name(4000), "E4000");
    }

    #[test]
    fn errno_table_is_sorted_for_binary_search() {
        assert!(errno_table::ERRNO.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
