//! The OTLP resource every export carries: the host, the Kubernetes node and pod when the
//! downward API sets them, and the agent's own identity.
//!
//! Sources: `host.name` (uname), `host.id` (`/etc/machine-id`), `os.type` = linux,
//! `k8s.node.name` / `k8s.pod.name` / `k8s.pod.uid` / `k8s.namespace.name` from `K8S_NODE_NAME`
//! / `K8S_POD_NAME` / `K8S_POD_UID` / `K8S_NAMESPACE`, `service.name` (`OTEL_SERVICE_NAME`,
//! default `agent`), `service.version`, `service.instance.id` (a UUID kept in the spool
//! directory so restarts keep it), then `OTEL_RESOURCE_ATTRIBUTES` (which never overrides the
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

/// The instance id stored in `dir/instance-id`, created on first use; a fresh one when the
/// directory cannot be written.
pub fn instance_id(dir: &Path) -> String {
    let file = dir.join("instance-id");
    if let Ok(s) = std::fs::read_to_string(&file) {
        let s = s.trim().to_string();
        if s.len() == 36 {
            return s;
        }
    }
    let id = new_uuid();
    let _ = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&file, &id));
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
        assert_eq!(a.len(), 36);
        assert_eq!(instance_id(dir.path()), a);
    }
}
