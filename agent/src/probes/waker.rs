//! Wakes a probe's drain thread out of its `wait`: an `eventfd(2)` the thread polls beside its
//! ring buffers, written when a control message (retune, stop) or a capture request is queued.
//!
//! Without it the drain loop had to wake every 200 ms to look for messages; on this project's
//! test VM each wake of the profiler's thread cost the agent ~1 ms of CPU (cold caches after a
//! sleep), several times the work it found, so idle wakes were most of the profiler's CPU.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use nix::{
    poll::{poll, PollFd, PollFlags},
    sys::eventfd::{eventfd, EfdFlags},
};

/// A shared eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`); clones wake the same thread.
#[derive(Clone, Debug)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    /// Errors: `eventfd(2)`'s (`EMFILE`/`ENFILE` when out of descriptors).
    pub fn new() -> nix::Result<Waker> {
        let fd = eventfd(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Waker(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Makes the descriptor readable until [`Waker::reset`]; never blocks. EAGAIN (counter
    /// saturated) still leaves it readable, which is all a wake needs.
    pub fn wake(&self) {
        let _ = nix::unistd::write(self.0.as_raw_fd(), &1u64.to_ne_bytes());
    }

    /// Clears pending wakes (a non-blocking read of the counter; EAGAIN when none is pending).
    pub fn reset(&self) {
        let _ = nix::unistd::read(self.0.as_raw_fd(), &mut [0u8; 8]);
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Sleeps up to `timeout` (whole milliseconds) or until one of `fds` is readable (`POLLIN`);
/// with no `fds` it only sleeps. Returns, per descriptor, whether it is readable. Errors:
/// `poll(2)`'s (`EINTR` when a signal ends the wait early).
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> nix::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(fd.as_raw_fd(), PollFlags::POLLIN))
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    poll(&mut pfds, ms)?;
    Ok(pfds
        .iter()
        .map(|p| p.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
        .collect())
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
        assert_eq!(
            poll_readable(&[w.fd()], Duration::from_secs(30)),
            Ok(vec![true])
        );
        // Woken by the write, not the 30 s timeout (generous bound for a loaded host).
        assert!(started.elapsed() < Duration::from_secs(20));
        t.join().unwrap();
        // Still pending until reset: a second wait returns at once.
        assert_eq!(
            poll_readable(&[w.fd()], Duration::from_secs(30)),
            Ok(vec![true])
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        w.reset();
        let quiet = Instant::now();
        assert_eq!(
            poll_readable(&[w.fd()], Duration::from_millis(100)),
            Ok(vec![false])
        );
        assert!(
            quiet.elapsed() >= Duration::from_millis(90),
            "{:?}",
            quiet.elapsed()
        );
    }
}
