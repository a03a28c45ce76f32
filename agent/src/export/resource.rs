//! The OTLP resource every export carries: the host, the Kubernetes node and pod when the
//! downward API sets them, and the agent's own identity.
//!
//! Sources: `host.name` (uname), `host.id` (`/etc/machine-id`), `os.type` = linux,
//! `k8s.node.name` / `k8s.pod.name` / `k8s.pod.uid` / `k8s.namespace.name` from `K8S_NODE_NAME`
//! / `K8S_POD_NAME` / `K8S_POD_UID` / `K8S_NAMESPACE`, `service.name` (`OTEL_SERVICE_NAME`,
//! default `agent`), `service.version`, `service.instance.id` (a UUIDv7 kept in `<output.dir>/instance-id`
//! so restarts keep it; the same id is the OpAMP `instance_uid`), then `OTEL_RESOURCE_ATTRIBUTES` (which never overrides the
//! detected keys above).

use std::path::Path;

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

/// The file under the output directory that holds the instance id (one id for OTLP's
/// `service.instance.id` and OpAMP's `instance_uid`).
pub const INSTANCE_ID_FILE: &str = "instance-id";

/// The instance id stored in `dir/instance-id` (canonical UUID text), created on first use as a
/// UUIDv7 (RFC 9562, as OpAMP asks for `instance_uid`). An id of another version (agents before
/// OpAMP wrote a v4) is replaced by a new v7 once, and the change logged. When the directory
/// cannot be written the id is fresh per call.
pub fn instance_id(dir: &Path) -> String {
    let file = dir.join(INSTANCE_ID_FILE);
    let old = std::fs::read_to_string(&file).ok();
    let parsed = old
        .as_deref()
        .and_then(|s| uuid::Uuid::try_parse(s.trim()).ok());
    if let Some(id) = parsed.filter(|u| u.get_version_num() == 7) {
        return id.hyphenated().to_string();
    }
    let id = uuid::Uuid::now_v7().hyphenated().to_string();
    match store_instance_id(dir, &id) {
        Ok(()) => {
            if let Some(old) = parsed {
                tracing::info!(
                    old = %old,
                    new = %id,
                    "instance id migrated to a UUIDv7 (service.instance.id and the OpAMP instance_uid)"
                );
            }
        }
        Err(e) => tracing::warn!(
            "cannot keep the instance id in {}: {e}; it changes at every start",
            file.display()
        ),
    }
    id
}

/// Replaces the stored instance id (e.g. with an OpAMP server's `new_instance_uid`): written to
/// a temporary file and renamed, so a crash leaves the old id or the new one.
pub fn store_instance_id(dir: &Path, id: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{INSTANCE_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, dir.join(INSTANCE_ID_FILE))
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
        let stored = std::fs::read_to_string(dir.path().join(INSTANCE_ID_FILE)).unwrap();
        assert_eq!(stored.trim(), a);
        assert_eq!(instance_id(dir.path()), a);
    }
}
