//! The soak bench's churn: a host that builds and serves, compressed. For `--seconds S` it runs,
//! side by side:
//! - process churn: short-lived processes started and reaped as fast as two threads can,
//!   through exec wrappers as real services start them (`sh -c 'exec true'`, `env true`,
//!   `true` itself);
//! - a loopback TCP storm: one thread connects to a local listener, sends a few bytes and
//!   closes, paced at `--connections-per-second` (default 300); the listener echoes and closes;
//! - compiles: `cc -O2 -g -c` of a small C file and `python3 -c 'import json'`, in turn.
//!
//! Prints `pid <pid>` first, then `churn processes=<n> connections=<n> compiles=<n>` at the end.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

const C_FILE: &str = r#"
#include <stdio.h>
#include <string.h>
struct item { char name[32]; int count; };
static int compare(const void *a, const void *b) {
    return ((const struct item *)a)->count - ((const struct item *)b)->count;
}
int tally(struct item *items, int n, const char *word) {
    for (int i = 0; i < n; i++)
        if (strcmp(items[i].name, word) == 0) return ++items[i].count;
    snprintf(items[n].name, sizeof items[n].name, "%s", word);
    items[n].count = 1;
    qsort(items, n + 1, sizeof *items, compare);
    return 1;
}
"#;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{name}: not a number: {v}");
                std::process::exit(2)
            })
        })
        .unwrap_or(default)
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = arg(&args, "--seconds", 60);
    let rate = arg(&args, "--connections-per-second", 300).max(1);
    println!("pid {}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let (procs, conns, compiles) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut threads = Vec::new();

    for t in 0..2 {
        let (stop, procs) = (stop.clone(), procs.clone());
        threads.push(thread::spawn(move || {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let ok = match i % 3 {
                    0 => quiet(Command::new("sh").args(["-c", "exec true"])),
                    1 => quiet(Command::new("env").arg("true")),
                    _ => quiet(&mut Command::new("true")),
                };
                procs.fetch_add(ok as u64, Ordering::Relaxed);
                i += 1;
            }
        }));
    }

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 64];
            if let Ok(n) = conn.read(&mut buf) {
                let _ = conn.write_all(&buf[..n]);
            }
        }
    });
    {
        let (stop, conns) = (stop.clone(), conns.clone());
        threads.push(thread::spawn(move || {
            let period = Duration::from_secs_f64(1.0 / rate as f64);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut c) = TcpStream::connect(addr) {
                    let mut buf = [0u8; 8];
                    if c.write_all(b"ping").is_ok() && c.read(&mut buf).is_ok() {
                        conns.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += period;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                } else {
                    next = Instant::now();
                }
            }
        }));
    }

    let dir = std::env::temp_dir().join(format!("churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("tally.c");
    std::fs::write(&src, C_FILE).expect("write the C file");
    {
        let (stop, compiles, dir) = (stop.clone(), compiles.clone(), dir.clone());
        threads.push(thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ok = if i.is_multiple_of(2) {
                    quiet(
                        Command::new("cc")
                            .args(["-O2", "-g", "-c"])
                            .arg(&src)
                            .arg("-o")
                            .arg(dir.join("tally.o")),
                    )
                } else {
                    quiet(Command::new("python3").args(["-c", "import json"]))
                };
                compiles.fetch_add(ok as u64, Ordering::Relaxed);
                i += 1;
            }
        }));
    }

    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "churn processes={} connections={} compiles={}",
        procs.load(Ordering::Relaxed),
        conns.load(Ordering::Relaxed),
        compiles.load(Ordering::Relaxed)
    );
}
