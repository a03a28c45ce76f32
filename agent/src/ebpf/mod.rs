//! Kernel objects embedded in the binary, and loading them with errors a user can act on.
//!
//! Invariants: each probe has its own object (`OBJECTS`), loaded into its own `aya::Ebpf`, so a
//! probe that fails to load never takes another down; every error carries one line of cause and
//! one line of fix.

pub mod logger;
pub mod tracefs;

use aya::{Ebpf, EbpfError, EbpfLoader};

mod objects {
    include!(concat!(env!("OUT_DIR"), "/objects.rs"));
}

/// The embedded kernel object of `probe`.
pub fn object(probe: &str) -> Option<&'static [u8]> {
    objects::OBJECTS
        .iter()
        .find(|(name, _)| *name == probe)
        .map(|(_, bytes)| *bytes)
}

/// Names of every embedded probe object.
pub fn probe_names() -> impl Iterator<Item = &'static str> {
    objects::OBJECTS.iter().map(|(name, _)| *name)
}

/// A load or attach failure, explained.
#[derive(Debug, thiserror::Error)]
#[error("{cause}\nfix: {fix}")]
pub struct LoadError {
    pub cause: String,
    pub fix: String,
}

impl LoadError {
    pub fn new(cause: impl Into<String>, fix: impl Into<String>) -> Self {
        LoadError {
            cause: cause.into(),
            fix: fix.into(),
        }
    }
}

const NEED_PRIVILEGE: &str = "run the agent as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (privileged DaemonSet / systemd AmbientCapabilities)";

/// Turns an errno-carrying failure into cause and fix, naming what was being done.
pub fn explain_os(what: &str, err: &std::io::Error) -> LoadError {
    let fix = match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => NEED_PRIVILEGE.to_string(),
        Some(libc::ENOENT) => "this kernel lacks the hook; the probe stays off (see `agent check`)".into(),
        Some(libc::EINVAL) => "the kernel refused the program or hook; run `agent check` and report the kernel version".into(),
        Some(libc::E2BIG) | Some(libc::ENOMEM) => {
            "lower the probe's map sizes in the config (e.g. probes.syscalls.max_entries)".into()
        }
        Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            "this kernel does not support the program type; the probe stays off".into()
        }
        _ => "run `agent check` for details".into(),
    };
    LoadError::new(format!("{what}: {err}"), fix)
}

/// Finds the first OS error in an error's source chain.
pub fn os_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = e.source();
    }
    None
}

/// Explains any aya error: by its OS error when it has one, else by its message.
pub fn explain(what: &str, err: &(dyn std::error::Error + 'static)) -> LoadError {
    let text = flatten(err);
    if let Some(log) = text.split_once("Verifier output:").map(|(_, l)| l) {
        // A verifier rejection (EACCES/EINVAL that is not about privileges): the reason is
        // the last line before the statistics; the whole log goes to the debug log.
        tracing::debug!("{what}: verifier log:{log}");
        let reason = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(':'))
            .take_while(|l| !l.starts_with("verification time"))
            .last()
            .unwrap_or("no reason given");
        return LoadError::new(
            format!("{what}: the kernel verifier rejected the program: {reason}"),
            "this kernel rejects the probe; report the kernel version and the verifier log (log.level debug) to the agent's maintainers",
        );
    }
    if let Some(io) = os_error(err) {
        let mut e = explain_os(what, io);
        // Keep aya's context (which map or program) in the cause line.
        e.cause = format!("{what}: {}: {io}", flatten(err));
        return e;
    }
    LoadError::new(
        format!("{what}: {}", flatten(err)),
        "run `agent check` for details",
    )
}

/// One line from an error and its sources, without repeating the OS error at the end.
fn flatten(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>().is_some() {
            break;
        }
        let s = e.to_string();
        if !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Loads `probe`'s object; `configure` sets map sizes and globals first.
pub fn load<'a>(
    probe: &str,
    configure: impl FnOnce(&mut EbpfLoader<'a>),
) -> Result<Ebpf, LoadError> {
    let bytes = object(probe).ok_or_else(|| {
        LoadError::new(
            format!("no kernel object for probe {probe} in this build"),
            "rebuild with `cargo xtask build-ebpf` then `cargo build`",
        )
    })?;
    raise_memlock_limit();
    // One load at a time: aya's loader parses the kernel's whole BTF (~5 MB file, ~19 MB of
    // transient heap) for every object, and probes start on their own threads at once, which
    // put three copies in the agent's peak RSS.
    static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    let mut loader: EbpfLoader<'a> = EbpfLoader::new();
    if !needs_kernel_btf(bytes) {
        // `EbpfLoader::new` has parsed the kernel's BTF already (aya 0.14 offers no loader
        // without it); it serves only CO-RE relocations, which our objects do not carry, so
        // free it now rather than hold it through map creation and program loads.
        loader.btf(None);
    }
    configure(&mut loader);
    loader
        .load(bytes)
        .map_err(|e: EbpfError| explain(&format!("loading the {probe} probe"), &e))
}

/// Whether `object` has CO-RE (BTF) relocations, the only use aya makes of the kernel's BTF at
/// load time. An object that cannot be parsed answers yes, so the loader reports the error.
fn needs_kernel_btf(object: &[u8]) -> bool {
    aya_obj::Object::parse(object).map_or(true, |o| o.has_btf_relocations())
}

/// Runs of a program that the kernel skipped because the same program was already running on
/// that CPU (`bpf_prog_info.recursion_misses`): events lost without any other trace.
/// aya 0.14 does not expose the field, so this asks the kernel directly.
pub fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: bpf_prog_info is plain old data; all zeroes is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    // `union bpf_attr` for this command: { bpf_fd: u32, info_len: u32, info: u64 }, zero-padded.
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = &mut info as *mut _ as u64;
    // SAFETY: attr points to a zeroed bpf_attr-sized buffer, info to a writable bpf_prog_info of
    // the length given; the kernel writes at most that many bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it (a no-op cost elsewhere).
fn raise_memlock_limit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    if ret != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Program `name` of `probe`'s loaded object, as its typed program.
pub fn program<'a, T>(bpf: &'a mut Ebpf, probe: &str, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    bpf.program_mut(name)
        .ok_or_else(|| {
            LoadError::new(
                format!("program {name} missing from the {probe} object"),
                "rebuild with `cargo xtask build-ebpf`",
            )
        })?
        .try_into()
        .map_err(|e| explain(&format!("opening {name}"), &e))
}

/// Per-CPU `u64` counter array `name` of a loaded object, each slot summed over CPUs; zeros
/// for slots (or a map) that cannot be read. Shape: `[u64; N]`, `N` the array's entries.
pub fn per_cpu_counters<const N: usize>(bpf: &Ebpf, name: &str) -> [u64; N] {
    let mut out = [0; N];
    let Some(m) = bpf.map(name) else {
        return out;
    };
    let Ok(a) = aya::maps::PerCpuArray::<_, u64>::try_from(m) else {
        return out;
    };
    for (i, slot) in out.iter_mut().enumerate() {
        if let Ok(v) = a.get(&(i as u32), 0) {
            *slot = v.iter().sum();
        }
    }
    out
}

/// Takes map `name` out of `probe`'s loaded object as a typed map.
pub fn take_map<T>(bpf: &mut Ebpf, probe: &str, name: &str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf.take_map(name).ok_or_else(|| {
        LoadError::new(
            format!("map {name} missing from the {probe} object"),
            "rebuild with `cargo xtask build-ebpf`",
        )
    })?;
    T::try_from(map).map_err(|e| explain(&format!("opening map {name}"), &e))
}

/// A kernel map that could not be read while draining.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader drops the kernel's BTF for objects without CO-RE relocations; every embedded
    /// object is such an object today. One that gains relocations keeps the BTF (and this test
    /// names it, so the memory note in `load` gets revisited).
    #[test]
    fn embedded_objects_need_no_kernel_btf() {
        let mut checked = 0;
        for name in probe_names() {
            let bytes = object(name).unwrap();
            assert!(
                aya_obj::Object::parse(bytes).is_ok(),
                "{name}: the embedded object does not parse"
            );
            assert!(!needs_kernel_btf(bytes), "{name} has CO-RE relocations");
            checked += 1;
        }
        assert!(checked >= 3, "only {checked} embedded objects");
        assert!(needs_kernel_btf(b"not an ELF object"));
    }
}
