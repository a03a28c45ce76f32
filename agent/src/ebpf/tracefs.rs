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
