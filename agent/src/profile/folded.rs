//! Folded stacks (Brendan Gregg's collapsed format, root first) for flame graph tools.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::model::{Frame, FrameKind, Profile};

/// Suffix of kernel frames, which inferno's and flamegraph.pl's palettes color apart.
pub const KERNEL_SUFFIX: &str = "_[k]";

/// The frame put under the executable for stacks that did not reach an entry point, so flame
/// graphs show how much of a process could not be unwound.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// Renders `profile` as sorted `exe;outer;...;leaf count` lines, one per distinct stack, counts of
/// identical stacks (across pids and threads) summed. Kernel frames end in `_[k]`, inlined
/// functions are frames of their own (callers first); truncated stacks hang under
/// [`TRUNCATED_FRAME`].
pub fn render(profile: &Profile) -> String {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    let mut line = String::new();
    for process in &profile.processes {
        for sample in &process.samples {
            line.clear();
            push_name(&mut line, &process.executable_name, "");
            if sample.truncated {
                line.push(';');
                line.push_str(TRUNCATED_FRAME);
            }
            for frame in sample.frames.iter().rev() {
                let suffix = match frame.kind {
                    FrameKind::Kernel => KERNEL_SUFFIX,
                    FrameKind::User => "",
                };
                if frame.lines.is_empty() {
                    line.push(';');
                    push_name(&mut line, &frame_name(frame), suffix);
                }
                for l in frame.lines.iter().rev() {
                    line.push(';');
                    push_name(&mut line, &l.function, suffix);
                }
            }
            let count = stacks.entry(line.clone()).or_default();
            *count = count.saturating_add(sample.count);
        }
    }
    let mut out = String::new();
    for (stack, count) in stacks {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "{stack} {count}");
    }
    out
}

/// `Frame::name`, except for an address below its mapping's start (inconsistent input), which
/// gets the plain hex address instead of an underflowing offset.
fn frame_name(f: &Frame) -> String {
    match &f.mapping {
        Some(m) if f.address < m.start => format!("{:#x}", f.address),
        _ => f.name(),
    }
}

/// Appends `name` with `;` turned into `:` and line breaks (all control characters) dropped; an
/// empty name becomes `[unknown]`.
fn push_name(out: &mut String, name: &str, suffix: &str) {
    let start = out.len();
    out.extend(
        name.chars()
            .filter(|c| !c.is_control())
            .map(|c| if c == ';' { ':' } else { c }),
    );
    if out.len() == start {
        out.push_str("[unknown]");
    }
    out.push_str(suffix);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::model::{Line, Mapping, ProcessProfile, Sample};
    use super::super::otlp::tests::profile;
    use super::*;

    #[test]
    fn renders_root_first_merged_and_sorted() {
        assert_eq!(
            render(&profile()),
            "app;__libc_start_main;main;helper;app+0x5000 2\n\
             app;__libc_start_main;main;helper;write 5\n\
             app;__libc_start_main;main;helper;write;do_syscall_64_[k] 3\n\
             app;do_syscall_64_[k] 1\n"
        );
    }

    #[test]
    fn merges_across_processes_and_sanitizes() {
        let frame = |name: &str, kind| Frame {
            kind,
            address: 0x1000,
            mapping: None,
            lines: vec![Line {
                function: name.into(),
                file: None,
                line: 0,
            }],
        };
        let sample = |tid, frames: Vec<Frame>, count| Sample {
            tid,
            thread_name: "t".into(),
            frames,
            count,
            truncated: false,
        };
        let lib = Arc::new(Mapping {
            start: 0x2000,
            end: 0x3000,
            file_offset: 0x100,
            path: "/lib/libx.so".into(),
            build_id: None,
        });
        let unresolved = |address| Frame {
            kind: FrameKind::User,
            address,
            mapping: Some(lib.clone()),
            lines: vec![],
        };
        let p = Profile {
            processes: vec![
                ProcessProfile {
                    pid: 1,
                    executable_name: "a;b\nc".into(),
                    samples: vec![
                        sample(1, vec![frame("x;y", FrameKind::User)], 2),
                        sample(2, vec![frame("x;y", FrameKind::User)], 3),
                        sample(3, vec![unresolved(0x2010), unresolved(0x10)], 1),
                    ],
                    ..Default::default()
                },
                ProcessProfile {
                    pid: 2,
                    executable_name: "a;b\r\nc\t".into(),
                    samples: vec![
                        sample(4, vec![frame("x;y", FrameKind::User)], u64::MAX),
                        sample(5, vec![frame("", FrameKind::Kernel)], 1),
                        sample(6, vec![], 4),
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            render(&p),
            format!(
                "a:bc 4\n\
                 a:bc;0x10;libx.so+0x110 1\n\
                 a:bc;[unknown]_[k] 1\n\
                 a:bc;x:y {}\n",
                u64::MAX
            )
        );
        assert_eq!(render(&Profile::default()), "");
    }
}
