//! What the agent says about itself: the AgentDescription (the OTLP resource's attributes, split
//! into identifying and non-identifying as the spec suggests, plus `host.arch`) and the
//! EffectiveConfig (the running config as YAML, secrets redacted).

use serde_yaml_ng::Value;

use super::wire::pb;
use crate::config::Config;

/// Resource attributes that identify the agent (OpAMP "identifying_attributes"); the rest of the
/// resource describes where it runs.
const IDENTIFYING: &[&str] = &[
    "service.name",
    "service.namespace",
    "service.version",
    "service.instance.id",
];

/// What replaces a secret in the effective config.
pub const REDACTED: &str = "<redacted>";

/// The effective config's file name in the AgentConfigMap.
pub const EFFECTIVE_CONFIG_KEY: &str = "agent.yaml";

fn kv(key: &str, value: &str) -> pb::KeyValue {
    pb::KeyValue {
        key: key.to_string(),
        value: Some(pb::AnyValue {
            value: Some(pb::any_value::Value::StringValue(value.to_string())),
        }),
    }
}

/// `host.arch` by the semantic conventions' names.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "arm" => "arm32",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

/// The description for `instance_id`: `service.name`, `service.version`, `service.instance.id`
/// (identifying); `host.name`, `host.id`, `os.type`, `host.arch`, the k8s attributes and
/// `OTEL_RESOURCE_ATTRIBUTES` (non-identifying). `get` reads environment variables.
pub fn description(
    instance_id: &str,
    get: impl Fn(&str) -> Option<String>,
) -> pb::AgentDescription {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    let resource = crate::export::resource::build(instance_id, get);
    let mut d = pb::AgentDescription::default();
    for a in &resource.attributes {
        let text = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(V::StringValue(s)) => s.clone(),
            Some(V::IntValue(i)) => i.to_string(),
            Some(V::BoolValue(b)) => b.to_string(),
            Some(V::DoubleValue(f)) => f.to_string(),
            _ => continue,
        };
        if IDENTIFYING.contains(&a.key.as_str()) {
            d.identifying_attributes.push(kv(&a.key, &text));
        } else {
            d.non_identifying_attributes.push(kv(&a.key, &text));
        }
    }
    d.non_identifying_attributes
        .push(kv("host.arch", host_arch()));
    d
}

/// Replaces the values of every header mapping (`export.headers`, `opamp.headers`) with
/// [`REDACTED`].
fn redact(v: &mut Value) {
    for section in ["export", "opamp"] {
        if let Some(Value::Mapping(h)) = v.get_mut(section).and_then(|s| s.get_mut("headers")) {
            for (_, val) in h.iter_mut() {
                *val = Value::String(REDACTED.to_string());
            }
        }
    }
}

/// The running config as YAML, header values redacted.
pub fn effective_yaml(cfg: &Config) -> String {
    let mut v = serde_yaml_ng::to_value(cfg).expect("a Config always serializes");
    redact(&mut v);
    serde_yaml_ng::to_string(&v).expect("a YAML value always serializes")
}

/// The EffectiveConfig message for `cfg`.
pub fn effective_config(cfg: &Config) -> pb::EffectiveConfig {
    let mut map = std::collections::HashMap::new();
    map.insert(
        EFFECTIVE_CONFIG_KEY.to_string(),
        pb::AgentConfigFile {
            body: effective_yaml(cfg).into_bytes(),
            content_type: "text/yaml".to_string(),
        },
    );
    pb::EffectiveConfig {
        config_map: Some(pb::AgentConfigMap { config_map: map }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(kvs: &'a [pb::KeyValue], key: &str) -> Option<&'a str> {
        kvs.iter()
            .find(|k| k.key == key)
            .and_then(|k| match k.value.as_ref()?.value.as_ref()? {
                pb::any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            })
    }

    #[test]
    fn identifying_and_descriptive_attributes() {
        let env = |k: &str| (k == "K8S_NODE_NAME").then(|| "node-7".to_string());
        let d = description("01900000-0000-7000-8000-000000000001", env);
        let id = &d.identifying_attributes;
        assert_eq!(value(id, "service.name"), Some("agent"));
        assert_eq!(value(id, "service.version"), Some(crate::VERSION));
        assert_eq!(
            value(id, "service.instance.id"),
            Some("01900000-0000-7000-8000-000000000001")
        );
        let rest = &d.non_identifying_attributes;
        assert_eq!(value(rest, "os.type"), Some("linux"));
        assert_eq!(value(rest, "k8s.node.name"), Some("node-7"));
        assert_eq!(value(rest, "host.arch"), Some(host_arch()));
        assert!(value(rest, "host.name").is_some());
        assert!(value(id, "host.name").is_none());
    }

    #[test]
    fn effective_config_redacts_headers_and_parses_back() {
        let mut c = Config::default();
        c.export
            .headers
            .insert("authorization".into(), "Bearer secret".into());
        c.opamp.headers.insert("x-token".into(), "t0p".into());
        let y = effective_yaml(&c);
        assert!(!y.contains("secret") && !y.contains("t0p"), "{y}");
        assert!(y.contains(REDACTED));
        let back = Config::from_yaml(&y, "effective").unwrap();
        assert_eq!(back.probes, c.probes);
        assert_eq!(back.export.headers["authorization"], REDACTED);
        let e = effective_config(&c);
        let f = &e.config_map.unwrap().config_map[EFFECTIVE_CONFIG_KEY];
        assert_eq!(f.content_type, "text/yaml");
    }
}
