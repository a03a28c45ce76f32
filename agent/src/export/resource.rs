//! The OTLP resource every export carries: the host, the Kubernetes node and pod when the
//! downward API sets them, and the agent's own identity.
//!
//! Sources: `host.name` (uname), `host.id` (`/etc/machine-id`), `os.type` = linux,
//! `k8s.node.name` / `k8s.pod.name` / `k8s.pod.uid` / `k8s.namespace.name` from `K8S_NODE_NAME`
//! / `K8S_POD_NAME` / `K8S_POD_UID` / `K8S_NAMESPACE`, `service.name` (`OTEL_SERVICE_NAME`,
//! default `agent`), `service.version`, `service.instance.id` (a UUIDv7 kept in
//! `<output.dir>/instance-id` so restarts keep it, format in `crate::persist`; the same id is
//! the OpAMP `instance_uid`), then `OTEL_RESOURCE_ATTRIBUTES` (which never overrides the
//! detected keys above).

use std::path::Path;

use crate::persist;

use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, KeyValue},
    resource::v1::Resource,
};

/// An OTLP attribute with any value.
pub fn kv_value(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    kv_value(key, any_value::Value::StringValue(value.into()))
}

/// A typed metric attribute as an OTLP value.
pub fn attr_value(value: &crate::metrics::model::AttrValue) -> any_value::Value {
    use crate::metrics::model::AttrValue;
    match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    }
}

/// A typed metric attribute as an OTLP `KeyValue`.
pub fn kv_attr(key: &str, value: &crate::metrics::model::AttrValue) -> KeyValue {
    kv_value(key, attr_value(value))
}

pub fn kv_int(key: &str, value: i64) -> KeyValue {
    kv_value(key, any_value::Value::IntValue(value))
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

/// The file under the output directory that holds the instance id (one id for OTLP's
/// `service.instance.id` and OpAMP's `instance_uid`).
pub const INSTANCE_ID_FILE: &str = "instance-id";

/// What an `instance-id` file holds.
#[derive(Debug, PartialEq, Eq)]
enum StoredId {
    /// `agent-instance-id 1` then the UUID.
    Current(uuid::Uuid),
    /// A bare UUID: written before the file had a format line.
    Unversioned(uuid::Uuid),
    /// A format line of another version (a newer agent's): left alone.
    OtherVersion(String),
    /// Empty, torn or foreign: replaced.
    Invalid,
}

fn parse_stored_id(text: &str) -> StoredId {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    if let Ok(id) = uuid::Uuid::try_parse(first) {
        if lines.all(|l| l.trim().is_empty()) {
            return StoredId::Unversioned(id);
        }
        return StoredId::Invalid;
    }
    match persist::INSTANCE_ID.check(first) {
        persist::Found::Current => match lines.next().map(|l| uuid::Uuid::try_parse(l.trim())) {
            Some(Ok(id)) => StoredId::Current(id),
            _ => StoredId::Invalid,
        },
        persist::Found::Older(_) => StoredId::Invalid,
        persist::Found::Unknown(line) if first.starts_with(persist::INSTANCE_ID.name) => {
            StoredId::OtherVersion(line)
        }
        persist::Found::Unknown(_) => StoredId::Invalid,
    }
}

fn new_uuid() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

/// Replaces the stored instance id (e.g. with an OpAMP server's `new_instance_uid`), in the
/// versioned format, atomically (a crash leaves the old id or the new one).
pub fn store_instance_id(dir: &Path, id: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = format!("{}{id}\n", persist::INSTANCE_ID.line());
    persist::write_atomic(&dir.join(INSTANCE_ID_FILE), text.as_bytes())
}

/// The instance id stored in `dir/instance-id` (format: `persist::INSTANCE_ID`), created on
/// first use as a UUIDv7 (RFC 9562, as OpAMP asks for `instance_uid`). A stored id of another
/// UUID version (agents before OpAMP wrote a v4) is replaced by a new v7 once, and the change
/// logged; an unversioned file (a bare UUID) is rewritten with the format line; a file of
/// another format version is left alone and this run uses a fresh id; a fresh one also when the
/// directory cannot be written.
pub fn instance_id(dir: &Path) -> String {
    let file = dir.join(INSTANCE_ID_FILE);
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
    let (found, current) = match stored {
        StoredId::Current(id) => (Some(id), true),
        StoredId::Unversioned(id) => (Some(id), false),
        StoredId::OtherVersion(line) => {
            tracing::warn!(
                "{} has format {line:?}, this agent reads {:?}: left as it is; this run uses a fresh instance id",
                file.display(),
                persist::INSTANCE_ID.line().trim_end()
            );
            return new_uuid();
        }
        StoredId::Invalid => (None, false),
    };
    let id = match found {
        Some(id) if id.get_version_num() == 7 => {
            let id = id.hyphenated().to_string();
            if current {
                return id;
            }
            id
        }
        Some(old) => {
            let id = new_uuid();
            tracing::info!(
                old = %old,
                new = %id,
                "instance id migrated to a UUIDv7 (service.instance.id and the OpAMP instance_uid)"
            );
            id
        }
        None => new_uuid(),
    };
    if let Err(e) = store_instance_id(dir, &id) {
        tracing::warn!(
            "cannot keep the instance id in {}: {e}; it changes at every start",
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
    fn instance_id_is_a_kept_uuid_v7() {
        let dir = tempfile::tempdir().unwrap();
        let a = instance_id(dir.path());
        assert_eq!(a.len(), 36);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 7);
        assert_eq!(instance_id(dir.path()), a);
        store_instance_id(dir.path(), "01900000-0000-7000-8000-000000000001").unwrap();
        assert_eq!(
            instance_id(dir.path()),
            "01900000-0000-7000-8000-000000000001"
        );
    }

    #[test]
    fn a_v4_instance_id_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let v4 = "0b6f3a1e-4c2d-4e8f-9a7b-123456789abc";
        std::fs::write(dir.path().join(INSTANCE_ID_FILE), format!("{v4}\n")).unwrap();
        let a = instance_id(dir.path());
        assert_ne!(a, v4);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 7);
        assert_eq!(instance_id(dir.path()), a);
        let text = std::fs::read_to_string(dir.path().join("instance-id")).unwrap();
        assert_eq!(text, format!("agent-instance-id 1\n{a}\n"));
    }

    #[test]
    fn instance_id_formats() {
        let is_uuid = |s: &str| uuid::Uuid::try_parse(s).is_ok();
        // A v7 id (a v4 one would be migrated, see above).
        const ID: &str = "0190a1b2-c3d4-7e5f-8a9b-0123456789ab";
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
            StoredId::Unversioned(uuid::Uuid::try_parse(ID).unwrap())
        );
    }
}
