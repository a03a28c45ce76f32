//! Reading the agent's profile outputs the way a user's tools do: `agent profile` runs, folded
//! stacks, pprof through `protoc --decode`, OTLP through the PyPI `opentelemetry-proto` package.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::{
    agent_bin,
    otlp::{attributes, python},
};

/// `agent profile ...`; returns the output file.
pub fn agent_profile(dir: &Path, args: &[&str], format: &str) -> PathBuf {
    let out = dir.join(format!("profile.{format}"));
    let r = Command::new(agent_bin())
        .arg("profile")
        .args(args)
        .args(["--format", format, "--output"])
        .arg(&out)
        .output()
        .expect("run agent profile");
    assert!(
        r.status.success(),
        "agent profile failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    out
}

/// Folded lines as (frames root first, count).
pub fn folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            Some((
                stack.split(';').map(str::to_string).collect(),
                n.parse().ok()?,
            ))
        })
        .collect()
}

/// Stacks (names, root first) and their sample counts.
pub type Stacks = Vec<(Vec<String>, u64)>;

/// Samples whose leaf is `f`.
pub fn leaf_count(stacks: &[(Vec<String>, u64)], f: &str) -> u64 {
    stacks
        .iter()
        .filter(|(s, _)| s.last().map(String::as_str) == Some(f))
        .map(|(_, n)| n)
        .sum()
}

/// `protoc --decode perftools.profiles.Profile` of a gzipped pprof file, as text.
pub fn protoc_decode(gz: &Path) -> String {
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/pprof");
    let raw = Command::new("gzip")
        .args(["-dc"])
        .arg(gz)
        .output()
        .expect("gzip -dc");
    assert!(raw.status.success(), "not gzip: {}", gz.display());
    let mut child = Command::new("protoc")
        .args(["--decode", "perftools.profiles.Profile", "-I"])
        .arg(&proto_dir)
        .arg("profile.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc (protobuf-compiler)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&raw.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "protoc could not decode {}: {}",
        gz.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The quoted entries of a protoc text dump's `string_table`.
pub fn string_table(dump: &str) -> Vec<String> {
    dump.lines()
        .filter_map(|l| l.trim().strip_prefix("string_table: "))
        .map(|s| s.trim_matches('"').to_string())
        .collect()
}

/// Decodes a binary ExportProfilesServiceRequest with PyPI `opentelemetry-proto` into the OTLP
/// JSON mapping (as the sink writes it).
pub fn python_decode_otlp(file: &Path) -> Value {
    let script = "import sys, json\n\
from google.protobuf.json_format import MessageToDict\n\
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as p\n\
r = p.ExportProfilesServiceRequest.FromString(open(sys.argv[1], 'rb').read())\n\
print(json.dumps(MessageToDict(r)))\n";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "opentelemetry-proto could not decode {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Function names of every location of a sample's stack, root first (as folded stacks), from
/// the OTLP dictionary (which lists them leaf first).
pub fn otlp_stack(dict: &Value, stack_index: usize) -> Vec<String> {
    let strings = dict["stringTable"].as_array().unwrap();
    let s = |i: &Value| -> String {
        strings[i.as_u64().unwrap_or(0) as usize]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let stack = &dict["stackTable"][stack_index];
    let mut names = Vec::new();
    for li in stack["locationIndices"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let loc = &dict["locationTable"][li.as_u64().unwrap() as usize];
        for line in loc["lines"].as_array().cloned().unwrap_or_default() {
            let f = &dict["functionTable"][line["functionIndex"].as_u64().unwrap_or(0) as usize];
            names.push(s(&f["nameStrindex"]));
        }
    }
    names
}

/// Per process resource: (attributes, stacks).
pub fn otlp_processes(req: &Value) -> Vec<(BTreeMap<String, Value>, Stacks)> {
    let dict = &req["dictionary"];
    req["resourceProfiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rp| {
            let attrs = attributes(&rp["resource"]["attributes"]);
            let mut samples = Vec::new();
            for sp in rp["scopeProfiles"].as_array().unwrap() {
                for p in sp["profiles"].as_array().unwrap() {
                    for s in p["samples"].as_array().cloned().unwrap_or_default() {
                        let idx = s["stackIndex"].as_u64().unwrap_or(0) as usize;
                        let n = s["values"][0]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .or(s["values"][0].as_u64())
                            .unwrap_or(0);
                        let mut names = otlp_stack(dict, idx);
                        names.reverse();
                        samples.push((names, n));
                    }
                }
            }
            (attrs, samples)
        })
        .collect()
}

/// `agent profile` started in the background: returns once it samples (its "sampling ..."
/// line on stderr), so a workload released afterwards is seen from its first instruction.
pub struct ProfileRun {
    child: Child,
    pub output: PathBuf,
}

impl ProfileRun {
    pub fn start(dir: &Path, args: &[&str], format: &str) -> ProfileRun {
        let output = dir.join(format!("profile-{}.{format}", std::process::id()));
        let mut child = Command::new(agent_bin())
            .arg("profile")
            .args(args)
            .args(["--format", format, "--output"])
            .arg(&output)
            .stderr(Stdio::piped())
            .spawn()
            .expect("run agent profile");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("agent profile ended before sampling: {seen}");
            }
            seen.push_str(&line);
            if line.starts_with("sampling ") {
                break;
            }
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut rest);
            if !rest.trim().is_empty() {
                eprintln!("agent profile: {rest}");
            }
        });
        ProfileRun { child, output }
    }

    /// Waits for the run to end; the output file.
    pub fn finish(mut self) -> PathBuf {
        let st = self.child.wait().expect("wait for agent profile");
        assert!(st.success(), "agent profile failed: {st}");
        self.output
    }
}
