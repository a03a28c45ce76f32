//! Names of the pods on this node (`k8s.pod.name`, `k8s.namespace.name`) by UID, from the
//! kubelet's pod log directories: `/var/log/pods/<namespace>_<name>_<uid>/` (mounted read-only
//! from the host in the DaemonSet). No API server and no CRI socket needed: the kubelet creates
//! the directory before the pod's first container starts and removes it after the pod is
//! deleted.
//!
//! Invariants: the directory is read again at most once per [`RESCAN_INTERVAL`], and only when a
//! UID is not known (a new pod); the index is bounded ([`MAX_PODS`]); a missing directory (not a
//! Kubernetes node, or not mounted) yields `None` for every UID, never an error. Namespace and
//! pod names are DNS labels/subdomains (no `_`) and the UID is a UUID, so the three fields split
//! on `_` unambiguously; other entries are ignored.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Where the kubelet keeps pod logs (its `podLogsDir` default).
pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";
/// Overrides [`DEFAULT_POD_LOGS_DIR`] (for a kubelet with another `podLogsDir`, and tests).
pub const POD_LOGS_DIR_ENV: &str = "AGENT_POD_LOGS_DIR";
/// The smallest time between two reads of the directory.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Pods indexed at most (a node runs at most a few hundred: kubelet's default maxPods is 110).
pub const MAX_PODS: usize = 8192;

/// One pod, as its log directory names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Parses `<namespace>_<name>_<uid>`.
pub fn parse_pod_dir(entry: &str) -> Option<PodRef> {
    let mut it = entry.split('_');
    let (ns, name, uid) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ns.is_empty() || name.is_empty() || uid.is_empty() {
        return None;
    }
    Some(PodRef {
        namespace: ns.to_string(),
        name: name.to_string(),
        uid: uid.to_ascii_lowercase(),
    })
}

/// The pods found under one directory, by UID.
pub struct PodIndex {
    dir: PathBuf,
    pods: HashMap<String, Arc<PodRef>>,
    last_scan: Option<Instant>,
    min_interval: Duration,
}

impl PodIndex {
    pub fn new(dir: impl Into<PathBuf>) -> PodIndex {
        PodIndex {
            dir: dir.into(),
            pods: HashMap::new(),
            last_scan: None,
            min_interval: RESCAN_INTERVAL,
        }
    }

    /// The index of `$AGENT_POD_LOGS_DIR`, else `/var/log/pods`.
    pub fn from_env() -> PodIndex {
        PodIndex::new(
            std::env::var_os(POD_LOGS_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_POD_LOGS_DIR)),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod with this UID; reads the directory again (at most once per interval) when the
    /// UID is unknown.
    pub fn get(&mut self, uid: &str) -> Option<Arc<PodRef>> {
        if let Some(p) = self.pods.get(uid) {
            return Some(p.clone());
        }
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < self.min_interval)
        {
            return None;
        }
        self.rescan();
        self.pods.get(uid).cloned()
    }

    /// Reads the directory: pods deleted since the last read are forgotten.
    pub fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            self.pods.clear();
            return;
        };
        let mut pods = HashMap::new();
        for e in entries.flatten() {
            if pods.len() >= MAX_PODS {
                break;
            }
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(p) = e.file_name().to_str().and_then(parse_pod_dir) {
                let p = match self.pods.get(&p.uid) {
                    Some(old) if **old == p => old.clone(),
                    _ => Arc::new(p),
                };
                pods.insert(p.uid.clone(), p);
            }
        }
        self.pods = pods;
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// The process-wide index of [`PodIndex::from_env`], shared by every prober.
pub fn lookup(uid: &str) -> Option<Arc<PodRef>> {
    static INDEX: Mutex<Option<PodIndex>> = Mutex::new(None);
    let mut g = INDEX.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(PodIndex::from_env).get(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0c5e2d1a-1b2c-4d3e-8f90-123456789abc";

    #[test]
    fn directory_names() {
        assert_eq!(
            parse_pod_dir(&format!("kube-system_coredns-5d78c9869d-x2x8q_{UID}")),
            Some(PodRef {
                namespace: "kube-system".into(),
                name: "coredns-5d78c9869d-x2x8q".into(),
                uid: UID.into()
            })
        );
        // Static pods: the name carries the node name (dots allowed), the UID is a hash.
        let p =
            parse_pod_dir("kube-system_etcd-node-1.example.com_9f86d081884c7d659a2feaa0c55ad015")
                .unwrap();
        assert_eq!(p.name, "etcd-node-1.example.com");
        assert_eq!(p.uid, "9f86d081884c7d659a2feaa0c55ad015");
        for bad in ["", "a_b", "a_b_c_d", "_b_c", "a__c", "a_b_"] {
            assert_eq!(parse_pod_dir(bad), None, "{bad}");
        }
    }

    #[test]
    fn index_finds_new_pods_and_forgets_deleted_ones() {
        let root = tempfile::tempdir().unwrap();
        let mut idx = PodIndex::new(root.path());
        idx.min_interval = Duration::ZERO;
        assert_eq!(idx.get(UID), None);

        let dir = root.path().join(format!("shop_cart-7d4b9c-abcde_{UID}"));
        std::fs::create_dir(&dir).unwrap();
        // A file and a malformed directory are ignored.
        std::fs::write(root.path().join(format!("x_y_{UID}.log")), "").unwrap();
        std::fs::create_dir(root.path().join("not-a-pod")).unwrap();
        let p = idx.get(UID).expect("new pod found on the next lookup");
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("shop", "cart-7d4b9c-abcde")
        );
        assert_eq!(idx.len(), 1);

        std::fs::remove_dir(&dir).unwrap();
        idx.rescan();
        assert!(idx.is_empty());
        assert_eq!(idx.get(UID), None);
    }

    #[test]
    fn misses_rescan_at_most_once_per_interval() {
        let root = tempfile::tempdir().unwrap();
        let mut idx = PodIndex::new(root.path());
        idx.min_interval = Duration::from_secs(3600);
        assert_eq!(idx.get(UID), None);
        std::fs::create_dir(root.path().join(format!("a_b_{UID}"))).unwrap();
        // Within the interval the miss is not read again.
        assert_eq!(idx.get(UID), None);
        idx.rescan();
        assert_eq!(idx.get(UID).unwrap().name, "b");
    }

    #[test]
    fn missing_directory_is_no_pods() {
        let mut idx = PodIndex::new("/nonexistent/agent-test/pods");
        assert_eq!(idx.get(UID), None);
        assert!(idx.is_empty());
    }
}
