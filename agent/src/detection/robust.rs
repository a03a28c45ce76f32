//! `robust`: a robust z-score. Location is an exponentially weighted Huber M-estimate (each
//! step's pull is clipped at 2.5 scales, so one outlier moves it little and it tracks the
//! median of a skewed series more than its mean); scale is the exponentially weighted mean
//! absolute deviation from it, ×1.2533 (its ratio to σ for a Gaussian).

use super::{
    ewma::score_of_z,
    math::{decay, z_of, Clock, Z_HALF},
    Detector,
};

/// Clipping of a step, in scales.
const CLIP: f64 = 2.5;
/// σ / mean absolute deviation for a Gaussian: √(π/2).
const MAD_TO_SD: f64 = 1.253_314_1;

#[derive(Clone, Debug)]
pub struct RobustZ {
    /// Half-life (s) of location and scale.
    pub half_life: f64,
    clock: Clock,
    location: f64,
    /// Mean absolute deviation.
    mad: f64,
    n: u32,
    expected: (f64, f64),
}

impl Default for RobustZ {
    fn default() -> Self {
        RobustZ::new(3600.0)
    }
}

impl RobustZ {
    pub fn new(half_life: f64) -> Self {
        RobustZ {
            half_life,
            clock: Clock::default(),
            location: 0.0,
            mad: 0.0,
            n: 0,
            expected: (f64::NAN, f64::NAN),
        }
    }
}

impl Detector for RobustZ {
    fn update(&mut self, t: f64, x: f64) -> f64 {
        let dt = self.clock.tick(t);
        if self.n == 0 {
            self.n = 1;
            self.location = x;
            return 0.0;
        }
        let sd = MAD_TO_SD * self.mad;
        let e = x - self.location;
        let score = score_of_z(z_of(e, sd, self.location));
        self.expected = (self.location - Z_HALF * sd, self.location + Z_HALF * sd);
        self.n = self.n.saturating_add(1);
        // Bias-corrected like math::Ewm: plain averages while the history is short.
        let a = decay(dt, self.half_life).max(1.0 / self.n as f64);
        // Until a scale exists, learn unclipped.
        let step = if self.n > 2 && sd > 0.0 {
            e.clamp(-CLIP * sd, CLIP * sd)
        } else {
            e
        };
        self.location += a * step;
        let dev = if sd > 0.0 {
            e.abs().min(CLIP * 2.0 * sd)
        } else {
            e.abs()
        };
        self.mad += a * (dev - self.mad);
        score
    }
    fn expected(&self) -> (f64, f64) {
        self.expected
    }
    fn warm(&self) -> bool {
        self.n >= super::MIN_POINTS
    }
}
