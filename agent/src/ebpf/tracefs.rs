//! tracefs discovery and mounting: regular tracepoints need it (raw tracepoints do not).

use std::path::{Path, PathBuf};

const CANDIDATES: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Where tracefs is mounted, if it is.
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .map(Path::to_path_buf)
}

/// Finds tracefs, mounting it at `/sys/kernel/tracing` when absent and we are privileged.
pub fn ensure() -> Result<PathBuf, String> {
    if let Some(p) = find() {
        return Ok(p);
    }
    let target = Path::new(CANDIDATES[0]);
    nix_mount(target).map_err(|e| {
        format!(
            "tracefs is not mounted and mounting it at {} failed: {e}",
            target.display()
        )
    })?;
    find().ok_or_else(|| "tracefs mounted but has no events directory".to_string())
}

fn nix_mount(target: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    let src = CString::new("tracefs").unwrap();
    let dst = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The offset of `field` in tracepoint `category/event`'s record, from its tracefs `format`
/// file (`field:<type> <name>;\toffset:<n>;...`). `None`: no tracefs, no such event, or no
/// such field on this kernel.
pub fn field_offset(category: &str, event: &str, field: &str) -> Option<u32> {
    let text = std::fs::read_to_string(
        find()?
            .join("events")
            .join(category)
            .join(event)
            .join("format"),
    )
    .ok()?;
    format_field_offset(&text, field)
}

/// The offset of `field` in a tracepoint `format` text.
pub fn format_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let decl = parts.next()?.trim().strip_prefix("field:")?;
        // The name is the last word of the declaration, minus any array suffix.
        let name = decl.rsplit(' ').next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let off = parts.next()?.trim().strip_prefix("offset:")?;
        off.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: &str = "name: sched_process_exit\nID: 369\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";

    #[test]
    fn offsets_from_format_files() {
        assert_eq!(format_field_offset(EXIT, "group_dead"), Some(32));
        assert_eq!(format_field_offset(EXIT, "comm"), Some(8));
        assert_eq!(format_field_offset(EXIT, "pid"), Some(24));
        assert_eq!(format_field_offset(EXIT, "missing"), None);
        let exec = "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n";
        assert_eq!(format_field_offset(exec, "filename"), Some(8));
    }
}
