//! spin: a Rust workload built in release without frame pointers (rustc's default), hot in
//! `spin::inner_hot` called from `spin::outer`, called from `spin::main`.
//!
//! Usage: spin <seconds>. Build: rustc -O -C force-frame-pointers=no -g -o spin spin.rs

use std::hint::black_box;
use std::time::{Duration, Instant};

#[inline(never)]
fn inner_hot(n: u64) -> u64 {
    let mut acc = black_box(n);
    for i in 0..2_000_000u64 {
        acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    acc
}

#[inline(never)]
fn outer(until: Instant) -> u64 {
    let mut x = 0;
    while Instant::now() < until {
        x ^= inner_hot(black_box(x));
    }
    x
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let x = outer(Instant::now() + Duration::from_secs_f64(secs));
    println!("spin: {x:x}");
}
