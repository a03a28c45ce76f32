//! Reloads the config when its file changes — in Kubernetes, when the kubelet updates a mounted
//! ConfigMap: it writes the new files into a fresh `..<timestamp>` directory and swaps the
//! `..data` symlink to it atomically; `agent.yaml` itself is a symlink to `..data/agent.yaml`
//! (this is why the ConfigMap must be mounted without `subPath`: a subPath mount is a bind of
//! the old file and never changes).
//!
//! How: every [`INTERVAL`], resolve the path through its symlinks and `stat` the target; when
//! the target, its inode, size or mtime differ from the last look, read the file and compare its
//! SHA-256 with the content last seen; a different content triggers the same reload as SIGHUP
//! (the trigger sends the process SIGHUP, so there is one reload path). A file missing for a
//! moment (mid-swap, or deleted) changes nothing.
//!
//! Why polling rather than inotify (the `notify` crate): inotify watches inodes, and the swap
//! replaces the directory the file lives in, so a watch on the file fires `IN_DELETE_SELF` and
//! must be re-armed on the new target, while a watch on the mount directory sees the rename of
//! `..data` but also every kubelet resync; getting that right is as much code as this, adds a
//! dependency tree, and still misses changes on filesystems without inotify (NFS, some FUSE).
//! One `realpath` + `stat` every 5 s costs little (each wake of the task, not the syscalls,
//! is most of it: ~1 ms of CPU on the test VM); the kubelet itself only propagates ConfigMap
//! changes every sync period (about a minute), so 5 s adds nothing noticeable.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// How often the file is looked at.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What `stat` says about the resolved file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stat {
    target: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stat(path: &Path) -> Option<Stat> {
    let target = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&target).ok()?;
    Some(Stat {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        target,
    })
}

fn content_hash(path: &Path) -> Option<[u8; 32]> {
    let bytes = std::fs::read(path).ok()?;
    Some(Sha256::digest(&bytes).into())
}

/// The state of one watched file: the last `stat` and the last content hash seen.
pub struct Watcher {
    path: PathBuf,
    last_stat: Option<Stat>,
    last_hash: Option<[u8; 32]>,
}

impl Watcher {
    /// Starts from the file as it is now (the content the agent just loaded).
    pub fn new(path: impl Into<PathBuf>) -> Watcher {
        let path = path.into();
        let last_stat = stat(&path);
        let last_hash = last_stat.as_ref().and_then(|s| content_hash(&s.target));
        Watcher {
            path,
            last_stat,
            last_hash,
        }
    }

    /// Looks once; true when the content differs from the last content seen.
    pub fn changed(&mut self) -> bool {
        let Some(now) = stat(&self.path) else {
            return false;
        };
        if self.last_stat.as_ref() == Some(&now) {
            return false;
        }
        let Some(hash) = content_hash(&now.target) else {
            return false;
        };
        self.last_stat = Some(now);
        if self.last_hash == Some(hash) {
            return false;
        }
        self.last_hash = Some(hash);
        true
    }
}

/// Aborts the watch task when dropped.
pub struct WatchTask(JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches `path` every `interval` and calls `on_change` when its content changes.
pub fn spawn(
    path: PathBuf,
    interval: Duration,
    on_change: impl Fn() + Send + 'static,
) -> WatchTask {
    let mut w = Watcher::new(path);
    WatchTask(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // A stat and, rarely, a small read: cheap enough for an async worker.
            if w.changed() {
                tracing::info!(file = %w.path.display(), "config file changed");
                on_change();
            }
        }
    }))
}

/// The trigger the agent uses: SIGHUP to itself, the same reload as `kill -HUP`.
pub fn sighup_self() {
    // SAFETY: kill(2) on our own pid with a signal the runtime handles.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGHUP);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::symlink,
        sync::{
            atomic::{AtomicU32, Ordering},
            Arc,
        },
    };

    use super::*;

    /// A ConfigMap volume as the kubelet lays it out (`AtomicWriter`): `..<ts>/agent.yaml`,
    /// `..data -> ..<ts>`, `agent.yaml -> ..data/agent.yaml`; `update` swaps to a new
    /// timestamped directory the way the kubelet does (symlink `..data_tmp`, rename over
    /// `..data`, remove the old directory).
    struct ConfigMapDir {
        root: tempfile::TempDir,
        n: u32,
    }

    impl ConfigMapDir {
        fn new(content: &str) -> ConfigMapDir {
            let root = tempfile::tempdir().unwrap();
            let mut d = ConfigMapDir { root, n: 0 };
            d.write_version(content);
            symlink("..data/agent.yaml", d.root.path().join("agent.yaml")).unwrap();
            d
        }

        fn file(&self) -> PathBuf {
            self.root.path().join("agent.yaml")
        }

        fn write_version(&mut self, content: &str) {
            self.n += 1;
            let ts = format!("..2026_01_01_00_00_{:02}.{}", self.n, 100 + self.n);
            let dir = self.root.path().join(&ts);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("agent.yaml"), content).unwrap();
            let tmp = self.root.path().join("..data_tmp");
            symlink(&ts, &tmp).unwrap();
            let old = std::fs::read_link(self.root.path().join("..data")).ok();
            std::fs::rename(&tmp, self.root.path().join("..data")).unwrap();
            if let Some(old) = old {
                std::fs::remove_dir_all(self.root.path().join(old)).unwrap();
            }
        }
    }

    #[test]
    fn configmap_swap_is_seen_once_and_same_content_is_not() {
        let mut cm = ConfigMapDir::new("log:\n  level: info\n");
        let mut w = Watcher::new(cm.file());
        assert!(!w.changed(), "nothing changed yet");

        cm.write_version("log:\n  level: debug\n");
        assert!(w.changed(), "the ..data swap is a change");
        assert!(!w.changed(), "seen once");

        // The kubelet re-creates the same content (another timestamped directory): no reload.
        cm.write_version("log:\n  level: debug\n");
        assert!(!w.changed());

        // Back to the first content: a change again.
        cm.write_version("log:\n  level: info\n");
        assert!(w.changed());
    }

    #[test]
    fn plain_file_edits_and_a_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("agent.yaml");
        std::fs::write(&f, "a: 1\n").unwrap();
        let mut w = Watcher::new(&f);
        std::fs::write(&f, "a: 2\n").unwrap();
        assert!(w.changed());
        // Deleted (an editor's save, a swap in progress): nothing happens...
        std::fs::remove_file(&f).unwrap();
        assert!(!w.changed());
        // ... and the same content back is no change.
        std::fs::write(&f, "a: 2\n").unwrap();
        assert!(!w.changed());
        // Same length, new content.
        std::fs::write(&f, "a: 3\n").unwrap();
        assert!(w.changed());
    }

    #[tokio::test]
    async fn the_task_calls_the_trigger_on_a_swap() {
        let mut cm = ConfigMapDir::new("x: 1\n");
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        let task = spawn(cm.file(), Duration::from_millis(20), move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        cm.write_version("x: 2\n");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while hits.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        drop(task);
    }
}
