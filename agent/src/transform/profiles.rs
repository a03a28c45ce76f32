//! `profile_statements` (resource context) on profiles: the resource of each profiled process
//! in OTLP profiles requests, and, for the pprof files written when profiles have no endpoint,
//! the same statements on a resource built from each process (`process.pid`,
//! `process.executable.name`, `process.executable.path`, `process.executable.build_id.gnu`,
//! `container.id`, `host.name`) whose results are written back to the labels pprof carries.

use std::borrow::Cow;

use opentelemetry_proto::tonic::{
    collector::profiles::v1development::ExportProfilesServiceRequest, common::v1::KeyValue,
};

use super::{resource_groups, Propagated, Run, Transformer};
use crate::{
    ottl::{attrs::AttrMap, Value},
    profile::Profile,
};

impl Transformer {
    /// Applies the resource statements to every resource of `req`.
    pub fn profile_request(
        &self,
        req: &mut ExportProfilesServiceRequest,
        now_unix_nano: u64,
    ) -> Result<(), Propagated> {
        let p = self.pipeline();
        if p.profile_groups.is_empty() {
            return Ok(());
        }
        let mut run = Run::new(self, "profiles");
        let result = req.resource_profiles.iter_mut().try_for_each(|rp| {
            let res = rp.resource.get_or_insert_with(Default::default);
            resource_groups(
                &mut run,
                &p.profile_groups,
                &mut res.attributes,
                now_unix_nano,
            )
        });
        run.finish();
        result
    }

    /// `p` with each process's identity transformed as its resource would be.
    pub fn profile_for_pprof<'a>(
        &self,
        p: &'a Profile,
        now_unix_nano: u64,
    ) -> Result<Cow<'a, Profile>, Propagated> {
        let pl = self.pipeline();
        if pl.profile_groups.is_empty() {
            return Ok(Cow::Borrowed(p));
        }
        let mut run = Run::new(self, "profiles");
        let mut out = p.clone();
        let result = out.processes.iter_mut().try_for_each(|proc_| {
            let mut attrs: Vec<KeyValue> = Vec::new();
            let s = |x: &str| Value::str(x.to_string());
            let _ = attrs.put("process.pid", Value::Int(i64::from(proc_.pid)));
            let _ = attrs.put("process.executable.name", s(&proc_.executable_name));
            if let Some(x) = &proc_.executable_path {
                let _ = attrs.put("process.executable.path", s(x));
            }
            if let Some(x) = &proc_.build_id {
                let _ = attrs.put("process.executable.build_id.gnu", s(x));
            }
            if let Some(x) = &proc_.container_id {
                let _ = attrs.put("container.id", s(x));
            }
            let _ = attrs.put("host.name", s(&p.host_name));
            resource_groups(&mut run, &pl.profile_groups, &mut attrs, now_unix_nano)?;
            let text = |k: &str| match attrs.get(k) {
                Some(Value::Str(v)) => Some(v.into_owned()),
                Some(other) => crate::ottl::value::string_like(&other),
                None => None,
            };
            proc_.pid = match attrs.get("process.pid") {
                Some(Value::Int(i)) => u32::try_from(i).unwrap_or(0),
                _ => 0,
            };
            proc_.executable_name = text("process.executable.name").unwrap_or_default();
            proc_.executable_path = text("process.executable.path");
            proc_.build_id = text("process.executable.build_id.gnu");
            proc_.container_id = text("container.id");
            Ok(())
        });
        run.finish();
        result.map(|()| Cow::Owned(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        profile::ProcessProfile,
        transform::{FilterConfig, Pipeline, TransformConfig},
    };

    #[test]
    fn process_resources_are_redacted_in_both_outputs() {
        let t: TransformConfig = serde_yaml_ng::from_str(
            "profile_statements:\n  - context: resource\n    statements:\n      - set(attributes[\"process.executable.name\"], SHA256(attributes[\"process.executable.name\"])) where attributes[\"process.executable.name\"] == \"secretproc\"\n      - delete_key(attributes, \"container.id\")\n",
        )
        .unwrap();
        let tr = Transformer::new(Pipeline::compile(&t, &FilterConfig::default()).unwrap());
        let p = Profile {
            host_name: "h".into(),
            processes: vec![ProcessProfile {
                pid: 7,
                executable_name: "secretproc".into(),
                container_id: Some("c".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = tr.profile_for_pprof(&p, 0).unwrap();
        let want = crate::ottl::functions::converters::StrFn::Sha256.apply("secretproc");
        assert_eq!(out.processes[0].executable_name, want);
        assert_eq!(out.processes[0].container_id, None);
        assert_eq!(out.processes[0].pid, 7);
        let mut req = crate::profile::otlp::encode(&p, &[]);
        tr.profile_request(&mut req, 0).unwrap();
        let attrs = &req.resource_profiles[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert_eq!(
            attrs.get("process.executable.name"),
            Some(Value::str(want.as_str()))
        );
        assert_eq!(attrs.get("container.id"), None);
    }
}
