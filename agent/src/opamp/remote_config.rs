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

/// Levels of `enforcement.remote`, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteEnforcement {
    /// A remote config may not contain `enforcement` at all (the default).
    Deny,
    /// It may set modes up to `monitor` (act in dry run: report, never act).
    Monitor,
    /// It may set any mode.
    Enforce,
}

/// The level of a mode word: `off`/`disabled`/`false` < `monitor` < `enforce`.
fn mode_level(v: &Value) -> Option<u8> {
    match v {
        Value::Bool(false) => Some(0),
        Value::String(s) => match s.as_str() {
            "off" | "disabled" | "none" => Some(0),
            "monitor" | "dry_run" | "dry-run" => Some(1),
            "enforce" => Some(2),
            _ => None,
        },
        _ => None,
    }
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
/// (`deny` when absent) caps a remote config's `enforcement` subtree. `deny`: the remote config
/// may not contain `enforcement`. `monitor`: every `mode` under `enforcement` (the engine's
/// `enforcement.mode` and each rule's `mode`, wherever the rules sit) must be `off` or
/// `monitor`. `enforce`: any mode. At every level `enforcement.remote` itself is local-only.
/// Works on the YAML values, so it holds whatever shape the enforcement section takes.
pub fn bound_enforcement(local: &Value, remote: &Value) -> Result<(), RemoteError> {
    let Some(rem) = remote.get("enforcement") else {
        return Ok(());
    };
    let allowed = match local.get("enforcement").and_then(|e| e.get("remote")) {
        None => RemoteEnforcement::Deny,
        Some(Value::String(s)) if s == "deny" => RemoteEnforcement::Deny,
        Some(Value::String(s)) if s == "monitor" => RemoteEnforcement::Monitor,
        Some(Value::String(s)) if s == "enforce" => RemoteEnforcement::Enforce,
        Some(other) => {
            return Err(refuse(
                format!("local enforcement.remote is {other:?}, not deny, monitor or enforce; remote enforcement settings are refused"),
                "set enforcement.remote to deny, monitor or enforce in the local file",
            ))
        }
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
    if rem.get("remote").is_some() {
        return Err(refuse(
            "the remote config sets enforcement.remote, which only the local file may set",
            "remove enforcement.remote from the remote config",
        ));
    }
    let mut found = Vec::new();
    modes(rem, "enforcement", &mut found);
    for (path, v) in found {
        let Some(level) = mode_level(v) else {
            return Err(refuse(
                format!(
                    "the remote config sets {path} to {v:?}, which is not off, monitor or enforce"
                ),
                "use off, monitor or enforce",
            ));
        };
        if allowed == RemoteEnforcement::Monitor && level > 1 {
            return Err(refuse(
                format!(
                    "the remote config sets {path} to enforce, above what the local \
                     enforcement.remote (monitor) allows"
                ),
                format!("use monitor or off remotely, {fix_local}"),
            ));
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
        assert_eq!(
            bound_enforcement(&local, &y("enforcement: {mode: off}")),
            Ok(())
        );
        let e = bound_enforcement(&local, &remote).unwrap_err();
        assert!(e.cause.contains("enforcement.rules[0].mode"), "{e}");
        let e = bound_enforcement(&local, &y("enforcement: {rules: {a: {mode: enforce}}}"))
            .unwrap_err();
        assert!(e.cause.contains("enforcement.rules.a.mode"), "{e}");
        // enforce: anything but enforcement.remote itself.
        let local = y("enforcement: {remote: enforce}");
        assert_eq!(bound_enforcement(&local, &remote), Ok(()));
        assert!(bound_enforcement(&local, &y("enforcement: {remote: enforce}")).is_err());
        assert!(bound_enforcement(&local, &y("enforcement: {mode: maybe}")).is_err());
        // No enforcement in the remote config: nothing to bound.
        assert_eq!(bound_enforcement(&y("{}"), &y("probes: {}")), Ok(()));
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
