//! Wakes a probe's drain thread out of its `wait`: an `eventfd(2)` the thread polls beside its
//! ring buffers, written when a control message (retune, stop) or a capture request is queued.
//!
//! Without it the drain loop had to wake every 200 ms to look for messages; on this project's
//! test VM each wake of the profiler's thread cost the agent ~1 ms of CPU (cold caches after a
//! sleep), several times the work it found, so idle wakes were most of the profiler's CPU.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

/// A shared eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`); clones wake the same thread.
#[derive(Clone, Debug)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    /// Errors: `eventfd(2)`'s (`EMFILE`/`ENFILE` when out of descriptors).
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Waker(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Makes the descriptor readable until [`Waker::reset`]; never blocks.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter saturated) still leaves the
        // descriptor readable, which is all a wake needs.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Clears pending wakes (a non-blocking read of the counter).
    pub fn reset(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN when nothing is pending.
        unsafe {
            libc::read(
                self.0.as_raw_fd(),
                std::ptr::from_mut(&mut n).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Sleeps up to `timeout` or until one of `fds` is readable (`POLLIN`); EINTR ends it early.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds for the duration of the call.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_wake_ends_the_wait_and_reset_rearms_it() {
        let w = Waker::new().unwrap();
        let other = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.wake();
        });
        let started = Instant::now();
        poll_readable(&[w.fd()], Duration::from_secs(30));
        // Woken by the write, not the 30 s timeout (generous bound for a loaded host).
        assert!(started.elapsed() < Duration::from_secs(20));
        t.join().unwrap();
        // Still pending until reset: a second wait returns at once.
        poll_readable(&[w.fd()], Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(20));
        w.reset();
        let quiet = Instant::now();
        poll_readable(&[w.fd()], Duration::from_millis(100));
        assert!(
            quiet.elapsed() >= Duration::from_millis(90),
            "{:?}",
            quiet.elapsed()
        );
    }
}
