//! A remote config (spec "Configuration"): the server's AgentRemoteConfig checked and turned into
//! the config the agent would run — merged over the local file, validated like a local file,
//! with the local-only settings and the enforcement bound enforced.
//!
//! Rules (all refusals are FAILED with the message, and the running config stays):
//! - exactly one entry in the config map (any key), content type `application/yaml`,
//!   `text/yaml`, `application/x-yaml` or empty, UTF-8;
//! - the YAML is parsed and range-checked on its own first, so errors point at its own lines;
//! - mappings merge key by key over the local file, anything else replaces; then the
//!   `AGENT_*` variables and the command-line flags apply, as for the local file alone;
//! - `status.listen`, `output.dir`, `export.spool.dir` and the `opamp` section are local-only:
//!   a remote value different from the local one is refused;
//! - [`bound_enforcement`]: the local `enforcement.remote` (deny, the default | monitor |
//!   enforce) caps what a remote config may do to `enforcement`.

use serde_yaml_ng::{Mapping, Value};

use super::wire::pb;
use crate::{
    config::{Config, DEFAULT_YAML},
    runtime::Overrides,
};

/// One remote config as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDoc {
    /// `config_hash` as received (reported back in RemoteConfigStatus).
    pub hash: Vec<u8>,
    pub key: String,
    pub content_type: String,
    pub body: String,
}

/// Content types taken as YAML.
pub const YAML_TYPES: &[&str] = &["application/yaml", "text/yaml", "application/x-yaml", ""];

/// Name of the remote config in error messages.
pub const ORIGIN: &str = "remote config";

/// A remote config that cannot run. `Display`: cause, then `fix: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{cause}\nfix: {fix}")]
pub struct RemoteError {
    pub cause: String,
    pub fix: String,
}

fn refuse(cause: impl Into<String>, fix: impl Into<String>) -> RemoteError {
    RemoteError {
        cause: cause.into(),
        fix: fix.into(),
    }
}

/// Checks the shape of an offer (entries, content type, UTF-8).
pub fn from_offer(rc: &pb::AgentRemoteConfig) -> Result<RemoteDoc, RemoteError> {
    let map = rc
        .config
        .as_ref()
        .map(|c| &c.config_map)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            refuse(
                "the remote config has no file",
                "send one config file (any name) with the YAML body",
            )
        })?;
    if map.len() > 1 {
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort_unstable();
        return Err(refuse(
            format!(
                "the remote config has {} files ({}); the agent takes one",
                map.len(),
                keys.join(", ")
            ),
            "send a single config file (any name) holding the whole YAML",
        ));
    }
    let (key, file) = map.iter().next().expect("one entry");
    let ct = file.content_type.trim().to_ascii_lowercase();
    let base = ct.split(';').next().unwrap_or("").trim();
    if !YAML_TYPES.contains(&base) {
        return Err(refuse(
            format!(
                "the remote config file {key:?} has content type {:?}, not YAML",
                file.content_type
            ),
            "send it as application/yaml, text/yaml, application/x-yaml or without a content type",
        ));
    }
    let body = String::from_utf8(file.body.clone()).map_err(|_| {
        refuse(
            format!("the remote config file {key:?} is not UTF-8"),
            "send the YAML as UTF-8 text",
        )
    })?;
    Ok(RemoteDoc {
        hash: rc.config_hash.clone(),
        key: key.clone(),
        content_type: file.content_type.clone(),
        body,
    })
}

/// Parses YAML text into a mapping (an empty document is an empty mapping).
fn mapping(text: &str, origin: &str) -> Result<Value, RemoteError> {
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(Value::Mapping(Mapping::new())),
        Ok(v @ Value::Mapping(_)) => Ok(v),
        Ok(_) => Err(refuse(
            format!("{origin}: the document is not a mapping"),
            "send a mapping of sections (log, probes, export, ...), like the local file",
        )),
        Err(e) => Err(refuse(format!("{origin}: {e}"), "send valid YAML")),
    }
}

/// Merges `over` into `base`: mappings key by key (recursively), anything else replaces.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Levels of `enforcement.remote`, lowest first (the enforcement engine's
/// [`RemoteBound`](crate::enforcement::config::RemoteBound)).
pub use crate::enforcement::config::RemoteBound as RemoteEnforcement;

/// The level of a mode word (the engine's `Mode`: `monitor` < `enforce`).
fn mode_level(v: &Value) -> Option<crate::enforcement::Mode> {
    serde_yaml_ng::from_value(v.clone()).ok()
}

/// Every `mode` value under `v`, with its dotted path.
fn modes<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Mapping(m) => {
            for (k, x) in m {
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                let p = format!("{path}.{key}");
                if key == "mode" {
                    out.push((p.clone(), x));
                }
                modes(x, &p, out);
            }
        }
        Value::Sequence(s) => {
            for (i, x) in s.iter().enumerate() {
                modes(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The bound the enforcement engine hooks into: the local file's `enforcement.remote`
/// (`deny` when absent) caps a remote config's `enforcement` subtree.
/// - `deny`: the remote config may not contain `enforcement`.
/// - `monitor`: every mode it sets (`enforcement.mode`, each rule's `mode`) is `monitor`, and
///   every rule it brings runs in monitor mode: a rule without its own `mode` takes the global
///   mode (the remote `enforcement.mode`, else the local one), so under a local
///   `mode: enforce` a remote rule must say `mode: monitor`.
/// - `enforce`: any mode.
///
/// At every level `enforcement.remote`, `enforcement.bpffs` and `enforcement.nice` (the agent's
/// own scheduling priority) are local-only. Works on the
/// YAML values (before the merge), so errors name the remote config's own paths.
pub fn bound_enforcement(local: &Value, remote: &Value) -> Result<(), RemoteError> {
    use crate::enforcement::Mode;
    let Some(rem) = remote.get("enforcement") else {
        return Ok(());
    };
    let local_enf = local.get("enforcement");
    let allowed = match local_enf.and_then(|e| e.get("remote")) {
        None => RemoteEnforcement::Deny,
        Some(v) => match serde_yaml_ng::from_value::<RemoteEnforcement>(v.clone()) {
            Ok(b) => b,
            Err(_) => {
                return Err(refuse(
                    format!("local enforcement.remote is {v:?}, not deny, monitor or enforce; remote enforcement settings are refused"),
                    "set enforcement.remote to deny, monitor or enforce in the local file",
                ))
            }
        },
    };
    let fix_local = "or allow it in the local file with enforcement.remote: monitor (dry run \
                     only) or enforce";
    if allowed == RemoteEnforcement::Deny {
        return Err(refuse(
            "the remote config sets enforcement, which the local enforcement.remote (deny, the \
             default) forbids",
            format!("remove enforcement from the remote config, {fix_local}"),
        ));
    }
    for f in ["remote", "bpffs", "nice"] {
        if rem.get(f).is_some() {
            return Err(refuse(
                format!(
                    "the remote config sets enforcement.{f}, which only the local file may set"
                ),
                format!("remove enforcement.{f} from the remote config"),
            ));
        }
    }
    let mut found = Vec::new();
    modes(rem, "enforcement", &mut found);
    for (path, v) in found {
        let Some(level) = mode_level(v) else {
            return Err(refuse(
                format!("the remote config sets {path} to {v:?}, which is not monitor or enforce"),
                "use monitor or enforce",
            ));
        };
        if allowed == RemoteEnforcement::Monitor && level > Mode::Monitor {
            return Err(refuse(
                format!(
                    "the remote config sets {path} to enforce, above what the local \
                     enforcement.remote (monitor) allows"
                ),
                format!("use monitor remotely, {fix_local}"),
            ));
        }
    }
    if allowed == RemoteEnforcement::Monitor {
        // Rules that inherit the global mode: what would it be after the merge?
        let global = rem
            .get("mode")
            .or_else(|| local_enf.and_then(|e| e.get("mode")))
            .and_then(mode_level)
            .unwrap_or_default();
        if global > Mode::Monitor {
            if let Some(Value::Sequence(rules)) = rem.get("rules") {
                if let Some((i, r)) = rules
                    .iter()
                    .enumerate()
                    .find(|(_, r)| r.get("mode").is_none())
                {
                    let name = r.get("name").and_then(Value::as_str).unwrap_or("?");
                    return Err(refuse(
                        format!(
                            "the remote rule enforcement.rules[{i}] ({name}) would run in enforce \
                             mode (it inherits the local enforcement.mode: enforce), above what \
                             the local enforcement.remote (monitor) allows"
                        ),
                        format!("give the remote rule mode: monitor, {fix_local}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The local file's text (the embedded default without one).
fn local_text(o: &Overrides) -> Result<(String, String), RemoteError> {
    match &o.config {
        Some(p) => std::fs::read_to_string(p)
            .map(|t| (t, p.display().to_string()))
            .map_err(|e| {
                refuse(
                    format!("cannot read the local config {}: {e}", p.display()),
                    "make the local config file readable",
                )
            }),
        None => Ok((
            DEFAULT_YAML.to_string(),
            crate::config::DEFAULT_ORIGIN.to_string(),
        )),
    }
}

fn parse_cfg(v: Value, origin: &str) -> Result<Config, RemoteError> {
    serde_yaml_ng::from_value(v).map_err(|e| {
        refuse(
            format!("{origin}: {e}"),
            "see the comments in the default config (`agent config default`)",
        )
    })
}

/// The config the agent runs with `doc` over the local file (`None`: the local file alone),
/// flags and `AGENT_*` variables applied, validated.
pub fn merged_config(o: &Overrides, doc: Option<&RemoteDoc>) -> Result<Config, RemoteError> {
    let Some(doc) = doc else {
        return o.load().map_err(|e| refuse(e.cause(), e.fix()));
    };
    let (text, origin) = local_text(o)?;
    let local = mapping(&text, &origin)?;
    let remote = mapping(&doc.body, ORIGIN)?;
    bound_enforcement(&local, &remote)?;
    // On its own first: positions in the remote text, ranges of what it sets.
    Config::from_yaml(&doc.body, ORIGIN).map_err(|e| refuse(e.cause(), e.fix()))?;
    let local_cfg = parse_cfg(local.clone(), &origin)?;
    let mut merged = local;
    merge(&mut merged, remote);
    let merged_cfg = parse_cfg(merged, ORIGIN)?;
    local_only(&local_cfg, &merged_cfg)?;
    let mut cfg = merged_cfg;
    cfg.apply_env(|k| std::env::var(k).ok())
        .map_err(|e| refuse(e.cause(), e.fix()))?;
    o.apply_flags(&mut cfg);
    cfg.validate().map_err(|e| refuse(e.cause(), e.fix()))?;
    Ok(cfg)
}

/// Refuses remote changes to the local-only settings.
fn local_only(local: &Config, merged: &Config) -> Result<(), RemoteError> {
    let mut changed = Vec::new();
    if local.status.listen != merged.status.listen {
        changed.push("status.listen");
    }
    if local.output.dir != merged.output.dir {
        changed.push("output.dir");
    }
    if local.export.spool.dir != merged.export.spool.dir {
        changed.push("export.spool.dir");
    }
    if local.opamp != merged.opamp {
        changed.push("opamp");
    }
    if changed.is_empty() {
        return Ok(());
    }
    Err(refuse(
        format!(
            "the remote config changes {}, which only the local file may set",
            changed.join(", ")
        ),
        "remove them from the remote config (OpAMP connection changes come as connection \
         settings offers)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(files: &[(&str, &str, &str)]) -> pb::AgentRemoteConfig {
        pb::AgentRemoteConfig {
            config: Some(pb::AgentConfigMap {
                config_map: files
                    .iter()
                    .map(|(k, ct, body)| {
                        (
                            k.to_string(),
                            pb::AgentConfigFile {
                                body: body.as_bytes().to_vec(),
                                content_type: ct.to_string(),
                            },
                        )
                    })
                    .collect(),
            }),
            config_hash: vec![1, 2, 3],
        }
    }

    fn y(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn offers_one_yaml_file() {
        for ct in [
            "application/yaml",
            "text/yaml",
            "application/x-yaml",
            "",
            "text/yaml; charset=utf-8",
        ] {
            let d = from_offer(&offer(&[("x", ct, "log: {level: debug}\n")])).unwrap();
            assert_eq!((d.key.as_str(), d.hash.as_slice()), ("x", &[1u8, 2, 3][..]));
        }
        let e = from_offer(&offer(&[("a", "", "x: 1"), ("b", "", "y: 2")])).unwrap_err();
        assert_eq!(
            e.cause,
            "the remote config has 2 files (a, b); the agent takes one"
        );
        let e = from_offer(&offer(&[("c", "application/json", "{}")])).unwrap_err();
        assert!(e.cause.contains("not YAML"), "{e}");
        assert!(from_offer(&offer(&[])).is_err());
    }

    #[test]
    fn merge_is_by_key_and_replaces_leaves_and_lists() {
        let mut base = y("probes: {syscalls: {enabled: true, interval: 5s}, network: {enabled: true}}\nlist: [1, 2]\n");
        merge(
            &mut base,
            y("probes: {syscalls: {interval: 1s}}\nlist: [3]\n"),
        );
        assert_eq!(
            base,
            y("probes: {syscalls: {enabled: true, interval: 1s}, network: {enabled: true}}\nlist: [3]\n")
        );
    }

    #[test]
    fn enforcement_is_bounded_by_the_local_setting() {
        let remote = y("enforcement: {mode: monitor, rules: [{name: a, mode: enforce}]}");
        let monitor_only = y("enforcement: {mode: monitor}");
        // deny, the default: no enforcement at all.
        let e = bound_enforcement(&y("log: {}"), &monitor_only).unwrap_err();
        assert!(e.cause.contains("(deny, the default) forbids"), "{e}");
        assert!(bound_enforcement(&y("enforcement: {remote: deny}"), &monitor_only).is_err());
        // monitor: modes up to monitor, wherever they are.
        let local = y("enforcement: {remote: monitor, mode: enforce}");
        assert_eq!(bound_enforcement(&local, &monitor_only), Ok(()));
        let e = bound_enforcement(&local, &remote).unwrap_err();
        assert!(e.cause.contains("enforcement.rules[0].mode"), "{e}");
        // A remote rule without a mode inherits the local global enforce: refused...
        let rule = "{name: r, when: {signal: process.syscall.rate, above: 1}, scope: {pid: 9}, action: {type: alert}}";
        let e = bound_enforcement(&local, &y(&format!("enforcement: {{rules: [{rule}]}}")))
            .unwrap_err();
        assert!(
            e.cause
                .contains("enforcement.rules[0] (r) would run in enforce mode"),
            "{e}"
        );
        // ...unless the remote config sets the global mode to monitor or the rule's own.
        let ok = format!("enforcement: {{mode: monitor, rules: [{rule}]}}");
        assert_eq!(bound_enforcement(&local, &y(&ok)), Ok(()));
        let local_monitor = y("enforcement: {remote: monitor}");
        let ok = format!("enforcement: {{rules: [{rule}]}}");
        assert_eq!(bound_enforcement(&local_monitor, &y(&ok)), Ok(()));
        // enforce: anything but the local-only fields.
        let local = y("enforcement: {remote: enforce}");
        assert_eq!(bound_enforcement(&local, &remote), Ok(()));
        assert!(bound_enforcement(&local, &y("enforcement: {remote: enforce}")).is_err());
        assert!(bound_enforcement(&local, &y("enforcement: {bpffs: /tmp}")).is_err());
        // The agent's own scheduling priority is the host's to set.
        let e = bound_enforcement(&local, &y("enforcement: {nice: -20}")).unwrap_err();
        assert!(e.to_string().contains("enforcement.nice"), "{e}");
        assert!(bound_enforcement(&local, &y("enforcement: {mode: maybe}")).is_err());
        assert!(bound_enforcement(&local, &y("enforcement: {mode: off}")).is_err());
        assert!(bound_enforcement(&y("enforcement: {remote: sometimes}"), &monitor_only).is_err());
        // No enforcement in the remote config: nothing to bound.
        assert_eq!(bound_enforcement(&y("{}"), &y("probes: {}")), Ok(()));
    }

    #[test]
    fn a_remote_config_switches_modes_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let rule = "  rules:\n    - name: r\n      when: {signal: process.syscall.rate, above: 1}\n      scope: {executable: x}\n      action: {type: alert}\n";
        let o = overrides(
            dir.path(),
            &format!("enforcement:\n  remote: enforce\n  mode: monitor\n{rule}"),
        );
        let c = merged_config(&o, Some(&doc("enforcement: {mode: enforce}\n"))).unwrap();
        assert_eq!(c.enforcement.mode, crate::enforcement::Mode::Enforce);
        assert_eq!(
            c.enforcement.rules.len(),
            1,
            "rules kept from the local file"
        );
        let o = overrides(
            dir.path(),
            &format!("enforcement:\n  remote: monitor\n  mode: monitor\n{rule}"),
        );
        let e = merged_config(&o, Some(&doc("enforcement: {mode: enforce}\n"))).unwrap_err();
        assert!(
            e.cause
                .contains("above what the local enforcement.remote (monitor) allows"),
            "{e}"
        );
        // An invalid remote rule is refused with its own line.
        let o = overrides(dir.path(), "enforcement: {remote: enforce}\n");
        let e = merged_config(
            &o,
            Some(&doc("enforcement:\n  rules:\n    - name: r\n      when: {signal: nope, above: 1}\n      action: {type: alert}\n")),
        )
        .unwrap_err();
        assert!(e.cause.starts_with("remote config:4:"), "{e}");
        assert!(e.cause.contains("enforcement.rules[0].when.signal"), "{e}");
    }

    fn overrides(dir: &std::path::Path, local: &str) -> Overrides {
        let p = dir.join("agent.yaml");
        std::fs::write(&p, local).unwrap();
        Overrides {
            config: Some(p),
            ..Default::default()
        }
    }

    fn doc(body: &str) -> RemoteDoc {
        RemoteDoc {
            hash: vec![9],
            key: String::new(),
            content_type: "application/yaml".into(),
            body: body.into(),
        }
    }

    #[test]
    fn merged_over_the_local_file_flags_win_local_only_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = overrides(
            dir.path(),
            "probes:\n  syscalls: {interval: 7s}\n  profiler: {frequency: 19}\noutput: {dir: /tmp/x}\n",
        );
        o.status_addr = Some("127.0.0.1:1".parse().unwrap());
        let c = merged_config(&o, Some(&doc("probes:\n  profiler: {frequency: 99}\n"))).unwrap();
        assert_eq!(c.probes.profiler.frequency, 99);
        assert_eq!(
            c.probes.syscalls.interval,
            std::time::Duration::from_secs(7)
        );
        assert_eq!(c.status.listen.port(), 1, "the flag still wins");
        // The same local-only value is no change; another one is refused.
        assert!(merged_config(&o, Some(&doc("output: {dir: /tmp/x}\n"))).is_ok());
        let e = merged_config(
            &o,
            Some(&doc(
                "output: {dir: /tmp/y}\nstatus: {listen: '0.0.0.0:1'}\n",
            )),
        )
        .unwrap_err();
        assert_eq!(
            e.cause,
            "the remote config changes status.listen, output.dir, which only the local file may set"
        );
        assert!(
            merged_config(&o, Some(&doc("opamp: {endpoint: 'ws://evil/v1/opamp'}\n"))).is_err()
        );
        assert!(merged_config(&o, Some(&doc("export: {spool: {dir: /tmp/s}}\n"))).is_err());
    }

    #[test]
    fn invalid_remote_configs_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let o = overrides(dir.path(), "");
        let e =
            merged_config(&o, Some(&doc("probes:\n  syscalls:\n    interval: 0s\n"))).unwrap_err();
        assert_eq!(
            e.cause,
            "remote config:3:15: probes.syscalls.interval: 0s is out of range"
        );
        assert!(e.fix.starts_with("use a duration"), "{e}");
        let e = merged_config(&o, Some(&doc("probes:\n  syscals: {}\n"))).unwrap_err();
        assert!(e.cause.contains("unknown field probes.syscals"), "{e}");
        let e = merged_config(&o, Some(&doc("enforcement: {mode: enforce}\n"))).unwrap_err();
        assert!(e.cause.contains("enforcement.remote"), "{e}");
        let e = merged_config(&o, Some(&doc("- a\n- b\n"))).unwrap_err();
        assert!(e.cause.contains("not a mapping"), "{e}");
        // An empty remote config is the local file.
        assert_eq!(
            merged_config(&o, Some(&doc(""))).unwrap(),
            o.load().unwrap()
        );
    }
}
