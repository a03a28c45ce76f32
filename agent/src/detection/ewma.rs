//! `ewma`: exponentially weighted mean and variance; a point scores by its Gaussian tail.

use super::{
    math::{decay, surprise, Clock, Ewm, Z_HALF},
    Detector,
};

/// Surprise (−log10 two-sided tail) that scores 1; half of it scores 0.5.
pub const SURPRISE_AT_ONE: f64 = 10.0;

/// Score of a z-score on the shared scale: `surprise(z) / 10`, capped at 1 (0.5 ↔ |z| 4.42).
pub fn score_of_z(z: f64) -> f64 {
    (surprise(z) / SURPRISE_AT_ONE).min(1.0)
}

#[derive(Clone, Debug)]
pub struct EwmaGaussian {
    /// Half-life (s) of the mean and variance.
    pub half_life: f64,
    clock: Clock,
    stats: Ewm,
    expected: (f64, f64),
}

impl Default for EwmaGaussian {
    fn default() -> Self {
        EwmaGaussian::new(3600.0)
    }
}

impl EwmaGaussian {
    pub fn new(half_life: f64) -> Self {
        EwmaGaussian {
            half_life,
            clock: Clock::default(),
            stats: Ewm::default(),
            expected: (f64::NAN, f64::NAN),
        }
    }
}

impl Detector for EwmaGaussian {
    fn update(&mut self, t: f64, x: f64) -> f64 {
        let dt = self.clock.tick(t);
        let score = if self.stats.n == 0 {
            0.0
        } else {
            score_of_z(self.stats.z(x))
        };
        let band = Z_HALF * self.stats.sd();
        self.expected = (self.stats.mean - band, self.stats.mean + band);
        self.stats.push(decay(dt, self.half_life), x);
        score
    }
    fn expected(&self) -> (f64, f64) {
        self.expected
    }
    fn warm(&self) -> bool {
        self.stats.n >= super::MIN_POINTS
    }
}
