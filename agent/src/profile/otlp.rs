//! OTLP profiles (v1development) encoding: one request, one shared dictionary, one resource per process.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::profiles::v1development as otlp;
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::export::resource::kv_value;

use super::model::{Frame, FrameKind, Mapping, ProcessProfile, Profile};

/// Location attribute telling kernel frames from native (user) ones, as the OTel eBPF profiler does.
pub const FRAME_TYPE: &str = "profile.frame.type";
/// Resource and mapping attribute: the GNU build ID.
pub const BUILD_ID: &str = "process.executable.build_id.gnu";

/// Encodes a profile as one export request: a `ResourceProfiles` per process (resource
/// attributes `base` plus the process's own, which replace any `base` attribute of the same key,
/// e.g. the agent's own `host.name`), all sharing one dictionary.
pub fn encode(profile: &Profile, base: &[KeyValue]) -> ExportProfilesServiceRequest {
    let mut dict = Dictionary::new();
    let sample_type = Some(otlp::ValueType {
        type_strindex: dict.string("samples"),
        unit_strindex: dict.string("count"),
    });
    let period_type = Some(otlp::ValueType {
        type_strindex: dict.string("cpu"),
        unit_strindex: dict.string("nanoseconds"),
    });
    let resource_profiles = profile
        .processes
        .iter()
        .map(|process| otlp::ResourceProfiles {
            resource: Some(Resource {
                attributes: resource_attributes(profile, process, base),
                ..Default::default()
            }),
            scope_profiles: vec![otlp::ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "agent".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                profiles: vec![otlp::Profile {
                    sample_type,
                    period_type,
                    period: clamp_i64(profile.period_nanos),
                    time_unix_nano: profile.start_unix_nanos,
                    duration_nano: profile.duration_nanos,
                    samples: process
                        .samples
                        .iter()
                        .map(|s| otlp::Sample {
                            stack_index: dict.stack(&s.frames),
                            attribute_indices: vec![
                                dict.attribute("thread.id", AttrValue::Int(i64::from(s.tid))),
                                dict.attribute(
                                    "thread.name",
                                    AttrValue::Str(s.thread_name.to_string()),
                                ),
                            ],
                            values: vec![clamp_i64(s.count)],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dict.finish()),
    }
}

fn resource_attributes(profile: &Profile, p: &ProcessProfile, base: &[KeyValue]) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(6);
    attrs.push(kv_value(
        "process.pid",
        any_value::Value::IntValue(i64::from(p.pid)),
    ));
    attrs.push(kv_str("process.executable.name", &p.executable_name));
    if let Some(path) = &p.executable_path {
        attrs.push(kv_str("process.executable.path", path));
    }
    if let Some(build_id) = &p.build_id {
        attrs.push(kv_str(BUILD_ID, build_id));
    }
    if let Some(id) = &p.container_id {
        attrs.push(kv_str("container.id", id));
    }
    attrs.push(kv_str("host.name", &profile.host_name));
    let mut all: Vec<KeyValue> = base
        .iter()
        .filter(|b| !attrs.iter().any(|a| a.key == b.key))
        .cloned()
        .collect();
    all.extend(attrs);
    all
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv_value(key, any_value::Value::StringValue(value.to_string()))
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Table length as the next index. Tables past `i32::MAX` entries cannot be referenced; they
/// would need more memory than a request can carry, so saturating is only a formality.
fn next_index(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum AttrValue {
    Int(i64),
    Str(String),
}

#[derive(PartialEq, Eq, Hash)]
struct MappingKey {
    start: u64,
    end: u64,
    file_offset: u64,
    filename: i32,
    build_id: Option<i32>,
}

#[derive(PartialEq, Eq, Hash)]
struct LocationKey {
    mapping: i32,
    address: u64,
    /// (function index, line), innermost first.
    lines: Vec<(i32, i64)>,
    frame_type: i32,
}

/// The request's `ProfilesDictionary` under construction; every table starts with its zero entry.
struct Dictionary {
    strings: Vec<String>,
    string_index: HashMap<String, i32>,
    functions: Vec<otlp::Function>,
    function_index: HashMap<(i32, i32), i32>,
    mappings: Vec<otlp::Mapping>,
    mapping_index: HashMap<MappingKey, i32>,
    locations: Vec<otlp::Location>,
    location_index: HashMap<LocationKey, i32>,
    stacks: Vec<otlp::Stack>,
    stack_index: HashMap<Vec<i32>, i32>,
    attributes: Vec<otlp::KeyValueAndUnit>,
    attribute_index: HashMap<(i32, AttrValue), i32>,
}

impl Dictionary {
    fn new() -> Self {
        Dictionary {
            strings: vec![String::new()],
            string_index: HashMap::from([(String::new(), 0)]),
            functions: vec![otlp::Function::default()],
            function_index: HashMap::new(),
            mappings: vec![otlp::Mapping::default()],
            mapping_index: HashMap::new(),
            locations: vec![otlp::Location::default()],
            location_index: HashMap::new(),
            stacks: vec![otlp::Stack::default()],
            stack_index: HashMap::from([(Vec::new(), 0)]),
            attributes: vec![otlp::KeyValueAndUnit::default()],
            attribute_index: HashMap::new(),
        }
    }

    fn finish(self) -> otlp::ProfilesDictionary {
        otlp::ProfilesDictionary {
            mapping_table: self.mappings,
            location_table: self.locations,
            function_table: self.functions,
            link_table: vec![otlp::Link::default()],
            string_table: self.strings,
            attribute_table: self.attributes,
            stack_table: self.stacks,
        }
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.string_index.get(s) {
            return i;
        }
        let i = next_index(self.strings.len());
        self.strings.push(s.to_string());
        self.string_index.insert(s.to_string(), i);
        i
    }

    fn attribute(&mut self, key: &str, value: AttrValue) -> i32 {
        let key = self.string(key);
        if let Some(&i) = self.attribute_index.get(&(key, value.clone())) {
            return i;
        }
        let i = next_index(self.attributes.len());
        let any = match &value {
            AttrValue::Int(v) => any_value::Value::IntValue(*v),
            AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        };
        self.attributes.push(otlp::KeyValueAndUnit {
            key_strindex: key,
            value: Some(AnyValue { value: Some(any) }),
            unit_strindex: 0,
        });
        self.attribute_index.insert((key, value), i);
        i
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> i32 {
        let name = self.string(name);
        let file = file.map_or(0, |f| self.string(f));
        *self.function_index.entry((name, file)).or_insert_with(|| {
            let i = next_index(self.functions.len());
            self.functions.push(otlp::Function {
                name_strindex: name,
                filename_strindex: file,
                ..Default::default()
            });
            i
        })
    }

    fn mapping(&mut self, m: &Mapping) -> i32 {
        let key = MappingKey {
            start: m.start,
            end: m.end,
            file_offset: m.file_offset,
            filename: self.string(&m.path),
            build_id: m
                .build_id
                .as_deref()
                .map(|b| self.attribute(BUILD_ID, AttrValue::Str(b.to_string()))),
        };
        if let Some(&i) = self.mapping_index.get(&key) {
            return i;
        }
        let i = next_index(self.mappings.len());
        self.mappings.push(otlp::Mapping {
            memory_start: key.start,
            memory_limit: key.end,
            file_offset: key.file_offset,
            filename_strindex: key.filename,
            attribute_indices: key.build_id.into_iter().collect(),
        });
        self.mapping_index.insert(key, i);
        i
    }

    fn location(&mut self, f: &Frame) -> i32 {
        let mapping = match (&f.mapping, f.kind) {
            (Some(m), FrameKind::User) => self.mapping(m),
            _ => 0,
        };
        let lines = f
            .lines
            .iter()
            .map(|l| {
                (
                    self.function(&l.function, l.file.as_deref()),
                    i64::from(l.line),
                )
            })
            .collect();
        let kind = match f.kind {
            FrameKind::Kernel => "kernel",
            FrameKind::User => "native",
        };
        let key = LocationKey {
            mapping,
            address: f.address,
            lines,
            frame_type: self.attribute(FRAME_TYPE, AttrValue::Str(kind.to_string())),
        };
        if let Some(&i) = self.location_index.get(&key) {
            return i;
        }
        let i = next_index(self.locations.len());
        self.locations.push(otlp::Location {
            mapping_index: key.mapping,
            address: key.address,
            lines: key
                .lines
                .iter()
                .map(|&(function_index, line)| otlp::Line {
                    function_index,
                    line,
                    column: 0,
                })
                .collect(),
            attribute_indices: vec![key.frame_type],
        });
        self.location_index.insert(key, i);
        i
    }

    /// Leaf first, like the model and like OTLP's `Stack.location_indices`.
    fn stack(&mut self, frames: &[Frame]) -> i32 {
        let locations: Vec<i32> = frames.iter().map(|f| self.location(f)).collect();
        if let Some(&i) = self.stack_index.get(&locations) {
            return i;
        }
        let i = next_index(self.stacks.len());
        self.stacks.push(otlp::Stack {
            location_indices: locations.clone(),
        });
        self.stack_index.insert(locations, i);
        i
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::super::model::{Line, Sample};
    use super::*;

    /// Two processes sharing libc frames; a kernel frame; an inlined frame; one empty stack.
    pub(crate) fn profile() -> Profile {
        let libc = Arc::new(Mapping {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0010_0000,
            file_offset: 0x1000,
            path: "/usr/lib/libc.so.6".into(),
            build_id: Some("abcd".into()),
        });
        let app = Arc::new(Mapping {
            start: 0x40_0000,
            end: 0x50_0000,
            file_offset: 0,
            path: "/usr/bin/app".into(),
            build_id: None,
        });
        let line = |f: &str, file: Option<&str>, n: u32| Line {
            function: f.into(),
            file: file.map(Into::into),
            line: n,
        };
        let kernel = Frame {
            kind: FrameKind::Kernel,
            address: 0xffff_ffff_8100_0000,
            mapping: None,
            lines: vec![line("do_syscall_64", None, 0)],
        };
        let write = Frame {
            kind: FrameKind::User,
            address: 0x7f00_0000_2000,
            mapping: Some(libc.clone()),
            lines: vec![line("write", None, 0)],
        };
        let libc_start = Frame {
            kind: FrameKind::User,
            address: 0x7f00_0000_3000,
            mapping: Some(libc.clone()),
            lines: vec![line("__libc_start_main", None, 0)],
        };
        // `helper` inlined into `main`.
        let main = Frame {
            kind: FrameKind::User,
            address: 0x40_1234,
            mapping: Some(app.clone()),
            lines: vec![
                line("helper", Some("src/app.c"), 7),
                line("main", Some("src/app.c"), 42),
            ],
        };
        let unknown = Frame {
            kind: FrameKind::User,
            address: 0x40_5000,
            mapping: Some(app),
            lines: vec![],
        };
        Profile {
            start_unix_nanos: 1_700_000_000_000_000_000,
            duration_nanos: 10_000_000_000,
            period_nanos: 1_000_000_000 / 19,
            host_name: "node-1".into(),
            processes: vec![
                ProcessProfile {
                    pid: 100,
                    incarnation: 1,
                    executable_name: "app".into(),
                    executable_path: Some("/usr/bin/app".into()),
                    build_id: Some("beef".into()),
                    container_id: Some("c0ffee".into()),
                    samples: vec![
                        Sample {
                            tid: 101,
                            thread_name: "worker".into(),
                            frames: vec![
                                kernel.clone(),
                                write.clone(),
                                main.clone(),
                                libc_start.clone(),
                            ],
                            count: 3,
                            truncated: false,
                        },
                        Sample {
                            tid: 100,
                            thread_name: "app".into(),
                            frames: vec![unknown, main.clone(), libc_start.clone()],
                            count: 2,
                            truncated: false,
                        },
                    ],
                },
                ProcessProfile {
                    pid: 200,
                    incarnation: 1,
                    executable_name: "app".into(),
                    executable_path: None,
                    build_id: None,
                    container_id: None,
                    samples: vec![
                        Sample {
                            tid: 200,
                            thread_name: "app".into(),
                            frames: vec![write, main, libc_start],
                            count: 5,
                            truncated: false,
                        },
                        Sample {
                            tid: 201,
                            thread_name: "idle".into(),
                            frames: vec![kernel],
                            count: 1,
                            truncated: false,
                        },
                    ],
                },
            ],
        }
    }

    fn s(v: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        })
    }

    fn int(v: i64) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        })
    }

    fn str_of(d: &otlp::ProfilesDictionary, i: i32) -> &str {
        &d.string_table[i as usize]
    }

    /// A location's function names, innermost first.
    fn names(d: &otlp::ProfilesDictionary, loc: i32) -> Vec<&str> {
        d.location_table[loc as usize]
            .lines
            .iter()
            .map(|l| str_of(d, d.function_table[l.function_index as usize].name_strindex))
            .collect()
    }

    #[test]
    fn dictionary_tables_start_with_zero_entries() {
        for p in [Profile::default(), profile()] {
            let req = encode(&p, &[]);
            let d = req.dictionary.unwrap();
            assert_eq!(d.string_table[0], "");
            assert_eq!(d.mapping_table[0], otlp::Mapping::default());
            assert_eq!(d.location_table[0], otlp::Location::default());
            assert_eq!(d.function_table[0], otlp::Function::default());
            assert_eq!(d.link_table, vec![otlp::Link::default()]);
            assert_eq!(d.attribute_table[0], otlp::KeyValueAndUnit::default());
            assert_eq!(d.stack_table[0], otlp::Stack::default());
        }
        let req = encode(&Profile::default(), &[]);
        assert!(req.resource_profiles.is_empty());
        assert_eq!(req.dictionary.unwrap().location_table.len(), 1);
    }

    #[test]
    fn resources_carry_exact_attributes() {
        let base = [
            kv_str("service.name", "agent"),
            kv_str("host.name", "the-agent's-own"),
        ];
        let req = encode(&profile(), &base);
        assert_eq!(req.resource_profiles.len(), 2);
        let attrs = |i: usize| {
            req.resource_profiles[i]
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            attrs(0),
            vec![
                ("service.name", s("agent")),
                ("process.pid", int(100)),
                ("process.executable.name", s("app")),
                ("process.executable.path", s("/usr/bin/app")),
                ("process.executable.build_id.gnu", s("beef")),
                ("container.id", s("c0ffee")),
                ("host.name", s("node-1")),
            ]
        );
        assert_eq!(
            attrs(1),
            vec![
                ("service.name", s("agent")),
                ("process.pid", int(200)),
                ("process.executable.name", s("app")),
                ("host.name", s("node-1")),
            ]
        );
    }

    #[test]
    fn samples_and_dictionary_are_deduplicated() {
        let p = profile();
        let req = encode(&p, &[]);
        let d = req.dictionary.clone().unwrap();

        // Strings are unique.
        let mut uniq = d.string_table.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), d.string_table.len());

        // Functions: zero, do_syscall_64, write, helper, main, __libc_start_main.
        let fnames: Vec<(&str, &str)> = d.function_table[1..]
            .iter()
            .map(|f| (str_of(&d, f.name_strindex), str_of(&d, f.filename_strindex)))
            .collect();
        assert_eq!(
            fnames,
            vec![
                ("do_syscall_64", ""),
                ("write", ""),
                ("helper", "src/app.c"),
                ("main", "src/app.c"),
                ("__libc_start_main", ""),
            ]
        );

        // Mappings: zero, libc (with build id), app.
        assert_eq!(d.mapping_table.len(), 3);
        let libc = &d.mapping_table[1];
        assert_eq!(str_of(&d, libc.filename_strindex), "/usr/lib/libc.so.6");
        assert_eq!(
            (libc.memory_start, libc.memory_limit, libc.file_offset),
            (0x7f00_0000_0000, 0x7f00_0010_0000, 0x1000)
        );
        assert_eq!(libc.attribute_indices.len(), 1);
        let bid = &d.attribute_table[libc.attribute_indices[0] as usize];
        assert_eq!(str_of(&d, bid.key_strindex), BUILD_ID);
        assert_eq!(bid.value, s("abcd"));
        let app = &d.mapping_table[2];
        assert_eq!(str_of(&d, app.filename_strindex), "/usr/bin/app");
        assert!(app.attribute_indices.is_empty());

        // Locations: zero, kernel, write, main(+helper), libc_start, unknown.
        assert_eq!(d.location_table.len(), 6);
        let kernel = &d.location_table[1];
        assert_eq!(kernel.mapping_index, 0);
        assert_eq!(kernel.address, 0xffff_ffff_8100_0000);
        let frame_type = |loc: &otlp::Location| {
            let a = &d.attribute_table[loc.attribute_indices[0] as usize];
            assert_eq!(str_of(&d, a.key_strindex), FRAME_TYPE);
            a.value.clone()
        };
        assert_eq!(frame_type(kernel), s("kernel"));
        assert_eq!(frame_type(&d.location_table[2]), s("native"));
        assert_eq!(d.location_table[2].mapping_index, 1);
        assert_eq!(names(&d, 3), vec!["helper", "main"]);
        assert_eq!(
            d.location_table[3]
                .lines
                .iter()
                .map(|l| l.line)
                .collect::<Vec<_>>(),
            vec![7, 42]
        );
        assert_eq!(d.location_table[3].mapping_index, 2);
        assert_eq!(d.location_table[3].address, 0x40_1234);
        assert!(d.location_table[5].lines.is_empty());

        // Stacks: zero, then one per distinct sample stack (4 samples, 4 distinct).
        assert_eq!(
            d.stack_table
                .iter()
                .map(|s| s.location_indices.clone())
                .collect::<Vec<_>>(),
            vec![
                vec![],
                vec![1, 2, 3, 4],
                vec![5, 3, 4],
                vec![2, 3, 4],
                vec![1]
            ]
        );

        // Samples.
        let prof = |i: usize| &req.resource_profiles[i].scope_profiles[0].profiles[0];
        let p0 = prof(0);
        assert_eq!(str_of(&d, p0.sample_type.unwrap().type_strindex), "samples");
        assert_eq!(str_of(&d, p0.sample_type.unwrap().unit_strindex), "count");
        assert_eq!(str_of(&d, p0.period_type.unwrap().type_strindex), "cpu");
        assert_eq!(
            str_of(&d, p0.period_type.unwrap().unit_strindex),
            "nanoseconds"
        );
        assert_eq!(p0.period, 1_000_000_000 / 19);
        assert_eq!(p0.time_unix_nano, p.start_unix_nanos);
        assert_eq!(p0.duration_nano, p.duration_nanos);
        let summary = |pr: &otlp::Profile| {
            pr.samples
                .iter()
                .map(|s| {
                    let attrs: Vec<(&str, Option<AnyValue>)> = s
                        .attribute_indices
                        .iter()
                        .map(|&a| {
                            let a = &d.attribute_table[a as usize];
                            (str_of(&d, a.key_strindex), a.value.clone())
                        })
                        .collect();
                    (s.stack_index, s.values.clone(), attrs)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            summary(p0),
            vec![
                (
                    1,
                    vec![3],
                    vec![("thread.id", int(101)), ("thread.name", s("worker"))]
                ),
                (
                    2,
                    vec![2],
                    vec![("thread.id", int(100)), ("thread.name", s("app"))]
                ),
            ]
        );
        assert_eq!(
            summary(prof(1)),
            vec![
                (
                    3,
                    vec![5],
                    vec![("thread.id", int(200)), ("thread.name", s("app"))]
                ),
                (
                    4,
                    vec![1],
                    vec![("thread.id", int(201)), ("thread.name", s("idle"))]
                ),
            ]
        );

        // Attributes are unique: "thread.name"="app" appears once though used twice.
        let app_names = d
            .attribute_table
            .iter()
            .filter(|a| a.value == s("app") && str_of(&d, a.key_strindex) == "thread.name")
            .count();
        assert_eq!(app_names, 1);
    }

    #[test]
    fn request_round_trips_through_protobuf() {
        use prost::Message;
        let req = encode(&profile(), &[]);
        let bytes = req.encode_to_vec();
        assert_eq!(
            ExportProfilesServiceRequest::decode(bytes.as_slice()).unwrap(),
            req
        );
    }
}
