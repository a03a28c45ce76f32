//! `cusum`: two-sided CUSUM (Page 1954) of standardised deviations from a slow baseline, for
//! level shifts: `S⁺ ← max(0, S⁺ + z − k)`, `S⁻ ← max(0, S⁻ − z − k)`, an alarm when either
//! reaches `h`. After an alarm both sums restart and the baseline jumps to the new value, so a
//! shift is reported once, not on every point until the baseline catches up.

use super::{
    math::{decay, Clock, Ewm},
    Detector,
};

#[derive(Clone, Debug)]
pub struct Cusum {
    /// Half-life (s) of the baseline's mean and variance.
    pub half_life: f64,
    /// Allowance per point, in standard deviations (half the shift to detect quickly).
    pub k: f64,
    /// Alarm level, in standard deviations; the score is `S / (2h)`, so an alarm scores 0.5.
    pub h: f64,
    clock: Clock,
    base: Ewm,
    up: f64,
    down: f64,
    expected: (f64, f64),
}

impl Default for Cusum {
    fn default() -> Self {
        Cusum::new(86_400.0, 0.5, 8.0)
    }
}

impl Cusum {
    pub fn new(half_life: f64, k: f64, h: f64) -> Self {
        Cusum {
            half_life,
            k,
            h,
            clock: Clock::default(),
            base: Ewm::default(),
            up: 0.0,
            down: 0.0,
            expected: (f64::NAN, f64::NAN),
        }
    }
}

impl Detector for Cusum {
    fn update(&mut self, t: f64, x: f64) -> f64 {
        let dt = self.clock.tick(t);
        if self.base.n == 0 {
            self.base.push(1.0, x);
            return 0.0;
        }
        let sd = self.base.sd();
        self.expected = (
            self.base.mean - (self.h - self.down + self.k) * sd,
            self.base.mean + (self.h - self.up + self.k) * sd,
        );
        // One point moves a sum by at most 2h: a flat history that moves is one alarm, not
        // an unbounded sum.
        let z = self.base.z(x).clamp(-2.0 * self.h, 2.0 * self.h);
        self.up = (self.up + z - self.k).max(0.0);
        self.down = (self.down - z - self.k).max(0.0);
        let s = self.up.max(self.down);
        let score = (s / (2.0 * self.h)).min(1.0);
        if s >= self.h && self.base.n >= super::MIN_POINTS {
            self.up = 0.0;
            self.down = 0.0;
            self.base.mean = x;
        } else {
            self.base.push(decay(dt, self.half_life), x);
        }
        score
    }
    fn expected(&self) -> (f64, f64) {
        self.expected
    }
    fn warm(&self) -> bool {
        self.base.n >= super::MIN_POINTS
    }
}
