//! `log_statements` and `filter.logs.log_record` on the OTLP log requests the exporter built
//! (connection events), before they are spooled, sent or written: resource and scope groups once
//! per export, then per record the filter and the `log` groups in config order. Requests left
//! empty are dropped; the record counts are updated.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use super::{resource_groups, Propagated, Run, Transformer};
use crate::ottl::{Context, Env, Subject, Tcx};

impl Transformer {
    /// Transforms `requests` (request, record count) in place.
    pub fn logs(
        &self,
        requests: &mut Vec<(ExportLogsServiceRequest, u64)>,
        now_unix_nano: u64,
    ) -> Result<(), Propagated> {
        let p = self.pipeline();
        if p.logs_unchanged() || requests.is_empty() {
            return Ok(());
        }
        let mut run = Run::new(self, "logs");
        let result = (|| {
            for (req, n) in requests.iter_mut() {
                for rl in &mut req.resource_logs {
                    let mut res = rl.resource.take().unwrap_or_default();
                    resource_groups(&mut run, &p.log_groups, &mut res.attributes, now_unix_nano)?;
                    for sl in &mut rl.scope_logs {
                        let mut scope = sl.scope.take().unwrap_or_default();
                        for g in p.log_groups.iter().filter(|g| g.context == Context::Scope) {
                            let mut tcx = Tcx {
                                touched: false,
                                subject: Subject::Scope(&mut scope),
                                env: Env {
                                    resource: &res.attributes,
                                    scope: None,
                                    metric: None,
                                    now_unix_nano,
                                },
                            };
                            run.group(g, &mut tcx)?;
                        }
                        let env = Env {
                            resource: &res.attributes,
                            scope: Some(&scope),
                            metric: None,
                            now_unix_nano,
                        };
                        let mut kept = Vec::with_capacity(sl.log_records.len());
                        for mut rec in std::mem::take(&mut sl.log_records) {
                            let mut tcx = Tcx {
                                touched: false,
                                subject: Subject::Log(&mut rec),
                                env,
                            };
                            if run.filtered(&p.log_filters, p.filter_mode, &tcx)? {
                                continue;
                            }
                            for g in p.log_groups.iter().filter(|g| g.context == Context::Log) {
                                run.group(g, &mut tcx)?;
                            }
                            kept.push(rec);
                        }
                        sl.log_records = kept;
                        sl.scope = Some(scope);
                    }
                    rl.scope_logs.retain(|sl| !sl.log_records.is_empty());
                    rl.resource = Some(res);
                }
                req.resource_logs.retain(|rl| !rl.scope_logs.is_empty());
                *n = req
                    .resource_logs
                    .iter()
                    .flat_map(|rl| &rl.scope_logs)
                    .map(|sl| sl.log_records.len() as u64)
                    .sum();
            }
            requests.retain(|(_, n)| *n > 0);
            Ok(())
        })();
        run.finish();
        result
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use opentelemetry_proto::tonic::resource::v1::Resource;

    use crate::{
        export::logs::encode,
        ottl::attrs::AttrMap,
        status::state::ConnRecord,
        transform::{FilterConfig, Pipeline, TransformConfig},
    };

    use super::*;

    fn conn(pid: u32, peer: &str) -> ConnRecord {
        ConnRecord {
            event: "close",
            time_unix_nano: 42,
            cookie: 7,
            pid,
            comm: "curl".into(),
            role: "client",
            family: "ipv4",
            local_address: "10.0.0.1".into(),
            local_port: 40000,
            peer_address: peer.into(),
            peer_port: 80,
            handshake_us: Some(120),
            duration_us: Some(5000),
            rtt_us: None,
            bytes_sent: 10,
            bytes_received: 20,
            retransmits: 1,
            error_type: None,
        }
    }

    #[test]
    fn records_are_transformed_filtered_and_recounted() {
        let t: TransformConfig = serde_yaml_ng::from_str(
            "log_statements:\n  - context: log\n    statements:\n      - delete_key(attributes, \"network.peer.address\")\n      - set(body, \"redacted\") where IsMatch(body, \"10\\\\.0\\\\.0\\\\.2\")\n  - context: resource\n    statements:\n      - set(attributes[\"team\"], \"net\")\n",
        )
        .unwrap();
        let f: FilterConfig = serde_yaml_ng::from_str(
            "logs:\n  log_record:\n    - attributes[\"process.pid\"] == 2\n",
        )
        .unwrap();
        let tr = Transformer::new(Pipeline::compile(&t, &f).unwrap());
        let mut reqs = encode(
            &[
                conn(1, "10.0.0.2"),
                conn(2, "10.0.0.3"),
                conn(2, "10.0.0.4"),
            ],
            &Resource::default(),
            SystemTime::now(),
            2,
        );
        tr.logs(&mut reqs, 1).unwrap();
        assert_eq!(reqs.len(), 1, "the second request held only pid 2");
        assert_eq!(reqs[0].1, 1);
        let rl = &reqs[0].0.resource_logs[0];
        let rec = &rl.scope_logs[0].log_records[0];
        assert!(rec.attributes.get("network.peer.address").is_none());
        assert!(rec.attributes.get("network.peer.port").is_some());
        assert_eq!(
            crate::ottl::attrs::any_to_value(rec.body.as_ref().unwrap()),
            crate::ottl::Value::str("redacted")
        );
        assert!(rl
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .get("team")
            .is_some());
        assert_eq!(tr.counts()["logs"].dropped, 2);
    }
}
