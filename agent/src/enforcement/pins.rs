//! Where `persist: true` limits live across agent restarts: a versioned directory on the BPF
//! filesystem (`<enforcement.bpffs>/enforce-v<N>`, [`crate::persist::ENFORCEMENT_PINS`]) with
//! `maps/<MAP>` (the limit and rule maps) and `links/<name>` (cgroup attachments). A pinned
//! link keeps its program attached after the agent exits; the next agent loads its objects on
//! the pinned maps (same entries) and takes the links over instead of attaching again.

use std::path::{Path, PathBuf};

use crate::persist::ENFORCEMENT_PINS;

/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    bpffs: PathBuf,
    dir: PathBuf,
}

fn fs_type(p: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills a zeroed struct from a NUL-terminated path.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0).then_some(s.f_type as i64)
}

impl Pins {
    pub fn new(bpffs: &Path) -> Pins {
        Pins {
            bpffs: bpffs.to_path_buf(),
            dir: bpffs.join(format!(
                "{}-v{}",
                ENFORCEMENT_PINS.name, ENFORCEMENT_PINS.version
            )),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    /// Pins maps `names` of the loaded object `bpf` at [`Pins::map`] (the directory created
    /// first). Errors: a map missing from the object, or the pin refused (cause in the text).
    pub fn pin_maps(&self, bpf: &aya::Ebpf, names: &[&str]) -> Result<(), String> {
        self.ensure()?;
        for name in names {
            let path = self.map(name);
            let m = bpf.map(name).ok_or_else(|| format!("{name} missing"))?;
            m.pin(&path)
                .map_err(|e| format!("cannot pin {name} at {}: {e}", path.display()))?;
        }
        Ok(())
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.dir.join("links").join(name)
    }

    /// Links pinned by a predecessor whose names start with `prefix`.
    pub fn links_with_prefix(&self, prefix: &str) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(self.dir.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(prefix).then(|| (n, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Makes the pin directories, mounting the BPF filesystem at `/sys/fs/bpf` when the
    /// configured directory is under it and nothing is mounted there yet.
    pub fn ensure(&self) -> Result<(), String> {
        let mut probe = self.bpffs.clone();
        while !probe.exists() {
            if !probe.pop() {
                break;
            }
        }
        if fs_type(&probe) != Some(BPF_FS_MAGIC) {
            let std_mount = Path::new("/sys/fs/bpf");
            if !self.bpffs.starts_with(std_mount) || fs_type(std_mount) == Some(BPF_FS_MAGIC) {
                return Err(format!(
                    "{} is not on a BPF filesystem (bpffs)",
                    self.bpffs.display()
                ));
            }
            // SAFETY: mount(2) with NUL-terminated strings.
            let rc = unsafe {
                libc::mount(
                    c"bpf".as_ptr(),
                    c"/sys/fs/bpf".as_ptr(),
                    c"bpf".as_ptr(),
                    0,
                    c"mode=0700".as_ptr().cast(),
                )
            };
            if rc != 0 {
                return Err(format!(
                    "cannot mount the BPF filesystem at /sys/fs/bpf: {}",
                    std::io::Error::last_os_error()
                ));
            }
            tracing::info!("mounted the BPF filesystem at /sys/fs/bpf (for persist: true limits)");
        }
        for d in [self.dir.join("maps"), self.dir.join("links")] {
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        Ok(())
    }

    /// Removes a pinned object (its kernel object goes when nothing else holds it).
    pub fn unpin(path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove pin {}: {e}", path.display());
            }
        }
    }

    /// Removes the pin directory if nothing is pinned in it any more.
    pub fn remove_if_empty(&self) {
        let _ = std::fs::remove_dir(self.dir.join("maps"));
        let _ = std::fs::remove_dir(self.dir.join("links"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}
