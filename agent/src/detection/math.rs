//! Shared arithmetic for the detectors: time-based decay, irregular sampling, bias-corrected
//! exponentially weighted moments and Gaussian tails that do not underflow.

use std::f64::consts::{LN_10, LN_2, SQRT_2};

/// Weight of a new observation in an exponentially weighted average with half-life
/// `half_life` seconds, `dt` seconds after the previous one: `1 − 2^(−dt/half_life)`.
/// Irregular spacing is exact: two steps of `dt` decay as one of `2·dt`.
pub fn decay(dt: f64, half_life: f64) -> f64 {
    if half_life <= 0.0 {
        return 1.0;
    }
    -(-dt * LN_2 / half_life).exp_m1()
}

/// `ln erfc(z)` for `z ≥ 0`, from the Chebyshev fit in Numerical Recipes (`erfcc`, relative
/// error < 1.2e-7 everywhere), evaluated in the log domain so large `z` does not underflow.
pub fn ln_erfc(z: f64) -> f64 {
    let z = z.max(0.0);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t.ln() + poly
}

/// Upper tail of the standard normal, `Q(z) = P(Z > z)`.
pub fn normal_tail(z: f64) -> f64 {
    let r = 0.5 * ln_erfc(z.abs() / SQRT_2).exp();
    if z >= 0.0 {
        r
    } else {
        1.0 - r
    }
}

/// Surprise of a z-score: `−log10 P(|Z| ≥ |z|)` (two-sided Gaussian tail), ≥ 0.
/// 2 ↔ |z| = 2.58, 5 ↔ 4.42, 10 ↔ 6.47.
pub fn surprise(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    (-ln_erfc(z.abs() / SQRT_2) / LN_10).max(0.0)
}

/// |z| whose two-sided tail is `10^−surprise` (inverse of [`surprise`], by bisection; used for
/// expected ranges, not per point).
pub fn z_for_surprise(target: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 40.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if surprise(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// |z| at which a Gaussian detector's score reaches 0.5 (surprise 5: a two-sided tail of 1e-5).
pub const Z_HALF: f64 = 4.417_173_4;

/// The time between observations, made usable for decay: NAB files and live feeds both repeat
/// or step back in time (clock changes, duplicate rows); such a step counts as the previous
/// spacing, so every observation carries weight and nothing divides by zero.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    last_t: f64,
    last_dt: f64,
    started: bool,
}

impl Clock {
    /// Seconds since the previous observation (0 for the first).
    pub fn tick(&mut self, t: f64) -> f64 {
        if !self.started {
            self.started = true;
            self.last_t = t;
            return 0.0;
        }
        let dt = t - self.last_t;
        if dt > 0.0 && dt.is_finite() {
            self.last_t = t;
            self.last_dt = dt;
            dt
        } else {
            self.last_dt
        }
    }
}

/// Exponentially weighted mean and variance, bias-corrected: while the history is shorter than
/// the memory, each of the `n` points so far weighs `1/n` (the plain mean and population
/// variance), so estimates are right from the second point on instead of pulled towards zero.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ewm {
    pub mean: f64,
    pub var: f64,
    pub n: u32,
}

impl Ewm {
    /// Adds `x` with decay weight `a` (from [`decay`]).
    pub fn push(&mut self, a: f64, x: f64) {
        self.n = self.n.saturating_add(1);
        let a = a.max(1.0 / self.n as f64);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }

    pub fn sd(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }

    /// `(x − mean) / sd`; 0 when `x` equals the mean, ±`Z_FLAT` when the history has no spread
    /// but `x` differs from it (a flat line that moves is surprising, not infinitely so).
    pub fn z(&self, x: f64) -> f64 {
        z_of(x - self.mean, self.sd(), self.mean)
    }
}

/// The z-score given to a deviation from a series with no spread (relative to its level).
pub const Z_FLAT: f64 = 10.0;

/// `e / sd`, guarded against a zero spread: a deviation below 1e-9 of the level is none, any
/// other is ±[`Z_FLAT`].
pub fn z_of(e: f64, sd: f64, level: f64) -> f64 {
    let floor = 1e-9 * level.abs().max(1e-300);
    if sd > floor {
        e / sd
    } else if e.abs() <= floor {
        0.0
    } else {
        Z_FLAT.copysign(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_match_known_values() {
        // P(|Z| > 1.959964) = 0.05, P(Z > 3) = 1.3499e-3 (standard tables).
        assert!((surprise(1.959964) - 0.05f64.log10().abs()).abs() < 1e-6);
        assert!((normal_tail(3.0) - 1.349_898e-3).abs() < 1e-8);
        assert!((normal_tail(-3.0) - (1.0 - 1.349_898e-3)).abs() < 1e-8);
        // Far tails stay finite and grow: no underflow to 0 or inf.
        assert!(surprise(40.0) > 300.0 && surprise(40.0).is_finite());
        assert!((z_for_surprise(5.0) - Z_HALF).abs() < 1e-6);
    }

    #[test]
    fn decay_is_exact_over_irregular_steps() {
        let one = 1.0 - decay(20.0, 60.0);
        let two = (1.0 - decay(10.0, 60.0)) * (1.0 - decay(10.0, 60.0));
        assert!((one - two).abs() < 1e-15);
        assert!((decay(60.0, 60.0) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn ewm_starts_unbiased() {
        let mut e = Ewm::default();
        for x in [1.0, 3.0] {
            e.push(1e-6, x);
        }
        assert_eq!(e.mean, 2.0);
        assert_eq!(e.var, 1.0);
    }

    #[test]
    fn clock_survives_repeats_and_steps_back() {
        let mut c = Clock::default();
        assert_eq!(c.tick(100.0), 0.0);
        assert_eq!(c.tick(160.0), 60.0);
        assert_eq!(c.tick(160.0), 60.0);
        assert_eq!(c.tick(100.0), 60.0);
        assert_eq!(c.tick(220.0), 60.0);
    }
}
