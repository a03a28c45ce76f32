//! A symbolized CPU profile: what the profiler produces and every output format encodes.
//!
//! Invariants: frames are leaf first; a frame's `lines` are innermost first (the last line is the
//! function the address belongs to, the ones before it were inlined into it); every sample's
//! `count` is ≥ 1; `period_nanos` is the sampling period (1e9 / Hz).

use std::sync::Arc;

/// One profile: every process sampled in one time window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Window start, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// Window length, nanoseconds.
    pub duration_nanos: u64,
    /// Sampling period: nanoseconds of CPU one sample stands for.
    pub period_nanos: u64,
    /// `host.name` of every resource.
    pub host_name: String,
    pub processes: Vec<ProcessProfile>,
}

impl Profile {
    /// The same window and period with no processes.
    pub fn clone_header(&self) -> Profile {
        Profile {
            start_unix_nanos: self.start_unix_nanos,
            duration_nanos: self.duration_nanos,
            period_nanos: self.period_nanos,
            host_name: self.host_name.clone(),
            processes: Vec::new(),
        }
    }
}

/// The samples of one process (one OTLP resource).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessProfile {
    /// Process id (tgid); 0 for the idle task and samples with no process.
    pub pid: u32,
    /// Which run of that pid (the profiler's incarnation: when the kernel first sampled it
    /// since it started, exec'd or took over a reused pid; 0 if unknown). One pid may appear
    /// more than once in a profile, once per incarnation.
    pub incarnation: u64,
    /// `process.executable.name`: basename of the executable, else the command.
    pub executable_name: String,
    /// Full path of the executable, when known.
    pub executable_path: Option<String>,
    /// GNU build ID of the executable, lowercase hex, when it has one.
    pub build_id: Option<String>,
    /// `container.id`, when the process runs in a container.
    pub container_id: Option<String>,
    pub samples: Vec<Sample>,
}

/// One distinct (thread, stack) and how often it was seen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Thread id.
    pub tid: u32,
    /// Thread command (`comm`).
    pub thread_name: Arc<str>,
    /// Leaf first: kernel frames (if any), then user frames.
    pub frames: Vec<Frame>,
    pub count: u64,
    /// The user stack was cut short (no frame pointers, or deeper than the limit).
    pub truncated: bool,
}

/// Kernel or user space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Kernel,
    #[default]
    User,
}

/// One stack frame: an instruction address and what it resolved to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub kind: FrameKind,
    /// User frames: the virtual address in the process. Kernel frames: the kernel address.
    pub address: u64,
    /// The file mapping the address falls in (user frames), if known.
    pub mapping: Option<Arc<Mapping>>,
    /// Innermost first; empty when the address resolved to nothing.
    pub lines: Vec<Line>,
}

impl Frame {
    /// The frame's display name: its outermost function (`lines.last()`), else the mapping's
    /// file name plus the offset (`libfoo.so+0x1234`), else the hex address.
    pub fn name(&self) -> String {
        if let Some(l) = self.lines.last() {
            return l.function.to_string();
        }
        match &self.mapping {
            Some(m) => {
                let file = m.path.rsplit('/').next().unwrap_or(&m.path);
                format!(
                    "{file}+{:#x}",
                    self.address
                        .wrapping_sub(m.start)
                        .wrapping_add(m.file_offset)
                )
            }
            None => format!("{:#x}", self.address),
        }
    }
}

/// A function (and where in its source) an address maps to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Line {
    /// Demangled name.
    pub function: Arc<str>,
    /// Source file, when debug info has it.
    pub file: Option<Arc<str>>,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// A file mapped into a process (`/proc/<pid>/maps` line).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub path: Arc<str>,
    /// GNU build ID, lowercase hex.
    pub build_id: Option<Arc<str>>,
}
