//! What each protection level sheds: a pure function from the configured (base) config to the
//! one the probes run with, so a reload or a level change is the same hot apply as SIGHUP.
//!
//! Invariants: `degrade(base, Normal) == base`; every level keeps what the one above it shed;
//! only sampling is touched (probes, never `enforcement:`, so the undo of an enforcement limit
//! is never shed); every value stays inside its validated range.

use std::time::Duration;

use super::level::Level;
use crate::config::Config;

/// Longest drain interval a degraded probe is given (the validated maximum).
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Watched series (one detector each) kept at `moderate` and below.
const MODERATE_DETECTORS: usize = 256;

/// Series owners kept individual at `moderate` and below (the rest fold into `other`).
const MODERATE_TOP: usize = 20;
const EMERGENCY_TOP: usize = 5;

/// The config the probes run with at `level`:
///
/// | level     | sheds (cumulative)                                                        |
/// |-----------|---------------------------------------------------------------------------|
/// | light     | profiler frequency ÷2                                                      |
/// | moderate  | profiler ÷4; per-connection events off; syscall top-N ≤ 20 owners;        |
/// |           | at most 256 watched (detected) series                                      |
/// | heavy     | profiler ÷8; syscall and network drain intervals ×3                        |
/// | emergency | profiler off; drain intervals ×6; top-N ≤ 5 (only the counters remain)     |
pub fn degrade(base: &Config, level: Level) -> Config {
    let mut c = base.clone();
    let n = level.index();
    c.detection.max_series = if n >= 2 {
        c.detection.max_series.min(MODERATE_DETECTORS)
    } else {
        c.detection.max_series
    };
    let p = &mut c.probes;
    if n >= 1 {
        let div = match n {
            1 => 2,
            2 => 4,
            _ => 8,
        };
        p.profiler.frequency = (p.profiler.frequency / div).max(1);
    }
    if n >= 2 {
        p.network.events_per_second = 0;
        p.syscalls.top_processes = p.syscalls.top_processes.min(MODERATE_TOP);
    }
    if n >= 3 {
        let factor = if n >= 4 { 6 } else { 3 };
        p.syscalls.interval = (p.syscalls.interval * factor).min(MAX_INTERVAL);
        p.network.interval = (p.network.interval * factor).min(MAX_INTERVAL);
    }
    if n >= 4 {
        p.profiler.enabled = false;
        p.syscalls.top_processes = p.syscalls.top_processes.min(EMERGENCY_TOP);
    }
    c
}

/// What `level` sheds, in words, for `/status` (cumulative, as [`degrade`] applies it).
pub fn shed(level: Level) -> Vec<&'static str> {
    const STEPS: [&[&str]; 5] = [
        &[],
        &["profiler frequency halved"],
        &[
            "profiler frequency /4",
            "per-connection events off",
            "syscall top_processes at most 20",
            "at most 256 watched series",
        ],
        &[
            "profiler frequency /8",
            "syscall and network drain intervals x3",
        ],
        &[
            "profiler off",
            "drain intervals x6",
            "syscall top_processes at most 5",
        ],
    ];
    STEPS[..=level.index() as usize]
        .iter()
        .flat_map(|s| s.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_is_the_base() {
        let base = Config::default();
        assert_eq!(degrade(&base, Level::Normal), base);
    }

    #[test]
    fn each_level_sheds_at_least_what_the_one_above_shed() {
        let base = Config::default();
        let cfgs: Vec<Config> = Level::ALL.iter().map(|l| degrade(&base, *l)).collect();
        for w in cfgs.windows(2) {
            let (a, b) = (&w[0].probes, &w[1].probes);
            assert!(b.profiler.frequency <= a.profiler.frequency);
            assert!(b.profiler.enabled <= a.profiler.enabled);
            assert!(b.network.events_per_second <= a.network.events_per_second);
            assert!(b.syscalls.top_processes <= a.syscalls.top_processes);
            assert!(b.syscalls.interval >= a.syscalls.interval);
            assert!(b.network.interval >= a.network.interval);
        }
        let e = &cfgs[4].probes;
        assert!(!e.profiler.enabled);
        assert_eq!(e.syscalls.interval, base.probes.syscalls.interval * 6);
        assert_eq!(e.syscalls.top_processes, EMERGENCY_TOP);
        assert_eq!(cfgs[1].probes.profiler.frequency, 9); // 19 Hz halved
    }

    #[test]
    fn every_degraded_config_validates() {
        let mut base = Config::default();
        base.probes.syscalls.interval = Duration::from_secs(1800);
        base.probes.profiler.frequency = 1;
        for l in Level::ALL {
            let c = degrade(&base, l);
            c.validate().unwrap_or_else(|e| panic!("{l:?}: {e}"));
            assert!(c.probes.syscalls.interval <= MAX_INTERVAL);
            assert!(c.probes.profiler.frequency >= 1);
        }
    }

    #[test]
    fn enforcement_and_outputs_are_untouched() {
        let base = Config::default();
        let e = degrade(&base, Level::Emergency);
        assert_eq!(e.export, base.export);
        assert_eq!(e.output, base.output);
        assert_eq!(e.status, base.status);
    }
}
