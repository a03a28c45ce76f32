//! Protection levels and the ladder that moves between them: one step at a time, down after
//! `escalate_after` evaluations over budget, back up after `recover_after` evaluations well
//! under it (hysteresis), counters reset at every step so a change is judged on its own effect.

use serde::Serialize;

/// The design's five levels, from full service to only the essentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Normal = 0,
    Light = 1,
    Moderate = 2,
    Heavy = 3,
    Emergency = 4,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Normal,
        Level::Light,
        Level::Moderate,
        Level::Heavy,
        Level::Emergency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Light => "light",
            Level::Moderate => "moderate",
            Level::Heavy => "heavy",
            Level::Emergency => "emergency",
        }
    }

    /// 0 (normal) to 4 (emergency), the value of the `agent.self_protection.level` gauge.
    pub fn index(self) -> u8 {
        self as u8
    }

    fn step(self, up: bool) -> Level {
        let i = self as usize;
        let j = if up {
            (i + 1).min(4)
        } else {
            i.saturating_sub(1)
        };
        Level::ALL[j]
    }
}

/// The hysteresis of one ladder (from `SelfProtectionConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hysteresis {
    pub escalate_after: u32,
    pub recover_after: u32,
    /// Pressure (fraction of the tightest budget) under which an evaluation counts towards
    /// recovery, e.g. 0.7.
    pub recover_below: f64,
}

/// The current level and the run of evaluations that may move it.
#[derive(Clone, Debug, Default)]
pub struct Ladder {
    level: Level,
    over: u32,
    under: u32,
}

impl Ladder {
    pub fn level(&self) -> Level {
        self.level
    }

    /// Takes one evaluation's pressure (the largest of used / budget over every budget: above
    /// 1 is over budget) and returns the new level if it changed.
    pub fn observe(&mut self, pressure: f64, h: Hysteresis) -> Option<Level> {
        if pressure > 1.0 {
            self.over += 1;
            self.under = 0;
        } else if pressure < h.recover_below {
            self.under += 1;
            self.over = 0;
        } else {
            // Within budget but not well under it: hold, and restart both runs.
            self.over = 0;
            self.under = 0;
        }
        let next = if self.over >= h.escalate_after.max(1) && self.level != Level::Emergency {
            self.level.step(true)
        } else if self.under >= h.recover_after.max(1) && self.level != Level::Normal {
            self.level.step(false)
        } else {
            return None;
        };
        self.level = next;
        self.over = 0;
        self.under = 0;
        Some(next)
    }

    /// Back to normal at once (self-protection turned off).
    pub fn reset(&mut self) -> Option<Level> {
        let was = self.level;
        *self = Ladder::default();
        (was != Level::Normal).then_some(Level::Normal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Hysteresis = Hysteresis {
        escalate_after: 2,
        recover_after: 3,
        recover_below: 0.7,
    };

    fn run(l: &mut Ladder, pressures: &[f64]) -> Vec<Option<Level>> {
        pressures.iter().map(|p| l.observe(*p, H)).collect()
    }

    #[test]
    fn steps_down_one_level_per_run_over_budget_and_stops_at_emergency() {
        let mut l = Ladder::default();
        let got = run(&mut l, &[2.0; 10]);
        use Level::*;
        assert_eq!(
            got,
            vec![
                None,
                Some(Light),
                None,
                Some(Moderate),
                None,
                Some(Heavy),
                None,
                Some(Emergency),
                None,
                None
            ]
        );
    }

    #[test]
    fn a_single_spike_does_not_move_it() {
        let mut l = Ladder::default();
        assert_eq!(run(&mut l, &[5.0, 0.1, 5.0, 0.1, 5.0]), vec![None; 5]);
        assert_eq!(l.level(), Level::Normal);
    }

    #[test]
    fn recovers_only_well_under_budget_and_after_the_run() {
        let mut l = Ladder::default();
        run(&mut l, &[2.0, 2.0, 2.0, 2.0]);
        assert_eq!(l.level(), Level::Moderate);
        // Just under budget (0.9): holds, whatever how long.
        assert_eq!(run(&mut l, &[0.9; 10]), vec![None; 10]);
        // Well under: one step per run of three.
        assert_eq!(
            run(&mut l, &[0.5, 0.5, 0.5, 0.5, 0.5, 0.5]),
            vec![
                None,
                None,
                Some(Level::Light),
                None,
                None,
                Some(Level::Normal)
            ]
        );
        assert_eq!(run(&mut l, &[0.0; 5]), vec![None; 5]);
    }

    #[test]
    fn an_interruption_restarts_the_run() {
        let mut l = Ladder::default();
        run(&mut l, &[2.0, 2.0]);
        assert_eq!(l.level(), Level::Light);
        // 0.5, 0.5, 0.9 (hold), 0.5, 0.5: no recovery yet.
        assert_eq!(run(&mut l, &[0.5, 0.5, 0.9, 0.5, 0.5]), vec![None; 5]);
        assert_eq!(l.observe(0.5, H), Some(Level::Normal));
    }

    #[test]
    fn reset_reports_a_change_only_when_degraded() {
        let mut l = Ladder::default();
        assert_eq!(l.reset(), None);
        run(&mut l, &[2.0, 2.0]);
        assert_eq!(l.reset(), Some(Level::Normal));
        assert_eq!(l.level(), Level::Normal);
    }
}
