//! The OTLP resource every export carries: the host, the Kubernetes node and pod when the
//! downward API sets them, and the agent's own identity.
//!
//! Sources: `host.name` (uname), `host.id` (`/etc/machine-id`), `os.type` = linux,
//! `k8s.node.name` / `k8s.pod.name` / `k8s.pod.uid` / `k8s.namespace.name` from `K8S_NODE_NAME`
//! / `K8S_POD_NAME` / `K8S_POD_UID` / `K8S_NAMESPACE`, `service.name` (`OTEL_SERVICE_NAME`,
//! default `agent`), `service.version`, `service.instance.id` (a UUID kept in
//! `<output.dir>/instance-id` so restarts keep it; format in `crate::persist`), then
//! `OTEL_RESOURCE_ATTRIBUTES` (which never overrides the detected keys above).

use std::path::Path;

use crate::persist;

use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, KeyValue},
    resource::v1::Resource,
};

pub fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A typed metric attribute as an OTLP `KeyValue`.
pub fn kv_attr(key: &str, value: &crate::metrics::model::AttrValue) -> KeyValue {
    use crate::metrics::model::AttrValue;
    let v = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// This host's name (`host.name`), from the kernel.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A random UUID (v4) from the kernel's generator.
fn new_uuid() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
    raw.trim().to_string()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// What an `instance-id` file holds.
#[derive(Debug, PartialEq, Eq)]
enum StoredId {
    /// `agent-instance-id 1` then the UUID.
    Current(String),
    /// A bare UUID: written before the file had a format line; rewritten as `Current`.
    Unversioned(String),
    /// A format line of another version (a newer agent's): left alone.
    OtherVersion(String),
    /// Empty, torn or foreign: replaced.
    Invalid,
}

fn parse_stored_id(text: &str) -> StoredId {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    if is_uuid(first) && lines.all(|l| l.trim().is_empty()) {
        return StoredId::Unversioned(first.to_ascii_lowercase());
    }
    match persist::INSTANCE_ID.check(first) {
        persist::Found::Current => match lines.next().map(str::trim) {
            Some(id) if is_uuid(id) => StoredId::Current(id.to_ascii_lowercase()),
            _ => StoredId::Invalid,
        },
        persist::Found::Older(_) => StoredId::Invalid,
        persist::Found::Unknown(line) if first.starts_with(persist::INSTANCE_ID.name) => {
            StoredId::OtherVersion(line)
        }
        persist::Found::Unknown(_) => StoredId::Invalid,
    }
}

fn write_id(file: &Path, id: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = format!("{}{id}\n", persist::INSTANCE_ID.line());
    persist::write_atomic(file, text.as_bytes())
}

/// The instance id stored in `dir/instance-id` (format: `persist::INSTANCE_ID`), created on
/// first use; an unversioned file (a bare UUID) keeps its id and is rewritten with the format
/// line; a file of another format version is left alone and this run uses a fresh id; a fresh
/// one also when the directory cannot be written.
pub fn instance_id(dir: &Path) -> String {
    let file = dir.join("instance-id");
    let stored = match std::fs::read_to_string(&file) {
        Ok(text) => parse_stored_id(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoredId::Invalid,
        Err(e) => {
            tracing::warn!(
                "cannot read {}: {e}; using a fresh instance id",
                file.display()
            );
            return new_uuid();
        }
    };
    let id = match stored {
        StoredId::Current(id) => return id,
        StoredId::Unversioned(id) => id,
        StoredId::OtherVersion(line) => {
            tracing::warn!(
                "{} has format {line:?}, this agent reads {:?}: left as it is; this run uses a fresh instance id",
                file.display(),
                persist::INSTANCE_ID.line().trim_end()
            );
            return new_uuid();
        }
        StoredId::Invalid => new_uuid(),
    };
    if let Err(e) = write_id(&file, &id) {
        tracing::warn!(
            "cannot write {}: {e}; the instance id changes at restart",
            file.display()
        );
    }
    id
}

/// Builds the resource; `get` reads environment variables.
pub fn build(instance_id: &str, get: impl Fn(&str) -> Option<String>) -> Resource {
    let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let mut attrs = vec![
        kv(
            "service.name",
            get("OTEL_SERVICE_NAME").unwrap_or_else(|| "agent".into()),
        ),
        kv("service.version", crate::VERSION),
        kv("service.instance.id", instance_id),
        kv("host.name", host_name()),
        kv("os.type", "linux"),
    ];
    if let Some(id) = machine_id() {
        attrs.push(kv("host.id", id));
    }
    for (var, key) in [
        ("K8S_NODE_NAME", "k8s.node.name"),
        ("K8S_POD_NAME", "k8s.pod.name"),
        ("K8S_POD_UID", "k8s.pod.uid"),
        ("K8S_NAMESPACE", "k8s.namespace.name"),
    ] {
        if let Some(v) = get(var) {
            attrs.push(kv(key, v));
        }
    }
    if let Some(extra) = get("OTEL_RESOURCE_ATTRIBUTES") {
        if let Ok(pairs) = super::settings::parse_headers(&extra) {
            for (k, v) in pairs {
                if !attrs.iter().any(|a| a.key == k) {
                    attrs.push(kv(&k, v));
                }
            }
        }
    }
    Resource {
        attributes: attrs,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(r: &'a Resource, key: &str) -> Option<&'a str> {
        r.attributes.iter().find(|a| a.key == key).and_then(|a| {
            match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    #[test]
    fn identity_k8s_and_extra_attributes() {
        let env = |k: &str| match k {
            "K8S_NODE_NAME" => Some("node-1".to_string()),
            "K8S_POD_UID" => Some("uid-9".to_string()),
            "OTEL_RESOURCE_ATTRIBUTES" => Some("team=net,service.name=nope".to_string()),
            _ => None,
        };
        let r = build("11111111-2222-3333-4444-555555555555", env);
        assert_eq!(value(&r, "service.name"), Some("agent"));
        assert_eq!(value(&r, "k8s.node.name"), Some("node-1"));
        assert_eq!(value(&r, "k8s.pod.uid"), Some("uid-9"));
        assert_eq!(value(&r, "k8s.pod.name"), None);
        assert_eq!(value(&r, "team"), Some("net"));
        assert_eq!(value(&r, "os.type"), Some("linux"));
        assert_eq!(
            value(&r, "service.instance.id"),
            Some("11111111-2222-3333-4444-555555555555")
        );
    }

    #[test]
    fn instance_id_is_kept_across_calls() {
        let dir = tempfile::tempdir().unwrap();
        let a = instance_id(dir.path());
        assert!(is_uuid(&a), "{a}");
        assert_eq!(instance_id(dir.path()), a);
        let text = std::fs::read_to_string(dir.path().join("instance-id")).unwrap();
        assert_eq!(text, format!("agent-instance-id 1\n{a}\n"));
    }

    #[test]
    fn instance_id_formats() {
        const ID: &str = "0c5e2d1a-1b2c-4d3e-8f90-123456789abc";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("instance-id");
        // Unversioned (agents before the format line): the id is kept, the file migrated.
        std::fs::write(&file, format!("{ID}\n")).unwrap();
        assert_eq!(instance_id(dir.path()), ID);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("agent-instance-id 1\n{ID}\n")
        );
        assert_eq!(instance_id(dir.path()), ID);
        // A newer agent's file: not misread, not overwritten.
        let newer = format!("agent-instance-id 2\n{{\"id\": \"{ID}\"}}\n");
        std::fs::write(&file, &newer).unwrap();
        let fresh = instance_id(dir.path());
        assert!(is_uuid(&fresh) && fresh != ID, "{fresh}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), newer);
        // Torn or foreign content: replaced by a fresh id, kept from then on.
        for bad in [
            "",
            "agent-instance-id 1\n",
            "agent-instance-id 1\nnot-a-uuid\n",
            "hello\n",
        ] {
            std::fs::write(&file, bad).unwrap();
            let id = instance_id(dir.path());
            assert!(is_uuid(&id), "{bad:?} -> {id}");
            assert_eq!(instance_id(dir.path()), id, "{bad:?}");
        }
        assert_eq!(
            parse_stored_id(&ID.to_uppercase()),
            StoredId::Unversioned(ID.into())
        );
    }
}
