//! The agent profiling itself: a SIGPROF sampling window with the `pprof` crate, as a model `Profile`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::model::{Frame, FrameKind, Line, ProcessProfile, Profile, Sample};

/// Libraries whose frames are not unwound through (no reliable frame info, or signal trampolines).
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];
/// Highest sampling frequency accepted.
pub const MAX_HZ: i32 = 1000;

/// Set while a capture runs: the `pprof` profiler is one per process.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Why a self-profile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SelfProfError {
    #[error("a self-profile is already being captured; try again when it is done")]
    Busy,
    #[error("sampling frequency {0} Hz is outside 1..={MAX_HZ}")]
    InvalidFrequency(i32),
    #[error("start profiler: {0}")]
    Start(#[source] ::pprof::Error),
    #[error("build profile report: {0}")]
    Report(#[source] ::pprof::Error),
    #[error("profile report task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Clears `ACTIVE` when dropped, however the capture ends.
struct Active;

impl Active {
    fn acquire() -> Result<Self, SelfProfError> {
        ACTIVE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Active)
            .map_err(|_| SelfProfError::Busy)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.store(false, Ordering::Release);
    }
}

/// Samples this process at `hz` for `duration` and returns the symbolized result: one
/// `ProcessProfile` (our pid), frames leaf first. Fails with `Busy` while another capture runs.
/// Symbolizing runs on a blocking thread; `host_name` is this host's (`/proc/sys/kernel/hostname`).
pub async fn capture(duration: Duration, hz: i32) -> Result<Profile, SelfProfError> {
    if !(1..=MAX_HZ).contains(&hz) {
        return Err(SelfProfError::InvalidFrequency(hz));
    }
    let active = Active::acquire()?;
    let guard = ::pprof::ProfilerGuardBuilder::default()
        .frequency(hz)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(|e| match e {
            ::pprof::Error::Running => SelfProfError::Busy,
            e => SelfProfError::Start(e),
        })?;
    tokio::time::sleep(duration).await;
    let report = tokio::task::spawn_blocking(move || {
        let report = guard.report().build();
        // Stop sampling before letting another capture start.
        drop(guard);
        drop(active);
        report
    })
    .await?
    .map_err(SelfProfError::Report)?;
    Ok(convert(&report, hz))
}

/// (thread id, thread name, stack): per frame, leaf first, its symbols (name, file, line,
/// address), innermost first.
type Key = (u64, String, Vec<Vec<(String, Option<String>, u32, u64)>>);

/// The sampler's own unwinding frames, which the `pprof` crate leaves on the leaf end of stacks
/// when they are not inlined into its signal handler.
fn is_unwinder(name: &str) -> bool {
    name.starts_with("backtrace::")
        || name.starts_with("<pprof::")
        || name.starts_with("pprof::")
        || name.starts_with("<backtrace::")
}

fn convert(report: &::pprof::Report, hz: i32) -> Profile {
    // pprof keys samples by timestamp too: merge equal (thread, stack) pairs.
    let mut counts: HashMap<Key, u64> = HashMap::new();
    for (frames, &count) in &report.data {
        let Ok(count) = u64::try_from(count) else {
            continue;
        };
        let stack = frames
            .frames
            .iter()
            .skip_while(|symbols| symbols.iter().any(|s| is_unwinder(&s.name())))
            .map(|symbols| {
                symbols
                    .iter()
                    .map(|s| {
                        let file = s
                            .filename
                            .as_ref()
                            .map(|f| f.to_string_lossy().into_owned());
                        let addr = s.addr.map_or(0, |a| a as usize as u64);
                        (s.name(), file, s.lineno.unwrap_or(0), addr)
                    })
                    .collect()
            })
            .collect::<Vec<_>>();
        // Only the sampler's own frames: unwinding from the signal handler did not reach the
        // interrupted code, so the sample says nothing about where the time went.
        if stack.is_empty() {
            continue;
        }
        let key = (frames.thread_id, frames.thread_name.clone(), stack);
        let c = counts.entry(key).or_default();
        *c = c.saturating_add(count);
    }

    let mut strings: HashMap<String, Arc<str>> = HashMap::new();
    let mut intern = |s: String| -> Arc<str> {
        strings
            .entry(s)
            .or_insert_with_key(|k| Arc::from(k.as_str()))
            .clone()
    };
    let mut samples: Vec<Sample> = counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|((thread_id, thread_name, stack), count)| Sample {
            // pprof reports pthread_self(), an address, not the kernel tid: kept when it fits.
            tid: u32::try_from(thread_id).unwrap_or(0),
            thread_name: intern(thread_name),
            frames: stack
                .into_iter()
                .map(|symbols| Frame {
                    kind: FrameKind::User,
                    // pprof keeps no instruction pointer: the symbol's start address stands in.
                    address: symbols.first().map_or(0, |s| s.3),
                    mapping: None,
                    lines: symbols
                        .into_iter()
                        .map(|(name, file, line, _)| Line {
                            function: intern(name),
                            file: file.map(&mut intern),
                            line,
                        })
                        .collect(),
                })
                .collect(),
            count,
            truncated: false,
        })
        .collect();
    samples.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.thread_name.cmp(&b.thread_name))
    });

    let exe = std::env::current_exe().ok();
    let executable_name = exe
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let timing = &report.timing;
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Profile {
        start_unix_nanos: timing
            .start_time
            .duration_since(UNIX_EPOCH)
            .map_or(0, nanos),
        duration_nanos: nanos(timing.duration),
        period_nanos: 1_000_000_000 / u64::from(hz.unsigned_abs().max(1)),
        host_name: crate::export::resource::host_name(),
        processes: vec![ProcessProfile {
            pid: std::process::id(),
            incarnation: 0,
            executable_name,
            executable_path: exe.map(|p| p.to_string_lossy().into_owned()),
            build_id: None,
            container_id: None,
            samples,
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use super::*;

    #[inline(never)]
    fn selfprof_spin_target(stop: &AtomicBool) -> u64 {
        let mut x = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..10_000u64 {
                x = black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        x
    }

    fn symbol(name: &str) -> ::pprof::Symbol {
        ::pprof::Symbol {
            name: Some(name.as_bytes().to_vec()),
            addr: None,
            lineno: Some(7),
            filename: None,
        }
    }

    fn frames(names: &[&str], thread_id: u64, at: u64) -> ::pprof::Frames {
        ::pprof::Frames {
            frames: names.iter().map(|n| vec![symbol(n)]).collect(),
            thread_name: "worker".into(),
            thread_id,
            sample_timestamp: UNIX_EPOCH + Duration::from_secs(at),
        }
    }

    #[test]
    fn unwinder_frames_are_cut_and_stacks_of_only_them_are_dropped() {
        let unwinder = "backtrace::backtrace::libunwind::trace";
        let mut data = HashMap::new();
        // Two timestamps of one stack merge; the sampler's leaf frame is cut off.
        data.insert(frames(&[unwinder, "app::work", "main"], 1, 1), 2);
        data.insert(frames(&["app::work", "main"], 1, 2), 3);
        // Unwinding never left the signal handler: nothing to attribute, dropped.
        data.insert(
            frames(&[unwinder, "pprof::profiler::perf_signal_handler"], 1, 3),
            4,
        );
        data.insert(frames(&[], 2, 4), 1);
        let report = ::pprof::Report {
            data,
            // `ReportTiming` is not exported: its default (zero duration) stands in.
            timing: Default::default(),
        };
        let profile = convert(&report, 99);
        let samples = &profile.processes[0].samples;
        assert_eq!(samples.len(), 1, "{samples:#?}");
        assert_eq!(samples[0].count, 5);
        let names: Vec<&str> = samples[0]
            .frames
            .iter()
            .map(|f| &*f.lines[0].function)
            .collect();
        assert_eq!(names, ["app::work", "main"]);
        assert_eq!(profile.period_nanos, 1_000_000_000 / 99);
    }

    #[tokio::test]
    async fn captures_a_busy_function_and_refuses_a_second_capture() {
        assert!(matches!(
            capture(Duration::from_secs(1), 0).await,
            Err(SelfProfError::InvalidFrequency(0))
        ));

        let stop = Arc::new(AtomicBool::new(false));
        let spinner = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("spinner".into())
                .spawn(move || selfprof_spin_target(&stop))
                .unwrap()
        };
        let first = tokio::spawn(capture(Duration::from_secs(1), 199));
        // Let the first capture start.
        let started = Instant::now();
        while !ACTIVE.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(matches!(
            capture(Duration::from_millis(10), 99).await,
            Err(SelfProfError::Busy)
        ));
        let profile = first.await.unwrap().unwrap();
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();

        assert_eq!(profile.processes.len(), 1);
        let p = &profile.processes[0];
        assert_eq!(p.pid, std::process::id());
        assert!(!p.executable_name.is_empty());
        assert_eq!(profile.period_nanos, 1_000_000_000 / 199);
        assert!(profile.duration_nanos >= 1_000_000_000);
        let spinning: u64 = p
            .samples
            .iter()
            .filter(|s| {
                s.frames.iter().any(|f| {
                    f.lines
                        .iter()
                        .any(|l| l.function.contains("selfprof_spin_target"))
                })
            })
            .map(|s| s.count)
            .sum();
        assert!(spinning > 0, "spin function not sampled: {:#?}", p.samples);
        assert!(p.samples.iter().any(|s| &*s.thread_name == "spinner"));
        assert!(p
            .samples
            .iter()
            .all(|s| s.count >= 1 && !s.frames.is_empty()));
        // The sampler's own frames are cut off the leaf end.
        for s in &p.samples {
            let leaf = &s.frames[0];
            assert!(
                !leaf.lines.iter().any(|l| is_unwinder(&l.function)),
                "{leaf:?}"
            );
        }

        // Free again once done.
        let again = capture(Duration::from_millis(10), 99).await.unwrap();
        assert_eq!(again.processes.len(), 1);
    }
}
