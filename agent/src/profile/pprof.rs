//! pprof encoding: a gzipped `perftools.profiles.Profile` that `go tool pprof` and friends open.

use std::collections::HashMap;
use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use ::proto::pprof as pb;

use super::model::{Frame, FrameKind, Mapping, Profile};

/// Pseudo file of the mapping kernel frames belong to (perf's name for it).
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// Why a pprof profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    #[error("gunzip pprof profile: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("decode pprof profile: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Encodes a profile as gzipped pprof: sample types `samples/count` and `cpu/nanoseconds`, labels
/// `pid`, `tid`, `process.executable.name` and `thread.name` on every sample.
pub fn encode(profile: &Profile) -> Vec<u8> {
    let raw = build(profile).encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    // Writing into a Vec cannot fail; should it anyway, the caller gets an empty (invalid) file.
    if gz.write_all(&raw).is_err() {
        return Vec::new();
    }
    gz.finish().unwrap_or_default()
}

/// Decodes a pprof profile, gzipped (as `encode` writes it) or not.
pub fn decode(data: &[u8]) -> Result<pb::Profile, PprofError> {
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        GzDecoder::new(data).read_to_end(&mut raw)?;
        Ok(pb::Profile::decode(raw.as_slice())?)
    } else {
        Ok(pb::Profile::decode(data)?)
    }
}

/// The uncompressed pprof message for `profile`.
pub fn build(profile: &Profile) -> pb::Profile {
    let mut b = Builder::default();
    b.string("");
    let period = i64::try_from(profile.period_nanos).unwrap_or(i64::MAX);
    let sample_type = vec![
        b.value_type("samples", "count"),
        b.value_type("cpu", "nanoseconds"),
    ];
    let period_type = Some(b.value_type("cpu", "nanoseconds"));
    let (pid, tid, exe, thread) = (
        b.string("pid"),
        b.string("tid"),
        b.string("process.executable.name"),
        b.string("thread.name"),
    );
    let mut samples = Vec::new();
    for process in &profile.processes {
        let exe_name = b.string(&process.executable_name);
        for s in &process.samples {
            let count = i64::try_from(s.count).unwrap_or(i64::MAX);
            let thread_name = b.string(&s.thread_name);
            samples.push(pb::Sample {
                location_id: s.frames.iter().map(|f| b.location(f)).collect(),
                value: vec![count, count.saturating_mul(period)],
                label: vec![
                    num_label(pid, i64::from(process.pid)),
                    num_label(tid, i64::from(s.tid)),
                    pb::Label {
                        key: exe,
                        str: exe_name,
                        ..Default::default()
                    },
                    pb::Label {
                        key: thread,
                        str: thread_name,
                        ..Default::default()
                    },
                ],
            });
        }
    }
    b.finish_mappings();
    pb::Profile {
        sample_type,
        sample: samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos: i64::try_from(profile.start_unix_nanos).unwrap_or(i64::MAX),
        duration_nanos: i64::try_from(profile.duration_nanos).unwrap_or(i64::MAX),
        period_type,
        period,
        ..Default::default()
    }
}

fn num_label(key: i64, num: i64) -> pb::Label {
    pb::Label {
        key,
        num,
        ..Default::default()
    }
}

#[derive(PartialEq, Eq, Hash)]
enum MappingKey {
    Kernel,
    File {
        start: u64,
        end: u64,
        file_offset: u64,
        path: i64,
        build_id: i64,
    },
}

#[derive(PartialEq, Eq, Hash)]
struct LocationKey {
    mapping: u64,
    address: u64,
    /// (function id, line), innermost first.
    lines: Vec<(u64, i64)>,
}

/// Tables under construction; ids are 1-based positions.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_index: HashMap<String, i64>,
    functions: Vec<pb::Function>,
    function_index: HashMap<(i64, i64), u64>,
    mappings: Vec<pb::Mapping>,
    mapping_index: HashMap<MappingKey, u64>,
    locations: Vec<pb::Location>,
    location_index: HashMap<LocationKey, u64>,
}

/// The id the next entry of a table of `len` entries gets.
fn next_id(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX).saturating_add(1)
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_index.get(s) {
            return i;
        }
        let i = i64::try_from(self.strings.len()).unwrap_or(i64::MAX);
        self.strings.push(s.to_string());
        self.string_index.insert(s.to_string(), i);
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> pb::ValueType {
        pb::ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        }
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.string(name);
        let file = file.map_or(0, |f| self.string(f));
        *self.function_index.entry((name, file)).or_insert_with(|| {
            let id = next_id(self.functions.len());
            self.functions.push(pb::Function {
                id,
                name,
                system_name: name,
                filename: file,
                start_line: 0,
            });
            id
        })
    }

    fn mapping(&mut self, kind: FrameKind, m: Option<&Mapping>) -> u64 {
        let key = match (kind, m) {
            (FrameKind::Kernel, _) => MappingKey::Kernel,
            (FrameKind::User, None) => return 0,
            (FrameKind::User, Some(m)) => MappingKey::File {
                start: m.start,
                end: m.end,
                file_offset: m.file_offset,
                path: self.string(&m.path),
                build_id: m.build_id.as_deref().map_or(0, |b| self.string(b)),
            },
        };
        if let Some(&id) = self.mapping_index.get(&key) {
            return id;
        }
        let id = next_id(self.mappings.len());
        let mapping = match key {
            MappingKey::Kernel => pb::Mapping {
                id,
                memory_start: 0,
                memory_limit: u64::MAX,
                filename: self.string(KERNEL_MAPPING),
                ..Default::default()
            },
            MappingKey::File {
                start,
                end,
                file_offset,
                path,
                build_id,
            } => pb::Mapping {
                id,
                memory_start: start,
                memory_limit: end,
                file_offset,
                filename: path,
                build_id,
                ..Default::default()
            },
        };
        self.mappings.push(mapping);
        self.mapping_index.insert(key, id);
        id
    }

    fn location(&mut self, f: &Frame) -> u64 {
        let key = LocationKey {
            mapping: self.mapping(f.kind, f.mapping.as_deref()),
            address: f.address,
            lines: f
                .lines
                .iter()
                .map(|l| {
                    (
                        self.function(&l.function, l.file.as_deref()),
                        i64::from(l.line),
                    )
                })
                .collect(),
        };
        if let Some(&id) = self.location_index.get(&key) {
            return id;
        }
        let id = next_id(self.locations.len());
        self.locations.push(pb::Location {
            id,
            mapping_id: key.mapping,
            address: key.address,
            line: key
                .lines
                .iter()
                .map(|&(function_id, line)| pb::Line {
                    function_id,
                    line,
                    column: 0,
                })
                .collect(),
            is_folded: false,
        });
        self.location_index.insert(key, id);
        id
    }

    /// Sets the `has_*` flags of each mapping from what its locations carry, so pprof does not
    /// try to symbolize what already is.
    /// Also moves the kernel's mapping last: pprof takes the first one for the main binary.
    fn finish_mappings(&mut self) {
        if let Some(&kernel) = self.mapping_index.get(&MappingKey::Kernel) {
            if let Some(i) = self.mappings.iter().position(|m| m.id == kernel) {
                let m = self.mappings.remove(i);
                self.mappings.push(m);
            }
        }
        let mut by_id: HashMap<u64, usize> = HashMap::new();
        for (i, m) in self.mappings.iter().enumerate() {
            by_id.insert(m.id, i);
        }
        let mut symbolized = vec![true; self.mappings.len()];
        let mut files = vec![false; self.mappings.len()];
        let mut line_numbers = vec![false; self.mappings.len()];
        let mut inlines = vec![false; self.mappings.len()];
        for loc in &self.locations {
            let Some(&i) = by_id.get(&loc.mapping_id) else {
                continue;
            };
            symbolized[i] &= !loc.line.is_empty();
            inlines[i] |= loc.line.len() > 1;
            for line in &loc.line {
                line_numbers[i] |= line.line != 0;
                let file = self
                    .functions
                    .get(usize::try_from(line.function_id.saturating_sub(1)).unwrap_or(usize::MAX))
                    .is_some_and(|f| f.filename != 0);
                files[i] |= file;
            }
        }
        for (i, m) in self.mappings.iter_mut().enumerate() {
            m.has_functions = symbolized[i];
            m.has_filenames = symbolized[i] && files[i];
            m.has_line_numbers = symbolized[i] && line_numbers[i];
            m.has_inline_frames = symbolized[i] && inlines[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::otlp::tests::profile;
    use super::*;

    fn label_strs(p: &pb::Profile, s: &pb::Sample) -> Vec<(String, String)> {
        s.label
            .iter()
            .map(|l| {
                let v = if l.str != 0 {
                    p.string_table[l.str as usize].clone()
                } else {
                    l.num.to_string()
                };
                (p.string_table[l.key as usize].clone(), v)
            })
            .collect()
    }

    /// Function names of a sample's stack, leaf first, inlined ones before their caller.
    fn stack(p: &pb::Profile, s: &pb::Sample) -> Vec<String> {
        let mut out = Vec::new();
        for id in &s.location_id {
            let loc = p.location.iter().find(|l| l.id == *id).unwrap();
            if loc.line.is_empty() {
                out.push(format!("{:#x}", loc.address));
            }
            for line in &loc.line {
                let f = p
                    .function
                    .iter()
                    .find(|f| f.id == line.function_id)
                    .unwrap();
                out.push(p.string_table[f.name as usize].clone());
            }
        }
        out
    }

    #[test]
    fn round_trip() {
        let model = profile();
        let gz = encode(&model);
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let p = decode(&gz).unwrap();
        assert_eq!(p, build(&model));
        let st = |i: i64| p.string_table[i as usize].as_str();

        assert_eq!(p.string_table[0], "");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (st(t.r#type), st(t.unit)))
            .collect();
        assert_eq!(types, vec![("samples", "count"), ("cpu", "nanoseconds")]);
        let pt = p.period_type.unwrap();
        assert_eq!((st(pt.r#type), st(pt.unit)), ("cpu", "nanoseconds"));
        assert_eq!(p.period, 52_631_578);
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(p.duration_nanos, 10_000_000_000);

        let values: Vec<Vec<i64>> = p.sample.iter().map(|s| s.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                vec![3, 3 * 52_631_578],
                vec![2, 2 * 52_631_578],
                vec![5, 5 * 52_631_578],
                vec![1, 52_631_578],
            ]
        );
        let l = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            label_strs(&p, &p.sample[0]),
            vec![
                l("pid", "100"),
                l("tid", "101"),
                l("process.executable.name", "app"),
                l("thread.name", "worker")
            ]
        );
        assert_eq!(
            label_strs(&p, &p.sample[3]),
            vec![
                l("pid", "200"),
                l("tid", "201"),
                l("process.executable.name", "app"),
                l("thread.name", "idle")
            ]
        );
        assert_eq!(
            stack(&p, &p.sample[0]),
            vec![
                "do_syscall_64",
                "write",
                "helper",
                "main",
                "__libc_start_main"
            ]
        );
        assert_eq!(
            stack(&p, &p.sample[1]),
            vec!["0x405000", "helper", "main", "__libc_start_main"]
        );

        // Ids start at 1 and are dense; functions and locations are shared between processes.
        let ids = |mut v: Vec<u64>| {
            v.sort();
            v == (1..=v.len() as u64).collect::<Vec<_>>()
        };
        assert!(ids(p.function.iter().map(|f| f.id).collect()));
        assert!(ids(p.location.iter().map(|l| l.id).collect()));
        assert!(ids(p.mapping.iter().map(|m| m.id).collect()));
        let fnames: Vec<&str> = p.function.iter().map(|f| st(f.name)).collect();
        assert_eq!(
            fnames,
            vec![
                "do_syscall_64",
                "write",
                "helper",
                "main",
                "__libc_start_main"
            ]
        );
        assert_eq!(st(p.function[2].filename), "src/app.c");
        assert_eq!(p.location.len(), 5);

        // Mappings: libc (build id), app, and the kernel's last (pprof's "main binary" is the
        // first); ids in order of first use.
        let maps: Vec<(u64, &str, &str, bool)> = p
            .mapping
            .iter()
            .map(|m| (m.id, st(m.filename), st(m.build_id), m.has_functions))
            .collect();
        assert_eq!(
            maps,
            vec![
                (2, "/usr/lib/libc.so.6", "abcd", true),
                (3, "/usr/bin/app", "", false),
                (1, KERNEL_MAPPING, "", true),
            ]
        );
        assert_eq!(p.location[0].mapping_id, 1);
        assert_eq!(p.location[1].mapping_id, 2);
        assert_eq!(p.mapping[0].memory_start, 0x7f00_0000_0000);
        assert_eq!(p.mapping[0].memory_limit, 0x7f00_0010_0000);
        assert_eq!(p.mapping[0].file_offset, 0x1000);
        assert!(p.mapping[0].has_functions && !p.mapping[0].has_filenames);
        assert!(!p.mapping[1].has_filenames && !p.mapping[2].has_line_numbers);
    }

    #[test]
    fn empty_profile_and_garbage() {
        let p = decode(&encode(&Profile::default())).unwrap();
        assert_eq!(p.string_table[0], "");
        assert!(p.sample.is_empty());
        assert!(decode(&[0x1f, 0x8b, 0, 1, 2]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
