//! A workload that makes an exact number of one syscall, for the agent's tests and benchmarks.
//!
//! `syscall-workload <getppid|badclose|personality> <count> [--wait]`: prints its pid, with
//! `--wait` blocks until a line arrives on stdin (so a tracer can attach first), makes the calls
//! with raw `syscall(2)` (no libc caching), then prints `done <nanoseconds per call>`.
//! `personality` queries the persona (`personality(0xffffffff)`), a call nothing else on a host
//! makes in bulk, so host-wide sums of it are exact.
//!
//! `syscall-workload threads <threads> <count> [--wait]`: thread `i` makes `count` calls of
//! `getppid`, `getpgid(0)` or `getsid(0)` for `i % 3` = 0, 1, 2, every thread released at once
//! by a barrier (so one key arrives from several threads on several CPUs at the same time).

use std::{
    io::BufRead,
    sync::{Arc, Barrier},
    time::Instant,
};

/// One call of `kind`; false for an unknown kind.
fn call(kind: &str) -> bool {
    // SAFETY: these syscalls take plain integer arguments and touch no memory of ours.
    unsafe {
        match kind {
            "getppid" => libc::syscall(libc::SYS_getppid),
            // close(-1) fails with EBADF every time.
            "badclose" => libc::syscall(libc::SYS_close, -1i32),
            "personality" => libc::syscall(libc::SYS_personality, 0xffff_ffffu64),
            "getpgid" => libc::syscall(libc::SYS_getpgid, 0),
            "getsid" => libc::syscall(libc::SYS_getsid, 0),
            _ => return false,
        };
    }
    true
}

const THREAD_KINDS: [&str; 3] = ["getppid", "getpgid", "getsid"];

fn main() {
    // argv[0] may not be UTF-8 (the odd-name test runs a copy named so).
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let usage = "usage: syscall-workload <getppid|badclose|personality> <count> [--wait]\n\
                 \x20      syscall-workload threads <threads> <count> [--wait]";
    let fail = || -> ! {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let Some(kind) = args.get(1) else { fail() };
    let threads = if kind == "threads" {
        match args.get(2).and_then(|c| c.parse::<usize>().ok()) {
            Some(t) if t > 0 => Some(t),
            _ => fail(),
        }
    } else {
        None
    };
    let count_at = if threads.is_some() { 3 } else { 2 };
    let Some(count) = args.get(count_at).and_then(|c| c.parse::<u64>().ok()) else {
        fail()
    };
    if threads.is_none() && !["getppid", "badclose", "personality"].contains(&kind.as_str()) {
        fail();
    }
    println!("pid {}", std::process::id());
    let workers = threads.map(|n| {
        let barrier = Arc::new(Barrier::new(n + 1));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    for _ in 0..count {
                        call(THREAD_KINDS[i % 3]);
                    }
                })
            })
            .collect();
        (barrier, handles)
    });
    if args.iter().any(|a| a == "--wait") {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    let start = Instant::now();
    let calls = match workers {
        Some((barrier, handles)) => {
            barrier.wait();
            for h in handles {
                h.join().expect("worker thread");
            }
            count * threads.unwrap_or(1) as u64
        }
        None => {
            (0..count).for_each(|_| {
                call(kind);
            });
            count
        }
    };
    let ns = start.elapsed().as_nanos() as f64 / calls.max(1) as f64;
    println!("done {ns:.1}");
}
