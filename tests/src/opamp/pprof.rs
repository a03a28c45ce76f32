//! The pprof files the agent writes with no profiles endpoint, read back with `gzip -dc` and
//! `protoc --decode perftools.profiles.Profile` (nothing of the agent's code).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// One exported profile window (a pprof file the agent wrote under `<out>/profiles/`), read
/// with `gzip -dc | protoc --decode perftools.profiles.Profile`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Nanoseconds per sample: 1e9 / the profiler's frequency.
    pub period_nanos: u64,
    pub duration_nanos: u64,
    /// Samples in the window (the first value of every sample).
    pub samples: u64,
}

fn decode_pprof(gz: &Path) -> Option<String> {
    let raw = Command::new("gzip").arg("-dc").arg(gz).output().ok()?;
    if !raw.status.success() {
        return None; // still being written
    }
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/pprof");
    let mut child = Command::new("protoc")
        .args(["--decode", "perftools.profiles.Profile", "-I"])
        .arg(&proto_dir)
        .arg("profile.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("protoc (cargo xtask setup --test-peers)");
    let wrote = child.stdin.take().unwrap().write_all(&raw.stdout);
    let out = child.wait_with_output().ok()?;
    wrote.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pprof files in `profiles_dir`, oldest first (named by their start time).
pub fn profile_files(profiles_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(profiles_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    files.sort();
    files
}

/// One pprof file as a [`Window`] (`None` while it is being written).
pub fn window(file: &Path) -> Option<Window> {
    let text = decode_pprof(file)?;
    let field = |name: &str| -> u64 {
        text.lines()
            .filter(|l| !l.starts_with(' '))
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    // In each `sample {` block the first `value:` is the count.
    let mut samples = 0;
    let mut first = false;
    for l in text.lines() {
        let t = l.trim();
        if t == "sample {" {
            first = true;
        } else if first {
            if let Some(v) = t.strip_prefix("value: ") {
                samples += v.parse::<u64>().unwrap_or(0);
                first = false;
            }
        }
    }
    Some(Window {
        period_nanos: field("period: "),
        duration_nanos: field("duration_nanos: "),
        samples,
    })
}

/// Every profile window in `profiles_dir`, oldest first.
pub fn profile_windows(profiles_dir: &Path) -> Vec<Window> {
    profile_files(profiles_dir)
        .iter()
        .filter_map(|f| window(f))
        .collect()
}
