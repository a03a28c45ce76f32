//! Unit tests for the config: defaults, round trips, error positions and texts, environment
//! overrides and hashing.

use std::{collections::HashMap, net::SocketAddr, path::Path, time::Duration};

use super::{load::load_with, locate, validate::FIELDS, *};

fn parse_err(text: &str) -> ConfigError {
    match Config::from_yaml(text, "agent.yaml") {
        Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
        Err(e) => e,
    }
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// Asserts the error's field path, line and full two-line text.
fn assert_err(e: &ConfigError, path: &str, line: Option<usize>, text: &str) {
    assert_eq!(e.path(), Some(path), "path of {e}");
    assert_eq!(e.line(), line, "line of {e}");
    assert_eq!(e.to_string(), text);
    assert_eq!(e.to_string(), format!("{}\nfix: {}", e.cause(), e.fix()));
}

#[test]
fn default_yaml_is_the_default_config() {
    let parsed = Config::from_yaml(DEFAULT_YAML, DEFAULT_ORIGIN).unwrap();
    assert_eq!(parsed, Config::default());
    Config::default().validate().unwrap();
    assert_eq!(Config::load(None).ok().map(|_| ()), Some(()));
}

#[test]
fn default_yaml_documents_every_field_and_variable() {
    for path in FIELDS {
        assert!(
            locate::find(DEFAULT_YAML, path).is_some(),
            "{path} missing from default.yaml"
        );
    }
    for (var, path) in ENV_OVERRIDES {
        assert!(
            DEFAULT_YAML.contains(var),
            "{var} missing from default.yaml"
        );
        assert!(
            FIELDS.contains(path),
            "{var} overrides unknown field {path}"
        );
    }
    // Every serialized field is in FIELDS (so it has a check and a hint).
    let serialized: Vec<String> = locate::key_lines(&Config::default().to_yaml())
        .into_iter()
        .map(|k| k.path)
        .collect();
    let fields: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
    assert_eq!(serialized, fields);
}

#[test]
fn defaults_match_the_spec() {
    let c = Config::default();
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert!(c.status.enabled);
    assert_eq!(
        c.status.listen,
        "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.output.dir, Path::new("agent-output"));
    assert_eq!(c.output.interval, Duration::from_secs(10));
    assert_eq!(c.output.max_file_bytes, 16 << 20);
    assert_eq!(c.output.max_files, 4);
    let s = &c.probes.syscalls;
    assert!(s.enabled);
    assert_eq!(s.interval, Duration::from_secs(5));
    assert_eq!(
        (s.max_entries, s.error_entries, s.inflight_slots),
        (4096, 4096, 262_144)
    );
    assert_eq!(s.fast_slots, 1024);
    assert_eq!(s.top_processes, 100);
    assert_eq!(s.retain_exited, Duration::from_secs(60));
}

#[test]
fn fast_slots_zero_or_power_of_two() {
    let e = parse_err("probes:\n  syscalls:\n    fast_slots: 1000\n");
    assert_eq!(
        e.to_string(),
        "agent.yaml:3:17: probes.syscalls.fast_slots: 1000 is not 0 or a power of two up to 65536\n\
         fix: use 0 (off) or a power of two up to 65536, e.g. 1024"
    );
    assert!(Config::from_yaml("probes:\n  syscalls:\n    fast_slots: 0\n", "a").is_ok());
    assert!(Config::from_yaml("probes:\n  syscalls:\n    fast_slots: 65536\n", "a").is_ok());
    assert!(Config::from_yaml("probes:\n  syscalls:\n    fast_slots: 131072\n", "a").is_err());
}

#[test]
fn round_trip() {
    let mut c = Config::default();
    c.log.level = "warn,agent=debug".into();
    c.log.format = LogFormat::Json;
    c.status.enabled = false;
    c.status.listen = "[::1]:0".parse().unwrap();
    c.output.dir = "/var/lib/agent out".into();
    c.output.interval = Duration::from_millis(1500);
    c.probes.syscalls.interval = Duration::from_secs(90);
    c.probes.syscalls.inflight_slots = 1024;
    c.probes.syscalls.retain_exited = Duration::ZERO;
    let yaml = c.to_yaml();
    assert_eq!(Config::from_yaml(&yaml, "x").unwrap(), c, "{yaml}");
    let d = Config::default();
    assert_eq!(Config::from_yaml(&d.to_yaml(), "x").unwrap(), d);
}

#[test]
fn empty_file_is_the_default() {
    for text in ["", "\n", "# only a comment\n", "~\n", "null", "---\n"] {
        assert_eq!(
            Config::from_yaml(text, "agent.yaml").unwrap(),
            Config::default(),
            "{text:?}"
        );
    }
    // An empty section keeps its defaults.
    assert_eq!(
        Config::from_yaml("log:\nprobes:\n  syscalls:\n", "a").unwrap(),
        Config::default()
    );
}

#[test]
fn partial_file_keeps_other_defaults() {
    let c = Config::from_yaml("probes:\n  syscalls:\n    interval: 250ms\n", "a").unwrap_err();
    assert_eq!(c.path(), Some("probes.syscalls.interval"));
    let c = Config::from_yaml("probes:\n  syscalls:\n    interval: 1m\n", "a").unwrap();
    let mut want = Config::default();
    want.probes.syscalls.interval = Duration::from_secs(60);
    assert_eq!(c, want);
}

#[test]
fn unknown_nested_field() {
    let text = "\
# agent config
log:
  level: info

probes:
  syscalls:
    enabled: true
    intervall: 5s
";
    let e = parse_err(text);
    assert_err(
        &e,
        "probes.syscalls.intervall",
        Some(8),
        "agent.yaml:8:5: unknown field probes.syscalls.intervall\n\
         fix: allowed fields here: enabled, interval, aggregation, max_entries, error_entries, \
         max_processes, inflight_slots, fast_slots, top_processes, retain_exited (did you mean \
         interval?)",
    );
}

#[test]
fn unknown_top_level_and_flow_fields() {
    let e = parse_err("log:\n  level: info\nprobe:\n  syscalls: {}\n");
    assert_err(
        &e,
        "probe",
        Some(3),
        "agent.yaml:3:1: unknown field probe\n\
         fix: allowed fields here: log, status, output, export, probes, detection, transform, filter, opamp, self_protection, enforcement (did you mean probes?)",
    );
    // No suggestion when nothing is close.
    let e = parse_err("foo: 1\n");
    assert_eq!(
        e.fix(),
        "allowed fields here: log, status, output, export, probes, detection, transform, filter, opamp, self_protection, enforcement"
    );
    let e = parse_err("status: {enabled: true, port: 9464}\n");
    assert_err(
        &e,
        "status.port",
        Some(1),
        "agent.yaml:1:25: unknown field status.port\nfix: allowed fields here: enabled, listen, histogram_buckets, debug_listen, token_file",
    );
}

#[test]
fn bad_duration() {
    let e = parse_err("probes:\n  syscalls:\n    interval: 5x\n");
    assert_err(
        &e,
        "probes.syscalls.interval",
        Some(3),
        "agent.yaml:3:15: probes.syscalls.interval: invalid value: string \"5x\", expected a \
         duration\nfix: use a duration from 1s to 1h, e.g. 5s",
    );
    // A bare number is not a duration either.
    let e = parse_err("output:\n  interval: 10\n");
    assert_eq!(e.path(), Some("output.interval"));
    assert_eq!(e.line(), Some(2));
}

#[test]
fn out_of_range_values() {
    let text = "\
log:
  level: debug
probes:
  syscalls:
    interval: 0s
";
    let e = parse_err(text);
    assert_err(
        &e,
        "probes.syscalls.interval",
        Some(5),
        "agent.yaml:5:15: probes.syscalls.interval: 0s is out of range\n\
         fix: use a duration from 1s to 1h, e.g. 5s",
    );
    let e = parse_err("output:\n  dir: out\n  max_file_bytes: 1000\n");
    assert_err(
        &e,
        "output.max_file_bytes",
        Some(3),
        "agent.yaml:3:19: output.max_file_bytes: 1000 is out of range\n\
         fix: use a number of bytes from 65536 (64 KiB) to 1073741824 (1 GiB), e.g. 16777216 \
         (16 MiB)",
    );
    let e = parse_err("probes:\n  syscalls:\n\n    max_entries: 10\n");
    assert_err(
        &e,
        "probes.syscalls.max_entries",
        Some(4),
        "agent.yaml:4:18: probes.syscalls.max_entries: 10 is out of range\n\
         fix: use a whole number from 64 to 1048576, e.g. 4096",
    );
    let e = parse_err("enforcement:\n  nice: -30\n");
    assert_err(
        &e,
        "enforcement.nice",
        Some(2),
        "agent.yaml:2:9: enforcement.nice: -30 is out of range\n\
         fix: use a nice value from -20 (highest priority) to 19, e.g. -10 (the default); 0 \
         leaves the decision path at the workloads' priority",
    );
    let e = parse_err("probes:\n  syscalls:\n    retain_exited: 2h\n");
    assert_eq!(
        (e.path(), e.line()),
        (Some("probes.syscalls.retain_exited"), Some(3))
    );
    let e = parse_err("probes:\n  syscalls:\n    top_processes: 0\n");
    assert_eq!(
        (e.path(), e.line()),
        (Some("probes.syscalls.top_processes"), Some(3))
    );
    let e = parse_err("output:\n  max_files: 101\n");
    assert_eq!((e.path(), e.line()), (Some("output.max_files"), Some(2)));
    // Negative: a type error from the parser, with the same path and line.
    let e = parse_err("probes:\n  syscalls:\n    error_entries: -1\n");
    assert_err(
        &e,
        "probes.syscalls.error_entries",
        Some(3),
        "agent.yaml:3:20: probes.syscalls.error_entries: invalid type: integer `-1`, expected \
         u32\nfix: use a whole number from 64 to 1048576, e.g. 4096",
    );
}

#[test]
fn profiler_frequency_and_mode() {
    for hz in [0, 1000] {
        let e = parse_err(&format!("probes:\n  profiler:\n    frequency: {hz}\n"));
        assert_err(
            &e,
            "probes.profiler.frequency",
            Some(3),
            &format!(
                "agent.yaml:3:16: probes.profiler.frequency: {hz} is out of range\n\
                 fix: use samples per second per CPU, 1 to 999, e.g. 19 (99 for more detail)"
            ),
        );
    }
    let e = parse_err("probes:\n  profiler:\n    mode: ringbuf\n");
    assert_eq!(
        (e.path(), e.line()),
        (Some("probes.profiler.mode"), Some(3))
    );
    assert!(
        e.to_string().contains("fix: use aggregate or stream"),
        "{e}"
    );
    let cfg: Config =
        serde_yaml_ng::from_str("probes:\n  profiler:\n    frequency: 999\n    mode: stream\n")
            .unwrap();
    assert_eq!(cfg.probes.profiler.frequency, 999);
    assert_eq!(cfg.probes.profiler.mode, super::ProfilerMode::Stream);
}

#[test]
fn inflight_slots_power_of_two() {
    let e = parse_err("probes:\n  syscalls:\n    inflight_slots: 3000\n");
    assert_err(
        &e,
        "probes.syscalls.inflight_slots",
        Some(3),
        "agent.yaml:3:21: probes.syscalls.inflight_slots: 3000 is not a power of two\n\
         fix: use a power of two from 1024 to 4194304, e.g. 262144",
    );
    let e = parse_err("probes:\n  syscalls:\n    inflight_slots: 512\n");
    assert_eq!(
        e.cause(),
        "agent.yaml:3:21: probes.syscalls.inflight_slots: 512 is out of range"
    );
    assert!(Config::from_yaml("probes:\n  syscalls:\n    inflight_slots: 4194304\n", "a").is_ok());
}

#[test]
fn bad_listen_address() {
    let e = parse_err("status:\n  enabled: true\n  listen: localhost:9464\n");
    assert_err(
        &e,
        "status.listen",
        Some(3),
        "agent.yaml:3:11: status.listen: invalid socket address syntax\n\
         fix: use an IP:port address such as 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464",
    );
}

#[test]
fn bad_log_level() {
    let e = parse_err("log:\n  level: verbose\n");
    assert_err(
        &e,
        "log.level",
        Some(2),
        "agent.yaml:2:10: log.level: \"verbose\" is not a level\n\
         fix: use a level (off, error, warn, info, debug, trace) or tracing filter directives \
         like warn,agent=debug (a target needs a level: agent=debug)",
    );
    let e = parse_err("log:\n  format: json\n  level: \"info,agent=loud\"\n");
    assert_eq!((e.path(), e.line()), (Some("log.level"), Some(3)));
    assert!(
        e.cause()
            .starts_with("agent.yaml:3:10: log.level: \"info,agent=loud\" is not a valid filter ("),
        "{e}"
    );
    let e = parse_err("log:\n  level: ''\n");
    assert_eq!(e.cause(), "agent.yaml:2:10: log.level: is empty");
    for ok in [
        "debug",
        "WARN",
        "warn,agent=debug",
        "agent::probes=trace",
        "off",
    ] {
        let text = format!("log:\n  level: {ok:?}\n");
        assert!(Config::from_yaml(&text, "a").is_ok(), "{ok}");
    }
}

#[test]
fn bad_enum_value() {
    let e = parse_err("log:\n  level: info\n  format: xml\n");
    assert_err(
        &e,
        "log.format",
        Some(3),
        "agent.yaml:3:11: log.format: unknown value \"xml\"\nfix: use text or json",
    );
}

#[test]
fn wrong_types_and_syntax() {
    let e = parse_err("log: [info]\n");
    assert_err(
        &e,
        "log",
        Some(1),
        "agent.yaml:1:6: log: invalid type: sequence, expected a mapping\n\
         fix: use a mapping with the fields level, format",
    );
    let e = parse_err("status:\n  enabled: yes\n");
    assert_err(
        &e,
        "status.enabled",
        Some(2),
        "agent.yaml:2:12: status.enabled: invalid type: string \"yes\", expected a boolean\n\
         fix: use true or false",
    );
    let e = parse_err("42\n");
    assert_eq!(e.path(), Some(""));
    assert_eq!(
        e.to_string(),
        "agent.yaml:1:1: invalid type: integer `42`, expected a mapping\n\
         fix: use a mapping with the sections log, status, output, export, probes, detection, transform, filter, opamp, self_protection, enforcement"
    );
    let e = parse_err("log:\n  level: info\n   format: text\n");
    assert_eq!(e.path(), None);
    assert_eq!(e.line(), Some(3));
    assert!(
        e.cause()
            .starts_with("agent.yaml:3:10: invalid YAML (after log.level): "),
        "{e}"
    );
    assert!(e.fix().contains("spaces (not tabs)"));
    let e = parse_err("log:\n\tlevel: info\n");
    assert_eq!(
        e.to_string(),
        "agent.yaml:2:1: tab in the indentation\nfix: indent with spaces: YAML does not allow tabs"
    );
    let e = parse_err("log:\n  level: info\n  level: debug\n");
    assert_err(
        &e,
        "log.level",
        Some(3),
        "agent.yaml:3:10: log.level: set more than once\nfix: keep a single level entry in this mapping",
    );
    let e = parse_err("log: {}\n---\nlog: {}\n");
    assert_eq!(
        e.to_string(),
        "agent.yaml: more than one YAML document\nfix: keep a single document: remove the `---` separators"
    );
}

#[test]
fn every_error_is_two_lines() {
    let texts = [
        "log:\n  bogus: 1\n",
        "log:\n  level: nope\n",
        "output:\n  interval: 2h\n",
        "log: [\n",
        "status:\n  listen: 1.2.3.4\n",
    ];
    for t in texts {
        let s = parse_err(t).to_string();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2, "{s}");
        assert!(lines[0].starts_with("agent.yaml:"), "{s}");
        assert!(lines[1].starts_with("fix: "), "{s}");
    }
}

#[test]
fn env_overrides_apply() {
    let mut c = Config::default();
    c.apply_env(env(&[
        ("AGENT_LOG_LEVEL", "debug"),
        ("AGENT_LOG_FORMAT", "JSON"),
        ("AGENT_STATUS_ADDR", "0.0.0.0:9000"),
        ("AGENT_OUTPUT_DIR", "/tmp/out"),
        ("AGENT_SYSCALLS_ENABLED", "off"),
        ("AGENT_SYSCALLS_INTERVAL", "2s"),
        ("AGENT_UNRELATED", "x"),
    ]))
    .unwrap();
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(
        c.status.listen,
        "0.0.0.0:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.output.dir, Path::new("/tmp/out"));
    assert!(!c.probes.syscalls.enabled);
    assert_eq!(c.probes.syscalls.interval, Duration::from_secs(2));

    // Empty variables are ignored.
    let mut d = Config::default();
    d.apply_env(env(&[("AGENT_LOG_LEVEL", ""), ("AGENT_OUTPUT_DIR", "")]))
        .unwrap();
    assert_eq!(d, Config::default());
}

#[test]
fn env_overrides_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        "probes:\n  syscalls:\n    interval: 0s\n    enabled: true\n",
    )
    .unwrap();
    // The file's bad value is replaced by the environment before validation.
    let c = load_with(
        Some(&path),
        env(&[
            ("AGENT_SYSCALLS_INTERVAL", "30s"),
            ("AGENT_SYSCALLS_ENABLED", "false"),
        ]),
    )
    .unwrap();
    assert_eq!(c.probes.syscalls.interval, Duration::from_secs(30));
    assert!(!c.probes.syscalls.enabled);
    // Without the override the file's line is reported, named by its path.
    let e = load_with(Some(&path), env(&[])).unwrap_err();
    assert_eq!(
        e.cause(),
        format!(
            "{}:3:15: probes.syscalls.interval: 0s is out of range",
            path.display()
        )
    );
}

#[test]
fn bad_env_value_names_the_variable() {
    let mut c = Config::default();
    let e = c
        .apply_env(env(&[("AGENT_SYSCALLS_INTERVAL", "5x")]))
        .unwrap_err();
    assert_eq!(e.path(), Some("probes.syscalls.interval"));
    assert_eq!(e.line(), None);
    assert_eq!(
        e.source_of_value(),
        Some(&Source::Env {
            var: "AGENT_SYSCALLS_INTERVAL".into(),
            value: "5x".into()
        })
    );
    assert!(
        e.cause().starts_with(
            "env AGENT_SYSCALLS_INTERVAL=\"5x\": probes.syscalls.interval: \"5x\" is not a duration ("
        ),
        "{e}"
    );
    assert_eq!(
        e.fix(),
        "use a duration from 1s to 1h, e.g. 5s, or unset AGENT_SYSCALLS_INTERVAL"
    );

    let e = Config::default()
        .apply_env(env(&[("AGENT_SYSCALLS_INTERVAL", "2h")]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "env AGENT_SYSCALLS_INTERVAL=\"2h\": probes.syscalls.interval: 2h is out of range\n\
         fix: use a duration from 1s to 1h, e.g. 5s, or unset AGENT_SYSCALLS_INTERVAL"
    );
    let cases = [
        ("AGENT_LOG_LEVEL", "loud", "log.level"),
        ("AGENT_LOG_FORMAT", "xml", "log.format"),
        ("AGENT_STATUS_ADDR", "localhost", "status.listen"),
        ("AGENT_SYSCALLS_ENABLED", "maybe", "probes.syscalls.enabled"),
    ];
    for (var, value, path) in cases {
        let e = Config::default()
            .apply_env(env(&[(var, value)]))
            .unwrap_err();
        assert_eq!(e.path(), Some(path));
        assert!(
            e.cause()
                .starts_with(&format!("env {var}={value:?}: {path}: ")),
            "{e}"
        );
        assert!(e.fix().ends_with(&format!(", or unset {var}")), "{e}");
    }
}

#[test]
fn read_errors() {
    let e = Config::load(Some(Path::new("/nonexistent/agent.yaml"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot read /nonexistent/agent.yaml: No such file or directory (os error 2)\n\
         fix: check the path given to --config"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bin.yaml");
    std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
    let e = Config::load(Some(&path)).unwrap_err();
    assert_eq!(e.fix(), "save the file as UTF-8 text");
}

#[test]
fn validate_outside_a_file() {
    let mut c = Config::default();
    c.probes.syscalls.max_entries = 10;
    let e = c.validate().unwrap_err();
    assert_eq!(e.source_of_value(), Some(&Source::Unknown));
    assert_eq!(
        e.to_string(),
        "probes.syscalls.max_entries: 10 is out of range\n\
         fix: use a whole number from 64 to 1048576, e.g. 4096"
    );
    c = Config::default();
    c.output.dir = "".into();
    assert_eq!(c.validate().unwrap_err().cause(), "output.dir: is empty");
}

#[test]
fn hash_is_stable_and_tracks_changes() {
    let a = Config::default();
    let h = a.hash();
    assert_eq!(h.len(), 64);
    assert!(h
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(h, Config::default().hash());
    assert_eq!(h, a.clone().hash());
    assert_eq!(h, Config::from_yaml(DEFAULT_YAML, "x").unwrap().hash());
    // Comments and layout do not matter, only values.
    assert_eq!(h, Config::from_yaml("# nothing\n", "x").unwrap().hash());
    let mut b = a.clone();
    b.probes.syscalls.top_processes = 101;
    assert_ne!(b.hash(), h);
    let mut c = a.clone();
    c.log.format = LogFormat::Json;
    assert_ne!(c.hash(), h);
    assert_ne!(c.hash(), b.hash());
}

#[test]
fn detection_section_as_the_issue_writes_it() {
    let c = Config::from_yaml(
        "probes:\n  syscalls: {interval: 1s}\ndetection:\n  warmup: 15s\n  signals: [process.syscall.rate]\n",
        "agent.yaml",
    )
    .unwrap();
    assert_eq!(c.probes.syscalls.interval, Duration::from_secs(1));
    assert_eq!(c.detection.warmup, Duration::from_secs(15));
    assert_eq!(c.detection.signals.len(), 1);
    assert_eq!(
        c.detection.signals[0].0.signal,
        crate::signals::Signal::SyscallRate
    );
    // The rest keeps its defaults.
    let d = crate::detection::config::DetectionConfig::default();
    assert_eq!(
        (
            c.detection.max_series,
            c.detection.threshold,
            c.detection.enabled
        ),
        (d.max_series, d.threshold, d.enabled)
    );
}

#[test]
fn detection_errors_name_the_field_and_its_line() {
    let e = parse_err("detection:\n  signals: [process.syscall.rate, process.syscal.rate]\n");
    assert!(
        e.to_string()
            .contains("unknown signal `process.syscal.rate`"),
        "{e}"
    );
    assert_eq!(e.line(), Some(2), "{e}");
    let e = parse_err("detection:\n  max_series: 0\n");
    assert_err(
        &e,
        "detection.max_series",
        Some(2),
        "agent.yaml:2:15: detection.max_series: 0 watches nothing (set `enabled: false` to turn \
         detection off)\nfix: use a whole number from 1 to 1000000, e.g. 10000",
    );
    let e = parse_err(
        "detection:\n  signals:\n  - process.syscall.rate\n  - {signal: process.cpu.utilization, syscall: read}\n",
    );
    assert_eq!(e.path(), Some("detection.signals[1].syscall"), "{e}");
    assert!(e.to_string().contains("has no per-syscall series"), "{e}");
    let e = parse_err("detection:\n  signals: [{signal: process.syscall.rate, syscall: nosuch}]\n");
    assert!(e.to_string().contains("not an x86_64 syscall name"), "{e}");
}
