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
//!
//! `syscall-workload rate <calls/s> <seconds> [then <calls/s> <seconds>]...`: `getppid` at a
//! paced rate, phase after phase, then exits. The pace is kept against the phase's own start
//! (call `i` is due at `start + i / rate`), checked every 10 ms: a wake-up costs one
//! `clock_nanosleep`, 100 per second in every phase (0 calls/s is a process that only sleeps).
//! Prints `pid <pid>`, then `phase <i> rate <calls/s> start_unix_ns <ns>` as each phase starts
//! (its first calls follow), and `done` before exiting.

use std::{
    io::{BufRead, Write},
    sync::{Arc, Barrier},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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

/// `rate` mode: `args` are `<calls/s> <seconds> [then <calls/s> <seconds>]...`.
fn paced(args: &[String]) -> Option<()> {
    let mut phases = Vec::new();
    let mut rest = args;
    loop {
        let rate: f64 = rest.first()?.parse().ok().filter(|r: &f64| *r >= 0.0)?;
        let secs: f64 = rest.get(1)?.parse().ok().filter(|s: &f64| *s > 0.0)?;
        phases.push((rate, Duration::from_secs_f64(secs)));
        match rest.get(2).map(String::as_str) {
            None => break,
            Some("then") => rest = &rest[3..],
            Some(_) => return None,
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "pid {}", std::process::id());
    let tick = Duration::from_millis(10);
    for (i, (rate, length)) in phases.into_iter().enumerate() {
        let start = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos();
        let _ = writeln!(out, "phase {i} rate {rate} start_unix_ns {unix}");
        let _ = out.flush();
        let mut done = 0u64;
        loop {
            let elapsed = start.elapsed().min(length);
            let due = (elapsed.as_secs_f64() * rate) as u64;
            while done < due {
                call("getppid");
                done += 1;
            }
            if elapsed >= length {
                break;
            }
            std::thread::sleep(tick.min(length - elapsed));
        }
    }
    let _ = writeln!(out, "done");
    Some(())
}

fn main() {
    // argv[0] may not be UTF-8 (the odd-name test runs a copy named so).
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.get(1).map(String::as_str) == Some("rate") {
        if paced(&args[2..]).is_none() {
            eprintln!(
                "usage: syscall-workload rate <calls/s> <seconds> [then <calls/s> <seconds>]..."
            );
            std::process::exit(2);
        }
        return;
    }
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
