//! A workload that makes an exact number of one syscall, for the agent's tests and benchmarks.
//!
//! `syscall-workload <getppid|badclose> <count> [--wait]`: prints its pid, with `--wait` blocks
//! until a line arrives on stdin (so a tracer can attach first), makes the calls with raw
//! `syscall(2)` (no libc caching), then prints `done <nanoseconds per call>`.

use std::{io::BufRead, time::Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: syscall-workload <getppid|badclose> <count> [--wait]";
    let (Some(kind), Some(count)) = (args.get(1), args.get(2).and_then(|c| c.parse::<u64>().ok()))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    println!("pid {}", std::process::id());
    if args.iter().any(|a| a == "--wait") {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    let start = Instant::now();
    match kind.as_str() {
        // SAFETY: getppid takes no arguments and cannot fail.
        "getppid" => (0..count).for_each(|_| unsafe {
            libc::syscall(libc::SYS_getppid);
        }),
        // close(-1) fails with EBADF every time.
        "badclose" => (0..count).for_each(|_| unsafe {
            libc::syscall(libc::SYS_close, -1i32);
        }),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / count.max(1) as f64;
    println!("done {ns:.1}");
}
