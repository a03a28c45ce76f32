//! The Restart command (spec "ServerToAgentCommand Message"): after the runtime has shut down
//! cleanly (OpAMP disconnect sent, probes detached, the last export made and the spool synced),
//! the agent replaces itself with a fresh copy of its binary, same arguments and environment,
//! same pid.

use std::{os::unix::process::CommandExt, path::PathBuf};

/// The binary to run again: `/proc/self/exe`'s target; when that file was replaced on disk
/// (an upgrade), the new file at the same path.
fn binary() -> PathBuf {
    match std::fs::read_link("/proc/self/exe") {
        Ok(p) => {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(path) => PathBuf::from(path),
                None => p,
            }
        }
        Err(_) => PathBuf::from("/proc/self/exe"),
    }
}

/// Replaces this process with a new agent; returns only if that failed.
pub fn reexec() -> std::io::Error {
    let bin = binary();
    tracing::info!(binary = %bin.display(), "restarting (OpAMP Restart command)");
    std::process::Command::new(&bin)
        .args(std::env::args_os().skip(1))
        .exec()
}
