//! Types shared by the kernel programs (`agent-ebpf`) and the agent: one module per probe.
#![no_std]

pub mod block;
pub mod hist;
pub mod network;
pub mod profiler;
pub mod ratelimit;
pub mod signal;
pub mod syscalls;
pub mod unwind;

/// Length of a task command name (`TASK_COMM_LEN` in the kernel).
pub const COMM_LEN: usize = 16;
