//! `extreme`: a new running maximum or minimum beyond a fraction of the range seen so far (the
//! "spatial anomaly" rule of Numenta's NAB detector, made to forget slowly: the envelope relaxes
//! towards the latest value with a long half-life, so one old burst does not blind it forever).

use super::{
    math::{decay, Clock},
    Detector,
};

/// The running envelope and the rule, embeddable in other detectors.
#[derive(Clone, Copy, Debug)]
pub struct Envelope {
    lo: f64,
    hi: f64,
    n: u32,
}

impl Default for Envelope {
    fn default() -> Self {
        Envelope {
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            n: 0,
        }
    }
}

impl Envelope {
    /// How far `x` lies outside the envelope, in units of `tolerance ×` its width: 0 inside,
    /// 1 at the tolerance, `∞` when the envelope has no width yet and `x` leaves it.
    pub fn overshoot(&self, x: f64, tolerance: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let out = (x - self.hi).max(self.lo - x);
        if out <= 0.0 {
            return 0.0;
        }
        out / (tolerance * (self.hi - self.lo))
    }

    /// `(lo, hi)` widened by the tolerance: the values that are not new extremes.
    pub fn bounds(&self, tolerance: f64) -> (f64, f64) {
        let w = tolerance * (self.hi - self.lo);
        (self.lo - w, self.hi + w)
    }

    /// Learns `x`; with `half_life` (s) finite, the envelope first relaxes towards `x`.
    pub fn learn(&mut self, dt: f64, x: f64, half_life: f64) {
        if self.n > 0 && half_life.is_finite() {
            let a = decay(dt, half_life);
            self.hi -= a * (self.hi - x).max(0.0);
            self.lo += a * (x - self.lo).max(0.0);
        }
        self.n = self.n.saturating_add(1);
        self.lo = self.lo.min(x);
        self.hi = self.hi.max(x);
    }

    pub fn n(&self) -> u32 {
        self.n
    }
}

#[derive(Clone, Debug)]
pub struct ExtremeDetector {
    /// Fraction of the range a new extreme must exceed it by.
    pub tolerance: f64,
    /// Half-life (s) of the envelope's relaxation (`INFINITY`: never forget).
    pub half_life: f64,
    clock: Clock,
    envelope: Envelope,
    expected: (f64, f64),
}

impl Default for ExtremeDetector {
    fn default() -> Self {
        ExtremeDetector {
            tolerance: 0.05,
            half_life: 30.0 * 86_400.0,
            clock: Clock::default(),
            envelope: Envelope::default(),
            expected: (f64::NAN, f64::NAN),
        }
    }
}

impl Detector for ExtremeDetector {
    /// 0.5 × overshoot, capped at 1: 0.5 exactly at the tolerance.
    fn update(&mut self, t: f64, x: f64) -> f64 {
        let dt = self.clock.tick(t);
        let score = (0.5 * self.envelope.overshoot(x, self.tolerance)).min(1.0);
        self.expected = self.envelope.bounds(self.tolerance);
        self.envelope.learn(dt, x, self.half_life);
        score
    }
    fn expected(&self) -> (f64, f64) {
        self.expected
    }
    fn warm(&self) -> bool {
        self.envelope.n() >= super::MIN_POINTS
    }
}
