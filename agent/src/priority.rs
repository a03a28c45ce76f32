//! The decision path's scheduling priority: the threads between a kernel drain and an action
//! (the drain threads of the probes that feed signals, the signal deriver, the decision engine)
//! run at `enforcement.nice`, set per thread with `setpriority(2)` — as auditd's
//! `priority_boost` does for its own path.
//!
//! Why: a rule fires on what saturates the CPUs (a syscall storm is busy on every CPU). At nice 0
//! each hand-off of the path (drain → deriver → engine) waits behind the workloads it judges:
//! `cargo xtask bench enforce` with four storms on this 2-CPU VM measured 115 ms p50 / 200 ms
//! p99 from the observation to the action at nice 0, and 33 / 85 ms with the agent's threads at
//! nice -10. The path's own CPU is small (it already runs in the agent's budget), so a
//! workload loses only the wait, not a share.
//!
//! Invariants:
//! - only registered threads are reniced, and a thread is registered from its own start to
//!   its own end (a [`Member`] guard, or the decision runtime's start/stop hooks), so a thread
//!   id reused by another process after a thread ends is never touched;
//! - a refused `setpriority` (no `CAP_SYS_NICE`) is reported once, with its fix, and the path
//!   keeps running at the nice it has.

use std::{
    collections::BTreeSet,
    sync::{Mutex, OnceLock},
};

/// The default nice value of the decision path (`enforcement.nice`).
pub const DEFAULT_NICE: i32 = -10;

/// A nice value that could not be set on a thread.
#[derive(Debug, thiserror::Error)]
#[error("cannot set nice {nice} on thread {tid}: {source}\nfix: run the agent with CAP_SYS_NICE (root has it), or set enforcement.nice: 0")]
pub struct PriorityError {
    pub nice: i32,
    pub tid: i32,
    #[source]
    pub source: std::io::Error,
}

struct Path {
    nice: i32,
    threads: BTreeSet<i32>,
    /// A refusal is logged once per nice value, not once per thread.
    reported: Option<i32>,
}

fn path() -> &'static Mutex<Path> {
    static PATH: OnceLock<Mutex<Path>> = OnceLock::new();
    PATH.get_or_init(|| {
        Mutex::new(Path {
            nice: DEFAULT_NICE,
            threads: BTreeSet::new(),
            reported: None,
        })
    })
}

/// The calling thread's kernel id (`gettid(2)`).
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Sets the nice value of thread `tid` of this process (`setpriority(PRIO_PROCESS, tid, nice)`:
/// on Linux the nice value is per thread).
pub fn set_thread_nice(tid: i32, nice: i32) -> Result<(), PriorityError> {
    // SAFETY: plain syscall on integers; `who` names one thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(PriorityError {
            nice,
            tid,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// The nice value of thread `tid` of this process, from `/proc/self/task/<tid>/stat` (field 19).
pub fn thread_nice(tid: i32) -> Option<i32> {
    use procfs::FromRead;
    let stat = procfs::process::Stat::from_file(format!("/proc/self/task/{tid}/stat")).ok()?;
    i32::try_from(stat.nice).ok()
}

fn apply(p: &mut Path, tid: i32) {
    if let Err(e) = set_thread_nice(tid, p.nice) {
        if p.reported != Some(p.nice) {
            p.reported = Some(p.nice);
            tracing::warn!("decision path priority: {e}");
        }
    }
}

/// Makes the calling thread part of the decision path: it runs at the path's nice value until
/// [`leave`] (called by the decision runtime's stop hook).
pub fn enter() {
    let tid = current_tid();
    let mut p = path().lock().unwrap_or_else(|e| e.into_inner());
    p.threads.insert(tid);
    apply(&mut p, tid);
}

/// The calling thread leaves the decision path (it is about to end).
pub fn leave() {
    let tid = current_tid();
    path()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .threads
        .remove(&tid);
}

/// Membership of the decision path for the guard's lifetime (drain threads hold one).
pub struct Member(());

impl Member {
    /// [`enter`]s now, [`leave`]s when dropped; create and drop it on the same thread.
    pub fn join() -> Member {
        enter();
        Member(())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        leave();
    }
}

/// Sets the path's nice value and applies it to every thread on it now (a config change).
pub fn set_nice(nice: i32) {
    let mut p = path().lock().unwrap_or_else(|e| e.into_inner());
    if p.nice == nice {
        return;
    }
    p.nice = nice;
    let tids: Vec<i32> = p.threads.iter().copied().collect();
    for tid in tids {
        apply(&mut p, tid);
    }
}

/// The path's nice value and how many threads are on it now (for `/status`).
pub fn current() -> (i32, usize) {
    let p = path().lock().unwrap_or_else(|e| e.into_inner());
    (p.nice, p.threads.len())
}

/// A multi-thread runtime of one worker whose threads (the worker and its blocking pool) are on
/// the decision path: the signal deriver and the decision engine run here, apart from the
/// exporters, the status server and the rest of the agent. Shut down in the background when
/// dropped, so dropping it inside the agent's own runtime is allowed.
pub struct DecisionRuntime(Option<tokio::runtime::Runtime>);

impl DecisionRuntime {
    /// Starts the runtime; where it cannot (no thread), the caller's runtime is used instead,
    /// at the workloads' priority, and the log says so.
    pub fn start() -> DecisionRuntime {
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("decide")
            .on_thread_start(enter)
            .on_thread_stop(leave)
            .enable_all()
            .build();
        match built {
            Ok(rt) => DecisionRuntime(Some(rt)),
            Err(e) => {
                tracing::warn!("cannot start the decision runtime ({e}): the signal deriver and the decision engine share the agent's runtime at the workloads' priority\nfix: raise the thread limit (ulimit -u)");
                DecisionRuntime(None)
            }
        }
    }

    /// Where to spawn the decision path's tasks (the caller's runtime as the fallback).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone())
    }
}

impl Drop for DecisionRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the path is process-wide state, and tests of one binary run on threads.
    #[test]
    fn threads_on_the_path_follow_its_nice_value_and_others_do_not() {
        let outside = current_tid();
        let before = thread_nice(outside).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _m = Member::join();
            tx.send(current_tid()).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        // Raising priority needs CAP_SYS_NICE; lowering it (a higher nice) never does.
        set_nice(5);
        assert_eq!(thread_nice(tid), Some(5));
        set_nice(7);
        assert_eq!(thread_nice(tid), Some(7));
        assert_eq!(current().0, 7);
        assert_eq!(thread_nice(outside), Some(before), "a thread off the path");
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(!path().lock().unwrap().threads.contains(&tid));
        set_nice(DEFAULT_NICE);
    }
}
