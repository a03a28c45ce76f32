//! Kubernetes identity without a cluster: which container and pod a process belongs to, from its
//! cgroup path (`identity.rs`: `container.id`, `container.runtime`, `k8s.pod.uid`) and the
//! kubelet's pod log directories (`pods.rs`: `k8s.pod.name`, `k8s.namespace.name`).
//!
//! The downward API describes only the agent's own pod (see `export::resource`); everything here
//! is about the other processes on the node.

pub mod identity;
pub mod pods;

use std::sync::Arc;

pub use identity::{
    container_from_cgroup_file, container_from_cgroup_path, ContainerIdentity, ContainerRuntime,
};
pub use pods::PodRef;

/// Metric labels of a workload besides `container.id` (which callers label already):
/// `container.runtime`, `k8s.pod.uid`, `k8s.pod.name`, `k8s.namespace.name` (those known).
/// One container has one value of each, so they add no series.
pub fn pod_labels(w: Option<&Workload>) -> crate::metrics::model::Labels {
    w.map(|w| {
        w.attributes()
            .into_iter()
            .filter(|(k, _)| *k != "container.id")
            .map(|(k, v)| crate::metrics::model::attr(k, v))
            .collect()
    })
    .unwrap_or_default()
}

/// A process's container, and its pod's names when the kubelet's pod directory was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub container: ContainerIdentity,
    pub pod: Option<Arc<PodRef>>,
}

impl Workload {
    /// The container of a cgroup path, with its pod's names looked up by UID.
    pub fn from_cgroup_path(path: &str) -> Option<Workload> {
        Self::with_pod(container_from_cgroup_path(path)?)
    }

    /// The same from the text of `/proc/<pid>/cgroup`.
    pub fn from_cgroup_file(text: &str) -> Option<Workload> {
        Self::with_pod(container_from_cgroup_file(text)?)
    }

    fn with_pod(container: ContainerIdentity) -> Option<Workload> {
        let pod = container.pod_uid.as_deref().and_then(pods::lookup);
        Some(Workload { container, pod })
    }

    /// OTel resource attributes: `container.id`, `container.runtime`, `k8s.pod.uid`,
    /// `k8s.pod.name`, `k8s.namespace.name` (those known).
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let c = &self.container;
        let mut out = vec![("container.id", c.container_id.clone())];
        if let Some(r) = c.runtime {
            out.push(("container.runtime", r.as_str().to_string()));
        }
        if let Some(u) = &c.pod_uid {
            out.push(("k8s.pod.uid", u.clone()));
        }
        if let Some(p) = &self.pod {
            out.push(("k8s.pod.name", p.name.clone()));
            out.push(("k8s.namespace.name", p.namespace.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_and_labels() {
        let id = "ab".repeat(32);
        let uid = "0c5e2d1a-1b2c-4d3e-8f90-123456789abc";
        let w = Workload {
            container: ContainerIdentity {
                runtime: Some(ContainerRuntime::CriO),
                container_id: id.clone(),
                pod_uid: Some(uid.into()),
            },
            pod: Some(Arc::new(PodRef {
                namespace: "shop".into(),
                name: "cart-0".into(),
                uid: uid.into(),
            })),
        };
        let own = |v: Vec<(&'static str, String)>| -> Vec<(String, String)> {
            v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        };
        let want = [
            ("container.id", id.as_str()),
            ("container.runtime", "cri-o"),
            ("k8s.pod.uid", uid),
            ("k8s.pod.name", "cart-0"),
            ("k8s.namespace.name", "shop"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(own(w.attributes()), want);
        let text = |l: crate::metrics::model::Labels| -> Vec<(String, String)> {
            l.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(text(pod_labels(Some(&w))), want[1..]);
        // A plain Docker container: a runtime, no pod.
        let bare = Workload::from_cgroup_path(&format!("/docker/{id}")).unwrap();
        assert_eq!(
            text(pod_labels(Some(&bare))),
            vec![("container.runtime".to_string(), "docker".to_string())]
        );
        assert!(pod_labels(None).is_empty());
    }
}
