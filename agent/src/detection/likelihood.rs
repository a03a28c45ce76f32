//! Anomaly likelihood (after Numenta's `anomaly_likelihood.py`, Ahmad et al. 2017): how unusual
//! the recent average of a raw anomaly score is against that average's own long-run
//! distribution. A series whose raw score is often high (a noisy one) needs a larger excursion
//! than a quiet one; one stray raw spike barely moves the short average.
//!
//! Both averages are exponentially weighted in time instead of Numenta's 10-point window and
//! periodic refit over 8640 points, so the state is four numbers and the cost O(1).

use super::{
    math::{decay, normal_tail, Clock, Ewm, Z_HALF},
    Detector,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LikelihoodParams {
    /// Half-life (s) of the short average of the raw score.
    pub short_half_life: f64,
    /// Half-life (s) of the long-run mean and variance of that average.
    pub long_half_life: f64,
}

impl Default for LikelihoodParams {
    fn default() -> Self {
        LikelihoodParams {
            short_half_life: 6000.0,
            long_half_life: 14.0 * 86_400.0,
        }
    }
}

/// The post-processor's state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Likelihood {
    short: Ewm,
    long: Ewm,
}

impl Likelihood {
    /// Feeds a raw score in [0, 1] seen `dt` s after the previous one; returns the log-scaled
    /// likelihood in [0, 1]: `−log10(Q(z) + 1e−10) / 10`, `z` the short average's deviation in
    /// long-run standard deviations (floored at 1e−4). 0.5 ↔ a tail of 1e−5, 1 ↔ 1e−10.
    pub fn update(&mut self, p: &LikelihoodParams, dt: f64, raw: f64) -> f64 {
        self.short.push(decay(dt, p.short_half_life), raw);
        let ready = self.long.n >= 2;
        let z = (self.short.mean - self.long.mean) / self.long.sd().max(1e-4);
        self.long.push(decay(dt, p.long_half_life), self.short.mean);
        if !ready {
            return 0.0;
        }
        (-(normal_tail(z) + 1e-10).log10() / 10.0).clamp(0.0, 1.0)
    }
}

/// Raw score of a z-score for the likelihood: surprise (−log10 two-sided tail) over `scale`,
/// capped at 1.
pub fn raw_of(z: f64, scale: f64) -> f64 {
    (super::math::surprise(z) / scale).min(1.0)
}

/// `likelihood` detector: an exponentially weighted Gaussian residual whose raw surprise goes
/// through [`Likelihood`].
#[derive(Clone, Debug)]
pub struct LikelihoodDetector {
    pub params: LikelihoodParams,
    /// Half-life (s) of the mean and variance the residual is taken from.
    pub half_life: f64,
    /// Surprise that makes a raw score of 1.
    pub raw_scale: f64,
    clock: Clock,
    stats: Ewm,
    post: Likelihood,
    expected: (f64, f64),
}

impl Default for LikelihoodDetector {
    fn default() -> Self {
        LikelihoodDetector {
            params: LikelihoodParams::default(),
            half_life: 86_400.0,
            raw_scale: 5.0,
            clock: Clock::default(),
            stats: Ewm::default(),
            post: Likelihood::default(),
            expected: (f64::NAN, f64::NAN),
        }
    }
}

impl Detector for LikelihoodDetector {
    fn update(&mut self, t: f64, x: f64) -> f64 {
        let dt = self.clock.tick(t);
        let z = if self.stats.n == 0 {
            0.0
        } else {
            self.stats.z(x)
        };
        let band = Z_HALF * self.stats.sd();
        self.expected = (self.stats.mean - band, self.stats.mean + band);
        let score = self
            .post
            .update(&self.params, dt, raw_of(z, self.raw_scale));
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
