//! `ensemble` (the default): three views of one series, combined by taking the strongest.
//!
//! 1. A daily-seasonal forecast ([`Seasonal`]) and a slow baseline (an exponentially weighted
//!    mean and variance with a 3-day half-life); the larger of their residuals' Gaussian
//!    surprise, scaled to [0, 1], is the raw score.
//! 2. The raw score's anomaly likelihood ([`Likelihood`]): sustained or repeated surprise
//!    against what is usual for this series.
//! 3. A new running extreme ([`Envelope`]) beyond 5 % of the range, counted only when the
//!    forecast also finds the point unusual (|z| ≥ 5) and after 60 points: records of plain
//!    noise happen about ln(n) times in n points, so without these a steady series would
//!    report a few times a day at 1 s intervals (measured: 2 per series-day with |z| ≥ 2,
//!    none with |z| ≥ 5, on Gaussian noise).
//! 4. A residual beyond |z| ≈ 15 scores 1 at once (a jump needs no history of surprise).
//!
//! Parameters were chosen on the NAB corpus as one set for all 58 files (`cargo xtask nab`);
//! see ARCHITECTURE.md for the figures.

use super::{
    extreme::Envelope,
    likelihood::{Likelihood, LikelihoodParams},
    math::{decay, surprise, Clock, Ewm, Z_HALF},
    seasonal::{Seasonal, SeasonalParams},
    Detector,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EnsembleParams {
    pub seasonal: SeasonalParams,
    pub likelihood: LikelihoodParams,
    /// Surprise (−log10 tail) of the residual that makes a raw score of 1.
    pub raw_scale: f64,
    /// A new extreme must exceed the range by this fraction of it.
    pub extreme_tolerance: f64,
    /// ... and its residual must reach this |z|.
    pub extreme_min_z: f64,
    /// Half-life (s) of the extreme envelope's relaxation.
    pub extreme_half_life: f64,
    /// Half-life (s) of a slow, non-seasonal baseline: the raw score is the larger of the
    /// forecast's and this baseline's surprise, so a drift the level follows still shows.
    pub slow_half_life: f64,
    /// Points the envelope must have seen before new extremes count: among the first n points
    /// of any series about ln(n) are records, so early ones mean little.
    pub extreme_min_points: u32,
    /// A residual this surprising (−log10 two-sided tail; 50 ↔ |z| ≈ 15) scores 1 at once,
    /// whatever the likelihood says: a 10× jump is reported on its first point.
    pub certain_surprise: f64,
}

impl Default for EnsembleParams {
    fn default() -> Self {
        EnsembleParams {
            seasonal: SeasonalParams::default(),
            likelihood: LikelihoodParams::default(),
            raw_scale: 5.0,
            extreme_tolerance: 0.05,
            extreme_min_z: 5.0,
            extreme_half_life: 100.0 * 86_400.0,
            slow_half_life: 3.0 * 86_400.0,
            extreme_min_points: 60,
            certain_surprise: 50.0,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Ensemble {
    pub params: EnsembleParams,
    clock: Clock,
    model: Seasonal,
    likelihood: Likelihood,
    envelope: Envelope,
    slow: Ewm,
    expected: (f64, f64),
}

impl Ensemble {
    pub fn new(params: EnsembleParams) -> Self {
        Ensemble {
            params,
            ..Default::default()
        }
    }
}

impl Detector for Ensemble {
    fn update(&mut self, t: f64, x: f64) -> f64 {
        let p = &self.params;
        let dt = self.clock.tick(t);
        let f = self.model.forecast(&p.seasonal, t);
        let z = if self.envelope.n() == 0 {
            0.0
        } else {
            self.model.z(&f, x)
        };
        self.expected = (f.value - Z_HALF * f.sd, f.value + Z_HALF * f.sd);
        let slow_z = if self.slow.n >= 2 {
            self.slow.z(x)
        } else {
            0.0
        };
        let surprising = surprise(z);
        let raw = (surprising.max(surprise(slow_z)) / p.raw_scale).min(1.0);
        let mut score = self.likelihood.update(&p.likelihood, dt, raw);
        let extreme = z.abs() >= p.extreme_min_z
            && self.envelope.n() >= p.extreme_min_points
            && self.envelope.overshoot(x, p.extreme_tolerance) >= 1.0;
        if extreme || surprising >= p.certain_surprise {
            score = 1.0;
        }
        self.model.learn(&p.seasonal, &f, dt, x);
        self.envelope.learn(dt, x, p.extreme_half_life);
        self.slow.push(decay(dt, p.slow_half_life), x);
        score
    }
    fn expected(&self) -> (f64, f64) {
        self.expected
    }
    fn warm(&self) -> bool {
        self.model.n() >= super::MIN_POINTS
    }
}
