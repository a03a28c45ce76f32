//! Container and pod identity from a cgroup path, without a cluster: `container.id`,
//! `container.runtime` and `k8s.pod.uid` as the kubelet and the container runtimes name their
//! cgroups.
//!
//! Layouts recognised (the innermost match wins, so nested containers — kind, Docker-in-Docker —
//! name the inner container):
//!
//! | driver | runtime | container cgroup |
//! |---|---|---|
//! | systemd | containerd | `…/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope` |
//! | systemd | CRI-O | `…/kubepods-pod<uid>.slice/crio-<id>.scope` (`crio-conmon-<id>.scope` is CRI-O's monitor, not the container) |
//! | systemd | Docker (cri-dockerd, plain) | `…/docker-<id>.scope`, `/system.slice/docker-<id>.scope` |
//! | systemd | Podman | `/machine.slice/libpod-<id>.scope` (`libpod-conmon-<id>.scope`: monitor) |
//! | cgroupfs | containerd or Docker under Kubernetes | `/kubepods/burstable/pod<uid>/<id>` (the runtime is not in the path: `None`) |
//! | cgroupfs | CRI-O | `/kubepods/besteffort/pod<uid>/crio-<id>` |
//! | cgroupfs | Docker | `/docker/<id>` |
//! | cgroupfs | Podman | `/libpod_parent/libpod-<id>` |
//!
//! The same paths appear in cgroup v1 (`N:controller:/path` lines) and v2 (`0::/path`); a v2
//! path seen from inside a cgroup namespace may start with `/..` segments, which are skipped.
//! Container ids are 64 hex digits (OCI runtimes' ids); pod UIDs are RFC 4122 UUIDs
//! (the systemd driver writes their dashes as underscores: `_` → `-`).

use std::fmt;

/// The container runtime that named a cgroup (`container.runtime` in OTel semantic
/// conventions: `containerd`, `cri-o`, `docker`, `podman`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerRuntime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl ContainerRuntime {
    /// The `container.runtime` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRuntime::Containerd => "containerd",
            ContainerRuntime::CriO => "cri-o",
            ContainerRuntime::Docker => "docker",
            ContainerRuntime::Podman => "podman",
        }
    }
}

impl fmt::Display for ContainerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container, as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerIdentity {
    /// `None` where the path does not say (cgroupfs driver under Kubernetes: a bare id).
    pub runtime: Option<ContainerRuntime>,
    /// `container.id`: 64 lower-case hex digits.
    pub container_id: String,
    /// `k8s.pod.uid` (lower-case, with dashes) when the container is in a kubelet pod cgroup.
    pub pod_uid: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What one cgroup path segment is.
enum Segment {
    /// A container: its runtime (when the name says) and id.
    Container(Option<ContainerRuntime>, String),
    /// A runtime's monitor (conmon): no container.
    Monitor,
    Other,
}

fn container_segment(segment: &str) -> Segment {
    let seg = segment.strip_suffix(".scope").unwrap_or(segment);
    if seg.starts_with("crio-conmon-") || seg.starts_with("libpod-conmon-") {
        return Segment::Monitor;
    }
    let prefixes: [(&str, Option<ContainerRuntime>); 6] = [
        ("cri-containerd-", Some(ContainerRuntime::Containerd)),
        ("crio-", Some(ContainerRuntime::CriO)),
        ("docker-", Some(ContainerRuntime::Docker)),
        ("libpod-", Some(ContainerRuntime::Podman)),
        // nerdctl (containerd without Kubernetes) with the systemd driver.
        ("nerdctl-", Some(ContainerRuntime::Containerd)),
        ("", None),
    ];
    for (prefix, runtime) in prefixes {
        if let Some(id) = seg.strip_prefix(prefix) {
            if is_container_id(id) {
                return Segment::Container(runtime, id.to_ascii_lowercase());
            }
        }
    }
    Segment::Other
}

/// The pod UID in a kubelet pod cgroup segment: `pod<uuid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uuid_underscored>.slice` (systemd).
fn pod_segment(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = s.rfind("pod")?;
    if at != 0 && !s[..at].ends_with('-') {
        return None;
    }
    if at != 0 && !s.starts_with("kubepods") {
        return None;
    }
    let uid = s[at + 3..].replace('_', "-").to_ascii_lowercase();
    is_uuid(&uid).then_some(uid)
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The container a cgroup path belongs to (see the module docs for the layouts); `None` for
/// host processes, pod-level cgroups without a container, and runtime monitors (conmon).
pub fn container_from_cgroup_path(path: &str) -> Option<ContainerIdentity> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segments.iter().enumerate().rev() {
        match container_segment(seg) {
            Segment::Monitor => return None,
            Segment::Other => continue,
            Segment::Container(mut runtime, container_id) => {
                // The pod cgroup is the container's parent.
                let pod_uid = i.checked_sub(1).and_then(|p| pod_segment(segments[p]));
                if runtime.is_none() && i > 0 && segments[i - 1] == "docker" {
                    runtime = Some(ContainerRuntime::Docker);
                }
                return Some(ContainerIdentity {
                    runtime,
                    container_id,
                    pod_uid,
                });
            }
        }
    }
    None
}

/// The container of a process from the text of `/proc/<pid>/cgroup`: the cgroup v2 line
/// (`0::/path`) first, then the v1 lines in file order.
pub fn container_from_cgroup_file(text: &str) -> Option<ContainerIdentity> {
    let paths = || text.lines().filter_map(|l| l.splitn(3, ':').nth(2));
    let unified = text
        .lines()
        .filter(|l| l.starts_with("0::"))
        .filter_map(|l| l.get(3..));
    unified.chain(paths()).find_map(container_from_cgroup_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerRuntime::*;

    const ID: &str = "3f9a1c5e2b7d4f608192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const UID: &str = "0c5e2d1a-1b2c-4d3e-8f90-123456789abc";

    fn ident(runtime: Option<ContainerRuntime>, pod: bool) -> Option<ContainerIdentity> {
        Some(ContainerIdentity {
            runtime,
            container_id: ID.to_string(),
            pod_uid: pod.then(|| UID.to_string()),
        })
    }

    /// Paths as each runtime and cgroup driver writes them (recorded from kubelet, containerd,
    /// CRI-O, Docker and Podman hosts; the ids replaced by `ID` and `UID`).
    #[test]
    fn recorded_layouts() {
        let u = UID.replace('-', "_");
        let cases: Vec<(String, Option<ContainerIdentity>)> = vec![
            // systemd driver, containerd (EKS, AKS, kubeadm defaults).
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"), ident(Some(Containerd), true)),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"), ident(Some(Containerd), true)),
            // Guaranteed QoS pods sit right under kubepods.slice.
            (format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"), ident(Some(Containerd), true)),
            // systemd driver, CRI-O (OpenShift), and its conmon monitor.
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope"), ident(Some(CriO), true)),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"), None),
            // CRI-O with a container sub-cgroup (cgroup v2, `container` inside the scope).
            (format!("/kubepods.slice/kubepods-pod{u}.slice/crio-{ID}.scope/container"), ident(Some(CriO), true)),
            // systemd driver, Docker via cri-dockerd, and plain Docker.
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope"), ident(Some(Docker), true)),
            (format!("/system.slice/docker-{ID}.scope"), ident(Some(Docker), false)),
            // cgroupfs driver (GKE COS, k3s, older kubeadm): containerd or Docker, not told apart.
            (format!("/kubepods/burstable/pod{UID}/{ID}"), ident(None, true)),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), ident(None, true)),
            (format!("/kubepods/pod{UID}/{ID}"), ident(None, true)),
            // cgroupfs driver, CRI-O.
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), ident(Some(CriO), true)),
            // cgroupfs driver, plain Docker.
            (format!("/docker/{ID}"), ident(Some(Docker), false)),
            // Podman (systemd and cgroupfs) and its conmon.
            (format!("/machine.slice/libpod-{ID}.scope"), ident(Some(Podman), false)),
            (format!("/machine.slice/libpod-{ID}.scope/container"), ident(Some(Podman), false)),
            (format!("/libpod_parent/libpod-{ID}"), ident(Some(Podman), false)),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            // nerdctl.
            (format!("/system.slice/nerdctl-{ID}.scope"), ident(Some(Containerd), false)),
            // Seen from inside a cgroup namespace (the agent's own container on cgroup v2).
            (format!("/../../kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"), ident(Some(Containerd), true)),
            // Upper-case hex is normalised.
            (format!("/docker/{}", ID.to_ascii_uppercase()), ident(Some(Docker), false)),
            // Host processes and pod-level cgroups: no container.
            ("/user.slice/user-0.slice/session-1.scope".into(), None),
            ("/system.slice/containerd.service".into(), None),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"), None),
            ("/".into(), None),
            ("".into(), None),
            // Almost an id: 63 digits, or not hex.
            (format!("/docker/{}", &ID[1..]), None),
            (format!("/docker/{}g", &ID[1..]), None),
        ];
        for (path, want) in cases {
            assert_eq!(container_from_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn nested_containers_name_the_innermost() {
        // A kind node is a Docker container; its pods' containers are inside it.
        let outer = "a".repeat(64);
        let path = format!("/docker/{outer}/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(container_from_cgroup_path(&path), ident(None, true));
        let path = format!("/system.slice/docker-{outer}.scope/kubepods/pod{UID}/crio-{ID}");
        assert_eq!(container_from_cgroup_path(&path), ident(Some(CriO), true));
    }

    #[test]
    fn pod_segments() {
        let u = UID.replace('-', "_");
        assert_eq!(pod_segment(&format!("pod{UID}")).as_deref(), Some(UID));
        assert_eq!(
            pod_segment(&format!("kubepods-besteffort-pod{u}.slice")).as_deref(),
            Some(UID)
        );
        assert_eq!(
            pod_segment(&format!("POD{}", UID.to_uppercase())).as_deref(),
            None
        );
        assert_eq!(pod_segment(&format!("mypod{UID}")), None);
        assert_eq!(pod_segment(&format!("other-pod{u}.slice")), None);
        assert_eq!(pod_segment("pod1234"), None);
        assert_eq!(pod_segment("kubepods-burstable.slice"), None);
    }

    /// `/proc/<pid>/cgroup` as cgroup v1 (hybrid, like this VM) and v2 hosts print it.
    #[test]
    fn cgroup_files_v1_and_v2() {
        let u = UID.replace('-', "_");
        let scope = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
        );
        // Pure v2.
        let v2 = format!("0::{scope}\n");
        assert_eq!(
            container_from_cgroup_file(&v2),
            ident(Some(Containerd), true)
        );
        // v1 (cgroupfs driver), every controller the same path, no unified line.
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
        let v1 = format!("12:pids:{p}\n11:memory:{p}\n4:cpu,cpuacct:{p}\n1:name=systemd:{p}\n");
        assert_eq!(container_from_cgroup_file(&v1), ident(None, true));
        // Hybrid: the unified line is taken first even when it comes last.
        let hybrid = format!("12:pids:/docker/{}\n0::{scope}\n", "b".repeat(64));
        assert_eq!(
            container_from_cgroup_file(&hybrid),
            ident(Some(Containerd), true)
        );
        // Hybrid where the unified line says nothing (systemd only put it in a slice).
        let hybrid = format!("1:name=systemd:/docker/{ID}\n0::/\n");
        assert_eq!(
            container_from_cgroup_file(&hybrid),
            ident(Some(Docker), false)
        );
        assert_eq!(
            container_from_cgroup_file("0::/init.scope\n1:name=systemd:/init.scope\n"),
            None
        );
    }
}
